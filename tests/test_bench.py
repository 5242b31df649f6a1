"""scripts/bench --quick runs end to end with tiny counts: it finishes, writes its JSON, and every
event sent was delivered. (Benchmarks are not tests; this only keeps the bench working.)"""

import hashlib
import hmac
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_completes_and_delivers_everything(tmp_path):
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--events", "200"]
    argv += ["--max-seconds", "80"]  # every system measured, however loaded the machine
    proc = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, timeout=150, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["sent"] > 0
    assert report["delivered"] == report["sent"], proc.stdout
    assert report["all_delivered"], proc.stdout
    for name in ("direct", "naive", "relay"):
        e2e = report["systems"][name]["e2e_http"]
        assert e2e["sent"] > 0 and e2e["delivered"] >= e2e["sent"]
        assert e2e["events_per_s"] > 0
    assert report["systems"]["relay"]["e2e_uds"]["delivered"] > 0
    assert "end to end, HTTP batches of 100" in proc.stdout

    # Where the CPU went, by process: each of the relay's three is found and named.
    parts = {"relay", "writer", "delivery", "load generator", "receiver"}
    splits = [
        phase["cpu_us_per_event"]
        for phase in report["systems"]["relay"].values()
        if isinstance(phase, dict) and "cpu_us_per_event" in phase
    ]
    assert len(splits) >= 6, report["systems"]["relay"]
    for split in splits:
        assert set(split) == parts and min(split.values()) >= 0, split
    assert sum(split["relay"] + split["writer"] for split in splits) > 0
    assert set(report["systems"]["relay"]["ingest_single"]["waits_per_event"]) == parts
    assert "CPU per event (µs)" in proc.stdout


# -- --compare: the statistics ---------------------------------------------------------------

sys.path.insert(0, str(ROOT / "scripts"))
from benchmark import compare, stats  # noqa: E402


def noisy(rng: random.Random, center: float, n: int, spread: float = 0.15) -> list[float]:
    """n figures around ``center``, with this machine's kind of noise: multiplicative, and now
    and then a run slowed down hard (one in ten at half speed)."""
    return [
        center * math.exp(rng.gauss(0, spread)) * (0.5 if rng.random() < 0.1 else 1.0)
        for _ in range(n)
    ]


def test_a_clear_2x_difference_is_faster_or_slower():
    rng = random.Random(18)
    for pairs in (3, 5, 8):
        old, new = noisy(rng, 1000, pairs, 0.05), noisy(rng, 2000, pairs, 0.05)
        ratios = stats.pair_ratios(new, old)
        assert stats.judge(ratios).verdict == "faster", ratios
        assert stats.judge(ratios, lower_is_better=True).verdict == "slower", ratios
        back = stats.pair_ratios(old, new)
        assert stats.judge(back).verdict == "slower", back
        assert stats.judge(back, lower_is_better=True).verdict == "faster", back
        verdict = stats.judge(ratios)
        assert verdict.low <= verdict.median <= verdict.high
        assert 1.6 < verdict.median < 2.5


def test_identical_distributions_are_no_change():
    rng = random.Random(5)
    ratios = stats.pair_ratios(noisy(rng, 1000, 5), noisy(rng, 1000, 5))
    assert stats.judge(ratios).verdict == "no change beyond noise", ratios


def test_the_interval_covers_the_median_as_often_as_it_says():
    """Over many comparisons of one distribution with itself, a verdict other than "no change"
    comes as often as the interval's coverage allows (75% at 3 pairs: one in four), no more."""
    rng = random.Random(1)
    for pairs, coverage in ((3, 0.75), (4, 0.875), (5, 0.9375), (8, 1 - 18 / 256)):
        trials = 4000
        false = sum(
            stats.judge(stats.pair_ratios(noisy(rng, 1, pairs), noisy(rng, 1, pairs))).verdict
            != stats.SAME
            for _ in range(trials)
        )
        assert stats.interval([1.0] * pairs)[2] == coverage
        assert abs(false / trials - (1 - coverage)) < 0.025, (pairs, false / trials)


def test_fewer_than_three_pairs_give_no_verdict():
    assert stats.judge([]).verdict == stats.TOO_FEW
    assert stats.judge([2.0, 2.1]).verdict == stats.TOO_FEW
    assert stats.judge([2.0, 2.1]).median == 2.05
    assert stats.judge([2.0, 2.1, 1.9]).verdict == "faster"
    assert stats.pair_ratios([2.0, None, 3.0], [1.0, 1.0, 0]) == [2.0]  # unmeasured: left out


def test_abba_order():
    assert [side for _, side in compare.abba(3)] == [
        *("current", "rev", "rev", "current", "current", "rev")
    ]
    assert [pair for pair, _ in compare.abba(2)] == [0, 0, 1, 1]


def test_a_run_of_the_wrong_tree_is_refused(tmp_path):
    here = {
        "relay_file": str(ROOT / "relay" / "__init__.py"),
        "relay_version": "relay 0.1 (git 1234abc)",
    }
    report = {"info": {"relay": here}}
    compare.check_measured(report, ROOT, "1234abcdef")
    with pytest.raises(compare.CompareError, match="not the relay of"):
        compare.check_measured(report, tmp_path, "1234abcdef")
    with pytest.raises(compare.CompareError, match="not commit"):
        compare.check_measured(report, ROOT, "9999abcdef")


# -- --compare: the plumbing, for real -------------------------------------------------------


