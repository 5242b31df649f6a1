"""relay's own attempt, flat: a webhook rendered by relay's own renderers (plain or composed),
signed by the built-in signer and sent by the built-in transport, on a relay where no plugin
implements ``render_request``, ``prepare_request`` or ``attempt_finished``.

That is the common attempt, and the general one (relay/delivery/attempt.py) makes it through
the objects each hook needs: a rendered ``Request``, two copies of it with a header added, an
encoded head, a ``Response`` with every header decoded, and a cancel scope. When every step is
relay's own, a plain webhook's request is written in one go instead (what does not change for a
webhook is built once, in a ``Plan``), a composed one's is encoded straight from the template's
``Request``, each is sent on a pooled connection of the transport's client, the answer is read
as the wire gave it, and the attempt is bounded by the worker's slot (relay/delivery/
deadlines.py) instead of a scope of its own. The records the journal keeps (relay/delivery/
capture.py) are made after the answer.

What is sent is what the general path would send, byte for byte, and the records are the same:
tests/test_flat.py sends each kind of attempt both ways to a raw receiver and compares. Anything
else (a plugin's renderer, signer or transport, a delivery id that is not plain hex) goes
through the hooks.
"""

from __future__ import annotations

import time

from relay.config import Webhook
from relay.delivery.attempt import (
    DELIVERY_HEADER,
    Attempts,
    PluginFailed,
    Run,
    describe_send_error,
    parse_retry_after,
)
from relay.delivery.deadlines import Slot
from relay.model import Outcome, PermanentFailure
from relay.plugins import Components
from relay.plugins.builtin.http_transport import HTTPTransport
from relay.plugins.builtin.plain import JSON
from relay.plugins.builtin.signature import keyed, sign, unsigned

COMPOSE = "relay.plugins.builtin.compose"
BUILTIN_RENDERERS = frozenset({"relay.plugins.builtin.plain", COMPOSE})
CONTENT_TYPE = f"{JSON[0][0]}: {JSON[0][1]}"


class Plan:
    """What every request of one webhook shares: for a plain one, the head up to the delivery's
    own headers; the signing key's HMAC state; the client that sends them."""

    __slots__ = ("webhook", "client", "target", "head", "mac", "signed")

    def __init__(self, webhook: Webhook, client, signed: bool):
        self.webhook = webhook
        self.client = client
        self.signed = signed
        self.mac = keyed(webhook.signing_key) if signed else None
        self.target = self.head = None
        if webhook.template is None:  # a composed webhook's URL and headers vary per event
            self.target = client.target("POST", webhook.url)  # PermanentFailure: the hooks'
            self.head = self.target.head_start + f"{CONTENT_TYPE}\r\n".encode("ascii")


class Plans:
    """Which webhooks take the flat path, and their plans, worked out once per webhook (a
    reload's new webhook is looked at anew)."""

    def __init__(self, attempts: Attempts, components: Components, transports: dict):
        self.components = components
        self.transports = transports
        # Plugins are fixed while the relay runs: if one takes part in any attempt, no attempt
        # is flat.
        self.possible = (
            not attempts.preparers
            and not attempts.observers
            and {name for name, _ in attempts.renderers} <= BUILTIN_RENDERERS
        )
        # By webhook id: the webhook it was made for, and its plan (None: the hooks' path).
        self._plans: dict[str, tuple[Webhook, Plan | None]] = {}

    def get(self, webhook: Webhook) -> Plan | None:
        known = self._plans.get(webhook.id)
        if known is None or known[0] is not webhook:
            plan = self._plan(webhook) if self.possible else None
            known = self._plans[webhook.id] = (webhook, plan)
        return known[1]

    def _plan(self, webhook: Webhook) -> Plan | None:
        signer = self.components.signers.get(webhook.signer)
        transport = self.transports.get(webhook.transport)
        if signer not in (sign, unsigned) or type(transport) is not HTTPTransport:
            return None
        try:
            return Plan(webhook, transport.client, signed=signer is sign)
        except PermanentFailure:
            return None


async def attempt(plan: Plan, run: Run, slot: Slot) -> None:
    """Send ``run``'s delivery, noting in ``run`` what was sent (for its record), the answer
    and the outcome. The slot's deadline cuts it short (trio.Cancelled, and no outcome in
    ``run``)."""
    if plan.target is None:
        await _composed(plan, run, slot)
        return
    delivery = run.delivery
    body = delivery.event.body
    delivery_id = delivery.id
    if plan.mac is not None:
        mac = plan.mac.copy()
        mac.update(body)
        signature = mac.hexdigest()
        headers = f"{DELIVERY_HEADER}: {delivery_id}\r\nSignature: {signature}\r\n"
        run.lines = f"{CONTENT_TYPE}\n{DELIVERY_HEADER}: {delivery_id}\nSignature: {signature}"
    else:
        headers = f"{DELIVERY_HEADER}: {delivery_id}\r\n"
        run.lines = f"{CONTENT_TYPE}\n{DELIVERY_HEADER}: {delivery_id}"
    data = b"".join((plan.head, headers.encode(), b"Content-Length: %d\r\n\r\n" % len(body), body))
    run.url = plan.webhook.url
    await _send(run, slot, plan.client.exchange(plan.target, data, slot.arm(plan.webhook.timeout)))


async def _composed(plan: Plan, run: Run, slot: Slot) -> None:
    """A composed webhook's attempt: the template's request, the delivery's id and signature
    added as the hooks would add them, sent without the rest of their objects."""
    webhook, delivery = plan.webhook, run.delivery
    event = delivery.event
    try:
        request = webhook.template.render(event.data, event.body)
    except PermanentFailure as e:  # an event this template cannot render
        run.outcome = Outcome(duration=run.elapsed(), error=str(e), permanent=True)
        return
    except Exception as e:  # noqa: BLE001 - as the hooks' path words it
        failed = PluginFailed(f"plugin {COMPOSE} (render_request)", e)
        run.outcome = Outcome(duration=run.elapsed(), error=str(failed))
        return
    request = request.with_headers((DELIVERY_HEADER, delivery.id))
    if plan.signed:
        request = sign(webhook, delivery, request)
    run.request = request
    run.url = request.url
    await _send(run, slot, plan.client.ask(request, slot.arm(webhook.timeout)))


async def _send(run: Run, slot: Slot, exchange) -> None:
    """Await ``exchange`` (the client's, its deadline armed in ``slot``), noting the answer and
    the outcome in ``run``."""
    try:
        answer = await exchange
    except PermanentFailure as e:
        run.outcome = Outcome(duration=run.elapsed(), error=str(e), permanent=True)
        return
    except Exception as e:  # noqa: BLE001 - a failed send is an outcome, not a crash
        run.outcome = Outcome(duration=run.elapsed(), error=describe_send_error(e))
        return
    finally:
        slot.disarm()
    run.answer = answer
    status = answer.status
    retry_after = None
    if status == 429 or status == 503:
        value = answer.headers.get(b"retry-after")
        if value is not None:
            retry_after = parse_retry_after(value.decode("latin-1"), time.time())
    run.outcome = Outcome(duration=run.elapsed(), status=status, retry_after=retry_after)


def takes(delivery_id: str) -> bool:
    """Whether a delivery id can go on the wire as it is: relay's own ids are 32 hex digits
    (relay/ingest/events.py); anything else is checked by the general path's encoder."""
    return delivery_id.isascii() and delivery_id.isalnum()
