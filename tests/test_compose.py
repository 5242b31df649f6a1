"""Compose webhooks end to end: relay.toml keys, a real relay, a real receiver on loopback."""

import hashlib
import hmac
import json
import re
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h11
import hypothesis
import pytest
import trio
from hypothesis import strategies as st

from relay import config as config_module
from relay.cli import main
from relay.model import Delivery, Event, PermanentFailure
from relay.plugins.builtin import compose
from tests.conftest import Arrived, Receiver, RunningRelay, relay_of, seed_events, start_receiver
from tests.test_templates import SEED_ID, SEED_STATUS, parse_multipart

STATUS = seed_events()[0]


RawReceiver = Receiver  # conftest's, for the tests that import it from here; with Arrived
__all__ = ["Arrived", "RawReceiver"]


@pytest.fixture
async def raw_receiver(nursery) -> Receiver:
    """conftest's receiver (h11, not relay's server): it keeps targets and headers as sent."""
    return await start_receiver(nursery)


@pytest.fixture
def start_composed(tmp_path, nursery):
    """conftest's start_relay, with a [secrets] table."""

    async def start(webhooks: list[dict], secrets: dict | None = None) -> RunningRelay:
        data = {
            "relay": {
                "listen": "127.0.0.1:0",
                "state_dir": str(tmp_path / "state"),
                "delivery": "inline",  # as conftest's start_relay
                "allow_networks": ["127.0.0.0/8"],  # the receivers listen on loopback
            },
            "webhooks": webhooks,
            "secrets": secrets or {},
        }
        config = config_module.parse(data, (tmp_path / "relay.toml").absolute())
        relay = relay_of(config)
        addresses = await nursery.start(relay.run)
        tcp = next(a for a in addresses if not a.startswith("/"))
        return RunningRelay(relay=relay, url=f"http://{tcp}", socket=None)

    return start


def journal(running: RunningRelay, sql: str) -> list[tuple]:
    with sqlite3.connect(running.journal_path) as conn:
        return conn.execute(sql).fetchall()


async def settled(running: RunningRelay, count: int) -> list[tuple]:
    """Wait until ``count`` deliveries are no longer pending; their (webhook, state, attempts)."""
    sql = "SELECT webhook_id, state, attempts FROM deliveries WHERE state != 'pending'"
    with trio.fail_after(10):
        while len(rows := journal(running, sql)) < count:
            await trio.sleep(0.02)
    return sorted(rows)


async def test_seed_url_examples_arrive_byte_for_byte(start_composed, raw_receiver):
    origin = raw_receiver.origin
    running = await start_composed(
        [
            {
                "id": "first",
                "url": f"{origin}/ack/receive?id=@{{{{id}}}}&mobile=@{{{{payload.mobile}}}}"
                "&status=@{{payload.status}}",
            },
            {
                "id": "second",
                "url": f"{origin}/ack/receive?message_id=@{{{{payload.id}}}}"
                "&mobile_number=@{{payload.mobile}}&message_status=@{{payload.status}}",
            },
        ]
    )
    assert (await running.post(STATUS)).status_code == 202
    requests = await raw_receiver.wait_for(2)
    assert sorted(r.target for r in requests) == [
        f"/ack/receive?id={SEED_ID}&mobile=9190199xxxxx&status={SEED_STATUS}",
        f"/ack/receive?message_id={SEED_ID}&mobile_number=9190199xxxxx"
        f"&message_status={SEED_STATUS}",
    ]
    # Only the URL is composed: the body is the event, as for plain webhooks.
    assert all(json.loads(r.body) == STATUS for r in requests)


