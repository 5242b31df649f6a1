"""Replays (relay/journal/replays.py, relay/delivery/replays.py, POST /api/replay) on trio's
MockClock: a fresh attempt budget counted from the replay, the backoff starting again at 10 s,
the attempts' numbers going on, nothing in flight replayed, and fresh traffic not starved.

The relay is the real one on its real journal; the transport is a test plugin (real sockets
and a clock that jumps do not mix), and the endpoint is called as the admin listener calls it.
"""

import json
import sqlite3
from types import SimpleNamespace

import pytest
import trio

from relay.admin.replays import replay as replay_endpoint
from relay.delivery import replays as delivery_replays
from relay.http.server import HTTPRequest
from relay.journal import replays as journal_replays
from relay.journal.replays import write_replays
from relay.model import Response
from tests.conftest import post_event, seed_events, start_with_transport


class Transport:
    """Answers ``statuses`` in turn (then ``then``), after ``hang`` seconds; notes each
    attempt's delivery id and when it started."""

    def __init__(self, statuses=(), then=200, hang=0.0):
        self.statuses = list(statuses)
        self.then = then
        self.hang = hang
        self.attempts: list[tuple[str, float]] = []

    async def send(self, webhook, request):
        self.attempts.append((request.header("relay-delivery-id"), trio.current_time()))
        await trio.sleep(self.hang)
        return Response(status=self.statuses.pop(0) if self.statuses else self.then)

    async def aclose(self):
        pass


def rows(relay, query, *args):
    with sqlite3.connect(relay.config.relay.state_dir / "journal.sqlite3") as conn:
        return conn.execute(query, args).fetchall()


async def replay(relay, **body) -> tuple[int, dict]:
    """POST /api/replay, as the admin listener hands it to its endpoint. (With no admin
    listener, as here, no pending count is made at start: as if it were done.)

    A replay by webhook selects its deliveries reading the file in a thread, and while it reads
    the mock clock jumps from timer to timer, days at a time: the relays of such tests keep
    what finished (``retention = 0``), or retention would take the deliveries meanwhile."""
    relay.pending_counted.set()
    request = HTTPRequest("POST", "/api/replay", {}, json.dumps(body).encode())
    return await replay_endpoint(SimpleNamespace(relay=relay), request, {})


async def test_a_replay_gives_a_fresh_budget_and_the_backoff_starts_again(
    nursery, tmp_path, autojump_clock
):
    transport = Transport(then=500)
    relay = await start_with_transport(nursery, tmp_path, transport)  # tries = 3
    await post_event(relay)
    await trio.sleep(10_000)
    [(delivery_id, state, attempts)] = rows(relay, "SELECT id, state, attempts FROM deliveries")
    assert (state, attempts) == ("failed", 3)

    replayed_at = trio.current_time()
    status, answer = await replay(relay, ids=[delivery_id], by="alice")
    assert status == 200
    assert answer["replayed"] == [
        {"id": delivery_id, "webhook_id": "crm", "state": "failed", "attempts": 3}
    ]
    assert answer["by"] == "alice via admin api from an unknown address"
    await trio.sleep(10_000)
    times = [at for _, at in transport.attempts]
    assert len(times) == 6  # three more tries: counted from the replay, not from the first
    assert times[3] - replayed_at == pytest.approx(0, abs=0.01)  # at once
    assert times[4] - times[3] == pytest.approx(10, abs=0.01)  # 10 s, not 1000 s
    assert times[5] - times[4] == pytest.approx(100, abs=0.01)
    assert rows(relay, "SELECT state, attempts, attempt_base FROM deliveries") == [("failed", 6, 3)]
    assert rows(relay, "SELECT number FROM attempts ORDER BY number") == [(n,) for n in range(1, 7)]
    [(by, before)] = rows(relay, "SELECT by, attempts_before FROM replays")
    assert (by, before) == ("alice via admin api from an unknown address", 3)


async def test_a_delivery_in_flight_is_not_replayed(nursery, tmp_path, autojump_clock):
    transport = Transport(hang=1000)
    relay = await start_with_transport(nursery, tmp_path, transport, {"timeout": 2000})
    await post_event(relay)
    await trio.sleep(1)
    [(delivery_id,)] = rows(relay, "SELECT id FROM deliveries")
    status, answer = await replay(relay, ids=[delivery_id, "nope"])
    assert status == 200
    assert answer["replayed"] == []
    assert answer["skipped"] == [
        {"id": delivery_id, "reason": journal_replays.IN_FLIGHT},
        {"id": "nope", "reason": journal_replays.UNKNOWN},
    ]
    assert rows(relay, "SELECT COUNT(*) FROM replays") == [(0,)]


