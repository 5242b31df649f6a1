"""The relay's side of the delivery process (relay/delivery/process.py, which says why it is one).

``RemoteDispatcher`` stands where the in-process ``Dispatcher`` stands: ingest calls
``submit``, the relay ``reconfigure``, ``stop_intake`` and ``in_flight``. Behind them it starts
the process, hands it what ingest journaled, runs its journal batches in the relay's committer,
and waits for it to drain when the relay stops.

Handing over never blocks ingest: deliveries wait in a bounded list for the pipe, and when the
delivery process falls that far behind (it may: it is the one that yields the CPU) the rest go
to sleep in the journal, due at once, and the process is told to look there.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable

import trio

from relay import children
from relay.clock import Clock
from relay.config import Config, ConfigError
from relay.delivery.stats import DeliveryStats
from relay.journal import Journal
from relay.journal.frames import FrameReader, encode
from relay.model import Delivery

log = logging.getLogger(__name__)

# Deliveries waiting for the pipe; past either bound they sleep in the journal instead.
PENDING_LIMIT = 8192
PENDING_BYTES = 16 * 1024 * 1024
START_TIMEOUT = 60.0  # seconds to load the configuration and plugins
RELOAD_TIMEOUT = 30.0  # seconds for it to apply a reload (or say why not)
EXIT_MARGIN = 5.0  # seconds past the grace period before a draining process is killed


class DeliveryProcessError(Exception):
    """The delivery process could not start, or exited while the relay was running."""


class RemoteDispatcher:
    def __init__(self, config: Config, journal: Journal, clock: Clock):
        self.config = config
        self.journal = journal
        self.clock = clock
        self.stopping = False
        self.started = False
        self._commands: list[tuple] = []
        self._pending = self._pending_bytes = 0
        self._has_commands = trio.Event()
        self._pipe: int | None = None  # the process's stdin, while it runs (see _command)
        self._feeding = False  # _feed is in a send_all
        self._wrote = False  # a command went straight to the pipe since _feed last ran
        self._rest = b""  # what that write left for _feed to send
        self._in_flight = 0
        self.stats = DeliveryStats()  # the process's totals, as it last reported them
        self._reloaded = trio.Event()
        self._reload_problems: list[str] | None = None
        # Deliveries this side put to sleep, in a write that failed and was written later,
        # may be due by then: the process's scheduler must look again.
        journal.on_late_writes(self._wake)
        # Another relay sharing the journal (PostgreSQL) changed a webhook's state.
        journal.on_states_changed(lambda: self._command(("states",)))

    async def run(self, previous_run: int, *, task_status) -> None:
        """Start the process; return when it has drained after ``stop_intake``. The process
        itself recovers what the previous run held (rows up to ``previous_run``)."""
        answers_read, answers_write = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                children.command(
                    children.DELIVERY,
                    str(self.config.path.absolute()),
                    str(previous_run),
                    str(answers_read),
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(answers_read,),
                # Its own session: a terminal's Ctrl-C or a signal to the relay's process group
                # must not reach it, even while it imports (before it ignores them); the relay
                # tells it when to stop.
                start_new_session=True,
            )
        except BaseException:
            os.close(answers_write)
            raise
        finally:
            os.close(answers_read)
        answers = trio.lowlevel.FdStream(answers_write)
        try:
            events = FrameReader(process.stdout)
            await self._started(events, process)
            task_status.started()
            self.started = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed, process.stdin)
                self._pipe = process.stdin.fileno()
                try:
                    await self._serve(events, answers)
                finally:
                    self._pipe = None
                nursery.cancel_scope.cancel()
            status = await process.wait()
            if not self.stopping or status != 0:
                raise DeliveryProcessError(
                    f"the delivery process exited (status {status}); see the log above"
                )
        finally:
            # Cancelled (a second signal, or past the grace period): it stops now, and the next
            # run recovers what it held.
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.kill()
                    await process.wait()
                await answers.aclose()
                await process.stdin.aclose()
                await process.stdout.aclose()

    async def _started(self, events: FrameReader, process: trio.Process) -> None:
        with trio.move_on_after(START_TIMEOUT):
            try:
                first = await events.receive()
            except EOFError:
                first = ("failed", f"it exited (status {await process.wait()})")
            if first[0] != "ready":
                raise DeliveryProcessError(f"the delivery process did not start: {first[1]}")
            return
        raise DeliveryProcessError(f"the delivery process did not start in {START_TIMEOUT:g} s")

    async def _serve(self, events: FrameReader, answers: trio.lowlevel.FdStream) -> None:
        """Its journal batches and reports, until it exits."""
        while True:
            try:
                message = await events.receive()
            except EOFError:
                return
            if message[0] == "journal":
                results = await self.journal.forward(message[1])
                try:
                    await answers.send_all(encode(results))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # it died: the end of its output follows
            elif message[0] == "report":
                self._in_flight = message[1]
                self.stats.merge(message[2])
            elif message[0] == "reloaded":
                self._reload_problems = message[1]
                self._reloaded.set()

    async def _feed(self, stdin: trio.abc.SendStream) -> None:
        while True:
            await self._has_commands.wait()
            self._has_commands = trio.Event()
            self._wrote = False
            data, self._rest = self._rest, b""
            if self._commands:
                data += encode(self._commands)
                self._commands = []
                self._pending = self._pending_bytes = 0
            if not data:
                continue
            self._feeding = True
            try:
                await stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # it died: _serve sees its output end
            finally:
                self._feeding = False

    def _wake(self) -> None:
        if not self.stopping and ("wake",) not in self._commands:
            self._command(("wake",))

    def _command(self, command: tuple) -> None:
        """Queue ``command``. The first one since ``_feed`` last ran is written at once when the
        pipe is idle: through ``_feed`` it waited for that task's turn and for send_all's own
        checkpoint, two trips through the scheduler between a commit's answer and the delivery
        process, for each event at paced rates. Those queued after it in the same turn (the
        other appends of its commit) wait for ``_feed``, and go in one frame."""
        self._commands.append(command)
        self._has_commands.set()
        if self._pipe is None or self._feeding or self._wrote:  # (a _rest implies _wrote)
            return
        data = encode(self._commands)
        try:
            sent = os.write(self._pipe, data)  # non-blocking: trio made it so
        except BlockingIOError:
            sent = 0
        except OSError:  # it died: _feed meets the same error, and _serve its output's end
            return
        self._wrote = True
        self._commands = []
        self._pending = self._pending_bytes = 0
        self._rest = data[sent:]

    # -- what the relay and ingest call, as on Dispatcher ---------------------------------

    async def submit(self, deliveries: Iterable[Delivery]) -> None:
        rows = [
            (d.id, d.webhook_id, d.event.id, d.event.name, d.event.body, d.event.received_at)
            for d in deliveries
        ]
        if not rows:
            return
        size = sum(len(row[4]) for row in rows)
        if (
            self.stopping
            or self._pending + len(rows) > PENDING_LIMIT
            or self._pending_bytes + size > PENDING_BYTES
        ):
            await self.journal.put_to_sleep((row[0] for row in rows), self.clock.now())
            self._wake()
            return
        self._pending += len(rows)
        self._pending_bytes += size
        self._command(("deliver", rows))

    async def reconfigure(self, config: Config, text: str) -> None:
        """Have the delivery process apply ``text`` (validated here as ``config``); raise
        ConfigError with its reasons if it refuses. The relay reloads one at a time."""
        self._reloaded = trio.Event()
        self._reload_problems = None
        self._command(("reload", text))
        with trio.move_on_after(RELOAD_TIMEOUT):
            await self._reloaded.wait()
        if self._reload_problems is None:
            raise ConfigError([f"the delivery process did not answer in {RELOAD_TIMEOUT:g} s"])
        if self._reload_problems:
            raise ConfigError(self._reload_problems)
        self.config = config

    async def refresh_states(self) -> None:
        """Have the delivery process re-read the journal's webhook states (before any reload
        queued after this)."""
        self._command(("states",))

    def replayed(self, webhook_ids: Iterable[str]) -> None:
        """Deliveries to these webhooks were replayed: the delivery process's lanes take them
        as they have room (relay/delivery/replays.py)."""
        self._command(("replayed", sorted(set(webhook_ids))))

    def stop_intake(self, grace: float) -> None:
        """Start no more attempts; ``run`` returns once the process has drained, at most
        ``grace`` seconds later."""
        self.stopping = True
        self._command(("stop", grace))

    def in_flight(self) -> int:
        return self._in_flight
