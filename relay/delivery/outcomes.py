"""Each attempt's outcome, said once in the log: one line with the webhook, delivery, event,
attempt, status or error and duration (fields of a JSON line, relay/logs.py), at debug when
delivered, info when it will be retried, warning when it was the last."""

from __future__ import annotations

import logging

from relay.model import Delivery, Outcome

log = logging.getLogger("relay.delivery.dispatch")
# Successful attempts are logged at debug, failed ones at info (retried) or warning (given up).
# A line per success at info cost the delivery process ~40% more CPU per event in
# scripts/bench --quick (e2e: 110 -> 155 µs; events/s 0.65x -> 0.54x direct, medians of 5).
DELIVERED = logging.DEBUG


def log_outcome(
    webhook_id: str, delivery: Delivery, outcome: Outcome, retry_in: float | None
) -> None:
    """One line per attempt: which delivery, event and webhook, the attempt's number, how it
    ended and how long it took, and what comes next. The only line about a failed attempt: a
    plugin's failure is in ``outcome.error``, naming the plugin."""
    if outcome.ok:
        level, result, after = DELIVERED, "delivered", ""
    elif retry_in is not None:
        next_in = f"{retry_in:.0f}" if retry_in >= 10 else f"{retry_in:.2g}"
        level, result, after = logging.INFO, "failed", f"; next in {next_in} s"
    else:
        level, result, after = logging.WARNING, "failed", "; gave up"
    if not log.isEnabledFor(level):  # at thousands of attempts a second, build nothing
        return
    fields = delivery_fields(webhook_id, delivery)
    fields["attempt"] = delivery.attempts
    if outcome.status is not None:
        fields["status"] = outcome.status
    if outcome.error is not None:
        fields["error"] = outcome.error
    fields["duration_ms"] = round(outcome.duration * 1000, 3)
    if retry_in is not None:
        fields["retry_in"] = round(retry_in, 3)
    log.log(
        level,
        "delivery %s (event %s) to %s: attempt %d %s (%s) in %.0f ms%s",
        delivery.id,
        delivery.event.id,
        webhook_id,
        delivery.attempts,
        result,
        outcome.describe(),
        outcome.duration * 1000,
        after,
        extra=fields,
    )


def delivery_fields(webhook_id: str, delivery: Delivery) -> dict:
    """A log line's ``extra=`` about one delivery: fields of its JSON line (relay/logs.py)."""
    return {"webhook": webhook_id, "delivery_id": delivery.id, "event_id": delivery.event.id}
