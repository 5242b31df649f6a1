"""Promises that deliberate bugs (mutants planted one at a time) once broke with the whole suite
still passing; each test here fails on its mutant (named in its docstring).

Real parts: the relay in this process on a real journal, or the real daemon as a subprocess
where the promise is about the process; receivers are conftest's (h11, not relay's HTTP).
"""

import itertools
import json
import logging
import signal
import socket
import sqlite3
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from relay import config as config_module
from relay.http import server as http_server
from relay.http.client import HTTPClient
from relay.http.http11 import HTTPStream
from relay.journal import committer
from relay.journal import sqlite as journal_sql
from relay.journal.committer import Journal, JournalError, ProcessWriter
from relay.journal.health import RETRY_FIRST, Health, Op
from relay.model import Delivery, Event, Outcome, Request, Response
from relay.plugins import hookimpl
from relay.plugins.builtin.backoff import exponential
from tests.cli import relay_cli
from tests.conftest import (
    RunningRelay,
    make_config,
    no_retry_delay,
    post_event,
    relay_of,
    seed_events,
    start_receiver,
    start_with_transport,
)
from tests.daemon import Daemon, webhook_toml, write_config
from tests.test_http_server import Handler, exchange, start_server
from tests.test_http_server import request as http_request
from tests.test_policy import Transport as PolicyTransport
from tests.test_reload import wait_for_log

STATUS = seed_events()[0]


def journal_rows(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute(sql).fetchall()


async def health(url: str) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return (await client.get("/healthz")).json()


@pytest.fixture
def start_from_file(tmp_path, nursery):
    """``await start_from_file(webhooks_toml, **relay_settings)``: a relay in this process on
    a real relay.toml, which ``delivery = "process"`` needs (its process reads the file), as
    does a reload."""

    async def start(webhooks: str, **settings) -> RunningRelay:
        path = tmp_path / "relay.toml"
        relay_table = {
            "listen": "127.0.0.1:0",
            "state_dir": "state",
            "allow_networks": ["127.0.0.0/8"],  # the receivers listen on loopback
            **settings,
        }
        lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in relay_table.items())
        path.write_text(f"[relay]\n{lines}{webhooks}")
        relay = relay_of(config_module.load(path))
        addresses = await nursery.start(relay.run)
        tcp = next(a for a in addresses if not a.startswith("/"))
        return RunningRelay(relay=relay, url=f"http://{tcp}", socket=None)

    return start


# -- the journal -------------------------------------------------------------------------


async def test_concurrent_requests_share_commits(start_relay, monkeypatch):
    """Mutant: the committer sends one operation per batch (group commit off). No webhook: an
    outcome waiting to ride along with an append would gather the appends queued meanwhile
    (so a committer that batched only then would pass)."""
    batches: list[int] = []  # the appends in each batch the writer process commits
    run = committer.ProcessWriter.run

    async def noting(self, batch):
        batches.append(sum(name == "append" for name, _ in batch))
        return await run(self, batch)

    monkeypatch.setattr(committer.ProcessWriter, "run", noting)
    running = await start_relay([], journal="process")
    count = 32
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:

        async def post():
            assert (await client.post("/events", json=STATUS)).status_code == 202

        async with trio.open_nursery() as clients:
            for _ in range(count):
                clients.start_soon(post)
    assert sum(batches) == count  # every request was one append
    assert len([n for n in batches if n]) < count


async def test_the_journal_is_wal_and_fsyncs_every_commit(tmp_path):
    """Mutant: ``PRAGMA synchronous=OFF`` (or NORMAL) where the journal connects."""
    conn = journal_sql.connect(tmp_path)
    try:
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    # The writer process's own connection set WAL on the file (a setting the file keeps).
    async with committer.Journal.open(tmp_path / "process") as journal:
        assert await journal.last_rowid() == 0
    assert journal_rows(tmp_path / "process" / committer.FILENAME, "PRAGMA journal_mode") == [
        ("wal",)
    ]


