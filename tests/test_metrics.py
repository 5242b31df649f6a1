"""/metrics on the admin listener: what ingest and delivery count, parsed back as Prometheus
would. In-process relays (delivery inline) on real receivers; the delivery process's own
counts, which cross a pipe, in tests/test_admin.py's daemon tests."""

import json
import logging

import httpx
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from relay.delivery.stats import DURATION_BUCKETS
from relay.journal import FILENAME
from relay.journal import sqlite as journal_sql
from tests.admin import admin_url, scrape, value, wait_for_metric
from tests.conftest import (
    Receiver,
    make_config,
    no_retry_delay,
    relay_of,
    seed_events,
    start_receiver,
)

STATUS = seed_events()[0]


async def test_attempts_and_deliveries_by_outcome(start_relay, nursery):
    ok = await start_receiver(nursery)
    broken = await start_receiver(nursery, Receiver(statuses=[500] * 10))
    slow = await start_receiver(nursery, Receiver(hang=5.0))
    running = await start_relay(
        [
            {"id": "ok", "url": ok.url},
            {"id": "broken", "url": broken.url, "tries": 2, "backoff": no_retry_delay()},
            {"id": "slow", "url": slow.url, "tries": 1, "timeout": 0.3},
            {"id": "refused", "url": "http://127.0.0.1:1/", "tries": 1},
        ],
        admin="127.0.0.1:0",
    )
    assert (await running.post(STATUS)).status_code == 202
    url = admin_url(running.relay)
    for webhook in ("ok", "broken", "slow", "refused"):
        state = "delivered" if webhook == "ok" else "failed"
        samples = await wait_for_metric(
            url, "relay_deliveries_total", 1, webhook=webhook, state=state
        )

    attempts = {
        (webhook, outcome): value(samples, "relay_attempts_total", webhook=webhook, outcome=outcome)
        for webhook in ("ok", "broken", "slow", "refused")
        for outcome in ("delivered", "failed", "timeout", "error")
    }
    assert {key: n for key, n in attempts.items() if n} == {
        ("ok", "delivered"): 1,
        ("broken", "failed"): 2,
        ("slow", "timeout"): 1,
        ("refused", "error"): 1,
    }
    assert value(samples, "relay_deliveries_total", webhook="ok", state="failed") == 0
    assert value(samples, "relay_events_accepted_total") == 1
    assert value(samples, "relay_events_unrouted_total") == 0
    # The histogram: an observation per attempt; the timed-out one took at least its timeout.
    for webhook, count in (("ok", 1), ("broken", 2), ("slow", 1), ("refused", 1)):
        assert value(samples, "relay_attempt_duration_seconds_count", webhook=webhook) == count
        assert (
            value(samples, "relay_attempt_duration_seconds_bucket", webhook=webhook, le="+Inf")
            == count
        )
    assert value(samples, "relay_attempt_duration_seconds_sum", webhook="slow") >= 0.3
    assert value(samples, "relay_attempt_duration_seconds_bucket", webhook="slow", le="0.25") == 0
    assert value(samples, "relay_attempt_duration_seconds_bucket", webhook="slow", le="0.5") == 1
    buckets = [
        value(samples, "relay_attempt_duration_seconds_bucket", webhook="broken", le=str(b))
        for b in DURATION_BUCKETS
    ]
    assert buckets == sorted(buckets)  # cumulative
    for webhook in ("ok", "broken", "slow", "refused"):
        assert value(samples, "relay_deliveries_pending", webhook=webhook) == 0
        assert value(samples, "relay_oldest_pending_age_seconds", webhook=webhook) == 0
        assert value(samples, "relay_webhook_enabled", webhook=webhook) == 1
    assert value(samples, "relay_build_info", version="0.1.0") == 1
    journal = running.relay.config.relay.state_dir / FILENAME
    on_disk = journal.stat().st_size + journal.with_name(FILENAME + "-wal").stat().st_size
    assert value(samples, "relay_journal_bytes") == on_disk


async def test_unrouted_events_are_counted_and_logged(start_relay, receiver, caplog):
    running = await start_relay(
        [{"id": "in-only", "url": receiver.url, "events": ["*:in"]}], admin="127.0.0.1:0"
    )
    with caplog.at_level(logging.DEBUG, logger="relay.ingest.api"):
        response = await running.post([STATUS, STATUS, {**STATUS, "event": "whatsapp:message:in"}])
    assert response.status_code == 202
    samples = await scrape(admin_url(running.relay))
    assert value(samples, "relay_events_accepted_total") == 3
    assert value(samples, "relay_events_unrouted_total") == 2
    records = [r for r in caplog.records if "no webhook takes it" in r.getMessage()]
    assert [r.levelname for r in records] == ["DEBUG", "DEBUG"]  # not at info: ingest is hot
    unrouted = [r.getMessage() for r in records]
    assert all(STATUS["event"] in line for line in unrouted)
    assert set(response.json()["ids"][:2]) == {line.split()[1] for line in unrouted}


