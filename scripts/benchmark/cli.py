"""The command line: ``scripts/bench``'s options (and the hidden ones of its role processes),
the figures derived from ``--quick``, and ``main``, which runs a role or a whole bench under a
signal watch, kills every process it started, prints the tables and writes the JSON."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import trio

from . import ROOT
from . import __doc__ as BENCH_DOC
from .compare import compare_main
from .load import sender_role
from .peer_setup import PeerMissing, prepare_celery
from .pgjournal import add_option as add_journal_option
from .pgjournal import main as journal_main
from .phases import PHASES
from .processes import Processes
from .receivers import receiver_role
from .report import format_table
from .run import SYSTEMS, Bench
from .systems import direct_role


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description=BENCH_DOC.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short phases: under 30 s")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--events", type=int, default=10**9, help="at most this many events per phase")
    p.add_argument("--receiver", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument(
        "--systems",
        help=f"comma-separated, of {','.join(SYSTEMS)} (direct always runs: the reference);"
        " default: naive,relay,celery, with --quick naive,relay, with --compare relay",
    )
    p.add_argument(
        "--relay-tree",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="run the relay/ of this source tree (default: this checkout; --compare uses it)",
    )
    p.add_argument(
        "--compare",
        metavar="REV",
        help="run the current tree and commit REV alternately (ABBA) and give each figure's"
        " median ratio, its interval and a verdict (see --pairs)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=5,
        help="--compare: pairs of runs (default 5; a verdict needs 3)",
    )
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
    p.add_argument(
        "--scrape",
        action="store_true",
        help="give the relay an admin listener and GET its /metrics every second during its phases",
    )
    add_journal_option(p)  # --journal postgresql: relays sharing PostgreSQL (pgjournal.py)
    p.add_argument("--role", choices=("receiver", "direct", "sender"), help=argparse.SUPPRESS)
    p.add_argument("--count-file", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    # The whole run's time budget, past which systems not yet measured are skipped: tests on a
    # loaded machine give --quick more than its 25 s.
    p.add_argument("--max-seconds", dest="budget", type=float, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, help=argparse.SUPPRESS)
    p.add_argument("--body", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.systems is None:
        args.systems = (
            "relay" if args.compare else "naive,relay" if args.quick else ",".join(SYSTEMS)
        )
    args.systems = set(args.systems.split(","))
    if unknown := args.systems - set(SYSTEMS):
        p.error(f"unknown systems: {', '.join(sorted(unknown))}")
    args.phases = set(args.phases.split(","))
    if unknown := args.phases - set(PHASES):
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    args.relay_tree = args.relay_tree.resolve()
    if not (args.relay_tree / "relay" / "__init__.py").exists():
        p.error(f"--relay-tree {args.relay_tree}: no relay/ package there")
    if args.compare and args.pairs < 1:
        p.error("--pairs: at least 1")
    if args.compare and "relay" not in args.systems:
        p.error("--compare measures the relay: --systems must include relay")
    quick = args.quick
    args.warmup = 0.3 if quick else 1.0  # seconds before the saturation window opens
    args.window = 1.0 if quick else 4.0  # saturation window
    args.cap = 1000 if quick else 3000  # most undelivered events at saturation
    args.ingest_window = 0.7 if quick else 2.0
    args.ingest_drain = 1.0 if quick else 5.0  # ingest phases send what drains in this long
    args.paced_seconds = 1.0 if quick else 3.0
    args.ceiling_seconds = 1.0 if quick else 3.0
    args.drain_timeout = 10.0 if quick else 20.0
    # The Celery peer, at ~500 events/s, needs its own time (start, drain, stop).
    args.max_seconds = (25.0 if quick else 170.0) + ("celery" in args.systems) * (
        20 if quick else 60
    )
    if args.budget is not None:
        args.max_seconds = args.budget
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
    if args.journal == "postgresql":
        return journal_main(args)
    if args.compare:
        return compare_main(args)
    args.peer, args.peer_missing = None, None
    if "celery" in args.systems:
        try:
            args.peer = prepare_celery(lambda line: print(f"bench: {line}", file=sys.stderr))
        except PeerMissing as e:
            args.peer_missing = str(e)
            print(f"bench: the Celery peer cannot run: {e}", file=sys.stderr)
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
