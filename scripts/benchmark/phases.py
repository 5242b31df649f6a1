#!/usr/bin/env python3
"""relay's benchmark: one command, loopback only, starts everything itself (issue 5).

    scripts/bench [--quick] [--json PATH] [--events N] [--receiver auto|nginx|python]
                  [--systems naive,relay] [--phases ...] [--relay-setting LINE]

Three systems deliver the seed's status event to a local receiver:

- direct: a minimal trio + h11 client with 64 keep-alive connections posts straight to the
  receiver (no relay, no journal): what a user gets by posting the webhooks themselves.
- naive:  scripts/naive_relay.py, fsync per event and one shared httpx.AsyncClient.
- relay:  ``relay run`` with a generated config and a real journal in a temporary directory.

The receiver is nginx (``return 204``, from Debian's package) when installed, else a Python
receiver in a subprocess; its own ceiling is measured (wrk when installed). Latency always uses the
Python receiver, which notes when it answers each event. The paced and the ingest phases send
from a sender process, which notes when each request was due and answered: CLOCK_MONOTONIC is
shared by processes, so their timestamps compare directly. Receiver and sender are plain epoll
loops that frame requests by hand (Content-Length only: every sender here sends one), as they
share the two CPUs with the systems they measure: with h11 the receiver took 0.6 of the two
cores at 3,000 requests/s; as trio code the receiver and the sender still took ~200 µs of CPU an
event at 3,000/s and ~370 at 1,000/s, as epoll loops ~60 and ~120.

After the figures, a second table splits each phase's CPU by process (the relay's three, the
load generator, the receiver) in µs per event, with the rate at which that much CPU per event
would keep every CPU busy: a phase whose rate is near it is bound by the machine, not by a wait.
The JSON also has how often each process blocked per event (``waits_per_event``: wake-ups).

Every phase is bounded in events and in time, and every process started here runs in its own
process group that is killed when the bench exits (and gets SIGKILL if the bench dies).
Internal roles (``--role receiver``, ``sender``, ``direct``) run the subprocesses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_VENV = ROOT / ".venv"
if (
    (_VENV / "bin" / "python").exists()
    and Path(sys.prefix).resolve() != _VENV.resolve()
    and not os.environ.get("RELAY_BENCH_REEXEC")
):
    os.environ["RELAY_BENCH_REEXEC"] = "1"
    python = str(_VENV / "bin" / "python")
    os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import mmap  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import h11  # noqa: E402
import trio  # noqa: E402

SEED = ROOT / "tests" / "seed_events.json"
BENCH = Path(__file__).resolve()
NAIVE = ROOT / "scripts" / "naive_relay.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DIRECT_CONNECTIONS = 64


# -- events ---------------------------------------------------------------------------------


@functools.cache
def status_event() -> dict:
    events = json.loads(SEED.read_text())
    return next(e for e in events if e.get("event") == "whatsapp:message:status")


def compact(obj) -> bytes:
    """The JSON as relay delivers it (relay/events.py ``_canonical``)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def unrouted_event() -> dict:
    """The status event under a name no webhook of the bench's relay takes: journaled and
    acknowledged, never delivered (the ``*_alone`` phases)."""
    return {**status_event(), "event": "bench:journal-only"}


def latency_event(seq: int) -> dict:
    """The status event, routed to the latency receiver and numbered in ``foreign_id``."""
    event = status_event()
    return {
        **event,
        "payload": {**event["payload"], "foreign_id": f"lat-{seq}"},
        "webhook_id": "lat",
    }


def post_bytes(path: str, body: bytes, host: str = "localhost") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- /proc ------------------------------------------------------------------------------------


def machine_ticks() -> tuple[int, int]:
    """(all CPU time, time the hypervisor gave to someone else: steal), in ticks, since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


STEAL_WARNING = 0.05  # of the machine's CPU time, over the run


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def waits_of(pid: int) -> int:
    """How many times ``pid``'s threads blocked (voluntary context switches): each is a wake-up
    later."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with open(task / "status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def family(pid: int) -> list[int]:
    """``pid`` and its descendants: the relay is three processes (ingest, journal writer,
    delivery), and each figure is the cost of all of them."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*"):
            try:
                pids.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass  # it exited meanwhile
        i += 1
    return pids


def _summed(measure, pid: int) -> float:
    total = 0.0
    for member in family(pid):
        try:
            total += measure(member)
        except OSError:
            pass  # it exited meanwhile
    return total


def system_cpu_seconds(pid: int) -> float:
    return _summed(cpu_seconds, pid)


def system_peak_rss_mb(pid: int) -> float:
    """The sum of each process's peak: an upper bound of the peak they had together."""
    return _summed(peak_rss_mb, pid)


BENCH_PARTS = ("load generator", "receiver")  # CpuSplit's parts that are the bench's own
# The relay's processes by the module each runs (relay/journal.py and relay/remote_dispatch.py
# start them with "-m"); its first process, which takes the events, is "relay".
PARTS = {b"relay.journal_process": "writer", b"relay.delivery_process": "delivery"}


def part_of(pid: int, top: str) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return next((part for module, part in PARTS.items() if module in argv), top)


class CpuSplit:
    """Where a phase's CPU went, process by process: the system's own, the load generator (the
    sender, or this process in the end-to-end phases) and the receiver. Two CPUs give 2,000,000
    µs a second; the sum per event says the rate at which the whole machine would be busy,
    whatever else a phase waits for."""

    def __init__(self, system: System, receiver_pid: int):
        self.system = system
        self.receiver_pid = receiver_pid
        self.before = self._read()

    def _read(self) -> dict[str, tuple[float, int]]:
        """(CPU seconds, times it waited) by part."""
        parts: dict[str, tuple[float, int]] = {}
        for pid in family(self.system.pid):
            try:
                part = part_of(pid, self.system.name)
                cpu, waits = parts.get(part, (0.0, 0))
                parts[part] = (cpu + cpu_seconds(pid), waits + waits_of(pid))
            except OSError:
                pass  # it exited meanwhile
        for part, pid in zip(BENCH_PARTS, (os.getpid(), self.receiver_pid), strict=True):
            parts[part] = (cpu_seconds(pid), waits_of(pid))
        return parts

    def per_event(self, events: int, load: dict | None = None) -> dict[str, dict[str, float]]:
        """``cpu_us_per_event`` and ``waits_per_event`` (each a wake-up), by part; ``load``: the
        load generator's ``cpu`` seconds and ``waits``, when it is a process of its own (the
        sender) that measured them over its run."""
        after, n = self._read(), max(events, 1)
        before = self.before
        cpu = {
            part: (c - before.get(part, (0.0, 0))[0]) / n * 1e6 for part, (c, _) in after.items()
        }
        waits = {part: (w - before.get(part, (0.0, 0))[1]) / n for part, (_, w) in after.items()}
        if load is not None:
            cpu["load generator"] = load["cpu"] / n * 1e6
            waits["load generator"] = load["waits"] / n
        return {"cpu_us_per_event": cpu, "waits_per_event": waits}


