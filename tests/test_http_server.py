"""The ingest server's bounded waits: an idle connection, or a body that does not come, ends the
connection; a handler that takes long (waiting for the journal) is never cut short."""

from __future__ import annotations

import json

import attrs
import h11
import pytest
import trio

from relay.http import server as http_server
from relay.ingest.api import ids_json
from relay.ingest.events import new_id

SHORT = 0.3  # the timeouts under test, in seconds


@attrs.define
class Handler:
    """What relay's server under test serves: it notes each request, answers 200 after
    ``hang`` seconds. (conftest's Receiver is h11, not this server.)"""

    hang: float = 0.0
    url: str = ""
    requests: list = attrs.Factory(list)

    async def __call__(self, request: http_server.HTTPRequest) -> tuple[int, dict]:
        self.requests.append(request)
        await trio.sleep(self.hang)
        return 200, {}


async def start_server(nursery, handler: Handler | None = None) -> Handler:
    handler = handler or Handler()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http_server.HTTPServer(handler, max_body=1 << 20).serve, listeners)
    host, port = listeners[0].socket.getsockname()[:2]
    handler.url = f"http://{host}:{port}/hook"
    return handler


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(http_server, "IDLE_TIMEOUT", SHORT)
    monkeypatch.setattr(http_server, "REQUEST_TIMEOUT", SHORT)
    if hasattr(http_server, "SWEEP_INTERVAL"):
        monkeypatch.setattr(http_server, "SWEEP_INTERVAL", SHORT / 4)