async def test_a_write_the_journal_refuses_is_a_503_and_nothing_is_kept(
    start_relay, receiver, monkeypatch
):
    """Mutant: ingest acknowledges (202) what the journal failed to write. (A full disk: the
    writer is alive, its transaction fails.)"""
    running = await start_relay([{"id": "crm", "url": receiver.url}], journal="inline")

    def full(conn, event_rows, delivery_rows):
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setitem(journal_sql.OPERATIONS, "append", full)
        refused = await running.post(STATUS)
    assert refused.status_code == 503, refused.text
    assert "database or disk is full" in refused.json()["error"]
    assert journal_rows(running.journal_path, "SELECT COUNT(*) FROM events") == [(0,)]
    assert (await running.post(STATUS)).status_code == 202  # and it recovers
    await receiver.wait_for(1)
    assert receiver.requests[1:] == []  # the refused event was never delivered


# Survivors of scripts/mutate on relay/journal/committer.py that showed a gap.


def hook_delivery(n: int) -> Delivery:
    return Delivery(f"d{n}", "hook", Event(f"e{n}", "whatsapp:message:status", b"{}", 0.0))


async def test_recovery_in_steps_reaches_every_row(tmp_path):
    """Mutant: the steps' bounds computed wrong (``after ^ step``): journals in the tests were
    smaller than one step of 20,000 rows, so the second step was never taken."""
    async with committer.Journal.open(tmp_path, mode="inline") as journal:
        deliveries = [hook_delivery(n) for n in range(7)]
        await journal.append([d.event for d in deliveries], deliveries, 1.0)
    async with committer.Journal.open(tmp_path, mode="inline") as journal:
        steps = []
        assert await journal.recover(7, 2.0, step=2, wake=lambda: steps.append(1)) == 7
        assert len(steps) == 4
        assert len(await journal.claim_due("hook", 3.0, 100)) == 7


async def test_an_attempt_is_recorded_as_finished_when_it_ended(tmp_path):
    """Mutant: ``updated_at`` of an attempt's outcome miscomputed. Retention counts from it, and
    recovery tells the dead run's rows from this run's by it."""
    async with committer.Journal.open(tmp_path, mode="inline") as journal:
        d = hook_delivery(1)
        await journal.append([d.event], [d], 1.0)
        await journal.record_attempt(d, 100.0, Outcome(2.5, 204), next_at=None)
    path = tmp_path / committer.FILENAME
    assert journal_rows(path, "SELECT state, updated_at FROM deliveries") == [("delivered", 102.5)]
    assert journal_rows(path, "SELECT started_at, duration, status FROM attempts") == [
        (100.0, 2.5, 204)
    ]


async def test_writes_that_merge_land_on_their_own_rows(tmp_path):
    """Mutant: a merged write's rows added to the batch's first operation, not the one it
    merges into (``batch[-0]``): a batch of a hand-back then two outcomes."""
    async with committer.Journal.open(tmp_path, mode="inline") as journal:
        ds = [hook_delivery(n) for n in range(3)]
        await journal.append([d.event for d in ds], ds, 1.0)
        await journal.put_to_sleep([ds[0].id], 5.0)
        await journal.record_attempt(ds[1], 2.0, Outcome(0.5, 204), next_at=None)
        await journal.record_attempt(ds[2], 2.0, Outcome(0.5, 500), next_at=None)
        assert [d.id for d in await journal.claim_due("hook", 6.0, 10)] == ["d0"]
    path = tmp_path / committer.FILENAME
    assert journal_rows(path, "SELECT id, state FROM deliveries ORDER BY id") == [
        ("d0", "pending"),
        ("d1", "delivered"),
        ("d2", "failed"),
    ]