# -- clients ----------------------------------------------------------------------------------


class RawConnection:
    """A prebuilt-bytes HTTP/1.1 client: cheap, so the load generator is never the bottleneck."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, target) -> RawConnection:
        if isinstance(target, str):
            return cls(await trio.open_unix_socket(target))
        return cls(await trio.open_tcp_stream(*target))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        await self.stream.send_all(data)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(buf[:end])
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        total = end + 4 + length
        while len(buf) < total:
            await self._fill()
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        return status, body

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class H11Client:
    """The "direct" baseline's client: a hand loop on h11, one keep-alive connection."""

    def __init__(self, stream: trio.abc.Stream, host: str):
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, host: str, port: int) -> H11Client:
        return cls(await trio.open_tcp_stream(host, port), f"{host}:{port}")

    async def post(self, target: str, body: bytes) -> int:
        conn = self.conn
        headers = [
            ("Host", self.host),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        await self.stream.send_all(
            conn.send(h11.Request(method="POST", target=target, headers=headers))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("connection closed")
        conn.start_next_cycle()
        return status

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


# -- role: the receiver (subprocess) ---------------------------------------------------------


def _content_length(head: bytes) -> int:
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : stop if stop >= 0 else None])


def receiver_role(args) -> None:
    """Answer every request with 204; count them in ``--count-file`` (a shared 8-byte counter)
    and note when each latency event (``"lat-N"``) is answered; ``GET /_arrivals`` hands those
    over.

    A plain epoll loop, not trio: it shares the two CPUs with the systems it measures, and
    measured at 1,000 requests/s it costs ~40 µs a request where a minimal trio server costs
    ~120 (both answering from prebuilt bytes)."""
    fd = os.open(args.count_file, os.O_RDWR)
    counter = mmap.mmap(fd, 8)
    arrivals: list[tuple[int, float]] = []
    count = 0
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setblocking(False)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}

    def close(conn: socket.socket) -> None:
        selector.unregister(conn)
        del buffers[conn]
        conn.close()

    while True:
        for key, _ in selector.select():
            conn = key.fileobj
            if conn is listener:
                with contextlib.suppress(BlockingIOError):
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buffers[conn] = bytearray()
                    selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                close(conn)
                continue
            buffer = buffers[conn]
            buffer += data
            out = []
            try:
                while (end := buffer.find(b"\r\n\r\n")) >= 0:
                    head = bytes(buffer[:end]).lower()
                    length = _content_length(head)
                    if len(buffer) < end + 4 + length:
                        break
                    body = bytes(buffer[end + 4 : end + 4 + length])
                    del buffer[: end + 4 + length]
                    target = head.split(b" ", 2)[1]
                    if target == b"/_arrivals":
                        data = json.dumps(arrivals).encode()
                        arrivals.clear()
                        out.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data))
                        out.append(data)
                        continue
                    out.append(b"HTTP/1.1 204 No Content\r\n\r\n")
                    if target != b"/ceiling":
                        count += 1
                        struct.pack_into("<Q", counter, 0, count)
                        at = body.find(b'"lat-')
                        if at >= 0:
                            seq = int(body[at + 5 : body.index(b'"', at + 5)])
                            arrivals.append((seq, time.monotonic()))
                if out:
                    conn.setblocking(True)  # an answer bigger than the socket's buffer
                    conn.sendall(b"".join(out))
                    conn.setblocking(False)
            except (OSError, ValueError, IndexError):
                close(conn)


# -- role: the sender (subprocess) -----------------------------------------------------------


