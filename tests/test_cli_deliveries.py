"""`relay deliveries`: the journal's deliveries by state, webhook, event and time, read from the
file, as a table or JSON; every filter answered from an index or a bounded range of rowids."""

import itertools
import json
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from relay.cli.deliveries import JSON_KEYS
from relay.journal import sqlite as journal_sql
from relay.journal import views
from tests.cli import relay_cli, relay_on_terminal
from tests.conftest import seed_events, start_receiver
from tests.daemon import Daemon, webhook_toml, write_config

HOUR = 3600.0

# (delivery, event, name, webhook, created ago, state, attempts, next due in, last status,
# error): times in seconds from when make_journal writes them
ROWS = [
    ("d1", "e1", "whatsapp:message:status", "crm", 5 * HOUR, "delivered", 1, None, 200, None),
    ("d2", "e2", "whatsapp:message:in", "crm", 4 * HOUR, "failed", 3, None, 503, None),
    ("d3", "e3", "whatsapp:message:status", "crm", 2 * HOUR, "pending", 1, 1800, None, "no response within 3 s"),  # noqa: E501
    ("d3b", "e3", "whatsapp:message:status", "gone", 2 * HOUR, "pending", 0, None, None, None),
    ("d4", "e4", "whatsapp:message:in", "crm", 600, "pending", 0, None, None, None),
]  # fmt: skip


def make_journal(tmp_path) -> tuple[Path, float]:
    """A stopped relay's journal with ROWS, a relay.toml whose webhooks are crm only, and the
    time the rows' times are relative to."""
    now = time.time()
    config = tmp_path / "relay.toml"
    config.write_text(f'[relay]\nstate_dir = "state"\n{webhook_toml("crm", "http://x.invalid/")}')
    conn = journal_sql.connect(tmp_path / "state")
    seen = set()
    for d, e, name, webhook, ago, state, attempts, due_in, status, error in ROWS:
        created = now - ago
        next_at = None if due_in is None else now + due_in
        events = [] if e in seen else [(e, name, b"{}", created)]
        seen.add(e)
        ops = [("append", (events, [(d, e, webhook, created, created)]))]
        if attempts:
            outcome = f"HTTP {status}" if status else error
            ops.append(
                (
                    "record_attempts",
                    (
                        [(d, attempts, created + 1, 0.5, status, error, None, None)],
                        [(state, attempts, next_at, created + 1.5, outcome, d)],
                    ),
                )
            )
        journal_sql.run_batch(conn, ops)
    conn.close()
    return config, now


