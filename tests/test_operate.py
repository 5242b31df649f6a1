"""Operating relay (issue 13): a failed delivery found (`relay deliveries --state failed`),
inspected (`relay deliveries show`), replayed (`relay replay`) and delivered; the admin API's
deliveries, replay and webhook endpoints; runtime webhook states in /api/status and /metrics.

Each command runs as a subprocess against the real daemon (its delivery process, its journal)
and a real h11 receiver on loopback, and against the journal of a stopped one.
"""

import getpass
import json
import sqlite3
from pathlib import Path

import httpx
import trio

from tests.admin import get, scrape, value, wait_for_metric
from tests.cli import relay_cli
from tests.conftest import seed_events, start_receiver
from tests.daemon import Daemon, add_plugin
from tests.test_admin import free_port

USER = getpass.getuser()
SENTINEL = "S3NTINEL-of-operate"


def write_relay(tmp_path: Path, url: str, *, admin: int | None = None, extra: str = "") -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f"""
[relay]
listen = "127.0.0.1:0"
socket = "relay.sock"
state_dir = "state"
allow_networks = ["127.0.0.0/8"]
{f'admin = "127.0.0.1:{admin}"' if admin else ""}

[[webhooks]]
id = "crm"
url = "{url}"
secret = "s3cret"
tries = 2
backoff = {{ first = 0.2, factor = 1.0 }}
{extra}
"""
    )
    return path


async def post(daemon: Daemon, body) -> list[str]:
    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        answer = await client.post("/events", json=body)
    assert answer.status_code == 202, answer.text
    return answer.json()["ids"]