def sender_role(args) -> None:
    """``--events`` requests to ``--port`` (``--path``) on ``--connections`` keep-alive
    connections, each on the first free one; prints when each was answered, as JSON.

    Paced (``--rate`` per second): request i is due at t0 + i / rate, and the latency events
    (``latency_event``) are numbered; one that finds no free connection waits for one, and its
    latency still counts from when it was due (no coordinated omission). Flooding (``--rate
    0``): ``--body`` is sent as soon as a connection is free, for at most ``--seconds``.

    A plain epoll loop for the same reason as the receiver's: as trio code the sender took
    ~120 µs of CPU an event at 3,000/s, and ~60 a single-event request when flooding, CPU the
    systems measured beside it did not get."""
    n, rate = args.events, args.rate
    if args.body:
        payloads = [post_bytes(args.path, Path(args.body).read_bytes())] * n
    else:
        payloads = [post_bytes(args.path, compact(latency_event(seq))) for seq in range(n)]
    selector = selectors.DefaultSelector()
    idle: collections.deque[socket.socket] = collections.deque()
    buffers: dict[socket.socket, bytearray] = {}
    for _ in range(args.connections):
        conn = socket.create_connection(("127.0.0.1", args.port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
        buffers[conn] = bytearray()
        idle.append(conn)
    in_flight: dict[socket.socket, int] = {}
    waiting: collections.deque[int] = collections.deque()
    answered: list[float | None] = [None] * n
    errors = lost = due = 0
    cpu0, waits0 = time.process_time(), waits_of(os.getpid())
    if rate:  # the last is due at t0 + n / rate; past that, --seconds for the answers
        t0 = time.monotonic() + 0.01
        stop_sending = give_up = t0 + n / rate + args.seconds
    else:  # all are due now; past --seconds, only what was sent is waited for (30 s at most)
        t0 = time.monotonic()
        waiting, due = collections.deque(range(n)), n
        stop_sending, give_up = t0 + args.seconds, t0 + args.seconds + 30

    def drop(conn: socket.socket) -> None:
        """The system closed or broke a connection: what was in flight on it is lost."""
        nonlocal lost
        lost += conn in in_flight
        in_flight.pop(conn, None)
        selector.unregister(conn)
        del buffers[conn]
        conn.close()

    while True:
        now = time.monotonic()
        while due < n and t0 + due / rate <= now:
            waiting.append(due)
            due += 1
        if now > stop_sending:
            waiting.clear()
        while waiting and idle:
            conn = idle.popleft()
            in_flight[conn] = seq = waiting.popleft()
            conn.setblocking(True)  # a request is far smaller than the socket's buffer
            conn.sendall(payloads[seq])
            conn.setblocking(False)
        if not in_flight and not waiting and (due == n or now > stop_sending) or now > give_up:
            break
        if not buffers:
            break  # no connection left
        wake = give_up
        if due < n:
            wake = min(wake, t0 + due / rate)
        if now <= stop_sending:
            wake = min(wake, stop_sending)
        for key, _ in selector.select(max(0.0, wake - now)):
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or conn not in in_flight:  # closed, or an answer to nothing
                drop(conn)
                continue
            buffer = buffers[conn]
            buffer += data
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                continue
            length = _content_length(bytes(buffer[:end]).lower())
            if len(buffer) < end + 4 + length:
                continue
            status = int(buffer[9:12])
            del buffer[: end + 4 + length]
            answered[in_flight.pop(conn)] = time.monotonic()
            errors += not 200 <= status < 300
            idle.append(conn)
    # errors: answers not 2xx; lost: sent on a connection the system closed, never answered
    result = {"t0": t0, "answered": answered, "errors": errors, "lost": lost}
    result.update(cpu=time.process_time() - cpu0, waits=waits_of(os.getpid()) - waits0)
    print(json.dumps(result), flush=True)


# -- role: the direct baseline (subprocess, so its CPU and RSS are its own) ----------------------


async def direct_role(args) -> None:
    body = compact(status_event())
    host, port = "127.0.0.1", args.port
    clients = [await H11Client.open(host, port) for _ in range(DIRECT_CONNECTIONS)]
    sent = ok = 0
    cpu0 = cpu_seconds(os.getpid())
    t0 = time.monotonic()
    deadline = t0 + args.seconds

    async def worker(client: H11Client) -> None:
        nonlocal sent, ok
        while sent < args.events and time.monotonic() < deadline:
            sent += 1
            if 200 <= await client.post("/hook", body) < 300:
                ok += 1

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(worker, client)
    elapsed = time.monotonic() - t0
    result = {
        "sent": sent,
        "ok": ok,
        "elapsed": elapsed,
        "cpu": cpu_seconds(os.getpid()) - cpu0,
        "rss_peak_mb": peak_rss_mb(os.getpid()),
    }
    for client in clients:
        await client.aclose()
    print(json.dumps(result), flush=True)


# -- processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """Everything the bench starts, each in its own process group; ``stop_all`` kills them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], **kwargs) -> tuple[subprocess.Popen, Path, Path]:
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                cwd=ROOT,
                **kwargs,
            )
        self.procs.append(proc)
        return proc, out, err

    def stop(self, proc: subprocess.Popen, grace: float = 3.0) -> None:
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _killpg(proc.pid, signal.SIGKILL)  # whatever it left in its group
        if proc.poll() is None:
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc, grace=1.0)
            except Exception as e:  # noqa: BLE001 - stop the others anyway
                print(f"bench: could not stop pid {proc.pid}: {e}", file=sys.stderr)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


async def wait_for_line(path: Path, pattern: str, proc, timeout: float = 20.0, count: int = 1):
    """The first ``count`` matches of ``pattern`` in the file a process writes."""
    regex = re.compile(pattern, re.MULTILINE)
    with trio.move_on_after(timeout):
        while True:
            found = regex.findall(path.read_text(errors="replace"))
            if len(found) >= count:
                return found[:count]
            if proc.poll() is not None:
                break
            await trio.sleep(0.02)
    tail = path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{path.name}: no {pattern!r} (exit status {proc.poll()}):\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- receivers ------------------------------------------------------------------------------


class Receiver:
    kind = "python"

    def __init__(self, procs: Processes, name: str):
        self.procs = procs
        self.name = name

    async def start(self) -> None:
        self.count_file = self.procs.tmp / f"{self.name}.count"
        self.count_file.write_bytes(bytes(8))
        argv = [sys.executable, str(BENCH), "--role", "receiver", "--count-file"]
        self.proc, out, _ = self.procs.start(self.name, [*argv, str(self.count_file)])
        (port,) = await wait_for_line(out, r"^listening (\d+)$", self.proc)
        self.port = int(port)
        self._fd = os.open(self.count_file, os.O_RDONLY)
        self._map = mmap.mmap(self._fd, 8, prot=mmap.PROT_READ)

    def count(self) -> int:
        return struct.unpack_from("<Q", self._map, 0)[0]

    async def arrivals(self) -> dict[int, float]:
        conn = await RawConnection.open(("127.0.0.1", self.port))
        try:
            request = f"GET /_arrivals HTTP/1.1\r\nHost: x:{self.port}\r\n\r\n".encode()
            status, body = await conn.request(request)
        finally:
            await conn.aclose()
        return {seq: t for seq, t in json.loads(body)}


