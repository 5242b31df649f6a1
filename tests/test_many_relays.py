"""Three relays, real daemons (tests/daemon.py), sharing one PostgreSQL journal
(tests/postgres.py), events sent to all three while the receiver flaps; one is killed with
kill -9 mid-run, then a second.

Every acknowledged event is delivered; a message's statuses are delivered in the order relay
accepted them, whichever relay accepted each; and a delivery arrives twice only if the relay
that died held it when it died (in memory: queued, or in flight): the duplicates are counted,
printed, and checked against what the dead relays held, read from the journal once their
processes were gone.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import httpx
import psycopg
import trio

from tests.conftest import Receiver, start_receiver
from tests.daemon import Daemon, alive, write_config

STATUSES = [f"s{n}" for n in range(5)]
MESSAGES = [f"m{n:02}" for n in range(12)]
LEASE = 2.0  # seconds: a dead relay's deliveries go to the others this soon


class Flapping:
    """Down for 0.3 s of every 0.9 s; notes each request's payload, delivery id and answer."""

    def __init__(self):
        self.answers: list[tuple[dict, str, int]] = []

    def __call__(self, arrived) -> int:
        status = 503 if int(trio.current_time() / 0.3) % 3 == 0 else 200
        payload = json.loads(arrived.body)["payload"]
        self.answers.append((payload, arrived.header("relay-delivery-id"), status))
        return status


async def start_relays(tmp_path: Path, url: str, receiver: Receiver) -> list[Daemon]:
    relays = []
    for n in range(3):
        where = tmp_path / f"relay{n}"
        where.mkdir()
        config = write_config(
            where,
            webhooks=f"""
[[webhooks]]
id = "crm"
url = "{receiver.url}"
order_by = "payload.id"
backoff = {{ first = 0.2, factor = 1.0 }}
tries = 1000

[journal]
url = "{url}"
lease = {LEASE}
""",
        )
        relays.append(await Daemon(config).start())
    return relays


def run_of(daemon: Daemon) -> int:
    return int((daemon.config.parent / "state" / "journal.run").read_text().split()[1])


async def kill(daemon: Daemon, url: str) -> set[str]:
    """kill -9 the relay; once its writer and delivery process are gone too, what it held."""
    pids = daemon.kill_9("relay")
    await daemon.wait()
    with trio.fail_after(20):
        while alive(pids["writer"]) or alive(pids["delivery"]):
            await trio.sleep(0.05)
    with psycopg.connect(url) as conn:
        return {
            delivery_id
            for (delivery_id,) in conn.execute(
                "SELECT id FROM deliveries WHERE held_by = %s AND state = 'pending'"
                " AND next_at IS NULL",
                (run_of(daemon),),
            )
        }


async def test_three_relays_one_journal_two_killed(tmp_path, nursery, postgresql_url):
    flapping = Flapping()
    receiver = await start_receiver(nursery, Receiver(answer=flapping))
    relays = await start_relays(tmp_path, postgresql_url, receiver)
    live = list(relays)
    held_by_the_dead: set[str] = set()
    accepted: dict[str, list[str]] = defaultdict(list)  # message: statuses, as acknowledged

    def event(message: str, status: str) -> dict:
        return {"event": "whatsapp:message:status", "payload": {"id": message, "status": status}}

    async with httpx.AsyncClient(timeout=10) as client:

        async def post(daemon: Daemon, batch: list[tuple[str, str]]) -> None:
            answer = await client.post(daemon.url + "/events", json=[event(*e) for e in batch])
            assert answer.status_code == 202, answer.text
            for message, status in batch:
                accepted[message].append(status)

        for status in STATUSES:
            if status in ("s2", "s4"):
                # A burst into one relay, killed as soon as it is acknowledged: what it held
                # in memory (queued, in flight) is left to its leases.
                await post(live[0], [(m, status) for m in MESSAGES])
                held_by_the_dead |= await kill(live.pop(0), postgresql_url)
                continue
            for n, message in enumerate(MESSAGES):  # one at a time, to each relay in turn
                await post(live[n % len(live)], [(message, status)])
                await trio.sleep(0.01)

    def delivered() -> dict[tuple[str, str], list[str]]:
        """(message, status): the delivery ids of its 2xx answers, in order."""
        found = defaultdict(list)
        for payload, delivery_id, status in flapping.answers:
            if 200 <= status < 300:
                found[payload["id"], payload["status"]].append(delivery_id)
        return found

    events = len(STATUSES) * len(MESSAGES)
    with trio.fail_after(60):
        while len(delivered()) < events:
            await trio.sleep(0.1)
    for daemon in live:
        daemon.process.terminate()
        await daemon.wait()

    arrived = delivered()
    duplicates = {key: ids for key, ids in arrived.items() if len(ids) > 1}
    print(
        f"\n{events} events, {sum(map(len, arrived.values()))} deliveries with a 2xx,"
        f" {len(duplicates)} duplicated; the two dead relays held {len(held_by_the_dead)}"
    )
    for key, ids in duplicates.items():
        assert set(ids) <= held_by_the_dead, f"{key} delivered twice, not held by a dead relay"
    order: dict[str, list[str]] = defaultdict(list)
    for payload, _, status in flapping.answers:
        if 200 <= status < 300 and payload["status"] not in order[payload["id"]]:
            order[payload["id"]].append(payload["status"])
    assert order == accepted
