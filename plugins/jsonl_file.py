"""``transport = "jsonl"``: append each request to a local JSON-lines file instead of sending it.

For receivers that read files (a log shipper, a batch job) and for seeing what relay would send::

    [[webhooks]]
    id = "archive"
    url = "http://localhost/archive"   # relay needs a URL; it is recorded, not contacted
    transport = "jsonl"
    jsonl = { path = "/var/lib/relay/archive.jsonl" }

Each line is ``{"webhook", "method", "url", "headers", "body"}``, with ``headers`` a list of
``[name, value]`` pairs (signatures included, so a reader can verify them) and ``body`` the exact
text sent (``body_base64`` instead when it is not UTF-8). The line is fsynced before the attempt
counts as delivered (HTTP 200), so a delivered event survives a crash. The file is created with
mode 0600 and opened per request, so rotating it away (``mv``) is safe: the next line starts a
new file.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import trio
from attrs import field, frozen

from relay.model import Response
from relay.plugins import FieldError, hookimpl


def _check_path(instance, attribute, path: Path):
    if not path.is_absolute():
        raise FieldError(attribute.name, "must be an absolute path")
    if not path.parent.is_dir():
        raise FieldError(attribute.name, f"{path.parent} is not a directory")


@frozen
class JsonlOptions:
    path: Path = field(validator=_check_path)


def line(webhook, request) -> bytes:
    record = {
        "webhook": webhook.id,
        "method": request.method,
        "url": request.url,
        "headers": [list(h) for h in request.headers],
    }
    try:
        record["body"] = request.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(request.body).decode()
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonlTransport:
    def __init__(self, config):
        self._locks: dict[Path, trio.Lock] = {}  # one writer per file: lines never interleave

    async def send(self, webhook, request) -> Response:
        options = webhook.options.get("jsonl")
        if options is None:
            raise ValueError('transport "jsonl" needs a jsonl = { path = "..." } table')
        lock = self._locks.setdefault(options.path, trio.Lock())
        async with lock:
            # Not abandoned on cancellation: a timeout waits for the line to be whole.
            await trio.to_thread.run_sync(_append, options.path, line(webhook, request))
        return Response(status=200)

    async def aclose(self):
        pass


@hookimpl
def register_webhook_options(register):
    register("jsonl", JsonlOptions)


@hookimpl
def register_transports(register):
    register("jsonl", JsonlTransport)
