"""A disk with no room: what the journal cannot write is refused (a write somebody waits for) or
written again once there is room (an outcome, a hand-back: nobody waits for those), and what it
put to sleep is then claimed. Found by scripts/soak's full-disk phase: a failed outcome was
dropped, and its delivery was held by nobody (not in memory, not asleep in the journal) until
the relay restarted.

The real journal on a temp dir, the inline writer wrapped to refuse some operations as SQLite
does when the disk is full; trio's MockClock. scripts/soak fills a real tmpfs.
"""

import pytest
import trio

from relay.journal import committer
from relay.journal.committer import RETRY, RIDE_ALONG, InlineWriter, Journal
from relay.model import Delivery, Event, Outcome
from tests.conftest import RecordingTransport, post_event, start_with_transport

FULL = "database or disk is full"


class Refusing:
    """The inline writer, except that every ``name`` operation of the first ``times`` batches
    holding one fails with ``error``; the rest of such a batch commits."""

    def __init__(self, writer: InlineWriter, name: str, times: int = 1, error: str = FULL):
        self.writer, self.name, self.times, self.error = writer, name, times, error
        self.batches: list[list[str]] = []

    async def run(self, batch):
        self.batches.append([name for name, _ in batch])
        if not (self.times and any(name == self.name for name, _ in batch)):
            return await self.writer.run(batch)
        self.times -= 1
        rest = [(name, args) for name, args in batch if name != self.name]
        results = iter(await self.writer.run(rest) if rest else [])
        return [(False, self.error) if name == self.name else next(results) for name, _ in batch]

    async def aclose(self) -> None:
        await self.writer.aclose()


def delivery(n: int) -> Delivery:
    return Delivery(f"d{n}", "hook", Event(f"e{n}", "whatsapp:message:status", b"{}", 0.0))


def state(writer: Refusing, delivery_id: str) -> str:
    sql = "SELECT state FROM deliveries WHERE id = ?"
    return writer.writer.conn.execute(sql, (delivery_id,)).fetchone()[0]


@pytest.mark.parametrize("name", ["record_attempts", "put_to_sleep"])
async def test_a_write_nobody_waits_for_is_written_again_once_there_is_room(
    tmp_path, autojump_clock, name
):
    writer = Refusing(await InlineWriter.start(tmp_path), name)
    woken = []
    async with Journal.running(writer) as journal:
        journal.when_written_again(lambda: woken.append(trio.current_time()))
        d = delivery(1)
        await journal.append([d.event], [d], 0.0)
        if name == "record_attempts":
            await journal.record_attempt(d, 0.0, Outcome(0.1, status=204), next_at=None)
        else:
            await journal.put_to_sleep([d.id], 0.5)
        start = trio.current_time()
        await trio.sleep(RETRY * 5)  # and nothing else is written meanwhile
        if name == "record_attempts":
            assert state(writer, "d1") == "delivered"
        else:
            assert [d.id for d in await journal.claim_due("hook", 1.0, 10)] == ["d1"]
    assert writer.batches.count([name]) == 2  # refused, then written
    (when,) = woken  # once, after the RETRY wait (and ride-alongs) that wrote it again
    assert start + RETRY < when < start + RETRY + 10 * RIDE_ALONG


async def test_a_write_sqlite_cannot_take_is_not_tried_again(tmp_path, autojump_clock):
    """A value SQLite cannot store fails the same way every time."""
    error = "UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800'"
    writer = Refusing(await InlineWriter.start(tmp_path), "record_attempts", error=error)
    async with Journal.running(writer) as journal:
        d = delivery(1)
        await journal.append([d.event], [d], 0.0)
        await journal.record_attempt(d, 0.0, Outcome(0.1, status=204), next_at=None)
        await trio.sleep(RETRY * 5)
        assert state(writer, "d1") == "pending"
    assert writer.batches.count(["record_attempts"]) == 1


async def test_a_closing_journal_tries_a_refused_write_once_more_and_does_not_wait(
    tmp_path, autojump_clock
):
    writer = Refusing(await InlineWriter.start(tmp_path), "record_attempts", times=10)
    async with Journal.running(writer) as journal:
        d = delivery(1)
        await journal.append([d.event], [d], 0.0)
        await journal.record_attempt(d, 0.0, Outcome(0.1, status=204), next_at=None)
        await trio.sleep(RIDE_ALONG * 2)  # refused once
        closing = trio.current_time()
    assert trio.current_time() == closing
    assert writer.batches.count(["record_attempts"]) == 2  # the next run recovers it


async def test_a_retry_the_disk_had_no_room_for_is_attempted_once_it_has(
    nursery, tmp_path, autojump_clock, monkeypatch
):
    """The relay: attempt 1 fails, its outcome (asleep until the retry) is refused, and so is
    it again with the scheduler's next reads, which find nothing due; the write lands alone a
    second later and must wake the scheduler, or the retry waits for the next restart."""
    writers = []
    start = InlineWriter.start

    async def refusing_start(state_dir):
        writers.append(Refusing(await start(state_dir), "record_attempts", times=2))
        return writers[-1]

    monkeypatch.setattr(committer.InlineWriter, "start", refusing_start)
    transport = RecordingTransport(statuses=[500])
    retry = {"first": 0.5, "factor": 1.0, "max": 0.5}  # due before the refused write lands
    relay = await start_with_transport(nursery, tmp_path, transport, {"backoff": retry})
    await post_event(relay)
    await trio.sleep(3600)
    assert writers[0].times == 0  # both refusals happened
    assert len(transport.times) == 2
