"""What the Celery peer needs, made ready before a run: redis-server from Debian's package
(``apt-get install -y redis-server`` when missing and the bench runs as root) and .bench-venv, a
virtualenv of its own with celery_peer/requirements.txt (re-made when that file changes). None
of it is relay's: relay's .venv is not touched. When something cannot be had, ``PeerMissing``
says what, and the bench runs without the peer (run.py notes why)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from . import ROOT

PEER_DIR = ROOT / "scripts" / "benchmark" / "celery_peer"
REQUIREMENTS = PEER_DIR / "requirements.txt"
VENV = ROOT / ".bench-venv"
IMPORTS = "import celery, gevent, kombu, redis, requests, starlette, uvicorn"


class PeerMissing(Exception):
    """The reason the peer cannot run here, in a sentence."""


@dataclass
class PeerSetup:
    python: str  # .bench-venv's interpreter
    redis: str  # redis-server


def prepare_celery(log) -> PeerSetup:
    redis = ensure_redis(log)  # the cheaper check first
    return PeerSetup(python=ensure_venv(log), redis=redis)


def ensure_redis(log) -> str:
    override = os.environ.get("RELAY_BENCH_REDIS")
    if override:  # another build of Redis (or, in the tests, one that is not there)
        if not os.access(override, os.X_OK):
            raise PeerMissing(f"RELAY_BENCH_REDIS={override}: not an executable")
        return override
    found = _redis_server()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PeerMissing(
            "redis-server is not installed (Debian's redis-server package; the bench installs"
            " it itself only when run as root with apt-get)"
        )
    log("celery peer: installing redis-server (apt-get install -y redis-server)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "redis-server"]
    done = _run(install, env)
    if done.returncode != 0:  # a machine whose package lists were never fetched
        _run(["apt-get", "update", "-q"], env)
        done = _run(install, env)
    found = _redis_server()
    if done.returncode != 0 or not found:
        raise PeerMissing(
            f"apt-get install -y redis-server failed (exit {done.returncode}): {_tail(done)}"
        )
    return found


def _redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def ensure_venv(log) -> str:
    python = VENV / "bin" / "python"
    digest = hashlib.sha1(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    stamp = VENV / f".installed-{digest}"
    if python.exists() and stamp.exists():
        return str(python)
    log(f"celery peer: installing {REQUIREMENTS.relative_to(ROOT)} into {VENV.name}/")
    if not python.exists():
        # The interpreter relay's .venv was made from: the peer runs on the same Python.
        base = getattr(sys, "_base_executable", None) or sys.executable
        made = _run([base, "-m", "venv", str(VENV)])
        if made.returncode != 0:
            raise PeerMissing(f"python -m venv {VENV.name} failed: {_tail(made)}")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    done = _run([*pip, "-r", str(REQUIREMENTS)])
    if done.returncode != 0:
        raise PeerMissing(f"pip install -r {REQUIREMENTS.name} failed: {_tail(done)}")
    check = _run([str(python), "-c", IMPORTS])
    if check.returncode != 0:
        raise PeerMissing(f"{VENV.name}: {IMPORTS!r} failed: {_tail(check)}")
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return str(python)


def _run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 127, "", str(e))


def _tail(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
    lines = [line for line in lines if "WARNING: Location" not in line]  # pip's index noise
    return " / ".join(lines[-3:]) or "no output"
