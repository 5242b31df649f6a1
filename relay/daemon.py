"""A running relay: the journal, the dispatcher and the ingest listeners, and their lifetimes.

Everything lives in nurseries opened here, so nothing outlives ``Relay.run``: the journal opens
first and closes last (it drains what was queued), ingest starts last and stops first.
"""

from __future__ import annotations

import logging
import signal
import time

import pluggy
import trio

from relay import config as config_module
from relay.clock import Clock
from relay.config import Config, ConfigError
from relay.config.paths import directory_problem
from relay.delivery.dispatch import Dispatcher
from relay.delivery.remote import EXIT_MARGIN, RemoteDispatcher
from relay.http.limits import RESERVE
from relay.http.listeners import open_tcp_listeners
from relay.http.server import HTTPServer
from relay.ingest.api import Api
from relay.ingest.events import Router
from relay.ingest.stats import IngestStats
from relay.ingest.trust import ingest_gates
from relay.journal import FILENAME, Journal, JournalUnusable, count_pending
from relay.journal.retention import Pruner
from relay.plugins import Components, close_transports
from relay.plugins.loading import plugin_file_digests
from relay.startup import StartError, open_listeners, state_dir_error

log = logging.getLogger(__name__)

ADMIN_MAX_BODY = 64 * 1024  # POST /api/replay's ids: ~1,500 a request (relay replay sends 500)

# [relay] settings that a reload cannot change in a running relay (logging is set up once, in
# each process, at start).
RESTART_KEYS = (
    "listen",
    "socket",
    "admin",
    "state_dir",
    "plugins",
    "plugins_dir",
    "journal",
    "delivery",
    "allow_networks",  # the transports hold it, and they are opened once
    "allow_hosts",  # the listeners' gates hold it
    "log",
    "log_level",
)


