"""Nothing acknowledged is stranded: not by journal writes that fail for a while (a full disk),
not by a clock that stepped back across a crash, not by a journal of an older schema.

In-process relays on trio's MockClock with the real journal in tmp_path, or on PostgreSQL
(parametrized: tests/postgres.py; the inline writer, wrapped to fail as a full disk does), and
the real daemon on a real full disk (a small tmpfs)
where the machine lets the test mount one.
"""

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from relay import daemon as daemon_module
from relay.clock import Clock
from relay.http.server import HTTPRequest
from relay.ingest.api import Api
from relay.journal import schema
from relay.journal import sqlite as journal_sql
from relay.journal.committer import InlineWriter
from tests.conftest import (
    RecordingTransport,
    no_retry_delay,
    post_event,
    seed_events,
    start_receiver,
    start_with_transport,
)
from tests.daemon import Daemon, write_config
from tests.postgres import rows

FULL = "database or disk is full"


class FillingDisk:
    """The inline writer on a disk that fills and empties: while ``full``, every batch fails
    as SQLite fails it then (each operation with its error), and nothing is written."""

    def __init__(self, writer: InlineWriter):
        self.writer = writer
        self.full = False

    async def run(self, batch):
        await trio.lowlevel.checkpoint()
        if self.full:
            return [(False, FULL)] * len(batch)
        return await self.writer.run(batch)

    async def aclose(self) -> None:
        await self.writer.aclose()


@pytest.fixture
def disk(monkeypatch) -> list[FillingDisk]:
    """Each journal the relays in this test open, on a disk the test fills and empties."""
    opened: list[FillingDisk] = []
    start = InlineWriter.start.__func__

    async def filling(cls, state_dir, **engine):
        opened.append(FillingDisk(await start(cls, state_dir, **engine)))
        return opened[-1]

    monkeypatch.setattr(InlineWriter, "start", classmethod(filling))
    return opened


async def get(relay, path: str) -> tuple[int, dict]:
    return await Api(relay)(HTTPRequest("GET", path, {}, b""))


def states(relay) -> dict[str, int]:
    return dict(
        rows(
            relay.config.relay.state_dir,
            relay.config.journal.url,
            "SELECT state, count(*) FROM deliveries GROUP BY state",
        )
    )


async def test_deliveries_whose_outcome_could_not_be_written_are_delivered_after_it_can(
    nursery, tmp_path, disk, autojump_clock, journal_url
):
    # Attempts take a second, the first ten fail (each retry sleeps in the journal), and the
    # lane holds 2 + 2: the rest of the 30 events wait on disk, handed back by put_to_sleep.
    transport = RecordingTransport(statuses=[500] * 10, hang=1.0)
    webhook = {"concurrency": 2, "backoff": no_retry_delay()}
    relay = await start_with_transport(
        nursery, tmp_path, transport, webhook, queue=2, journal_url=journal_url
    )
    for _ in range(30):
        await post_event(relay)
    (journal,) = disk

    journal.full = True
    body = json.dumps(seed_events()[0]).encode()
    request = HTTPRequest("POST", "/events", {"content-type": "application/json"}, body)
    status, answer = await Api(relay)(request)
    assert status == 503 and FULL in answer["error"]
    await trio.sleep(30)  # attempts finish, their outcomes fail; claims fail
    assert len(transport.times) >= 4
    status, health = await get(relay, "/healthz")
    assert (status, health["status"], health["journal_error"]) == (503, "journal failing", FULL)

    journal.full = False
    await trio.sleep(300)
    assert states(relay) == {"delivered": 30}
    status, health = await get(relay, "/healthz")
    assert (status, health["status"]) == (200, "ok")
    assert "journal_error" not in health


async def test_healthz_recovers_without_traffic_once_writes_succeed(
    nursery, tmp_path, disk, autojump_clock, journal_url
):
    relay = await start_with_transport(
        nursery, tmp_path, RecordingTransport(), journal_url=journal_url
    )
    (journal,) = disk
    journal.full = True
    body = json.dumps(seed_events()[0]).encode()
    request = HTTPRequest("POST", "/events", {"content-type": "application/json"}, body)
    assert (await Api(relay)(request))[0] == 503
    assert (await get(relay, "/healthz"))[0] == 503
    journal.full = False
    await trio.sleep(60)  # no event comes: the journal's probe finds the disk has room
    assert (await get(relay, "/healthz"))[0] == 200