async def test_a_batch_holds_at_most_max_batch_operations(tmp_path, monkeypatch):
    """Mutant: the cap compared by identity (``is not MAX_BATCH``), so never reached."""
    monkeypatch.setattr(committer, "MAX_BATCH", 300)  # past the small ints Python caches
    sizes = []
    inline = await committer.InlineWriter.start(tmp_path)

    class Noting:
        async def run(self, batch):
            sizes.append(len(batch))
            return await inline.run(batch)

        async def aclose(self):
            await inline.aclose()

    async with committer.Journal.running(Noting(), ride_along=0) as journal:
        async with trio.open_nursery() as nursery:
            for _ in range(700):
                nursery.start_soon(journal.last_rowid)
    assert sum(sizes) == 700 and max(sizes) == 300


# -- what counts as delivered ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [(200, "delivered"), (299, "delivered"), (300, "failed"), (301, "failed"), (399, "failed")],
)
async def test_only_a_2xx_answer_delivers(start_relay, receiver, status, state):
    """Mutant: ``Outcome.ok`` taking 3xx (a redirect, which relay does not follow) as
    delivered."""
    receiver.statuses = [status]
    running = await start_relay([{"id": "crm", "url": receiver.url, "tries": 1}])
    assert (await running.post(STATUS)).status_code == 202
    await receiver.wait_for(1)
    with trio.fail_after(10):
        while (rows := journal_rows(running.journal_path, "SELECT state FROM deliveries")) == [
            ("pending",)
        ]:
            await trio.sleep(0.02)
    assert rows == [(state,)]
    assert journal_rows(running.journal_path, "SELECT status FROM attempts") == [(status,)]


def test_jitter_spreads_retries_to_both_sides_of_the_schedule():
    """Mutant: jitter that only ever lengthens (or only shortens) the delay."""
    webhook = make_config(
        Path("/tmp"),
        [{"id": "w", "url": "http://x/", "backoff": {"first": 10.0, "jitter": 0.1}}],
    ).webhooks[0]
    failed = Outcome(duration=0.0, status=500)
    delays = [exponential(webhook, 1, failed) for _ in range(2000)]
    assert all(9.0 <= d <= 11.0 for d in delays)
    assert min(delays) < 9.5 and max(delays) > 10.5  # both sides, and most of each side


def test_an_answer_outside_2xx_or_with_an_error_is_not_ok():
    assert [s for s in (100, 199, 200, 204, 299, 300, 400, 500) if Outcome(0.0, s).ok] == [
        200,
        204,
        299,
    ]
    assert not Outcome(0.0, 200, error="plugin x failed").ok
    assert not Outcome(0.0).ok


def test_an_outcome_describes_itself_as_relay_deliveries_shows_it():
    """``last_outcome`` in the journal, and the log's "attempt 2 failed (...)" (survivors of
    scripts/mutate on relay/model.py)."""
    assert Outcome(0.1, 204).describe() == "HTTP 204"
    assert Outcome(0.1, 500).describe() == "HTTP 500"
    assert Outcome(0.1, 200, error="plugin x (prepare_request): boom").describe() == (
        "HTTP 200 (plugin x (prepare_request): boom)"
    )
    assert Outcome(0.1, error="no response within 3 s").describe() == "no response within 3 s"
    assert Outcome(0.1).describe() == "failed"


# -- /healthz ------------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["inline", "process"])
async def test_healthz_counts_the_attempt_in_flight(start_from_file, nursery, delivery):
    """Mutant: ``in_flight`` always 0 (in the dispatcher, or as the delivery process reports
    it)."""
    receiver = await start_receiver(nursery)
    receiver.hang = 30.0
    running = await start_from_file(webhook_toml("crm", receiver.url), delivery=delivery)
    assert (await health(running.url))["in_flight"] == 0
    assert (await running.post(STATUS)).status_code == 202
    await receiver.wait_for(1)
    with trio.fail_after(5):  # the delivery process reports every 0.5 s
        while (await health(running.url))["in_flight"] < 1:
            await trio.sleep(0.05)
    assert (await health(running.url))["in_flight"] == 1