class Relay:
    def __init__(
        self,
        config: Config,
        pm: pluggy.PluginManager,
        components: Components,
    ):
        self.config = config = components.bind(config)
        self.pm = pm
        self.components = components
        self._plugin_files = plugin_file_digests(config.relay.plugins_dir)  # what it loaded
        self.router = Router(config.webhooks)
        self.stopping = False
        self._ingest_scope = trio.CancelScope()
        self._dispatch_scope: trio.CancelScope | None = None
        self._server: HTTPServer | None = None
        self._recover_scope = trio.CancelScope()
        self._prune_scope = trio.CancelScope()
        self._reloading = trio.Lock()
        self.ingest_stats = IngestStats()
        self.config_loaded_at = time.time()
        self.pending_at_start: dict[str, int] = {}
        self.pending_counted = trio.Event()  # pending_at_start is the journal's count
        self.admin_address: str | None = None  # where the admin listener listens, once it does
        self._admin_scope = trio.CancelScope()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop()``; ``task_status.started`` gets the addresses listened on."""
        relay = self.config.relay
        self.clock = Clock()
        self.transports = {}
        if problem := directory_problem(relay.state_dir, (FILENAME, f"{FILENAME}-wal")):
            raise StartError(state_dir_error(relay.state_dir, problem))
        try:
            at = {"url": self.config.journal.url, "lease": self.config.journal.lease}
            async with Journal.open(relay.state_dir, mode=relay.journal, **at) as journal:
                await self._run(journal, task_status)
        except JournalUnusable as e:  # damaged, say: refused before any listener opens
            raise StartError(str(e)) from None

    async def _run(self, journal: Journal, task_status) -> None:
        relay = self.config.relay
        self.journal = journal
        self.pruner = Pruner(journal, self.clock, relay.retention)
        # Read before taking events: newer rows are this run's own.
        previous_run = await journal.last_rowid()
        self.started_at = self.clock.now()
        try:
            async with trio.open_nursery() as nursery:
                if relay.admin and self.config.journal.url is None:  # relay/admin/status.py
                    await nursery.start(self._count_pending)  # says why (and why not on PG)
                else:
                    self.pending_counted.set()
                if relay.delivery == "process":
                    self.dispatcher = RemoteDispatcher(self.config, journal, self.clock)
                    self._dispatch_scope = trio.CancelScope()
                    await nursery.start(self._run_remote, previous_run)
                else:
                    self.transports = self.components.open_transports(self.config)
                    self.dispatcher = Dispatcher(
                        self.config,
                        self.pm,
                        self.components,
                        self.transports,
                        journal,
                        self.clock,
                    )
                    self._dispatch_scope = await nursery.start(self._run_dispatcher)
                    nursery.start_soon(self._recover, previous_run)
                if self.stopping:  # a signal came while it started
                    self._stop_dispatch()
                nursery.start_soon(self._prune)
                if relay.admin:
                    await nursery.start(self._run_admin)
                addresses = await nursery.start(self._run_ingest)
                task_status.started(addresses)
        finally:
            await close_transports(self.transports)

    async def _count_pending(self, *, task_status) -> None:
        """As the journal is now, before this run writes (started() once that is fixed), and
        read beside it while the relay starts."""
        state_dir = self.config.relay.state_dir
        self.pending_at_start = await count_pending(state_dir, task_status=task_status)
        self.pending_counted.set()

    async def _recover(self, previous_run: int) -> None:
        # Stopping cancels it: the next run recovers what this one did not reach.
        with self._recover_scope:
            await self.dispatcher.recover(previous_run)

    async def _prune(self) -> None:
        with self._prune_scope:  # stopping cancels it; it resumes with the next run
            await self.pruner.run()

    def stop(self, grace: float | None = None) -> None:
        """Stop taking events; attempts in flight get ``grace`` seconds to finish."""
        if self.stopping:
            return
        self.stopping = True
        self._grace = self.config.relay.grace if grace is None else grace
        self._ingest_scope.cancel()
        self._recover_scope.cancel()
        self._prune_scope.cancel()
        self._stop_dispatch()

    def _stop_dispatch(self) -> None:
        if self._dispatch_scope is None:
            return
        if isinstance(self.dispatcher, RemoteDispatcher):
            # The process keeps the grace period itself; this only bounds a stuck one.
            self.dispatcher.stop_intake(self._grace)
            self._dispatch_scope.deadline = trio.current_time() + self._grace + EXIT_MARGIN
        else:
            self.dispatcher.stop_intake()
            self._dispatch_scope.deadline = trio.current_time() + self._grace

    def status(self) -> dict:
        """``/healthz``: "journal failing" (with why) while the journal's last write failed
        and none has succeeded since; the API answers 503 then."""
        failing = self.journal.failing
        status = "stopping" if self.stopping else "ok" if failing is None else "journal failing"
        return {
            "status": status,
            "webhooks": len(self.config.webhooks),
            "in_flight": self.dispatcher.in_flight(),
            "tasks": _count_tasks(trio.lowlevel.current_root_task()),
            **({"journal_error": failing} if failing is not None else {}),
        }

    async def reload(self) -> dict:
        """Re-read the configuration file and apply it; raise ConfigError if it is invalid.

        The new file is validated whole (with the plugins loaded at start) before anything
        changes, so an invalid one changes nothing. Listeners, the journal and the plugins
        themselves stay as they were: changing those needs a restart, and the answer says so.
        """
        path = self.config.path
        text = config_module.read_text(path)
        new = self.components.bind(config_module.loads(text, path))
        remote = isinstance(self.dispatcher, RemoteDispatcher)
        if remote:
            # The same text, which the delivery process applies or refuses (a transport that
            # cannot open, say): refused there, nothing changes here either.
            await self.dispatcher.reconfigure(new, text)
        else:
            self.transports.update(self.components.open_transports(new, self.transports))
        old = self.config
        restart_needed = [
            key for key in RESTART_KEYS if getattr(new.relay, key) != getattr(old.relay, key)
        ]
        restart_needed += ["journal"] if new.journal != old.journal else []
        if "plugins_dir" not in restart_needed and (files := self._plugin_files_changed()):
            restart_needed.append(f"plugins_dir ({files})")
        self.config = new
        self.config_loaded_at = self.clock.now()
        self.router = Router(new.webhooks)
        if self._server is not None:
            self._server.max_body = new.relay.max_body
            self._server.reserve = _descriptors_reserved(new)
        self.pruner.set_retention(new.relay.retention)
        if not remote:
            self.dispatcher.reconfigure(new)
        before, after = {w.id for w in old.webhooks}, {w.id for w in new.webhooks}
        added, removed = sorted(after - before), sorted(before - after)
        log.info(
            "reloaded %s: %d webhooks (added: %s; removed: %s)",
            new.path.name,
            len(after),
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            extra={"webhooks": len(after), "added": added, "removed": removed},
        )
        if restart_needed:
            log.warning(
                "changed settings that apply after a restart: %s", ", ".join(restart_needed)
            )
        return {
            "reloaded": True,
            "webhooks": sorted(after),
            "added": added,
            "removed": removed,
            "restart_needed": restart_needed,
        }

    async def set_webhook_enabled(
        self, webhook_id: str, enabled: bool, reason: str | None = None
    ) -> None:
        """Disable or enable a webhook of the configuration (relay/delivery/health.py); it
        holds across restarts until changed again. Raises KeyError for an unknown id."""
        if self.config.webhook(webhook_id) is None:
            raise KeyError(webhook_id)
        await self.journal.set_webhook_state(webhook_id, enabled, reason, self.clock.now())
        await self.dispatcher.refresh_states()

    async def try_reload(self) -> tuple[bool, dict]:
        """``reload()`` for signals and the API, one at a time: an invalid file is logged, never
        raised."""
        async with self._reloading:
            return await self._try_reload()

    async def _try_reload(self) -> tuple[bool, dict]:
        if self.stopping:  # a new lane would only keep the drain waiting for the grace period
            log.warning("reload ignored: the relay is stopping")
            return False, {"error": "the relay is stopping; reload ignored", "problems": []}
        try:
            # First, and whatever the file holds: `relay webhooks disable` writes the journal
            # and reloads, and must not depend on an unrelated edit being valid.
            await self.dispatcher.refresh_states()
            return True, await self.reload()
        except ConfigError as e:
            problems = e.errors
        except Exception as e:  # noqa: BLE001 - e.g. a plugin's transport failed to start
            problems = [f"{type(e).__name__}: {e}"]
        if files := self._plugin_files_changed():  # perhaps why: a signer they register
            problems.append(f"plugins_dir: plugin files load at a restart, not a reload ({files})")
        for line in problems:
            log.error("reload rejected, the running configuration stays: %s", line)
        return False, {
            "error": "reload rejected; the running configuration stays",
            "problems": problems,
        }

    def _plugin_files_changed(self) -> str:
        """How the plugins directory differs from what this relay loaded, or ""."""
        before = self._plugin_files
        after = plugin_file_digests(self.config.relay.plugins_dir)
        changes = (
            ("added", sorted(after.keys() - before.keys())),
            ("changed", sorted(n for n in after.keys() & before.keys() if after[n] != before[n])),
            ("removed", sorted(before.keys() - after.keys())),
        )
        return "; ".join(f"{what}: {', '.join(names)}" for what, names in changes if names)

    async def _run_remote(self, previous_run: int, *, task_status) -> None:
        with self._dispatch_scope:
            await self.dispatcher.run(previous_run, task_status=task_status)
        self._admin_scope.cancel()  # drained: operators could watch the drain until now
        if self._dispatch_scope.cancelled_caught:  # stopping, and grace + EXIT_MARGIN passed
            log.warning(
                "the delivery process did not stop within the grace period and was killed;"
                " what it held resumes on the next run"
            )
            if not self.dispatcher.started:  # stopped while it was still starting
                task_status.started()

    async def _run_dispatcher(self, *, task_status) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self.dispatcher.run()
        self._admin_scope.cancel()  # drained: operators could watch the drain until now

    async def _run_admin(self, *, task_status) -> None:
        """The admin listener (relay/admin/): for operators, apart from the gateway's."""
        from relay.admin import AdminApi  # here: prometheus-client costs ~3 MB, for it alone
        from relay.admin.auth import admin_gates

        started = False
        with self._admin_scope:
            listeners = await open_tcp_listeners(self.config.relay.admin)
            self.admin_address = _address(listeners[0])
            log.info("admin listener on %s", self.admin_address)
            server = HTTPServer(AdminApi(self), max_body=ADMIN_MAX_BODY)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, listeners, admin_gates(listeners, self.config))
                task_status.started()
                started = True
        if not started:  # the delivery drained while it started
            task_status.started()

    async def _run_ingest(self, *, task_status) -> None:
        relay = self.config.relay
        started = False
        with self._ingest_scope:
            listeners = await open_listeners(relay)
            try:
                addresses = [_address(listener) for listener in listeners]
                for address in addresses:
                    log.info("taking events on %s", address)
                server = self._server = HTTPServer(
                    Api(self),
                    max_body=relay.max_body,
                    reserve=_descriptors_reserved(self.config),
                    on_too_large=self.ingest_stats.too_large,
                )
                async with trio.open_nursery() as nursery:
                    if listeners:
                        await nursery.start(server.serve, listeners, ingest_gates(listeners, self))
                    task_status.started(addresses)
                    started = True
                    await trio.sleep_forever()
            finally:
                if relay.socket and listeners:
                    relay.socket.unlink(missing_ok=True)
        if not started:  # stopped while starting
            task_status.started([])


