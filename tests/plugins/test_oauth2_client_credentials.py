"""oauth2_client_credentials against a real token endpoint on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
from urllib.parse import parse_qs

import attrs
import pytest
import trio
import trio.testing

from plugins import oauth2_client_credentials as oauth2
from relay.config import ConfigError
from relay.http.server import HTTPRequest, HTTPServer
from relay.plugins import Components, make_plugin_manager
from tests.conftest import make_config, no_retry_delay, seed_events
from tests.plugins.helpers import journal_rows, wait_until_finished

SECRET = "client-s3cret"


@attrs.define
class TokenEndpoint:
    """Issues ``tok-1``, ``tok-2`` ... and records each request's form and headers."""

    url: str = ""
    requests: list[HTTPRequest] = attrs.Factory(list)
    statuses: list[int] = attrs.Factory(list)  # answers to give, in order; then 200
    hang: float = 0.0
    expires_in: float = 3600

    async def __call__(self, request: HTTPRequest) -> tuple[int, dict]:
        self.requests.append(request)
        await trio.sleep(self.hang)
        status = self.statuses.pop(0) if self.statuses else 200
        if status != 200:
            return status, {"error": "temporarily_unavailable", "error_description": SECRET}
        token = f"tok-{len(self.requests)}"
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}

    def form(self, i: int = 0) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.requests[i].body.decode()).items()}


@pytest.fixture
async def token_endpoint(nursery) -> TokenEndpoint:
    endpoint = TokenEndpoint()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(HTTPServer(endpoint, max_body=65536).serve, listeners)
    host, port = listeners[0].socket.getsockname()[:2]
    endpoint.url = f"http://{host}:{port}/oauth/token"
    return endpoint


def table(endpoint: TokenEndpoint, **extra) -> dict:
    return {"token_url": endpoint.url, "client_id": "relay", "client_secret": SECRET} | extra


@pytest.mark.parametrize(
    "options, error",
    [
        (
            {"token_url": "https://a/t", "client_id": "relay"},
            "webhooks[0].oauth2: set exactly one of client_secret or client_secret_env",
        ),
        (
            {"token_url": "ftp://a/t", "client_id": "relay", "client_secret": SECRET},
            "webhooks[0].oauth2.token_url: must start with http:// or https://",
        ),
        (
            {"token_url": "https://a/t", "client_secret": SECRET},
            "webhooks[0].oauth2.client_id: required key is missing",
        ),
        (
            {"token_url": "https://a/t", "client_id": "r", "client_secret_env": "RELAY_TEST_UNSET"},
            "webhooks[0].oauth2.client_secret_env: environment variable RELAY_TEST_UNSET is "
            "not set or empty",
        ),
    ],
)
def test_configuration_errors_name_the_key(tmp_path, monkeypatch, options, error):
    monkeypatch.delenv("RELAY_TEST_UNSET", raising=False)
    config = make_config(tmp_path, [{"id": "crm", "url": "http://h/", "oauth2": options}])
    pm = make_plugin_manager(config, entry_points=False)
    pm.register(oauth2)
    with pytest.raises(ConfigError) as caught:
        Components.collect(pm).bind(config)
    assert caught.value.errors == [f"relay.toml: {error}"]
    assert SECRET not in str(caught.value)


def test_the_secret_is_not_in_the_options_repr():
    options = oauth2.OAuth2(token_url="https://a/t", client_id="relay", client_secret=SECRET)
    assert SECRET not in repr(options)


async def test_one_token_request_for_concurrent_deliveries_and_webhooks(
    start_relay, receiver, token_endpoint
):
    token_endpoint.hang = 0.2  # every delivery needs the token while it is being fetched
    running = await start_relay(
        [
            {"id": "a", "url": receiver.url, "oauth2": table(token_endpoint, scope="hooks")},
            {"id": "b", "url": receiver.url, "oauth2": table(token_endpoint, scope="hooks")},
        ],
        plugins=[oauth2],
    )
    await running.post(seed_events() * 4)
    requests = await receiver.wait_for(24)
    assert {r.headers["authorization"] for r in requests} == {"Bearer tok-1"}
    assert len(token_endpoint.requests) == 1
    assert token_endpoint.form() == {"grant_type": "client_credentials", "scope": "hooks"}
    basic = token_endpoint.requests[0].headers["authorization"].removeprefix("Basic ")
    assert base64.b64decode(basic) == f"relay:{SECRET}".encode()


