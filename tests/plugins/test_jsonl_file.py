"""jsonl_file: deliveries through a relay end up as verifiable lines in a file."""

import hashlib
import hmac
import json
import stat

import pytest

from plugins import jsonl_file
from relay.config import ConfigError
from relay.plugins import Components, make_plugin_manager
from tests.conftest import make_config, seed_events
from tests.plugins.helpers import journal_rows, wait_until_finished


def webhook(path, **extra):
    return {
        "id": "archive",
        "url": "http://localhost/archive",
        "transport": "jsonl",
        "jsonl": {"path": str(path)},
        "secret": "s3cr3t",
    } | extra


async def test_deliveries_are_appended_as_json_lines(start_relay, tmp_path):
    path = tmp_path / "out" / "archive.jsonl"
    path.parent.mkdir()
    running = await start_relay([webhook(path)], plugins=[jsonl_file])
    events = seed_events()
    await running.post(events)
    await wait_until_finished(running, len(events))

    assert journal_rows(running, "SELECT DISTINCT state FROM deliveries") == [("delivered",)]
    assert journal_rows(running, "SELECT DISTINCT status FROM attempts") == [(200,)]
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    assert sorted(json.loads(r["body"])["event"] for r in lines) == sorted(
        e["event"] for e in events
    )
    for record in lines:
        assert record["webhook"] == "archive"
        assert (record["method"], record["url"]) == ("POST", "http://localhost/archive")
        headers = dict(record["headers"])
        expected = hmac.new(b"s3cr3t", record["body"].encode(), hashlib.sha256).hexdigest()
        assert headers["Signature"] == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_body_that_is_not_utf8_is_kept_in_base64():
    from relay.model import Request

    class Hook:
        id = "archive"

    record = json.loads(jsonl_file.line(Hook, Request("POST", "http://h/", body=b"\xff\x00")))
    assert record["body_base64"] == "/wA="
    assert "body" not in record


@pytest.mark.parametrize(
    "path, error",
    [
        ("relative.jsonl", "must be an absolute path"),
        ("/nonexistent/dir/a.jsonl", "/nonexistent/dir is not a directory"),
    ],
)
def test_configuration_errors_name_the_key(tmp_path, path, error):
    config = make_config(tmp_path, [webhook(path)])
    pm = make_plugin_manager(config, entry_points=False)
    pm.register(jsonl_file)
    with pytest.raises(ConfigError) as caught:
        Components.collect(pm).bind(config)
    assert caught.value.errors == [f"relay.toml: webhooks[0].jsonl.path: {error}"]


async def test_without_a_path_the_attempt_fails_and_says_what_is_missing(start_relay, tmp_path):
    hook = webhook(tmp_path / "unused", tries=1)
    del hook["jsonl"]
    running = await start_relay([hook], plugins=[jsonl_file])
    await running.post(seed_events()[0])
    await wait_until_finished(running)
    ((error,),) = journal_rows(running, "SELECT error FROM attempts")
    assert error == 'ValueError: transport "jsonl" needs a jsonl = { path = "..." } table'
