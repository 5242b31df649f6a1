"""The real ``relay run`` as a subprocess: start it, find its three processes, kill -9 them.

It runs in a session (and process group) of its own: ``kill("group")`` sends SIGKILL to that
group, which holds the relay and its journal writer, and in the next system call to the
delivery process (which has a session of its own, so that a terminal's Ctrl-C never reaches
it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from soaking import ROOT

VICTIMS = ("group", "relay", "writer", "delivery")
MODULES = {"writer": "_journal-writer", "delivery": "_delivery"}  # relay/children.py


def write_config(path: Path, *, port: int, state_dir: Path, receiver_url: str) -> None:
    path.write_text(
        f"""
[relay]
listen = "127.0.0.1:{port}"
state_dir = "{state_dir}"
grace = 0.5
max_body = 65536
allow_networks = ["127.0.0.0/8"]  # the soak's receiver listens on loopback

[[webhooks]]
id = "soak"
url = "{receiver_url}"
secret = "soak-secret"
timeout = 0.5
tries = 100000
backoff = {{ first = 0.05, factor = 2.0, max = 0.5, jitter = 0.2 }}
"""
    )


class Relay:
    def __init__(self, config: Path, log: Path):
        self.config = config
        self.log = log
        self.process: trio.Process | None = None
        self.starts = 0

    async def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until it takes events and its two children run."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as log:
            log.write(f"--- start {self.starts + 1}\n")
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "relay", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
                start_new_session=True,
            )
        self.starts += 1
        with trio.fail_after(timeout):
            while not re.search(r"taking events on", self.log_since(offset)):
                if self.process.poll() is not None:
                    raise RuntimeError(f"relay exited at start:\n{self.log_since(offset)}")
                await trio.sleep(0.02)
            while len(self.pids()) < 3:  # the delivery process forks late on a busy machine
                await trio.sleep(0.02)

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> dict[str, int]:
        """The processes running now: ``relay``, ``writer``, ``delivery``."""
        pids = {"relay": self.process.pid} if self.alive() else {}
        for name, module in MODULES.items():
            if (pid := _child(self.process.pid, module)) is not None:
                pids[name] = pid
        return pids

    def kill(self, victim: str) -> dict[str, int]:
        """SIGKILL ``victim`` (one of ``VICTIMS``); returns the pids it had."""
        pids = self.pids()
        if victim == "group":
            _kill(-self.process.pid)
            if "delivery" in pids:
                _kill(pids["delivery"])
        elif victim in pids:
            _kill(pids[victim])
        return pids

    def stall(self, pid: int) -> int:
        """SIGSTOP ``pid``: a disk that takes long to fsync. Events acknowledged before they
        are on disk would then certainly be lost by the kill that follows. 1 if stopped."""
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return 0
        return 1

    def resume(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    async def wait_gone(self, pids: dict[str, int], timeout: float = 15.0) -> int | None:
        """Wait until every one of ``pids`` has exited; the relay's exit status (None: it had
        to be killed here, as it had not exited in ``timeout`` seconds)."""
        with trio.move_on_after(timeout):
            status = await self.process.wait()
            while any(_running(pid) for pid in pids.values()):
                await trio.sleep(0.02)
            return status
        for pid in (self.process.pid, *pids.values()):
            _kill(pid)
        await self.process.wait()
        return None

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM; its exit status (None if it had to be killed)."""
        if not self.alive():
            return self.process.returncode if self.process else None
        pids = self.pids()
        self.process.send_signal(signal.SIGTERM)
        return await self.wait_gone(pids, timeout)

    def kill_all(self) -> None:
        """What is left, at exit: the group and the delivery process."""
        if self.process is None:
            return
        pids = self.pids()
        _kill(-self.process.pid)
        for pid in pids.values():
            _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _running(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _child(pid: int, module: str) -> int | None:
    """The pid of a child of ``pid`` running ``python -m module``, or None."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return None
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if module.encode() in argv and _running(int(child)):
                return int(child)
    return None
