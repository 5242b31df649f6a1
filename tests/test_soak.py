"""scripts/soak, short: 20 kill -9s of the real daemon (the whole group and each of its three
processes in turn) while a flapping receiver takes its deliveries and hostile input arrives,
then the full disk (as root). Nothing acknowledged may be lost."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_soak_loses_no_acknowledged_event(tmp_path):
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "scripts" / "soak"), "--kills", "20", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    summary = json.loads(out.read_text())
    assert summary["lost"] == 0, summary["lost_sample"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["ok"]
    assert summary["kills"] == {"group": 5, "relay": 5, "writer": 5, "delivery": 5}
    assert summary["unexpected_exits"] == []
    assert summary["events_acknowledged"] > 0
    assert summary["events_delivered"] == summary["events_acknowledged"]
    assert summary["bad_inputs"]["tried"] > 0 and summary["bad_inputs"]["accepted"] == 0
    disk = summary["disk"]
    assert "skipped" in disk or (disk["full_seen"] and disk["recovered"] and disk["lost"] == 0)
    assert "soak ok" in proc.stderr
