"""A sentinel in every place relay.toml can hold a secret, and in none of what relay shows.

Every secret below contains SENTINEL, the listeners' tokens (``admin_token``, ``ingest_token``)
too. The real relay then lives a life: ``relay check``, ``webhooks list``, ``webhooks show``,
``plugins`` and ``webhooks render``; ``relay run`` at log level debug with deliveries that
succeed, fail with 500, time out and fail in plugins; requests refused for a missing or wrong
token; a reload refused for an invalid file (whose mistakes are themselves secrets), and one
that succeeds; ``relay send``, ``relay status``, ``relay deliveries``, ``GET /healthz``,
``/metrics``, ``/api/status``, ``/api/webhooks`` and ``/api/reload``. Every line it logs, every
output of every command (``relay deliveries show`` of each delivery too), every answer, the
journal's outcome texts and its records of each attempt's request and answer are searched for
SENTINEL as written, hex- and base64-encoded (its letters, digits and ``_`` are left as they
are by percent-encoding, so the first search covers that). The receivers check that each
secret was in use: absent from the logs, present on the wire (the listeners' tokens: accepted
where they are needed). The events' bodies are the user's data, not secrets, and hold none;
nor does a header's literal text in a valid file (``relay webhooks render`` prints it as it is
sent: a secret goes in [secrets]), but the invalid files type tokens into headers, which no
error may quote.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from urllib.parse import quote

import attrs
import httpx
import pytest
import trio

from plugins import oauth2_client_credentials as oauth2
from relay import config as config_module
from relay.config import ConfigError
from relay.http.server import HTTPRequest, HTTPServer
from tests.conftest import make_config, post_event, relay_of, seed_events
from tests.daemon import Daemon

SENTINEL = f"S3NTINEL_{secrets.token_hex(8)}"
PLUGINS = Path(__file__).resolve().parent.parent / "plugins"

ADMIN_TOKEN = f"{SENTINEL}_admin"
INGEST_TOKEN = f"{SENTINEL}_ingest"


def needles(secret: str) -> list[str]:
    """``secret`` as it could show: as written, percent-encoded, hex, and base64 (standard and
    URL-safe) at each of the three alignments it can have inside a longer encoded text."""
    raw = secret.encode()
    found = {secret, quote(secret, safe=""), raw.hex()}
    for skip in range(3):
        whole = raw[skip:][: (len(raw) - skip) // 3 * 3]  # the bytes that encode alike anywhere
        found.add(base64.b64encode(whole).decode())
        found.add(base64.urlsafe_b64encode(whole).decode())
    return sorted(found)


@attrs.define
class Endpoints:
    """The webhooks' receivers and the OAuth2 token endpoint, by path; records what came."""

    url: str = ""
    requests: list[HTTPRequest] = attrs.Factory(list)

    async def __call__(self, request: HTTPRequest):
        self.requests.append(request)
        if request.path == "/fail":
            return 500, {"error": "down"}
        if request.path == "/slow":
            await trio.sleep(30)
        if request.path == "/token":
            return 200, {"access_token": f"{SENTINEL}_access", "token_type": "Bearer"}
        if request.path == "/token-down":
            return 500, {"error": "temporarily_unavailable", "error_description": SENTINEL}
        return 200, {}

    def at(self, path: str) -> list[HTTPRequest]:
        return [r for r in self.requests if r.path == path]


def valid_config(base: str, admin_port: int) -> str:
    return f"""
[relay]
listen = "127.0.0.1:0"
socket = "relay.sock"
state_dir = "state"
log_level = "debug"
allow_networks = ["127.0.0.0/8"]
admin = "127.0.0.1:{admin_port}"
admin_token = "{ADMIN_TOKEN}"
ingest_token = {{ env = "RELAY_TEST_INGEST_TOKEN" }}

[secrets]
token = "{SENTINEL}_literal"
apikey = {{ env = "RELAY_TEST_APIKEY" }}

[defaults]
tries = 1
backoff = {{ first = 0.1, factor = 1.0 }}

[[webhooks]]
id = "ok"
url = "{base}/ok?key=%apikey%"
secret = "{SENTINEL}_signing"
[webhooks.headers]
Authorization = "Bearer %token%"
X-Api-Key = "%apikey%"
X-Source = "relay"

[[webhooks]]
id = "rotating"
url = "{base}/fail"
secret = ["{SENTINEL}_new", "{SENTINEL}_old"]
tries = 2

[[webhooks]]
id = "slow"
url = "{base}/slow"
secret = "{SENTINEL}_slow"
timeout = 0.3

[[webhooks]]
id = "oauth"
url = "{base}/ok"
secret = "{SENTINEL}_oauth_signing"
[webhooks.oauth2]
token_url = "{base}/token"
client_id = "relay"
client_secret = "{SENTINEL}_client"

[[webhooks]]
id = "oauth-down"
url = "{base}/ok"
signer = "none"
[webhooks.oauth2]
token_url = "{base}/token-down"
client_id = "relay"
client_secret_env = "RELAY_TEST_CLIENT_SECRET"

[[webhooks]]
id = "bearer"
url = "{base}/ok"
signer = "none"
[webhooks.bearer_auth]
env = "RELAY_TEST_BEARER"

[[webhooks]]
id = "standard"
url = "{base}/ok"
signer = "standard_webhooks"
secret = "whsec_{SENTINEL}_not_base64"
"""


