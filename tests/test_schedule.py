"""The retry schedule and the attempt timeout, on trio's MockClock (no real waiting).

The relay here is the real one, with its real journal on a temp dir; only the transport is a
test plugin (registered through the same hook as the built-in one), because real sockets and
a clock that jumps do not mix.
"""

import json
import sqlite3
from pathlib import Path

import pytest
import trio

from relay.model import Outcome
from relay.plugins.builtin.backoff import exponential
from tests.conftest import RecordingTransport, make_config, post_event, start_with_transport

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text())


async def run_relay(nursery, tmp_path, transport, **webhook):
    relay = await start_with_transport(nursery, tmp_path, transport, webhook)
    await post_event(relay)
    return relay


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]


async def test_default_schedule_is_0_10_110_then_failed(nursery, tmp_path, autojump_clock):
    transport = RecordingTransport(statuses=[500] * 10)
    await run_relay(nursery, tmp_path, transport)
    await trio.sleep(1_000_000)
    assert len(transport.times) == 3  # "we'll retry the call two more times"
    assert [t - transport.times[0] for t in transport.times] == [
        0,
        pytest.approx(10),
        pytest.approx(110),
    ]


async def test_backoff_grows_tenfold_and_caps_at_100000(nursery, tmp_path, autojump_clock):
    transport = RecordingTransport(statuses=[503] * 10)
    await run_relay(nursery, tmp_path, transport, tries=7)
    await trio.sleep(10_000_000)
    expected = VECTORS["backoff"]["delays_after_attempt_1_to_7"][:6]
    assert gaps(transport.times) == expected
    assert len(transport.times) == 7


async def test_no_answer_within_3_s_fails_and_retries_10_s_later(nursery, tmp_path, autojump_clock):
    transport = RecordingTransport(hang=5.0)
    relay = await run_relay(nursery, tmp_path, transport, tries=2)
    await trio.sleep(100)
    # Attempt 1 starts at t0 and is given up at t0 + 3; attempt 2 follows 10 s after that.
    assert gaps(transport.times) == [13]
    with sqlite3.connect(relay.config.relay.state_dir / "journal.sqlite3") as conn:
        rows = conn.execute("SELECT error FROM attempts ORDER BY number").fetchall()
    assert rows == [("no response within 3 s",)] * 2


async def test_success_ends_the_schedule(nursery, tmp_path, autojump_clock):
    transport = RecordingTransport(statuses=[500])
    await run_relay(nursery, tmp_path, transport, tries=5)
    await trio.sleep(1_000_000)
    assert gaps(transport.times) == [10]


def test_exponential_policy_matches_the_vectors():
    webhook = make_config(Path("/tmp"), [{"id": "w", "url": "http://x/", "tries": 8}]).webhooks[0]
    failed = Outcome(duration=0.0, status=500)
    delays = [exponential(webhook, n, failed) for n in range(1, 8)]
    assert delays == VECTORS["backoff"]["delays_after_attempt_1_to_7"]
    assert exponential(webhook, 8, failed) is None  # tries spent


def test_jitter_stays_within_its_fraction():
    webhook = make_config(
        Path("/tmp"), [{"id": "w", "url": "http://x/", "backoff": {"jitter": 0.2}}]
    ).webhooks[0]
    failed = Outcome(duration=0.0, status=500)
    delays = {exponential(webhook, 1, failed) for _ in range(200)}
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert len(delays) > 1
