"""What the console changes: replays, a webhook disabled or enabled, and its login and logout.

Each change goes through the admin API's own endpoint (relay/admin/replays.py), called with the
JSON body the API would get, so that the console checks, journals and wakes exactly what
``POST /api/replay`` and ``/api/webhooks/{id}/disable`` do; the replays are journaled as by
``web console via admin api from ADDRESS``. app.py has checked the session, the form's token
and the ``Origin`` before any of these runs.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import trio

from relay.admin import replays
from relay.admin.console import session
from relay.admin.console.format import BadTime, parse_when
from relay.admin.console.results import Page, Redirect
from relay.admin.deliveries import Invalid
from relay.http.server import HTTPRequest
from relay.journal.history import select

BY = "web console"
SHOWN = 20  # deliveries a confirmation lists (it counts them all)


def _api(view, path: str, body: dict) -> HTTPRequest:
    """The request the admin API would get: the console's peer is the replays' ``by``."""
    raw = json.dumps(body).encode()
    return HTTPRequest("POST", path, {}, raw, "", view.request.stream)


async def replay_one(view, params):
    """A delivery's "Replay": one delivery, no confirmation (the page shows what it is)."""
    delivery_id = params["id"]
    body = {"ids": [delivery_id], "by": BY}
    _, answer = await replays.replay(view.admin, _api(view, "/api/replay", body), {})
    notice = "replayed" if answer["replayed"] else "skipped"
    return Redirect(f"/console/deliveries/{quote(delivery_id, safe='')}?notice={notice}")


async def replay_many(view, params):
    """Every delivery of a webhook (or of each) in a state and a time window: without
    ``confirm``, a dry run that counts them and asks; with it, the replay."""
    relay, form = view.relay, view.form
    now = relay.clock.now()
    webhook = form.get("webhook", "").strip()
    state = form.get("state", "failed").strip() or "failed"
    problems, window = {}, {}
    for name in ("since", "until"):
        if text := form.get(name, "").strip():
            try:
                window[name] = parse_when(text, now)
            except BadTime as e:
                problems[name] = str(e)
    if state not in replays.REPLAY_STATES:
        problems["state"] = f"one of {', '.join(replays.REPLAY_STATES)}"
    if webhook and relay.config.webhook(webhook) is None:
        problems["webhook"] = f"no webhook {webhook[:80]!r} in the configuration"
    confirm = form.get("confirm") == "yes"
    values = {"title": "Replay", "nav": "deliveries", "problems": problems, "confirmed": confirm}
    values |= {"webhook": webhook, "state": state, "window": window, "ids": []}
    if problems:
        return Page("replay.html", values, 400)
    # Each webhook's own selection (the API's, by webhook), or all of theirs for "every".
    webhook_ids = [webhook] if webhook else [w.id for w in relay.config.webhooks]
    ids: list[str] = []
    for webhook_id in webhook_ids:
        ids += await trio.to_thread.run_sync(
            lambda w=webhook_id: select(
                relay.config.relay.state_dir,
                webhook_id=w,
                state=state,
                url=relay.config.journal.url,
                **window,
            )
        )
    values["selected"] = len(ids)
    if not ids:
        return Page("replay.html", values | {"replayed": [], "skipped": []})
    body = {"ids": ids, "by": BY, "dry_run": not confirm}
    try:
        _, answer = await replays.replay(view.admin, _api(view, "/api/replay", body), {})
    except Invalid as e:
        values["problems"] = {field or "form": reason for field, reason in e.problems}
        return Page("replay.html", values, 400)
    values |= {"replayed": answer["replayed"], "skipped": answer["skipped"], "shown": SHOWN}
    return Page("replay.html", values)


async def disable(view, params):
    reason = view.form.get("reason", "").strip()[:500] or "disabled from the web console"
    return await _set(view, params["id"], replays.disable, {"reason": reason}, "disabled")


async def enable(view, params):
    return await _set(view, params["id"], replays.enable, {}, "enabled")


async def _set(view, webhook_id: str, endpoint, body: dict, notice: str):
    path = f"/api/webhooks/{webhook_id}/{notice[:-1]}"
    status, answer = await endpoint(view.admin, _api(view, path, body), {"id": webhook_id})
    if status != 200:
        return Page("error.html", {"title": "Not found", "message": answer["error"]}, status)
    return Redirect(f"/console/?notice={notice}#webhook-{quote(webhook_id, safe='')}")


# -- the session -----------------------------------------------------------------------------


def _next(text: str | None) -> str:
    """Where to go after the login: a console page of this origin, never another site."""
    if text and text.startswith("/console/") and not text.startswith("/console//"):
        return text
    return "/console/"


async def login_form(view, params):
    if view.relay.config.relay.admin_token is None:
        return Redirect("/console/")
    values = {"title": "Log in", "nav": "", "next": _next(view.query().get("next")), "error": ""}
    return Page("login.html", values)


async def login(view, params):
    token = view.relay.config.relay.admin_token
    target = _next(view.form.get("next"))
    if token is None:
        return Redirect(target)
    if not session.token_matches(token, view.form.get("token", "")):
        error = "That is not this relay's admin token ([relay] admin_token)."
        values = {"title": "Log in", "nav": "", "next": target, "error": error}
        return Page("login.html", values, 401)
    value = session.new_session(view.console.key())
    return Redirect(target, (session.set_cookie(value),))


async def logout(view, params):
    if view.relay.config.relay.admin_token is None:
        return Redirect("/console/")
    return Redirect("/console/login", (session.clear_cookie(),))
