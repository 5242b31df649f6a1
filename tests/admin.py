"""Reading a relay's admin listener in tests: /metrics parsed back by prometheus_client."""

from __future__ import annotations

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families


def admin_url(relay) -> str:
    """The admin listener of an in-process relay (relay.daemon.Relay)."""
    return f"http://{relay.admin_address}"


async def get(url: str, path: str, token: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=headers) as client:
        return await client.request(kwargs.pop("method", "GET"), path, **kwargs)


async def scrape(url: str, token: str | None = None) -> dict:
    """``{(sample name, frozenset of label pairs): value}`` of every sample /metrics shows."""
    response = await get(url, "/metrics", token)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def wait_for_metric(url: str, name: str, expected: float, token=None, **labels) -> dict:
    """Scrape until ``name{labels}`` reads ``expected`` (the delivery process reports every
    0.5 s); the samples of that scrape."""
    with trio.move_on_after(15):
        while True:
            samples = await scrape(url, token)
            if value(samples, name, **labels) == expected:
                return samples
            await trio.sleep(0.05)
    raise AssertionError(f"{name}{labels} is {value(samples, name, **labels)}, not {expected}")