class NginxReceiver:
    """nginx from Debian: ``return 204``; a 4-byte access-log line ("204\\n") per request, so the
    log's size counts deliveries. One process (master_process off), run as the current user."""

    kind = "nginx"

    def __init__(self, procs: Processes, binary: str):
        self.procs = procs
        self.binary = binary

    async def start(self) -> None:
        prefix = self.procs.tmp / "nginx"
        prefix.mkdir()
        self.log = prefix / "access.log"
        self.log.touch()
        last_error = None
        for _ in range(3):  # the free port may be taken between choosing and binding it
            self.port = free_port()
            user = ""
            if os.geteuid() == 0:
                import grp
                import pwd

                entry = pwd.getpwuid(os.getuid())
                user = f"user {entry.pw_name} {grp.getgrgid(entry.pw_gid).gr_name};"
            temp = "\n".join(
                f"    {kind}_temp_path {prefix}/{kind};"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            conf = prefix / "nginx.conf"
            conf.write_text(
                f"""{user}
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    log_format bench '$status';
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.port};
        location /ceiling {{ return 204; }}
        location / {{ access_log {self.log} bench; return 204; }}
    }}
}}
"""
            )
            argv = [
                self.binary,
                "-p",
                str(prefix),
                "-c",
                str(conf),
                "-e",
                str(prefix / "error.log"),
            ]
            self.proc, _, err = self.procs.start("nginx", argv)
            if await _port_open(self.port, self.proc):
                return
            last_error = (prefix / "error.log").read_text(errors="replace")[-1000:]
            self.procs.stop(self.proc)
        raise RuntimeError(f"nginx did not start: {last_error}")

    def count(self) -> int:
        return os.stat(self.log).st_size // 4


async def _port_open(port: int, proc, timeout: float = 10.0) -> bool:
    with trio.move_on_after(timeout):
        while proc.poll() is None:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await trio.aclose_forcefully(stream)
            return True
    return False


async def wait_count(count, target: int, timeout: float) -> tuple[bool, float]:
    """Poll ``count()`` until it reaches ``target``; (reached, when)."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if count() >= target:
            return True, now
        if now > deadline:
            return False, now
        await trio.sleep(0.002)


async def measure_ceiling(receiver, seconds: float, tmp: Path) -> dict:
    """The receiver's own ceiling: wrk when installed, else the raw client at 64 connections."""
    url = f"http://127.0.0.1:{receiver.port}/ceiling"
    body = compact(status_event())
    wrk = shutil.which("wrk")
    if wrk:
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
        )
        argv = [wrk, "-t1", "-c64", f"-d{max(1, round(seconds))}s", "-s", str(script), url]
        out = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        match = re.search(rb"Requests/sec:\s+([\d.]+)", out.stdout)
        if match:
            return {"tool": "wrk -t1 -c64", "requests_per_s": float(match[1])}
    request = post_bytes("/ceiling", body)
    done = 0
    deadline = time.monotonic() + seconds

    async def worker():
        nonlocal done
        conn = await RawConnection.open(("127.0.0.1", receiver.port))
        try:
            while time.monotonic() < deadline:
                await conn.request(request)
                done += 1
        finally:
            await conn.aclose()

    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(64):
            nursery.start_soon(worker)
    return {
        "tool": "raw trio client, 64 connections",
        "requests_per_s": done / (time.monotonic() - t0),
    }


# -- the systems under test -------------------------------------------------------------------


class System:
    """A relay-like process: ``tcp`` (host, port) and ``uds`` path take ``POST /events``."""

    name: str
    proc: subprocess.Popen
    tcp: tuple[str, int]
    uds: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _await_addresses(self, err: Path) -> None:
        found = await wait_for_line(err, r"taking events on (\S+)", self.proc, count=2)
        for address in found:
            if address.startswith("/"):
                self.uds = address
            else:
                host, _, port = address.rpartition(":")
                self.tcp = (host, int(port))


class RealRelay(System):
    name = "relay"

    def __init__(self, settings: list[str]):
        self.settings = settings  # extra [relay] lines: --relay-setting

    async def start(self, procs: Processes, sink_url: str, lat_url: str) -> None:
        home = procs.tmp / "relay"
        home.mkdir()
        config = home / "relay.toml"
        settings = "".join(f"{line}\n" for line in self.settings)
        config.write_text(
            f"""# generated by scripts/bench
[relay]
listen = "127.0.0.1:0"
socket = "{home}/relay.sock"
state_dir = "{home}/state"
log_level = "info"
{settings}
[defaults]
timeout = 10.0
tries = 3
backoff = {{ first = 0.5, factor = 2.0, max = 5.0 }}

[[webhooks]]
id = "sink"
url = "{sink_url}"
events = ["whatsapp:message:status"]

[[webhooks]]
id = "lat"                  # the latency receiver; events name it with "webhook_id"
url = "{lat_url}"
events = ["bench:latency-only"]
"""
        )
        self.proc, _, err = procs.start(
            "relay", [sys.executable, "-m", "relay", "run", "--config", str(config)]
        )
        await self._await_addresses(err)
        self.journal_dir = home / "state"


class NaiveRelay(System):
    name = "naive"

    async def start(self, procs: Processes, sink_url: str, lat_url: str) -> None:
        home = procs.tmp / "naive"
        home.mkdir()
        argv = [
            sys.executable,
            str(NAIVE),
            "--socket",
            str(home / "naive.sock"),
            "--journal",
            str(home / "events.log"),
            "--webhook",
            f"sink={sink_url}",
            "--webhook",
            f"lat={lat_url}",
        ]
        self.proc, _, err = procs.start("naive", argv)
        await self._await_addresses(err)


