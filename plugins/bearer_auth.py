"""``Authorization: Bearer <token>`` from an environment variable or a file.

Enabled per webhook by its table::

    [webhooks.bearer_auth]
    file = "/run/secrets/crm-token"   # or: env = "CRM_TOKEN"

A file is read again whenever it changes (its modification time or size), so a token rotated by
a secrets manager is picked up on the next attempt without a reload. The token itself is never
kept in the configuration, logged, or put in an error message: only where it comes from is.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from attrs import field, frozen

from relay.plugins import hookimpl, validator


def _env_problem(name: str) -> str | None:
    if not os.environ.get(name):
        return f"environment variable {name} is not set or empty"


def _file_problem(path: Path) -> str | None:
    # Relative to what? relay.toml's directory is not known here; the working directory would
    # change with how relay is started. An absolute path means one thing.
    if not path.is_absolute():
        return "must be an absolute path"
    if not path.is_file():
        return f"{path} is not a file"


@frozen
class BearerAuth:
    env: str | None = field(default=None, validator=validator(_env_problem))
    file: Path | None = field(default=None, validator=validator(_file_problem))

    def __attrs_post_init__(self):
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env or file")

    def token(self) -> str:
        if self.env is not None:
            token = os.environ.get(self.env, "").strip()
            where = f"environment variable {self.env}"
        else:
            stat = self.file.stat()
            token = _read_token(self.file, stat.st_mtime_ns, stat.st_size)
            where = str(self.file)
        if not token:
            raise ValueError(f"bearer_auth: {where} is empty")
        if any(c in token for c in "\r\n\0"):
            raise ValueError(f"bearer_auth: the token in {where} has a line break or NUL")
        return token


@functools.lru_cache(maxsize=64)
def _read_token(path: Path, mtime_ns: int, size: int) -> str:
    """Cached per version of the file: a changed file has a new key and is read again."""
    return path.read_text(encoding="utf-8").strip()


@hookimpl
def register_webhook_options(register):
    register("bearer_auth", BearerAuth)


@hookimpl
def prepare_request(webhook, delivery, request):
    options = webhook.options.get("bearer_auth")
    if options is None:
        return None
    return request.with_headers(("Authorization", f"Bearer {options.token()}"))
