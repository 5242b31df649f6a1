"""The web console in a real browser (tests/browser.py: Debian's chromium, headless, driven by
Playwright), against the real relay daemon and h11 receivers on loopback.

A failed delivery shows up, on a page opened before it existed, as failed with the receiver's
answer; the receiver is fixed, "Replay" is clicked, the receiver gets it, and the page shows it
delivered, the same document all along (no reload). A webhook disabled from the page, by
keyboard, holds its deliveries; enabled, they go. A form posted from another site is refused.
Each page is photographed at 1280 px (into docs/console/ with RELAY_SCREENSHOTS=1, for the
README; else into the test's directory) and laid out at a phone's width without sideways
scrolling.
"""

import json
import os
import re
from pathlib import Path

import httpx
import pytest
import trio

from tests.browser import browser_or_skip
from tests.conftest import Receiver, seed_events, start_receiver
from tests.daemon import Daemon

DOCS = Path(__file__).resolve().parent.parent / "docs" / "console"
EVENT = seed_events()[0]
SECRET = "console-browser-s3cret"


@pytest.fixture(scope="session")
def browser():
    browser = browser_or_skip()
    yield browser
    browser.close()


def webhook(webhook_id: str, url: str) -> str:
    return f'\n[[webhooks]]\nid = "{webhook_id}"\nurl = "{url}"\nsecret = "{SECRET}"\ntries = 1\n'


async def start_daemon(tmp_path: Path, webhooks: str) -> tuple[Daemon, str]:
    """The relay, and its admin listener's origin (as the browser sees it)."""
    config = tmp_path / "relay.toml"
    config.write_text(
        '[relay]\nlisten = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nstate_dir = "state"\n'
        f'grace = 2\nallow_networks = ["127.0.0.0/8"]\n{webhooks}'
    )
    daemon = await Daemon(config).start()
    with trio.fail_after(15):
        while not (found := re.search(r"admin listener on (\S+)", daemon.log.read_text())):
            await trio.sleep(0.05)
    return daemon, f"http://{found.group(1)}"


async def send(daemon: Daemon, events: list[dict]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(daemon.url + "/events", json=events)).status_code == 202


def shots() -> Path:
    return DOCS if os.environ.get("RELAY_SCREENSHOTS") else None


