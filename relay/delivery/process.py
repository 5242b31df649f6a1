"""The delivery process: lanes, scheduler and attempts, beside the process that takes events.

Why a process: in one trio thread, ingest and delivery share one core, and trio's round robin
shares it between 64 ingest connections and every lane's workers. Measured on this 2-core
machine with wrk (16 connections, single-event POSTs, nginx receiver), one process acked ~9,500
requests/s with nothing to deliver and ~4,300/s delivering each event. Here each side has a
core of its own when the machine has two, and the kernel shares the CPU when it is short. In
``scripts/bench`` (where the load generator and receivers take part of the same two cores) the
split raised batch ingest by 20-50% and cut p99 at 3,000 events/s by 2-3x, and costs ~1 ms of
p50 at 1,000/s (a cross-process wake-up on the way: ~0.1-0.3 ms per hop on this VM) and one
more interpreter (~35 MB). ``[relay] delivery = "inline"`` keeps everything in one process.

What crosses the pipes (frames of relay/journal/frames.py):

- stdin, from the relay: lists of commands: ``("deliver", rows)`` for deliveries just journaled,
  ``("wake",)`` when the relay put some to sleep in the journal instead, ``("reload", text)``
  with the configuration's text the relay validated, ``("states",)`` to re-read the journal's
  webhook states (relay/journal/states.py), ``("replayed", webhook_ids)`` when the relay
  replayed deliveries to them (relay/delivery/replays.py), and ``("stop", grace)``.
- the answers pipe (its descriptor is an argument), from the relay: the results of this
  process's journal batches. A pipe of its own, so that an answer never queues behind commands:
  a command may itself wait for the journal, and one pipe could then deadlock.
- stdout, to the relay: ``("ready",)`` or ``("failed", reason)`` once, then ``("journal",
  batch)`` for each batch its journal commits, ``("reloaded", problems)`` for each reload
  (empty: applied), and ``("report", in_flight, changes)``: the attempts in flight (for
  ``/healthz``) and the totals of relay/delivery/stats.py that changed (for ``/metrics``).

Its journal is the relay's: a ``Journal`` whose writer hands each batch to the relay, which runs
it in its own committer. One writer, and what this process records commits in order with what
ingest appends.

It ignores SIGINT, SIGTERM and SIGHUP (a terminal or a service manager signals the whole
group): the relay decides, and tells it to reload or stop. When the relay goes away (its pipe
ends, kill -9 included) it stops at once: nothing could be recorded any more, and what it held
is recovered by the next run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import trio

from relay import config as config_module
from relay.clock import Clock
from relay.config import configure_logging
from relay.delivery.dispatch import Dispatcher
from relay.journal import Journal, JournalError
from relay.journal.frames import FrameReader, encode
from relay.logs import OVERRIDE
from relay.model import Delivery, Event
from relay.plugins import Components, PluginError, close_transports, load_with_plugins

log = logging.getLogger(__name__)

REPORT_INTERVAL = 0.5  # seconds between reports (attempts in flight, stats), when they changed


class RelayGone(Exception):
    """The relay's end of a pipe closed: it exited."""


class RelayWriter:
    """The writer of this process's journal: the relay, over the pipes."""

    def __init__(self, worker: DeliveryWorker, answers: FrameReader):
        self.worker = worker
        self.answers = answers

    async def run(self, batch):
        await self.worker.send(("journal", batch))
        try:
            return await self.answers.receive()
        except EOFError:
            raise RelayGone from None

    async def aclose(self) -> None:
        pass  # the pipes are the process's own; they close when it exits