# -- reload ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["inline", "process"])
async def test_a_reload_in_this_process_applies_a_valid_file_and_refuses_an_invalid_one(
    start_from_file, nursery, tmp_path, delivery
):
    """Mutant: the relay's own reload reads the file with the lenient loader of the admin
    commands (with ``delivery = "process"`` the delivery process refused the file anyway;
    inline nothing did)."""
    first, added = await start_receiver(nursery), await start_receiver(nursery)
    running = await start_from_file(webhook_toml("crm", first.url), delivery=delivery)
    config = tmp_path / "relay.toml"
    good = config.read_text()

    config.write_text(good.replace('id = "crm"', 'id = "crm"\nsecret = 42'))
    ok, answer = await running.relay.try_reload()
    assert not ok
    problem = "relay.toml: webhooks[0].secret: expected a string"
    assert any(p.startswith(problem) for p in answer["problems"]), answer
    assert [w.url for w in running.relay.config.webhooks] == [first.url]
    assert (await running.post(STATUS)).status_code == 202
    await first.wait_for(1)

    config.write_text(good + webhook_toml("added", added.url))
    ok, answer = await running.relay.try_reload()
    assert ok and answer["added"] == ["added"], answer
    assert (await running.post(STATUS)).status_code == 202
    await first.wait_for(2)
    await added.wait_for(1)


async def test_the_daemon_with_inline_delivery_reloads_a_valid_file_and_refuses_an_invalid_one(
    tmp_path, nursery
):
    """The same through the real daemon, whose delivery runs in the relay's process: no second
    check stands behind the relay's own."""
    first, added = await start_receiver(nursery), await start_receiver(nursery)
    config = write_config(tmp_path, first.url, grace=0.5)
    config.write_text(config.read_text().replace("[relay]", '[relay]\ndelivery = "inline"'))
    good = config.read_text()
    daemon = await Daemon(config).start()
    try:
        config.write_text(good.replace('id = "crm"', 'id = "crm"\nsecret = 42'))
        result = await relay_cli("reload", "--config", str(config))
        assert result.returncode == 1, result.stdout
        assert "relay.toml: webhooks[0].secret: expected a string" in result.stderr
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
            assert (await client.post("/events", json=STATUS)).status_code == 202
        await first.wait_for(1)  # still served by the old configuration

        config.write_text(good + webhook_toml("added", added.url))
        daemon.process.send_signal(signal.SIGHUP)
        await wait_for_log(daemon, "added: added")
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
            assert (await client.post("/events", json=STATUS)).status_code == 202
        await added.wait_for(1)
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0


async def test_watch_reloads_when_the_file_changes(tmp_path, nursery):
    """Mutant: ``watch = true`` never reloading."""
    first, added = await start_receiver(nursery), await start_receiver(nursery)
    config = write_config(tmp_path, first.url, grace=0.5)
    config.write_text(config.read_text().replace("[relay]", "[relay]\nwatch = true"))
    daemon = await Daemon(config).start()
    try:
        config.write_text(config.read_text() + webhook_toml("added", added.url))
        await wait_for_log(daemon, "added: added")  # polled every second
        async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
            assert (await client.post("/events", json=STATUS)).status_code == 202
        await added.wait_for(1)
        await first.wait_for(1)
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0


# -- relay/http/http11.py: the survivors of scripts/mutate that showed a gap ---------------------


@pytest.fixture
async def http_served(nursery) -> Handler:
    """relay's HTTP server alone, with a handler that notes each request and answers 200."""
    return await start_server(nursery)


async def test_a_send_larger_than_the_socket_takes_waits_and_sends_it_all():
    """Mutant: ``except BlockingIOError`` in HTTPStream's send (a full socket buffer) not
    caught, so a body the peer reads slower than it is sent failed the attempt."""
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sender, reader = trio.SocketStream(a), trio.SocketStream(b)
    data = bytes(range(256)) * 16 * 1024  # 4 MiB
    received = bytearray()

    async def read_all():
        while len(received) < len(data):
            received.extend(await reader.receive_some(65536))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await HTTPStream(sender).send_all(data)
    assert received == data
    await sender.aclose()
    await reader.aclose()


