"""Live reload of the real daemon: SIGHUP and `relay reload`, nothing in flight lost."""

import signal

import httpx
import pytest
import trio

from tests.cli import relay_cli
from tests.conftest import seed_events, start_receiver
from tests.daemon import Daemon, add_plugin, webhook_toml, write_config

STATUS = seed_events()[0]


async def post(daemon: Daemon, body) -> httpx.Response:
    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        return await client.post("/events", json=body)


async def health(daemon: Daemon) -> dict:
    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        return (await client.get("/healthz")).json()


async def wait_for_log(daemon: Daemon, text: str, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while text not in daemon.log.read_text():
            await trio.sleep(0.05)


@pytest.fixture
async def running(tmp_path, nursery):
    daemons = []

    async def start(config) -> Daemon:
        daemon = await Daemon(config).start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.process.terminate()
            assert await daemon.wait() == 0


@pytest.mark.parametrize("how", ["sighup", "relay reload"])
async def test_a_fixed_url_takes_effect_on_the_next_retry(tmp_path, nursery, running, how):
    broken, fixed = await start_receiver(nursery), await start_receiver(nursery)
    broken.statuses = [500] * 1000
    config = write_config(tmp_path, broken.url)
    daemon = await running(config)
    assert (await post(daemon, STATUS)).status_code == 202
    await broken.wait_for(2)  # retrying

    config.write_text(config.read_text().replace(broken.url, fixed.url))
    if how == "sighup":
        daemon.process.send_signal(signal.SIGHUP)
    else:
        result = await relay_cli("reload", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert "reloaded: 1 webhook(s)" in result.stdout
    (request,) = await fixed.wait_for(1)
    assert request.body == (await broken.wait_for(1))[0].body
    assert request.headers["relay-delivery-id"] == broken.requests[0].headers["relay-delivery-id"]


async def test_an_invalid_config_changes_nothing(tmp_path, nursery, running):
    receiver = await start_receiver(nursery)
    config = write_config(tmp_path, receiver.url)
    daemon = await running(config)
    good = config.read_text()
    config.write_text(good.replace('id = "crm"', 'id = "crm"\nsecret = 42\ntimeout = -1'))

    result = await relay_cli("reload", "--config", str(config))
    assert result.returncode == 1
    assert "relay.toml: webhooks[0].secret: expected a string" in result.stderr
    daemon.process.send_signal(signal.SIGHUP)
    await wait_for_log(daemon, "reload rejected")

    assert (await post(daemon, STATUS)).status_code == 202
    await receiver.wait_for(1)  # still served by the old configuration
    assert daemon.process.poll() is None


async def test_a_transport_the_delivery_process_cannot_open_rejects_the_reload(
    tmp_path, nursery, running
):
    add_plugin(
        tmp_path,
        "broken",
        "from relay.plugins import hookimpl\n"
        "def broken(config):\n"
        "    raise RuntimeError('cannot reach the broker')\n"
        "@hookimpl\n"
        "def register_transports(register):\n"
        "    register('broken', broken)\n",
    )
    receiver = await start_receiver(nursery)
    config = write_config(tmp_path, receiver.url)
    daemon = await running(config)
    config.write_text(
        config.read_text() + webhook_toml("new", receiver.url) + 'transport = "broken"\n'
    )

    result = await relay_cli("reload", "--config", str(config))
    assert result.returncode == 1
    assert "RuntimeError: cannot reach the broker" in result.stderr
    assert (await health(daemon))["webhooks"] == 1  # neither process changed
    assert (await post(daemon, STATUS)).status_code == 202
    await receiver.wait_for(1)


async def test_a_removed_webhook_is_parked_and_resumes_when_it_returns(tmp_path, nursery, running):
    receiver = await start_receiver(nursery)
    receiver.statuses = [503] * 1000
    other = await start_receiver(nursery)
    both = webhook_toml("crm", receiver.url) + webhook_toml("other", other.url)
    config = write_config(tmp_path, webhooks=both)
    daemon = await running(config)
    assert (await post(daemon, [STATUS, STATUS])).status_code == 202
    await receiver.wait_for(2)

    config.write_text(config.read_text().replace(webhook_toml("crm", receiver.url), ""))
    result = await relay_cli("reload", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "removed: crm" in result.stdout
    await trio.sleep(0.5)  # several retry periods: nothing goes to a removed webhook
    seen = len(receiver.requests)
    await trio.sleep(0.5)
    assert len(receiver.requests) == seen

    listed = await relay_cli("deliveries", "--config", str(config), "--state", "parked")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(" crm ") == 2

    receiver.statuses.clear()
    config.write_text(config.read_text() + webhook_toml("crm", receiver.url))
    daemon.process.send_signal(signal.SIGHUP)
    with trio.fail_after(10):
        while sum(1 for r in receiver.requests[seen:]) < 2:
            await trio.sleep(0.05)
    assert len(other.requests) == 2  # the other webhook was never disturbed


async def test_an_added_webhook_receives_new_events_at_once(tmp_path, nursery, running):
    first, added = await start_receiver(nursery), await start_receiver(nursery)
    config = write_config(tmp_path, first.url)
    daemon = await running(config)
    config.write_text(config.read_text() + webhook_toml("added", added.url))
    assert (await relay_cli("reload", "--config", str(config))).returncode == 0
    assert (await post(daemon, STATUS)).status_code == 202
    await first.wait_for(1)
    await added.wait_for(1)


async def test_a_storm_of_sighups_leaves_one_config_and_no_leaked_tasks(tmp_path, nursery, running):
    receiver = await start_receiver(nursery)
    config = write_config(tmp_path, receiver.url)
    daemon = await running(config)
    before = await health(daemon)
    for _ in range(100):
        daemon.process.send_signal(signal.SIGHUP)
        await trio.sleep(0.005)
    await wait_for_log(daemon, "reloaded relay.toml")
    await trio.sleep(0.5)  # let the last reload land
    after = await health(daemon)
    assert after["status"] == "ok" and after["webhooks"] == 1
    assert after["tasks"] == before["tasks"]
    assert (await post(daemon, STATUS)).status_code == 202
    await receiver.wait_for(1)


async def test_removed_and_readded_while_deliveries_wait_in_its_queue(tmp_path, nursery, running):
    receiver = await start_receiver(nursery)
    receiver.hang = 1.5  # the first attempt holds the only worker; the rest wait in the queue
    hook = webhook_toml("crm", receiver.url).replace("tries = 100", "tries = 100\nconcurrency = 1")
    config = write_config(tmp_path, webhooks=hook)
    daemon = await running(config)
    assert (await post(daemon, [STATUS] * 3)).status_code == 202
    await receiver.wait_for(1)
    receiver.hang = 0

    config.write_text(config.read_text().replace(hook, ""))
    daemon.process.send_signal(signal.SIGHUP)
    await wait_for_log(daemon, "removed: crm")
    config.write_text(config.read_text() + hook)
    daemon.process.send_signal(signal.SIGHUP)
    requests = await receiver.wait_for(3, timeout=10)
    assert len({r.headers["relay-delivery-id"] for r in requests}) == 3


async def test_a_file_that_is_not_utf8_is_rejected_and_the_relay_keeps_serving(
    tmp_path, nursery, running
):
    receiver = await start_receiver(nursery)
    config = write_config(tmp_path, receiver.url)
    daemon = await running(config)
    config.write_bytes(config.read_bytes() + b"# caf\xe9\n")
    daemon.process.send_signal(signal.SIGHUP)
    await wait_for_log(daemon, "relay.toml: not UTF-8 text")
    assert (await post(daemon, STATUS)).status_code == 202
    await receiver.wait_for(1)
