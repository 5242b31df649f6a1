"""The web console over plain HTTP, against a real relay on loopback: its session and login, the
checks that refuse a cross-site POST (the form's token, the Origin), what its pages say (the
webhooks' recent rates, a delivery's records, masked), and the pieces under them: the recent
attempts' ring (relay/delivery/recent.py) across the delivery process's reports, and the
deliveries' keyset pages with a bounded walk (relay/journal/views.py's page). The browser's
side is tests/test_console_browser.py."""

import re
from types import SimpleNamespace

import httpx
import pytest
import trio

from relay.admin.console import pages, session
from relay.delivery.recent import SECONDS, Recent, bin_middle, bin_of
from relay.delivery.stats import DeliveryStats
from relay.ingest.stats import IngestStats
from relay.journal import views
from relay.model import Outcome
from tests.admin import admin_url
from tests.conftest import seed_events, start_receiver

STATUS = seed_events()[0]
TOKEN = "console-t0ken-never-shown"
SECRET = "console-s3cret-never-shown"


async def console_relay(start_relay, receiver, **settings):
    webhooks = [{"id": "crm", "url": receiver.url, "secret": SECRET, "tries": 1}]
    running = await start_relay(webhooks, admin="127.0.0.1:0", **settings)
    return running, admin_url(running.relay)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


async def test_a_post_needs_the_sessions_token_and_the_listeners_own_origin(start_relay, nursery):
    receiver = await start_receiver(nursery)
    running, url = await console_relay(start_relay, receiver)
    relay = running.relay
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        page = await client.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/console/"
        page = await client.get("/console/")
        assert page.status_code == 200
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "script-src 'self'" in page.headers["content-security-policy"]
        token = csrf_of(page.text)
        own = {"Origin": url}
        disable = "/console/webhooks/crm/disable"
        refused = [
            await client.post(disable, data={}, headers=own),  # no token
            await client.post(disable, data={"csrf": "0" * 64}, headers=own),  # not its token
            await client.post(disable, data={"csrf": token}),  # no Origin
            await client.post(
                disable, data={"csrf": token}, headers={"Origin": "http://evil.example"}
            ),
            # A rebound DNS name reaching the same socket: its origin is that name's.
            await client.post(
                disable,
                data={"csrf": token},
                headers={"Origin": url.replace("127.0.0.1", "rebound.example")},
            ),
        ]
        assert [r.status_code for r in refused] == [403] * 5
        assert "Origin" in refused[2].text and "not this admin listener" in refused[3].text
        assert (await relay.journal.webhook_states()) == {}  # nothing changed
        # Another browser (no cookie) with this page's token: its session is not this one.
        async with httpx.AsyncClient(base_url=url, timeout=10) as other:
            assert (await other.post(disable, data={"csrf": token}, headers=own)).status_code == 403
        done = await client.post(disable, data={"csrf": token}, headers=own)
        assert done.status_code == 303, done.text
        assert done.headers["location"].startswith("/console/?notice=disabled")
        assert not (await relay.journal.webhook_states())["crm"].enabled
        shown = await client.get(done.headers["location"])
        assert "disabled from the web console" in shown.text
        assert "Disabled: its deliveries wait" in shown.text
        enable = "/console/webhooks/crm/enable"
        assert (await client.post(enable, data={"csrf": token}, headers=own)).status_code == 303
        assert (await relay.journal.webhook_states())["crm"].enabled


async def test_with_an_admin_token_the_console_asks_for_it_once(start_relay, nursery):
    receiver = await start_receiver(nursery)
    running, url = await console_relay(start_relay, receiver, admin_token=TOKEN)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        asked = await client.get("/console/deliveries?state=failed")
        assert asked.status_code == 303
        assert asked.headers["location"] == (
            "/console/login?next=%2Fconsole%2Fdeliveries%3Fstate%3Dfailed"
        )
        form = await client.get(asked.headers["location"])
        assert form.status_code == 200 and 'type="password"' in form.text
        assert "set-cookie" not in form.headers
        login = {"next": "/console/deliveries?state=failed"}
        own = {"Origin": url}
        wrong = await client.post("/console/login", data=login | {"token": "nope"}, headers=own)
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert TOKEN not in wrong.text
        foreign = await client.post(
            "/console/login", data=login | {"token": TOKEN}, headers={"Origin": "http://x.test"}
        )
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        # Somewhere else after the login: refused, the console's own page instead.
        elsewhere = await client.post(
            "/console/login", data={"next": "//evil.example/", "token": TOKEN}, headers=own
        )
        assert elsewhere.headers["location"] == "/console/"
        client.cookies.clear()
        done = await client.post("/console/login", data=login | {"token": TOKEN}, headers=own)
        assert done.status_code == 303 and done.headers["location"] == login["next"]
        cookie = done.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        page = await client.get("/console/deliveries?state=failed")
        assert page.status_code == 200 and "Log out" in page.text
        assert TOKEN not in page.text
        # The cookie is the console's only: the API still wants the bearer token.
        assert (await client.get("/api/status")).status_code == 401
        out = await client.post("/console/logout", data={"csrf": csrf_of(page.text)}, headers=own)
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert (await client.get("/console/")).status_code == 303
    # A cookie made with another key (another token, or forged) is no session.
    forged = session.new_session(session.session_key("another-token", b""))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        client.cookies.set(session.COOKIE, forged)
        assert (await client.get("/console/")).status_code == 303


