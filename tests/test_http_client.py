"""The delivery client against raw servers on loopback that answer exactly as told."""

import pytest
import trio

from relay.http.client import HTTPClient, Target, encode_head
from relay.http.http11 import ProtocolError
from relay.model import PermanentFailure, Request


class RawServer:
    """Reads one request head (and its Content-Length body), writes the next scripted answer.

    ``answers`` are bytes, or None to close the connection instead of answering.
    """

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def serve(self, stream):
        self.connections += 1
        try:
            await self._answer(stream)
        except trio.BrokenResourceError:
            pass  # the client hung up mid-answer: that is what some tests do

    async def _answer(self, stream):
        buffer = b""
        async with stream:
            while self.answers:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                answer = self.answers.pop(0)
                if answer is None:
                    return
                await stream.send_all(answer)
                if b"connection: close" in answer.lower() or b"HTTP/1.0" in answer[:8]:
                    return


@pytest.fixture
def serve(nursery):
    async def start(*answers) -> RawServer:
        server = RawServer(answers)
        listeners = await nursery.start(trio.serve_tcp, server.serve, 0)
        server.port = listeners[0].socket.getsockname()[1]
        return server

    return start


def post(server, body=b'{"a":1}', **headers):
    return Request(
        method="POST",
        url=f"http://127.0.0.1:{server.port}/hook?x=1",
        headers=tuple(headers.items()) or (("Content-Type", "application/json"),),
        body=body,
    )


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_request_bytes_and_keep_alive_reuse(serve):
    server = await serve(OK, OK, OK)
    client = HTTPClient()
    for _ in range(3):
        response = await client.send(post(server))
        assert (response.status, response.body) == (200, b"ok")
    assert server.connections == 1
    assert server.requests[0] == (
        b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: relay/0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}' % server.port
    )
    await client.aclose()


@pytest.mark.parametrize(
    ("answer", "status", "body", "reused"),
    [
        (
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
            201,
            b"abcde",
            True,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
            302,
            b"",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", 200, b"until the end", False),
    ],
)
async def test_answers_are_framed_per_rfc_9112(serve, answer, status, body, reused):
    server = await serve(answer, OK)
    client = HTTPClient()
    response = await client.send(post(server))
    assert (response.status, response.body) == (status, body)
    assert (await client.send(post(server))).status == 200
    assert server.connections == (1 if reused else 2)


async def test_a_large_answer_is_cut_and_its_connection_not_reused(serve):
    big = b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
    server = await serve(big, OK)
    client = HTTPClient(max_response_body=1000)
    response = await client.send(post(server))
    assert response.status == 500 and len(response.body) == 1000
    await client.send(post(server))
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced_once(serve):
    server = await serve(OK, None, OK)  # answers, then closes the kept-alive connection
    client = HTTPClient()
    await client.send(post(server))
    response = await client.send(post(server))
    assert response.status == 200
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_answer_is_an_error(serve):
    server = await serve(None)
    with pytest.raises(ConnectionError):
        await HTTPClient().send(post(server))


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "nul\x00", "caf\u00e9"])
async def test_unsendable_header_values_fail_permanently_and_nothing_is_sent(serve, value):
    server = await serve(OK)
    with pytest.raises(PermanentFailure, match="X-Custom"):
        await HTTPClient().send(post(server, **{"X-Custom": value}))
    assert server.connections == 0


@pytest.mark.parametrize("name", ["", "Bad Name", "X:Colon", "Caf\u00e9"])
def test_unsendable_header_names_fail_permanently_among_good_ones(name):
    request = Request(
        method="POST", url="http://h/", headers=(("A", "1"), (name, "v"), ("B", "2")), body=b""
    )
    with pytest.raises(PermanentFailure, match="cannot be sent"):
        encode_head(Target("http://h/", "POST"), request)


async def test_garbage_answers_are_errors(serve):
    server = await serve(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(Exception, match="not an HTTP/1.x response"):
        await HTTPClient().send(post(server))


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        # Each was read as 200 or its first three digits: a delivery marked delivered that was not.
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", "status line 'HTTP/1.1 2000 OK'"),
        (b"HTTP/1.1 200junk\r\nContent-Length: 2\r\n\r\nok", "status line 'HTTP/1.1 200junk'"),
        (b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok", "status line"),
        (b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\nok", "status line"),
        (b"HTTP/1.1 +20 OK\r\nContent-Length: 2\r\n\r\nok", "status line"),
        (b"HTTP/1.10 200 OK\r\nContent-Length: 2\r\n\r\nok", "status line"),
        (b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "status line"),  # case-sensitive
        (b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok", "status line"),
        (b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok", "status code 099 is not one"),
        (b"HTTP/1.1 600 High\r\nContent-Length: 2\r\n\r\nok", "status code 600 is not one"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "101 Switching Protocols"),
        (b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok", "control character 0x00"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\x0b\r\nContent-Length: 2\r\n\r\nok", "0x0b in the value"),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "whitespace between header name"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\t2\r\nContent-Length: 2\r\n\r\nok", "line folding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok", "both"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n", "chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2zz\r\nok\r\n0\r\n\r\n", "chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 2\r\nok\r\n0\r\n\r\n", "chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n", "CRLF"),
    ],
)
async def test_answers_that_could_mean_two_things_are_protocol_errors(serve, answer, reason):
    server = await serve(answer, OK)
    client = HTTPClient()
    with trio.fail_after(5), pytest.raises(ProtocolError) as raised:
        await client.send(post(server))
    assert reason in str(raised.value)
    assert (await client.send(post(server))).status == 200  # on a new connection
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",  # no SP before the empty reason
        b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 caf\xc3\xa9 \t ok\r\nContent-Length: 2\r\n\r\nok",  # obs-text, tabs
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",  # one value, repeated
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 ;x=y\r\nok\r\n0\r\nT: 1\r\n\r\n",
    ],
)
async def test_answers_rfc_9112_allows_are_taken(serve, answer):
    server = await serve(answer)
    response = await HTTPClient().send(post(server))
    assert (response.status, response.body) == (200, b"ok")


async def test_an_answer_that_is_no_http_fails_the_attempt_for_a_retry(start_relay, serve):
    from tests.conftest import no_retry_delay, seed_events
    from tests.test_delivery import journal_rows

    server = await serve(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", OK)
    url = f"http://127.0.0.1:{server.port}/hook"
    running = await start_relay([{"id": "crm", "url": url, "backoff": no_retry_delay()}])
    await running.post(seed_events()[0])
    with trio.fail_after(10):
        while journal_rows(running, "SELECT state FROM deliveries") != [("delivered",)]:
            await trio.sleep(0.05)
    attempts = journal_rows(running, "SELECT status, error FROM attempts ORDER BY number")
    assert attempts == [
        (None, "ProtocolError: not an HTTP/1.x response: status line 'HTTP/1.1 2000 OK'"),
        (200, None),
    ]
