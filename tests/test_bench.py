"""scripts/bench --quick runs end to end with tiny counts: it finishes, writes its JSON, and every
event sent was delivered. (Benchmarks are not tests; this only keeps the bench working.)"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_completes_and_delivers_everything(tmp_path):
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--events", "200"]
    proc = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, timeout=90, cwd=ROOT
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
