"""Real parts for tests: a receiver on 127.0.0.1, a relay on a temporary journal, an HTTP client."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import h11
import httpx
import pytest
import trio

from relay import config as config_module
from relay.daemon import Relay
from relay.http.server import HTTPRequest
from relay.ingest.api import Api
from relay.model import Response
from relay.plugins import Components, hookimpl, make_plugin_manager
from tests.daemon import kill_leftovers

# postgresql_server, postgresql_url, journal_url: a private PostgreSQL for the journal's tests.
pytest_plugins = ("tests.postgres",)

SEED = Path(__file__).parent.parent / "relay" / "compose" / "examples.json"


class Headers(tuple):
    """Header pairs as they came (names keep their case and order) that also read as a
    case-insensitive mapping: ``headers["signature"]``, ``"signature" in headers``, ``.get``,
    ``.items()``."""

    def __getitem__(self, key):
        if not isinstance(key, str):
            return super().__getitem__(key)
        lowered = key.lower()
        for name, value in self:
            if name.lower() == lowered:
                return value
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        if not isinstance(key, str):
            return super().__contains__(key)
        return any(name.lower() == key.lower() for name, _ in self)

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def items(self):
        return iter(self)

    def keys(self):
        return [name for name, _ in self]


@attrs.frozen
class Arrived:
    """One request as it came on the wire, parsed by h11 (not by relay's own HTTP code)."""

    method: str
    target: str  # the request target as sent: path and query
    headers: Headers = attrs.field(converter=Headers)
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str:
        return self.headers[name]


@attrs.define
class Receiver:
    """A webhook endpoint on loopback that records what arrives and answers as told.

    It speaks HTTP through h11, not through relay/http: a bug shared by relay's client and
    relay's server (framing, header case, keep-alive) would cancel out in a receiver built on
    relay's own server, and no test would see it."""

    url: str = ""  # origin + "/hook"
    origin: str = ""
    requests: list[Arrived] = attrs.Factory(list)
    statuses: list[int] = attrs.Factory(list)  # answers to give, in order; then 200
    hang: float = 0.0  # seconds to wait before answering
    answer: Callable[[Arrived], int] | None = None  # the status for each request, if set
    answer_body: bytes = b""  # the body of every answer
    _arrived: trio.Event = attrs.Factory(trio.Event)

    async def serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, bytearray()
                while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                self.requests.append(
                    Arrived(
                        method=request.method.decode(),
                        target=request.target.decode(),
                        headers=tuple(
                            (k.decode(), v.decode()) for k, v in request.headers.raw_items()
                        ),
                        body=bytes(body),
                    )
                )
                self._arrived.set()
                if self.hang:
                    await trio.sleep(self.hang)
                if self.answer is not None:
                    status = self.answer(self.requests[-1])
                else:
                    status = self.statuses.pop(0) if self.statuses else 200
                length = str(len(self.answer_body))
                response = h11.Response(status_code=status, headers=[("content-length", length)])
                head = conn.send(response)
                body = conn.send(h11.Data(data=self.answer_body)) if self.answer_body else b""
                await stream.send_all(head + body + conn.send(h11.EndOfMessage()))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # one side asked to close
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away (an attempt that timed out, say)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Arrived]:
        with trio.fail_after(timeout):
            while len(self.requests) < count:
                self._arrived = trio.Event()
                await self._arrived.wait()
        return self.requests

    def bodies(self) -> list[dict]:
        return [json.loads(r.body) for r in self.requests]


async def start_receiver(nursery, receiver: Receiver | None = None) -> Receiver:
    receiver = receiver or Receiver()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, receiver.serve, listeners)
    host, port = listeners[0].socket.getsockname()[:2]
    receiver.origin = f"http://{host}:{port}"
    receiver.url = receiver.origin + "/hook"
    return receiver


@pytest.fixture(autouse=True)
def _no_daemon_left_behind():
    yield
    kill_leftovers()