def photograph(page, name: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def no_sideways_scroll(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], (page.url, width)


async def test_a_failed_delivery_is_shown_replayed_and_delivered_without_a_reload(
    browser, tmp_path, nursery
):
    from playwright.sync_api import expect

    answer = b'{"error": "database unavailable"}'
    receiver = await start_receiver(nursery, Receiver(statuses=[500], answer_body=answer))
    daemon, admin = await start_daemon(tmp_path, webhook("crm", receiver.url))
    page = await browser.page(1280)

    def open_failed():
        page.goto(admin + "/console/deliveries?state=failed")
        expect(page.locator("p.empty")).to_be_visible()
        page.evaluate("window.sameDocument = true")

    await browser.run(open_failed)
    await send(daemon, [EVENT])
    await receiver.wait_for(1)

    def shown_failed():
        row = page.locator("tr.row-failed")
        expect(row).to_have_count(1)  # the page refreshed that part itself
        expect(row).to_contain_text("HTTP 500")
        assert page.evaluate("window.sameDocument") is True
        row.locator("a.id").first.click()
        attempt = page.locator("article.attempt")
        expect(attempt).to_have_count(1)
        expect(attempt).to_contain_text("HTTP 500")
        expect(attempt).to_contain_text("database unavailable")  # the receiver's answer
        expect(attempt).to_contain_text("Signature:")  # the request as sent
        assert SECRET not in page.content()
        expect(page.locator(".delivery h2 .state")).to_have_text("failed")

    await browser.run(shown_failed)
    receiver.answer_body, receiver.hang = b'{"ok": true}', 1.0  # fixed, and a little slow

    def replay():
        page.get_by_role("button", name="Replay").click()
        expect(page.locator("p.notice")).to_contain_text("Replayed")
        page.evaluate("window.sameDocument = true")

    await browser.run(replay)
    arrived = await receiver.wait_for(2)
    assert json.loads(arrived[1].body) == json.loads(arrived[0].body)

    def shown_delivered():
        expect(page.locator(".delivery h2 .state")).to_have_text("delivered")
        expect(page.locator("article.attempt")).to_have_count(2)
        expect(page.locator(".replays")).to_contain_text("web console via admin api from")
        assert page.evaluate("window.sameDocument") is True  # no reload: the page's own refresh

    await browser.run(shown_delivered)
    receiver.hang, receiver.statuses = 0.0, [503]  # one of the next three fails for good
    await send(daemon, [EVENT] * 3)
    await receiver.wait_for(5)
    directory = shots() or tmp_path / "shots"
    delivery_url = page.url.partition("?")[0]  # without the replay's notice

    def photographs():
        page.goto(admin + "/console/")
        expect(page.locator("#webhook-crm .windows")).to_contain_text("60.0%")  # 3 of 5
        expect(page.locator("#chart polyline")).to_have_count(3)
        photograph(page, "overview", directory)
        page.goto(admin + "/console/deliveries?state=all")
        expect(page.locator("tr.row-delivered")).to_have_count(3)
        expect(page.locator("tr.row-failed")).to_have_count(1)
        photograph(page, "deliveries", directory)
        page.goto(delivery_url)
        photograph(page, "delivery", directory)

    await browser.run(photographs)
    for name in ("overview", "deliveries", "delivery"):
        assert (directory / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    phone = await browser.page(390, 844)

    def on_a_phone():
        for path in ("/console/", "/console/deliveries?state=all", delivery_url[len(admin) :]):
            phone.goto(admin + path)
            no_sideways_scroll(phone)

    await browser.run(on_a_phone)


async def test_a_webhook_disabled_by_keyboard_holds_its_deliveries_until_enabled(
    browser, tmp_path, nursery
):
    from playwright.sync_api import expect

    crm, erp = await start_receiver(nursery), await start_receiver(nursery)
    daemon, admin = await start_daemon(tmp_path, webhook("crm", crm.url) + webhook("erp", erp.url))
    page = await browser.page(1280)

    def disable():
        page.goto(admin + "/console/")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"  # where the keyboard is shows
        page.get_by_role("button", name="Disable crm").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#webhook-crm .state")).to_have_text("disabled")
        expect(page.locator("#webhook-crm .why")).to_contain_text("disabled from the web console")
        expect(page.locator("#webhook-erp .state")).to_have_text("enabled")

    await browser.run(disable)
    await send(daemon, [EVENT])
    await erp.wait_for(1)  # erp took the event; crm's delivery of it waits

    def waiting():
        page.goto(admin + "/console/deliveries?webhook=crm&state=pending")
        row = page.locator("tr.row-pending")
        expect(row).to_have_count(1)
        expect(row.locator('td[data-label="Attempts"]')).to_have_text("0")

    await browser.run(waiting)
    assert crm.requests == []

    def enable():
        page.goto(admin + "/console/")
        page.get_by_role("button", name="Enable crm").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#webhook-crm .state")).to_have_text("enabled")

    await browser.run(enable)
    await crm.wait_for(1)

    def delivered():
        page.goto(admin + "/console/deliveries?webhook=crm&state=all")
        expect(page.locator("tr.row-delivered")).to_have_count(1)

    await browser.run(delivered)

    def cross_site():
        token = page.locator('input[name="csrf"]').first.get_attribute("value")
        page.goto(admin + "/console/")
        form = (
            f'<form method="post" action="{admin}/console/webhooks/crm/disable">'
            f'<input name="csrf" value="{token}"></form>'
            "<script>document.forms[0].submit()</script>"
        )
        page.route(
            "http://evil.test/**",
            lambda route: route.fulfill(body=form, content_type="text/html"),
        )
        target = admin + "/console/webhooks/crm/disable"
        with page.expect_navigation(url=target) as refused:
            page.goto("http://evil.test/", wait_until="commit")
        assert refused.value.status == 403
        expect(page.locator("main")).to_contain_text("is not this admin listener's")
        # The console's own origin, no token in the form: refused too.
        page.goto(admin + "/console/")
        with page.expect_navigation(url=target) as refused:
            page.evaluate(
                """() => { const f = document.createElement("form"); f.method = "post";
                f.action = "/console/webhooks/crm/disable";
                document.body.append(f); f.submit(); }"""
            )
        assert refused.value.status == 403
        expect(page.locator("main")).to_contain_text("The form's token is not this session's")
        page.goto(admin + "/console/")
        expect(page.locator("#webhook-crm .state")).to_have_text("enabled")

    await browser.run(cross_site)