async def listed(config, *args) -> list[dict]:
    result = await relay_cli("deliveries", "-c", str(config), "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def ids(config, *args) -> list[str]:
    return [row["id"] for row in await listed(config, *args)]


async def test_json_holds_every_column_with_stable_keys_newest_first(tmp_path):
    config, now = make_journal(tmp_path)
    rows = await listed(config, "--state", "all")
    assert [r["id"] for r in rows] == ["d4", "d3b", "d3", "d2", "d1"]
    assert all(list(row) == list(JSON_KEYS) for row in rows)
    d3, d2 = rows[2], rows[3]
    created = datetime.fromtimestamp(now - 2 * HOUR, UTC)
    assert d3 == {
        "id": "d3",
        "webhook_id": "crm",
        "event_id": "e3",
        "event": "whatsapp:message:status",
        "state": "pending",
        "attempts": 1,
        "created_at": created.isoformat(timespec="milliseconds"),
        "last_attempt_at": (created + timedelta(seconds=1)).isoformat(timespec="milliseconds"),
        "next_attempt_at": datetime.fromtimestamp(now + 1800, UTC).isoformat(
            timespec="milliseconds"
        ),
        "last_status": None,
        "last_error": "no response within 3 s",
    }
    assert (d2["state"], d2["attempts"], d2["last_status"]) == ("failed", 3, 503)
    assert rows[1]["state"] == "parked"  # pending for a webhook relay.toml no longer has
    assert rows[0]["next_attempt_at"] is None and rows[0]["last_attempt_at"] is None


async def test_filters_by_state_webhook_and_limit(tmp_path):
    config, _ = make_journal(tmp_path)
    assert await ids(config) == ["d4", "d3b", "d3"]  # pending (parked included) by default
    assert await ids(config, "--state", "parked") == ["d3b"]
    assert await ids(config, "--state", "failed") == ["d2"]
    assert await ids(config, "--state", "delivered") == ["d1"]
    assert await ids(config, "--state", "all", "--webhook", "crm") == ["d4", "d3", "d2", "d1"]
    assert await ids(config, "--state", "all", "--limit", "2") == ["d4", "d3b"]


async def test_event_takes_an_event_id_or_a_delivery_id_and_every_state(tmp_path):
    config, _ = make_journal(tmp_path)
    assert await ids(config, "--event", "e3") == ["d3b", "d3"]
    assert await ids(config, "--event", "d3b") == ["d3b", "d3"]  # the delivery's event
    assert await ids(config, "--event", "e1") == ["d1"]  # delivered: --event lists all states
    assert await ids(config, "--event", "e1", "--state", "pending") == []
    assert await ids(config, "--event", "nothing-such") == []


async def test_since_and_until_take_durations_ago_and_iso_times(tmp_path):
    config, now = make_journal(tmp_path)
    assert await ids(config, "--state", "all", "--since", "3h") == ["d4", "d3b", "d3"]
    assert await ids(config, "--state", "all", "--since", "1h", "--until", "5m") == ["d4"]
    assert await ids(config, "--state", "all", "--until", "2h30m") == ["d2", "d1"]
    assert await ids(config, "--state", "all", "--since", "30s") == []
    utc = datetime.fromtimestamp(now - 4.5 * HOUR, UTC)
    assert await ids(config, "--state", "all", "--since", utc.isoformat()) == [
        "d4",
        "d3b",
        "d3",
        "d2",
    ]
    zulu = utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await ids(config, "--state", "all", "--until", zulu) == ["d1"]


async def test_a_time_without_a_zone_is_local_time(tmp_path):
    config, now = make_journal(tmp_path)
    # 4.5 hours ago as the wall clock of UTC+05:00 shows it, without the zone.
    local = datetime.fromtimestamp(now - 4.5 * HOUR, timezone(timedelta(hours=5)))
    naive = local.replace(tzinfo=None).isoformat(timespec="seconds")
    result = await relay_cli(
        "deliveries", "-c", str(config), "--json", "--state", "all", "--until", naive,
        env={"TZ": "Etc/GMT-5"},  # POSIX signs: GMT-5 is UTC+05:00
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in json.loads(result.stdout)] == ["d1"]


@pytest.mark.parametrize("value", ["yesterday", "10", "10 minutes", "2026-13-01"])
async def test_a_time_it_cannot_read_is_a_usage_error(tmp_path, value):
    config, _ = make_journal(tmp_path)
    result = await relay_cli("deliveries", "-c", str(config), "--since", value)
    assert result.returncode == 2
    assert "--since: expected a duration (10m, 2h, 7d, 30s) or an ISO 8601 time" in result.stderr


async def test_the_table_shows_each_column(tmp_path):
    config, _ = make_journal(tmp_path)
    result = await relay_cli("deliveries", "-c", str(config), "--state", "all")
    assert result.returncode == 0, result.stderr
    header, _, *lines = result.stdout.splitlines()
    assert header.split() == (
        "delivery webhook event id event state attempts created last attempt "
        "next attempt last outcome".split()
    )
    cells = {line.split()[0]: line for line in lines}
    assert list(cells) == ["d4", "d3b", "d3", "d2", "d1"]
    assert cells["d2"].split()[:6] == ["d2", "crm", "e2", "whatsapp:message:in", "failed", "3"]
    assert cells["d2"].endswith("HTTP 503")
    assert " parked " in cells["d3b"]
    assert re.search(r" in (29|30)m +no response within 3 s$", cells["d3"])
    assert re.search(r" - +now$", cells["d4"])  # no attempt yet; in memory: due now
    assert all(line == line.rstrip() for line in result.stdout.splitlines())


@pytest.mark.parametrize("columns", [80, 150, 250])
async def test_on_a_terminal_no_value_is_cut_short_however_narrow(tmp_path, columns):
    config, now = make_journal(tmp_path)
    conn = journal_sql.connect(tmp_path / "state")
    ids = [(f"{n:032x}", f"{n + 10:032x}") for n in range(3)]  # as long as relay's
    events = [(e, "whatsapp:message:status", b"{}", now) for _, e in ids]
    deliveries = [(d, e, "crm", now, now) for d, e in ids]
    error = "connection refused by 127.0.0.1:9000 after 3 tries of the same"
    outcomes = [("failed", 1, None, now, error, d) for d, _ in ids]
    attempts = [(d, 1, now, 0.1, None, error, None, None) for d, _ in ids]
    journal_sql.run_batch(
        conn, [("append", (events, deliveries)), ("record_attempts", (attempts, outcomes))]
    )
    conn.close()
    result, screen = await relay_on_terminal(
        "deliveries", "-c", str(config), "--state", "failed", columns=columns
    )
    assert result.returncode == 0, result.stderr
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.decode())  # colours
    for delivery, event in ids:
        assert delivery in text and event in text
    assert "whatsapp:message:status" in text
    assert " ".join(text.split()).count(error) == 3  # perhaps over several lines, whole
    assert "…" not in text


