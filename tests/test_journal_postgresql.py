"""What sharing one PostgreSQL journal adds (relay/journal/postgresql.py): leases and their
takeover, claims that skip what another relay is claiming, one key in flight across relays,
notifications between relays, the URL's password never shown.

Several "relays" here are journal connections of their own on one database of the private
server (tests/postgres.py), each with its own state_dir, as relays on different machines
would be. A lease's expiry is the server's clock passing its deadline: the tests move the
deadline into the past rather than wait for it.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
import trio

from relay.journal import pg_replays, pg_schema
from relay.journal import postgresql as pg
from relay.journal.committer import Journal
from relay.journal.engines import masked, scrub
from relay.model import Delivery, Event

EVENT = ("e1", "whatsapp:message:status", b"{}", 1.0)


def relay(tmp_path, url, name: str, lease: float = 30.0) -> pg.PgJournal:
    return pg.connect(tmp_path / name, url, lease=lease)


def ok(conn, *batch):
    results = pg.run_batch(conn, list(batch))
    assert all(good for good, _ in results), results
    return [result for _, result in results]


def held(url) -> dict[str, tuple]:
    with psycopg.connect(url) as conn:
        return {
            i: (h, n)
            for i, h, n in conn.execute("SELECT id, held_by, next_at FROM deliveries").fetchall()
        }


def state(url, delivery_id: str) -> tuple[str, int]:
    with psycopg.connect(url) as conn:
        query = "SELECT state, attempts FROM deliveries WHERE id = %s"
        return tuple(conn.execute(query, (delivery_id,)).fetchone())


def expire(url, run_id: int) -> None:
    """As if ``run_id`` stopped renewing a lease ago: its heartbeat and leases in the past."""
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE runs SET seen_at = seen_at - 3600 WHERE id = %s", (run_id,))
        conn.execute(
            "UPDATE deliveries SET lease_until = lease_until - 3600 WHERE held_by = %s", (run_id,)
        )


def test_a_dead_relays_deliveries_are_taken_over_once_its_leases_expire(tmp_path, postgresql_url):
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    ok(a, ("append", ([EVENT], [("d1", "e1", "crm", 1.0, 1.0), ("d2", "e1", "crm", 1.0, 1.0)])))
    assert ok(b, ("renew_leases", ())) == [0]  # a's leases run: nothing to take
    assert ok(b, ("claim_due", ("crm", 2.0, 10))) == [[]]

    expire(postgresql_url, a.run_id)  # a died: no more renewals
    assert ok(b, ("renew_leases", ())) == [2]
    claimed = ok(b, ("claim_due", ("crm", 9e9, 10)))[0]
    assert sorted(row[0] for row in claimed) == ["d1", "d2"]
    assert {h for h, _ in held(postgresql_url).values()} == {b.run_id}

    # a was not dead, only cut off: its late outcome is dropped, b's counts.
    late = (
        [("d1", 1, 2.0, 0.1, 200, None, None, None)],
        [("delivered", 1, None, 2.1, "200", "d1")],
    )
    ok(a, ("record_attempts", late))
    assert state(postgresql_url, "d1") == ("pending", 0)
    ok(b, ("record_attempts", late))
    assert state(postgresql_url, "d1") == ("delivered", 1)


def test_a_relay_that_renews_keeps_its_deliveries(tmp_path, postgresql_url):
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    ok(a, ("append", ([EVENT], [("d1", "e1", "crm", 1.0, 1.0)])))
    expire(postgresql_url, a.run_id)
    ok(a, ("renew_leases", ()))  # in time: a renews before b looks
    assert ok(b, ("renew_leases", ())) == [0]
    assert held(postgresql_url)["d1"] == (a.run_id, None)


def test_a_restarted_relay_takes_back_what_its_earlier_runs_held_and_no_one_elses(
    tmp_path, postgresql_url
):
    """Two crashes in a row: the second run dies before it recovered the first's, and the
    third takes back both runs' at once, not the other relay's."""
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    ok(a, ("append", ([EVENT], [("first", "e1", "crm", 1.0, 1.0)])))
    ok(b, ("append", ([], [("bs", "e1", "crm", 1.0, 1.0)])))
    a.raw.close()  # kill -9: the run is not ended
    second = relay(tmp_path, postgresql_url, "a")
    assert second.owner == a.owner and second.previous_run == a.run_id
    ok(second, ("append", ([], [("second", "e1", "crm", 1.0, 1.0)])))
    second.raw.close()  # killed again, before its recovery
    third = relay(tmp_path, postgresql_url, "a")
    [previous] = ok(third, ("last_rowid", ()))
    assert ok(third, ("recover", (0, previous, 5.0))) == [2]
    assert held(postgresql_url) == {
        "first": (a.run_id, 5.0),
        "second": (second.run_id, 5.0),
        "bs": (b.run_id, None),
    }
    with psycopg.connect(postgresql_url) as conn:
        ended = conn.execute("SELECT id FROM runs WHERE ended_at IS NOT NULL ORDER BY id")
        assert [run_id for (run_id,) in ended] == [a.run_id, second.run_id]
    third.raw.close()
    assert ok(relay(tmp_path, postgresql_url, "a"), ("recover", (0, 1, 6.0))) == [0]


def test_a_state_dir_noted_by_schema_1_recovers_its_last_run_by_id(tmp_path, postgresql_url):
    """A note without an owner (written before schema 2): that run is still taken back."""
    a = relay(tmp_path, postgresql_url, "a")
    ok(a, ("append", ([EVENT], [("d1", "e1", "crm", 1.0, 1.0)])))
    a.raw.close()
    note = tmp_path / "a" / "journal.run"
    journal_id, run_id, _ = note.read_text().split()
    note.write_text(f"{journal_id} {run_id}\n")
    with psycopg.connect(postgresql_url) as conn:
        conn.execute("UPDATE runs SET owner = NULL")
    again = relay(tmp_path, postgresql_url, "a")
    assert again.owner != a.owner
    assert ok(again, ("recover", (0, 1, 5.0))) == [1]
    assert note.read_text().split() == [journal_id, str(again.run_id), again.owner]


def test_a_relay_taken_for_dead_that_comes_back_is_live_again(tmp_path, postgresql_url):
    """a, cut off past its lease, was taken over and its run ended; it reconnects and holds
    more: once it dies for good, b takes that over too (the run is not left ended)."""
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    ok(a, ("append", ([EVENT], [("d1", "e1", "crm", 1.0, 1.0)])))
    expire(postgresql_url, a.run_id)
    assert ok(b, ("renew_leases", ())) == [1]
    with psycopg.connect(postgresql_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (a.backend_pid,))
    [(good, _)] = pg.run_batch(a, [("probe", (1.0,))])  # finds the connection lost
    assert not good
    ok(a, ("append", ([], [("d2", "e1", "crm", 1.0, 1.0)])))  # on a new one
    a.raw.close()  # and now a dies, before its next renewal
    expire(postgresql_url, a.run_id)
    assert ok(b, ("renew_leases", ())) == [1]
    assert held(postgresql_url)["d2"][1] is not None  # due: someone's to claim


def test_a_claim_skips_what_another_relay_is_claiming(tmp_path, postgresql_url):
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    rows = [(f"d{n}", "e1", "crm", 1.0, 1.0) for n in range(4)]
    ok(a, ("append", ([EVENT], rows)), ("put_to_sleep", ([(1.0, r[0]) for r in rows],)))
    with a.raw.transaction():  # a's claim, not committed yet: its rows are locked
        mine = pg.claim_due(a, "crm", 2.0, 2)
        theirs = ok(b, ("claim_due", ("crm", 2.0, 10)))[0]  # does not wait for a
    assert len(mine) == 2 and len(theirs) == 2
    assert not {r[0] for r in mine} & {r[0] for r in theirs}


def test_one_key_in_flight_though_two_relays_append_to_it_at_once(tmp_path, postgresql_url):
    """b appends to a key while a's append to it is not committed: b waits for the key's
    lock, then sees a's delivery pending, and its own waits."""
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    ok(a, ("append", ([EVENT], [])))
    paths = {"crm": "payload.id"}
    results = []
    with a.raw.transaction():
        pg.lock_keys(a, [("crm", "k")])
        pg.append_ordered(a, [], [], [], [], 1.0, ([("d1", "e1", "crm", 1.0, 1.0, "k")], paths))
        second = ([("d2", "e1", "crm", 1.0, 1.0, "k")], paths)
        batch = [("append_ordered", ([], [], [], [], 1.0, second))]
        appending = threading.Thread(target=lambda: results.extend(pg.run_batch(b, batch)))
        appending.start()
        with psycopg.connect(postgresql_url) as watcher:  # until b waits for the key's lock
            while (
                appending.is_alive()
                and not watcher.execute(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchall()
            ):
                time.sleep(0.005)
    appending.join(30)
    assert results == [(True, ([], ["d2"]))]
    assert held(postgresql_url) == {"d1": (a.run_id, None), "d2": (None, float("inf"))}

    # a finishes d1: the next of its key, b's, becomes due.
    done = (
        [("d1", 1, 2.0, 0.1, 200, None, None, None)],
        [("delivered", 1, None, 2.1, "200", "d1")],
    )
    ok(a, ("record_attempts", (*done, [(3.0, "d1")])))
    assert held(postgresql_url)["d2"] == (None, 3.0)


async def test_another_relays_retry_and_state_change_reach_this_relay(tmp_path, postgresql_url):
    woken, states = trio.Event(), trio.Event()
    async with Journal.open(tmp_path / "a", mode="inline", url=postgresql_url) as journal:
        journal.on_late_writes(woken.set)
        journal.on_states_changed(states.set)
        event = Event(*EVENT)
        await journal.append([event], [Delivery("d1", "crm", event)], 1.0)
        b = relay(tmp_path, postgresql_url, "b")
        with trio.fail_after(10):
            while True:  # until a listens (it connects beside the writer)
                with psycopg.connect(postgresql_url) as conn:
                    listening = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"
                    ).fetchone()[0]
                if listening:
                    break
                await trio.sleep(0.01)
            ok(b, ("append", ([], [("d2", "e1", "crm", 1.0, 1.0)])))
            ok(b, ("put_to_sleep", ([(5.0, "d2")],)))  # b hands one back: due at 5
            await woken.wait()
            ok(b, ("set_webhook_state", ("crm", False, "410 Gone", 2.0)))
            await states.wait()
        b.close()


