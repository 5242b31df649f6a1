"""The phases that measure one system, each a method of ``Phases``: end to end at saturation,
durable ingest (with or without deliveries), and single events paced at a rate for latency;
how each sends (the raw client, or the sender process), waits for its deliveries, and splits
its CPU by process. Between phases a system settles, and ``--py-spy`` records one phase."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

import trio

from .cpu import BENCH_PARTS, CpuSplit, system_cpu_seconds
from .events import compact, post_bytes, status_event, unrouted_event
from .load import RawConnection
from .processes import BENCH, Processes
from .receivers import Receiver, wait_count
from .systems import System

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


class Phases:
    """A run's state (its arguments, processes, clock, notes and results) and the phases it
    runs; ``Bench`` (run.py) runs them in order."""

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


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]
