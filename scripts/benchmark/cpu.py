"""What each process cost, read from /proc: CPU seconds, wake-ups (voluntary context switches),
peak RSS, summed over a system's process family or split by part (the relay's three processes
by the module each runs, the load generator, the receiver), and the machine's steal time. One
place names the relay's processes (``PARTS``): a module renamed in relay/ is renamed here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .systems import System

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
# The relay's processes by the hidden subcommand each runs (relay/children.py); its first
# process, which takes the events, is "relay".
PARTS = {b"_journal-writer": "writer", b"_delivery": "delivery"}


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
                part = self.system.part_of(pid)
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
