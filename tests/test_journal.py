"""The journal's committer (relay/journal/committer.py): which writes share a commit, and when
it runs.

The real journal on a temp dir, or a PostgreSQL database of the test's own (each test runs on
both); the writer is the inline one, wrapped to note each batch it is given and the (mock)
time it was given.
"""

import pytest
import trio

from relay.journal.committer import RIDE_ALONG, InlineWriter, Journal
from relay.model import Delivery, Event, Outcome


class Noting:
    def __init__(self, writer: InlineWriter):
        self.writer = writer
        self.batches: list[tuple[float, list[str]]] = []

    async def run(self, batch):
        self.batches.append((trio.current_time(), [name for name, _ in batch]))
        return await self.writer.run(batch)

    async def aclose(self) -> None:
        await self.writer.aclose()


@pytest.fixture
async def writer(tmp_path, journal_url):
    return Noting(await InlineWriter.start(tmp_path, url=journal_url))


def delivery(n: int) -> Delivery:
    event = Event(f"e{n}", "whatsapp:message:status", b"{}", 0.0)
    return Delivery(f"d{n}", "hook", event)


async def append(journal: Journal, n: int) -> None:
    d = delivery(n)
    await journal.append([d.event], [d], 0.0)


async def outcome(journal: Journal, n: int) -> None:
    d = delivery(n)
    await journal.record_attempt(d, 0.0, Outcome(duration=0.1, status=204), next_at=None)


async def test_an_outcome_shares_the_commit_of_the_append_that_follows_it(writer, autojump_clock):
    async with Journal.running(writer) as journal:
        await append(journal, 1)
        start = trio.current_time()
        await outcome(journal, 1)  # not waited for
        await trio.sleep(RIDE_ALONG / 2)
        await append(journal, 2)
    assert writer.batches[1:] == [(start + RIDE_ALONG / 2, ["record_attempts", "append"])]


async def test_an_outcome_alone_is_committed_after_the_ride_along_wait(writer, autojump_clock):
    async with Journal.running(writer) as journal:
        await append(journal, 1)
        start = trio.current_time()
        await outcome(journal, 1)
        await trio.sleep(RIDE_ALONG * 10)
        assert writer.batches[1:] == [(start + RIDE_ALONG, ["record_attempts"])]
        # and it is on disk: the delivery finished
        assert await journal.claim_due("hook", 1.0, 10) == []


async def test_outcomes_the_delivery_process_forwards_wait_for_an_append_too(
    writer, autojump_clock
):
    async with Journal.running(writer) as journal:
        start = trio.current_time()
        d = delivery(1)
        await append(journal, 1)
        attempt = (d.id, 1, 0.0, 0.1, 204, None)
        update = ("delivered", 1, None, 0.1, "204", d.id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.forward, [("record_attempts", ([attempt], [update]))])
            await trio.sleep(RIDE_ALONG / 2)
            await append(journal, 2)
    assert writer.batches == [
        (start, ["append"]),
        (start + RIDE_ALONG / 2, ["record_attempts", "append"]),
    ]


async def test_a_journal_without_ride_along_sends_outcomes_at_once(writer, autojump_clock):
    async with Journal.running(writer, ride_along=0) as journal:
        start = trio.current_time()
        await outcome(journal, 1)
        await trio.sleep(RIDE_ALONG)
    assert writer.batches == [(start, ["record_attempts"])]


async def test_a_write_somebody_waits_for_is_never_held(writer, autojump_clock):
    async with Journal.running(writer) as journal:
        start = trio.current_time()
        await append(journal, 1)
        await journal.put_to_sleep(["d1"], 0.5)  # not waited for, then a read that is
        assert [d.id for d in await journal.claim_due("hook", 1.0, 10)] == ["d1"]
    assert writer.batches == [
        (start, ["append"]),
        (start, ["put_to_sleep", "claim_due"]),
    ]


async def test_a_closing_journal_commits_a_waiting_outcome_at_once(writer, autojump_clock):
    async with Journal.running(writer) as journal:
        await append(journal, 1)
        start = trio.current_time()
        await outcome(journal, 1)
        await trio.sleep(0)  # the committer is in its wait when the journal closes
    assert writer.batches[1:] == [(start, ["record_attempts"])]
