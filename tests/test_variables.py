"""Replaced variables by meaning, end to end: a real relay, a real receiver, the real command line.

The reference's table says ``from`` is the business number and ``to`` the customer's; the two
event types keep them in different places, and these tests check that each arrives right.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from relay import config as config_module
from relay.cli import main
from relay.plugins import Components, PluginError, hookimpl, make_plugin_manager
from tests import test_compose
from tests.conftest import RunningRelay, relay_of, seed_events
from tests.plugins import test_oauth2_client_credentials
from tests.test_compose import journal, settled

raw_receiver = test_compose.raw_receiver  # fixtures: an h11 receiver, an OAuth token endpoint
token_endpoint = test_oauth2_client_credentials.token_endpoint

ROOT = Path(__file__).resolve().parent.parent
STATUS, INCOMING, MEDIA = seed_events()
BUSINESS, CUSTOMER, STATUS_CUSTOMER = "919019120xxx", "91XXXXXX", "9190199xxxxx"


@pytest.fixture
def start(tmp_path, nursery):
    """A relay on these webhooks, with these plugins registered in code."""

    async def start(webhooks: list[dict], plugins=(), secrets=None) -> RunningRelay:
        data = {
            "relay": {
                "listen": "127.0.0.1:0",
                "state_dir": str(tmp_path / "state"),
                "allow_networks": ["127.0.0.0/8"],  # the receivers listen on loopback
            },
            "webhooks": webhooks,
            "secrets": secrets or {},
        }
        data["relay"]["delivery"] = "inline"  # so plugins registered in code take part
        config = config_module.parse(data, (tmp_path / "relay.toml").absolute())
        relay = relay_of(config, plugins)
        addresses = await nursery.start(relay.run)
        tcp = next(a for a in addresses if not a.startswith("/"))
        return RunningRelay(relay=relay, url=f"http://{tcp}", socket=None)

    return start


BY_MEANING = {
    "id": "@{{id}}",
    "from": "@{{from}}",
    "to": "@{{to}}",
    "mobile": "@{{mobile}}",
    "rooted_mobile": "@{{payload.mobile}}",
    "type": "@{{payload.message.type}}",
}


async def test_status_text_and_media_events_fill_from_to_and_mobile_by_meaning(start, raw_receiver):
    running = await start(
        [
            {
                "id": "ack",
                "events": ["whatsapp:message:*"],
                "url": f"{raw_receiver.origin}/ack?from=@{{{{from}}}}&to=@{{{{to}}}}",
                "body": BY_MEANING,
            }
        ]
    )
    assert (await running.post([STATUS, INCOMING, MEDIA])).status_code == 202
    arrived = {json.loads(r.body)["type"]: r for r in await raw_receiver.wait_for(3)}
    for kind, (business, customer, message_id) in {
        "": (BUSINESS, STATUS_CUSTOMER, STATUS["payload"]["id"]),
        "text": (BUSINESS, CUSTOMER, "our-message-id"),
        "image": (BUSINESS, CUSTOMER, "our-message-id"),
    }.items():
        request = arrived[kind]
        assert json.loads(request.body) == {
            "id": message_id,
            "from": business,
            "to": customer,
            "mobile": customer,
            "rooted_mobile": customer,
            "type": kind,
        }
        assert parse_qs(urlsplit(request.target).query) == {"from": [business], "to": [customer]}


class SmsVariables:
    """A plugin for an event type the reference does not have."""

    @hookimpl
    def register_variables(self, register):
        register(
            "sms:message:dlr",
            {
                "id": "payload.ref",
                "from": "payload.sender",
                "to": ["payload.msisdn", "payload.number"],  # the first with a value wins
                "network": "payload.operator.name",
            },
        )


async def test_a_plugin_declares_variables_for_a_new_event_type(start, raw_receiver):
    running = await start(
        [
            {
                "id": "sms",
                "url": f"{raw_receiver.origin}/sms",
                "body": {
                    "id": "@{{id}}",
                    "from": "@{{from}}",
                    "to": "@{{to}}",
                    "network": "@{{network}}",
                    "mobile": "@{{mobile}}",  # the plugin declares none: no value
                },
            }
        ],
        plugins=[SmsVariables()],
    )
    event = {
        "event": "sms:message:dlr",
        "payload": {"ref": "r-1", "sender": "ACME", "number": "4479", "operator": {"name": "O2"}},
    }
    await running.post(event)
    (request,) = await raw_receiver.wait_for(1)
    assert json.loads(request.body) == {
        "id": "r-1",
        "from": "ACME",
        "to": "4479",
        "network": "O2",
        "mobile": "",
    }


class Duplicate:
    @hookimpl
    def register_variables(self, register):
        register("whatsapp:message:in", {"from": "payload.recipient.from"})


class Pattern:
    @hookimpl
    def register_variables(self, register):
        register("whatsapp:*", {"x": "payload.x"})


class BadPath:
    @hookimpl
    def register_variables(self, register):
        register("sms:in", {"x": "payload..x"})


@pytest.mark.parametrize(
    "plugin, message",
    [
        (Duplicate(), "variable 'from' is already declared by relay.plugins.builtin.variables"),
        (Pattern(), "'whatsapp:*': an event type is an exact name, not a pattern"),
        (BadPath(), "sms:in: variable 'x': 'payload..x' is not a path"),
    ],
    ids=["duplicate", "pattern", "bad-path"],
)
def test_a_declaration_relay_cannot_use_stops_it_naming_the_plugin(plugin, message):
    pm = make_plugin_manager(entry_points=False)
    pm.register(plugin, name="mine")
    with pytest.raises(PluginError, match="^mine registers variables: ") as caught:
        Components.collect(pm)
    assert message in str(caught.value)


async def test_on_missing_fail_with_a_declared_variable_absent_fails_for_good(start, raw_receiver):
    running = await start(
        [
            {
                "id": "strict",
                "events": ["whatsapp:message:*"],
                "url": f"{raw_receiver.origin}/strict",
                "body": {"read_at": "@{{read_at}}"},
                "on_missing": "fail",
            }
        ]
    )
    await running.post(INCOMING)  # an incoming message has no read_at
    assert await settled(running, 1) == [("strict", "failed", 1)]
    (error,) = journal(running, "SELECT error FROM attempts")
    assert error == ('@{{read_at}} has no value in this event (on_missing = "fail")',)
    assert raw_receiver.requests == []
    await running.post(STATUS)
    (request,) = await raw_receiver.wait_for(1)
    assert json.loads(request.body) == {"read_at": STATUS["payload"]["read_at"]}


SMS_PLUGIN = """
from relay.plugins import hookimpl

