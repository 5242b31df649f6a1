"""`relay listen`: a receiver (a subprocess) that prints what arrives, checks its Signature and
answers as told; fed by the real relay and by raw requests on a socket."""

import hashlib
import hmac
import json
import re
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from relay.cli.listen import check_signature
from relay.http.server import HTTPRequest
from tests.cli import relay_cli
from tests.conftest import seed_events
from tests.daemon import Daemon, write_config

SECRET = "s3cr3t"


class Listener:
    """``relay listen`` running, with what it has printed so far."""

    def __init__(self, process: trio.Process):
        self.process = process
        self.output = ""
        self.url = ""
        self._changed = trio.Event()

    async def read(self) -> None:
        while data := await self.process.stdout.receive_some(65536):
            self.output += data.decode()
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str) -> re.Match:
        with trio.fail_after(15):
            while not (found := re.search(pattern, self.output, re.MULTILINE)):
                assert self.process.poll() is None, self.output
                await self._changed.wait()
        return found

    def request(self, number: int) -> list[str]:
        """The lines printed for request ``number``."""
        block = re.search(rf"^#{number} .*?(?=\n\n)", self.output, re.MULTILINE | re.DOTALL)
        return block[0].splitlines() if block else []

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            return await self.process.wait()


@pytest.fixture
async def listen(nursery):
    """``await listen(*args)``: ``relay listen --port 0 ARGS``, once it prints its address."""
    started = []

    async def start(*args: str) -> Listener:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "relay", "listen", "--port", "0", *args],
            stdout=subprocess.PIPE,
        )
        listener = Listener(process)
        started.append(listener)
        nursery.start_soon(listener.read)
        found = await listener.wait_for(r"\Alistening on (http://127\.0\.0\.1:\d+)\n")
        listener.url = found[1]
        return listener

    yield start
    for listener in started:
        if listener.process.poll() is None:
            listener.process.kill()


def sign(message: bytes) -> str:
    return hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()


