"""Each attempt has a nursery of its own: what a hook starts there ends with the attempt.

On trio's MockClock, with the real relay and journal and a test transport (as in
tests/test_schedule.py): the times at which sub-tasks are cancelled are exact.
"""

import sqlite3
import subprocess
import sys

import trio

from relay.model import Response
from relay.plugins import hookimpl
from tests.conftest import RecordingTransport, make_config, post_event, relay_of


class Forever:
    """A sub-task that would run forever; notes when it started and when it was cancelled."""

    def __init__(self):
        self.started: list[float] = []
        self.cancelled: list[float] = []
        self.finished = 0

    async def __call__(self):
        self.started.append(trio.current_time())
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.append(trio.current_time())
            raise
        finally:
            self.finished += 1


class StartsInPrepare:
    """A plugin refreshing a token, say, in the attempt's nursery."""

    def __init__(self, task):
        self.task = task
        self.deadlines: list[float] = []

    @hookimpl
    def prepare_request(self, webhook, delivery, request, attempt):
        attempt.nursery.start_soon(self.task)
        self.deadlines.append(attempt.deadline)


class TransportThatStarts(RecordingTransport):
    """A transport racing connections, say: it starts a task in the attempt's nursery."""

    def __init__(self, task, **kwargs):
        super().__init__(**kwargs)
        self.task = task
        self.deadlines: list[float] = []

    async def send(self, webhook, request, attempt):
        attempt.nursery.start_soon(self.task)
        self.deadlines.append(attempt.deadline)
        return await super().send(webhook, request)


async def start(nursery, tmp_path, transport, plugins=(), **webhook):
    class Transport:
        @hookimpl
        def register_transports(self, register):
            register("recording", lambda config: transport)

    webhooks = [
        {"id": "crm", "url": "http://example.invalid/", "transport": "recording", **webhook}
    ]
    config = make_config(tmp_path, webhooks, listen=None, journal="inline")
    relay = relay_of(config, [Transport(), *plugins])
    await nursery.start(relay.run)
    return relay


def attempts(relay) -> list[tuple]:
    with sqlite3.connect(relay.config.relay.state_dir / "journal.sqlite3") as conn:
        return conn.execute("SELECT number, status, error FROM attempts ORDER BY number").fetchall()


def state(relay) -> str:
    with sqlite3.connect(relay.config.relay.state_dir / "journal.sqlite3") as conn:
        return conn.execute("SELECT state FROM deliveries").fetchone()[0]


async def test_a_sub_task_ends_when_the_attempt_succeeds(nursery, tmp_path, autojump_clock):
    task = Forever()
    transport = RecordingTransport(hang=1.0)
    plugin = StartsInPrepare(task)
    relay = await start(nursery, tmp_path, transport, [plugin])
    await post_event(relay)
    await trio.sleep(100)
    (sent,) = transport.times
    assert task.started == [sent]  # started before the send, while the request was prepared
    assert task.cancelled == [sent + 1.0]  # when the answer came, not a moment later
    assert task.finished == 1
    assert plugin.deadlines == [float("inf")]  # the timeout counts from the send
    assert attempts(relay) == [(1, 200, None)]  # the outcome is the receiver's
    assert state(relay) == "delivered"


async def test_a_sub_task_ends_at_the_attempts_deadline(nursery, tmp_path, autojump_clock):
    task = Forever()
    transport = RecordingTransport(hang=5.0)
    relay = await start(nursery, tmp_path, transport, [StartsInPrepare(task)], tries=2)
    await post_event(relay)
    await trio.sleep(100)
    first, second = transport.times
    # Each attempt's task is cancelled at its deadline, 3 s (the timeout) after its send.
    assert task.cancelled == [first + 3.0, second + 3.0]
    assert task.finished == 2
    assert attempts(relay) == [(n, None, "no response within 3 s") for n in (1, 2)]
    assert state(relay) == "failed"


