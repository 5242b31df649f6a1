"""One attempt at one delivery, through the plugin hooks: render, prepare, sign, send.

Whatever a plugin does, the attempt ends in an ``Outcome``: a plugin that raises fails this
attempt (and names itself in the outcome), never the relay or another webhook.
"""

from __future__ import annotations

import inspect
import logging
import time
from email.utils import parsedate_to_datetime

import pluggy
import trio

from relay.config import Webhook
from relay.model import Delivery, Outcome, PermanentFailure, Request, Response
from relay.plugins import Components

log = logging.getLogger(__name__)

DELIVERY_HEADER = "Relay-Delivery-Id"


class PluginFailed(Exception):
    def __init__(self, where: str, error: BaseException):
        self.where = where
        self.error = error
        super().__init__(f"{where}: {type(error).__name__}: {error}")


class Attempts:
    """Runs attempts through the hooks.

    Each hook's implementations are looked up once: plugins are fixed while the relay runs
    (a reload changes the configuration, not the plugins), and going through ``pm.hook`` for
    every attempt cost a few percent of the relay's time at saturation.
    """

    def __init__(self, pm: pluggy.PluginManager, components: Components, transports: dict):
        self.components = components
        self.transports = transports
        # In the order pluggy would call them: the last registered first, trylast ones last.
        self._renderers = _in_call_order(pm.hook.render_request)
        self._preparers = _in_call_order(pm.hook.prepare_request)
        self._observers = _in_call_order(pm.hook.attempt_finished)

    async def __call__(
        self, webhook: Webhook, delivery: Delivery
    ) -> tuple[Request | None, Outcome]:
        started = trio.current_time()

        def elapsed() -> float:
            return trio.current_time() - started

        try:
            request = await self.build_request(webhook, delivery)
        except PermanentFailure as e:
            return None, Outcome(duration=elapsed(), error=str(e), permanent=True)
        except PluginFailed as e:
            if isinstance(e.error, PermanentFailure):
                return None, Outcome(duration=elapsed(), error=str(e), permanent=True)
            log.warning("delivery %s to %s: %s", delivery.id, webhook.id, e)
            return None, Outcome(duration=elapsed(), error=str(e))

        transport = self.transports[webhook.transport]
        with trio.move_on_after(webhook.timeout) as scope:
            try:
                response = await transport.send(webhook, request)
            except PermanentFailure as e:
                return request, Outcome(duration=elapsed(), error=str(e), permanent=True)
            except Exception as e:  # noqa: BLE001 - a failed send is an outcome, not a crash
                return request, Outcome(duration=elapsed(), error=_describe_send_error(e))
            if not isinstance(response, Response):
                error = f"transport {webhook.transport!r} returned {type(response).__name__}"
                return request, Outcome(duration=elapsed(), error=error)
        if scope.cancelled_caught:
            return request, Outcome(
                duration=elapsed(), error=f"no response within {webhook.timeout:g} s"
            )
        retry_after = None
        if response.status in (429, 503):
            retry_after = parse_retry_after(_header(response, "retry-after"), time.time())
        return request, Outcome(duration=elapsed(), status=response.status, retry_after=retry_after)

    async def build_request(self, webhook: Webhook, delivery: Delivery) -> Request:
        """Render, let plugins prepare, then sign: the signature covers the final body."""
        request = None
        for plugin, render in self._renderers:  # the first answer wins (firstresult)
            try:
                request = render(webhook=webhook, delivery=delivery)
            except PermanentFailure:
                raise
            except Exception as e:  # noqa: BLE001
                raise PluginFailed(f"plugin {plugin} (render_request)", e) from e
            if request is not None:
                if not isinstance(request, Request):
                    error = TypeError(f"returned {type(request).__name__}, not a Request")
                    raise PluginFailed(f"plugin {plugin} (render_request)", error)
                break
        else:
            raise PermanentFailure(f"no plugin renders a request for webhook {webhook.id!r}")
        request = request.with_headers((DELIVERY_HEADER, delivery.id))

        # One by one, so that each sees the previous result and a failure names its plugin.
        for plugin, prepare in self._preparers:
            try:
                result = prepare(webhook=webhook, delivery=delivery, request=request)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as e:  # noqa: BLE001
                raise PluginFailed(f"plugin {plugin} (prepare_request)", e) from e
            if result is not None:
                request = result

        components = self.components
        try:
            return components.signers[webhook.signer](webhook, delivery, request)
        except Exception as e:  # noqa: BLE001
            owner = components.owners.get(("signers", webhook.signer), "?")
            raise PluginFailed(f"signer {webhook.signer!r} from {owner}", e) from e

    def finished(self, webhook, delivery, request, outcome) -> None:
        """Tell the ``attempt_finished`` observers; one that raises is logged, never fatal."""
        for plugin, observe in self._observers:
            try:
                observe(webhook=webhook, delivery=delivery, request=request, outcome=outcome)
            except Exception:  # noqa: BLE001 - an observer must not lose the outcome
                log.exception("plugin %s (attempt_finished) failed", plugin)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After``'s seconds from ``now`` (RFC 9110: delay-seconds or an HTTP date); None
    when absent or unreadable (the retry policy's own delay applies)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:  # an HTTP date is GMT; a date without a zone is read as such
        return None
    return max(0.0, at.timestamp() - now)


def _header(response: Response, name: str) -> str | None:
    return next((v for k, v in response.headers if k.lower() == name), None)


def _in_call_order(hook) -> list[tuple[str, object]]:
    return [(impl.plugin_name, impl.function) for impl in reversed(hook.get_hookimpls())]


def _describe_send_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    return f"{type(error).__name__}: {text}"