async def test_a_dry_run_changes_nothing(nursery, tmp_path, autojump_clock):
    transport = Transport(then=500)
    relay = await start_with_transport(nursery, tmp_path, transport, {"tries": 1}, retention=0)
    for _ in range(3):
        await post_event(relay)
    await trio.sleep(10)
    before = rows(relay, "SELECT * FROM deliveries ORDER BY rowid")
    status, answer = await replay(relay, webhook="crm", dry_run=True)
    assert status == 200 and answer["dry_run"]
    assert [r["state"] for r in answer["replayed"]] == ["failed"] * 3
    await trio.sleep(1000)
    assert rows(relay, "SELECT * FROM deliveries ORDER BY rowid") == before
    assert len(transport.attempts) == 3


async def test_replayed_deliveries_do_not_starve_fresh_traffic(nursery, tmp_path, autojump_clock):
    """With a replay of 40 queued on a lane of 2 workers (an attempt takes 1 s), an event that
    comes in meanwhile is attempted before the replay's last: within a few rounds of the
    workers, not after all 40."""
    transport = Transport(then=500)
    webhook = {"tries": 1, "concurrency": 2, "timeout": 10}
    relay = await start_with_transport(nursery, tmp_path, transport, webhook, retention=0)
    for _ in range(40):
        await post_event(relay)
    await trio.sleep(100)
    assert rows(relay, "SELECT COUNT(*) FROM deliveries WHERE state = 'failed'") == [(40,)]
    transport.then, transport.hang = 200, 1.0
    transport.attempts.clear()
    status, answer = await replay(relay, webhook="crm")
    assert status == 200 and len(answer["replayed"]) == 40
    await trio.sleep(3.5)  # the replay is under way
    fresh = dict(seed_events()[0], payload={"id": "fresh"})
    await post_event(relay, fresh)
    arrived = trio.current_time()
    await trio.sleep(100)
    order = [delivery_id for delivery_id, _ in transport.attempts]
    assert len(order) == 41
    [(fresh_id,)] = rows(relay, "SELECT id FROM deliveries WHERE attempts = 1 AND attempt_base = 0")
    position = order.index(fresh_id)
    assert position < len(order) - 1  # before the replay's last
    started = dict(transport.attempts)[fresh_id]
    # Behind at most DEPTH rounds of queued replays and the round in flight (1 s each).
    assert started - arrived <= delivery_replays.DEPTH + 1 + 0.01


async def test_the_command_without_a_relay_replays_what_a_dead_run_held(tmp_path):
    """In the file, with no relay running: a delivery a dead run held in memory (next_at NULL)
    is held by nobody, and is replayed; a running relay's is not (held_ok)."""
    from relay.journal import sqlite as journal_sql

    conn = journal_sql.connect(tmp_path / "state")
    events = [(f"e{n}", "whatsapp:message:status", b"{}", 1.0) for n in range(2)]
    journal_sql.run_batch(
        conn, [("append", (events, [(f"d{n}", f"e{n}", "crm", 1.0, 1.0) for n in range(2)]))]
    )
    conn.close()
    done, left = write_replays(tmp_path / "state", ["d0"], 5.0, "bob", held_ok=False)
    assert (done, left) == ([], [("d0", journal_replays.IN_FLIGHT)])
    done, left = write_replays(tmp_path / "state", ["d0", "d0", "d1"], 5.0, "bob", held_ok=True)
    assert [d[0] for d in done] == ["d0", "d1"] and left == []
    again, left = write_replays(tmp_path / "state", ["d1"], 6.0, "bob", held_ok=True)
    assert again == [] and left == [("d1", journal_replays.WAITING)]
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as conn:
        assert (
            conn.execute("SELECT next_at FROM deliveries ORDER BY rowid").fetchall()
            == [(journal_replays.BAND + 5.0,)] * 2
        )
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)  # no run started


def test_retention_takes_a_deliverys_replays_with_it(tmp_path):
    from relay.journal import sqlite as journal_sql

    conn = journal_sql.connect(tmp_path / "state")
    events = [(f"e{n}", "whatsapp:message:status", b"{}", 1.0) for n in range(3)]
    deliveries = [(f"d{n}", f"e{n}", "crm", 1.0, 1.0) for n in range(3)]
    finished = [("delivered", 1, None, 2.0, "HTTP 200", f"d{n}") for n in range(3)]
    journal_sql.run_batch(
        conn, [("append", (events, deliveries)), ("record_attempts", ([], finished))]
    )
    journal_replays.replay(conn, ["d0", "d1"], 1.5, "bob")
    conn.execute("UPDATE deliveries SET state = 'delivered', next_at = NULL")
    assert journal_sql.prune(conn, 0, 100.0, 10) == (3, 2, False)  # the newest event stays
    assert conn.execute("SELECT delivery_id FROM replays").fetchall() == []