async def test_secret_from_env_sent_in_the_form(start_relay, receiver, token_endpoint, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_CLIENT_SECRET", SECRET)
    options = table(
        token_endpoint, client_auth="post", client_secret_env="RELAY_TEST_CLIENT_SECRET"
    )
    del options["client_secret"]
    running = await start_relay(
        [{"id": "crm", "url": receiver.url, "oauth2": options}], plugins=[oauth2]
    )
    await running.post(seed_events()[0])
    (request,) = await receiver.wait_for(1)
    assert request.headers["authorization"] == "Bearer tok-1"
    assert token_endpoint.form() == {
        "grant_type": "client_credentials",
        "client_id": "relay",
        "client_secret": SECRET,
    }
    assert "authorization" not in token_endpoint.requests[0].headers


async def start_crm(start_relay, receiver, token_endpoint):
    """One webhook, "crm", authorized by ``token_endpoint``, retried at once."""
    webhook = {
        "id": "crm",
        "url": receiver.url,
        "oauth2": table(token_endpoint),
        "backoff": no_retry_delay(),
    }
    return await start_relay([webhook], plugins=[oauth2])


async def test_a_failing_token_endpoint_fails_the_attempt_which_is_retried(
    start_relay, receiver, token_endpoint, caplog
):
    caplog.set_level(logging.DEBUG)
    token_endpoint.statuses = [503]
    running = await start_crm(start_relay, receiver, token_endpoint)
    await running.post(seed_events()[0])
    await wait_until_finished(running)
    (request,) = receiver.requests
    assert request.headers["authorization"] == "Bearer tok-2"
    attempts = journal_rows(running, "SELECT number, status, error FROM attempts ORDER BY number")
    assert attempts == [
        (
            1,
            None,
            "plugin plugins.oauth2_client_credentials (prepare_request): TokenError: "
            f"token endpoint {token_endpoint.url} answered HTTP 503 (temporarily_unavailable)",
        ),
        (2, 200, None),
    ]
    assert SECRET not in caplog.text


async def test_a_401_from_the_webhook_drops_the_token(start_relay, receiver, token_endpoint):
    receiver.statuses = [401]
    running = await start_crm(start_relay, receiver, token_endpoint)
    await running.post(seed_events()[0])
    first, second = await receiver.wait_for(2)
    assert first.headers["authorization"] == "Bearer tok-1"
    assert second.headers["authorization"] == "Bearer tok-2"


class CountingFetch:
    def __init__(self, expires_in=3600.0):
        self.calls = 0
        self.expires_in = expires_in
        self.gate: trio.Event | None = None
        self.fail = False

    async def __call__(self):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise oauth2.TokenError("token endpoint down")
        return f"tok-{self.calls}", self.expires_in


async def test_the_token_is_kept_until_shortly_before_expiry(autojump_clock):
    fetch = CountingFetch(expires_in=3600)
    cache = oauth2.TokenCache(fetch)
    assert await cache.get() == "tok-1"
    await trio.sleep(3600 - oauth2.REFRESH_BEFORE - 1)
    assert await cache.get() == "tok-1"
    await trio.sleep(2)
    assert await cache.get() == "tok-2"


async def test_a_short_lived_token_is_refreshed_at_half_its_life(autojump_clock):
    fetch = CountingFetch(expires_in=10)
    cache = oauth2.TokenCache(fetch)
    await cache.get()
    await trio.sleep(4.9)
    assert await cache.get() == "tok-1"
    await trio.sleep(0.2)
    assert await cache.get() == "tok-2"


async def test_waiters_share_one_failed_fetch_and_the_next_caller_tries_again():
    fetch = CountingFetch()
    fetch.gate, fetch.fail = trio.Event(), True
    cache = oauth2.TokenCache(fetch)
    failures = []

    async def get():
        with pytest.raises(oauth2.TokenError) as caught:
            await cache.get()
        failures.append(str(caught.value))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        fetch.gate.set()
    assert failures == ["token endpoint down"] * 5
    assert fetch.calls == 1
    fetch.fail = False
    assert await cache.get() == "tok-2"