async def test_empty_lines_before_a_request_are_ignored_and_an_empty_head_is_refused(http_served):
    """Mutants: the empty lines before a request line kept (RFC 9112 2.2: a server ignores
    them), and a head that is only its end (``\\r\\n\\r\\n``) waited on instead of refused."""
    answer = await exchange(http_served, b"\r\n" + http_request(b"{}"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and http_served.requests[0].body == b"{}"
    answer = await exchange(http_served, b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "bad request: empty message head"
    }


async def test_a_head_holds_at_most_100_header_lines(http_served):
    """Mutants: the limit on header lines off by one either way, gone (``is``), or answered
    with another status than 431."""

    def head(count: int) -> bytes:
        lines = [b"POST /hook HTTP/1.1", b"Host: x", b"Content-Length: 2"]
        lines += [b"X-H%d: v" % i for i in range(count - 2)]
        return b"\r\n".join(lines) + b"\r\n\r\n{}"

    assert (await exchange(http_served, head(100))).startswith(b"HTTP/1.1 200 OK\r\n")
    refused = await exchange(http_served, head(101))
    assert refused.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"too many header lines" in refused
    assert (await exchange(http_served, head(102))).startswith(b"HTTP/1.1 431 ")


async def test_a_chunked_body_of_exactly_max_body_is_taken_and_one_byte_more_is_not(nursery):
    """Mutants: the size of a chunked body counted from 1 or -1, so that max_body refused a
    body of its own size, or took one a byte over."""
    handler = Handler()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(http_server.HTTPServer(handler, max_body=10).serve, listeners)
    handler.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hook"

    def chunked(body: bytes) -> bytes:
        head = b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)

    assert (await exchange(handler, chunked(b"x" * 10))).startswith(b"HTTP/1.1 200 OK\r\n")
    assert handler.requests[0].body == b"x" * 10
    assert (await exchange(handler, chunked(b"x" * 11))).startswith(b"HTTP/1.1 413 ")
    assert len(handler.requests) == 1


async def test_an_answer_framed_by_its_connection_s_end_is_read_to_its_end_or_the_limit(nursery):
    """Mutants: an answer without Content-Length or chunked coding (its body ends with the
    connection) read only as far as its first packet went, or read past ``max_response_body``
    for as long as the server sends (a receiver that never stops)."""

    async def answer(stream: trio.SocketStream, body, close: bool) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        try:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            for chunk in body:
                await stream.send_all(chunk)
            if not close:
                await trio.sleep_forever()
        except trio.BrokenResourceError:
            pass  # the client stopped reading, as it should
        finally:
            await stream.aclose()

    async def served_by(body, close: bool) -> str:
        listeners = await nursery.start(trio.serve_tcp, partial(answer, body=body, close=close), 0)
        return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hook"

    client = HTTPClient(max_response_body=1_000_000)
    url = await served_by([b"x" * 500_000], close=True)
    with trio.fail_after(10):
        response = await client.send(Request(method="POST", url=url, headers=(), body=b"{}"))
    assert (response.status, response.body) == (200, b"x" * 500_000)
    client = HTTPClient(max_response_body=100_000)
    url = await served_by(itertools.repeat(b"y" * 65536), close=False)  # never ends
    with trio.fail_after(10):
        response = await client.send(Request(method="POST", url=url, headers=(), body=b"{}"))
    assert response.body == b"y" * 100_000


@pytest.mark.parametrize(
    ("line", "reason"),
    [(b": v", "header line with an empty name"), (b"B@d: v", "header name is not a token: 'B@d'")],
)
async def test_a_header_line_that_is_not_one_is_refused_saying_why(http_served, line, reason):
    """Mutant: the reasons for an empty header name and for one that is not a token swapped."""
    answer = await exchange(http_served, b"POST /hook HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % line)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"error": f"bad request: {reason}"}


async def test_a_request_that_meets_the_journal_closed_by_a_dead_writer_is_refused_not_a_500(
    tmp_path,
):
    """Found by scripts/soak (three 500s in 200 kills, each with a trio.BrokenResourceError
    traceback in the log) and by test_kill_9_loses_no_acknowledged_event[writer-True] failing
    once: a request that reached the journal after its committer had stopped on the dead
    writer, but before the relay's cancellation reached it, met the committer's closed queue,
    and the error was no JournalError: ingest answered 500, not 503."""
    event = Event("e1", "whatsapp:message:status", b"{}", 1.0)
    writer = await ProcessWriter.start(tmp_path)
    errors = []
    with pytest.raises(BaseException) as stopped:  # the committer stops the journal's nursery
        async with Journal.running(writer) as journal:
            writer.process.kill()
            with trio.CancelScope(shield=True):  # as a request the cancellation has not reached
                for _ in range(2):  # the first fails with the batch; the second finds it gone
                    try:
                        await journal.append([event], [Delivery("d1", "crm", event)], 1.0)
                    except JournalError as e:
                        errors.append(str(e))
                    await trio.testing.wait_all_tasks_blocked()  # the committer is done
    assert "the journal writer" in str(stopped.value.exceptions[0])
    assert len(errors) == 2, errors
    assert errors[1] == "the journal is closed: its writer failed"


# -- relay/journal/health.py: the survivors of scripts/mutate that showed a gap ------------------


async def test_the_journal_is_failing_until_something_is_written_again():
    """Mutants: a success that wrote nothing taken as the disk's recovery (``not _wrote``, a
    read's truthy result, ``or bool(result)``), and a prune that deleted one event not (``> 1``,
    ``< 0``). /healthz says "journal failing" while this holds: a claim of nothing or a read
    succeeds on a full disk, and said "ok" throughout."""
    health = Health()

    def settle(name: str, ok: bool, result) -> None:
        health.settle([[Op(name, (), trio.Event())]], [(ok, result)])

    settle("append", False, "database or disk is full")
    for name, result in [
        ("claim_due", []),
        ("recover", 0),
        ("last_rowid", 42),
        ("webhook_states", {"crm": (False, "410 Gone", 1.0)}),
        ("prune", (7, 0, False)),
    ]:
        settle(name, True, result)
        assert health.failing == "database or disk is full", name
    settle("prune", True, (8, 1, False))  # deleted an event: the disk takes writes
    assert health.failing is None
    settle("append", False, "database or disk is full")
    settle("append", True, None)
    assert health.failing is None


async def test_a_kept_write_is_sent_again_after_a_delay_that_doubles(autojump_clock):
    """Mutant: the retry due ``RETRY_FIRST`` seconds before the failure, not after: kept writes
    sent again at once, over and over, while the disk is full."""
    health = Health()
    kept = Op("record_attempts", ([], []), None)
    health.settle([[kept]], [(False, "database or disk is full")])
    assert health.retry_at == trio.current_time() + RETRY_FIRST
    assert health.due() == [kept]
    health.settle([[kept]], [(False, "database or disk is full")])
    assert health.retry_at == trio.current_time() + 2 * RETRY_FIRST


async def test_a_kept_write_has_a_last_try_when_the_journal_closes(tmp_path, monkeypatch):
    """Mutant: ``closing`` true from the start, so that a journal closing with a kept write
    (an outcome the full disk refused) dropped it without the last try: a delivery that was
    delivered stayed pending, and the next run sent it again."""
    d = hook_delivery(1)
    async with committer.Journal.open(tmp_path, mode="inline") as journal:
        await journal.append([d.event], [d], 1.0)
        refuse = journal_sql.OPERATIONS["record_attempts"]

        def full(conn, *args):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setitem(journal_sql.OPERATIONS, "record_attempts", full)
        await journal.record_attempt(d, 2.0, Outcome(0.5, 204), next_at=None)
        await journal.last_rowid()  # behind the outcome in the queue: it was refused
        assert journal.failing == "database or disk is full"
        monkeypatch.setitem(journal_sql.OPERATIONS, "record_attempts", refuse)  # room again
    path = tmp_path / committer.FILENAME
    assert journal_rows(path, "SELECT state FROM deliveries") == [("delivered",)]


# -- relay/delivery/attempt.py: the survivors of scripts/mutate that showed a gap ----------------


async def test_retry_after_on_a_429_is_honoured_whatever_headers_come_before_it(
    nursery, tmp_path, autojump_clock
):
    """Mutants: 429 left out of the statuses whose Retry-After is read (the tests' 429 asked
    for less than the backoff), and the header looked up as the first one not named
    retry-after (``is not``: the tests' answers had no other header)."""
    answer = (429, [("Content-Type", "text/plain"), ("Retry-After", "500")])
    transport = PolicyTransport([answer])
    relay = await start_with_transport(nursery, tmp_path, transport)
    await post_event(relay)
    await trio.sleep(1_000_000)
    assert len(transport.times) == 2
    assert transport.times[1] - transport.times[0] == pytest.approx(500)


async def test_a_render_request_plugin_that_fails_fails_its_attempt_naming_it(
    start_relay, receiver, caplog
):
    """Mutant: a renderer's exception not turned into the attempt's failure (``except
    Exception`` in the renderers' loop): a plugin's bug in render_request escaped the attempt,
    where one in prepare_request (tests/test_logs.py) is that attempt's outcome."""
    caplog.set_level(logging.DEBUG)

    class Failing:
        @hookimpl
        def render_request(self, webhook, delivery):
            raise RuntimeError("the template service is down")

    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "tries": 2, "backoff": no_retry_delay()}],
        plugins=[Failing()],
    )
    await running.post(STATUS)
    with trio.fail_after(10):
        while not [r for r in caplog.records if getattr(r, "attempt", 0) == 2]:
            await trio.sleep(0.01)
    lines = [r for r in caplog.records if "the template service is down" in r.getMessage()]
    assert [(r.levelname, r.attempt) for r in lines] == [("INFO", 1), ("WARNING", 2)]
    assert lines[1].error.endswith("(render_request): RuntimeError: the template service is down")
    assert receiver.requests == []
    with trio.fail_after(10):  # the outcome is written after its line is logged
        while journal_rows(running.journal_path, "SELECT state, attempts FROM deliveries") != [
            ("failed", 2)
        ]:
            await trio.sleep(0.01)


