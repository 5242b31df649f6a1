"""One attempt at one delivery, through the plugin hooks: render, prepare, sign, send.

Whatever a plugin does, the attempt ends in an ``Outcome``: a plugin that raises fails this
attempt (and names itself in the outcome), never the relay or another webhook.
"""

from __future__ import annotations

import inspect
import logging

import pluggy
import trio

from relay.config import Webhook
from relay.model import Delivery, Outcome, PermanentFailure, Request
from relay.plugins import Components

log = logging.getLogger(__name__)

DELIVERY_HEADER = "Relay-Delivery-Id"


class PluginFailed(Exception):
    def __init__(self, where: str, error: BaseException):
        self.where = where
        self.error = error
        super().__init__(f"{where}: {type(error).__name__}: {error}")


async def attempt(
    pm: pluggy.PluginManager,
    components: Components,
    transports: dict,
    webhook: Webhook,
    delivery: Delivery,
) -> tuple[Request | None, Outcome]:
    started = trio.current_time()

    def elapsed() -> float:
        return trio.current_time() - started

    try:
        request = await build_request(pm, components, webhook, delivery)
    except PermanentFailure as e:
        return None, Outcome(duration=elapsed(), error=str(e), permanent=True)
    except PluginFailed as e:
        if isinstance(e.error, PermanentFailure):
            return None, Outcome(duration=elapsed(), error=str(e), permanent=True)
        log.warning("delivery %s to %s: %s", delivery.id, webhook.id, e)
        return None, Outcome(duration=elapsed(), error=str(e))

    transport = transports[webhook.transport]
    with trio.move_on_after(webhook.timeout) as scope:
        try:
            response = await transport.send(webhook, request)
        except PermanentFailure as e:
            return request, Outcome(duration=elapsed(), error=str(e), permanent=True)
        except Exception as e:  # noqa: BLE001 - a failed send is an outcome, not a crash
            return request, Outcome(duration=elapsed(), error=_describe_send_error(e))
    if scope.cancelled_caught:
        return request, Outcome(
            duration=elapsed(), error=f"no response within {webhook.timeout:g} s"
        )
    return request, Outcome(duration=elapsed(), status=response.status)


async def build_request(
    pm: pluggy.PluginManager, components: Components, webhook: Webhook, delivery: Delivery
) -> Request:
    """Render, let plugins prepare, then sign: the signature covers the final body."""
    try:
        request = pm.hook.render_request(webhook=webhook, delivery=delivery)
    except PermanentFailure:
        raise
    except Exception as e:  # noqa: BLE001
        raise PluginFailed("render_request", e) from e
    if request is None:
        raise PermanentFailure(f"no plugin renders a request for webhook {webhook.id!r}")
    request = request.with_headers((DELIVERY_HEADER, delivery.id))

    # Called one by one, not through pm.hook, so each sees the previous result and a failure
    # names the plugin it came from. pluggy calls the last registered first; so do we.
    for impl in reversed(pm.hook.prepare_request.get_hookimpls()):
        try:
            result = impl.function(webhook=webhook, delivery=delivery, request=request)
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:  # noqa: BLE001
            raise PluginFailed(f"plugin {impl.plugin_name} (prepare_request)", e) from e
        if result is not None:
            request = result

    try:
        return components.signers[webhook.signer](webhook, delivery, request)
    except Exception as e:  # noqa: BLE001
        owner = components.owners.get(("signers", webhook.signer), "?")
        raise PluginFailed(f"signer {webhook.signer!r} from {owner}", e) from e


def _describe_send_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    return f"{type(error).__name__}: {text}"
