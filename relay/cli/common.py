"""What every command shares: loading the configuration with its plugins, the ``--config``
option, reaching a running relay, and ``CommandError``, which ends a command with a message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from relay import config as config_module
from relay.journal import FILENAME
from relay.plugins import PluginError, load_with_plugins

if TYPE_CHECKING:  # imported where a command uses it: `relay run` never does (~0.35 s, ~4 MB)
    import httpx


class CommandError(Exception):
    """Ends a command with these lines on stderr and exit status ``status`` (2: the command
    was used wrongly, or what it was given cannot be read)."""

    def __init__(self, *lines: str, status: int = 2):
        self.lines = lines
        self.status = status


def journal_name(config) -> str:
    """Where the journal is, as messages name it: its file, or its database (password masked)."""
    if config.journal.url is not None:
        from relay.journal.engines import masked

        return masked(config.journal.url)
    return str(config.relay.state_dir / FILENAME)


def no_journal(config, error: FileNotFoundError) -> CommandError:
    """What a command that reads the journal says when there is none yet: the file it looked
    for, or the database (pg_views.NoJournal's text names it, its password masked)."""
    if config.journal.url is not None:
        return CommandError(str(error))
    return CommandError(
        f"{journal_name(config)}: no journal there "
        f"([relay] state_dir of {config.path.name}; it appears when the relay first runs)"
    )


def load(config_path: Path):
    """The configuration with its plugins loaded and option tables bound."""
    try:
        return load_with_plugins(config_path)
    except config_module.ConfigError as e:
        raise CommandError(*e.errors) from None
    except PluginError as e:
        raise CommandError(str(e)) from None


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=Path("relay.toml"), help="default: relay.toml"
    )


def admin_request(config, method: str, path: str, json=None) -> httpx.Response:
    """Ask the daemon's admin listener (``[relay] admin``), with its token when it has one;
    ``json``: the request's body."""
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
        return client.request(method, path, json=json)


def ingest_request(config, method: str, path: str) -> httpx.Response:
    """Reach the daemon's ingest API on its Unix socket when it has one, else on its TCP port
    (``relay reload`` when there is no admin listener)."""
    with relay_client(config, timeout=30) as client:
        return client.request(method, path)


TOKEN_VARIABLE = "RELAY_INGEST_TOKEN"  # the ingest token of a relay reached by --url alone


def relay_client(
    config=None, *, socket: Path | None = None, url: str | None = None, timeout: float = 30
) -> httpx.Client:
    """A client for a running relay: at ``socket`` or ``url`` when given, else where ``config``
    says (its Unix socket when it has one, else its TCP port); over TCP with the config's
    ``ingest_token`` when it has one, else ``$RELAY_INGEST_TOKEN`` when set (where relay.toml's
    example reads it from: ``--url`` without a configuration); the socket needs none."""
    import httpx

    if socket is None and url is None:
        relay = config.relay
        if relay.socket is not None:
            socket = relay.socket
        elif relay.listen is not None:
            url = f"http://{relay.listen}"
        else:
            raise CommandError(f"{config.path.name}: [relay] has neither socket nor listen")
    headers = {}
    if socket is not None:
        transport, base = httpx.HTTPTransport(uds=str(socket)), "http://relay"
    else:
        transport, base = None, url.rstrip("/")
        token = config.relay.ingest_token if config is not None else None
        if token is None:
            token = os.environ.get(TOKEN_VARIABLE) or None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(transport=transport, base_url=base, headers=headers, timeout=timeout)


def first_error(error: BaseException) -> BaseException:
    """The first exception inside nested exception groups (what trio's nurseries raise)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