# -- relay/delivery/dispatch.py: the survivors of scripts/mutate that showed a gap ---------------


async def start_with_plugins(nursery, tmp_path, webhooks: list[dict], plugins, **relay_settings):
    """A relay in this process on trio's MockClock (the journal inline, no listener), with
    test ``plugins`` registered through the hooks the built-ins use."""
    config = make_config(tmp_path, webhooks, listen=None, journal="inline", **relay_settings)
    relay = relay_of(config, plugins)
    await nursery.start(relay.run)
    return relay


class ByWebhook:
    """A transport answering each webhook as told: ``hang`` seconds, then ``statuses`` in turn
    (then 200); notes when each of its attempts started."""

    def __init__(self, **behaviour):
        self.behaviour = behaviour  # webhook id -> (hang, [statuses])
        self.times: dict[str, list[float]] = {w: [] for w in behaviour}

    async def send(self, webhook, request):
        hang, statuses = self.behaviour[webhook.id]
        self.times[webhook.id].append(trio.current_time())
        await trio.sleep(hang)
        return Response(status=statuses.pop(0) if statuses else 200)

    async def aclose(self):
        pass


def transport_plugin(transport):
    class Plugin:
        @hookimpl
        def register_transports(self, register):
            register("by-webhook", lambda config: transport)

    return Plugin()