async def test_a_transport_may_start_tasks_in_the_attempts_nursery(
    nursery, tmp_path, autojump_clock
):
    task = Forever()
    transport = TransportThatStarts(task, statuses=[500], hang=0.5)
    relay = await start(nursery, tmp_path, transport, backoff={"first": 10.0})
    await post_event(relay)
    await trio.sleep(100)
    first, second = transport.times
    assert task.cancelled == [first + 0.5, second + 0.5]
    assert transport.deadlines == [first + 3.0, second + 3.0]
    assert attempts(relay) == [(1, 500, None), (2, 200, None)]


async def test_a_sub_task_that_fails_fails_the_attempt_not_the_relay(
    nursery, tmp_path, autojump_clock
):
    async def broken():
        await trio.sleep(0.25)
        raise RuntimeError("token endpoint unreachable")

    calls = []

    class Plugin:
        @hookimpl
        def prepare_request(self, webhook, request, attempt):  # a subset of the arguments
            calls.append(webhook.id)
            if len(calls) == 1:
                attempt.nursery.start_soon(broken)
            return request.with_headers(("X-Plugin", "yes"))

    transport = RecordingTransport(hang=1.0)
    relay = await start(nursery, tmp_path, transport, [Plugin()], backoff={"first": 10.0})
    await post_event(relay)
    await trio.sleep(100)
    assert attempts(relay) == [
        (1, None, "a task the attempt started failed: RuntimeError: token endpoint unreachable"),
        (2, 200, None),
    ]
    assert len(transport.times) == 2  # the send it cut short, then the retry


async def test_hooks_that_do_not_name_attempt_still_work(nursery, tmp_path, autojump_clock):
    """``attempt`` is passed only to what names it, as pluggy does: plugins and transports
    written before it keep working, and so do implementations naming fewer arguments."""
    seen = []

    class Old:
        @hookimpl
        def prepare_request(self, request):
            seen.append(request.method)

        @hookimpl
        def attempt_finished(self, outcome):
            seen.append(outcome.status)

    class OldTransport:
        async def send(self, webhook, request):
            return Response(status=204)

        async def aclose(self):
            pass

    relay = await start(nursery, tmp_path, OldTransport(), [Old()])
    await post_event(relay)
    await trio.sleep(10)
    assert seen == ["POST", 204]
    assert attempts(relay) == [(1, 204, None)]


RENDER_PLUGIN = """
import trio
from relay.plugins import hookimpl


@hookimpl
def prepare_request(webhook, request, attempt):
    async def forever():
        await trio.sleep_forever()

    async def fails():
        await trio.sleep(0.01)
        raise RuntimeError("refresh failed")

    if webhook.id == "ok":
        attempt.nursery.start_soon(forever)
        return request.with_headers(("X-Started", "forever"))
    attempt.nursery.start_soon(fails)
    return trio.sleep(1)
"""


def test_render_gives_hooks_a_nursery_too(tmp_path):
    """``relay webhooks render`` builds a request as an attempt does, without sending it: a
    hook naming ``attempt`` gets a nursery there too, whose tasks end with the building (the
    command would hang on the first, and the second's error is an attempt's error)."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "starts_tasks.py").write_text(RENDER_PLUGIN)
    (tmp_path / "relay.toml").write_text(
        '[[webhooks]]\nid = "ok"\nurl = "http://127.0.0.1:9/"\n'
        '[[webhooks]]\nid = "broken"\nurl = "http://127.0.0.1:9/"\n'
    )

    def render(webhook_id):
        return subprocess.run(
            [sys.executable, "-m", "relay", "webhooks", "render", webhook_id, "-c", "relay.toml"],
            capture_output=True,
            cwd=tmp_path,
            timeout=60,
        )

    done = render("ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(b"X-Started: forever") == 3  # the reference's three examples
    done = render("broken")
    assert done.returncode == 1, done.stderr
    failure = b"a task the attempt started failed: RuntimeError: refresh failed"
    assert done.stdout.count(b"# an attempt would fail: " + failure) == 3