def test_a_session_expires_and_its_mac_covers_its_time():
    key = session.session_key(TOKEN, b"")
    value = session.new_session(key, now=1_000_000)
    assert session.valid_session(key, value, now=1_000_000 + 60)
    assert session.valid_session(key, value, now=1_000_000 + session.LIFETIME) is None
    issued, sid, mac = value.split(".")
    younger = f"{int(issued) + 40_000}.{sid}.{mac}"  # its time moved on: the MAC no longer fits
    assert session.valid_session(key, younger, now=1_000_000 + 40_001) is None
    assert session.session_key(None, b"run key") == b"run key"


async def test_the_pages_show_recent_rates_and_a_delivery_masked(start_relay, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500]
    receiver.answer_body = f'{{"error": "db down", "echo": "{SECRET}"}}'.encode()
    running, url = await console_relay(start_relay, receiver)
    assert (await running.post(STATUS)).status_code == 202
    await receiver.wait_for(1)
    relay = running.relay
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        with trio.fail_after(10):  # the outcome is on its way to the journal
            while not (rows := views.list_deliveries(relay.config.relay.state_dir, state="failed")):
                await client.get("/console/live.json")
        page = await client.get(f"/console/deliveries/{rows[0].id}")
        assert page.status_code == 200
        assert "HTTP 500" in page.text and "db down" in page.text
        assert SECRET not in page.text and "***" in page.text
        assert "whatsapp:message:status" in page.text
        overview = await client.get("/console/")
        assert "0.0%" in overview.text  # 5 min and 1 h: one attempt, none delivered
        assert "Last error:" in overview.text and "HTTP 500" in overview.text
        live = (await client.get("/console/live.json")).json()
        assert live["accepted"] == 1 and len(live["seconds"]) == 120
        listing = await client.get("/console/deliveries", params={"state": "failed"})
        assert rows[0].id in listing.text
        bad = await client.get("/console/deliveries", params={"since": "yesterday-ish"})
        assert bad.status_code == 400 and "expected a duration" in bad.text
        missing = await client.get("/console/deliveries/nothing-like-it")
        assert missing.status_code == 404


async def test_replaying_many_counts_them_first_then_replays_on_confirmation(start_relay, nursery):
    receiver = await start_receiver(nursery)
    receiver.statuses = [500, 500]
    running, url = await console_relay(start_relay, receiver)
    assert (await running.post([STATUS, STATUS])).status_code == 202
    await receiver.wait_for(2)
    state_dir = running.relay.config.relay.state_dir
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        with trio.fail_after(10):
            while len(views.list_deliveries(state_dir, state="failed")) < 2:
                await client.get("/console/live.json")
        csrf = csrf_of((await client.get("/console/deliveries")).text)
        form = {"csrf": csrf, "webhook": "crm", "state": "failed", "since": "1h"}
        own = {"Origin": url}
        counted = await client.post("/console/replay", data=form, headers=own)
        assert counted.status_code == 200
        assert "2 deliveries would be replayed (a dry run" in counted.text
        assert len(views.list_deliveries(state_dir, state="failed")) == 2  # nothing changed
        assert len(receiver.requests) == 2
        # The confirmation carries the window as it was counted: Unix seconds, not "1h".
        since = re.search(r'name="since" value="([0-9.]+)"', counted.text).group(1)
        assert abs(float(since) - (running.relay.clock.now() - 3600)) < 60
        assert 'name="confirm" value="yes"' in counted.text
        confirm = form | {"since": since, "confirm": "yes"}
        done = await client.post("/console/replay", data=confirm, headers=own)
        assert "Replayed 2 deliveries" in done.text
        await receiver.wait_for(4)
        future = form | {"since": "2999-01-01T00:00"}
        none = await client.post("/console/replay", data=future, headers=own)
        assert "No delivery matches" in none.text
        wrong = await client.post("/console/replay", data=form | {"webhook": "nope"}, headers=own)
        assert wrong.status_code == 400 and "no webhook &#39;nope&#39;" in wrong.text
        one = views.list_deliveries(state_dir, state="all")[0].id
        again = await client.post(
            f"/console/deliveries/{one}/replay", data={"csrf": csrf}, headers=own
        )
        assert again.headers["location"] == f"/console/deliveries/{one}?notice=replayed"
        await receiver.wait_for(5)


# -- the recent attempts' ring ---------------------------------------------------------------


