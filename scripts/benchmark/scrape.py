"""``--scrape``: GET the relay's /metrics every second while its phases run, as Prometheus would
(more often than its default 15 s), to measure what being watched costs delivery. The relay then
has an admin listener (systems.py); the scrapes' count and durations go in the JSON and a note.
"""

from __future__ import annotations

import contextlib
import time

import trio

from .load import RawConnection

INTERVAL = 1.0


class Scraper:
    def __init__(self, address: str):
        host, _, port = address.rpartition(":")
        self.target = (host, int(port))
        self.request = f"GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()
        self.durations: list[float] = []
        self.failed = 0
        self.size = 0

    async def run(self) -> None:
        """Scrape every INTERVAL on one keep-alive connection (a new one after a failure)."""
        connection = None
        while True:
            due = time.monotonic() + INTERVAL
            start = time.monotonic()
            try:
                if connection is None:
                    connection = await RawConnection.open(self.target)
                status, body = await connection.request(self.request)
                if status != 200:
                    raise ConnectionError(f"HTTP {status}")
                self.durations.append(time.monotonic() - start)
                self.size = len(body)
            except (OSError, ConnectionError, trio.BrokenResourceError):
                self.failed += 1
                if connection is not None:
                    await connection.aclose()
                connection = None
            await trio.sleep_until(trio.current_time() + max(0.0, due - time.monotonic()))

    def summary(self) -> dict:
        times = sorted(self.durations)
        return {
            "interval_s": INTERVAL,
            "scrapes": len(times),
            "failed": self.failed,
            "bytes": self.size,
            "p50_ms": times[len(times) // 2] * 1000 if times else None,
            "max_ms": times[-1] * 1000 if times else None,
        }


@contextlib.asynccontextmanager
async def scraping(address: str):
    """Scrape ``address`` while the block runs; yields the Scraper (its ``summary()``)."""
    scraper = Scraper(address)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scraper.run)
        try:
            yield scraper
        finally:
            nursery.cancel_scope.cancel()