class AnHourEarlier(Clock):
    """The wall clock stepped back an hour since the last run (NTP, a VM restored)."""

    def __init__(self):
        super().__init__()
        self._offset -= 3600


async def test_in_flight_at_a_crash_resumes_though_the_clock_stepped_back(
    tmp_path, monkeypatch, autojump_clock, journal_url
):
    """On PostgreSQL as on SQLite: the relay restarted on its state_dir takes back what its
    last run held at once (that run is dead), not when its leases expire."""
    hanging = RecordingTransport(hang=1000)
    async with trio.open_nursery() as crashing:
        relay = await start_with_transport(crashing, tmp_path, hanging, journal_url=journal_url)
        for _ in range(3):
            await post_event(relay)
        await trio.sleep(1)
        assert len(hanging.times) == 3  # in flight
        crashing.cancel_scope.cancel()  # the journal closes without their outcomes
    assert states(relay) == {"pending": 3}

    monkeypatch.setattr(daemon_module, "Clock", AnHourEarlier)
    transport = RecordingTransport()
    async with trio.open_nursery() as nursery:
        relay = await start_with_transport(nursery, tmp_path, transport, journal_url=journal_url)
        await trio.sleep(10)
        assert len(transport.times) == 3
        assert states(relay) == {"delivered": 3}
        nursery.cancel_scope.cancel()


def test_a_run_recovers_the_rows_of_dead_runs_not_its_own(tmp_path):
    """By run id: rows this run appended or claimed are its own, however their times read."""
    event = ("e1", "whatsapp:message:status", b"{}", 1.0)
    dead = journal_sql.connect(tmp_path)
    journal_sql.append(dead, [event], [("held", "e1", "crm", 5.0, 5.0)])
    journal_sql.append(dead, [], [("asleep", "e1", "crm", 5.0, 5.0)])
    journal_sql.put_to_sleep(dead, [(1.0, "asleep")])
    dead.close()

    run = journal_sql.connect(tmp_path)
    assert run.run_id == dead.run_id + 1
    journal_sql.append(run, [], [("mine", "e1", "crm", 1.0, 1.0)])  # older times than "held"
    assert [r[0] for r in journal_sql.claim_due(run, "crm", 2.0, 10)] == ["asleep"]
    upto = journal_sql.last_rowid(run)
    assert journal_sql.recover(run, 0, upto, 3.0) == 1
    due = run.execute("SELECT id FROM deliveries WHERE next_at IS NOT NULL").fetchall()
    assert due == [("held",)]


SCHEMA_1 = """
CREATE TABLE events (id TEXT PRIMARY KEY, name TEXT NOT NULL, body BLOB NOT NULL,
    received_at REAL NOT NULL);
CREATE TABLE deliveries (id TEXT PRIMARY KEY, event_id TEXT NOT NULL REFERENCES events (id),
    webhook_id TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, last_outcome TEXT);
CREATE INDEX deliveries_asleep ON deliveries (webhook_id, next_at) WHERE next_at IS NOT NULL;
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE TABLE attempts (delivery_id TEXT NOT NULL, number INTEGER NOT NULL,
    started_at REAL NOT NULL, duration REAL NOT NULL, status INTEGER, error TEXT,
    PRIMARY KEY (delivery_id, number)) WITHOUT ROWID;
CREATE TABLE bindings (message_id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL,
    expires_at REAL NOT NULL) WITHOUT ROWID;
PRAGMA user_version=1;
"""