async def raw(url: str, request: bytes) -> bytes:
    """Send ``request`` as it is; the answer's status line."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(10):
            while b"\r\n" not in answer:
                answer += await stream.receive_some(4096)
    return answer.split(b"\r\n")[0]


async def test_a_delivery_from_the_relay_is_printed_and_its_signature_verifies(tmp_path, listen):
    listener = await listen("--secret", SECRET)
    webhook = f'[[webhooks]]\nid = "crm"\nurl = "{listener.url}/hook"\nsecret = "{SECRET}"\n'
    daemon = await Daemon(write_config(tmp_path, webhooks=webhook)).start()
    try:
        event = seed_events()[0]
        sent = await relay_cli("send", "--url", daemon.url, stdin=json.dumps(event).encode())
        assert sent.returncode == 0, sent.stderr
        await listener.wait_for(r"^  -> answered 200$")
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0
    lines = listener.request(1)
    assert re.fullmatch(r"#1 \d\d:\d\d:\d\d\.\d{3} POST /hook", lines[0])
    assert "  content-type: application/json" in lines
    assert any(re.fullmatch(r"  relay-delivery-id: [0-9a-f]{32}", line) for line in lines)
    start = lines.index(next(line for line in lines if line.startswith("  body (JSON, ")))
    end = lines.index("  -> Signature ok (HMAC-SHA256 of the body, with --secret)")
    shown = "\n".join(line.removeprefix("    ") for line in lines[start + 1 : end])
    assert shown == json.dumps(event, indent=2, ensure_ascii=False)  # pretty-printed
    assert lines[end + 1 :] == ["  -> answered 200"]
    assert await listener.stop() == 0


async def test_a_wrong_or_missing_signature_is_flagged(listen):
    listener = await listen("--secret", SECRET)
    body = b'{"event": "whatsapp:message:in", "payload": {}}'
    async with httpx.AsyncClient(base_url=listener.url) as client:
        wrong = sign(body + b" ")
        await client.post("/a", content=body, headers={"signature": wrong})
        await client.post("/b", content=body)
        await client.post("/c", content=body, headers={"signature": sign(body).upper()})
    await listener.wait_for(r"^#3 ")
    assert "  -> Signature DOES NOT VERIFY (expected HMAC-SHA256 of the body, with --secret)" in (
        listener.request(1)
    )
    assert "  -> Signature MISSING" in listener.request(2)
    assert "  -> Signature ok (HMAC-SHA256 of the body, with --secret)" in listener.request(3)
    assert await listener.stop() == 0


async def test_a_request_without_a_body_is_verified_over_its_request_target(listen):
    listener = await listen("--secret", SECRET)
    target = b"/ack?id=a418&mobile=%2B4915&status=read"
    for signed in (b"GET " + target, target, b""):
        status = await raw(
            listener.url,
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nSignature: " + sign(signed).encode()
            + b"\r\nConnection: close\r\n\r\n",
        )  # fmt: skip
        assert status == b"HTTP/1.1 200 OK"
    await listener.wait_for(r"^#3 ")
    what = (
        "HMAC-SHA256 of the method and request target GET /ack?id=a418&mobile=%2B4915&status=read"
    )
    assert listener.request(1)[0].endswith(" GET /ack?id=a418&mobile=%2B4915&status=read")
    assert "  (no body)" in listener.request(1)
    assert f"  -> Signature ok ({what}, with --secret)" in listener.request(1)
    assert f"  -> Signature DOES NOT VERIFY (expected {what}, with --secret)" in listener.request(2)
    assert f"  -> Signature DOES NOT VERIFY (expected {what}, with --secret)" in listener.request(3)
    assert await listener.stop() == 0


async def test_form_fields_are_listed_and_the_answer_is_status(listen):
    listener = await listen("--status", "503")
    async with httpx.AsyncClient(base_url=listener.url) as client:
        answer = await client.post(
            "/form",
            content=b"id=a418&note=caf%C3%A9+ok&empty=",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 503
        multipart = await client.post(
            "/upload", data={"id": "a418"}, files={"doc": ("a.txt", b"hello", "text/plain")}
        )
        assert multipart.status_code == 503
    await listener.wait_for(r"^#2 ")
    assert listener.request(1)[-6:] == [
        "  body (form fields, 32 bytes):",
        "    id = a418",
        "    note = café ok",
        "    empty = ",
        "  -> no Signature",
        "  -> answered 503",
    ]
    assert "    id = a418" in listener.request(2)
    assert "    doc: file 'a.txt', text/plain, 5 bytes" in listener.request(2)
    assert await listener.stop() == 0


async def test_what_arrives_cannot_drive_the_terminal_nor_show_credentials(listen):
    listener = await listen()
    async with httpx.AsyncClient(base_url=listener.url) as client:
        await client.post(
            "/x",
            content=b"red \x1b[31m alert\x07",
            headers={
                "content-type": "text/plain",
                "authorization": "Bearer tok-123456",
                "x-api-key": "k-987",
            },
        )
    await listener.wait_for(r"^#1 ")
    lines = listener.request(1)
    assert "    red \\x1b[31m alert\\x07" in lines
    assert "\x1b" not in listener.output
    assert "  authorization: Bearer <10 characters hidden: --show-secrets>" in lines
    assert "  x-api-key: <5 characters hidden: --show-secrets>" in lines
    assert "tok-123456" not in listener.output and "k-987" not in listener.output
    assert await listener.stop() == 0


async def test_a_port_in_use_is_an_error(listen):
    listener = await listen()
    port = listener.url.rsplit(":", 1)[1]
    result = await relay_cli("listen", "--port", port)
    assert result.returncode == 2
    assert result.stderr.startswith(f"relay listen: cannot listen on 127.0.0.1:{port}: ")
    assert await listener.stop() == 0


def test_the_signature_check_agrees_with_a_known_vector():
    """spatie's signer test (../shared/design/peers.md): body {"a":"1"}, secret abc."""
    vector = "345611a3626cf5e080a7a412184001882ab231b8bdb465dc76dbf709f01f210a"
    request = HTTPRequest("POST", "/hook", {}, b'{"a":"1"}')
    assert check_signature("abc", request, vector) == (True, "the body")
    assert check_signature("abd", request, vector)[0] is False