async def test_seed_curl_example_with_token_from_environment(
    start_composed, raw_receiver, monkeypatch
):
    monkeypatch.setenv("ACK_TOKEN", "env-t0ken")
    running = await start_composed(
        [
            {
                "id": "ack",
                "events": ["whatsapp:message:status"],
                "method": "POST",
                "url": f"{raw_receiver.origin}/ack/receive?id=@{{{{payload.id}}}}",
                "headers": {"content-type": "application/json", "Authorization": "Bearer %token%"},
                "body": {
                    "id": "@{{payload.id}}",
                    "mobile": "@{{payload.mobile}}",
                    "message_status": "@{{payload.status}}",
                    "read_at": "@{{payload.read_at}}",
                },
            }
        ],
        secrets={"token": {"env": "ACK_TOKEN"}},
    )
    await running.post(STATUS)
    (request,) = await raw_receiver.wait_for(1)
    assert (request.method, request.target) == ("POST", f"/ack/receive?id={SEED_ID}")
    assert request.header("content-type") == "application/json"
    assert request.header("Authorization") == "Bearer env-t0ken"
    assert request.body == (
        b'{"id":"a418d672-9781-4d97-b517-a56f7d95ad8a","mobile":"9190199xxxxx",'
        b'"message_status":"sent|delivered|read|failed|deleted",'
        b'"read_at":"2021-06-18T14:48:06.886358Z"}'
    )
    signature = hmac.new(b"ack", request.body, hashlib.sha256).hexdigest()
    assert request.header("Signature") == signature  # the exact bytes sent are signed
    assert "env-t0ken" not in repr(running.relay.config)


async def test_form_and_multipart_bodies_parse_back_at_the_receiver(start_composed, raw_receiver):
    body = {"id": "@{{payload.id}}", "who": "@{{payload.recipient.user.first_name}}", "n": 1}
    running = await start_composed(
        [
            {"id": f, "url": f"{raw_receiver.origin}/{f}", "body": body, "body_format": f}
            for f in ("form", "multipart")
        ]
    )
    incoming = seed_events()[1]
    incoming["payload"]["recipient"]["user"]["first_name"] = "José & Ann=1\r\n--x"
    await running.post(incoming)
    requests = {r.target: r for r in await raw_receiver.wait_for(2)}
    form = requests["/form"]
    assert form.header("Content-Type") == "application/x-www-form-urlencoded"
    assert parse_qs(form.body.decode("ascii"), strict_parsing=True) == {
        "id": ["our-message-id"],
        "who": ["José & Ann=1\r\n--x"],
        "n": ["1"],
    }
    multipart = requests["/multipart"]
    assert parse_multipart(multipart.header("Content-Type"), multipart.body) == [
        ("id", b"our-message-id"),
        ("who", "José & Ann=1\r\n--x".encode()),
        ("n", b"1"),
    ]


async def test_percent_encoding_arrives_and_crlf_in_a_header_is_never_sent(
    start_composed, raw_receiver
):
    running = await start_composed(
        [
            {
                "id": "crm",
                "method": "GET",
                "url": f"{raw_receiver.origin}/users/@{{{{payload.name}}}}?name=@{{{{name}}}}",
                "headers": {"X-Name": "@{{payload.name}}"},
            }
        ]
    )
    await running.post({"event": "e", "payload": {"name": "a&b=c#d/.."}})
    (request,) = await raw_receiver.wait_for(1)
    parts = urlsplit(request.target)
    assert parts.path == "/users/a%26b%3Dc%23d%2F.."
    assert parse_qs(parts.query) == {"name": ["a&b=c#d/.."]}
    assert request.header("X-Name") == "a&b=c#d/.."

    await running.post({"event": "e", "payload": {"name": "x\r\nX-Injected: 1"}})
    assert await settled(running, 2) == [("crm", "delivered", 1), ("crm", "failed", 1)]
    (error,) = journal(running, "SELECT error FROM attempts WHERE status IS NULL")
    assert "contains CR, LF or NUL" in error[0]
    assert len(raw_receiver.requests) == 1


async def test_on_missing_fail_is_a_permanent_failure(start_composed, raw_receiver):
    running = await start_composed(
        [
            {
                "id": "strict",
                "url": f"{raw_receiver.origin}/?s=@{{{{submit_time}}}}",
                "on_missing": "fail",
            }
        ]
    )
    await running.post(STATUS)
    assert await settled(running, 1) == [("strict", "failed", 1)]
    assert raw_receiver.requests == []


