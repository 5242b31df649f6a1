"""Who may send events: ``[relay] ingest_token`` on TCP ingest (the Unix socket needs none), a
relay that will not start with TCP ingest off loopback and no token, and the Host check against
DNS rebinding on the TCP listeners, ingest and admin (relay/http/admission.py).

Requests about the Host go over raw sockets, so that no client library writes the Host for
the test; answers are read by this file's own parser, not relay's.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from relay import config as config_module
from relay.config import ConfigError
from tests.conftest import make_config, relay_of, seed_events
from tests.daemon import Daemon

TOKEN = "ingest-t0ken-never-shown"
EVENT = json.dumps(seed_events()[0]).encode()
WEBHOOK = '\n[[webhooks]]\nid = "crm"\nurl = "http://127.0.0.1:9/"\n'


def write_toml(tmp_path: Path, relay_lines: str, webhooks: str = WEBHOOK) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[relay]\nstate_dir = "state"\nallow_networks = ["127.0.0.0/8"]\n{relay_lines}\n{webhooks}'
    )
    return path


def relay_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, text=True, **kwargs
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def journaled(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "journal.sqlite3") as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


class Answer:
    """An HTTP/1.1 answer as it came, read apart by hand: status, headers, body, and whether
    the relay closed the connection after it."""

    def __init__(self, data: bytes, closed: bool):
        head, _, self.body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        found = re.fullmatch(r"HTTP/1\.1 (\d{3}) .*", status_line)
        assert found, data
        self.status = int(found[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        assert len(self.body) == int(self.headers["content-length"]), data
        self.closed = closed

    def json(self) -> dict:
        return json.loads(self.body)


async def exchange(where: str | Path, data: bytes) -> Answer:
    """``data`` sent as it is on a new connection to ``HOST:PORT`` or a Unix socket; the first
    answer. Bounded by a deadline: a server that waits for a body never sent fails here."""
    with trio.fail_after(10):
        if isinstance(where, Path):
            stream = await trio.open_unix_socket(str(where))
        else:
            host, _, port = where.rpartition(":")
            stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(data)
            received = b""
            while True:
                head, sep, body = received.partition(b"\r\n\r\n")
                if sep and (length := re.search(rb"(?i)content-length: *(\d+)", head)):
                    if len(body) >= int(length[1]):
                        break
                if not (chunk := await stream.receive_some(65536)):
                    break
                received += chunk
            # Said closed: is it? (Else the deadline above fails the test.)
            closed = b"connection: close" in received.lower() and not await stream.receive_some(1)
            return Answer(received, closed)


def post(host: str | None, body: bytes = EVENT, *extra: str, length: int | None = None) -> bytes:
    """A POST /events with ``host`` as its Host header (None: none, as HTTP/1.0)."""
    lines = ["POST /events HTTP/1.1" if host is not None else "POST /events HTTP/1.0"]
    lines += [f"Host: {host}"] if host is not None else []
    lines += ["Content-Type: application/json", f"Content-Length: {length or len(body)}", *extra]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + (body if length is None else b"")


async def start(nursery, tmp_path: Path, **relay_settings):
    """An in-process relay; its TCP address ``HOST:PORT`` and the relay."""
    config = make_config(tmp_path, [{"id": "crm", "url": "http://127.0.0.1:9/"}], **relay_settings)
    relay = relay_of(config)
    addresses = await nursery.start(relay.run)
    return next(a for a in addresses if not a.startswith("/")), relay


# -- refusing to start ---------------------------------------------------------------------------


NEEDS_A_TOKEN = (
    "relay.toml: relay.ingest_token: required when relay.listen ({listen}) is not a loopback"
    " address: anyone who can reach it could send events, which relay then signs; set"
    ' ingest_token = { env = "RELAY_INGEST_TOKEN" } (or a literal), or listen on 127.0.0.1 (the'
    " Unix socket needs no token)"
)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.7:8765", "relay.example:1"])
def test_tcp_ingest_off_loopback_without_a_token_does_not_start(tmp_path, listen):
    path = write_toml(tmp_path, f'listen = "{listen}"\nsocket = "relay.sock"')
    for command in ("run", "check"):
        done = relay_cli(command, "--config", str(path), timeout=20)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip() == NEEDS_A_TOKEN.replace("{listen}", listen), command
    assert not (tmp_path / "state").exists()  # refused before anything was opened


def test_loopback_needs_no_token_and_off_loopback_a_token_will_do(tmp_path, monkeypatch):
    for listen in ("127.0.0.1:0", "127.0.0.2:0", "[::1]:0", "localhost:0"):
        path = write_toml(tmp_path, f'listen = "{listen}"')
        assert config_module.load(path).relay.ingest_token is None
    monkeypatch.setenv("RELAY_TEST_INGEST_TOKEN", TOKEN)
    path = write_toml(
        tmp_path, 'listen = "0.0.0.0:0"\ningest_token = { env = "RELAY_TEST_INGEST_TOKEN" }'
    )
    config = config_module.load(path)
    assert config.relay.ingest_token == TOKEN and TOKEN not in repr(config)
    checked = relay_cli("check", "--config", str(path), timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert TOKEN not in checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('ingest_token = ""', "relay.toml: relay.ingest_token: must not be empty"),
        (
            'ingest_token = { env = "RELAY_TEST_UNSET_TOKEN" }',
            "relay.toml: relay.ingest_token: environment variable RELAY_TEST_UNSET_TOKEN is not"
            " set",
        ),
    ],
)
def test_a_token_that_cannot_be_had_is_an_error_and_only_that(tmp_path, line, error):
    path = write_toml(tmp_path, f'listen = "0.0.0.0:8765"\n{line}')
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.errors == [error]


# -- the token -----------------------------------------------------------------------------------


MISSING = "this relay's ingest listener needs Authorization: Bearer <[relay] ingest_token>"
WRONG = "the bearer token sent is not the relay's ([relay] ingest_token)"


async def test_every_request_over_tcp_needs_the_token_but_healthz(tmp_path, nursery):
    sock = tmp_path / "relay.sock"
    address, relay = await start(nursery, tmp_path, socket=str(sock), ingest_token=TOKEN)
    reports = json.dumps({"message_id": "m1", "webhook_id": "crm"})
    requests = [
        ("POST", "/events", EVENT.decode()),
        ("POST", "/reports", reports),
        ("POST", "/reload", ""),
        ("GET", "/nowhere", ""),
    ]
    wrong = ["", "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}"]
    for method, target, body in requests:
        for authorization in wrong:
            extra = [f"Authorization: {authorization}"] if authorization else []
            head = [f"{method} {target} HTTP/1.1", f"Host: {address}", *extra]
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            answer = await exchange(
                address, "\r\n".join(head).encode() + b"\r\n\r\n" + body.encode()
            )
            assert answer.status == 401, (target, authorization)
            assert answer.headers["www-authenticate"] == 'Bearer realm="relay ingest"'
            assert answer.json() == {"error": WRONG if authorization else MISSING}
            assert answer.closed
    assert journaled(tmp_path / "state") == 0

    async with httpx.AsyncClient(timeout=10) as client:
        # The liveness probe's path needs none.
        assert (await client.get(f"http://{address}/healthz")).status_code == 200
        headers = {"Authorization": f"bearer {TOKEN}"}  # the scheme in any case (RFC 6750)
        accepted = await client.post(f"http://{address}/events", content=EVENT, headers=headers)
        assert accepted.status_code == 415  # past the token: no content type
        headers["Content-Type"] = "application/json"
        accepted = await client.post(f"http://{address}/events", content=EVENT, headers=headers)
        assert accepted.status_code == 202
        reported = await client.post(f"http://{address}/reports", content=reports, headers=headers)
        assert reported.status_code == 202
    # The Unix socket needs none: its file mode lets in only its owner.
    assert (await exchange(sock, post("relay"))).status == 202
    assert journaled(tmp_path / "state") == 2


async def test_the_token_is_judged_on_the_head_before_the_body_comes(tmp_path, nursery):
    address, _ = await start(nursery, tmp_path, ingest_token=TOKEN, max_body=2_000_000)
    answer = await exchange(address, post(address, length=1_000_000))  # and no body follows
    assert answer.status == 401 and answer.closed


async def test_a_reload_changes_the_token(tmp_path, nursery):
    path = write_toml(tmp_path, f'listen = "127.0.0.1:0"\ningest_token = "{TOKEN}"')
    relay = relay_of(config_module.load(path))
    (address, *_) = await nursery.start(relay.run)
    auth = f"Authorization: Bearer {TOKEN}"
    assert (await exchange(address, post(address, EVENT, auth))).status == 202
    path.write_text(path.read_text().replace(TOKEN, "the-new-one"))
    ok, answer = await relay.try_reload()
    assert ok and answer["restart_needed"] == []
    assert (await exchange(address, post(address, EVENT, auth))).status == 401
    new = "Authorization: Bearer the-new-one"
    assert (await exchange(address, post(address, EVENT, new))).status == 202


# -- the Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "evil.example",
        "127.0.0.1.nip.io:{port}",  # a name that resolves to loopback is still a name
        "localhost.evil.example:{port}",
        "[::ffff:127.0.0.1]:{port}",  # another address than the one listened on
        "2130706433:{port}",  # no browser writes 127.0.0.1 so: a name to them
        "10.0.0.1:{port}",
        "",
    ],
)
async def test_a_host_that_does_not_name_the_listener_is_misdirected(tmp_path, nursery, host):
    address, relay = await start(nursery, tmp_path, max_body=2_000_000)
    host = host.format(port=address.rpartition(":")[2])
    # Content-Length announces a body that never comes: the answer is on the head alone.
    answer = await exchange(address, post(host, length=1_000_000))
    assert answer.status == 421
    error = answer.json()["error"]
    assert error == (
        f"misdirected request: Host {host!r} is not a name of this listener (127.0.0.1, [::1],"
        " localhost); other names are refused, against DNS rebinding: add the name to [relay]"
        " allow_hosts"
    )
    assert answer.closed
    assert journaled(tmp_path / "state") == 0


async def test_the_listener_s_own_names_are_served_and_no_other(tmp_path, nursery):
    address, relay = await start(nursery, tmp_path)
    port = int(address.rpartition(":")[2])
    hosts = [
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"LocalHost:{port}",
        f"[::1]:{port}",
        f"[0:0:0:0:0:0:0:1]:{port}",
        "127.0.0.1",
        f"localhost:{port + 1}",  # ssh -L, kubectl port-forward, docker -p change the port
        None,  # HTTP/1.0 without a Host: no browser sends that
    ]
    for host in hosts:
        answer = await exchange(address, post(host))
        assert answer.status == 202, (host, answer.body)
    assert (await exchange(address, post(f"relay.example:{port}"))).status == 421
    assert journaled(tmp_path / "state") == len(hosts)


async def test_the_unix_socket_takes_any_host(tmp_path, nursery):
    sock = tmp_path / "relay.sock"
    address, _ = await start(nursery, tmp_path, socket=str(sock))
    assert (await exchange(address, post("evil.example:80"))).status == 421
    assert (await exchange(sock, post("evil.example:80"))).status == 202


async def test_on_every_address_any_ip_literal_and_the_host_name_are_served(tmp_path, nursery):
    address, _ = await start(nursery, tmp_path, listen="0.0.0.0:0", ingest_token=TOKEN)
    port = address.rpartition(":")[2]
    address = f"127.0.0.1:{port}"
    auth = f"Authorization: Bearer {TOKEN}"
    for host in (f"10.1.2.3:{port}", "[2001:db8::1]", f"{socket.gethostname()}:{port}"):
        assert (await exchange(address, post(host, EVENT, auth))).status == 202, host
    assert (await exchange(address, post("evil.example", EVENT, auth))).status == 421
    assert (await exchange(address, post("[10.1.2.3]", EVENT, auth))).status == 421


async def test_allow_hosts_names_more(tmp_path, nursery):
    address, _ = await start(
        nursery, tmp_path, allow_hosts=["relay", "relay.internal", "[fd00::1]"]
    )
    for host in ("relay:8765", "RELAY.internal", "[fd00::1]:1"):
        assert (await exchange(address, post(host))).status == 202, host
    refused = await exchange(address, post("relay.internal.evil.example"))
    assert refused.status == 421
    assert (
        "(127.0.0.1, [::1], [fd00::1], localhost, relay, relay.internal)" in refused.body.decode()
    )


@pytest.mark.parametrize("name", ["relay:8765", "a b", "http://relay", "[zz]", "", "-relay"])
def test_allow_hosts_takes_only_names_a_host_header_has(tmp_path, name):
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, [], allow_hosts=[name])
    assert caught.value.errors == [
        f"relay.toml: relay.allow_hosts: {name!r} is not a host name as a Host header has it (a"
        " name or an IP address, without a port; IPv6 in brackets)"
    ]


async def test_the_admin_listener_checks_the_host_too(tmp_path, nursery):
    _, relay = await start(nursery, tmp_path, admin="127.0.0.1:0")
    admin = relay.admin_address
    get = "GET /api/status HTTP/1.1\r\nHost: {}\r\n\r\n"
    refused = await exchange(admin, get.format("evil.example:8766").encode())
    assert refused.status == 421 and "DNS rebinding" in refused.json()["error"]
    assert (await exchange(admin, get.format(admin).encode())).status == 200


# -- the commands send it ------------------------------------------------------------------------


async def test_the_commands_that_post_over_tcp_send_the_token(tmp_path, monkeypatch):
    """No socket and no admin listener: ``relay send`` and ``relay reload`` (whose fallback is
    the ingest listener's POST /reload) go over TCP, with relay.toml's token."""
    monkeypatch.setenv("RELAY_TEST_INGEST_TOKEN", TOKEN)
    port = free_port()
    path = write_toml(
        tmp_path,
        f'listen = "127.0.0.1:{port}"\ningest_token = {{ env = "RELAY_TEST_INGEST_TOKEN" }}',
    )
    events = tmp_path / "events.json"
    events.write_text(json.dumps(seed_events()))
    daemon = await Daemon(path).start()
    url = f"http://127.0.0.1:{port}"

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = relay_cli(*args, timeout=30)
        assert TOKEN not in done.stdout + done.stderr
        return done

    sent = await trio.to_thread.run_sync(cli, "send", str(events), "-c", str(path))
    assert sent.returncode == 0, sent.stderr
    assert len(sent.stdout.split()) == len(seed_events())
    sent = await trio.to_thread.run_sync(cli, "send", str(events), "--url", url, "-c", str(path))
    assert sent.returncode == 0, sent.stderr
    refused = await trio.to_thread.run_sync(cli, "send", str(events), "--url", url)
    assert refused.returncode == 1
    assert "HTTP 401: this relay's ingest listener needs Authorization" in refused.stderr
    assert "relay send sends the ingest_token of the relay.toml it reads" in refused.stderr
    assert "with --url alone $RELAY_INGEST_TOKEN" in refused.stderr
    monkeypatch.setenv("RELAY_INGEST_TOKEN", TOKEN)  # --url alone: the token from there
    sent = await trio.to_thread.run_sync(cli, "send", str(events), "--url", url)
    assert sent.returncode == 0, sent.stderr
    monkeypatch.delenv("RELAY_INGEST_TOKEN")
    reloaded = await trio.to_thread.run_sync(cli, "reload", "-c", str(path))
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout.startswith("reloaded: 1 webhook(s)")
    daemon.process.terminate()
    assert await daemon.wait() == 0
    assert journaled(tmp_path / "state") == 3 * len(seed_events())
    assert TOKEN not in daemon.log.read_text()
