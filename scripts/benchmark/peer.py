"""The Celery peer as a system under test (issue 18): what a Python team deploys instead of relay,
a Starlette endpoint on uvicorn that enqueues each event into Redis (``appendfsync always``) and
answers 202, and a Celery 5 worker (gevent pool of 64, ``acks_late``) that signs and posts it,
retried with relay's backoff. It takes the same events from the same load generators and
delivers to the same receivers as relay and direct; celery_peer/serve.py runs it, in .bench-venv
(peer_setup.py), as one process family whose parts are the web endpoint, the worker and Redis."""

from __future__ import annotations

import json
from pathlib import Path

from .peer_setup import PEER_DIR, PeerSetup
from .processes import Processes, wait_for_line
from .systems import System


class CeleryPeer(System):
    name = "celery"

    def __init__(self, setup: PeerSetup):
        self.setup = setup

    async def start(self, procs: Processes, sink_url: str, lat_url: str) -> None:
        home = procs.tmp / "celery"
        home.mkdir()
        # The bench's relay.toml: "sink" takes the status events, "lat" only those naming it.
        routes = {"webhooks": {"lat": lat_url}, "events": {"whatsapp:message:status": sink_url}}
        argv = [self.setup.python, str(PEER_DIR / "serve.py"), "--home", str(home)]
        argv += ["--redis", self.setup.redis, "--routes", json.dumps(routes)]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(PEER_DIR)}
        self.proc, _, err = procs.start("celery", argv, env=env)
        found = await wait_for_line(err, r"taking events on (\S+)", self.proc, 90, count=2)
        self._addresses(found)

    def part_of(self, pid: int) -> str:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv[0].split(b" ")[0].endswith(b"redis-server"):  # Redis rewrites its title
            return "redis"
        return "worker" if b"celery" in argv and b"worker" in argv else "celery"