def test_recent_windows_rates_and_percentiles():
    recent = Recent()
    start = 1_000_000.0
    for i in range(100):  # 100 s: one attempt a second, 12 ms, and every tenth failing at 2 s
        failed = i % 10 == 9
        recent.add(start + i + 0.5, not failed, 2.0 if failed else 0.012)
    now = start + 100
    five = recent.window(now, 300)
    assert (five.attempts, five.delivered) == (100, 90)
    assert five.success_rate == 0.9
    assert abs(five.quantile(0.5) - 0.012) / 0.012 < 0.13
    assert abs(five.quantile(0.99) - 2.0) / 2.0 < 0.13
    assert recent.window(now, 10).attempts == 10
    # An hour on: folded into minutes, and still counted within the hour, not within 5 min.
    later = start + 1000
    recent.add(later, True, 0.012)
    assert len(recent.seconds) == 1 and sum(m[1] for m in recent.minutes) == 100
    assert recent.window(later + 1, 300).attempts == 1
    assert recent.window(later + 1, 3600).attempts == 101
    assert recent.window(start + 3600 + 200, 3600).attempts == 1
    assert Recent().window(now, 300).success_rate is None


def test_recent_memory_stays_bounded():
    recent = Recent()
    for second in range(3 * 3600):
        recent.add(float(second), True, 0.01)
    assert len(recent.seconds) <= SECONDS and len(recent.minutes) <= 61


def test_bins_are_within_their_width():
    for duration in (0.0002, 0.003, 0.047, 0.6, 7.0, 42.0):
        assert abs(bin_middle(bin_of(duration)) - duration) / duration < 0.13


def test_the_reports_carry_recent_seconds_once():
    """The delivery process's stats and the relay's copy agree, however reports fall."""
    process, relay = DeliveryStats(), DeliveryStats()
    ok, bad = Outcome(0.01, status=200), Outcome(0.2, status=503)
    process.record("crm", ok, final=True, ended_at=100.2)
    process.record("crm", bad, final=False, ended_at=100.7)
    relay.merge(process.changes())
    process.record("crm", ok, final=True, ended_at=100.9)  # the same second, after a report
    process.record("crm", ok, final=True, ended_at=101.1)
    report = process.changes()
    relay.merge(report)
    relay.merge(report)  # twice: nothing counted twice
    assert process.changes() == {}
    mine, theirs = process.webhooks["crm"], relay.webhooks["crm"]
    assert [s[:3] for s in theirs.recent.seconds] == [[100, 3, 2], [101, 1, 1]]
    assert [s[:3] for s in theirs.recent.seconds] == [s[:3] for s in mine.recent.seconds]
    assert theirs.attempts == mine.attempts and theirs.last_error == "HTTP 503"
    assert theirs.last_error_at == 100.7
    assert theirs.recent.window(102, 300).success_rate == 0.75


async def test_the_live_chart_counts_each_second():
    ingest, delivery = IngestStats(), DeliveryStats()
    ingest.took(1, 0, [], now=1000.2)
    ingest.took(2, 1, [], now=1000.9)
    ingest.took(4, 0, [], now=1001.0)
    ok, bad = Outcome(0.01, status=200), Outcome(0.01, status=500)
    for webhook_id, outcome, at in [("a", ok, 1000.5), ("b", ok, 1000.6), ("a", bad, 1001.5)]:
        delivery.record(webhook_id, outcome, final=True, ended_at=at)
    clock = SimpleNamespace(now=lambda: 1002.3)
    dispatcher = SimpleNamespace(stats=delivery, in_flight=lambda: 0)
    relay = SimpleNamespace(clock=clock, ingest_stats=ingest, dispatcher=dispatcher)
    live = await pages.live(SimpleNamespace(relay=relay), {})
    seconds = live["seconds"]
    assert len(seconds) == pages.CHART and seconds[-1][0] == 1001  # 1002 is not over yet
    assert seconds[-2:] == [[1000, 3, 2, 0], [1001, 4, 0, 1]]
    assert all(s[1:] == [0, 0, 0] for s in seconds[:-2])
    assert (live["accepted"], live["unrouted"]) == (7, 1)


# -- keyset pages with a bounded walk --------------------------------------------------------


@pytest.mark.parametrize("scan", [None, 7])
async def test_pages_by_event_name_walk_at_most_scan_rowids(start_relay, nursery, scan):
    receiver = await start_receiver(nursery)
    running, _ = await console_relay(start_relay, receiver)
    names = ["whatsapp:message:in" if i % 5 == 0 else "whatsapp:message:status" for i in range(30)]
    events = [dict(STATUS, event=name) for name in names]
    assert (await running.post(events)).status_code == 202
    state_dir = running.relay.config.relay.state_dir
    seen, before, pages = [], None, 0
    while True:
        rows, before = views.page(
            state_dir, limit=2, before=before, scan=scan, state="all", event_name="*:in"
        )
        seen += [row.id for row in rows]
        pages += 1
        if before is None:
            break
    every = [r.id for r in views.list_deliveries(state_dir, state="all", limit=100)]
    expected = [i for i, name in zip(reversed(every), names, strict=True) if name.endswith(":in")]
    assert seen == list(reversed(expected))  # newest first, each once
    assert pages == (4 if scan is None else 5)  # 6 matches by 2; or 30 rowids by 7
