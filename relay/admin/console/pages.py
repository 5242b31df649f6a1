"""The console's pages: the overview, the deliveries, one delivery, and the live chart's JSON.

They read what the admin API reads, the same way: the webhooks' states from relay/admin/
status.py, the journal read-only in a thread (relay/journal/views.py, history.py), a delivery's
records masked by relay/delivery/records.py, so that the page says what ``relay deliveries
show`` and ``GET /api/deliveries/{id}`` say.
"""

from __future__ import annotations

from urllib.parse import urlencode

import trio

from relay.admin.console.format import BadTime, parse_when, pretty_json
from relay.admin.console.results import Page
from relay.admin.deliveries import STATES, config_secrets, row_json
from relay.admin.status import webhook_states
from relay.delivery.capture import mask_text, mask_url
from relay.delivery.records import history_json
from relay.journal import views
from relay.journal.history import history

PAGE = 50  # deliveries a page
SCAN = 100_000  # rowids a page walks at most for a filter no index answers (views.page)
CHART = 120  # seconds the live chart shows
WINDOWS = (("5 min", 300.0), ("1 h", 3600.0))


async def overview(view, params):
    relay = view.relay
    states = await webhook_states(relay)
    stats, now = relay.dispatcher.stats.webhooks, relay.clock.now()
    forms = config_secrets(relay.config)
    webhooks = []
    for webhook, state in zip(relay.config.webhooks, states, strict=True):
        delivered = stats.get(webhook.id)
        windows = []
        for label, seconds in WINDOWS:
            window = delivered.recent.window(now, seconds) if delivered else None
            windows.append(
                {
                    "label": label,
                    "attempts": window.attempts if window else 0,
                    "rate": window.success_rate if window else None,
                    "p50": window.quantile(0.5) if window else None,
                    "p99": window.quantile(0.99) if window else None,
                }
            )
        last_error = delivered.last_error if delivered else None
        webhooks.append(
            {
                "id": webhook.id,
                "name": webhook.name,
                "url": mask_url(webhook.url, forms),
                "configured": webhook.enabled,
                "state": state,
                "windows": windows,
                "last_success_ago": _ago(now, state.last_success_at),
                "last_error": mask_text(last_error, forms) if last_error and forms else last_error,
                "last_error_ago": _ago(now, delivered.last_error_at if delivered else None),
            }
        )
    ingest = relay.ingest_stats
    totals = {
        "accepted": ingest.accepted,
        "unrouted": ingest.unrouted,
        "rejected": sum(ingest.rejected.values()),
        "in_flight": relay.dispatcher.in_flight(),
        "uptime": max(0.0, now - relay.started_at),
    }
    values = {"title": "Overview", "nav": "overview", "webhooks": webhooks, "totals": totals}
    return Page("overview.html", values)


def _ago(now: float, at: float | None) -> float | None:
    return None if at is None else max(0.0, now - at)


async def live(view, params):
    """``/console/live.json``: the chart's seconds, ``[second, events in, attempts delivered,
    attempts failed]``, up to the last whole second (a report from the delivery process may
    still be on its way for the current one)."""
    relay = view.relay
    end = int(relay.clock.now())
    start = end - CHART
    events = {second: n for second, n in relay.ingest_stats.per_second if second >= start}
    attempts: dict[int, list[int]] = {}
    for stats in relay.dispatcher.stats.webhooks.values():
        for second, (count, ok) in stats.recent.per_second(start).items():
            total = attempts.setdefault(second, [0, 0])
            total[0] += ok
            total[1] += count - ok
    seconds = []
    for second in range(start, end):
        delivered, failed = attempts.get(second, (0, 0))
        seconds.append([second, events.get(second, 0), delivered, failed])
    ingest = relay.ingest_stats
    return {
        "seconds": seconds,
        "accepted": ingest.accepted,
        "unrouted": ingest.unrouted,
        "in_flight": relay.dispatcher.in_flight(),
    }


FILTER_STATES = ("all", *[s for s in STATES if s != "all"])