def _descriptors_reserved(config: Config) -> int:
    """The open files the ingest server leaves for the rest of the process: the http layer's
    RESERVE, and with delivery in this process a connection per attempt in flight (an origin's
    pool never holds more connections than attempts ran at once there)."""
    inline = config.relay.delivery == "inline"
    return RESERVE + (sum(w.concurrency for w in config.webhooks) if inline else 0)


def _count_tasks(task) -> int:
    """Every live task in this trio run: a reload or a storm of them must not grow it."""
    return 1 + sum(_count_tasks(t) for n in task.child_nurseries for t in n.child_tasks)


def _address(listener: trio.SocketListener):
    name = listener.socket.getsockname()
    return name if isinstance(name, str) else f"{name[0]}:{name[1]}"


async def serve(relay: Relay, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run ``relay`` until SIGTERM or SIGINT (a second one stops at once); SIGHUP reloads."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, signals, relay, nursery.cancel_scope)
            if relay.config.relay.watch:
                nursery.start_soon(_watch_file, relay)
            await relay.run(task_status=task_status)  # started: it takes events
            nursery.cancel_scope.cancel()


async def _watch_signals(signals, relay: Relay, everything: trio.CancelScope) -> None:
    # trio delivers a signal once however often it arrived while we were busy, so a storm of
    # SIGHUPs becomes a few reloads, one at a time.
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("%s: reloading %s", name, relay.config.path.name)
            await relay.try_reload()
        elif relay.stopping:
            log.warning("%s again: stopping now", name)
            everything.cancel()
        else:
            log.info("%s: stopping; attempts in flight get %g s", name, relay.config.relay.grace)
            relay.stop()


async def _watch_file(relay: Relay, interval: float = 1.0) -> None:
    """``[relay] watch = true``: reload when the file changes (polled: no dependency needed)."""
    path = relay.config.path

    def stamp():
        try:
            info = path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    seen = stamp()
    while True:
        await trio.sleep(interval)
        now = stamp()
        if now is not None and now != seen:
            seen = now
            log.info("%s changed: reloading", path.name)
            await relay.try_reload()