def test_compare_runs_each_side_from_its_own_tree(tmp_path):
    """--compare HEAD~1 in a clone whose HEAD is this working tree committed: two runs, one of
    each commit's relay (its relay/ and its --version), and the other commit's worktree gone.
    One pair and one phase, to stay short: the verdicts are the statistics tests' business."""
    clone = tmp_path / "clone"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    for part in ("relay", "scripts"):
        shutil.rmtree(clone / part)
        shutil.copytree(ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([*git, "add", "-A"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the tree"], cwd=clone, check=True)
    heads = {
        side: subprocess.check_output(["git", "rev-parse", rev], cwd=clone, text=True).strip()
        for side, rev in (("current", "HEAD"), ("rev", "HEAD~1"))
    }
    out = tmp_path / "compare.json"
    argv = [sys.executable, str(clone / "scripts" / "bench"), "--compare", "HEAD~1", "--pairs", "1"]
    argv += ["--quick", "--phases", "e2e_http", "--events", "2000", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=clone)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert [run["side"] for run in result["runs"]] == ["current", "rev"]
    for run in result["runs"]:
        measured = run["relay"]
        assert heads[run["side"]].startswith(measured["relay_version"].split("git ")[1][:-1])
        inside = clone if run["side"] == "current" else Path(tempfile.gettempdir())
        assert Path(measured["relay_file"]).is_relative_to(inside), measured
    assert result["runs"][1]["relay"]["relay_file"] != result["runs"][0]["relay"]["relay_file"]
    figure = next(f for f in result["figures"] if f["key"] == "relay: e2e_http.events_per_s")
    assert figure["current"][0] > 0 and figure["rev"][0] > 0
    assert figure["verdict"] == stats.TOO_FEW
    assert "end to end, HTTP batches of 100 (events/s)" in proc.stdout
    worktrees = subprocess.check_output(["git", "worktree", "list"], cwd=clone, text=True)
    assert len(worktrees.splitlines()) == 1, worktrees


# -- the Celery peer -------------------------------------------------------------------------

from benchmark.events import compact, status_event  # noqa: E402
from benchmark.peer import CeleryPeer  # noqa: E402
from benchmark.peer_setup import PeerMissing, prepare_celery  # noqa: E402
from benchmark.processes import Processes  # noqa: E402

from tests.conftest import Receiver, start_receiver  # noqa: E402


def celery_setup():
    try:
        return prepare_celery(print)  # redis-server and .bench-venv, installed when missing
    except PeerMissing as e:
        pytest.fail(f"the Celery peer cannot be set up here: {e}")


async def test_the_celery_peer_delivers_what_relay_would(nursery, tmp_path):
    """The peer as the bench runs it (redis-server, the Celery worker, the Starlette app), seen
    from an h11 receiver: each routed event of a batch arrives once as its compact JSON, signed
    like relay's Signature, a 500 is retried, the unrouted event goes nowhere, and the 202
    names the two tasks."""
    answered = []

    def first_to_hook_fails(request) -> int:
        """500 for /hook's first request, whichever of the two tasks arrives first."""
        answered.append(request.path)
        return 500 if answered.count("/hook") == 1 and request.path == "/hook" else 200

    receiver = await start_receiver(nursery, Receiver(answer=first_to_hook_fails))
    procs = Processes(tmp_path)
    peer = CeleryPeer(celery_setup())
    try:
        await peer.start(procs, receiver.url, receiver.origin + "/lat")
        event = status_event()
        lat = {**event, "webhook_id": "lat"}
        batch = [event, lat, {**event, "event": "bench:journal-only"}]
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://{peer.tcp[0]}:{peer.tcp[1]}/events", json=batch)
        assert answer.status_code == 202, answer.text
        assert len(answer.json()["ids"]) == 2
        arrived = await receiver.wait_for(3, timeout=30)
    finally:
        procs.stop_all()
    by_path = {}
    for request in arrived:
        by_path.setdefault(request.path, []).append(request)
        signature = hmac.new(b"bench-secret", request.body, hashlib.sha256).hexdigest()
        assert request.header("signature") == signature
    assert [r.body for r in by_path["/hook"]] == [compact(event)] * 2  # the 500, then again
    assert [r.body for r in by_path["/lat"]] == [compact(lat)]


def test_bench_runs_the_celery_peer(tmp_path):
    """scripts/bench --systems celery: the peer's figures beside direct's, every event
    delivered, and its CPU split by its three processes."""
    celery_setup()
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--systems", "celery"]
    argv += ["--phases", "e2e_http,ingest_single", "--events", "500", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"direct", "celery"}
    celery = report["systems"]["celery"]
    for phase in ("e2e_http", "ingest_single"):
        assert celery[phase]["all_delivered"] and celery[phase]["sent"] > 0, celery[phase]
        split = celery[phase]["cpu_us_per_event"]
        assert set(split) == {"celery", "worker", "redis", "load generator", "receiver"}, split
        assert min(split[p] for p in ("celery", "worker", "redis")) > 0, split
    assert report["all_delivered"]


def test_bench_without_the_peer_says_why(tmp_path):
    """A peer that cannot be had is a note, not a crash: the rest of the run goes on."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--systems", "celery"]
    argv += ["--phases", "e2e_http", "--events", "500", "--json", str(out)]
    env = {**os.environ, "RELAY_BENCH_REDIS": str(tmp_path / "no-redis-server")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"note: celery: not run: RELAY_BENCH_REDIS={tmp_path}/no-redis-server" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"direct"}
    assert report["systems"]["direct"]["e2e_http"]["events_per_s"] > 0