async def test_event_with_webhook_id_reaches_that_composed_webhook_only(
    start_composed, raw_receiver, receiver
):
    running = await start_composed(
        [
            {"id": "everything", "url": receiver.url, "events": ["*"]},
            {
                "id": "ack",
                "events": [],
                "method": "PUT",
                "url": f"{raw_receiver.origin}/ack/@{{{{webhook_id}}}}",
                "body": {"status": "@{{payload.status}}"},
            },
        ]
    )
    assert (await running.post({**STATUS, "webhook_id": "ack"})).status_code == 202
    (request,) = await raw_receiver.wait_for(1)
    assert (request.method, request.target) == ("PUT", "/ack/ack")
    assert json.loads(request.body) == {"status": "sent|delivered|read|failed|deleted"}
    assert journal(running, "SELECT webhook_id FROM deliveries") == [("ack",)]
    rejected = await running.post({**STATUS, "webhook_id": "nope"})
    assert rejected.status_code == 422


def parse_config(webhook: dict, secrets: dict | None = None) -> config_module.Config:
    data = {"webhooks": [{"id": "w", **webhook}], "secrets": secrets or {}}
    return config_module.parse(data, Path("/etc/relay/relay.toml"))


def config_errors(webhook: dict, secrets: dict | None = None) -> list[str]:
    with pytest.raises(config_module.ConfigError) as info:
        parse_config(webhook, secrets)
    return info.value.errors


def test_config_errors_name_their_place_and_never_a_secret_value(monkeypatch):
    monkeypatch.delenv("ACK_TOKEN", raising=False)
    url = "https://example.com/"
    assert config_errors({"url": url, "body": {"mobile": "@{{payload.mobile"}}) == [
        "relay.toml: webhooks[0].body.mobile: unclosed '@{{payload.mobile': missing }}"
    ]
    assert config_errors({"url": url, "method": "GET", "body": {"a": "b"}}) == [
        "relay.toml: webhooks[0].body: GET requests carry no body; remove it or use POST"
    ]
    assert config_errors({"url": url, "method": "FETCH"}) == [
        "relay.toml: webhooks[0].method: must be one of GET, POST, PUT, PATCH, DELETE, got 'FETCH'"
    ]
    assert config_errors({"url": url, "body_format": "xml"}) == [
        "relay.toml: webhooks[0].body_format: must be one of json, form, multipart, got 'xml'"
    ]
    assert config_errors({"url": "https://@{{payload.host}}/"}) == [
        "relay.toml: webhooks[0].url: placeholders may not appear in the scheme, host or port"
    ]
    errors = config_errors(
        {"url": url, "headers": {"Authorization": "Bearer %token%"}},
        secrets={"token": {"env": "ACK_TOKEN"}, "other": "hunter2\n"},
    )
    assert errors == ["relay.toml: secrets.token: environment variable ACK_TOKEN is not set"]
    errors = config_errors(
        {"url": url, "headers": {"Authorization": "Bearer %other%"}}, {"other": "hunter2\n"}
    )
    assert errors == [
        "relay.toml: webhooks[0].headers.Authorization: secret %other% has CR, LF, NUL, "
        "control or non-ASCII text"
    ]
    assert config_errors({"url": url, "template": {"x": 1}}) == [
        "relay.toml: webhooks[0]: unknown keys: template"
    ]


def test_headers_and_body_are_fields_not_plugin_option_tables():
    config = parse_config({"url": "https://example.com/", "headers": {"A": "1"}, "body": {}})
    (webhook,) = config.webhooks
    assert (webhook.headers, webhook.body, webhook.options) == ({"A": "1"}, {}, {})
    assert webhook.template is not None
    assert parse_config({"url": "https://example.com/"}).webhooks[0].template is None


def delivery(payload_value) -> Delivery:
    body = json.dumps({"event": "e", "payload": {"v": payload_value}}).encode()
    event = Event(id="e1", name="e", body=body, received_at=0.0)
    return Delivery(id="d1", webhook_id="w", event=event)


