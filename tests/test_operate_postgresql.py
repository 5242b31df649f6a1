"""The operator's side on a shared PostgreSQL journal, against a real daemon: the admin API's
listing, history and replay by webhook, the console's pages, `relay_journal_bytes`, and `relay
deliveries show` and `relay replay`, each reading (and writing) the database, not a SQLite
file in state_dir."""

import getpass
import json
from urllib.parse import urlsplit

import httpx
import psycopg
import trio

from tests.admin import get, scrape, value, wait_for_metric
from tests.cli import relay_cli
from tests.conftest import seed_events, start_receiver
from tests.daemon import Daemon, alive
from tests.test_admin import free_port
from tests.test_operate import post, until_listed, write_relay


def on_postgresql(tmp_path, receiver_url: str, url: str, *, admin: int | None = None):
    return write_relay(tmp_path, receiver_url, admin=admin, extra=f'[journal]\nurl = "{url}"\n')


def marked(n: int) -> dict:
    status = seed_events()[0]
    return {**status, "payload": {**status["payload"], "id": f"wamid.{n}"}}


async def test_the_admin_api_and_the_console_read_and_replay_the_shared_journal(
    tmp_path, nursery, postgresql_url
):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500] * 6  # three events, two tries each
    port = free_port()
    config = on_postgresql(tmp_path, receiver.url, postgresql_url, admin=port)
    url = f"http://127.0.0.1:{port}"
    daemon = await Daemon(config).start()
    try:
        ids = await post(daemon, [marked(n) for n in range(3)])
        rows = await until_listed(config, 3, "--state", "failed")
        assert not (tmp_path / "state" / "journal.sqlite3").exists()
        assert value(await scrape(url), "relay_journal_bytes") > 100_000  # its tables' pages

        first = (await get(url, "/api/deliveries", params={"state": "failed", "limit": 2})).json()
        rest = await get(
            url, "/api/deliveries", params={"state": "failed", "before": first["next_before"]}
        )
        listed = [row["id"] for row in first["deliveries"] + rest.json()["deliveries"]]
        assert listed == [row["id"] for row in rows]  # newest first, none twice
        assert rest.json()["next_before"] is None

        delivery_id = rows[-1]["id"]  # the first event's
        shown = (await get(url, f"/api/deliveries/{ids[0]}")).json()
        assert shown["event"]["id"] == ids[0]
        (delivery,) = shown["deliveries"]
        assert delivery["id"] == delivery_id and delivery["state"] == "failed"
        attempts = delivery["history"]
        assert [a["status"] for a in attempts] == [500, 500]
        assert attempts[0]["response"]["status_line"].startswith("HTTP/1.1 500")
        command = await relay_cli("deliveries", "show", delivery_id, "--json", "-c", config)
        assert command.returncode == 0, command.stderr
        assert (await get(url, f"/api/deliveries/{delivery_id}")).json() == json.loads(
            command.stdout
        )

        async with httpx.AsyncClient(base_url=url, timeout=10) as browser:
            page = await browser.get(
                "/console/deliveries", params={"state": "failed", "event": "whatsapp:*:status"}
            )
            assert page.status_code == 200
            assert all(row["id"] in page.text for row in rows)
            none = await browser.get(
                "/console/deliveries", params={"state": "failed", "event": "whatsapp:*:in"}
            )
            assert none.status_code == 200 and rows[0]["id"] not in none.text
            # LIKE's own wildcards are the name's characters: "%" matches only itself.
            literal = await browser.get(
                "/console/deliveries", params={"state": "failed", "event": "whatsapp%*"}
            )
            assert literal.status_code == 200 and rows[0]["id"] not in literal.text
            one = await browser.get(f"/console/deliveries/{delivery_id}")
            assert one.status_code == 200 and delivery_id in one.text and "500" in one.text

        receiver.statuses = []
        answer = await get(
            url, "/api/replay", method="POST", json={"webhook": "crm", "since": 0, "by": "ops"}
        )
        assert answer.status_code == 200, answer.text
        assert sorted(r["id"] for r in answer.json()["replayed"]) == sorted(listed)
        await receiver.wait_for(9)
        await until_listed(config, 3, "--state", "delivered")
    finally:
        daemon.process.kill()
        await daemon.wait()


async def test_relay_replay_writes_the_database_and_the_running_relay_takes_it_unasked(
    tmp_path, nursery, postgresql_url
):
    """No admin listener: the command writes the replay into the database, whose notification
    reaches the running relay (no reload); stopped, its deliveries are replayed for the next
    start, and `relay deliveries show` reads them there."""
    receiver = await start_receiver(nursery)
    receiver.statuses = [500] * 4
    config = on_postgresql(tmp_path, receiver.url, postgresql_url)
    daemon = await Daemon(config).start()
    try:
        await post(daemon, [marked(n) for n in range(2)])
        rows = await until_listed(config, 2, "--state", "failed")
        receiver.statuses = [200]
        replay = await relay_cli("replay", rows[0]["id"], "-c", config)
        assert replay.returncode == 0, replay.stderr
        assert "replayed 1 delivery" in replay.stdout
        assert "in the journal; every relay on it takes them" in replay.stdout
        (request,) = (await receiver.wait_for(5))[4:]
        assert request.header("relay-delivery-id") == rows[0]["id"]
        await until_listed(config, 1, "--state", "delivered")
    finally:
        daemon.process.terminate()
        assert await daemon.wait() == 0

    again = await relay_cli("replay", "--webhook", "crm", "-c", config)
    assert again.returncode == 0, again.stderr
    assert "replayed 1 delivery" in again.stdout
    shown = await relay_cli("deliveries", "show", rows[1]["id"], "--json", "-c", config)
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)
    (delivery,) = shown["deliveries"]
    assert delivery["state"] == "pending" and delivery["replays"][0]["attempts_before"] == 2
    with psycopg.connect(postgresql_url) as conn:
        assert conn.execute("SELECT count(*) FROM replays").fetchone() == (2,)

    missing = await relay_cli("deliveries", "show", "nope", "-c", config)
    assert missing.returncode != 0
    assert "no delivery or event 'nope' in postgresql://" in missing.stderr
    assert "journal.sqlite3" not in missing.stderr

    daemon = await Daemon(config).start()  # the next start sends what was replayed meanwhile
    try:
        with trio.fail_after(20):
            while rows[1]["id"] not in [r.header("relay-delivery-id") for r in receiver.requests]:
                await trio.sleep(0.05)
    finally:
        daemon.process.terminate()
        await daemon.wait()


