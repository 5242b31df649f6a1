"""One attempt at one delivery, through the plugin hooks: render, prepare, sign, send.

Whatever a plugin does, the attempt ends in an ``Outcome``: a plugin that raises fails this
attempt (and names itself in the outcome), never the relay or another webhook.

Each attempt runs in a nursery of its own, so that nothing it starts outlives it: hooks that
name an ``attempt`` argument (``prepare_request``, a transport's ``send``) may start sub-tasks in
``attempt.nursery`` (a transport racing connections, a plugin refreshing a token), and those are
cancelled when the attempt ends, however it ends. The nursery's cancel scope is the attempt's
deadline: ``webhook.timeout`` seconds from the moment the transport's send starts. When no hook
names ``attempt``, the attempt has that cancel scope alone: a nursery no hook can reach could
hold nothing, and would cost a trip through trio's scheduler.

When no plugin takes part at all (relay's own renderers, signer and transport), relay makes
the attempt its own way instead (relay/delivery/flat.py), to the same bytes and records.
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


class Attempt:
    """The attempt under way, for the hooks that name an ``attempt`` argument."""

    __slots__ = ("nursery",)

    def __init__(self, nursery: trio.Nursery):
        #: Lives exactly as long as the attempt: what is started here is cancelled at its end.
        self.nursery = nursery

    @property
    def deadline(self) -> float:
        """When the attempt is cut off, in trio time: ``inf`` until the transport's send
        starts, then ``webhook.timeout`` seconds after that."""
        return self.nursery.cancel_scope.deadline


class Run:
    """One attempt at one delivery, from its start to its record: the delivery (its
    ``attempts`` counting this one), when it started (``started_at``, wall time, for the
    journal; ``started``, trio time, for its duration), and what it has come to so far.

    The general path notes its ``request``, once built, and ``response``, once one came;
    relay's own (relay/delivery/flat.py) notes the header lines it sent (``lines``, for the
    record) and the ``answer`` as the wire gave it. ``outcome`` stays None when the deadline
    cut the attempt short."""

    __slots__ = (
        "webhook",
        "delivery",
        "started_at",
        "started",
        "request",
        "response",
        "lines",
        "answer",
        "url",
        "outcome",
    )

    def __init__(self, webhook: Webhook, delivery: Delivery, started_at: float):
        self.webhook = webhook
        self.delivery = delivery
        self.started_at = started_at
        self.started = trio.current_time()
        self.request: Request | None = None
        self.response: Response | None = None
        self.lines: str | None = None
        self.answer = None
        self.url: str | None = None  # where it went, once known (relay/delivery/health.py)
        self.outcome: Outcome | None = None

    def elapsed(self) -> float:
        return trio.current_time() - self.started


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
        self.renderers = _in_call_order(pm.hook.render_request)
        self.preparers = _in_call_order(pm.hook.prepare_request)
        self.observers = _in_call_order(pm.hook.attempt_finished)
        self._preparers_take_attempt = "attempt" in _names_of(pm.hook.prepare_request)
        self._send_signatures: dict[str, tuple[object, bool]] = {}

    async def __call__(self, run: Run) -> None:
        """Make ``run``'s attempt, noting in it the request sent (None when none could be
        built), the answer (None when none came) and how the attempt ended."""
        webhook, delivery = run.webhook, run.delivery
        if self._preparers_take_attempt or self._takes_attempt(webhook.transport):
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await self._run(webhook, delivery, run, nursery.cancel_scope, nursery)
                    finally:
                        if nursery.child_tasks:  # the attempt is over: so is what it started
                            nursery.cancel_scope.cancel()
            except Exception as e:  # noqa: BLE001 - a task started in the attempt's nursery failed
                error = f"a task the attempt started failed: {_describe_group(e)}"
                if run.outcome is None:
                    log.warning("delivery %s to %s: %s", delivery.id, webhook.id, error)
                    run.outcome = Outcome(duration=run.elapsed(), error=error)
                else:  # the outcome was known first (the receiver may have answered): it stands
                    log.warning(
                        "delivery %s to %s: after its outcome, %s", delivery.id, webhook.id, error
                    )
        else:
            # No hook can reach a nursery, so none can start anything in one: the deadline's
            # cancel scope is all the nursery would be, and exiting a nursery costs a trip
            # through trio's scheduler (~5 µs of CPU an attempt, measured).
            with trio.CancelScope() as scope:
                await self._run(webhook, delivery, run, scope, None)
        if run.request is not None:
            run.url = run.request.url

    async def _run(
        self,
        webhook: Webhook,
        delivery: Delivery,
        run: Run,
        deadline: trio.CancelScope,
        nursery: trio.Nursery | None,
    ) -> None:
        """Build and send the request, noting each in ``run``; the send is bounded by
        ``deadline``, set here to the webhook's timeout as the send starts."""
        attempt = Attempt(nursery) if nursery is not None else None
        try:
            run.request = await self._build(webhook, delivery, attempt)
        except PermanentFailure as e:
            run.outcome = Outcome(duration=run.elapsed(), error=str(e), permanent=True)
            return
        except PluginFailed as e:
            if isinstance(e.error, PermanentFailure):
                run.outcome = Outcome(duration=run.elapsed(), error=str(e), permanent=True)
            else:
                # Not logged here: the dispatcher logs every attempt's outcome, this error in it.
                run.outcome = Outcome(duration=run.elapsed(), error=str(e))
            return
        request = run.request
        deadline.deadline = trio.current_time() + webhook.timeout
        transport = self.transports[webhook.transport]
        try:
            if self._takes_attempt(webhook.transport):
                response = await transport.send(webhook, request, attempt=attempt)
            else:
                response = await transport.send(webhook, request)
        except PermanentFailure as e:
            run.outcome = Outcome(duration=run.elapsed(), error=str(e), permanent=True)
        except Exception as e:  # noqa: BLE001 - a failed send is an outcome, not a crash
            run.outcome = Outcome(duration=run.elapsed(), error=describe_send_error(e))
        else:
            if isinstance(response, Response):
                run.response = response
                retry_after = None
                if response.status in (429, 503):
                    retry_after = parse_retry_after(_header(response, "retry-after"), time.time())
                run.outcome = Outcome(
                    duration=run.elapsed(), status=response.status, retry_after=retry_after
                )
            else:
                error = f"transport {webhook.transport!r} returned {type(response).__name__}"
                run.outcome = Outcome(duration=run.elapsed(), error=error)

    def _takes_attempt(self, name: str) -> bool:
        """Whether transport ``name``'s ``send`` names an ``attempt`` argument; looked up once
        per transport, as pluggy does for hooks, so that transports written before it work."""
        transport = self.transports[name]
        known = self._send_signatures.get(name)
        if known is None or known[0] is not transport:
            known = self._send_signatures[name] = (transport, _names_attempt(transport.send))
        return known[1]

    async def build_request(
        self, webhook: Webhook, delivery: Delivery, attempt: Attempt | None = None
    ) -> Request:
        """Render, let plugins prepare, then sign: the signature covers the final request.

        Called without ``attempt`` (``relay webhooks render`` builds requests it never sends),
        it gives the hooks that name one a nursery of its own, for as long as building lasts,
        so that they run as they would in an attempt."""
        if attempt is not None or not self._preparers_take_attempt:
            return await self._build(webhook, delivery, attempt)
        request = failure = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    request = await self._build(webhook, delivery, Attempt(nursery))
                except (PermanentFailure, PluginFailed) as e:
                    failure = e
                finally:
                    if nursery.child_tasks:
                        nursery.cancel_scope.cancel()
        except Exception as e:  # noqa: BLE001 - a task a hook started there failed
            raise PluginFailed("a task the attempt started failed", _first_error(e)) from e
        if failure is not None:
            raise failure
        return request

    async def _build(self, webhook: Webhook, delivery: Delivery, attempt: Attempt | None):
        request = None
        for plugin, render in self.renderers:  # the first answer wins (firstresult)
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
        for plugin, prepare in self.preparers:
            try:
                result = prepare(
                    webhook=webhook, delivery=delivery, request=request, attempt=attempt
                )
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
        for plugin, observe in self.observers:
            try:
                observe(webhook=webhook, delivery=delivery, request=request, outcome=outcome)
            except Exception:  # noqa: BLE001 - an observer must not lose the outcome
                log.exception(
                    "plugin %s (attempt_finished) failed",
                    plugin,
                    extra={
                        "webhook": webhook.id,
                        "delivery_id": delivery.id,
                        "event_id": delivery.event.id,
                    },
                )


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
    every = set(hook.spec.argnames)
    return [
        (impl.plugin_name, _taking(impl.function, impl.argnames, every))
        for impl in reversed(hook.get_hookimpls())
    ]


def _taking(function, names: tuple[str, ...], every: set[str]):
    """``function``, called with every argument of its hook by name: as pluggy does, an
    implementation gets only the arguments it names, so that a hook may gain one (as
    ``prepare_request`` gained ``attempt``) without breaking the implementations written before.
    Those that name them all are called as they are."""
    if set(names) == every:
        return function

    def with_its_arguments(**arguments):
        return function(**{name: arguments[name] for name in names})

    return with_its_arguments


def _names_of(hook) -> set[str]:
    """Every argument some implementation of ``hook`` names."""
    return {name for impl in hook.get_hookimpls() for name in impl.argnames}


def _names_attempt(send) -> bool:
    try:
        parameter = inspect.signature(send).parameters.get("attempt")
    except (TypeError, ValueError):  # no signature to read (a builtin, say)
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _first_error(error: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _describe_group(error: BaseException) -> str:
    return describe_send_error(_first_error(error))


def describe_send_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    return f"{type(error).__name__}: {text}"
