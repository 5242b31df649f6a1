"""A full disk: the journal on a small tmpfs that a file fills, then frees (needs root).

While the disk is full (and the receiver flaps, so that attempts fail and their retries must be
recorded) the relay must refuse (503) what it cannot journal, never acknowledge an event it
then loses, and keep running; once the file is gone it must take events again and deliver
everything it acknowledged, without a restart.
Skipped, with the reason, when not root or when the mount fails.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import trio

from soaking.receiver import FlappingReceiver
from soaking.relay import Relay, write_config
from soaking.traffic import Traffic

SIZE = "20m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(path: Path) -> int:
    """Write ``path`` until the file system has no room left; the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            block = b"\0" * chunk
            while True:
                try:
                    written += f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return written


async def _until(condition, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return True
    return False


async def disk_phase(workdir: Path, receiver: FlappingReceiver, rng: random.Random) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "not root: cannot mount a tmpfs for the journal"}
    mount = workdir / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"skipped": f"mount failed: {done.stderr.strip() or done.returncode}"}
    relay = Relay(workdir / "disk.toml", workdir / "disk.log")
    try:
        return await _run(mount, relay, receiver, rng)
    finally:
        relay.kill_all()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


async def _run(mount: Path, relay: Relay, receiver: FlappingReceiver, rng) -> dict:
    port = free_port()
    write_config(relay.config, port=port, state_dir=mount / "state", receiver_url=receiver.url)
    await relay.start()
    traffic = Traffic(rng)
    traffic.url = f"http://127.0.0.1:{port}"
    traffic.pad = 1500  # the journal must grow to need the disk
    report: dict = {"tmpfs": SIZE}
    async with trio.open_nursery() as nursery:
        # Flapping, so that attempts fail and must be retried while nothing can be written.
        nursery.start_soon(receiver.flap)
        for _ in range(2):
            nursery.start_soon(traffic.send, 150.0, "d")
        await _until(lambda: len(traffic.acknowledged) >= 200, 30)
        report["acknowledged_before_full"] = len(traffic.acknowledged)

        filler = mount / "filler"
        report["filler_bytes"] = fill(filler)
        before = Counter(traffic.answers)
        acked_before = len(traffic.acknowledged)
        report["full_seen"] = await _until(lambda: traffic.answers["503"] - before["503"] >= 20, 20)
        await trio.sleep(0.5)  # and some more while full
        report["answers_while_full"] = dict(traffic.answers - before)
        report["acknowledged_while_full"] = len(traffic.acknowledged) - acked_before

        filler.unlink()
        freed_at, before = trio.current_time(), Counter(traffic.answers)
        report["recovered"] = await _until(lambda: traffic.answers["202"] > before["202"], 20)
        report["seconds_to_recover"] = round(trio.current_time() - freed_at, 2)
        await trio.sleep(0.5)
        traffic.running = False
        receiver.settle()
    report["relay_exited"] = None if relay.alive() else relay.process.returncode
    if not relay.alive():  # it stopped on the full disk: the next run must deliver it all
        await relay.start()
    acknowledged = traffic.acknowledged
    await _until(lambda: acknowledged <= receiver.marks, 60)
    report["acknowledged"] = len(acknowledged)
    report["lost"] = len(acknowledged - receiver.marks)
    if report["lost"]:  # the evidence outlives the tmpfs (scripts/soak --keep keeps it)
        report["lost_sample"] = sorted(acknowledged - receiver.marks)[:20]
        evidence = relay.config.parent / "disk-journal"
        shutil.copytree(mount / "state", evidence)
        report["journal_copy"] = str(evidence)
    report["exit_status"] = await relay.stop()
    report["ok"] = report["lost"] == 0 and report["recovered"]
    return report