def test_no_message_shows_the_urls_password():
    url = "postgresql://relay:s3cr%40t@db.example.com:5432/relay"
    assert masked(url) == "postgresql://relay:***@db.example.com:5432/relay"
    assert "s3cr" not in scrub(f"could not connect to {url}: password s3cr%40t refused", url)
    assert masked("postgresql://db/relay") == "postgresql://db/relay"
    # libpq also takes it as a parameter of the query string.
    url = "postgresql://relay@/relay?host=/run/postgresql&password=s3cr%40t&sslmode=disable"
    assert (
        masked(url) == "postgresql://relay@/relay?host=/run/postgresql&password=***&sslmode=disable"
    )
    assert "s3cr" not in scrub(f"could not connect to {url}: password s3cr@t refused", url)


def test_a_database_that_is_no_journal_is_refused_not_taken(tmp_path, postgresql_server):
    url = postgresql_server.new_database(empty=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (x int)")
    with pytest.raises(pg.OPEN_ERRORS, match="not a relay journal"):
        pg.connect(tmp_path, url)


def test_a_journal_missing_a_column_is_refused_naming_it(tmp_path, postgresql_url):
    with psycopg.connect(postgresql_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE deliveries DROP COLUMN order_key")
    with pytest.raises(pg.OPEN_ERRORS, match="table deliveries has no column order_key"):
        pg.connect(tmp_path, postgresql_url)


def test_a_schema_1_journal_is_migrated_and_its_runs_keep_going(tmp_path, postgresql_server):
    """Schema 2 adds runs.owner: a run of schema 1 (no owner) is still recovered by the
    note's run id (test_a_state_dir_noted_by_schema_1_recovers_its_last_run_by_id)."""
    url = postgresql_server.new_database(empty=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(pg_schema.MIGRATIONS[1])
        conn.execute("INSERT INTO journal_schema VALUES (1, 'j1')")
        conn.execute("INSERT INTO runs (started_at, seen_at) VALUES (1, 1)")
    with psycopg.connect(url, autocommit=True) as conn:
        assert pg_schema.migrate(conn, "db") == (1, pg_schema.SCHEMA_VERSION)
        assert pg_schema.migrate(conn, "db") == (pg_schema.SCHEMA_VERSION,) * 2
        assert conn.execute("SELECT id, owner FROM runs").fetchall() == [(1, None)]
    assert relay(tmp_path, url, "a").owner is not None


# -- what the operate branch added to the journal (relay/journal/pg_replays.py) --------------


def test_attempts_keep_their_request_and_response_and_claims_their_attempt_base(
    tmp_path, postgresql_url
):
    a = relay(tmp_path, postgresql_url, "a")
    ok(a, ("append", ([EVENT], [("d1", "e1", "crm", 1.0, 1.0)])))
    attempt = ("d1", 1, 2.0, 0.1, 500, None, b"POST /hook", b"HTTP/1.1 500")
    ok(a, ("record_attempts", ([attempt], [("pending", 1, 3.0, 2.1, "HTTP 500", "d1")])))
    with psycopg.connect(postgresql_url) as conn:
        stored = conn.execute("SELECT request, response FROM attempts").fetchall()
    assert stored == [(b"POST /hook", b"HTTP/1.1 500")]
    [claimed] = ok(a, ("claim_due", ("crm", 9.0, 10)))
    assert claimed == [("d1", 1, "e1", "whatsapp:message:status", b"{}", 1.0, 0)]


def test_a_replay_is_claimed_in_its_order_under_a_lease_and_heard_by_the_others(
    tmp_path, postgresql_url
):
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    rows = [(f"d{n}", "e1", "crm", 1.0, 1.0) for n in range(3)]
    done = [("failed", 3, None, 2.0, "HTTP 500", f"d{n}") for n in range(3)]
    ok(a, ("append", ([EVENT], rows)), ("record_attempts", ([], done)))
    ok(a, ("replay", (["d2"], 5.0, "alice")), ("replay", (["d0", "d1"], 6.0, "alice")))
    assert ok(a, ("claim_due", ("crm", 9e9, 10))) == [[]]  # replays wait in their own queue
    [claimed] = ok(b, ("claim_replays", ("crm", 7.0, 10)))
    assert [(row[0], row[1], row[6]) for row in claimed] == [(f"d{n}", 3, 3) for n in (2, 0, 1)]
    assert {held_by for held_by, _ in held(postgresql_url).values()} == {b.run_id}
    with psycopg.connect(postgresql_url) as conn:
        leased = conn.execute("SELECT COUNT(*) FROM deliveries WHERE lease_until IS NOT NULL")
        assert leased.fetchone() == (3,)
        by = conn.execute("SELECT delivery_id, attempts_before FROM replays ORDER BY 1")
        assert by.fetchall() == [("d0", 3), ("d1", 3), ("d2", 3)]


def test_a_replay_skips_what_a_live_relay_holds_even_with_held_ok(tmp_path, postgresql_url):
    """held_ok (no relay on this state_dir) frees only what a dead relay held: its lease has
    expired. Another relay may be running, and what it holds stays its own."""
    a, b = relay(tmp_path, postgresql_url, "a"), relay(tmp_path, postgresql_url, "b")
    ok(a, ("append", ([EVENT], [("d1", "e1", "crm", 1.0, 1.0)])))
    [(replayed, skipped)] = ok(b, ("replay", (["d1"], 5.0, "bob", True)))
    assert replayed == [] and skipped == [("d1", pg_replays.IN_FLIGHT)]
    expire(postgresql_url, a.run_id)
    [(replayed, skipped)] = ok(b, ("replay", (["d1"], 5.0, "bob", True)))
    assert [r[0] for r in replayed] == ["d1"] and skipped == []
