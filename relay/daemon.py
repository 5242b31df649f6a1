"""A running relay: the journal, the dispatcher and the ingest listeners, and their lifetimes.

Everything lives in nurseries opened here, so nothing outlives ``Relay.run``: the journal opens
first and closes last (it drains what was queued), ingest starts last and stops first.
"""

from __future__ import annotations

import logging
import signal

import pluggy
import trio

from relay.api import Api
from relay.clock import Clock
from relay.config import Config
from relay.dispatch import Dispatcher
from relay.events import Router
from relay.http_server import HTTPServer, open_tcp_listeners, open_unix_listener
from relay.journal import Journal
from relay.plugins import Components

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        config: Config,
        pm: pluggy.PluginManager,
        components: Components,
        *,
        run_blocking=trio.to_thread.run_sync,
    ):
        self.config = config = components.bind(config)
        self.pm = pm
        self.components = components
        self.router = Router(config.webhooks)
        self._run_blocking = run_blocking  # see Journal.open
        self._stopping = False
        self._ingest_scope = trio.CancelScope()
        self._dispatch_scope: trio.CancelScope | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop()``; ``task_status.started`` gets the addresses listened on."""
        relay = self.config.relay
        self.clock = Clock()
        async with Journal.open(relay.state_dir, run_blocking=self._run_blocking) as journal:
            self.journal = journal
            recovered = await journal.recover(self.clock.now())
            if recovered:
                log.info("resuming %d deliveries the previous run had in flight", recovered)
            transports = self._open_transports()
            try:
                async with trio.open_nursery() as nursery:
                    self.dispatcher = Dispatcher(
                        self.config, self.pm, self.components, transports, journal, self.clock
                    )
                    self._dispatch_scope = await nursery.start(self._run_dispatcher)
                    addresses = await nursery.start(self._run_ingest)
                    task_status.started(addresses)
            finally:
                with trio.CancelScope(shield=True):
                    for transport in transports.values():
                        await transport.aclose()

    def stop(self, grace: float | None = None) -> None:
        """Stop taking events; attempts in flight get ``grace`` seconds to finish."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.relay.grace if grace is None else grace
        self._ingest_scope.cancel()
        if self._dispatch_scope is not None:
            self.dispatcher.stop_intake()
            self._dispatch_scope.deadline = trio.current_time() + grace

    def status(self) -> dict:
        return {
            "status": "stopping" if self._stopping else "ok",
            "webhooks": len(self.config.webhooks),
            "in_flight": self.dispatcher.in_flight(),
        }

    def _open_transports(self) -> dict:
        used = {w.transport for w in self.config.webhooks}
        return {name: self.components.transports[name](self.config) for name in used}

    async def _run_dispatcher(self, *, task_status) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self.dispatcher.run()

    async def _run_ingest(self, *, task_status) -> None:
        relay = self.config.relay
        with self._ingest_scope:
            listeners = []
            if relay.listen:
                listeners.extend(await open_tcp_listeners(relay.listen))
            if relay.socket:
                listeners.append(await open_unix_listener(relay.socket))
            try:
                addresses = [_address(listener) for listener in listeners]
                for address in addresses:
                    log.info("taking events on %s", address)
                server = HTTPServer(Api(self), max_body=relay.max_body)
                async with trio.open_nursery() as nursery:
                    if listeners:
                        await nursery.start(server.serve, listeners)
                    task_status.started(addresses)
                    await trio.sleep_forever()
            finally:
                if relay.socket and listeners:
                    relay.socket.unlink(missing_ok=True)


def _address(listener: trio.SocketListener):
    name = listener.socket.getsockname()
    return name if isinstance(name, str) else f"{name[0]}:{name[1]}"


async def serve(relay: Relay) -> None:
    """Run ``relay`` until SIGTERM or SIGINT; a second signal stops at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, signals, relay, nursery.cancel_scope)
            await relay.run()
            nursery.cancel_scope.cancel()


async def _watch_signals(signals, relay: Relay, everything: trio.CancelScope) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.warning("%s: reloading is not supported yet; restart to apply changes", name)
        elif relay._stopping:
            log.warning("%s again: stopping now", name)
            everything.cancel()
        else:
            log.info("%s: stopping; attempts in flight get %g s", name, relay.config.relay.grace)
            relay.stop()
