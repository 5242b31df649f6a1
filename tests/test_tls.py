"""TLS to webhooks: a handshake that fails says why (which host, which certificate problem, a
timeout, a peer that hung up), where trio alone says "BrokenResourceError". Servers on loopback
with certificates from a test CA (trustme)."""

from __future__ import annotations

import functools
import ssl

import pytest
import trio
import trustme

from relay.http import client as http_client
from relay.http.client import HTTPClient, TLSError
from relay.model import Request
from tests.conftest import no_retry_delay, seed_events
from tests.test_delivery import journal_rows

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, kind: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if kind == "self-signed":  # the CA's own certificate, served as the server's
        with ca.cert_pem.tempfile() as cert, ca.private_key_pem.tempfile() as key:
            context.load_cert_chain(cert, key)
    else:
        ca.issue_cert("example.org" if kind == "other host" else "127.0.0.1").configure_cert(
            context
        )
    return context


async def answer_ok(stream: trio.SSLStream) -> None:
    try:
        await stream.receive_some(65536)
        await stream.send_all(OK)
    except trio.BrokenResourceError:
        pass  # the client refused the handshake: what the tests are about


async def start_tls_server(nursery, context: ssl.SSLContext) -> str:
    serve = functools.partial(trio.serve_ssl_over_tcp, answer_ok, 0, context, host="127.0.0.1")
    listeners = await nursery.start(serve)
    return f"https://127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}/hook"


async def start_raw_server(nursery, handler) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"https://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hook"


def client_trusting(ca: trustme.CA) -> HTTPClient:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return HTTPClient(ssl_context=context)


async def test_a_trusted_certificate_delivers(nursery, ca):
    url = await start_tls_server(nursery, server_context(ca, "127.0.0.1"))
    response = await client_trusting(ca).send(Request("POST", url, body=b"{}"))
    assert (response.status, response.body) == (200, b"ok")


@pytest.mark.parametrize(
    ("kind", "trusted", "reason"),
    [
        ("self-signed", False, "(self-signed certificate)"),  # OpenSSL 3's words
        ("127.0.0.1", False, "(unable to get local issuer certificate)"),  # not our CA
        ("other host", True, "(IP address mismatch, certificate is not valid for '127.0.0.1'"),
    ],
)
async def test_a_certificate_that_fails_verification_says_why(nursery, ca, kind, trusted, reason):
    url = await start_tls_server(nursery, server_context(ca, kind))
    client = client_trusting(ca) if trusted else HTTPClient()
    with pytest.raises(TLSError) as raised:
        await client.send(Request("POST", url, body=b"{}"))
    assert str(raised.value).startswith("certificate verify failed for host 127.0.0.1 ")
    assert reason in str(raised.value)


async def test_a_peer_that_hangs_up_during_the_handshake_is_named(nursery):
    async def hang_up(stream):
        await stream.aclose()

    url = await start_raw_server(nursery, hang_up)
    with pytest.raises(TLSError, match="connection closed by 127.0.0.1 during the TLS handshake"):
        await HTTPClient().send(Request("POST", url))


async def test_plain_http_on_an_https_url_is_named(nursery):
    async def plain_http(stream):
        await stream.receive_some(65536)  # the ClientHello, read as a request
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    url = await start_raw_server(nursery, plain_http)
    with pytest.raises(TLSError, match=r"wrong version number \(is it a TLS port\?\)"):
        await HTTPClient().send(Request("POST", url))


async def silent(stream):
    await trio.sleep_forever()  # takes the connection, never speaks TLS


async def test_a_handshake_that_hangs_times_out_as_one(nursery, monkeypatch):
    monkeypatch.setattr(http_client, "HANDSHAKE_TIMEOUT", 0.2)
    url = await start_raw_server(nursery, silent)
    with (
        trio.fail_after(10),
        pytest.raises(TLSError, match=r"TLS handshake with 127\.0\.0\.1 timed out"),
    ):
        await HTTPClient().send(Request("POST", url))


async def test_a_handshake_that_hangs_is_named_within_the_attempts_deadline(nursery):
    url = await start_raw_server(nursery, silent)
    failed = None
    with trio.move_on_after(0.5):  # the attempt's timeout, far shorter than HANDSHAKE_TIMEOUT
        try:
            await HTTPClient().send(Request("POST", url))
        except TLSError as e:
            failed = e
    assert failed is not None and "timed out after" in str(failed)


async def test_a_handshake_that_hangs_is_named_within_a_deadline_given_as_a_time(nursery):
    """relay's own attempt is cut off by its lane's watchdog, not a scope's deadline
    (relay/delivery/deadlines.py): it tells the client when, and the handshake times out just
    before, saying so."""
    url = await start_raw_server(nursery, silent)
    client = HTTPClient()
    started = trio.current_time()
    with trio.fail_after(5), pytest.raises(TLSError, match=r"timed out after 0\.[34] s"):
        await client.exchange(client.target("POST", url), b"", started + 0.5)


async def test_the_attempt_records_what_failed_not_broken_resource_error(start_relay, nursery, ca):
    url = await start_tls_server(nursery, server_context(ca, "self-signed"))
    running = await start_relay(
        [{"id": "crm", "url": url, "tries": 1, "backoff": no_retry_delay()}]
    )
    await running.post(seed_events()[0])
    with trio.fail_after(10):
        while journal_rows(running, "SELECT state FROM deliveries") != [("failed",)]:
            await trio.sleep(0.05)
    assert journal_rows(running, "SELECT error FROM attempts") == [
        ("TLSError: certificate verify failed for host 127.0.0.1 (self-signed certificate)",)
    ]


async def test_a_tls_connection_broken_after_the_handshake_says_how(nursery, ca):
    async def garbage_after_handshake(stream: trio.SSLStream):
        await stream.do_handshake()
        await stream.receive_some(65536)
        await stream.transport_stream.send_all(b"\x17\x03\x03\x00\x05nope!")  # a forged record
        await trio.sleep(1)

    context = server_context(ca, "127.0.0.1")
    serve = functools.partial(
        trio.serve_ssl_over_tcp, garbage_after_handshake, 0, context, host="127.0.0.1"
    )
    listeners = await nursery.start(serve)
    url = f"https://127.0.0.1:{listeners[0].transport_listener.socket.getsockname()[1]}/"
    with pytest.raises(ConnectionError, match=r"connection to 127\.0\.0\.1 broken: TLS \w"):
        await client_trusting(ca).send(Request("POST", url, body=b"{}"))