def invalid_webhooks(base: str) -> list[tuple[str, list[str]]]:
    """Mistakes whose text is a secret, each with the places its errors name: credentials in
    URLs, tokens typed into headers. The plugin's table is checked once the rest is valid, so
    it comes in a file of its own."""
    typed_in = f"""
[[webhooks]]
id = "userinfo"
url = "https://relay:{SENTINEL}_userinfo@example.com/hook"

[[webhooks]]
id = "typed-in"
url = "{base}/ok"
[webhooks.headers]
Authorization = "Bearer {SENTINEL}_h1 @{{{{payload.id"
X-Token = "a%{SENTINEL}_h2%b"
X-Bad = "@{{{{{SENTINEL}_h3 x}}}}"
"""
    token_url = f"""
[[webhooks]]
id = "token-url"
url = "{base}/ok"
[webhooks.oauth2]
token_url = "https://relay:{SENTINEL}_token_url@auth.example.com/token"
client_id = "relay"
client_secret = "{SENTINEL}_client"
"""
    return [
        (
            typed_in,
            [
                "webhooks[7].url: credentials in the URL",
                "webhooks[8].headers.Authorization: unclosed",
                "webhooks[8].headers.X-Token: unknown secret",
                "webhooks[8].headers.X-Bad: bad placeholder",
            ],
        ),
        (token_url, ["webhooks[7].oauth2.token_url: credentials in the URL"]),
    ]


