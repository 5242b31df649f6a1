"""``scripts/bench --journal postgresql``: how far relays sharing one PostgreSQL journal go.

On one machine the relays and the server share its cores, so adding relays cannot show scaling
here; what this measures instead are the numbers a model of it needs (README, "Many relays on
PostgreSQL"), on one private server (initdb in the bench's temporary directory, a Unix socket,
PostgreSQL's durable defaults: fsync and synchronous_commit on, as a real deployment):

- one relay on SQLite, then one relay on PostgreSQL, then two relays on one PostgreSQL: events
  a second end to end (posted in batches of ``BATCH`` by ``CLIENTS`` connections, delivered to
  the bench's receiver) and each relay's CPU per event (its three processes);
- the server's transactions committed per event (``pg_stat_database.xact_commit``) and its CPU
  per commit (every process of the server);
- pgbench's TPS (its TPC-B-like script, ``-N``) against the same server, in the same run: what
  this server commits when nothing else runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import trio

from .cpu import system_cpu_seconds
from .receivers import Receiver, wait_count

ROOT = Path(__file__).resolve().parents[2]
BATCH = 10  # events per POST
CLIENTS = 8  # connections posting at once, per relay
DURABLE = {"max_connections": "100", "shared_buffers": "128MB"}  # fsync etc.: the defaults


def add_option(parser) -> None:
    parser.add_argument(
        "--journal",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql: one relay on SQLite against one and two on a private PostgreSQL,"
        " its commits and CPU, and pgbench on the same server",
    )


def _server():
    sys.path.insert(0, str(ROOT))
    from tests.postgres import PrivateServer, binaries

    found = binaries()
    if found is None:
        raise SystemExit("bench: --journal postgresql needs PostgreSQL's server binaries")
    return PrivateServer(found, settings=DURABLE).start()


def _server_cpu(server) -> float:
    """CPU seconds of every process of the server (the postmaster and its children)."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    return system_cpu_seconds(pid)


def _commits(server, database: str) -> int:
    import psycopg

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()[0]


