"""The admin listener: its token, its JSON API (checked against docs/admin-api.yaml with
schemathesis), reload moved there from ingest, and ``relay status`` and ``relay reload`` on
the real daemon, whose delivery process's counts reach /metrics."""

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
import trio

from relay import config as config_module
from relay.config import ConfigError
from tests.admin import admin_url, get, scrape, value, wait_for_metric
from tests.conftest import relay_of, seed_events, start_receiver
from tests.daemon import Daemon

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "admin-api.yaml"
STATUS = seed_events()[0]
TOKEN = "t0ken-that-must-never-show"


def write_toml(tmp_path: Path, relay_lines: str, webhooks: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[relay]\nlisten = "127.0.0.1:0"\nstate_dir = "state"\nallow_networks = ["127.0.0.0/8"]\n'
        f"{relay_lines}\n{webhooks}"
    )
    return path


def webhook(webhook_id: str, url: str, extra: str = "") -> str:
    return f'\n[[webhooks]]\nid = "{webhook_id}"\nurl = "{url}"\n{extra}\n'


async def start_from_file(nursery, path: Path):
    relay = relay_of(config_module.load(path))
    (ingest, *_) = await nursery.start(relay.run)
    return relay, f"http://{ingest}"


def relay_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=30
    )


def free_port() -> int:
    """For the daemon tests: `relay status` and `relay reload` read the port from the file."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the token -------------------------------------------------------------------------------


@pytest.mark.parametrize("admin", ["0.0.0.0:8766", "192.0.2.7:8766", "relay.example:8766"])
def test_a_token_is_required_off_loopback(tmp_path, admin):
    path = write_toml(tmp_path, f'admin = "{admin}"', "")
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.errors == [
        f"relay.toml: relay.admin_token: required when relay.admin ({admin}) is not a loopback"
        " address"
    ]


@pytest.mark.parametrize("admin", ["127.0.0.1:8766", "127.0.0.2:0", "[::1]:8766", "localhost:1"])
def test_loopback_needs_no_token(tmp_path, admin):
    assert config_module.load(write_toml(tmp_path, f'admin = "{admin}"', "")).relay.admin == admin


def test_the_token_comes_from_the_environment_and_never_shows(tmp_path, monkeypatch):
    lines = 'admin = "0.0.0.0:8766"\nadmin_token = { env = "RELAY_TEST_ADMIN_TOKEN" }'
    path = write_toml(tmp_path, lines, webhook("crm", "http://127.0.0.1:1/"))
    monkeypatch.delenv("RELAY_TEST_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert caught.value.errors == [
        "relay.toml: relay.admin_token: environment variable RELAY_TEST_ADMIN_TOKEN is not set"
    ]
    monkeypatch.setenv("RELAY_TEST_ADMIN_TOKEN", TOKEN)
    config = config_module.load(path)
    assert config.relay.admin_token == TOKEN
    assert TOKEN not in repr(config)
    checked = relay_cli("check", "--config", str(path))
    assert checked.returncode == 0, checked.stderr
    assert TOKEN not in checked.stdout + checked.stderr
    # A literal token, in a file with a mistake elsewhere: the errors do not show it either.
    path.write_text(path.read_text().replace('{ env = "RELAY_TEST_ADMIN_TOKEN" }', f'"{TOKEN}"'))
    broken = path.read_text().replace('url = "http://127.0.0.1:1/"', 'url = "ftp://x/"')
    path.write_text(broken)
    checked = relay_cli("check", "--config", str(path))
    assert checked.returncode == 2
    assert "webhooks[0].url" in checked.stderr
    assert TOKEN not in checked.stdout + checked.stderr


async def test_the_daemon_refuses_to_start_without_a_token_off_loopback(tmp_path):
    path = write_toml(tmp_path, 'admin = "0.0.0.0:0"', "")
    ran = relay_cli("run", "--config", str(path))
    assert ran.returncode == 2
    assert ran.stderr.strip() == (
        "relay.toml: relay.admin_token: required when relay.admin (0.0.0.0:0) is not a loopback"
        " address"
    )


async def test_every_admin_request_needs_the_token_when_one_is_set(tmp_path, nursery, caplog):
    receiver = await start_receiver(nursery)
    lines = f'admin = "127.0.0.1:0"\nadmin_token = "{TOKEN}"'
    path = write_toml(tmp_path, lines, webhook("crm", receiver.url))
    caplog.set_level(logging.DEBUG)
    relay, _ = await start_from_file(nursery, path)
    url = admin_url(relay)
    for method, target in [
        ("GET", "/metrics"),
        ("GET", "/api/status"),
        ("POST", "/api/reload"),
        ("GET", "/nowhere"),
    ]:
        for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
            refused = await get(url, target, token, method=method)
            assert refused.status_code == 401, (method, target, token)
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "error" in refused.json()
            assert TOKEN not in refused.text
    basic = await get(url, "/api/status", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert (await get(url, "/api/status", TOKEN)).status_code == 200
    assert (await get(url, "/api/reload", TOKEN, method="POST")).status_code == 200
    assert value(await scrape(url, TOKEN), "relay_webhook_enabled", webhook="crm") == 1
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]


# -- the API ---------------------------------------------------------------------------------


async def test_status_webhooks_and_unknown_endpoints(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    webhooks = webhook("crm", receiver.url) + webhook(
        "erp", "https://erp.example/hook", 'events = ["*:in"]\nname = "the ERP"'
    )
    relay, ingest = await start_from_file(
        nursery, write_toml(tmp_path, 'admin = "127.0.0.1:0"', webhooks)
    )
    url = admin_url(relay)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(ingest + "/events", json=STATUS)).status_code == 202
    await receiver.wait_for(1)
    await wait_for_metric(url, "relay_deliveries_total", 1, webhook="crm", state="delivered")
    status = (await get(url, "/api/status")).json()
    assert status["status"] == "ok"
    assert status["version"] == "0.1.0"
    assert status["uptime_seconds"] >= 0
    assert status["config_path"] == str(tmp_path / "relay.toml")
    assert status["config_loaded_at"] <= status["started_at"]
    crm, erp = status["webhooks"]
    assert crm["id"] == "crm" and crm["enabled"] and crm["pending"] == 0
    assert crm["last_success_at"] >= status["started_at"]
    assert crm["consecutive_failures"] == 0
    assert crm["oldest_pending_age_seconds"] is None
    assert erp["last_success_at"] is None

    listed = (await get(url, "/api/webhooks")).json()["webhooks"]
    assert [w["id"] for w in listed] == ["crm", "erp"]
    assert listed[1]["url"] == "https://erp.example/hook"
    assert listed[1]["name"] == "the ERP" and listed[1]["events"] == ["*:in"]

    missing = await get(url, "/api/nothing")
    assert missing.status_code == 404 and "/api/nothing" in missing.json()["error"]
    wrong = await get(url, "/api/status", method="DELETE")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert (await get(url, "/api/reload")).headers["allow"] == "POST"


async def test_reload_through_the_admin_listener(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    path = write_toml(tmp_path, 'admin = "127.0.0.1:0"', webhook("crm", receiver.url))
    relay, _ = await start_from_file(nursery, path)
    url = admin_url(relay)
    loaded = (await get(url, "/api/status")).json()["config_loaded_at"]

    path.write_text(path.read_text() + webhook("erp", receiver.url))
    reloaded = await get(url, "/api/reload", method="POST")
    assert reloaded.status_code == 200
    assert reloaded.json() == {
        "reloaded": True,
        "webhooks": ["crm", "erp"],
        "added": ["erp"],
        "removed": [],
        "restart_needed": [],
    }
    status = (await get(url, "/api/status")).json()
    assert [w["id"] for w in status["webhooks"]] == ["crm", "erp"]
    assert status["config_loaded_at"] > loaded

    path.write_text(path.read_text().replace('admin = "127.0.0.1:0"', 'admin = "127.0.0.1:1"'))
    assert (await get(url, "/api/reload", method="POST")).json()["restart_needed"] == ["admin"]

    path.write_text(path.read_text() + webhook("bad", "ftp://nope/"))
    rejected = await get(url, "/api/reload", method="POST")
    assert rejected.status_code == 422
    assert rejected.json()["problems"] == [
        "relay.toml: webhooks[2].url: must start with http:// or https://"
    ]


async def test_reload_on_the_ingest_listener_is_deprecated(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    path = write_toml(tmp_path, "", webhook("crm", receiver.url))
    relay, ingest = await start_from_file(nursery, path)
    path.write_text(path.read_text() + webhook("erp", receiver.url))
    answer = await get(ingest, "/reload", method="POST")
    assert answer.status_code == 200
    assert answer.json()["added"] == ["erp"]
    assert answer.headers["deprecation"].startswith("@")

    # With a token, the admin listener is guarded: ingest is no way around it.
    path.write_text(path.read_text().replace("state_dir", f'admin_token = "{TOKEN}"\nstate_dir'))
    assert (await get(ingest, "/reload", method="POST")).status_code == 200  # takes the token
    path.write_text(path.read_text() + webhook("crm2", receiver.url))
    refused = await get(ingest, "/reload", method="POST")
    assert refused.status_code == 403
    assert "/api/reload" in refused.json()["error"]
    assert [w.id for w in relay.config.webhooks] == ["crm", "erp"]


async def test_the_admin_api_matches_its_openapi_schema(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    lines = f'admin = "127.0.0.1:0"\nadmin_token = "{TOKEN}"'
    path = write_toml(tmp_path, lines, webhook("crm", receiver.url))
    relay, ingest = await start_from_file(nursery, path)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(ingest + "/events", json=[STATUS] * 3)).status_code == 202
    base_url = admin_url(relay)
    schema = schemathesis.openapi.from_path(SCHEMA)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /metrics",
        "GET /api/status",
        "GET /api/webhooks",
        "POST /api/reload",
        "GET /api/deliveries",
        "GET /api/deliveries/{id}",
        "POST /api/replay",
        "POST /api/webhooks/{id}/disable",
        "POST /api/webhooks/{id}/enable",
    }

    def check(operation) -> int:
        calls = []

        @hypothesis.settings(
            max_examples=20,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case):
            calls.append(case)
            case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"})

        run()
        return len(calls)

    for operation in operations:
        assert await trio.to_thread.run_sync(check, operation) >= 1


# -- the daemon ------------------------------------------------------------------------------


async def test_the_daemon_reports_delivery_and_answers_status_and_reload(
    tmp_path, nursery, monkeypatch
):
    """The default delivery = "process": the attempts' counts cross from the delivery process
    to the relay's /metrics; `relay status` and `relay reload` use the admin listener, with the
    token from the environment (the daemon's and the command's)."""
    monkeypatch.setenv("RELAY_TEST_ADMIN_TOKEN", TOKEN)
    receiver = await start_receiver(nursery)
    broken = await start_receiver(nursery)
    broken.statuses = [500] * 100
    port = free_port()
    lines = f'admin = "127.0.0.1:{port}"\nadmin_token = {{ env = "RELAY_TEST_ADMIN_TOKEN" }}'
    webhooks = webhook("crm", receiver.url) + webhook(
        "broken", broken.url, 'backoff = { first = 3600.0 }\nevents = ["whatsapp:message:status"]'
    )
    path = write_toml(tmp_path, lines, webhooks)
    daemon = await Daemon(path).start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(daemon.url + "/events", json=[STATUS] * 5)
        assert answer.status_code == 202
        url = f"http://127.0.0.1:{port}"
        samples = await wait_for_metric(
            url, "relay_attempts_total", 5, TOKEN, webhook="crm", outcome="delivered"
        )
        samples = await wait_for_metric(
            url, "relay_attempts_total", 5, TOKEN, webhook="broken", outcome="failed"
        )
        assert value(samples, "relay_deliveries_total", webhook="crm", state="delivered") == 5
        assert value(samples, "relay_attempt_duration_seconds_count", webhook="crm") == 5
        assert value(samples, "relay_deliveries_pending", webhook="crm") == 0
        assert value(samples, "relay_deliveries_pending", webhook="broken") == 5

        shown = await trio.to_thread.run_sync(relay_cli, "status", "--config", str(path))
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("relay 0.1.0: ok, up ")
        header = next(i for i, line in enumerate(lines) if line.startswith("webhook"))
        assert lines[header].split("  ")[0] == "webhook"
        crm, broken_row = (line.split() for line in lines[header + 1 : header + 3])
        assert crm[:4] == ["crm", "yes", "0", "-"]
        assert crm[-1] == "0" and "ago" in crm
        assert broken_row[:3] == ["broken", "yes", "5"]
        assert broken_row[-1] == "5"  # failures in a row
        assert "never" in broken_row

        as_json = await trio.to_thread.run_sync(
            relay_cli, "status", "--json", "--config", str(path)
        )
        status = json.loads(as_json.stdout)
        assert [w["pending"] for w in status["webhooks"]] == [0, 5]
        assert TOKEN not in shown.stdout + shown.stderr + as_json.stdout

        path.write_text(path.read_text() + webhook("erp", receiver.url))
        reloaded = await trio.to_thread.run_sync(relay_cli, "reload", "--config", str(path))
        assert reloaded.returncode == 0, reloaded.stderr
        assert reloaded.stdout.startswith("reloaded: 3 webhook(s); added: erp")
        assert "reloaded relay.toml" in daemon.log.read_text()

        monkeypatch.setenv("RELAY_TEST_ADMIN_TOKEN", "not-the-token")
        wrong = await trio.to_thread.run_sync(relay_cli, "status", "--config", str(path))
        assert wrong.returncode == 2
        assert "401" in wrong.stderr and TOKEN not in wrong.stderr
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0
    assert TOKEN not in daemon.log.read_text()


def test_status_needs_the_admin_listener(tmp_path):
    path = write_toml(tmp_path, "", "")
    shown = relay_cli("status", "--config", str(path))
    assert shown.returncode == 2
    assert shown.stderr.strip() == (
        "relay.toml: relay.admin is not set; relay status asks the admin listener"
    )