HEADER_WEBHOOK = parse_config(
    {"url": "https://example.com/", "headers": {"X-Value": "pre @{{v}} post"}}
).webhooks[0]
QUERY_WEBHOOK = parse_config({"url": "https://example.com/p/@{{v}}?a=@{{payload.v}}&b=x"}).webhooks[
    0
]
SENDABLE = re.compile(r"[\t\x20-\x7e]*")


@hypothesis.given(st.text())
def test_any_payload_text_renders_a_header_h11_accepts_or_fails_permanently(text):
    try:
        request = compose.render_request(webhook=HEADER_WEBHOOK, delivery=delivery(text))
    except PermanentFailure:
        assert not SENDABLE.fullmatch(text)  # refused only what a header cannot carry
        return
    h11.Request(method="POST", target="/", headers=[("Host", "x"), *request.headers])
    assert request.header("X-Value") == f"pre {text} post".strip(" \t")


@hypothesis.given(st.text(), st.text(alphabet=st.characters(codec="ascii")))
def test_any_payload_text_round_trips_through_the_query(text, ascii_text):
    for value in (text, ascii_text):
        request = compose.render_request(webhook=QUERY_WEBHOOK, delivery=delivery(value))
        parts = urlsplit(request.url)
        assert parts.netloc == "example.com"
        assert parse_qs(parts.query, keep_blank_values=True) == {"a": [value], "b": ["x"]}
        h11.Request(method="GET", target=f"{parts.path}?{parts.query}", headers=[("Host", "x")])


COMMENTED_TOML = """\
# Production relay. Keep this comment.

[relay]
listen = "127.0.0.1:8765"   # ingest
state_dir = "var"

[[webhooks]]
id = "crm"                  # the CRM
url = "https://crm.example.com/hooks"
events = ["whatsapp:message:*"]

[secrets]
token = "literal-token"     # a literal, for this test
"""


def test_webhooks_add_keeps_comments_and_check_accepts_the_result(tmp_path, capsys):
    path = tmp_path / "relay.toml"
    path.write_text(COMMENTED_TOML)
    status = main(
        [
            "webhooks",
            "add",
            "--config",
            str(path),
            "--url",
            "https://www.domain.com/ack/receive?id=@{{payload.id}}",
            "--method",
            "post",
            "--header",
            "Authorization=Bearer %token%",
            "--body-field",
            "id=@{{payload.id}}",
            "--body-field",
            "mobile=@{{payload.mobile}}",
            "--events",
            "whatsapp:message:status",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0
    new_id = out.strip()
    assert new_id.startswith("wh_")
    assert "picks it up on reload" in err
    text = path.read_text()
    for line in COMMENTED_TOML.splitlines():
        assert line in text
    (old, new) = config_module.load(path).webhooks
    assert old.id == "crm" and new.id == new_id
    assert (new.method, new.events, new.body) == (
        "POST",
        ("whatsapp:message:status",),
        {"id": "@{{payload.id}}", "mobile": "@{{payload.mobile}}"},
    )
    assert main(["check", "--config", str(path)]) == 0
    assert main(["webhooks", "list", "--config", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert f"{new_id}  compose  POST https://www.domain.com/ack/receive" in out


def test_webhooks_add_refuses_an_invalid_webhook_and_leaves_the_file(tmp_path, capsys):
    path = tmp_path / "relay.toml"
    path.write_text(COMMENTED_TOML)
    add = ["webhooks", "add", "-c", str(path), "--url", "https://x.example/"]
    assert main([*add, "--id", "crm"]) == 2
    assert main([*add, "--method", "GET", "--body-field", "a=b"]) == 2
    _, err = capsys.readouterr()
    assert "relay.toml: webhooks[1].id: duplicate id 'crm' (first used by webhooks[0])" in err
    assert "relay.toml: webhooks[1].body: GET requests carry no body" in err
    assert path.read_text() == COMMENTED_TOML
