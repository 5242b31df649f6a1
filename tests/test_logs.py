"""Log lines people can read and machines can parse (issue 13): ``[relay] log`` and ``--log``,
the same format from both of relay's processes, one line per attempt, a failure logged once."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trio

from relay.config import ConfigError
from relay.delivery import outcomes
from relay.logs import JsonFormatter
from relay.plugins import hookimpl
from tests.conftest import make_config, no_retry_delay, seed_events, start_receiver
from tests.daemon import Daemon, webhook_toml, write_config
from tests.plugins.helpers import journal_rows, wait_until_finished

STATUS = seed_events()[0]
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")


def a_record(msg, *args, extra=None, exc_info=None) -> logging.LogRecord:
    return logging.getLogger("relay.test").makeRecord(
        "relay.test", logging.INFO, __file__, 1, msg, args, exc_info, extra=extra
    )


def test_a_json_line_is_one_object_with_time_level_logger_message_and_what_the_caller_knew():
    record = a_record(
        "delivery %s\nfailed",
        "d1",
        extra={"webhook": "crm", "delivery_id": "d1", "event_id": "e1", "attempt": 2},
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry == {
        "time": entry["time"],
        "level": "info",
        "logger": "relay.test",
        "message": "delivery d1\nfailed",
        "webhook": "crm",
        "delivery_id": "d1",
        "event_id": "e1",
        "attempt": 2,
    }
    assert entry["time"].endswith("Z")  # ISO 8601, UTC
    time = datetime.fromisoformat(entry["time"])
    assert time.utcoffset().total_seconds() == 0
    created = datetime.fromtimestamp(record.created, UTC)
    assert time == created.replace(microsecond=created.microsecond // 1000 * 1000)


def test_a_json_line_carries_the_traceback_and_values_json_cannot_hold():
    try:
        raise ValueError("boom")
    except ValueError:
        record = a_record("failed", extra={"path": Path("/x")}, exc_info=sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["path"] == "/x"
    assert entry["exception"].startswith("Traceback")
    assert entry["exception"].endswith("ValueError: boom")


def test_log_is_text_or_json(tmp_path):
    assert make_config(tmp_path, []).relay.log == "text"
    assert make_config(tmp_path, [], log="json").relay.log == "json"
    with pytest.raises(ConfigError) as e:
        make_config(tmp_path, [], log="xml")
    assert e.value.errors == ["relay.toml: relay.log: must be one of text, json, got 'xml'"]


# -- in one process: what each attempt logs ----------------------------------------------------


async def test_each_attempt_is_one_line_with_its_webhook_delivery_event_and_outcome(
    start_relay, receiver, caplog
):
    caplog.set_level(logging.DEBUG)
    receiver.statuses = [500]
    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "backoff": no_retry_delay(), "secret": "k"}]
    )
    (event_id,) = (await running.post(STATUS)).json()["ids"]
    await wait_until_finished(running)
    ((delivery_id,),) = journal_rows(running, "SELECT id FROM deliveries")
    attempts = await wait_for_records(caplog, lambda r: hasattr(r, "attempt"), 2)
    failed, delivered = attempts
    for record in attempts:
        assert record.name == "relay.delivery.dispatch"
        assert (record.webhook, record.delivery_id, record.event_id) == (
            "crm",
            delivery_id,
            event_id,
        )
        assert record.duration_ms >= 0
        assert f"delivery {delivery_id} (event {event_id}) to crm: " in record.getMessage()
    assert (failed.levelno, failed.attempt, failed.status, failed.retry_in) == (
        logging.INFO,
        1,
        500,
        0.05,
    )
    assert "attempt 1 failed (HTTP 500) in " in failed.getMessage()
    assert failed.getMessage().endswith("; next in 0.05 s")
    assert (delivered.levelno, delivered.attempt, delivered.status) == (outcomes.DELIVERED, 2, 200)
    assert "attempt 2 delivered (HTTP 200) in " in delivered.getMessage()
    assert not hasattr(delivered, "error")


async def test_a_failing_plugin_is_logged_once_per_attempt(start_relay, receiver, caplog):
    """Once, by the dispatcher's line for the attempt (the attempt logged it as well)."""
    caplog.set_level(logging.DEBUG)

    class Failing:
        @hookimpl
        def prepare_request(self, webhook, delivery, request):
            raise RuntimeError("the token service is down")

    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "tries": 2, "backoff": no_retry_delay()}],
        plugins=[Failing()],
    )
    await running.post(STATUS)
    await wait_for_records(caplog, lambda r: getattr(r, "attempt", 0) == 2, 1)
    lines = [r for r in caplog.records if "the token service is down" in r.getMessage()]
    assert [(r.levelname, r.attempt) for r in lines] == [("INFO", 1), ("WARNING", 2)]
    assert lines[1].error.endswith("(prepare_request): RuntimeError: the token service is down")
    assert lines[1].getMessage().endswith("; gave up")
    assert receiver.requests == []


