"""The ``relay`` command as a subprocess, run from trio so that receivers and relays serving in
the test's nursery keep answering while it runs."""

import os
import subprocess
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


async def relay_cli(
    *args: str, stdin: bytes = b"", env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m relay ARGS``: its exit status, and stdout and stderr as text."""
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "relay", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def relay_on_terminal(
    *args: str, stream: str = "stdout", columns: int = 100
) -> tuple[subprocess.CompletedProcess, bytes]:
    """``python -m relay ARGS`` with ``stream`` (stdout or stderr) on a pseudo-terminal
    ``columns`` wide, the other captured: the result, and what the terminal received (as the
    program wrote it: a line longer than the terminal is one line here)."""
    master, terminal = os.openpty()
    screen = bytearray()

    def read_terminal():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every copy of the other side is closed
                return
            if not data:
                return
            screen.extend(data)

    try:
        async with trio.open_nursery() as readers:
            readers.start_soon(trio.to_thread.run_sync, read_terminal)
            try:
                with trio.fail_after(60):
                    done = await trio.run_process(
                        [sys.executable, "-m", "relay", *args],
                        stdin=b"",
                        capture_stdout=stream != "stdout",
                        capture_stderr=stream != "stderr",
                        check=False,
                        env={**os.environ, "TERM": "xterm", "COLUMNS": str(columns)},
                        **{stream: terminal},
                    )
            finally:
                os.close(terminal)
    finally:
        os.close(master)
    out, err = ((done.stdout or b"").decode(), (done.stderr or b"").decode())
    return subprocess.CompletedProcess(done.args, done.returncode, out, err), bytes(screen)