async def test_no_secret_in_anything_relay_shows(tmp_path, nursery, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_APIKEY", f"{SENTINEL}_env")
    monkeypatch.setenv("RELAY_TEST_CLIENT_SECRET", f"{SENTINEL}_client_env")
    monkeypatch.setenv("RELAY_TEST_BEARER", f"{SENTINEL}_bearer")
    monkeypatch.setenv("RELAY_TEST_INGEST_TOKEN", INGEST_TOKEN)
    endpoints = Endpoints()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(HTTPServer(endpoints, max_body=1 << 20).serve, listeners)
    host, port = listeners[0].socket.getsockname()[:2]
    base = f"http://{host}:{port}"
    (tmp_path / "plugins").mkdir()
    for name in ("oauth2_client_credentials", "bearer_auth", "standard_webhooks"):
        (tmp_path / "plugins" / f"{name}.py").write_text((PLUGINS / f"{name}.py").read_text())
    config = tmp_path / "relay.toml"
    with socket.socket() as probe:  # `relay reload` and `relay status` read the port from the file
        probe.bind(("127.0.0.1", 0))
        admin_port = probe.getsockname()[1]
    config.write_text(valid_config(base, admin_port))
    shown: list[tuple[str, str]] = []  # (what, text)

    async def relay(*args: str, status: int = 0) -> str:
        done = await trio.run_process(
            [sys.executable, "-m", "relay", *args, "--config", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        text = (done.stdout + done.stderr).decode()
        shown.append((f"relay {' '.join(args)}", text))
        assert done.returncode == status, text
        return text

    # What a person runs before starting it.
    assert "ok, 7 webhook(s)" in await relay("check")
    await relay("webhooks", "list")
    await relay("webhooks", "show", "ok")
    await relay("plugins")
    assert "***" in await relay("webhooks", "render", "ok")
    for webhook in ("rotating", "oauth", "bearer"):
        await relay("webhooks", "render", webhook)
    await relay("webhooks", "render", "standard", status=1)
    await relay("webhooks", "render", "oauth-down", status=1)

    # Its life, at log level debug: every webhook takes the event.
    daemon = await Daemon(config, ("--log", "json")).start()
    ingest = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    admin = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{admin_port}",
        timeout=10,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client, admin:
        event = seed_events()[0]
        assert (await client.post("/events", json=event, headers=ingest)).status_code == 202
        await wait_until_finished(tmp_path / "state", 7)
        # Refused for want of the token, or a wrong one (which holds a secret too).
        for where, token in ((client, INGEST_TOKEN), (admin, ADMIN_TOKEN)):
            for headers in ({"Authorization": ""}, {"Authorization": f"Bearer {token}x"}):
                refused = await where.post("/api/reload", json=event, headers=headers)
                assert refused.status_code == 401
                shown.append(("a 401", f"{refused.headers}\n{refused.text}"))
        for path in ("/metrics", "/api/status", "/api/webhooks"):
            answer = await admin.get(path)
            assert answer.status_code == 200
            shown.append((f"GET {path}", answer.text))
        await relay("status")
        events = tmp_path / "events.json"
        events.write_text(json.dumps([{**e, "webhook_id": "bearer"} for e in seed_events()]))
        await relay("send", str(events), "--url", daemon.url)  # over TCP, with the token

        # Reloads refused: invalid files, and the mistakes in them are secrets.
        valid = config.read_text()
        for mistakes, errors in invalid_webhooks(base):
            config.write_text(valid + mistakes)
            refused = await relay("reload", status=1)
            for error in errors:
                assert error in refused
            checked = await relay("check", status=2)
            for error in errors:
                assert error in checked
            await relay("webhooks", "list", status=2)
            await relay("run", status=2)
        # A reload that succeeds: "slow" leaves the configuration (its lane stops, logged).
        config.write_text(valid.replace('id = "slow"', 'id = "slow-renamed"'))
        assert "added: slow-renamed; removed: slow" in await relay("reload")
        shown.append(("GET /healthz", (await client.get("/healthz")).text))
        reloaded = await admin.post("/api/reload")
        assert reloaded.status_code == 200
        shown.append(("POST /api/reload", reloaded.text))
    await relay("deliveries", "--state", "all")
    daemon.process.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    log = daemon.log.read_text()
    shown.append(("relay run's log", log))
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as journal:
        outcomes = journal.execute(
            "SELECT last_outcome FROM deliveries UNION ALL SELECT error FROM attempts"
        ).fetchall()
        records = journal.execute("SELECT request, response FROM attempts").fetchall()
        delivery_ids = dict(journal.execute("SELECT webhook_id, id FROM deliveries"))
    shown.append(("the journal's outcomes", "\n".join(str(o) for (o,) in outcomes)))
    # Each attempt's request and answer as the journal keeps them, and as `show` prints them.
    assert sum(request is not None for request, _ in records) >= 6  # all but "standard"'s
    texts = [bytes(r).decode("utf-8", "replace") for pair in records for r in pair if r]
    shown.append(("the journal's attempts", "\n".join(texts)))
    for delivery_id in delivery_ids.values():
        await relay("deliveries", "show", delivery_id)
        await relay("deliveries", "show", delivery_id, "--json")
    assert "> Authorization: ***" in await relay("deliveries", "show", delivery_ids["ok"])

    # Adding a webhook by hand, with a password in its URL and a header written wrongly.
    config.write_text(valid)
    await relay(
        "webhooks",
        "add",
        "--url",
        f"https://relay:{SENTINEL}_add@example.com/",
        "--header",
        f"Authorization=Bearer {SENTINEL}_add_header @{{{{x",
        status=2,
    )
    await relay("webhooks", "add", "--url", base, "--header", f"X-Key: {SENTINEL}", status=2)

    # The life happened: every delivery's outcome is in the log, each kind of failure among them.
    entries = [json.loads(line) for line in log.splitlines()]
    outcome_lines = {e["webhook"]: e["message"] for e in entries if "attempt" in e}
    assert set(outcome_lines) == {
        "ok",
        "rotating",
        "slow",
        "oauth",
        "oauth-down",
        "bearer",
        "standard",
    }
    assert "delivered (HTTP 200)" in outcome_lines["ok"]
    assert "failed (HTTP 500)" in outcome_lines["rotating"]
    assert "no response within 0.3 s" in outcome_lines["slow"]
    assert (
        "oauth2_client_credentials.py (prepare_request): TokenError" in outcome_lines["oauth-down"]
    )
    assert "standard_webhooks" in outcome_lines["standard"]
    assert any("reload rejected" in e["message"] for e in entries)
    assert any("slow left the configuration" in e["message"] for e in entries)

    # Each secret was in use: on the wire, where it belongs.
    (ok,) = [r for r in endpoints.at("/ok") if r.query]
    assert ok.query == f"key={SENTINEL}_env"
    assert ok.headers["authorization"] == f"Bearer {SENTINEL}_literal"
    assert ok.headers["x-api-key"] == f"{SENTINEL}_env"
    authorizations = {r.headers.get("authorization") for r in endpoints.at("/ok")}
    assert {f"Bearer {SENTINEL}_access", f"Bearer {SENTINEL}_bearer"} <= authorizations
    basic = {r.headers["authorization"] for r in endpoints.at("/token")}
    assert f"Basic {base64.b64encode(f'relay:{SENTINEL}_client'.encode()).decode()}" in basic
    (down,) = {r.headers["authorization"] for r in endpoints.at("/token-down")}
    assert base64.b64decode(down.removeprefix("Basic ")).decode().endswith("_client_env")
    assert len(endpoints.at("/fail")) == 2 and endpoints.at("/slow")

    # And nowhere else.
    for what, text in shown:
        for needle in needles(SENTINEL):
            assert needle not in text, f"{what} shows a secret ({needle}):\n{text}"


async def wait_until_finished(state_dir: Path, count: int) -> None:
    sql = "SELECT count(*) FROM deliveries WHERE state != 'pending'"
    with trio.fail_after(20):
        while True:
            with sqlite3.connect(state_dir / "journal.sqlite3") as journal:
                if journal.execute(sql).fetchone() == (count,):
                    return
            await trio.sleep(0.05)


def test_the_needles_find_an_encoded_secret():
    """Each encoding of SENTINEL inside a longer text is found by one of the needles."""
    texts = [f"Bearer {SENTINEL}", f"user:{SENTINEL}", f"{SENTINEL}!", f"xy{SENTINEL}"]
    for text in texts:
        raw = text.encode()
        encoded = [
            quote(text, safe=""),
            raw.hex(),
            base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode(),
        ]
        for form in encoded:
            assert any(n in form for n in needles(SENTINEL)), form


# -- credentials in URLs, and what to do instead ------------------------------------------------


def test_credentials_in_a_url_are_refused_with_the_way_to_send_them(tmp_path):
    with pytest.raises(ConfigError) as e:
        make_config(tmp_path, [{"id": "crm", "url": "https://relay:pw@example.com/hook"}])
    assert e.value.errors == [
        "relay.toml: webhooks[0].url: credentials in the URL (user:password@) are not sent; use "
        'headers = { Authorization = "Basic %creds%" } with creds (base64 of user:password) in '
        "[secrets]"
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://relay:pw/hook", "not a valid URL (the port must be a number from 0 to 65535)"),
        ("https://[relay:pw/hook", "not a valid URL (an unclosed [ in the host)"),
        ("https://relay\uff0fpw@example.com/", "not a valid URL (a host it cannot use)"),
    ],
)
def test_a_url_error_never_quotes_the_authority(tmp_path, url, message):
    with pytest.raises(ConfigError) as e:
        make_config(tmp_path, [{"id": "crm", "url": url}])
    assert e.value.errors == [f"relay.toml: webhooks[0].url: {message}"]


async def test_basic_auth_from_secrets_is_sent_as_the_error_says(tmp_path, nursery, receiver):
    """The advice works: a plain webhook with the header still sends the event as it came."""
    creds = base64.b64encode(b"relay:pw").decode()
    config = config_module.parse(
        {
            "relay": {
                "state_dir": str(tmp_path / "state"),
                "delivery": "inline",
                "allow_networks": ["127.0.0.0/8"],
            },
            "secrets": {"creds": creds},
            "webhooks": [
                {
                    "id": "crm",
                    "url": receiver.url,
                    "headers": {"Authorization": "Basic %creds%"},
                    "secret": "k",
                }
            ],
        },
        tmp_path / "relay.toml",
    )
    relay = relay_of(config)
    await nursery.start(relay.run)
    event = seed_events()[0]
    await post_event(relay, event)
    (request,) = await receiver.wait_for(1)
    assert request.headers["authorization"] == f"Basic {creds}"
    assert json.loads(request.body) == event


def test_an_oauth2_token_url_with_credentials_is_refused():
    with pytest.raises(ValueError, match="credentials in the URL"):
        oauth2.OAuth2(
            token_url="https://relay:pw@auth.example.com/token",
            client_id="relay",
            client_secret="x",
        )
