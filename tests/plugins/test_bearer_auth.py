"""bearer_auth: configuration errors in relay.toml's terms, tokens from env and files, no leaks."""

import logging
import os

import pytest

from plugins import bearer_auth
from relay.config import ConfigError
from relay.plugins import Components, make_plugin_manager
from tests.conftest import make_config, no_retry_delay, seed_events
from tests.plugins.helpers import journal_rows, wait_until_finished

TOKEN = "tok-3f9a1c"


def bind(tmp_path, table):
    config = make_config(tmp_path, [{"id": "crm", "url": "http://h/", "bearer_auth": table}])
    pm = make_plugin_manager(config, entry_points=False)
    pm.register(bearer_auth)
    return Components.collect(pm).bind(config)


@pytest.mark.parametrize(
    "table, error",
    [
        ({}, "webhooks[0].bearer_auth: set exactly one of env or file"),
        ({"file": "/nonexistent/t"}, "webhooks[0].bearer_auth.file: /nonexistent/t is not a file"),
        ({"file": "token.txt"}, "webhooks[0].bearer_auth.file: must be an absolute path"),
        ({"env": "RELAY_TEST_UNSET"}, "webhooks[0].bearer_auth.env: environment variable "),
        ({"env": 3}, "webhooks[0].bearer_auth.env: expected a string, got a number"),
        ({"token": TOKEN}, "webhooks[0].bearer_auth: unknown keys: token"),
    ],
)
def test_configuration_errors_name_the_key(tmp_path, monkeypatch, table, error):
    monkeypatch.delenv("RELAY_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as caught:
        bind(tmp_path, table)
    assert caught.value.errors[0].startswith(f"relay.toml: {error}")
    assert TOKEN not in str(caught.value)


def test_both_env_and_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_TOKEN", TOKEN)
    (tmp_path / "token").write_text(TOKEN)
    with pytest.raises(ConfigError) as caught:
        bind(tmp_path, {"env": "RELAY_TEST_TOKEN", "file": str(tmp_path / "token")})
    assert caught.value.errors == [
        "relay.toml: webhooks[0].bearer_auth: set exactly one of env or file"
    ]


def test_the_token_is_not_in_the_options_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_TOKEN", TOKEN)
    config = bind(tmp_path, {"env": "RELAY_TEST_TOKEN"})
    assert TOKEN not in repr(config)
    assert TOKEN not in repr(config.webhooks[0].options)


async def test_token_from_env_only_for_webhooks_with_the_table(
    start_relay, nursery, receiver, monkeypatch
):
    from tests.conftest import start_receiver

    other = await start_receiver(nursery)
    monkeypatch.setenv("RELAY_TEST_TOKEN", TOKEN)
    running = await start_relay(
        [
            {"id": "crm", "url": receiver.url, "bearer_auth": {"env": "RELAY_TEST_TOKEN"}},
            {"id": "other", "url": other.url},
        ],
        plugins=[bearer_auth],
    )
    await running.post(seed_events()[0])
    (request,) = await receiver.wait_for(1)
    (plain,) = await other.wait_for(1)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in plain.headers


async def test_a_changed_file_is_read_again(start_relay, receiver, tmp_path):
    path = tmp_path / "token"
    path.write_text("first\n")
    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "bearer_auth": {"file": str(path)}}],
        plugins=[bearer_auth],
    )
    await running.post(seed_events()[0])
    await receiver.wait_for(1)
    path.write_text("second\n")
    stat = path.stat()  # a rewrite within the file system's timestamp granularity: still new
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    await running.post(seed_events()[0])
    first, second = await receiver.wait_for(2)
    assert first.headers["authorization"] == "Bearer first"
    assert second.headers["authorization"] == "Bearer second"


async def test_an_emptied_file_fails_the_attempt_without_showing_the_token(
    start_relay, receiver, tmp_path, caplog
):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    receiver.statuses = [401]
    running = await start_relay(
        [
            {
                "id": "crm",
                "url": receiver.url,
                "bearer_auth": {"file": str(path)},
                "tries": 2,
                "backoff": no_retry_delay(),
            }
        ],
        plugins=[bearer_auth],
    )
    caplog.set_level(logging.DEBUG)
    await running.post(seed_events()[0])
    await receiver.wait_for(1)
    path.write_text("")
    await wait_until_finished(running)
    errors = journal_rows(running, "SELECT number, status, error FROM attempts ORDER BY number")
    assert errors == [
        (1, 401, None),
        (
            2,
            None,
            f"plugin plugins.bearer_auth (prepare_request): ValueError: bearer_auth: "
            f"{path} is empty",
        ),
    ]
    assert TOKEN not in caplog.text
    assert TOKEN not in str(journal_rows(running, "SELECT * FROM attempts"))