def hook(webhook_id: str, **settings) -> dict:
    return {
        "id": webhook_id,
        "url": "http://example.invalid/",
        "transport": "by-webhook",
        **settings,
    }


async def test_a_stopped_relay_starts_nothing_that_waits_in_a_queue(
    nursery, tmp_path, autojump_clock
):
    """Mutant: a lane's ``stop`` leaving ``stopped`` false, so that its workers went on
    attempting what was queued (and, for a webhook a reload removed, delivered to it after it
    left) instead of handing it back to the journal."""
    transport = ByWebhook(crm=(5.0, []))
    relay = await start_with_plugins(
        nursery, tmp_path, [hook("crm", concurrency=1, timeout=10.0)], [transport_plugin(transport)]
    )
    for _ in range(3):
        await post_event(relay)
    await trio.sleep(1)
    assert len(transport.times["crm"]) == 1  # one in flight, two queued
    relay.stop(grace=100)
    await trio.sleep(1000)
    assert len(transport.times["crm"]) == 1
    states = journal_rows(
        relay.config.relay.state_dir / "journal.sqlite3",
        "SELECT state, attempts FROM deliveries ORDER BY state",
    )
    assert states == [("delivered", 1), ("pending", 0), ("pending", 0)]


async def test_a_full_lane_does_not_hold_up_another_webhook_s_retries(
    nursery, tmp_path, autojump_clock
):
    """Mutant: the scheduler's pass ending at the first lane without room (``break``), so
    that a webhook that hangs held up every webhook after it: their retries waited until it
    drained."""
    transport = ByWebhook(slow=(100_000.0, []), fast=(0.0, [500]))
    webhooks = [
        hook("slow", concurrency=1, timeout=200_000.0),
        hook("fast", backoff={"first": 10.0, "factor": 1.0}),
    ]
    relay = await start_with_plugins(
        nursery, tmp_path, webhooks, [transport_plugin(transport)], queue=1
    )
    await post_event(relay, {**STATUS, "webhook_id": "fast"})  # fails; due again at 10 s
    for _ in range(3):  # one in flight, one queued, one asleep in the journal: no room
        await post_event(relay, {**STATUS, "webhook_id": "slow"})
    await trio.sleep(100)
    assert transport.times["fast"] == [pytest.approx(0, abs=1), pytest.approx(10, abs=1)]