class DeliveryWorker:
    def __init__(self, config, pm, components: Components):
        self.config = config
        self.pm = pm
        self.components = components
        self.transports: dict = {}
        self._dispatch_scope = trio.CancelScope()
        self._stopping = False

    async def run(self, fds: tuple[int, int, int], previous_run: int) -> None:
        commands_fd, out_fd, answers_fd = fds
        self._out = trio.lowlevel.FdStream(out_fd)
        self._send_lock = trio.StrictFIFOLock()  # the journal and the reporter both send
        commands = FrameReader(trio.lowlevel.FdStream(commands_fd))
        answers = FrameReader(trio.lowlevel.FdStream(answers_fd))
        # Outcomes wait for company in the relay's journal, which commits them with ingest's
        # appends; waiting here too would only hold them twice.
        async with Journal.running(RelayWriter(self, answers), ride_along=0) as journal:
            self.transports = self.components.open_transports(self.config)
            try:
                self.dispatcher = Dispatcher(
                    self.config, self.pm, self.components, self.transports, journal, Clock()
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._dispatch, nursery.cancel_scope)
                    nursery.start_soon(self.dispatcher.recover, previous_run)
                    nursery.start_soon(self._report)
                    await self.send(("ready",))
                    nursery.start_soon(self._obey, commands)
            finally:
                await close_transports(self.transports)

    async def send(self, message) -> None:
        async with self._send_lock:
            try:
                await self._out.send_all(encode(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise RelayGone from e

    async def _dispatch(self, everything: trio.CancelScope) -> None:
        with self._dispatch_scope:
            await self.dispatcher.run()
        everything.cancel()  # drained (or out of grace): the process is done

    async def _report(self) -> None:
        """What the relay shows of this process: one small frame every REPORT_INTERVAL at most,
        with the totals of only the webhooks that had attempts since the last one."""
        reported = 0
        while True:
            await trio.sleep(REPORT_INTERVAL)
            changes = self.dispatcher.stats.changes()
            if (now := self.dispatcher.in_flight()) != reported or changes:
                await self.send(("report", now, changes))
                reported = now

    async def _obey(self, commands: FrameReader) -> None:
        dispatcher = self.dispatcher
        while True:
            try:
                messages = await commands.receive()
            except EOFError:
                raise RelayGone from None
            for message in messages:
                kind = message[0]
                if kind == "deliver":
                    await dispatcher.submit(
                        Delivery(delivery_id, webhook_id, Event(event_id, name, body, received))
                        for delivery_id, webhook_id, event_id, name, body, received in message[1]
                    )
                elif kind == "wake":
                    dispatcher.scheduler.wake()
                elif kind == "states":
                    await dispatcher.refresh_states()
                elif kind == "replayed":
                    dispatcher.replayed(message[1])
                elif kind == "reload":
                    await self.send(("reloaded", self._reload(message[1])))
                elif kind == "stop":
                    self._stopping = True
                    dispatcher.stop_intake()
                    self._dispatch_scope.deadline = trio.current_time() + message[1]

    def _reload(self, text: str) -> list[str]:
        """Apply the text the relay validated; what is wrong with it here (a transport that
        cannot open), or nothing."""
        if self._stopping:
            return ["the delivery process is stopping"]
        try:
            new = self.components.bind(config_module.loads(text, self.config.path))
            self.transports.update(self.components.open_transports(new, self.transports))
        except config_module.ConfigError as e:
            return e.errors
        except Exception as e:  # noqa: BLE001 - a plugin's transport failed to start, say
            return [f"{type(e).__name__}: {e}"]
        self.config = new
        self.dispatcher.reconfigure(new)
        return []


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    config_path, previous_run, answers_fd = sys.argv[1:4]
    # The frames own stdin and stdout: a plugin's print() goes to stderr, never into a frame.
    commands_fd, out_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        config, pm, components = load_with_plugins(Path(config_path))
    except config_module.ConfigError as e:
        os.write(out_fd, encode(("failed", "; ".join(e.errors))))
        return 1
    except PluginError as e:
        os.write(out_fd, encode(("failed", str(e))))
        return 1
    configure_logging(config, os.environ.get(OVERRIDE))  # relay run --log, if given
    worker = DeliveryWorker(config, pm, components)
    fds = (commands_fd, out_fd, int(answers_fd))
    status = 0
    try:
        trio.run(worker.run, fds, int(previous_run))
    except* RelayGone:
        pass  # the relay exited first; the next run recovers what was in flight
    except* JournalError as group:
        log.error("delivery process: the journal failed: %s", group.exceptions[0])
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