# -- phases ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, procs: Processes):
        self.args = args
        self.procs = procs
        self.started = time.monotonic()
        self.event = status_event()
        self.event_body = compact(self.event)
        self.notes: list[str] = []

    def time_left(self) -> float:
        return self.args.max_seconds - (time.monotonic() - self.started)

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    async def saturate(self, system: System, via, sink) -> dict:
        """End to end at saturation: batches of 100, keeping at most ``cap`` events undelivered;
        the rate is what the receiver counts over the window, after a warm-up."""
        a = self.args
        batch = min(100, a.events)
        request = post_bytes("/events", compact([self.event] * batch))
        base = sink.count()
        accepted = errors = in_progress = 0
        stop = False
        t0 = time.monotonic()
        split = CpuSplit(system, sink.proc.pid)

        async def poster(target) -> None:
            nonlocal accepted, errors, in_progress
            conn = await RawConnection.open(target)
            try:
                while not stop and accepted + errors + in_progress + batch <= a.events:
                    if accepted + in_progress - (sink.count() - base) >= a.cap:
                        await trio.sleep(0.001)
                        continue
                    in_progress += batch
                    status, _ = await conn.request(request)
                    in_progress -= batch
                    if status == 202:
                        accepted += batch
                    else:
                        errors += batch
            finally:
                await conn.aclose()

        marks = []

        async def clock() -> None:
            nonlocal stop
            await trio.sleep(a.warmup)
            marks.append((time.monotonic(), sink.count()))
            await trio.sleep(a.window)
            marks.append((time.monotonic(), sink.count()))
            stop = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(clock)
            async with trio.open_nursery() as posters:
                for _ in range(a.batch_connections):
                    posters.start_soon(poster, via)
            nursery.cancel_scope.cancel()  # all sent before the window closed
        reached, t_done = await wait_count(sink.count, base + accepted, a.drain_timeout)
        delivered = sink.count() - base
        cpu = split.per_event(delivered)
        own = sum(us for part, us in cpu["cpu_us_per_event"].items() if part not in BENCH_PARTS)
        if len(marks) == 2:
            (t1, d1), (t2, d2) = marks
            rate = (d2 - d1) / (t2 - t1)
        else:  # all events went before the warm-up ended (tiny runs)
            rate = delivered / max(t_done - t0, 1e-9)
        return {
            "sent": accepted,
            "errors": errors,
            "delivered": delivered,
            "all_delivered": reached and errors == 0,
            "events_per_s": rate,
            "cpu_s_per_1000": own / 1000,  # the system's processes: µs an event = s a 1,000
            **cpu,
        }

    async def ingest(
        self, system: System, sink, *, batch: int, clients: int, limit: int, alone: bool
    ) -> dict:
        """Durable ingest: acks (202s, each after the fsync) per second, not throttled.

        ``alone``: events no webhook takes, so nothing is delivered meanwhile: the ingest path
        and the journal, without delivery competing for the same cores."""
        a = self.args
        batch = min(batch, limit)
        event = unrouted_event() if alone else self.event
        base = sink.count()
        split = CpuSplit(system, sink.proc.pid)
        sent = await self.send(
            system.tcp[1],
            "/events",
            limit // batch,
            rate=0,
            connections=clients,
            body=compact([event] * batch),
        )
        answered = [t for t in sent["answered"] if t is not None]
        accepted = (len(answered) - sent["errors"]) * batch
        errors = (sent["errors"] + sent["lost"]) * batch
        elapsed = max(max(answered, default=0.0) - sent["t0"], 1e-9)
        rates = {"events_per_s": accepted / elapsed, "acks_per_s": accepted / batch / elapsed}
        if alone:  # acknowledged, and nothing to deliver
            await self.settle(system)  # the writer's last commits are this phase's too
            return {
                "acknowledged": accepted,
                "errors": errors,
                **rates,
                **split.per_event(accepted, load=sent),
            }
        timeout = max(a.drain_timeout, 3 * accepted / max(self._e2e_rate(system), 100))
        reached, _ = await wait_count(sink.count, base + accepted, timeout)
        await self.settle(system)  # and the outcomes' commits, after the last delivery
        return {
            "sent": accepted,
            "errors": errors,
            "delivered": sink.count() - base,
            "all_delivered": reached and errors == 0,
            **rates,
            **split.per_event(accepted, load=sent),
        }

    def _e2e_rate(self, system) -> float:
        return self._e2e_rate_of(system.name)

    def _e2e_rate_of(self, name: str) -> float:
        return self.results[name].get("e2e_http", {}).get("events_per_s", 0.0)

    async def send(
        self, port: int, path: str, n: int, *, rate: float, connections: int, body: bytes = b""
    ) -> dict:
        """Run the sender (``sender_role``, a process of its own) and return what it printed:
        paced latency events when ``rate``, else ``body`` as fast as ``connections`` allow."""
        a = self.args
        argv = [sys.executable, str(BENCH), "--role", "sender", "--port", str(port)]
        argv += ["--path", path, "--rate", str(rate), "--events", str(n)]
        argv += ["--connections", str(connections)]
        if rate:
            argv += ["--seconds", str(a.drain_timeout)]
            timeout = n / rate + a.drain_timeout + 30
        else:
            body_file = self.procs.tmp / "body.json"
            body_file.write_bytes(body)
            argv += ["--seconds", str(a.ingest_window), "--body", str(body_file)]
            timeout = a.ingest_window + 60
        proc, out, err = self.procs.start("sender", argv)
        with trio.move_on_after(timeout):
            while proc.poll() is None:
                await trio.sleep(0.02)
        self.procs.stop(proc)
        lines = out.read_text().strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"the sender failed: {err.read_text(errors='replace')[-2000:]}")
        return json.loads(lines[-1])

    async def paced(
        self, rate: float, port: int, path: str, lat: Receiver, system: System | None = None
    ) -> dict:
        """Single events at ``rate``/s from the sender, on 64 connections, to ``port``;
        latency = the receiver's 2xx time - the time the event was due (both CLOCK_MONOTONIC,
        so across processes)."""
        a = self.args
        n = max(1, min(a.events, int(rate * a.paced_seconds)))
        await lat.arrivals()  # forget earlier ones
        base = lat.count()
        split = CpuSplit(system, lat.proc.pid) if system is not None else None
        paced = await self.send(port, path, n, rate=rate, connections=64)
        t0, answered = paced["t0"], paced["answered"]
        errors = paced["errors"] + answered.count(None)
        reached, _ = await wait_count(lat.count, base + n - errors, a.drain_timeout)
        cpu = {}
        if split is not None:
            await self.settle(system)
            cpu = split.per_event(n, load=paced)
        arrivals = await lat.arrivals()
        skip = int(rate * 0.1) if n > rate * 0.5 else 0  # the first 100 ms warm up
        latencies = sorted(
            (arrivals[seq] - (t0 + seq / rate)) * 1000 for seq in range(skip, n) if seq in arrivals
        )
        # The sender's own answer (a relay's 202, after the fsync): how much of the latency
        # is ingest and the journal, and how much the delivery after it.
        answers = sorted(
            (answered[seq] - (t0 + seq / rate)) * 1000
            for seq in range(skip, n)
            if answered[seq] is not None
        )
        return {
            "rate": rate,
            "sent": n - errors,
            "errors": errors,
            "delivered": lat.count() - base,
            "all_delivered": reached and errors == 0,
            "p50_ms": _percentile(latencies, 50),
            "p99_ms": _percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else None,
            "samples": len(latencies),
            "answer_p50_ms": _percentile(answers, 50),
            "answer_p99_ms": _percentile(answers, 99),
            **cpu,
        }

    async def run(self) -> dict:
        a = self.args
        procs = self.procs
        self.results: dict[str, dict] = {"direct": {}, "naive": {}, "relay": {}}
        lat = Receiver(procs, "receiver")
        await lat.start()
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
        )
        if a.receiver == "nginx" and not nginx:
            raise SystemExit("bench: --receiver nginx, but nginx is not installed")
        if nginx and a.receiver != "python":
            sink = NginxReceiver(procs, nginx)
            await sink.start()
        else:
            sink = lat
        self.log(f"receiver: {sink.kind} on 127.0.0.1:{sink.port}; latency receiver: python")
        sink_url = f"http://127.0.0.1:{sink.port}/hook"
        lat_url = f"http://127.0.0.1:{lat.port}/hook"
        ceiling = await measure_ceiling(sink, a.ceiling_seconds, procs.tmp)
        self.log(
            f"receiver ceiling: {ceiling['requests_per_s']:,.0f} requests/s ({ceiling['tool']})"
        )
        ticks_before = machine_ticks()
        info = {
            "receiver": sink.kind,
            "receiver_ceiling": ceiling,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "event_bytes": len(self.event_body),
            "quick": a.quick,
        }

        # direct: measured first and again last; the faster run is the reference, as this
        # machine's noise only ever slows a run down.
        self.results["direct"] = {"e2e_http": await self.direct(sink, "first")}
        rate = self._e2e_rate_of("direct")
        if rate > 0.5 * ceiling["requests_per_s"]:
            self.notes.append(
                f"direct reached {rate / ceiling['requests_per_s']:.0%} of the receiver's ceiling:"
                " the receiver may limit the figures (install nginx)"
            )
        for pace in a.rates:
            result = await self.paced(pace, lat.port, "/hook", lat)
            self.results["direct"][f"latency_{pace:g}"] = result
            self.log(f"direct paced {pace:g}/s: {_latency_text(result)}")

        # The relay first: a slow naive run must not use up the time the relay needs (--quick).
        for cls in (RealRelay, NaiveRelay):
            if cls.name not in a.systems:
                continue
            if self.time_left() < 10:
                self.notes.append(f"{cls.name}: skipped, out of time")
                continue
            system = RealRelay(a.relay_setting) if cls is RealRelay else cls()
            await system.start(procs, sink_url, lat_url)
            try:
                await self.measure_system(system, sink, lat)
            finally:
                self.results[system.name]["rss_peak_mb"] = system_peak_rss_mb(system.pid)
                procs.stop(system.proc, grace=5.0)
        if self.time_left() > a.warmup + a.window + 5:
            again = await self.direct(sink, "last")
            runs = [self.results["direct"]["e2e_http"], again]
            best = max(runs, key=lambda r: r["events_per_s"])
            best["runs_events_per_s"] = [r["events_per_s"] for r in runs]
            best["sent"] = sum(r["sent"] for r in runs)
            best["delivered"] = sum(r["delivered"] for r in runs)
            best["all_delivered"] = all(r["all_delivered"] for r in runs)
            self.results["direct"]["e2e_http"] = best
        self.results["direct"]["rss_peak_mb"] = max(self._direct_rss)
        # On a shared virtual machine the host may take CPU from this one: then every figure
        # is slower, and not comparable with another run's.
        (total0, steal0), (total1, steal1) = ticks_before, machine_ticks()
        info["steal"] = steal = (steal1 - steal0) / max(total1 - total0, 1)
        if steal > STEAL_WARNING:
            self.notes.append(
                f"the host took {steal:.0%} of this machine's CPU during the run (steal time):"
                " its figures are not comparable with an undisturbed run's"
            )
        return self.report(info)

    async def direct(self, sink, which: str) -> dict:
        """The direct baseline's saturation run, in its own process (its CPU and RSS alone)."""
        a = self.args
        argv = [sys.executable, str(BENCH), "--role", "direct", "--port", str(sink.port)]
        argv += ["--events", str(a.events), "--seconds", str(a.window + a.warmup)]
        base = sink.count()
        proc, out, _ = self.procs.start(f"direct-{which}", argv)
        with trio.move_on_after(a.window + a.warmup + 30):
            while proc.poll() is None:
                await trio.sleep(0.05)
        self.procs.stop(proc)
        direct = json.loads(out.read_text().strip().splitlines()[-1])
        reached, _ = await wait_count(sink.count, base + direct["ok"], a.drain_timeout)
        self._direct_rss = [*getattr(self, "_direct_rss", []), direct["rss_peak_mb"]]
        rate = direct["ok"] / direct["elapsed"]
        self.log(f"direct ({which}): {rate:,.0f} events/s")
        return {
            "sent": direct["sent"],
            "delivered": sink.count() - base,
            "all_delivered": reached and direct["ok"] == direct["sent"],
            "events_per_s": rate,
            "cpu_s_per_1000": direct["cpu"] / max(direct["ok"], 1) * 1000,
        }

    async def measure_system(self, system: System, sink, lat: Receiver) -> dict:
        a = self.args
        results = self.results[system.name]
        results["pid"] = system.pid
        for key, via in (("e2e_http", system.tcp), ("e2e_uds", system.uds)):
            if key not in a.phases:
                continue
            await self.settle(system)
            async with self.py_spy(system, key, a.warmup + a.window):
                results[key] = result = await self.saturate(system, via, sink)
            self.log(f"{system.name} {key}: {result['events_per_s']:,.0f} events/s")
        # Without an end-to-end figure (--phases), assume the targets' rate to size phases.
        rate = self._e2e_rate(system) or 8000.0
        budget = rate * a.ingest_drain
        for key, batch, clients in INGEST_PHASES:
            alone = key.endswith("_alone")
            if key not in a.phases or (alone and system.name != "relay"):
                continue  # the naive relay sends every event somewhere
            limit = max(batch, min(a.events, int(budget)))
            await self.settle(system)
            async with self.py_spy(system, key, a.ingest_window):
                results[key] = r = await self.ingest(
                    system, sink, batch=batch, clients=clients, limit=limit, alone=alone
                )
            rates = f"{r['events_per_s']:,.0f} events/s, {r['acks_per_s']:,.0f} acks/s"
            self.log(f"{system.name} {key}: {rates}")
        for pace in a.rates:
            key = f"latency_{pace:g}"
            if key not in a.phases:
                continue
            if rate < 0.5 * pace:  # it would take too long to drain
                results[key] = {"skipped": f"saturated: end to end {self._e2e_rate(system):,.0f}/s"}
                continue
            await self.settle(system)
            async with self.py_spy(system, key, a.paced_seconds):
                results[key] = r = await self.paced(pace, system.tcp[1], "/events", lat, system)
            if rate < pace:
                r["saturated"] = True
                self.notes.append(
                    f"{system.name}: {pace:,.0f}/s paced is beyond its end-to-end rate "
                    f"({self._e2e_rate(system):,.0f}/s): its latency there is queueing"
                )
            self.log(f"{system.name} paced {pace:g}/s: {_latency_text(r)}")
        return results

    async def settle(self, system: System, timeout: float = 5.0) -> None:
        """Wait until ``system`` is idle (< 20% of a CPU over 100 ms): work a phase left queued
        (journal writes, say) must not be charged to the next one."""
        deadline = time.monotonic() + timeout
        before = system_cpu_seconds(system.pid)
        while time.monotonic() < deadline:
            await trio.sleep(0.1)
            now = system_cpu_seconds(system.pid)
            if now - before < 0.02:
                return
            before = now
        self.notes.append(f"{system.name}: still busy {timeout:g} s after a phase")

    @contextlib.asynccontextmanager
    async def py_spy(self, system: System, phase: str, seconds: float):
        """``--py-spy PATH``: record the relay during ``--py-spy-phase``."""
        a = self.args
        if not a.py_spy or system.name != "relay" or phase != a.py_spy_phase:
            yield
            return
        spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        argv = [spy_bin, "record", "-o", a.py_spy, "--pid", str(system.pid), "-r", "200"]
        argv.append("--subprocesses")  # the delivery process and the journal writer too
        argv += ["-d", str(max(1, round(seconds)))]
        if not a.py_spy.endswith(".svg"):
            argv += ["--format", "raw"]  # collapsed stacks, one per line
        if a.py_spy_gil:
            argv.append("--gil")
        spy, _, err = self.procs.start("py-spy", argv)
        await trio.sleep(0.3)  # attaching takes a moment
        yield
        with trio.move_on_after(30):
            while spy.poll() is None:
                await trio.sleep(0.1)
        self.log(f"py-spy: {a.py_spy} ({err.read_text(errors='replace').strip()[-200:]})")

    def report(self, info: dict) -> dict:
        r = self.results
        rows = []

        def row(
            label,
            key,
            field,
            *,
            unit,
            lower_is_better=False,
            ref=("e2e_http", "events_per_s"),
            target="",
        ):
            values = {name: _get(r[name], key, field) for name in r}
            reference = _get(r["direct"], *ref)
            ratios = {
                name: (v / reference if v is not None and reference else None)
                for name, v in values.items()
            }
            rows.append(
                {
                    "figure": label,
                    "key": f"{key}.{field}" if key else field,
                    "unit": unit,
                    "lower_is_better": lower_is_better,
                    "reference": "direct " + ".".join(ref),
                    "target": target,
                    **{name: values[name] for name in r},
                    **{f"{name}_x_direct": ratios[name] for name in r},
                }
            )

        row(
            "end to end, HTTP batches of 100",
            "e2e_http",
            "events_per_s",
            unit="events/s",
            target=">= 1.0x direct, >= 10x naive",
        )
        row("end to end, Unix socket batches of 100", "e2e_uds", "events_per_s", unit="events/s")
        row(
            "durable ingest, batches of 100, 4 clients",
            "ingest_batch",
            "events_per_s",
            unit="events/s",
            target=">= 50,000/s",
        )
        row(
            "durable ingest, single events, 16 clients",
            "ingest_single",
            "acks_per_s",
            unit="acks/s",
            target=">= 8,000/s",
        )
        row(
            "durable ingest alone (nothing to deliver), batches of 100",
            "ingest_batch_alone",
            "events_per_s",
            unit="events/s",
        )
        row(
            "durable ingest alone (nothing to deliver), single events",
            "ingest_single_alone",
            "acks_per_s",
            unit="acks/s",
        )
        for pace in self.args.rates:
            key = f"latency_{pace:g}"
            target = {1000: "p99 <= 3 ms", 3000: "p99 <= 5 ms"}.get(int(pace), "")
            for field in ("p50_ms", "p99_ms"):
                row(
                    f"added latency at {pace:,.0f}/s paced, {field[:3]}",
                    key,
                    field,
                    unit="ms",
                    lower_is_better=True,
                    ref=(key, field),
                    target=target if field == "p99_ms" else "",
                )
        row("peak RSS", None, "rss_peak_mb", unit="MB", lower_is_better=True, ref=("rss_peak_mb",))
        row(
            "CPU per 1,000 events (end to end)",
            "e2e_http",
            "cpu_s_per_1000",
            unit="CPU s",
            lower_is_better=True,
            ref=("e2e_http", "cpu_s_per_1000"),
        )

        sent = delivered = 0
        all_delivered = True
        for figures in r.values():
            for value in figures.values():
                if isinstance(value, dict) and "sent" in value:
                    sent += value["sent"]
                    delivered += min(value["delivered"], value["sent"])
                    all_delivered &= bool(value["all_delivered"])
        relay_e2e = _get(r["relay"], "e2e_http", "events_per_s")
        naive_e2e = _get(r["naive"], "e2e_http", "events_per_s")
        return {
            "info": info,
            "figures": rows,
            "systems": r,
            "relay_x_naive": relay_e2e / naive_e2e if relay_e2e and naive_e2e else None,
            "sent": sent,
            "delivered": delivered,
            "all_delivered": all_delivered,
            "notes": self.notes,
            "elapsed_s": time.monotonic() - self.started,
        }


