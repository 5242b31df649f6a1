"""Starting and stopping what the bench runs: each process in its own process group, killed
when the bench exits (SIGKILL when the bench dies), with its output in files that the bench
waits on. The bench's role processes (receiver, sender, direct) run ``BENCH`` again."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from . import ROOT

BENCH = ROOT / "scripts" / "bench"  # the entry point; ``--role`` runs a role in its process


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """Everything the bench starts, each in its own process group; ``stop_all`` kills them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(
        self, name: str, argv: list[str], cwd: Path = ROOT, **kwargs
    ) -> tuple[subprocess.Popen, Path, Path]:
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                cwd=cwd,
                **kwargs,
            )
        self.procs.append(proc)
        return proc, out, err

    def stop(self, proc: subprocess.Popen, grace: float = 3.0) -> None:
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _killpg(proc.pid, signal.SIGKILL)  # whatever it left in its group
        if proc.poll() is None:
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc, grace=1.0)
            except Exception as e:  # noqa: BLE001 - stop the others anyway
                print(f"bench: could not stop pid {proc.pid}: {e}", file=sys.stderr)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


async def wait_for_line(path: Path, pattern: str, proc, timeout: float = 20.0, count: int = 1):
    """The first ``count`` matches of ``pattern`` in the file a process writes."""
    regex = re.compile(pattern, re.MULTILINE)
    with trio.move_on_after(timeout):
        while True:
            found = regex.findall(path.read_text(errors="replace"))
            if len(found) >= count:
                return found[:count]
            if proc.poll() is not None:
                break
            await trio.sleep(0.02)
    tail = path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{path.name}: no {pattern!r} (exit status {proc.poll()}):\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
