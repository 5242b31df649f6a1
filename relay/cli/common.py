"""What every command shares: loading the configuration with its plugins, the ``--config``
option, reaching a running relay, and ``CommandError``, which ends a command with a message."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from relay import config as config_module
from relay.plugins import PluginError, load_with_plugins

if TYPE_CHECKING:  # imported where a command uses it: `relay run` never does (~0.35 s, ~4 MB)
    import httpx


class CommandError(Exception):
    """Ends a command with these lines on stderr and exit status 2."""

    def __init__(self, *lines: str):
        self.lines = lines


def load(config_path: Path):
    """The configuration with its plugins loaded and option tables bound."""
    try:
        return load_with_plugins(config_path)
    except config_module.ConfigError as e:
        raise CommandError(*e.errors) from None
    except PluginError as e:
        raise CommandError(f"{config_path.name}: {e}") from None


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=Path("relay.toml"), help="default: relay.toml"
    )


def admin_request(config, method: str, path: str) -> httpx.Response:
    """Ask the daemon's admin listener (``[relay] admin``), with its token when it has one."""
    import httpx

    relay = config.relay
    if relay.admin is None:
        raise CommandError(f"{config.path.name}: [relay] admin is not set")
    host, _, port = relay.admin.rpartition(":")
    # Listening on every address: ask on loopback.
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    headers = {}
    if relay.admin_token is not None:
        headers["Authorization"] = f"Bearer {relay.admin_token}"
    with httpx.Client(base_url=f"http://{host}:{port}", headers=headers, timeout=30) as client:
        return client.request(method, path)


def ingest_request(config, method: str, path: str) -> httpx.Response:
    """Reach the daemon's ingest API on its Unix socket when it has one, else on its TCP port
    (``relay reload`` when there is no admin listener)."""
    import httpx

    relay = config.relay
    if relay.socket is not None:
        transport = httpx.HTTPTransport(uds=str(relay.socket))
        base = "http://relay"
    elif relay.listen is not None:
        transport, base = None, f"http://{relay.listen}"
    else:
        raise CommandError(f"{config.path.name}: [relay] has neither socket nor listen")
    with httpx.Client(transport=transport, base_url=base, timeout=30) as client:
        return client.request(method, path)


def first_error(error: BaseException) -> BaseException:
    """The first exception inside nested exception groups (what trio's nurseries raise)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
