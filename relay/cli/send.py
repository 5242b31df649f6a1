"""``relay send``: events from a file or stdin into a running relay, in batches under its
``max_body``.

The whole input is read and checked before the first request, so a typo on line 90,000 is found
before anything was sent. Then batches go one after another on one connection, and each
accepted batch's ids are printed as it is accepted. The first batch the relay does not accept
ends the run: everything before it is journaled (its ids, in input order, are on stdout) and
nothing from it on was sent, so the fix is to correct the line named and send again from that
batch's first line. (Going on past it would leave holes no one could line up with the ids.)
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx

from relay import config as config_module
from relay.cli.common import CommandError, relay_client
from relay.cli.event_input import Item, decode, read_events

DEFAULT_MAX_BODY = 1024 * 1024  # [relay] max_body's default, for --url/--socket without -c


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="an event object, an array of them, or JSON lines; - or none: stdin",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="the relay's Unix socket")
    where.add_argument("--url", help="the relay's address, e.g. http://127.0.0.1:8765")
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help="where the relay listens, its max_body and ingest_token (default: relay.toml, "
        "unless --socket or --url is given)",
    )


class Batch(NamedTuple):
    number: int  # 1-based
    first: int  # the index of its first event in the input
    items: list[Item]

    def body(self) -> bytes:
        return b"[" + b",".join(item.data for item in self.items) + b"]"

    def describe(self, total: int) -> str:
        last = self.first + len(self.items)
        lines = sorted({self.items[0].line, self.items[-1].line})
        return (
            f"batch {self.number} of {total} ({_events(self.first + 1, last)}, "
            f"line{'s' if len(lines) > 1 else ''} {'-'.join(map(str, lines))})"
        )


def cmd_send(args) -> int:
    """send events (a JSON object, an array, or JSON lines) to a running relay"""
    config = None
    if args.config is not None or (args.socket is None and args.url is None):
        config = config_module.load_for_admin(args.config or Path("relay.toml"))
    max_body = config.relay.max_body if config is not None else DEFAULT_MAX_BODY
    name, text = _read(args.file)
    items = read_events(text, name)
    batches = split(items, max_body, name)
    url = args.url.rstrip("/").removesuffix("/events") if args.url else None
    where = args.socket or url or _where(config)
    with relay_client(config, socket=args.socket, url=url) as client:
        with _progress(len(items), len(batches)) as advance:
            for batch in batches:
                if not _post(client, batch, len(batches), where):
                    _not_sent(items, batch)
                    return 1
                advance(len(batch.items))
    return 0


def _read(file: str) -> tuple[str, str]:
    if file == "-":
        if sys.stdin.isatty():
            print("reading events from stdin; end with Ctrl-D", file=sys.stderr)
        return "stdin", decode(sys.stdin.buffer.read(), "stdin")
    try:
        data = Path(file).read_bytes()
    except OSError as e:
        raise CommandError(f"{file}: cannot read: {e.strerror}") from None
    return file, decode(data, file)


def split(items: list[Item], max_body: int, name: str) -> list[Batch]:
    """Consecutive batches whose bodies (``[a,b,...]``) are at most ``max_body`` bytes."""
    batches: list[Batch] = []
    current: list[Item] = []
    size = 1  # "[" and "]", less the comma the first event does not need
    for index, item in enumerate(items):
        if len(item.data) + 2 > max_body:
            raise CommandError(
                f"{name}: line {item.line} (event {index + 1}): {len(item.data) + 2:,} bytes as "
                f"a request, over the relay's max_body of {max_body:,}; nothing was sent",
                status=1,  # the relay would reject it: the input can be read
            )
        if current and size + 1 + len(item.data) > max_body:
            batches.append(Batch(len(batches) + 1, index - len(current), current))
            current, size = [], 1
        current.append(item)
        size += 1 + len(item.data)
    batches.append(Batch(len(batches) + 1, len(items) - len(current), current))
    return batches


def _post(client: httpx.Client, batch: Batch, total: int, where) -> bool:
    """Send one batch; print its ids if it was accepted, else why not."""
    try:
        response = client.post(
            "/events", content=batch.body(), headers={"content-type": "application/json"}
        )
    except httpx.HTTPError as e:
        print(f"relay send: cannot reach the relay at {where}: {e}", file=sys.stderr)
        return False
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    ids = answer.get("ids") if isinstance(answer, dict) else None
    if response.status_code == 202 and isinstance(ids, list) and len(ids) == len(batch.items):
        sys.stdout.write("".join(f"{i}\n" for i in ids))
        sys.stdout.flush()
        return True
    _rejected(batch, total, response, answer)
    return False


_AT = re.compile(r"\[(\d+)\](?:\.(.*))?")


def _rejected(batch: Batch, total: int, response: httpx.Response, answer) -> None:
    """The relay's answer, each problem at the line of the event it is in."""
    error = answer.get("error") if isinstance(answer, dict) else None
    print(
        f"relay send: {batch.describe(total)} rejected: HTTP {response.status_code}: "
        f"{error or response.text[:500] or response.reason_phrase}",
        file=sys.stderr,
    )
    problems = answer.get("problems", []) if isinstance(answer, dict) else []
    for problem in problems:
        field, reason = problem.get("field", ""), problem.get("reason", "")
        found = _AT.fullmatch(field)
        if found and int(found[1]) < len(batch.items):
            index = int(found[1])
            where = f"line {batch.items[index].line} (event {batch.first + index + 1})"
            field = found[2] or ""
        else:
            where = "the batch"
        print(f"  {where}: {field + ': ' if field else ''}{reason}", file=sys.stderr)
    if response.status_code == 401:
        print(
            "  relay send sends the ingest_token of the relay.toml it reads (-c), or with --url"
            " alone $RELAY_INGEST_TOKEN",
            file=sys.stderr,
        )


def _not_sent(items: list[Item], batch: Batch) -> None:
    done = batch.first
    accepted = f"{_events(1, done)} accepted (their ids are on stdout); " if done else ""
    print(
        f"relay send: {accepted}{_events(done + 1, len(items))} not sent, "
        f"from line {batch.items[0].line} on",
        file=sys.stderr,
    )


def _events(first: int, last: int) -> str:
    return f"event {first}" if first == last else f"events {first}-{last}"


def _where(config) -> str:
    relay = config.relay
    return str(relay.socket) if relay.socket is not None else f"http://{relay.listen}"


@contextlib.contextmanager
def _progress(events: int, batches: int) -> Iterator:
    """A progress bar on stderr when it is a terminal and the input takes several batches;
    yields the function that moves it on by a number of events."""
    if batches < 2 or not sys.stderr.isatty():
        yield lambda count: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "sending",
        BarColumn(),
        MofNCompleteColumn(),
        "events",
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        # Ids go to stdout: through the bar's console (above it) only when stdout is the same
        # terminal, never into a pipe's place.
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    ) as progress:
        task = progress.add_task("send", total=events)
        yield lambda count: progress.advance(task, count)