async def test_a_missing_journal_is_an_error_naming_its_path(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('[relay]\nstate_dir = "nowhere"\n')
    result = await relay_cli("deliveries", "-c", str(config))
    assert result.returncode == 2
    assert f"{tmp_path / 'nowhere' / 'journal.sqlite3'}: no journal there" in result.stderr
    assert not (tmp_path / "nowhere").exists()  # looking created nothing


async def test_a_missing_configuration_is_an_error_not_a_traceback(tmp_path):
    result = await relay_cli("deliveries", "-c", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == "absent.toml: cannot read: No such file or directory"


async def test_it_reads_the_journal_of_a_running_relay(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [503] * 100
    config = write_config(tmp_path, receiver.url)
    daemon = await Daemon(config).start()
    try:
        sent = await relay_cli(
            "send", "-c", str(config), stdin=json.dumps(seed_events()[0]).encode()
        )
        assert sent.returncode == 0, sent.stderr
        (event_id,) = sent.stdout.split()
        await receiver.wait_for(2)  # a retry: the first attempt's outcome is on disk
        rows = await listed(config, "--event", event_id)
        assert [(r["webhook_id"], r["state"]) for r in rows] == [("crm", "pending")]
        assert rows[0]["attempts"] >= 1 and rows[0]["last_status"] == 503
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0


# -- the queries' plans ---------------------------------------------------------------------


def plan(conn, sql, params) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


@pytest.mark.parametrize(
    "state,webhook,event,since,until",
    list(
        itertools.product(
            ["pending", "parked", "failed", "delivered", "all"],
            [None, "crm"],
            [None, "e1"],
            [None, 1.0],
            [None, 2.0],
        )
    ),
)
def test_every_filter_reads_an_index_or_a_bounded_run_of_rowids(
    tmp_path, state, webhook, event, since, until
):
    conn = journal_sql.connect(tmp_path)
    rowids = (5 if since else None, 50 if until else None)
    sql, params = views.deliveries_query(
        state, webhook, ["crm"], 50, event_id=event, since=since, until=until, rowids=rowids
    )
    (step,) = [s for s in plan(conn, sql, params) if s.startswith(("SCAN d", "SEARCH d "))]
    assert not any("TEMP B-TREE" in s for s in plan(conn, sql, params))  # no sort
    if event:
        assert step.startswith("SEARCH d USING INDEX deliveries_by_event (event_id=?")
    elif state in ("pending", "parked", "failed"):
        index = "failed" if state == "failed" else "pending"
        assert step.startswith(f"SEARCH d USING INDEX deliveries_{index} (state=?")
    elif since or until:
        assert step.startswith("SEARCH d USING INTEGER PRIMARY KEY (rowid")
    else:  # all, delivered: the newest rows first, up to the limit
        assert step == "SCAN d"
    if since or until:
        assert "rowid>?" in step or "rowid<?" in step


@pytest.mark.parametrize("state", ["pending", "parked", "failed", "delivered", "all"])
def test_a_page_after_the_first_seeks_its_cursor(tmp_path, state):
    """GET /api/deliveries?before=ROWID: a keyset page, found by a seek, never an OFFSET."""
    conn = journal_sql.connect(tmp_path)
    sql, params = views.deliveries_query(state, None, ["crm"], 50, rowids=(None, 50))
    (step,) = [s for s in plan(conn, sql, params) if s.startswith(("SCAN d", "SEARCH d "))]
    assert "rowid<?" in step and "OFFSET" not in sql.upper()
    assert not any("TEMP B-TREE" in s for s in plan(conn, sql, params))


def test_pages_follow_one_another_without_a_gap_or_a_repeat(tmp_path):
    make_journal(tmp_path)
    state_dir = tmp_path / "state"
    everything = [r.id for r in views.list_deliveries(state_dir, state="all")]
    pages, before = [], None
    while True:
        page = views.list_deliveries(state_dir, state="all", limit=2, before=before)
        pages.append([r.id for r in page])
        if len(page) < 2:
            break
        before = page[-1].rowid
    assert [len(p) for p in pages] == [2, 2, 1] and sum(pages, []) == everything


def test_the_rowid_bound_of_a_time_matches_a_full_scan(tmp_path):
    """With gaps (retention's deletes) and many rows at the same time (one request's)."""
    conn = journal_sql.connect(tmp_path)
    times = [t // 3 for t in range(300) if t % 7 != 3]
    events = [(f"e{n}", "x", b"{}", float(t)) for n, t in enumerate(times)]
    deliveries = [(f"d{n}", f"e{n}", "crm", float(t), float(t)) for n, t in enumerate(times)]
    journal_sql.run_batch(conn, [("append", (events, deliveries))])
    conn.execute("DELETE FROM deliveries WHERE rowid BETWEEN 40 AND 90")
    rows = conn.execute("SELECT rowid, created_at FROM deliveries").fetchall()
    for at in [x / 2 for x in range(-2, 210)]:
        for after in (False, True):
            bound = views.first_rowid(conn, at, after=after)
            below = [c for r, c in rows if r < bound]
            above = [c for r, c in rows if r >= bound]
            assert all(c < at or (after and c == at) for c in below), (at, after)
            assert all(c > at or (not after and c == at) for c in above), (at, after)


def test_listing_opens_the_file_read_only(tmp_path):
    make_journal(tmp_path)
    path = tmp_path / "state" / "journal.sqlite3"
    before = path.stat().st_mtime_ns
    views.list_deliveries(tmp_path / "state", state="all")
    assert path.stat().st_mtime_ns == before
    with pytest.raises(FileNotFoundError):
        views.list_deliveries(tmp_path / "elsewhere")
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM deliveries").fetchone() == (5,)