@hookimpl
def register_variables(register):
    register("sms:message:dlr", {"to": "payload.msisdn"})
"""


def test_check_warns_of_variables_an_event_type_it_receives_cannot_fill(tmp_path, capsys):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "sms.py").write_text(SMS_PLUGIN)
    path = tmp_path / "relay.toml"
    path.write_text(
        """
[[webhooks]]
id = "status-only"
events = ["whatsapp:message:status"]
url = "https://example.com/?read=@{{read_at}}"

[[webhooks]]
id = "all-whatsapp"
events = ["whatsapp:message:*"]
url = "https://example.com/?read=@{{payload.read_at}}&to=@{{to}}&name=@{{payload.name}}"
on_missing = "fail"

[[webhooks]]
id = "everything"
url = "https://example.com/"
body = { from = "@{{from}}", to = "@{{to}}", status = "@{{status}}" }

[[webhooks]]
id = "plain"
url = "https://example.com/"
"""
    )
    assert main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "relay.toml: ok, 4 webhook(s)" in out
    assert [line for line in err.splitlines() if "has no value" in line] == [
        "warning: relay.toml: webhooks[1] (id all-whatsapp): @{{payload.read_at}} has no value on "
        "whatsapp:message:in events (that event type has no read_at): their deliveries fail "
        '(on_missing = "fail")',
        "warning: relay.toml: webhooks[2] (id everything): @{{from}} has no value on "
        "sms:message:dlr events (that event type has no from): it renders empty",
        "warning: relay.toml: webhooks[2] (id everything): @{{status}} has no value on "
        "sms:message:dlr events (that event type has no status): it renders empty",
        "warning: relay.toml: webhooks[2] (id everything): @{{status}} has no value on "
        "whatsapp:message:in events (that event type has no status): it renders empty",
    ]


RENDER_TOML = """
[[webhooks]]
id = "ack"
events = ["whatsapp:message:*"]
method = "POST"
url = "https://www.domain.com/ack/receive?id=@{{payload.id}}&key=%api_key%"
secret = "webhook-signing-s3cret"
body = { id = "@{{id}}", from = "@{{from}}", to = "@{{to}}", mobile = "@{{payload.mobile}}" }

[webhooks.headers]
Authorization = "Bearer %token%"
X-Api-Key = "k:%api_key%"
X-Padded = "%padded%"
X-Source = "relay"

[[webhooks]]
id = "strict"
url = "https://example.com/"
body = { read_at = "@{{read_at}}" }
on_missing = "fail"

