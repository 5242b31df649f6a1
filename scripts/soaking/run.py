"""The order of a soak run, and its summary (scripts/soaking/__init__.py says what it checks)."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import trio

from soaking.disk import disk_phase, free_port
from soaking.receiver import FlappingReceiver
from soaking.relay import VICTIMS, Relay, write_config
from soaking.traffic import Traffic

# What the relay's exit status must be after each kill: killed itself, or stopped (status 1)
# because a process it cannot run without died.
EXPECTED_STATUS = {"group": -9, "relay": -9, "writer": 1, "delivery": 1}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--kills", type=int, default=200, help="kill -9s (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    parser.add_argument("--rate", type=float, default=300.0, help="events/s sent (default 300)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="most seconds between kills (default 1.0)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=30.0, help="bound on the kill phase (default 30)"
    )
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument("--no-disk", action="store_true", help="skip the full-disk phase")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    workdir = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    try:
        summary = trio.run(soak, args, seed, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(verdict(summary), file=sys.stderr)
    return 0 if summary["ok"] else 1


async def soak(args, seed: int, workdir: Path) -> dict:
    rng = random.Random(seed)
    started = time.monotonic()
    receiver = FlappingReceiver(rng)
    traffic = Traffic(rng)
    port = free_port()
    relay = Relay(workdir / "relay.toml", workdir / "relay.log")
    report: dict = {"seed": seed, "kills": Counter(), "stalls": 0, "unexpected_exits": []}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.run)
            state_dir = workdir / "state"
            write_config(relay.config, port=port, state_dir=state_dir, receiver_url=receiver.url)
            traffic.url = f"http://127.0.0.1:{port}"
            await relay.start()
            nursery.start_soon(receiver.flap)
            for _ in range(3):
                nursery.start_soon(traffic.send, args.rate / 3)
            nursery.start_soon(traffic.send_hostile)
            await kill_loop(args, rng, relay, report)
            traffic.running = False
            receiver.settle()
            if not relay.alive():
                await relay.start()
            report["pending_at_end"] = await drain(
                traffic, receiver, state_dir / "journal.sqlite3", args.drain_timeout
            )
            if (status := await relay.stop()) != 0:
                report["unexpected_exits"].append({"at": "SIGTERM", "status": status})
            if args.no_disk:
                report["disk"] = {"skipped": "--no-disk"}
            else:
                report["disk"] = await disk_phase(workdir, receiver, rng)
            nursery.cancel_scope.cancel()
    finally:
        relay.kill_all()
    return summarize(report, traffic, receiver, relay, time.monotonic() - started)


async def kill_loop(args, rng: random.Random, relay: Relay, report: dict) -> None:
    deadline = trio.current_time() + args.max_minutes * 60
    turn: list[str] = []
    for _ in range(args.kills):
        if trio.current_time() > deadline:
            report["stopped_early"] = f"--max-minutes {args.max_minutes:g} reached"
            return
        await trio.sleep(rng.uniform(0.05, args.interval))
        if not relay.alive():  # it exited by itself: a crash
            report["unexpected_exits"].append(
                {"at": "running", "status": relay.process.returncode, "log": tail(relay.log)}
            )
            await relay.wait_gone(relay.pids())
            await relay.start()
            continue
        if not turn:  # each victim in turn, in a random order each round
            turn = list(VICTIMS)
            rng.shuffle(turn)
        victim = turn.pop()
        writer = relay.pids().get("writer")
        if writer and rng.random() < 0.5:  # a slow disk: the writer stalls mid-commit
            report["stalls"] += relay.stall(writer)
            await trio.sleep(rng.uniform(0.05, 0.3))
        pids = relay.kill(victim)
        if writer:
            relay.resume(writer)  # if it lives: it finishes what it was sent
        status = await relay.wait_gone(pids)
        report["kills"][victim] += 1
        if status != EXPECTED_STATUS[victim]:
            report["unexpected_exits"].append(
                {"at": f"kill {victim}", "status": status, "log": tail(relay.log)}
            )
        await relay.start()


async def drain(traffic: Traffic, receiver: FlappingReceiver, journal: Path, timeout: float):
    """Wait until every acknowledged event arrived, or the journal holds nothing pending
    (then what has not arrived never will); the deliveries still pending."""
    with trio.move_on_after(timeout):
        while traffic.in_flight:  # a request posted as traffic stopped may yet be acknowledged
            await trio.sleep(0.05)
        while not traffic.acknowledged <= receiver.marks:
            if pending_deliveries(journal) == 0:
                # An answer written, not yet noted, or a request still in flight when traffic
                # stopped (acknowledged a moment later, its delivery pending): look again.
                await trio.sleep(1.0)
                if pending_deliveries(journal) == 0:
                    break
            await trio.sleep(0.1)
    return pending_deliveries(journal)


def pending_deliveries(journal: Path) -> int:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
    finally:
        conn.close()


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def summarize(report, traffic: Traffic, receiver: FlappingReceiver, relay: Relay, seconds) -> dict:
    acknowledged = traffic.acknowledged
    marks = {m for m in receiver.marks if m.startswith("s")}  # the disk phase's start with d
    lost = acknowledged - marks
    duplicated = {d: n for d, n in receiver.received.items() if n > 1}
    hostile = traffic.hostile_summary()
    log = relay.log.read_text(errors="replace") if relay.log.exists() else ""
    disk = report.get("disk", {})
    summary = {
        "seconds": round(seconds, 1),
        "seed": report["seed"],
        "kills": dict(report["kills"]),
        "writer_stalls": report["stalls"],  # kills that found the writer stopped (SIGSTOP)
        "relay_starts": relay.starts,
        "events_sent": len(traffic.sent),
        "events_acknowledged": len(acknowledged),
        "events_delivered": len(acknowledged & marks),
        "delivered_unacknowledged": len(marks - acknowledged),  # journaled; the 202 was cut off
        "lost": len(lost),
        "lost_sample": sorted(lost)[:20],
        "pending_at_end": report.get("pending_at_end"),
        "duplicates": len(duplicated),
        "duplicate_deliveries": sum(n - 1 for n in duplicated.values()),
        "answers": dict(traffic.answers),
        "receiver": {
            "answered_by_mode": dict(receiver.answers),
            "seconds_in_mode": {m: round(s, 1) for m, s in receiver.time_in.items()},
        },
        "bad_inputs": hostile,
        "unexpected_exits": report["unexpected_exits"],
        "tracebacks_in_log": log.count("Traceback (most recent call last)"),
        "log_errors": log_errors(log),
        "disk": disk,
    }
    if "stopped_early" in report:
        summary["stopped_early"] = report["stopped_early"]
    summary["ok"] = (
        not lost
        and marks <= traffic.sent
        and hostile["accepted"] == 0
        and not report["unexpected_exits"]
        and disk.get("ok", "skipped" in disk)
    )
    return summary


def log_errors(log: str, most: int = 10) -> dict[str, int]:
    """Each distinct error the relay logged (a traceback by its last line), with its count."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if " ERROR " in line or " CRITICAL " in line:
            found[line.split(" ", 2)[-1][:200]] += 1
        elif line.startswith("Traceback (most recent call last)"):
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), i)
            found[f"traceback: {lines[end][:200]}"] += 1
    return dict(found.most_common(most))


def verdict(summary: dict) -> str:
    kills = sum(summary["kills"].values())
    disk = summary["disk"]
    disk_line = (
        f"disk: skipped ({disk['skipped']})"
        if "skipped" in disk
        else f"disk: full seen {disk.get('full_seen')}, recovered {disk.get('recovered')},"
        f" lost {disk.get('lost')}"
    )
    return (
        f"soak {'ok' if summary['ok'] else 'FAILED'}: {kills} kills in {summary['seconds']} s;"
        f" {summary['events_acknowledged']} acknowledged, {summary['events_delivered']}"
        f" delivered, {summary['lost']} lost, {summary['duplicates']} duplicated;"
        f" {summary['bad_inputs']['tried']} bad inputs, {summary['bad_inputs']['accepted']}"
        f" accepted; {len(summary['unexpected_exits'])} unexpected exits; {disk_line}"
    )