async def wait_for_records(caplog, matches, count: int) -> list[logging.LogRecord]:
    with trio.fail_after(10):
        while len(found := [r for r in caplog.records if matches(r)]) < count:
            await trio.sleep(0.01)
    return found


# -- the real processes -------------------------------------------------------------------------


def log_lines(daemon: Daemon) -> list[str]:
    return [line for line in daemon.log.read_text().splitlines() if line]


async def wait_for_line(daemon: Daemon, text: str) -> None:
    with trio.fail_after(15):
        while text not in daemon.log.read_text():
            await trio.sleep(0.05)


def set_relay_keys(config: Path, keys: str) -> None:
    config.write_text(config.read_text().replace("[relay]\n", f"[relay]\n{keys}\n", 1))


async def test_both_processes_log_json_lines_with_the_fields_of_each_attempt(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500]
    config = write_config(
        tmp_path, webhooks=webhook_toml("crm", receiver.url) + webhook_toml("old", receiver.url)
    )
    set_relay_keys(config, 'log = "json"\nlog_level = "debug"')
    daemon = await Daemon(config).start()
    async with httpx.AsyncClient(base_url=daemon.url) as client:
        answer = await client.post("/events", json=STATUS | {"webhook_id": "crm"})
    (event_id,) = answer.json()["ids"]
    await receiver.wait_for(2)
    await wait_for_line(daemon, "attempt 2 delivered")

    # A reload that removes a webhook and changes the format: the format needs a restart.
    config.write_text(
        config.read_text().replace('log = "json"', 'log = "text"').split("[[webhooks]]")[0]
        + webhook_toml("crm", receiver.url)
    )
    reload = await trio.run_process(
        [sys.executable, "-m", "relay", "reload", "--config", str(config)], capture_stdout=True
    )
    assert b"restart to apply: log" in reload.stdout
    await wait_for_line(daemon, "old left the configuration")
    daemon.process.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0

    entries = [json.loads(line) for line in log_lines(daemon)]  # every line is one object
    assert {"relay.daemon", "relay.delivery.dispatch"} <= {e["logger"] for e in entries}
    for entry in entries:
        assert datetime.fromisoformat(entry["time"]).utcoffset().total_seconds() == 0
        assert entry["level"] in ("debug", "info", "warning")
    attempts = [e for e in entries if "attempt" in e]
    for entry in attempts:
        assert (entry["webhook"], entry["event_id"]) == ("crm", event_id)
        assert entry["delivery_id"] == attempts[0]["delivery_id"]
        assert isinstance(entry["duration_ms"], float)
    assert [(e["attempt"], e["status"]) for e in attempts] == [(1, 500), (2, 200)]
    (reloaded,) = [e for e in entries if e["message"].startswith("reloaded")]
    assert (reloaded["added"], reloaded["removed"], reloaded["webhooks"]) == ([], ["old"], 1)
    (parked,) = [e for e in entries if "left the configuration" in e["message"]]
    assert parked["webhook"] == "old"


@pytest.mark.parametrize(
    ("in_file", "flag", "environment", "expected"),
    [
        ("text", "json", None, "json"),
        ("json", "text", None, "text"),
        # The variable only carries --log to the delivery process: without --log, it is not
        # read, and the two processes cannot disagree.
        ("text", None, "json", "text"),
    ],
)
async def test_log_on_the_command_line_overrides_the_file_in_both_processes(
    tmp_path, nursery, monkeypatch, in_file, flag, environment, expected
):
    if environment:
        monkeypatch.setenv("RELAY_LOG", environment)
    receiver = await start_receiver(nursery)
    config = write_config(tmp_path, receiver.url)
    set_relay_keys(config, f'log = "{in_file}"\nlog_level = "debug"')
    daemon = await Daemon(config, ("--log", flag) if flag else ()).start()
    async with httpx.AsyncClient(base_url=daemon.url) as client:
        await client.post("/events", json=STATUS)
    await wait_for_line(daemon, "attempt 1 delivered")
    daemon.process.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0

    lines = log_lines(daemon)
    assert any("relay.delivery.dispatch" in line for line in lines)  # the delivery process's
    assert any("relay.daemon" in line for line in lines)  # the relay's
    for line in lines:
        if expected == "json":
            json.loads(line)
        else:
            assert TEXT_LINE.match(line), line
