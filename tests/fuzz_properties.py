"""What must hold whatever bytes arrive, for tests/test_fuzz_http.py (a few seconds) and
scripts/fuzz (minutes): the properties, and strategies that reach past the first check.

- The server, fed any bytes on a connection, answers and closes, or closes; nothing escapes it
  (an exception out of a connection task would stop the relay's ingest).
- The client, reading any bytes as an answer, returns a Response with a real status or raises
  the project's own errors (ProtocolError, ConnectionError): never IndexError, ValueError,
  UnicodeDecodeError.
- Ingest's JSON parse refuses with InvalidEvents (400 or 422) or accepts events whose bytes are
  strict, finite JSON.

Random bytes alone rarely get past a request line, so the strategies build messages from the
pieces parsers look at (start lines, framing headers, chunk sizes, JSON values) and then damage
them: a byte changed, inserted or cut.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import trio
import trio.testing
from hypothesis import strategies as st

from relay.http.client import Connection
from relay.http.http11 import ProtocolError
from relay.http.server import HTTPServer
from relay.ingest import events
from tests.conftest import make_config

HANG_GUARD = 5.0  # seconds: nothing here waits on time, so reaching it is a bug


# -- the properties --------------------------------------------------------------------------


def server_survives(data: bytes) -> None:
    trio.run(_serve_bytes, data)


async def _answer(request):
    return 200, {"n": len(request.body)}


async def _serve_bytes(data: bytes) -> None:
    client, server_end = trio.testing.memory_stream_pair()
    listener = _OneConnection(server_end)
    server = HTTPServer(_answer, max_body=4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [listener])
        await client.send_all(data)
        await client.send_eof()
        output = b""
        with trio.fail_after(HANG_GUARD):
            while chunk := await client.receive_some(65536):
                output += chunk
        # The connection closes before its task ends: let an error it raises reach the nursery
        # before cancelling hides it.
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert output == b"" or _ANSWER.match(output), output[:100]


_ANSWER = re.compile(rb"HTTP/1\.1 (100|200|400|413|431|501) ")


class _OneConnection(trio.abc.Listener):
    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream

    async def accept(self) -> trio.abc.Stream:
        if self.stream is None:
            await trio.sleep_forever()
        stream, self.stream = self.stream, None
        return stream

    async def aclose(self) -> None:
        pass


def client_reads(data: bytes) -> None:
    trio.run(_read_answer, data)


async def _read_answer(data: bytes) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    await server_end.send_all(data)
    await server_end.send_eof()
    connection = Connection(client_end, ("http", "example.org", 80))
    try:
        with trio.fail_after(HANG_GUARD):
            response = await connection.roundtrip(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 4096)
    except (ProtocolError, ConnectionError):
        return
    assert 200 <= response.status <= 599
    assert re.match(rb"HTTP/1\.\d 1?[0-9]{2,3}", data)
    assert b" %d" % response.status in data


_CONFIG = make_config(Path(tempfile.gettempdir()), [{"id": "crm", "url": "http://x/"}])


def ingest_parses(body: bytes) -> None:
    try:
        incoming = events.parse(body, _CONFIG)
    except events.InvalidEvents as e:
        assert e.status in (400, 422) and e.problems
        json.dumps(e.as_json())  # the answer itself is JSON
        return
    for item in incoming:
        assert isinstance(item.name, str) and item.name
        json.loads(item.body, parse_constant=_not_json, parse_float=_finite)


def _not_json(constant: str):
    raise AssertionError(f"{constant} accepted")


def _finite(text: str) -> float:
    assert math.isfinite(float(text)), f"{text} accepted"
    return float(text)


# -- the strategies --------------------------------------------------------------------------

_NAMES = st.sampled_from(["X-A", "Host", "host", "Connection", "Expect", "Transfer-Encoding"])
_LENGTHS = ["0", "2", "5", "2, 2", "2, 3", "-1", "+2", "0x2", "", " 2", "99999", "1_0"]
_VALUES = st.sampled_from(
    [*_LENGTHS, "chunked", "gzip, chunked", "close", "keep-alive", "100-continue", "x", "a, b"]
    + ["[::1]:80", "", "caf\xe9", "a\x00b", "a\rb"]
)
_SEPARATORS = st.sampled_from([": "] * 6 + [":", " :", "", ":\t"])
_FRAMING = st.one_of(  # the headers that decide where a body ends: most messages have one
    st.sampled_from(_LENGTHS).map(lambda v: "Content-Length: " + v),
    st.sampled_from(["chunked", "Chunked", "gzip", "chunked, chunked"]).map(
        lambda v: "Transfer-Encoding: " + v
    ),
    st.just(""),
)


@st.composite
def _header(draw) -> bytes:
    if draw(st.integers(0, 3)):  # mostly a plain one, so that the message gets further
        return b"X-" + draw(st.sampled_from([b"A: 1", b"B: two words", b"C: caf\xe9"]))
    name = draw(st.one_of(_NAMES, st.text(alphabet="abcXYZ-_ :\t", max_size=8)))
    return (name + draw(_SEPARATORS) + draw(_VALUES)).encode("latin-1")


@st.composite
def _chunked(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=8))
        size = draw(st.sampled_from([f"{len(data):x}", f"{len(data):X};e=1", "zz", " 1", "1 "]))
        parts.append(size.encode() + b"\r\n" + data + b"\r\n")
    parts.append(draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nT: 1\r\n\r\n", b"0\r\nbad\r\n\r\n"])))
    return b"".join(parts)


@st.composite
def _message(draw, start_lines, first_headers) -> bytes:
    """A message as parsers see them: mostly well formed up to the part being tried."""
    lines = [draw(start_lines), *draw(first_headers)]
    lines += draw(st.lists(_header(), max_size=3))
    lines.append(draw(_FRAMING).encode())
    body = draw(st.one_of(st.binary(max_size=16), _chunked()))
    message = b"\r\n".join(line for line in lines if line) + b"\r\n\r\n" + body
    return draw(_damaged(message))


@st.composite
def _damaged(draw, data: bytes) -> bytes:
    """``data`` as it is (mostly), or with a few bytes changed, inserted or cut out."""
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["change", "insert", "cut"]))
        byte = bytes([draw(st.integers(0, 255))])
        if how == "change":
            data = data[:at] + byte + data[at + 1 :]
        elif how == "insert":
            data = data[:at] + byte + data[at:]
        else:
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
    return data


_REQUEST_LINES = st.builds(
    lambda method, target, version: b" ".join([method, target, version]),
    st.sampled_from([b"POST"] * 4 + [b"GET", b"HEAD", b"P\x00ST", b""]),
    st.sampled_from([b"/events"] * 4 + [b"/", b"/a?b=c", b"*", b""]),
    st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2"]),
)
_HOSTS = st.sampled_from([[b"Host: x"]] * 6 + [[], [b"Host: a", b"Host: b"]])
_VERSIONS = [b"HTTP/1.1 "] * 4 + [b"HTTP/1.0 ", b"HTTP/1.1  ", b"HTTP/1.", b"HTTP/2 "]
_STATUS_LINES = st.builds(
    lambda version, code, reason: version + code + reason,
    st.sampled_from(_VERSIONS),
    st.sampled_from([b"200"] * 5 + [b"500", b"204", b"100", b"101", b"304", b"2000", b"099", b"0"]),
    st.sampled_from([b" OK"] * 4 + [b"", b" ", b"junk", b" caf\xc3\xa9"]),
)

_REQUESTS = _message(_REQUEST_LINES, _HOSTS)
_ANSWERS = _message(_STATUS_LINES, st.just([]))
requests = st.one_of(
    _REQUESTS,
    st.lists(_REQUESTS, min_size=2, max_size=3).map(b"".join),  # pipelined
    st.binary(max_size=200),
)
answers = st.one_of(
    _ANSWERS,
    st.lists(_ANSWERS, min_size=2, max_size=3).map(b"".join),  # 1xx answers, then the answer
    st.binary(max_size=200),
)

_JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
_EVENTS = st.fixed_dictionaries(
    {"event": st.one_of(st.text(max_size=6), _JSON_VALUES), "payload": _JSON_VALUES},
    optional={"webhook_id": st.one_of(st.just("crm"), st.text(max_size=4), _JSON_VALUES)},
)
event_bodies = st.one_of(
    st.binary(max_size=100),
    st.one_of(_EVENTS, st.lists(_EVENTS, max_size=3), _JSON_VALUES)
    .map(lambda value: json.dumps(value).encode())
    .flatmap(_damaged),
    st.sampled_from([b"1e400", b"[-1E+999]", b'{"event":"a","payload":{"x":1e999}}']),
)

PROPERTIES = {  # name: (property, strategy)
    "server: request bytes": (server_survives, requests),
    "client: answer bytes": (client_reads, answers),
    "ingest: event bodies": (ingest_parses, event_bodies),
}
