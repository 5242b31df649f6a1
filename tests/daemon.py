"""The real relay as a subprocess, for tests about the process: signals, kill -9, reload."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from relay.children import DELIVERY, WRITER


def webhook_toml(webhook_id: str, url: str) -> str:
    return f"""
[[webhooks]]
id = "{webhook_id}"
url = "{url}"
backoff = {{ first = 0.2, factor = 1.0 }}
tries = 100
"""


def write_config(
    tmp_path: Path, url: str | None = None, *, grace: float = 10.0, webhooks: str | None = None
) -> Path:
    """A config with a Unix socket (for `relay reload`) and one webhook "crm" at ``url``, or
    the ``webhooks`` TOML given."""
    path = tmp_path / "relay.toml"
    path.write_text(
        f"""
[relay]
listen = "127.0.0.1:0"
socket = "relay.sock"
state_dir = "state"
grace = {grace}
allow_networks = ["127.0.0.0/8"]
"""
        + (webhooks if webhooks is not None else webhook_toml("crm", url))
    )
    return path


def add_plugin(tmp_path: Path, name: str, source: str) -> None:
    """A plugin in the plugins directory beside write_config's relay.toml (the default one)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / f"{name}.py").write_text(source)


class Daemon:
    running: list["Daemon"] = []  # what a failed test left behind is killed (conftest.py)

    def __init__(
        self, config: Path, args: tuple[str, ...] = (), preexec_fn=None, *, session: bool = False
    ):
        """``session``: start it in a session (and process group) of its own, so that
        ``kill_9("group")`` reaches the relay and its writer without the test."""
        self.config = config
        self.args = args  # more arguments for relay run (--log json)
        self.preexec_fn = preexec_fn  # run in the child before exec: limits, say
        self.session = session
        self.log = config.parent / "relay.log"
        self.process: trio.Process | None = None
        self.url = ""

    async def launch(self) -> "Daemon":
        """Start it; ``start()`` also waits until it takes events."""
        self.log.write_text("")
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "relay", "run", "--config", str(self.config), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("a"),
            preexec_fn=self.preexec_fn,
            start_new_session=self.session,
        )
        Daemon.running.append(self)
        return self

    async def start(self) -> "Daemon":
        await self.launch()
        with trio.fail_after(15):
            while not (
                found := re.search(r"taking events on (127\.0\.0\.1:\d+)", self.log.read_text())
            ):
                assert self.process.poll() is None, self.log.read_text()
                await trio.sleep(0.05)
        self.url = f"http://{found.group(1)}"
        return self

    async def wait(self, timeout: float = 20) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()

    def child(self, subcommand: str) -> int:
        """The pid of the relay's child process running ``subcommand`` (relay/children.py)."""
        return child_of(self.process.pid, subcommand)

    def pids(self) -> dict[str, int]:
        """The relay's three processes: ``relay``, ``writer`` and ``delivery``."""
        return {
            "relay": self.process.pid,
            "writer": self.child(WRITER),
            "delivery": self.child(DELIVERY),
        }

    def kill_9(self, victim: str) -> dict[str, int]:
        """SIGKILL ``victim``: one of ``pids()``, or ``group``, all three at once (the relay's
        process group holds the relay and its writer; the delivery process has a session of
        its own, so it is killed in the next system call). Returns the pids it had."""
        pids = self.pids()
        if victim == "group":
            assert self.session, "kill_9('group') needs Daemon(..., session=True)"
            os.killpg(self.process.pid, signal.SIGKILL)
            os.kill(pids["delivery"], signal.SIGKILL)
        else:
            os.kill(pids[victim], signal.SIGKILL)
        return pids


def child_of(pid: int, module: str) -> int:
    (found,) = (
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
        if module.encode() in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
    )
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_leftovers() -> None:
    """Kill daemons a test started and did not stop (it failed first); their journal writers
    exit when their input closes."""
    while Daemon.running:
        process = Daemon.running.pop().process
        if process.poll() is None:
            process.kill()
