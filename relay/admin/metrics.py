"""``GET /metrics``: the relay's counters in Prometheus' text format, by prometheus_client.

The numbers live where they are counted, as plain integers (relay/ingest/stats.py,
relay/delivery/stats.py, the latter in the delivery process and sent over with its report), so
that the hot paths never touch a metric object. At each scrape a collector registered in this
relay's own ``CollectorRegistry`` (not the process-wide default, so that relays in one process,
as in the tests, stay apart) turns them into metric families.
"""

from __future__ import annotations

import os

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from relay import __version__
from relay.admin.status import WebhookState, webhook_states
from relay.delivery.stats import DURATION_BUCKETS, FINAL_STATES, OUTCOMES, WebhookStats
from relay.http.server import HTTPRequest, Reply
from relay.journal import FILENAME

_BOUNDS = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]


class Metrics:
    """One relay's registry. ``render`` reads the journal (the oldest pending deliveries), then
    has prometheus_client write everything out."""

    def __init__(self, relay):
        self.relay = relay
        self.registry = CollectorRegistry(auto_describe=False)
        self._states: list[WebhookState] = []
        self._size = 0
        self.registry.register(self)

    async def render(self, request: HTTPRequest) -> Reply:
        states = await webhook_states(self.relay)
        size = await _journal_bytes(self.relay)
        # No await from here on: a concurrent scrape cannot swap the states under this one.
        self._states, self._size = states, size
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Reply(encode(self.registry), content_type)

    def collect(self):
        """prometheus_client's Collector protocol."""
        relay = self.relay
        ingest = relay.ingest_stats
        yield InfoMetricFamily("relay_build", "The relay's version.", {"version": __version__})
        yield CounterMetricFamily(
            "relay_events_accepted", "Events journaled and acknowledged.", ingest.accepted
        )
        rejected = CounterMetricFamily(
            "relay_events_rejected",
            "Ingest requests rejected whole (nothing of them journaled), by reason.",
            labels=["reason"],
        )
        for reason, count in ingest.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily(
            "relay_events_unrouted",
            "Events accepted that no webhook took (none of the webhooks' events patterns match).",
            ingest.unrouted,
        )
        yield from self._delivery()
        yield from self._webhooks()
        yield GaugeMetricFamily(
            "relay_journal_bytes",
            "Size of the journal: its file and WAL (SQLite), its tables and their indexes"
            " (PostgreSQL).",
            self._size,
        )

    def _delivery(self):
        attempts = CounterMetricFamily(
            "relay_attempts",
            "Attempts, by how they ended: delivered (2xx), failed (another status), timeout"
            " (no answer within the webhook's timeout), error (no answer: connection, plugin).",
            labels=["webhook", "outcome"],
        )
        deliveries = CounterMetricFamily(
            "relay_deliveries",
            "Deliveries that ended after their last attempt: delivered, or failed for good.",
            labels=["webhook", "state"],
        )
        durations = HistogramMetricFamily(
            "relay_attempt_duration_seconds",
            "How long attempts took, from rendering the request to the end of the answer.",
            labels=["webhook"],
        )
        known = self.relay.dispatcher.stats.webhooks
        # Configured webhooks from zero, so that rate() sees their first attempts; webhooks
        # since removed keep the counts they had.
        webhook_ids = [w.id for w in self.relay.config.webhooks]
        webhook_ids += sorted(set(known) - set(webhook_ids))
        for webhook_id in webhook_ids:
            stats = known.get(webhook_id) or WebhookStats()
            for outcome, count in zip(OUTCOMES, stats.attempts, strict=True):
                attempts.add_metric([webhook_id, outcome], count)
            for state, count in zip(FINAL_STATES, stats.finished, strict=True):
                deliveries.add_metric([webhook_id, state], count)
            cumulative, buckets = 0, []
            for bound, count in zip(_BOUNDS, stats.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric([webhook_id], buckets, stats.duration_sum)
        yield attempts
        yield deliveries
        yield durations

    def _webhooks(self):
        pending = GaugeMetricFamily(
            "relay_deliveries_pending",
            "Deliveries waiting for an attempt or for their next one.",
            labels=["webhook"],
        )
        oldest = GaugeMetricFamily(
            "relay_oldest_pending_age_seconds",
            "Age of the oldest pending delivery (0 when none is pending).",
            labels=["webhook"],
        )
        enabled = GaugeMetricFamily(
            "relay_webhook_enabled", "1 when the webhook takes deliveries.", labels=["webhook"]
        )
        for state in self._states:
            pending.add_metric([state.id], state.pending)
            oldest.add_metric([state.id], state.oldest_pending_age or 0.0)
            enabled.add_metric([state.id], 1 if state.enabled else 0)
        yield pending
        yield oldest
        yield enabled


async def _journal_bytes(relay) -> int:
    if (url := relay.config.journal.url) is not None:  # on a connection of its own
        from relay.journal import pg_views

        return await trio.to_thread.run_sync(pg_views.journal_bytes, url)
    path = relay.config.relay.state_dir / FILENAME
    total = 0
    for name in (path, path.with_name(path.name + "-wal")):
        try:
            total += os.stat(name).st_size
        except OSError:
            pass  # no WAL (yet): 0
    return total