[secrets]
token = { env = "RELAY_TEST_RENDER_TOKEN" }
api_key = "literal api/key"
padded = " p4dded "   # a header value loses the spaces: only its template says it is a secret
"""
TOKEN, API_KEY, SIGNING = "env-t0ken-value", "literal api/key", "webhook-signing-s3cret"


def relay_command(*args: str, config: Path, env_token: str = TOKEN):
    return subprocess.run(
        [sys.executable, "-m", "relay", *args, "--config", str(config)],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "RELAY_TEST_RENDER_TOKEN": env_token},
        cwd=config.parent,
        timeout=60,
    )


def rendered(stdout: bytes) -> list[tuple[list[str], dict[str, str], bytes]]:
    """Each event's block of the output: its comment lines and request line, its headers, and
    its body's bytes (the bodies here hold no blank line)."""
    blocks = []
    for i, block in enumerate(stdout.split(b"\n\n# ")):
        head, _, body = (block if i == 0 else b"# " + block).partition(b"\n\n")
        lines = head.decode().splitlines()
        comments = [line for line in lines if line.startswith("#")]
        request = lines[len(comments) :]
        headers = dict(line.split(": ", 1) for line in request[1:])
        blocks.append(([*comments, request[0]], headers, body.removesuffix(b"\n")))
    return blocks


def test_render_prints_the_signed_request_with_secrets_masked(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(RENDER_TOML)
    done = relay_command("webhooks", "render", "ack", config=path)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for secret in (TOKEN, API_KEY, SIGNING, "literal%20api%2Fkey", "literal+api%2Fkey", "p4dded"):
        assert secret.encode() not in output
    blocks = rendered(done.stdout)
    assert [lines[0] for lines, _, _ in blocks] == [
        "# webhook ack, event whatsapp:message:status from the reference's "
        '"Message Status Notification" example: not sent',
        "# webhook ack, event whatsapp:message:in from the reference's "
        '"Message Incoming Notification" example: not sent',
        "# webhook ack, event whatsapp:message:in from the reference's "
        '"Incoming Media" example: not sent',
    ]
    expected_to = [STATUS_CUSTOMER, CUSTOMER, CUSTOMER]
    for (lines, headers, body), to, event in zip(blocks, expected_to, seed_events(), strict=True):
        message_id = event["payload"]["id"]
        assert lines[-1] == f"POST https://www.domain.com/ack/receive?id={message_id}&key=***"
        assert headers["Authorization"] == "***"
        assert headers["X-Api-Key"] == headers["X-Padded"] == "***"
        assert headers["X-Source"] == "relay"
        assert json.loads(body) == {"id": message_id, "from": BUSINESS, "to": to, "mobile": to}
        # The signature the configured signer computes, over the very bytes printed.
        assert headers["Signature"] == hmac.new(SIGNING.encode(), body, "sha256").hexdigest()
        assert len(headers["Relay-Delivery-Id"]) == 32


def test_render_of_an_event_file_and_its_errors(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(RENDER_TOML)
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(INCOMING))
    done = relay_command("webhooks", "render", "strict", "event.json", config=path)
    assert done.returncode == 1  # the attempt would fail: the event has no read_at
    assert done.stdout.decode().splitlines() == [
        "# webhook strict, event whatsapp:message:in from event.json: not sent",
        '# an attempt would fail: @{{read_at}} has no value in this event (on_missing = "fail")',
    ]
    event_file.write_text(json.dumps(STATUS))
    done = relay_command("webhooks", "render", "strict", "event.json", config=path)
    assert done.returncode == 0
    (lines, headers, body) = rendered(done.stdout)[0]
    assert json.loads(body) == {"read_at": STATUS["payload"]["read_at"]}
    assert headers["Signature"] == hmac.new(b"strict", body, hashlib.sha256).hexdigest()

    failures = {
        ("nope",): "relay.toml: no webhook 'nope' (webhooks: ack, strict)",
        ("ack", "missing.json"): "missing.json: cannot read: No such file or directory",
    }
    (tmp_path / "bad.json").write_text('{"event": "e", "payload": []}')
    failures[("ack", "bad.json")] = "bad.json: payload: must be an object"
    (tmp_path / "broken.json").write_text('{"event": ')
    failures[("ack", "broken.json")] = "broken.json: is not valid JSON: Expecting value"
    for args, message in failures.items():
        done = relay_command("webhooks", "render", *args, config=path)
        assert done.returncode == 2, args
        assert done.stdout == b""
        assert done.stderr.decode().startswith(message), done.stderr


async def test_render_runs_prepare_request_like_an_attempt(tmp_path, token_endpoint):
    """The oauth2 plugin fetches its token for render too; the token shows masked."""
    path = tmp_path / "relay.toml"
    path.write_text(
        f"""
[relay]
plugins_dir = "{ROOT / "plugins"}"

[[webhooks]]
id = "crm"
url = "https://crm.example.com/hooks"
oauth2 = {{ token_url = "{token_endpoint.url}", client_id = "relay", client_secret = "cs" }}
"""
    )
    done = await trio.run_process(
        [sys.executable, "-m", "relay", "webhooks", "render", "crm", "-c", str(path)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(token_endpoint.requests) == 1  # one fetch, shared by the three events
    assert b"tok-1" not in done.stdout
    assert [h["Authorization"] for _, h, _ in rendered(done.stdout)] == ["***"] * 3
