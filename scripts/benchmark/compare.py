"""``scripts/bench --compare REV [--pairs N]``: the current tree against another commit, in
alternated runs, with a verdict per figure that the machine's noise cannot fake (issue 18).

REV is checked out with ``git worktree add`` into a temporary directory; each run is a whole
``scripts/bench`` of this tree's bench code with ``--relay-tree`` naming whose relay/ to run,
so that only the relay differs between the two sides. The runs go in ABBA order (current, REV,
REV, current, current, REV, ...): a pair is two runs back to back, and drift of the machine over
the session falls on both sides alike. After each run the relay it measured is checked: its
relay/ must be the side's tree and its ``relay --version`` commit the side's. stats.py makes
the verdicts; the direct baseline, the same code on both sides, is the control: a verdict on it
says the noise was beyond what the pairs could absorb."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import ROOT
from .processes import BENCH
from .report import aligned
from .stats import SAME, judge, pair_ratios


class CompareError(Exception):
    pass


def git(*argv: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CompareError(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


def abba(pairs: int) -> list[tuple[int, str]]:
    """(pair, side) in running order: current first in even pairs, REV first in odd ones."""
    order = []
    for i in range(pairs):
        sides = ("current", "rev") if i % 2 == 0 else ("rev", "current")
        order += [(i, side) for side in sides]
    return order


def child_args(args) -> list[str]:
    """The options a run of one side gets: the comparison's own, less --compare and --json."""
    argv = ["--systems", ",".join(sorted(args.systems)), "--phases", ",".join(sorted(args.phases))]
    argv += ["--receiver", args.receiver, "--events", str(args.events)]
    argv += [f"--relay-setting={line}" for line in args.relay_setting]
    return argv + ["--quick"] * args.quick + ["--scrape"] * args.scrape


def check_measured(report: dict, tree: Path, commit: str) -> None:
    """Raise unless the run's relay was ``tree``'s relay/ at ``commit``."""
    found = report["info"].get("relay") or {}
    where = Path(found.get("relay_file", "?")).resolve()
    if not where.is_relative_to((tree / "relay").resolve()):
        raise CompareError(f"the run measured {where}, not the relay of {tree}")
    version = found.get("relay_version", "")
    match = re.search(r"\(git ([0-9a-f]+)\)", version)
    if not match or not commit.startswith(match[1]):
        raise CompareError(f"the run's relay --version is {version!r}, not commit {commit[:12]}")


def figures_of(report: dict) -> dict[str, dict]:
    """A run's figures by key: every system's row of the report, the relay's CPU per event end
    to end by process, and the relay's end-to-end ratio to direct in the same run."""
    out = {}
    systems = report["systems"]
    for row in report["figures"]:
        for name in systems:
            if row.get(name) is not None:
                out[f"{name}: {row['key']}"] = {
                    "system": name,
                    "figure": f"{row['figure']} ({row['unit']})",
                    "lower_is_better": row["lower_is_better"],
                    "value": row[name],
                }
    relay = systems.get("relay", {})
    split = relay.get("e2e_http", {}).get("cpu_us_per_event", {})
    for part in ("relay", "writer", "delivery"):
        if part in split:
            out[f"relay: e2e_http.cpu_us.{part}"] = {
                "system": "relay",
                "figure": f"CPU per event end to end, {part} process (µs)",
                "lower_is_better": True,
                "value": split[part],
            }
    ratio = next(
        (
            row.get("relay_x_direct")
            for row in report["figures"]
            if row["key"] == "e2e_http.events_per_s"
        ),
        None,
    )
    if ratio is not None:
        out["relay: e2e_http.x_direct"] = {
            "system": "relay",
            "figure": "end to end, relay / direct in the same run (x)",
            "lower_is_better": False,
            "value": ratio,
        }
    return out