async def listed(config: Path, *args: str) -> list[dict]:
    result = await relay_cli("deliveries", "-c", config, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def until_listed(config: Path, count: int, *args: str) -> list[dict]:
    with trio.fail_after(20):
        while len(rows := await listed(config, *args)) != count:
            await trio.sleep(0.1)
    return rows


async def stop(daemon: Daemon) -> None:
    daemon.process.terminate()
    assert await daemon.wait() == 0


async def test_a_failed_delivery_is_found_inspected_and_replayed(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500, 500]
    config = write_relay(tmp_path, receiver.url, admin=free_port())
    daemon = await Daemon(config).start()
    try:
        (event_id,) = await post(daemon, seed_events()[0])
        (failed,) = await until_listed(config, 1, "--state", "failed")
        assert failed["event_id"] == event_id and failed["last_status"] == 500

        shown = await relay_cli("deliveries", "show", failed["id"], "-c", config)
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert f"delivery {failed['id']} to crm: failed, 2 attempts (HTTP 500)" in text
        assert f"    > POST {receiver.url}" in text
        assert f"    > Relay-Delivery-Id: {failed['id']}" in text
        assert "    > Signature: " in text and "(body: the event's body" in text
        assert text.count("    < HTTP/1.1 500 ") == 2
        as_json = json.loads(
            (await relay_cli("deliveries", "show", event_id, "--json", "-c", config)).stdout
        )
        assert as_json["event"]["id"] == event_id
        assert json.loads(as_json["event"]["body"]) == seed_events()[0]
        (delivery,) = as_json["deliveries"]
        assert [a["number"] for a in delivery["history"]] == [1, 2]
        assert all(a["request"]["body_is_event"] for a in delivery["history"])

        # The receiver is fixed (it answers 200 from now on): replay what failed.
        dry = await relay_cli("replay", "--webhook", "crm", "--dry-run", "-c", config)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.split() == [failed["id"], "crm", "failed", "2", "attempts"]
        assert "would replay 1 delivery (dry run: nothing changed)" in dry.stderr
        replayed = await relay_cli("replay", "--webhook", "crm", "-c", config)
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout == f"replayed 1 delivery, by {USER}, through the running relay\n"
        await receiver.wait_for(3)
        (delivered,) = await until_listed(config, 1, "--state", "delivered")
        assert delivered["attempts"] == 3

        text = (await relay_cli("deliveries", "show", failed["id"], "-c", config)).stdout
        assert "replayed " in text and f"by {USER} via admin api from 127.0.0.1:" in text
        assert "(2 attempts before: tries count anew)" in text
        assert "  attempt 3, " in text and "    < HTTP/1.1 200 " in text
        again = await relay_cli("replay", failed["id"], "--dry-run", "-c", config)
        assert again.stdout.split()[2] == "delivered"  # a delivered one may go again too
    finally:
        await stop(daemon)


async def test_with_the_relay_stopped_the_commands_use_the_journal_file(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500, 500]
    config = write_relay(tmp_path, receiver.url, admin=free_port())  # nobody listens there
    daemon = await Daemon(config).start()
    (event_id,) = await post(daemon, seed_events()[0])
    (failed,) = await until_listed(config, 1, "--state", "failed")
    await stop(daemon)

    shown = await relay_cli("deliveries", "show", event_id, "-c", config)
    assert shown.returncode == 0 and "failed, 2 attempts (HTTP 500)" in shown.stdout
    # [relay] admin is set, and nobody answers there: the file it is, for a state too.
    disabled = await relay_cli("webhooks", "disable", "crm", "-c", config)
    assert disabled.returncode == 0 and disabled.stdout == "disabled crm\n"
    assert "no relay is running: it applies when the relay starts" in disabled.stderr
    assert (await relay_cli("webhooks", "enable", "crm", "-c", config)).returncode == 0
    replayed = await relay_cli("replay", event_id, "-c", config)  # an event's id: its deliveries
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == (
        f"replayed 1 delivery, by {USER}, in the journal: the relay sends them when it starts\n"
    )
    (waiting,) = await listed(config, "--state", "pending")
    assert waiting["id"] == failed["id"] and waiting["next_attempt_at"] is not None
    text = (await relay_cli("deliveries", "show", failed["id"], "-c", config)).stdout
    assert "pending, replayed: waiting for room in its lane" in text
    assert f"by {USER} (2 attempts before" in text

    daemon = await Daemon(config).start()
    try:
        await receiver.wait_for(3)
        (delivered,) = await until_listed(config, 1, "--state", "delivered")
        assert delivered["id"] == failed["id"] and delivered["attempts"] == 3
    finally:
        await stop(daemon)
    nothing = await relay_cli("replay", "--webhook", "crm", "-c", config)
    assert nothing.returncode == 0 and "nothing to replay: crm has no failed" in nothing.stderr
    unknown = await relay_cli("replay", "--webhook", "erp", "-c", config)
    assert unknown.returncode == 2 and "no webhook 'erp' (webhooks: crm)" in unknown.stderr
    both = await relay_cli("replay", "x", "--webhook", "crm", "-c", config)
    assert both.returncode == 2 and "not both" in both.stderr


async def test_a_running_relay_without_an_admin_listener_takes_a_replay_at_once(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500, 500]
    config = write_relay(tmp_path, receiver.url)
    daemon = await Daemon(config).start()
    try:
        await post(daemon, seed_events()[0])
        (failed,) = await until_listed(config, 1, "--state", "failed")
        replayed = await relay_cli("replay", failed["id"], "-c", config)
        assert replayed.returncode == 0, replayed.stderr
        assert "the running relay was asked to reload to take them" in replayed.stdout
        await receiver.wait_for(3)
        await until_listed(config, 1, "--state", "delivered")
    finally:
        await stop(daemon)


async def test_a_delivery_in_flight_is_not_replayed(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    receiver.hang = 30
    config = write_relay(tmp_path, receiver.url, extra="timeout = 60")
    daemon = await Daemon(config).start()
    try:
        await post(daemon, seed_events()[0])
        await receiver.wait_for(1)  # being attempted: in the relay's memory
        (pending,) = await listed(config)
        replayed = await relay_cli("replay", pending["id"], "-c", config)
        assert replayed.returncode == 1
        assert replayed.stdout == f"replayed 0 deliveries, by {USER}, in the journal; " + (
            "the running relay was asked to reload to take them\n"
        )
        assert f"skipped {pending['id']}: in flight: the relay holds it in memory" in (
            replayed.stderr
        )
        with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as conn:
            assert conn.execute("SELECT COUNT(*) FROM replays").fetchone() == (0,)
    finally:
        daemon.process.kill()
        await daemon.wait()


async def test_the_admin_api_pages_shows_replays_and_names_bad_fields(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500] * 10
    port = free_port()
    config = write_relay(tmp_path, receiver.url, admin=port)
    url = f"http://127.0.0.1:{port}"
    daemon = await Daemon(config).start()
    try:
        ids = await post(daemon, [seed_events()[0]] * 5)
        rows = await until_listed(config, 5, "--state", "failed")
        pages, before = [], None
        while True:
            params = {"state": "failed", "limit": 2} | ({"before": before} if before else {})
            page = (await get(url, "/api/deliveries", params=params)).json()
            pages.append([row["id"] for row in page["deliveries"]])
            if (before := page["next_before"]) is None:
                break
        assert [len(p) for p in pages] == [2, 2, 1]
        assert sum(pages, []) == [row["id"] for row in rows]  # newest first, none twice
        (first,) = (await get(url, "/api/deliveries", params={"event": ids[0]})).json()[
            "deliveries"
        ]
        assert first["event_id"] == ids[0] and first["state"] == "failed"

        bad = await get(url, "/api/deliveries", params={"limit": "0", "state": "gone", "x": "1"})
        assert bad.status_code == 400
        assert {p["field"] for p in bad.json()["problems"]} == {"x"}
        bad = await get(url, "/api/deliveries", params={"limit": "0"})
        assert bad.status_code == 400
        assert bad.json()["problems"] == [
            {"field": "limit", "reason": "expected a whole number from 1 to 1000, got '0'"}
        ]
        missing = await get(url, "/api/deliveries/nope")
        assert missing.status_code == 404 and missing.json()["problems"][0]["field"] == "id"

        shown = (await get(url, f"/api/deliveries/{first['id']}")).json()
        command = await relay_cli("deliveries", "show", first["id"], "--json", "-c", config)
        assert shown == json.loads(command.stdout)  # the command and the API say the same

        for body, status, field in [
            ({}, 422, "ids"),
            ({"ids": ["a"], "webhook": "crm"}, 422, "ids"),
            ({"webhook": "erp"}, 404, "webhook"),
            ({"webhook": "crm", "state": "gone"}, 422, "state"),
            ({"ids": [first["id"]], "since": 1}, 422, "since"),
            ({"ids": [1]}, 422, "ids"),
            ({"ids": ["a"], "dry_run": "yes"}, 422, "dry_run"),
            ({"ids": ["a"], "colour": "red"}, 422, "colour"),
        ]:
            refused = await get(url, "/api/replay", method="POST", json=body)
            assert refused.status_code == status, (body, refused.text)
            assert [p["field"] for p in refused.json()["problems"]] == [field], body
        malformed = await get(url, "/api/replay", method="POST", content=b"{nope")
        assert malformed.status_code == 400

        receiver.statuses = []
        answer = await get(
            url, "/api/replay", method="POST", json={"webhook": "crm", "since": 0, "by": "ops"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["by"].startswith("ops via admin api from 127.0.0.1:")
        assert len(answer.json()["replayed"]) == 5
        await receiver.wait_for(15)
        await until_listed(config, 5, "--state", "delivered")
        # The pending counts follow: 5 failed, made pending by the replay, then delivered.
        receiver.hang = 30
        await post(daemon, seed_events()[0])
        await receiver.wait_for(16)
        # The delivered five reach the count with the delivery process's next report (0.5 s).
        await wait_for_metric(url, "relay_deliveries_pending", 1, webhook="crm")
        (crm,) = (await get(url, "/api/status")).json()["webhooks"]
        assert crm["pending"] == 1
    finally:
        daemon.process.kill()
        await daemon.wait()


async def test_runtime_webhook_states_show_in_status_and_metrics(tmp_path, nursery):
    """A 410 Gone (in the delivery process), then `relay webhooks enable` and `disable`
    through the admin listener: /api/status, relay_webhook_enabled and `relay status` follow."""
    receiver = await start_receiver(nursery)
    receiver.statuses = [410]
    port = free_port()
    config = write_relay(tmp_path, receiver.url, admin=port)
    url = f"http://127.0.0.1:{port}"
    daemon = await Daemon(config).start()
    try:
        await post(daemon, seed_events()[0])
        await wait_for_metric(url, "relay_webhook_enabled", 0, webhook="crm")
        (crm,) = (await get(url, "/api/status")).json()["webhooks"]
        assert not crm["enabled"]
        assert crm["disabled_reason"] == f"410 Gone from {receiver.url}"
        status = await relay_cli("status", "-c", config)
        assert f"crm is disabled: 410 Gone from {receiver.url}" in status.stdout
        assert [w["enabled"] for w in (await get(url, "/api/webhooks")).json()["webhooks"]] == [
            False
        ]

        enabled = await relay_cli("webhooks", "enable", "crm", "-c", config)
        assert enabled.returncode == 0 and enabled.stdout == "enabled crm\n"
        assert value(await scrape(url), "relay_webhook_enabled", webhook="crm") == 1
        disabled = await relay_cli("webhooks", "disable", "crm", "--reason", "moving", "-c", config)
        assert disabled.returncode == 0 and disabled.stdout == "disabled crm\n"
        assert "no relay is running" not in disabled.stderr  # it went through the relay
        (crm,) = (await get(url, "/api/status")).json()["webhooks"]
        assert (crm["enabled"], crm["disabled_reason"]) == (False, "moving")
        await post(daemon, seed_events()[0])
        await trio.sleep(0.5)  # what would arrive, would by now (a negative check)
        assert len(receiver.requests) == 1

        answer = await get(url, "/api/webhooks/crm/enable", method="POST")
        assert answer.json() == {
            "webhook_id": "crm",
            "enabled": True,
            "reason": None,
            "configured_enabled": True,
        }
        await receiver.wait_for(2)
        missing = await get(url, "/api/webhooks/erp/disable", method="POST")
        assert missing.status_code == 404
        wrong = await get(url, "/api/webhooks/crm/disable", method="POST", json={"why": 1})
        assert wrong.status_code == 422 and wrong.json()["problems"][0]["field"] == "why"
    finally:
        await stop(daemon)


SECRETS_PLUGIN = f'''
from relay.plugins import hookimpl


@hookimpl
def prepare_request(webhook, delivery, request):
    url = request.url.replace("http://", "http://relay:{SENTINEL}-userinfo@")
    request = request.with_headers(("X-Custom-Auth", "{SENTINEL}-header"))
    return type(request)(request.method, url, request.headers, request.body)
'''


async def test_no_secret_shows_in_a_record_show_or_the_api(tmp_path, nursery):
    """A sentinel in a header from [secrets], in a header a plugin adds, and in the userinfo a
    plugin puts in the URL: sent, and never in the journal's records, `relay deliveries show`
    or GET /api/deliveries/{id}."""
    receiver = await start_receiver(nursery)
    receiver.statuses = [500]
    port = free_port()
    extra = 'headers = { Authorization = "Bearer %token%", X-Source = "relay" }\n'
    config = write_relay(tmp_path, receiver.url, admin=port, extra=extra)
    config.write_text(config.read_text() + f'\n[secrets]\ntoken = "{SENTINEL}-token"\n')
    add_plugin(tmp_path, "leaky", SECRETS_PLUGIN)
    daemon = await Daemon(config).start()
    try:
        (event_id,) = await post(daemon, seed_events()[0])
        await receiver.wait_for(2)
        (delivery,) = await until_listed(config, 1, "--state", "delivered")
        sent = receiver.requests[0].headers
        assert sent["authorization"] == f"Bearer {SENTINEL}-token"  # in use, on the wire
        assert sent["x-custom-auth"] == f"{SENTINEL}-header"
        outputs = [
            (await relay_cli("deliveries", "show", event_id, *more, "-c", config)).stdout
            for more in ((), ("--json",))
        ]
        outputs.append((await get(f"http://127.0.0.1:{port}", f"/api/deliveries/{event_id}")).text)
        with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as conn:
            records = conn.execute("SELECT request, response FROM attempts").fetchall()
        assert len(records) == 2 and all(request for request, _ in records)
        outputs += [bytes(r).decode() for pair in records for r in pair]
        for output in outputs:
            assert SENTINEL not in output
        assert "> Authorization: ***" in outputs[0] and "> X-Custom-Auth: ***" in outputs[0]
        assert "> POST http://***@127.0.0.1:" in outputs[0]
        assert "> X-Source: relay" in outputs[0]
        assert delivery["attempts"] == 2
    finally:
        await stop(daemon)
    assert SENTINEL not in daemon.log.read_text()


async def test_thousands_replayed_into_a_stopped_journal_show_a_progress_bar(tmp_path):
    from relay.journal import sqlite as journal_sql
    from tests.cli import relay_on_terminal

    config = write_relay(tmp_path, "http://127.0.0.1:9/hook")
    conn = journal_sql.connect(tmp_path / "state")
    count = 1200
    events = [(f"e{n:05d}", "whatsapp:message:status", b"{}", 1.0) for n in range(count)]
    deliveries = [(f"d{n:05d}", f"e{n:05d}", "crm", 1.0, 1.0) for n in range(count)]
    failed = [("failed", 2, None, 2.0, "HTTP 500", f"d{n:05d}") for n in range(count)]
    journal_sql.run_batch(
        conn, [("append", (events, deliveries)), ("record_attempts", ([], failed))]
    )
    conn.close()
    result, screen = await relay_on_terminal(
        "replay", "--webhook", "crm", "-c", str(config), stream="stderr"
    )
    assert result.returncode == 0, screen
    assert result.stdout == (
        f"replayed 1,200 deliveries, by {USER}, in the journal: the relay sends them when it"
        " starts\n"
    )
    assert b"replaying" in screen and b"deliveries" in screen  # the bar, on the terminal
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM replays").fetchone() == (count,)
        assert conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND attempt_base = 2"
        ).fetchone() == (count,)