async def test_a_delivery_to_a_webhook_in_the_configuration_is_not_logged_parked(
    start_relay, receiver, caplog
):
    """Mutant: the "parked: the webhook is no longer in the configuration" line written for
    every delivery whose webhook is there (and not for those whose webhook is not)."""
    caplog.set_level(logging.DEBUG)
    running = await start_relay([{"id": "crm", "url": receiver.url}])
    assert (await running.post(STATUS)).status_code == 202
    await receiver.wait_for(1)
    assert not [r for r in caplog.records if "parked" in r.getMessage()]


async def test_a_retry_policy_that_answers_nonsense_falls_back_to_the_backoff(
    nursery, tmp_path, autojump_clock, caplog
):
    """Mutants: the check of what a retry policy returned inverted (``delay is None``) or
    weakened (``and``), so that a policy's "soon" reached the scheduler and broke the
    attempt's bookkeeping; and the fallback retrying only once ``tries`` were spent, instead
    of until then."""

    class Nonsense:
        @hookimpl
        def register_retry_policies(self, register):
            register("nonsense", lambda webhook, attempt, outcome: "soon")

    transport = ByWebhook(crm=(0.0, [500, 500, 500]))
    webhook = hook("crm", retry="nonsense", tries=2, backoff={"first": 7.0, "factor": 1.0})
    relay = await start_with_plugins(
        nursery, tmp_path, [webhook], [transport_plugin(transport), Nonsense()]
    )
    await post_event(relay)
    await trio.sleep(1000)
    assert transport.times["crm"] == [pytest.approx(0, abs=1), pytest.approx(7, abs=1)]
    assert "retry policy 'nonsense' failed; retrying in 7 s" in caplog.text
    states = journal_rows(
        relay.config.relay.state_dir / "journal.sqlite3", "SELECT state, attempts FROM deliveries"
    )
    assert states == [("failed", 2)]