def compare_main(args) -> int:
    try:
        return _compare(args)
    except CompareError as e:
        print(f"bench --compare: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run under way stopped its processes; the worktree is gone
        print("bench --compare: interrupted", file=sys.stderr)
        return 130


def _compare(args) -> int:
    try:
        rev_commit = git("rev-parse", "--verify", "--quiet", f"{args.compare}^{{commit}}")
    except CompareError:
        raise CompareError(f"{args.compare}: not a commit of {ROOT}") from None
    head = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    current_label = f"current tree (HEAD {head[:7]}{' + uncommitted changes' if dirty else ''})"
    rev_label = f"{args.compare} ({rev_commit[:7]})"
    tmp = Path(tempfile.mkdtemp(prefix="relay-compare-"))
    rev_tree = tmp / "rev"
    git("worktree", "add", "--detach", "--quiet", str(rev_tree), rev_commit)
    sides = {"current": (ROOT, head), "rev": (rev_tree, rev_commit)}
    runs: list[dict] = []
    started = time.monotonic()
    try:
        order = abba(args.pairs)
        print(f"compare: {current_label} against {rev_label}: {len(order)} runs", file=sys.stderr)
        for n, (pair, side) in enumerate(order, 1):
            tree, commit = sides[side]
            report = run_side(args, tree, tmp / f"run{n}")
            check_measured(report, tree, commit)
            runs.append({"pair": pair, "side": side, "figures": figures_of(report)})
            runs[-1].update(all_delivered=report["all_delivered"], relay=report["info"]["relay"])
            print(f"compare: run {n}/{len(order)} ({side}): {_summary(report)}", file=sys.stderr)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(rev_tree)], cwd=ROOT)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "current": current_label,
        "rev": rev_label,
        "rev_commit": rev_commit,
        "pairs": args.pairs,
        "order": [side for _, side in abba(args.pairs)],
        "quick": args.quick,
        "runs": runs,
        "figures": verdicts(runs, args.pairs),
        "elapsed_s": time.monotonic() - started,
    }
    print(format_compare(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(run["all_delivered"] for run in runs) else 1


def run_side(args, tree: Path, out: Path) -> dict:
    """One whole bench of ``tree``'s relay; its report. Its table and log stay in ``out``."""
    out.mkdir()
    argv = [sys.executable, str(BENCH), *child_args(args), "--relay-tree", str(tree)]
    argv += ["--json", str(out / "report.json")]
    with open(out / "stdout", "wb") as stdout, open(out / "stderr", "wb") as stderr:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=stdout, stderr=stderr)
        try:
            proc.wait()
        except KeyboardInterrupt:
            proc.terminate()  # it stops what it started (cli.run_until_signalled)
            proc.wait(30)
            raise
    if not (out / "report.json").exists():
        tail = (out / "stderr").read_text(errors="replace")[-2000:]
        raise CompareError(f"a run of {tree} failed (exit status {proc.returncode}):\n{tail}")
    return json.loads((out / "report.json").read_text())


def _summary(report: dict) -> str:
    relay = report["systems"].get("relay", {})
    e2e = relay.get("e2e_http", {}).get("events_per_s")
    acks = relay.get("ingest_single", {}).get("acks_per_s")
    parts = [f"relay end to end {e2e:,.0f} events/s" if e2e else None]
    parts.append(f"single acks {acks:,.0f}/s" if acks else None)
    parts.append(f"{report['elapsed_s']:.0f} s")
    return ", ".join(p for p in parts if p)


def verdicts(runs: list[dict], pairs: int) -> list[dict]:
    """Each figure's values by pair on both sides, the pair ratios and the verdict."""
    keys = list(dict.fromkeys(key for run in runs for key in run["figures"]))
    out = []
    for key in keys:
        values = {"current": [None] * pairs, "rev": [None] * pairs}
        meta = None
        for run in runs:
            figure = run["figures"].get(key)
            if figure is not None:
                values[run["side"]][run["pair"]] = figure["value"]
                meta = figure
        ratios = pair_ratios(values["current"], values["rev"])
        verdict = judge(ratios, lower_is_better=meta["lower_is_better"])
        out.append(
            {
                "key": key,
                "system": meta["system"],
                "figure": meta["figure"],
                "lower_is_better": meta["lower_is_better"],
                **values,
                "ratios": ratios,
                **vars(verdict),
            }
        )
    return out


def _value(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}" if v < 10 else f"{v:.1f}"


def _interval(low: float | None, high: float | None) -> str:
    """low-high, with a third decimal where two would show 1.00 for an end that excludes 1."""
    if low is None:
        return "-"
    digits = 3 if (low > 1 and round(low, 2) <= 1) or (high < 1 and round(high, 2) >= 1) else 2
    return f"{low:.{digits}f}-{high:.{digits}f}"


def format_compare(result: dict) -> str:
    from .stats import median

    figures = result["figures"]
    coverages = {f["coverage"] for f in figures if f["coverage"] is not None}
    level = f"covering it {min(coverages):.1%}" if coverages else "none under 3 pairs"
    pairs = result["pairs"]
    lines = [
        f"relay bench --compare: {result['current']} against {result['rev']},"
        f" {pairs} pair{'s' * (pairs != 1)} in ABBA order{', --quick' if result['quick'] else ''},"
        f" {result['elapsed_s']:.0f} s",
        f"ratio: current / {result['rev'].split()[0]}, median of the pair ratios; interval:"
        f" the sign test's for that median (distribution-free), {level}",
    ]
    if coverages and min(coverages) < 0.9:
        chance = 1 - min(coverages)
        lines.append(
            f"with {pairs} pairs, about 1 figure in {round(1 / chance)} that did not change gets"
            " a verdict by chance (see the control): --pairs 5 or more for a claim (93.8%)"
        )
    lines.append("")
    header = ("figure", result["rev"].split()[0], "current", "ratio", "interval", "verdict")
    systems = [
        s for s in ("relay", "celery", "naive", "direct") if any(f["system"] == s for f in figures)
    ]
    for system in systems:
        table = [header]
        for f in (f for f in figures if f["system"] == system):
            rev = [v for v in f["rev"] if v is not None]
            cur = [v for v in f["current"] if v is not None]
            interval = _interval(f["low"], f["high"])
            verdict = f["verdict"]
            if f["figure"].endswith("(MB)") and verdict != SAME:  # memory: not a speed
                verdict = {"faster": "smaller", "slower": "larger"}.get(verdict, verdict)
            table.append(
                (
                    f["figure"],
                    _value(median(rev)) if rev else "-",
                    _value(median(cur)) if cur else "-",
                    f"{f['median']:.2f}x" if f["median"] is not None else "-",
                    interval,
                    verdict,
                )
            )
        title = system if system != "direct" else "direct (the same code on both sides: a control)"
        lines += [f"{title}:", *aligned(table, left=(0, 5)), ""]
    return "\n".join(lines).rstrip()
