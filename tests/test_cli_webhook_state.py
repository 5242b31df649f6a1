"""``relay webhooks disable/enable/show/remove``: against the real daemon (its delivery
process, its journal) and on a stopped one."""

import httpx
import trio

from tests.cli import relay_cli
from tests.conftest import seed_events, start_receiver
from tests.daemon import Daemon, webhook_toml, write_config


async def post(daemon: Daemon, body) -> None:
    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        assert (await client.post("/events", json=body)).status_code == 202


async def test_disable_and_enable_a_running_relays_webhook(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    config = write_config(tmp_path, receiver.url)
    daemon = await Daemon(config).start()
    try:
        result = await relay_cli("webhooks", "disable", "crm", "--reason", "moving", "-c", config)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "disabled crm\n"
        for event in seed_events():
            await post(daemon, event)
        await trio.sleep(1.0)  # what would arrive, would arrive by now (a negative check)
        assert receiver.requests == []
        shown = await relay_cli("webhooks", "show", "crm", "-c", config)
        assert "disabled since" in shown.stdout and ": moving" in shown.stdout
        assert "pending:       3" in shown.stdout
        result = await relay_cli("webhooks", "enable", "crm", "-c", config)
        assert result.returncode == 0, result.stderr
        await receiver.wait_for(3)
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0


async def test_a_state_set_while_stopped_applies_at_start(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    config = write_config(tmp_path, receiver.url)
    result = await relay_cli("webhooks", "disable", "crm", "-c", config)
    assert result.returncode == 0, result.stderr
    assert "no relay is running" in result.stderr
    daemon = await Daemon(config).start()
    try:
        await post(daemon, seed_events()[0])
        await trio.sleep(1.0)
        assert receiver.requests == []
        assert (await relay_cli("webhooks", "enable", "crm", "-c", config)).returncode == 0
        await receiver.wait_for(1)
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0


async def test_show_masks_secrets_and_an_unknown_id_is_named(tmp_path):
    config = write_config(
        tmp_path,
        webhooks=webhook_toml("crm", "http://127.0.0.1:9/hook?token=t0ken")
        + 'secret = "s3cret"\nheaders = { Authorization = "Bearer b34rer" }\n',
    )
    shown = await relay_cli("webhooks", "show", "crm", "-c", config)
    assert shown.returncode == 0, shown.stderr
    for secret in ("t0ken", "s3cret", "b34rer"):
        assert secret not in shown.stdout
    assert "url:           http://127.0.0.1:9/hook?***" in shown.stdout
    assert "state:         enabled" in shown.stdout
    missing = await relay_cli("webhooks", "disable", "nope", "-c", config)
    assert missing.returncode == 2
    assert "no webhook 'nope' (webhooks: crm)" in missing.stderr


async def test_remove_keeps_the_rest_of_the_file(tmp_path):
    config = write_config(
        tmp_path,
        webhooks="# the CRM\n"
        + webhook_toml("crm", "http://127.0.0.1:9/a").replace('"crm"', '"crm"  # keep')
        + webhook_toml("old", "http://127.0.0.1:9/b"),
    )
    result = await relay_cli("webhooks", "remove", "old", "-c", config)
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    assert "# the CRM" in text and 'id = "crm"  # keep' in text
    assert '"old"' not in text and "/b" not in text
    again = await relay_cli("webhooks", "remove", "old", "-c", config)
    assert again.returncode == 2 and "no webhook 'old'" in again.stderr
