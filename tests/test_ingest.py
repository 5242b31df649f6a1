"""The ingest API: what it accepts, what it rejects (and journals nothing of), on TCP and Unix."""

import json
import os
import socket
import sqlite3
import stat

import httpx
import pytest
import trio

from tests.conftest import seed_events


def journaled(running) -> tuple[int, int]:
    with sqlite3.connect(running.journal_path) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    return events, deliveries


@pytest.fixture
async def running(start_relay, receiver):
    return await start_relay([{"id": "crm", "url": receiver.url}], max_body=4096)


STATUS = seed_events()[0]


@pytest.mark.parametrize(
    ("body", "status", "field", "reason"),
    [
        (b"{not json", 400, "", "body is not valid JSON"),
        (b"\xff\xfe", 400, "", "body is not valid JSON"),
        (b'"just a string"', 422, "", "expected an event object or an array"),
        (b"[1]", 422, "[0]", "expected an object"),
        (json.dumps({"payload": {}}).encode(), 422, "event", "missing"),
        (json.dumps({"event": 7, "payload": {}}).encode(), 422, "event", "non-empty string"),
        (json.dumps({"event": "x"}).encode(), 422, "payload", "missing"),
        (json.dumps({"event": "x", "payload": []}).encode(), 422, "payload", "must be an object"),
        (
            json.dumps([STATUS, {**STATUS, "webhook_id": "nope"}]).encode(),
            422,
            "[1].webhook_id",
            "no webhook 'nope'",
        ),
        (json.dumps({**STATUS, "webhook_id": 3}).encode(), 422, "webhook_id", "must be a string"),
        # JSON can spell a lone surrogate; the journal (UTF-8) cannot store it. It once killed
        # the journal writer, and with it the relay.
        (b'{"event": "a\\ud800", "payload": {}}', 422, "event", "lone surrogate"),
        # Python's json reads these; JSON has none of them (RFC 8259 6), and strict receivers
        # would refuse what relay sent on.
        (b'{"event": "x", "payload": {"price": NaN}}', 400, "payload.price", "NaN is not JSON"),
        (b'{"event": "x", "payload": {"p": Infinity}}', 400, "payload.p", "Infinity is not JSON"),
        (
            b'[{"event": "x", "payload": {}}, {"event": "x", "payload": {"a": [1, -Infinity]}}]',
            400,
            "[1].payload.a[1]",
            "-Infinity is not JSON (RFC 8259)",
        ),
        (b'{"event": "x", "payload": {"p": 1e400}}', 400, "payload.p", "1e400 is out of range"),
        (b'{"event": NaN, "payload": {}}', 400, "event", "NaN is not JSON"),
    ],
)
async def test_bad_events_are_rejected_whole_and_nothing_is_journaled(
    running, body, status, field, reason
):
    response = await running.post(body)
    assert response.status_code == status
    (problem,) = response.json()["problems"]
    assert problem["field"] == field
    assert reason in problem["reason"]
    assert journaled(running) == (0, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's recursion limit
        b'{"event": "x", "payload": {"n": ' + b"9" * 5000 + b"}}",  # past int()'s digit limit
    ],
)
async def test_json_python_cannot_hold_is_a_400_not_a_500(start_relay, receiver, body):
    running = await start_relay([{"id": "crm", "url": receiver.url}])
    response = await running.post(body)
    assert response.status_code == 400
    assert "body is not valid JSON" in response.json()["problems"][0]["reason"]
    assert journaled(running) == (0, 0)


async def test_every_value_json_has_not_is_named_and_finite_numbers_pass(running):
    body = b'{"event": "x", "payload": {"a": NaN, "b": {"c": -1E+999}, "d": [0.5, 1e308]}}'
    response = await running.post(body)
    assert response.status_code == 400
    assert [(p["field"], p["reason"].split()[0]) for p in response.json()["problems"]] == [
        ("payload.a", "NaN"),
        ("payload.b.c", "-1E+999"),
    ]
    assert journaled(running) == (0, 0)
    fine = b'{"event": "x", "payload": {"d": [0.5, 1e308, -2.5E-3, 7]}}'
    assert (await running.post(fine)).status_code == 202
    assert journaled(running) == (1, 1)


async def test_wrong_content_type_is_415(running):
    response = await running.post(json.dumps(STATUS).encode(), content_type="text/plain")
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert journaled(running) == (0, 0)