def _get(figures: dict, *path):
    value = figures
    for key in path:
        if key is None:
            continue
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def _latency_text(result: dict) -> str:
    if result["p99_ms"] is None:
        return "no latency samples"
    return (
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
        f" (answered: p50 {result['answer_p50_ms']:.2f}, p99 {result['answer_p99_ms']:.2f})"
    )


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


# -- the table -------------------------------------------------------------------------------


def format_table(report: dict) -> str:
    info = report["info"]
    ceiling = info["receiver_ceiling"]
    lines = [
        f"relay bench: {info['receiver']} receiver "
        f"(ceiling {ceiling['requests_per_s']:,.0f} req/s, "
        f"{ceiling['tool']}), {info['event_bytes']}-byte status events, Python {info['python']}, "
        f"{info['cpus']} CPUs{', --quick' if info['quick'] else ''}",
        "",
    ]
    header = ("figure", "direct", "naive", "relay", "target")
    table = [header]
    for row in report["figures"]:
        cells = [f"{row['figure']} ({row['unit']})"]
        for name in ("direct", "naive", "relay"):
            value = row.get(name)
            if value is None:
                cells.append("-")
                continue
            text = (
                f"{value:,.0f}"
                if value >= 100
                else f"{value:.3g}"
                if value < 10
                else f"{value:.1f}"
            )
            ratio = row.get(f"{name}_x_direct")
            if name != "direct" and ratio is not None:
                text += f" ({ratio:.2f}x)"
            cells.append(text)
        cells.append(row["target"])
        table.append(tuple(cells))
    lines += aligned(table, left=(0, 4))
    lines.append("")
    if report["relay_x_naive"]:
        lines.append(f"relay / naive end to end: {report['relay_x_naive']:.1f}x")
    lines.append(
        f"events sent {report['sent']:,}, delivered {report['delivered']:,}"
        f"{'' if report['all_delivered'] else '  (NOT ALL DELIVERED)'}; "
        f"{report['elapsed_s']:.0f} s; ratios are to direct in the same run"
    )
    runs = report["systems"]["direct"].get("e2e_http", {}).get("runs_events_per_s")
    if runs:
        text = ", ".join(f"{r:,.0f}" for r in runs)
        lines.append(f"direct end to end: the faster of a run first and a run last ({text}/s)")
    lines += format_cpu_split(report)
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_cpu_split(report: dict) -> list[str]:
    """CPU µs per event, process by process, for each phase that measured it."""
    rows = []
    for name in ("relay", "naive"):
        for phase, result in report["systems"].get(name, {}).items():
            if isinstance(result, dict) and "cpu_us_per_event" in result:
                rows.append((f"{name} {phase}", result["cpu_us_per_event"]))
    if not rows:
        return []
    parts = [part for _, split in rows for part in split if part not in BENCH_PARTS]
    parts = [*dict.fromkeys(parts), *BENCH_PARTS]
    cpus = report["info"]["cpus"]
    header = ("CPU per event (µs)", *parts, "total", f"{cpus} CPUs busy at")
    table = [header]
    for label, split in rows:
        total = sum(split.values())
        cells = [f"{split[p]:.0f}" if p in split else "-" for p in parts]
        table.append((label, *cells, f"{total:.0f}", f"{cpus * 1e6 / max(total, 1e-9):,.0f}/s"))
    return ["", *aligned(table, left=(0,))]