async def test_every_relay_on_the_journal_counts_the_pending_deliveries_of_all(
    tmp_path, nursery, postgresql_url
):
    """Relay A takes events for a webhook it has disabled in its relay.toml: it keeps them
    asleep in the journal, and relay B, whose crm is enabled, delivers them. A's counts kept
    by itself would say 3 pending for ever; both say what the database holds."""
    receiver = await start_receiver(nursery)
    relays, urls = [], []
    for name, extra in (("a", "enabled = false\n"), ("b", "")):
        where = tmp_path / name
        where.mkdir()
        port = free_port()
        urls.append(f"http://127.0.0.1:{port}")
        journal = f'[journal]\nurl = "{postgresql_url}"\n'
        relays.append(
            await Daemon(
                write_relay(where, receiver.url, admin=port, extra=extra + journal)
            ).start()
        )
    try:
        a, b = relays
        await post(a, [marked(n) for n in range(3)])
        await receiver.wait_for(3)  # by B
        for url in urls:
            await wait_for_metric(url, "relay_deliveries_pending", 0, webhook="crm")
            (crm,) = (await get(url, "/api/status")).json()["webhooks"]
            assert crm["pending"] == 0
        receiver.hang = 30  # the next one stays pending, in B's memory
        await post(a, marked(9))
        for url in urls:
            await wait_for_metric(url, "relay_deliveries_pending", 1, webhook="crm")
    finally:
        for daemon in relays:
            daemon.process.kill()
            await daemon.wait()


async def test_a_database_that_refuses_new_connections_makes_a_503_and_a_message(
    tmp_path, nursery, postgresql_server
):
    """The relay's own connection stays up, the reads on connections of their own are refused
    (a full pool, max_connections, pg_hba): the admin listener answers 503 saying why, the
    commands say it in a line, and neither shows the URL's password."""
    url = postgresql_server.new_database()
    name = urlsplit(url).path.lstrip("/")
    receiver = await start_receiver(nursery)
    port = free_port()
    config = on_postgresql(tmp_path, receiver.url, url, admin=port)
    admin = f"http://127.0.0.1:{port}"
    daemon = await Daemon(config).start()
    try:
        (event_id,) = await post(daemon, marked(1))
        await receiver.wait_for(1)
        with postgresql_server.admin() as conn:
            conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            for path in (
                "/metrics",
                "/api/status",
                "/api/deliveries",
                f"/api/deliveries/{event_id}",
            ):
                refused = await get(admin, path)
                assert refused.status_code == 503, (path, refused.text)
                assert "the journal is unavailable" in refused.text
            page = await get(admin, "/console/deliveries")
            assert page.status_code == 503 and "The journal is unavailable" in page.text
            for args in (("deliveries", "show", event_id), ("replay", "--webhook", "crm")):
                command = await relay_cli(*args, "-c", config)
                assert command.returncode == 1, command.stderr
                (line,) = command.stderr.splitlines()  # a line, no traceback
                assert line.startswith(f"relay {args[0]}: cannot read the journal: ")
        finally:
            with postgresql_server.admin() as conn:
                conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        assert (await get(admin, "/api/status")).status_code == 200
    finally:
        daemon.process.kill()
        await daemon.wait()


def test_a_time_window_over_a_journal_with_no_deliveries_selects_none(tmp_path, journal_url):
    """The binary search for a window's first row found no row to look at, and raised."""
    from relay.journal import history, schema

    if journal_url is None:
        schema.connect(tmp_path, start_run=False).close()
    since, until = 1.0, 2e9
    assert history.select(tmp_path, webhook_id="crm", since=since, url=journal_url) == []
    assert history.select(tmp_path, webhook_id="crm", until=until, url=journal_url) == []


async def test_relay_replay_after_a_kill_9_takes_what_this_state_dirs_relay_held(
    tmp_path, nursery, postgresql_url
):
    """The relay held a delivery in memory (its attempt hangs) when it was killed: `relay
    replay` holds the state_dir's lock, so it knows that relay's runs are dead, and replays the
    delivery at once, not once its lease expires (30 s by default)."""
    receiver = await start_receiver(nursery)
    receiver.hang = 60
    config = on_postgresql(tmp_path, receiver.url, postgresql_url)
    daemon = await Daemon(config).start()
    await post(daemon, marked(1))
    (request,) = await receiver.wait_for(1)
    pids = daemon.kill_9("relay")
    await daemon.wait()
    with trio.fail_after(20):
        while alive(pids["writer"]) or alive(pids["delivery"]):
            await trio.sleep(0.05)
    delivery_id = request.header("relay-delivery-id")
    replay = await relay_cli("replay", delivery_id, "-c", config)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 delivery" in replay.stdout
    with psycopg.connect(postgresql_url) as conn:
        assert conn.execute("SELECT by FROM replays").fetchall() == [(getpass.getuser(),)]