async def test_body_too_large_is_413_announced_or_streamed(running):
    big = json.dumps({**STATUS, "pad": "x" * 5000}).encode()
    assert (await running.post(big)).status_code == 413

    async def chunks():  # no Content-Length: the limit is enforced while reading
        yield big[:2000]
        yield big[2000:]

    async with httpx.AsyncClient() as client:
        response = await client.post(
            running.url + "/events", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert "max_body" in response.json()["error"]
    assert journaled(running) == (0, 0)


async def test_the_daemon_keeps_serving_after_bad_input(running, receiver):
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:  # garbage that is not HTTP at all
        await stream.send_all(b"\x00\x01 nonsense\r\n\r\n")
        answer = await stream.receive_some(1000)
    assert answer.startswith(b"HTTP/1.1 400")
    response = await running.post(STATUS)
    assert response.status_code == 202
    await receiver.wait_for(1)


async def test_accepted_events_are_journaled_with_their_deliveries(running):
    response = await running.post([STATUS, STATUS])
    assert response.status_code == 202
    ids = response.json()["ids"]
    assert len(set(ids)) == 2
    assert journaled(running) == (2, 2)


async def test_unmatched_events_are_accepted_and_journaled(start_relay, receiver):
    running = await start_relay([{"id": "only-in", "url": receiver.url, "events": ["*:in"]}])
    assert (await running.post(STATUS)).status_code == 202
    assert journaled(running) == (1, 0)


async def test_healthz_and_unknown_paths(running):
    async with httpx.AsyncClient(base_url=running.url) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert (await client.get("/nope")).status_code == 404
        assert (await client.get("/events")).status_code == 405


async def test_unix_socket_serves_the_same_api_with_mode_0600(start_relay, receiver, tmp_path):
    sock = tmp_path / "relay.sock"
    await start_relay([{"id": "crm", "url": receiver.url}], socket=str(sock))
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        response = await client.post("/events", json=STATUS)
        assert response.status_code == 202
        bad = await client.post("/events", json={"payload": {}})
        assert bad.status_code == 422
    (request,) = await receiver.wait_for(1)
    assert json.loads(request.body) == STATUS


async def test_a_stale_socket_file_is_replaced(start_relay, receiver, tmp_path):
    sock = tmp_path / "relay.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))  # bound, never listening: what a crashed process leaves
    stale.close()
    await start_relay([{"id": "crm", "url": receiver.url}], socket=str(sock))
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        assert (await client.get("/healthz")).status_code == 200


async def raw_exchange(running, data: bytes) -> bytes:
    """Send ``data`` as is; everything the relay answers until it closes or goes quiet."""
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    answer = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(1):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return answer


def request(body: bytes, *extra: bytes) -> bytes:
    head = [b"POST /events HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json", *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def test_pipelined_chunked_and_expect_continue_requests(running):
    event = json.dumps(STATUS).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
    answer = await raw_exchange(
        running,
        request(event, b"Content-Length: %d" % len(event))
        + request(chunked, b"Transfer-Encoding: chunked")
        + request(event, b"Content-Length: %d" % len(event), b"Expect: 100-continue"),
    )
    assert answer.count(b"HTTP/1.1 202 Accepted") == 3
    assert b"HTTP/1.1 100 Continue" in answer
    assert journaled(running) == (3, 3)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request(b"{}", b"Content-Length: 2", b"Transfer-Encoding: chunked"), b"400"),
        (request(b"{}", b"Transfer-Encoding: gzip"), b"501"),
        (request(b"{}", b"Content-Length: 2", b"Content-Length: 3"), b"400"),
        (request(b"{}", b"Content-Length: 2", b"Bad Header : x"), b"400"),
        (request(b"", b"X-Big: " + b"x" * 70_000), b"431"),
        (request(b"{}", b"Content-Length: " + b"1" * 5000), b"400"),
        (request(b"-1\r\n\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"), b"400"),
        (request(b"0x2\r\n{}\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"), b"400"),
        (request(b"1_0\r\n{}\r\n0\r\n\r\n", b"Transfer-Encoding: chunked"), b"400"),
    ],
)
async def test_ambiguous_or_oversized_requests_are_refused(running, data, status):
    answer = await raw_exchange(running, data)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in answer
    assert journaled(running) == (0, 0)


async def test_http_1_0_gets_its_answer_and_the_connection_closes(running):
    event = json.dumps(STATUS).encode()
    data = request(event, b"Content-Length: %d" % len(event)).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    answer = await raw_exchange(running, data)
    assert answer.startswith(b"HTTP/1.1 202") and b"Connection: close" in answer
