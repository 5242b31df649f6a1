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
