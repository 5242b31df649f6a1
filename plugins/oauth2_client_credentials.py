"""``Authorization: Bearer <token>`` with a token from an OAuth 2.0 token endpoint.

Enabled per webhook by its table::

    [webhooks.oauth2]
    token_url = "https://auth.example.com/oauth/token"
    client_id = "relay"
    client_secret_env = "CRM_CLIENT_SECRET"   # or client_secret = "..."
    scope = "webhooks:write"                  # optional

The token (RFC 6749 client credentials grant) is fetched on first use and shared by every
delivery, and every webhook, with the same table. It is refreshed shortly before it expires, once
for all the deliveries that need it at the same moment: they wait for one request to the token
endpoint instead of each sending their own. When the endpoint fails, the attempts waiting for it
fail with its error and are retried by their retry policy; a webhook answering 401 to a token
drops it, so the retry fetches a new one.
"""

from __future__ import annotations

import math
import os
import re
from typing import Literal
from urllib.parse import quote_plus, urlsplit

import httpx
import trio
from attrs import field, frozen

from relay.plugins import hookimpl, validator

REFRESH_BEFORE = 60.0  # seconds before expiry; half the lifetime for tokens shorter than 2 min
UNKNOWN_LIFETIME = 60.0  # when the endpoint does not say (expires_in is only RECOMMENDED)


class TokenError(Exception):
    """The token endpoint gave no usable token. Says why, never the secret or a token."""


def _url_problem(url: str) -> str | None:
    if not url.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # its text may quote the URL
        return "not a valid URL"
    # Errors and logs name the endpoint by its URL: a password in it would show there.
    if "@" in netloc:
        return (
            "credentials in the URL (user:password@) are not allowed; use client_id and "
            "client_secret"
        )


def _env_problem(name: str) -> str | None:
    if not os.environ.get(name):
        return f"environment variable {name} is not set or empty"


def _timeout_problem(value: float) -> str | None:
    if not value > 0:
        return f"must be greater than 0, got {value!r}"


@frozen
class OAuth2:
    token_url: str = field(validator=validator(_url_problem))
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    client_secret_env: str | None = field(default=None, validator=validator(_env_problem))
    scope: str | None = None
    # RFC 6749 2.3.1: servers must support HTTP Basic; some only take the secret in the form.
    client_auth: Literal["basic", "post"] = "basic"
    timeout: float = field(default=10.0, validator=validator(_timeout_problem))

    def __attrs_post_init__(self):
        if (self.client_secret is None) == (self.client_secret_env is None):
            raise ValueError("set exactly one of client_secret or client_secret_env")

    def secret(self) -> str:
        if self.client_secret is not None:
            return self.client_secret
        secret = os.environ.get(self.client_secret_env)
        if not secret:
            raise TokenError(f"environment variable {self.client_secret_env} is not set")
        return secret


class TokenCache:
    """One access token and when to refresh it; ``fetch() -> (token, expires_in or None)``."""

    def __init__(self, fetch):
        self._fetch = fetch
        self._lock = trio.Lock()
        self._token: str | None = None
        self._refresh_at = -math.inf
        self._fetches = 0
        self._failure: str | None = None

    async def get(self) -> str:
        fetches_before = self._fetches
        async with self._lock:
            if self._token is not None and trio.current_time() < self._refresh_at:
                return self._token
            if self._fetches != fetches_before and self._failure is not None:
                # The fetch this task waited for has just failed: share its answer rather than
                # asking a failing endpoint once more per waiting delivery.
                raise TokenError(self._failure)
            self._fetches += 1
            self._failure = None  # a cancelled fetch leaves none: the next waiter tries
            started = trio.current_time()
            try:
                token, expires_in = await self._fetch()
            except TokenError as e:
                self._token, self._failure = None, str(e)
                raise
            self._token = token
            self._refresh_at = started + _lifetime(expires_in)
            return token

    def drop(self, token: str) -> None:
        """Forget ``token`` (a webhook refused it), unless a newer one has replaced it."""
        if token == self._token:
            self._token = None


def _lifetime(expires_in: float | None) -> float:
    if expires_in is None:
        return UNKNOWN_LIFETIME
    return max(expires_in - REFRESH_BEFORE, expires_in / 2)


async def fetch_token(options: OAuth2) -> tuple[str, float | None]:
    form = {"grant_type": "client_credentials"}
    if options.scope:
        form["scope"] = options.scope
    auth = None
    if options.client_auth == "basic":
        auth = (quote_plus(options.client_id), quote_plus(options.secret()))
    else:
        form |= {"client_id": options.client_id, "client_secret": options.secret()}
    where = f"token endpoint {options.token_url}"
    try:
        with trio.fail_after(options.timeout):
            async with httpx.AsyncClient(timeout=options.timeout) as client:
                response = await client.post(
                    options.token_url, data=form, auth=auth, headers={"Accept": "application/json"}
                )
    except trio.TooSlowError:
        raise TokenError(f"{where}: no answer within {options.timeout:g} s") from None
    except httpx.HTTPError as e:
        raise TokenError(f"{where}: {type(e).__name__}: {e}") from None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200:
        error = payload.get("error") if isinstance(payload, dict) else None
        code = f" ({error})" if isinstance(error, str) and _ERROR_CODE.match(error) else ""
        raise TokenError(f"{where} answered HTTP {response.status_code}{code}")
    return _parse(payload, where)


_ERROR_CODE = re.compile(r"^[\w.-]{1,64}$")  # RFC 6749 5.2 codes: safe to log, unlike bodies


def _parse(payload, where: str) -> tuple[str, float | None]:
    if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
        raise TokenError(f"{where}: the answer has no access_token")
    token = payload["access_token"]
    if not token or any(c in token for c in "\r\n\0 "):
        raise TokenError(f"{where}: the access_token is empty or not a header value")
    token_type = payload.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenError(f"{where}: token_type {token_type!r} is not bearer")
    expires_in = payload.get("expires_in")
    try:  # some servers send a number as a string
        expires_in = None if expires_in is None else float(expires_in)
    except (TypeError, ValueError):
        raise TokenError(f"{where}: expires_in is not a number") from None
    return token, expires_in


# Per trio run, so that a cache (and its lock) never outlives the relay that made it.
_caches = trio.lowlevel.RunVar("oauth2_token_caches")


def cache_for(options: OAuth2) -> TokenCache:
    try:
        caches = _caches.get()
    except LookupError:
        caches = {}
        _caches.set(caches)
    if options not in caches:
        caches[options] = TokenCache(lambda: fetch_token(options))
    return caches[options]


@hookimpl
def register_webhook_options(register):
    register("oauth2", OAuth2)


@hookimpl
def prepare_request(webhook, delivery, request):
    options = webhook.options.get("oauth2")
    if options is None:
        return None
    return _authorize(options, request)


async def _authorize(options: OAuth2, request):
    token = await cache_for(options).get()
    return request.with_headers(("Authorization", f"Bearer {token}"))


@hookimpl
def attempt_finished(webhook, delivery, request, outcome):
    options = webhook.options.get("oauth2")
    if options is None or request is None or outcome.status != 401:
        return
    authorization = request.header("Authorization") or ""
    cache_for(options).drop(authorization.removeprefix("Bearer "))