def pgbench(server, seconds: float) -> float:
    import subprocess

    with server.admin() as conn:
        conn.execute("CREATE DATABASE pgbench")
    env = {**os.environ, "PGHOST": server.socket_dir, "PGUSER": "postgres"}
    run = [str(server.bin / "pgbench"), "-q", "pgbench"]
    subprocess.run(
        [*run[:1], "-i", "-s", "1", "-q", "pgbench"], env=env, check=True, capture_output=True
    )
    out = subprocess.run(
        [run[0], "-n", "-N", "-c", "4", "-j", "2", "-T", str(int(seconds)), "pgbench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(next(line for line in out.splitlines() if line.startswith("tps")).split()[2])


def _config(home: Path, sink_url: str, url: str | None) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "relay.toml"
    config.write_text(
        f"""
[relay]
listen = "127.0.0.1:0"
state_dir = "{home}/state"
allow_networks = ["127.0.0.0/8"]
retention = 0
[[webhooks]]
id = "sink"
url = "{sink_url}"
"""
        + (f'[journal]\nurl = "{url}"\n' if url else "")
    )
    return config


async def _start_relay(procs, name: str, config: Path):
    import re

    argv = [sys.executable, "-m", "relay", "run", "-c", str(config)]
    proc, _, err = procs.start(name, argv)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"taking events on (127\.0\.0\.1:\d+)", Path(err).read_text())
        if found:
            return proc, f"http://{found.group(1)}"
        await trio.sleep(0.05)
    raise SystemExit(f"bench: relay {name} did not start: {Path(err).read_text()[-2000:]}")


async def _load(urls: list[str], events: int) -> None:
    body = json.dumps(
        [{"event": "whatsapp:message:status", "payload": {"id": "m", "status": "read"}}] * BATCH
    )
    per_client = events // (BATCH * CLIENTS * len(urls))

    async def client(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(per_client):
                answer = await http.post(
                    url + "/events", content=body, headers={"content-type": "application/json"}
                )
                answer.raise_for_status()

    async with trio.open_nursery() as nursery:
        for url in urls:
            for _ in range(CLIENTS):
                nursery.start_soon(client, url)
    return per_client * BATCH * CLIENTS * len(urls)


async def measure(procs, sink, server, label: str, relays: int, events: int) -> dict:
    database = None
    url = None
    if server is not None:
        database = f"relay_{label.replace(' ', '_')}"
        with server.admin() as conn:
            conn.execute(f"CREATE DATABASE {database}")
        url = server.url(database)
    sink_url = f"http://127.0.0.1:{sink.port}/hook"
    started = [
        await _start_relay(
            procs, f"{label}-{n}", _config(procs.tmp / f"{label}-{n}", sink_url, url)
        )
        for n in range(relays)
    ]
    await _load([u for _, u in started], 200)  # warm up: connections, prepared statements
    await trio.sleep(1)
    before = sink.count()
    cpu = [system_cpu_seconds(p.pid) for p, _ in started]
    server_cpu = _server_cpu(server) if server else 0.0
    commits = _commits(server, database) if server else 0
    t0 = time.monotonic()
    sent = await _load([u for _, u in started], events)
    reached, t1 = await wait_count(sink.count, before + sent, 120)
    seconds = t1 - t0
    relay_cpu = sum(system_cpu_seconds(p.pid) - c for (p, _), c in zip(started, cpu, strict=True))
    result = {
        "label": label,
        "relays": relays,
        "events": sent,
        "delivered_all": reached,
        "events_per_s": sent / seconds,
        "relay_cpu_us_per_event": relay_cpu / sent * 1e6,
    }
    if server is not None:
        await trio.sleep(1.2)  # the statistics reach pg_stat_database within a second
        commits = _commits(server, database) - commits
        used = _server_cpu(server) - server_cpu
        result |= {
            "commits_per_event": commits / sent,
            "server_cpu_us_per_event": used / sent * 1e6,
            "server_cpu_us_per_commit": used / commits * 1e6 if commits else None,
            "commits_per_s": commits / seconds,
        }
    for proc, _ in started:
        proc.terminate()
    for proc, _ in started:
        proc.wait(30)
    return result


async def run_postgresql(args, procs) -> dict:
    events = 6000 if args.quick else 30000
    sink = Receiver(procs, "receiver")
    await sink.start()
    server = _server()
    try:
        results = [
            await measure(procs, sink, None, "sqlite", 1, events),
            await measure(procs, sink, server, "postgresql", 1, events),
            await measure(procs, sink, server, "postgresql 2 relays", 2, events),
        ]
        tps = pgbench(server, 3 if args.quick else 10)
    finally:
        server.stop()
    return {"journal": results, "pgbench_tps": tps}


def format_postgresql(report: dict) -> str:
    lines = [
        f"{'journal':<22}{'events/s':>10}{'relay µs/event':>16}{'commits/event':>15}"
        f"{'server µs/event':>17}{'server µs/commit':>18}{'commits/s':>11}"
    ]

    def cell(r, key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "-"

    for r in report["journal"]:
        lines.append(
            f"{r['label']:<22}{r['events_per_s']:>10,.0f}{r['relay_cpu_us_per_event']:>16,.0f}"
            f"{cell(r, 'commits_per_event', '.3f'):>15}"
            f"{cell(r, 'server_cpu_us_per_event', ',.0f'):>17}"
            f"{cell(r, 'server_cpu_us_per_commit', ',.0f'):>18}"
            f"{cell(r, 'commits_per_s', ',.0f'):>11}"
        )
    lines.append(
        f"pgbench (TPC-B-like, -N, 4 clients) on the same server: {report['pgbench_tps']:,.0f} TPS"
    )
    return "\n".join(lines)


def main(args) -> int:
    """The whole ``--journal postgresql`` run: its own processes, its table, its JSON."""
    import shutil
    import tempfile

    from .processes import Processes

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-pg-"))
    procs = Processes(tmp)
    try:
        report = trio.run(run_postgresql, args, procs)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(format_postgresql(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["delivered_all"] for r in report["journal"]) else 1