def aligned(table: list[tuple[str, ...]], left: tuple[int, ...]) -> list[str]:
    """The rows as lines of columns, the ``left`` ones flush left and the rest right, with a rule
    under the first row (the header)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for i, row in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(w) if j in left else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


# -- main -----------------------------------------------------------------------------------


INGEST_PHASES = (  # key, events per request, clients
    ("ingest_batch", 100, 4),
    ("ingest_single", 1, 16),
    ("ingest_batch_alone", 100, 4),
    ("ingest_single_alone", 1, 16),
)
PHASES = (
    "e2e_http",
    "e2e_uds",
    *(key for key, _, _ in INGEST_PHASES),
    "latency_1000",
    "latency_3000",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short phases: under 30 s")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--events", type=int, default=10**9, help="at most this many events per phase")
    p.add_argument("--receiver", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument("--systems", default="naive,relay", help="comma-separated: naive,relay")
    p.add_argument(
        "--py-spy",
        metavar="SVG",
        help="py-spy record the relay during a phase (.svg: flame graph, else collapsed stacks)",
    )
    p.add_argument(
        "--py-spy-phase",
        default="e2e_http",
        choices=PHASES,
    )
    p.add_argument("--py-spy-gil", action="store_true", help="only samples holding the GIL")
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, of {','.join(PHASES)} (default: all)",
    )
    p.add_argument(
        "--relay-setting",
        action="append",
        default=[],
        metavar="LINE",
        help="a line for relay's [relay] table, e.g. 'delivery = \"inline\"' (repeatable)",
    )
    p.add_argument("--role", choices=("receiver", "direct", "sender"), help=argparse.SUPPRESS)
    p.add_argument("--count-file", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, help=argparse.SUPPRESS)
    p.add_argument("--body", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.systems = set(args.systems.split(","))
    args.phases = set(args.phases.split(","))
    if unknown := args.phases - set(PHASES):
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    quick = args.quick
    args.warmup = 0.3 if quick else 1.0  # seconds before the saturation window opens
    args.window = 1.0 if quick else 4.0  # saturation window
    args.cap = 1000 if quick else 3000  # most undelivered events at saturation
    args.ingest_window = 0.7 if quick else 2.0
    args.ingest_drain = 1.0 if quick else 5.0  # ingest phases send what drains in this long
    args.paced_seconds = 1.0 if quick else 3.0
    args.ceiling_seconds = 1.0 if quick else 3.0
    args.drain_timeout = 10.0 if quick else 20.0
    args.max_seconds = 25.0 if quick else 170.0
    args.rates = (1000.0, 3000.0)
    args.batch_connections = 4
    return args


class Interrupted(Exception):
    pass


async def run_until_signalled(bench: Bench) -> dict:
    """``bench.run()``, stopped by SIGINT, SIGTERM or SIGHUP (then main's finally kills all)."""
    result = None
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:

            async def watch():
                async for signum in received:
                    print(f"bench: {signal.Signals(signum).name}", file=sys.stderr)
                    nursery.cancel_scope.cancel()
                    return

            async def run():
                nonlocal result
                result = await bench.run()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(run)
    if result is None:
        raise Interrupted
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role == "receiver":
        receiver_role(args)
        return 0
    if args.role == "sender":
        sender_role(args)
        return 0
    if args.role == "direct":
        trio.run(direct_role, args)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    procs = Processes(tmp)
    try:
        bench = Bench(args, procs)
        report = trio.run(run_until_signalled, bench)
    except (KeyboardInterrupt, Interrupted):
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if os.environ.get("RELAY_BENCH_KEEP"):
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["all_delivered"] else 1


if __name__ == "__main__":
    sys.exit(main())
