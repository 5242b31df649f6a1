"""``relay health``: the running relay's ``GET /healthz``, for probes that can only run a command.

A Kubernetes liveness probe (docs/sidecar.md) or a Docker HEALTHCHECK in an image that holds
nothing but dist/relay has no curl, and the ingest listener may be on a Unix socket or loopback
alone, which kubelet's HTTP probes cannot reach (they connect to the pod's address).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from relay import config as config_module
from relay.cli.common import CommandError, relay_client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="the relay's Unix socket")
    where.add_argument("--url", help="the relay's address, e.g. http://127.0.0.1:8765")
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help="where the relay listens (default: relay.toml, unless --socket or --url is given)",
    )


def cmd_health(args) -> int:
    """exit 0 if the running relay's /healthz says ok (1 if not, or no answer); print it"""
    import httpx

    config = None
    if args.config is not None or (args.socket is None and args.url is None):
        config = config_module.load_for_admin(args.config or Path("relay.toml"))
    try:
        with relay_client(config, socket=args.socket, url=args.url, timeout=10) as client:
            response = client.get("/healthz")
    except httpx.HTTPError as e:
        raise CommandError(f"cannot reach the relay: {e}", status=1) from None
    try:
        answer = response.json()
    except ValueError:
        raise CommandError(
            f"the relay answered {response.status_code}: {response.text}", status=1
        ) from None
    print(json.dumps(answer))
    return 0 if response.status_code == 200 and answer.get("status") == "ok" else 1