async def test_a_journal_of_schema_1_is_migrated_and_its_in_flight_deliveries_resume(
    nursery, tmp_path, autojump_clock
):
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / journal_sql.FILENAME) as conn:
        conn.executescript(SCHEMA_1)
        body = json.dumps(seed_events()[0]).encode()
        conn.execute("INSERT INTO events VALUES ('e1', 'whatsapp:message:status', ?, 1.0)", (body,))
        conn.execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at)"
            " VALUES ('d1', 'e1', 'crm', 1.0, 9e99)"
        )  # touched "later" than any start
    conn.close()
    transport = RecordingTransport()
    relay = await start_with_transport(nursery, tmp_path, transport)
    await trio.sleep(10)
    assert len(transport.times) == 1
    assert states(relay) == {"delivered": 1}
    with sqlite3.connect(state / journal_sql.FILENAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (journal_sql.SCHEMA_VERSION,)
        # Recovered, then claimed by the journal's first run.
        assert conn.execute("SELECT held_by FROM deliveries").fetchall() == [(1,)]


def test_a_journal_of_schema_2_gains_requests_responses_replays_and_order_keys(tmp_path):
    """Schema 2 to 3 keeps every row, and adds what operators read (attempts' request and
    response), replays, and ordering per key, with the values that mean "none yet"."""
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / journal_sql.FILENAME) as conn:
        conn.executescript(SCHEMA_1)
        schema._migrate_from_1(conn)
        conn.execute("INSERT INTO events VALUES ('e1', 'whatsapp:message:status', '{}', 1.0)")
        conn.execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, state, attempts, created_at,"
            " updated_at) VALUES ('d1', 'e1', 'crm', 'failed', 3, 1.0, 2.0)"
        )
        conn.execute("INSERT INTO attempts VALUES ('d1', 3, 1.5, 0.1, 500, NULL)")
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    conn.close()
    conn = journal_sql.connect(state)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        assert conn.execute(
            "SELECT state, attempts, order_key, attempt_base FROM deliveries"
        ).fetchall() == [("failed", 3, None, 0)]
        assert conn.execute(
            "SELECT number, status, request, response FROM attempts"
        ).fetchall() == [(3, 500, None, None)]
        assert conn.execute("SELECT count(*) FROM replays").fetchone() == (0,)
        assert journal_sql.schema_problems(schema._columns(conn)) == []
    finally:
        conn.close()


# -- a real disk that fills ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """``tmp_path/state`` on a tmpfs of 64 MB, when this process may mount one (as root)."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a disk that fills needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(state)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(filler: Path) -> None:
    """Write to ``filler`` (made while there was room) until the disk has none left. Unbuffered:
    a buffered file still holding what the full disk refused raised ENOSPC again as it closed."""
    with filler.open("ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


async def test_a_disk_that_fills_and_empties_strands_nothing(tmp_path, nursery, small_disk):
    receiver = await start_receiver(nursery)
    receiver.statuses = [503] * 1_000_000  # down: each delivery retries every 0.2 s
    filler = small_disk / "filler"
    filler.touch()
    daemon = await Daemon(write_config(tmp_path, receiver.url)).start()
    acknowledged: set[str] = set()
    seen_503 = seen_failing = False
    try:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:

            async def post(n: int) -> int:
                events = [marked(i) for i in range(n, n + 10)]
                response = await client.post("/events", json=events)
                if response.status_code == 202:
                    acknowledged.update(e["payload"]["foreign_id"] for e in events)
                return response.status_code

            for n in range(0, 200, 10):
                assert await post(n) == 202
            await receiver.wait_for(200)
            fill(filler)
            with trio.fail_after(30):  # the journal runs out of room (its WAL first)
                n = 200
                while not (seen_503 and seen_failing):
                    seen_503 = seen_503 or await post(n) == 503
                    health = await client.get("/healthz")
                    seen_failing = seen_failing or (
                        health.status_code == 503 and health.json()["status"] == "journal failing"
                    )
                    n += 10
                    await trio.sleep(0.05)
            await trio.sleep(2)  # retries go on, and their outcomes fail to be written
            filler.unlink()
            receiver.statuses.clear()
            with trio.fail_after(60):
                while not acknowledged <= {b["payload"]["foreign_id"] for b in receiver.bodies()}:
                    await trio.sleep(0.1)
                while (await client.get("/healthz")).status_code != 200:
                    await trio.sleep(0.1)
                while pending(small_disk):
                    await trio.sleep(0.1)
    finally:
        daemon.process.terminate()
        await daemon.wait()


def marked(i: int) -> dict:
    status = seed_events()[0]
    return {**status, "payload": {**status["payload"], "foreign_id": f"m{i}"}}


def pending(state: Path) -> int:
    with sqlite3.connect(state / journal_sql.FILENAME, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