async def test_rejected_requests_are_counted_by_reason(tmp_path, nursery, receiver):
    # A real journal that fails: SQLite refuses events named "refused" (a full disk, as far as
    # the relay can tell): the request is answered 503, and nothing journaled.
    state = tmp_path / "state"
    conn = journal_sql.connect(state)  # the journal as relay makes it, then the trigger
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.name = 'refused'"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    conn.close()
    config = make_config(
        tmp_path, [{"id": "crm", "url": receiver.url}], admin="127.0.0.1:0", max_body=2048
    )
    relay = relay_of(config)
    (ingest,) = await nursery.start(relay.run)

    sent = {
        "malformed_json": [b"{not json", b"\xff"],
        "invalid_event": [json.dumps({"event": "x"}).encode()],
        # Only unknown webhook ids; with another problem beside it, an event is invalid.
        "unknown_webhook": [
            json.dumps([STATUS, {**STATUS, "webhook_id": "nope"}]).encode(),
            json.dumps([{"event": "x"}, {**STATUS, "webhook_id": "nope"}]).encode(),
        ],
        "too_large": [json.dumps({**STATUS, "pad": "x" * 4000}).encode()],
        "journal_unavailable": [json.dumps({**STATUS, "event": "refused"}).encode()],
    }
    statuses = [
        (await post(ingest, body)).status_code for bodies in sent.values() for body in bodies
    ]
    statuses.append((await post(ingest, STATUS, content_type="text/plain")).status_code)
    assert statuses == [400, 400, 422, 422, 422, 413, 503, 415]
    assert (await post(ingest, STATUS)).status_code == 202  # the relay is still fine

    samples = await scrape(admin_url(relay))
    rejected = {
        reason: value(samples, "relay_events_rejected_total", reason=reason)
        for reason in (*sent, "unsupported_media_type")
    }
    assert rejected == {
        "malformed_json": 2,
        "invalid_event": 2,
        "unknown_webhook": 1,
        "too_large": 1,
        "journal_unavailable": 1,
        "unsupported_media_type": 1,
    }
    assert value(samples, "relay_events_accepted_total") == 1


async def test_requests_the_gate_refuses_are_counted_too(tmp_path, nursery, receiver, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_TOKEN", "t0ken")
    config = make_config(
        tmp_path,
        [{"id": "crm", "url": receiver.url}],
        admin="127.0.0.1:0",
        ingest_token={"env": "RELAY_TEST_TOKEN"},
    )
    relay = relay_of(config)
    addresses = await nursery.start(relay.run)
    ingest = next(a for a in addresses if not a.startswith("/"))
    body = json.dumps(STATUS).encode()
    json_type = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://{ingest}", headers=json_type) as client:
        refused = [
            await client.post("/events", content=body),  # no token
            await client.post("/reports", content=b"{}", headers={"authorization": "Bearer x"}),
            await client.post("/events", content=body, headers={"host": "evil.example"}),
            await client.get("/healthz", headers={"host": "evil.example"}),  # not ingest
        ]
        ok = await client.post("/events", content=body, headers={"authorization": "Bearer t0ken"})
    assert [r.status_code for r in refused] == [401, 401, 421, 421]
    assert ok.status_code == 202
    samples = await scrape(admin_url(relay))
    assert value(samples, "relay_events_rejected_total", reason="unauthorized") == 2
    assert value(samples, "relay_events_rejected_total", reason="misdirected") == 1


async def test_pending_and_oldest_pending_age_come_from_the_journal(tmp_path, nursery):
    """Counted once at start from the journal, then kept: a second relay on the same journal
    sees what the first left pending, before it makes any attempt."""
    down = await start_receiver(nursery, Receiver(statuses=[503] * 100))
    webhooks = [
        {"id": "down", "url": down.url, "backoff": {"first": 3600.0}},
        {"id": "idle", "url": down.url, "events": ["nothing"]},
    ]
    config = make_config(tmp_path, webhooks, admin="127.0.0.1:0")
    first = relay_of(config)
    async with trio.open_nursery() as inner:
        (ingest,) = await inner.start(first.run)
        for _ in range(3):
            assert (await post(ingest, STATUS)).status_code == 202
        samples = await wait_for_metric(
            admin_url(first), "relay_attempts_total", 3, webhook="down", outcome="failed"
        )
        assert value(samples, "relay_deliveries_pending", webhook="down") == 3
        assert value(samples, "relay_deliveries_pending", webhook="idle") == 0
        assert value(samples, "relay_oldest_pending_age_seconds", webhook="down") > 0
        assert value(samples, "relay_oldest_pending_age_seconds", webhook="idle") == 0
        first.stop(grace=1)

    second = relay_of(config)
    (ingest,) = await nursery.start(second.run)
    samples = await scrape(admin_url(second))
    assert value(samples, "relay_deliveries_pending", webhook="down") == 3
    assert value(samples, "relay_attempts_total", webhook="down", outcome="failed") == 0
    assert value(samples, "relay_oldest_pending_age_seconds", webhook="down") > 0
    # What ingest journals adds to it.
    assert (await post(ingest, STATUS)).status_code == 202
    samples = await scrape(admin_url(second))
    assert value(samples, "relay_deliveries_pending", webhook="down") == 4


async def post(address: str, body, content_type="application/json") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            f"http://{address}/events", content=content, headers={"content-type": content_type}
        )


async def test_openmetrics_when_the_scraper_asks_for_it(start_relay, receiver):
    """Prometheus asks for OpenMetrics first (Accept); the plain text format is the default."""
    running = await start_relay([{"id": "crm", "url": receiver.url}], admin="127.0.0.1:0")
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            admin_url(running.relay) + "/metrics", headers={"Accept": accept}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(response.text)}
    assert families["relay_events_accepted"].type == "counter"
    assert families["relay_attempt_duration_seconds"].type == "histogram"
    assert response.text.endswith("# EOF\n")