async def deliveries(view, params):
    """Newest first, a keyset page at a time (``before``: the rowid the last page ended at)."""
    relay = view.relay
    query = view.query()
    now = relay.clock.now()
    known = [w.id for w in relay.config.webhooks]
    shown = {name: query.get(name, "").strip() for name in FIELDS}
    problems: dict[str, str] = {}
    state = shown["state"] or "all"
    if state not in FILTER_STATES:
        problems["state"] = f"one of {', '.join(FILTER_STATES)}"
    times = {}
    for name in ("since", "until"):
        if shown[name]:
            try:
                times[name] = parse_when(shown[name], now)
            except BadTime as e:
                problems[name] = str(e)
    before = query.get("before", "")
    if before and not (before.isdigit() and 0 < int(before) < 2**63):
        problems["before"] = "a page's cursor: a whole number"
    rows, next_before, unindexed = [], None, False
    filters = {
        "state": state,
        "webhook_id": shown["webhook"] or None,
        "known_webhooks": set(known),
        "event_id": shown["id"] or None,
        "event_name": shown["event"] or None,
        "since": times.get("since"),
        "until": times.get("until"),
    }
    if not problems:
        # Walks bounded by SCAN where no index leads to the rows: an event's name, or a
        # webhook's deliveries in every state (delivered ones are most of the journal).
        unindexed = filters["event_id"] is None and (
            filters["event_name"] is not None
            or (filters["webhook_id"] is not None and state in ("all", "delivered"))
        )
        try:
            rows, next_before = await trio.to_thread.run_sync(
                lambda: views.page(
                    relay.config.relay.state_dir,
                    url=relay.config.journal.url,
                    limit=PAGE,
                    before=int(before) if before else None,
                    scan=SCAN if unindexed else None,
                    **filters,
                )
            )
        except FileNotFoundError:
            rows = []
    kept = {k: v for k, v in shown.items() if v}
    values = {
        "title": "Deliveries",
        "nav": "deliveries",
        "states": FILTER_STATES,
        "webhooks": known,
        "shown": shown | {"state": state},
        "problems": problems,
        "rows": [row_json(row, set(known)) for row in rows],
        "now": now,
        # The newest page refreshes itself, unless each read is a bounded walk (~0.1 s).
        "live": not before and not unindexed,
        "newer": _link(kept) if before else None,
        "older": _link(kept | {"before": str(next_before)}) if next_before else None,
        "scanned": SCAN if next_before and len(rows) < PAGE else None,
        "window": {k: v for k, v in times.items()},
    }
    return Page("deliveries.html", values, 400 if problems else 200)


FIELDS = ("state", "webhook", "event", "id", "since", "until")


def _link(values: dict) -> str:
    return "/console/deliveries" + (f"?{urlencode(values)}" if values else "")


async def delivery(view, params):
    """One delivery (or an event's deliveries): the event, every attempt, every replay."""
    relay = view.relay
    some_id = params["id"]
    try:
        found = await trio.to_thread.run_sync(
            lambda: history(relay.config.relay.state_dir, some_id, url=relay.config.journal.url)
        )
    except FileNotFoundError:
        found = None
    if found is None:
        values = {
            "title": "Not found",
            "message": f"No delivery or event {some_id[:80]!r} in the journal.",
        }
        return Page("error.html", values, 404)
    known = {w.id for w in relay.config.webhooks}
    shown = history_json(found, config_secrets(relay.config), known)
    event = shown["event"]
    event["pretty"] = pretty_json(event["body"]) if not event["body_base64"] else event["body"]
    for item in shown["deliveries"]:
        for attempt in item["history"]:
            response = attempt["response"]
            if response and not response["body_base64"]:
                response["pretty"] = pretty_json(response["body"])
    values = {
        "title": f"Delivery {some_id[:40]}",
        "nav": "deliveries",
        "event": event,
        "deliveries": shown["deliveries"],
        "now": relay.clock.now(),
        "one": len(shown["deliveries"]) == 1,
    }
    return Page("delivery.html", values)