def request(body: bytes = b"{}", length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (length, body)


async def connect(receiver: Handler) -> trio.SocketStream:
    host, port = receiver.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_until_closed(stream: trio.SocketStream, within: float) -> bytes:
    """Everything the server sends until it closes; fails if it has not closed ``within``."""
    answer = b""
    with trio.fail_after(within):
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return answer


@pytest.fixture
async def served(nursery, short_timeouts) -> Handler:
    return await start_server(nursery)


async def test_a_connection_that_sends_nothing_is_closed(served):
    async with await connect(served) as stream:
        started = trio.current_time()
        assert await read_until_closed(stream, within=5) == b""
        assert trio.current_time() - started >= SHORT * 0.9


async def test_an_idle_keep_alive_connection_is_closed_after_its_answer(served):
    async with await connect(served) as stream:
        await stream.send_all(request())
        answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1") == 1


async def test_a_body_that_does_not_come_whole_ends_the_connection(served):
    async with await connect(served) as stream:
        await stream.send_all(request(b"{}", length=100))
        assert await read_until_closed(stream, within=5) == b""
    assert served.requests == []


async def test_a_chunked_body_that_stalls_ends_the_connection(served):
    head = b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
    async with await connect(served) as stream:
        await stream.send_all(head)
        assert await read_until_closed(stream, within=5) == b""
    assert served.requests == []


async def test_a_handler_slower_than_the_timeouts_still_answers(nursery, short_timeouts):
    receiver = await start_server(nursery, Handler(hang=SHORT * 4))
    async with await connect(receiver) as stream:
        await stream.send_all(request())
        answer = await read_until_closed(stream, within=10)
    assert answer.startswith(b"HTTP/1.1 200 OK")


async def test_requests_on_one_connection_each_get_a_fresh_idle_timeout(served):
    async with await connect(served) as stream:
        for _ in range(4):  # together longer than one timeout
            await trio.sleep(SHORT / 2)
            await stream.send_all(request())
            answer = b""
            while b"\r\n\r\n{}" not in answer:
                answer += await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("count", [0, 1, 3])
def test_the_202_answer_is_the_json_of_its_ids(count):
    ids = [new_id() for _ in range(count)]
    assert ids_json(ids) == json.dumps({"ids": ids}).encode()


@pytest.mark.parametrize(("status", "close"), [(202, False), (413, True), (599, False)])
def test_answers_are_framed_with_their_length(status, close):
    answer = h11.Connection(h11.CLIENT)
    answer.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    answer.receive_data(http_server._response(status, {"error": "é"}, close=close))
    head, body = answer.next_event(), answer.next_event()
    assert head.status_code == status
    assert (b"connection", b"close") in head.headers or not close
    assert json.loads(body.data) == {"error": "é"}


async def exchange(receiver: Handler, data: bytes) -> bytes:
    """Send ``data``, return the answer (the server closes after a 400 and after HTTP/1.0)."""
    async with await connect(receiver) as stream:
        await stream.send_all(data)
        answer = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                if not (chunk := await stream.receive_some(65536)):
                    break
                answer += chunk
    return answer


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"POST /hook HTTP/1.1\r\nContent-Length: 2", "no Host header (RFC 9112 3.2"),
        (b"POST /hook HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2", "more than one Host"),
        (b"POST /hook HTTP/1.0\r\nHost: a\r\nHost: b\r\nContent-Length: 2", "more than one Host"),
        (b"POST /hook HTTP/1.1\r\nHost: a b\r\nContent-Length: 2", "bad Host header"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nContent-Length: 2",
            "0x00 in the value",
        ),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\nContent-Length: 2", "0x0d in the value"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\nContent-Length: 2",
            "0x1b in the value",
        ),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nX-A: a\x7f\r\nContent-Length: 2", "0x7f in the value"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\nX-A: 1\r\nContent-Length: 2",
            "0x0a in the value of header 'Host'",
        ),
        (b"POST /h\x00 HTTP/1.1\r\nHost: x\r\nContent-Length: 2", "0x00 in the head's line"),
        (b"POST /hook HTTP/1.1\r\nHost : x\r\nContent-Length: 2", "whitespace between header name"),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\nContent-Length: 2", "folding"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nNo colon here\r\nContent-Length: 2",
            "without a colon",
        ),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 3", "conflicting Content-Length"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3",
            "conflicting",
        ),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: +2", "bad Content-Length"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked",
            "both Content-Length and Transfer-Encoding",
        ),
        (b"POST /hook HTTP/1.0\r\nTransfer-Encoding: chunked", "Transfer-Encoding in an HTTP/1.0"),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x2", "chunk size"),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n 2", "chunk size"),
        (b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2 x", "chunk size"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
            b"Bad trailer\r\n",
            "bad trailer field line",
        ),
        (b"POST  /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2", "malformed request line"),
        (b"  HTTP/1.1\r\nHost: x\r\nContent-Length: 2", "malformed request line"),  # fuzz
        (b"P(ST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2", "malformed request line"),
    ],
)
async def test_requests_that_could_mean_two_things_are_400s_naming_why(served, head, reason):
    answer = await exchange(served, head + b"\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in answer
    assert reason in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert served.requests == []


@pytest.mark.parametrize(
    "head",
    [
        b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2",  # one value, repeated
        b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2",
        b"POST /hook HTTP/1.0\r\nContent-Length: 2",  # HTTP/1.0 needs no Host
        b"POST /hook HTTP/1.1\r\nHost:\r\nContent-Length: 2",  # empty: allowed (RFC 9112 3.2)
        b"POST /hook HTTP/1.1\r\nHost: [::1]:8765\r\nContent-Length: 2",
        b"POST /hook HTTP/1.1\r\nHost: x\r\nX-Name: caf\xc3\xa9\tok\r\nContent-Length: 2",
        b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2 ; a=b\r\n{}\r\n0",
    ],
)
async def test_strict_is_not_stricter_than_rfc_9112(served, head):
    body = b"" if b"chunked" in head else b"{}"
    answer = await exchange(served, head + b"\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert served.requests[0].body == b"{}"


async def test_an_answer_to_head_has_no_content_and_keep_alive_survives_it(served):
    async with await connect(served) as stream:
        await stream.send_all(b"HEAD /hook HTTP/1.1\r\nHost: x\r\n\r\n" + request())
        client = h11.Connection(h11.CLIENT)  # independent: reads both answers off the stream
        events = []
        for method, body in (("HEAD", b""), ("POST", b"{}")):  # the bytes request() sent
            headers = [("Host", "x"), ("Content-Length", str(len(body)))]
            client.send(h11.Request(method=method, target="/hook", headers=headers))
            if body:
                client.send(h11.Data(body))
            client.send(h11.EndOfMessage())
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                    continue
                events.append(event)
                if isinstance(event, h11.EndOfMessage):
                    break
            client.start_next_cycle()
    head_answer, _, post_answer, post_body, _ = events
    assert head_answer.status_code == post_answer.status_code == 200
    assert (b"content-length", b"2") in head_answer.headers  # what GET would have had
    assert post_body.data == b"{}"