@pytest.fixture
async def receiver(nursery) -> Receiver:
    return await start_receiver(nursery)


@attrs.define
class RunningRelay:
    relay: Relay
    url: str
    socket: Path | None

    @property
    def journal_path(self) -> Path:
        return self.relay.config.relay.state_dir / "journal.sqlite3"

    async def post(self, body, *, content_type="application/json") -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(
                self.url + "/events", content=content, headers={"content-type": content_type}
            )


def make_config(
    tmp_path: Path, webhooks: list[dict], *, journal_url: str | None = None, **relay_settings
) -> config_module.Config:
    # Delivery in this process: the relay runs in the test's trio run (its clock may be mocked,
    # its plugins registered in code). tests/daemon.py runs the real process split.
    # journal_url: a PostgreSQL journal (tests/postgres.py), else SQLite in the state_dir.
    journal = {"journal": {"url": journal_url}} if journal_url else {}
    relay = {
        "listen": "127.0.0.1:0",
        "state_dir": str(tmp_path / "state"),
        "delivery": "inline",
        "allow_networks": ["127.0.0.0/8"],  # the test receivers listen on loopback
        **relay_settings,
    }
    return config_module.parse(
        {"relay": relay, "webhooks": webhooks, **journal}, (tmp_path / "relay.toml").absolute()
    )


def relay_of(config: config_module.Config, plugins=()) -> Relay:
    """A relay on ``config`` with the built-in plugins and ``plugins`` (no entry points)."""
    pm = make_plugin_manager(config, entry_points=False)
    for plugin in plugins:
        pm.register(plugin)
    return Relay(config, pm, Components.collect(pm))


@pytest.fixture
def start_relay(tmp_path, nursery):
    """``await start_relay(webhooks, **relay_settings)``: a relay serving in the test's nursery."""

    async def start(webhooks: list[dict], plugins=(), **relay_settings) -> RunningRelay:
        relay = relay_of(make_config(tmp_path, webhooks, **relay_settings), plugins)
        addresses = await nursery.start(relay.run)
        tcp = next(a for a in addresses if not a.startswith("/"))
        return RunningRelay(relay=relay, url=f"http://{tcp}", socket=relay.config.relay.socket)

    return start


def seed_events() -> list[dict]:
    return json.loads(SEED.read_text())


class RecordingTransport:
    """Answers with ``statuses`` in turn (then 200), after ``hang`` seconds; notes when."""

    def __init__(self, statuses=(), hang=0.0):
        self.statuses = list(statuses)
        self.hang = hang
        self.times: list[float] = []

    async def send(self, webhook, request):
        self.times.append(trio.current_time())
        await trio.sleep(self.hang)
        return Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def aclose(self):
        pass


async def start_with_transport(
    nursery, tmp_path: Path, transport, webhook: dict | None = None, **relay_settings
) -> Relay:
    """A relay whose webhook "crm" sends through ``transport``, a test plugin registered
    through the same hook as the built-in one: for trio's MockClock, which real sockets and
    other processes do not mix with (a clock that jumps while they work)."""

    class Plugin:
        @hookimpl
        def register_transports(self, register):
            register("recording", lambda config: transport)

    webhooks = [
        {"id": "crm", "url": "http://example.invalid/", "transport": "recording", **(webhook or {})}
    ]
    config = make_config(
        tmp_path,
        webhooks,
        listen=None,
        journal="inline",  # another process working makes every task look blocked: see InlineWriter
        **relay_settings,
    )
    relay = relay_of(config, [Plugin()])
    await nursery.start(relay.run)
    return relay


async def post_event(relay: Relay, event: dict | None = None) -> None:
    """Ingest ``event`` (the first seed event) through the API, as a request would."""
    body = json.dumps(event or seed_events()[0]).encode()
    status, _ = await Api(relay)(
        HTTPRequest("POST", "/events", {"content-type": "application/json"}, body)
    )
    assert status == 202


def no_retry_delay():
    return {"first": 0.05, "factor": 1.0, "max": 0.05}
