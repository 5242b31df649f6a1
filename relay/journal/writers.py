"""The two writers a ``Journal`` commits through: the writer process (relay/journal/writer.py,
the default) and SQL inline on the trio thread; and the errors a journal raises.

A writer is ``await writer.run(batch)`` (a list of ``(operation, args)``, answered with
``(ok, result or error text)`` each: the engine's ``run_batch``, relay/journal/engines.py) and
``aclose()``; ``backend_pid`` is its PostgreSQL connection's server process (None on SQLite),
whose own notifications the relay need not hear.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import trio

from relay import children
from relay.journal.engines import engine
from relay.journal.frames import FrameReader, encode

log = logging.getLogger(__name__)


class JournalError(Exception):
    """The journal could not do what was asked (disk full, unreadable file ...)."""


class JournalUnusable(JournalError):
    """The journal cannot be opened: damaged, written by a newer relay, or unreadable. The
    message names the file and what to do; nothing was accepted into it."""


class ProcessWriter:
    """The writer process (relay/journal/writer.py), spoken to over its stdin and stdout."""

    backend_pid: int | None = None

    def __init__(self, process: trio.Process):
        self.process = process
        self._stdin = process.stdin.fileno()
        self._answers = FrameReader(process.stdout)

    @classmethod
    async def start(
        cls, state_dir: Path, *, url: str | None = None, lease: float = 0.0
    ) -> ProcessWriter:
        # The URL goes over the pipe, not in the arguments, which every user can read (ps).
        process = await trio.lowlevel.open_process(
            children.command(children.WRITER, str(state_dir), *(["postgresql"] if url else [])),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        writer = cls(process)
        try:
            if url:
                await process.stdin.send_all(encode((url, lease)))
            ok, answer = await writer._receive()
        except BaseException:
            await writer.aclose()
            raise
        if not ok:
            await writer.aclose()
            raise JournalUnusable(answer)
        writer.backend_pid = answer
        return writer

    async def run(self, batch: list[tuple[str, tuple]]) -> list[tuple[bool, object]]:
        # Straight into the pipe (trio made it non-blocking): send_all would first wait for a
        # turn of the scheduler, on every commit's path. What a full pipe does not take, or a
        # dead writer refuses, goes through send_all, which waits or raises.
        data = encode(batch)
        try:
            sent = os.write(self._stdin, data)
        except OSError:
            sent = 0
        if sent < len(data):
            await self.process.stdin.send_all(data[sent:])
        return await self._receive()

    async def _receive(self):
        try:
            return await self._answers.receive()
        except EOFError:
            raise JournalError(
                f"the journal writer exited (status {self.process.poll()}); see its stderr"
            ) from None

    async def aclose(self) -> None:
        """Close its input: it commits what it has and exits."""
        await self.process.stdin.aclose()
        with trio.move_on_after(30):
            await self.process.wait()
        if self.process.poll() is None:
            log.error("the journal writer did not exit in 30 s; killing it")
            self.process.kill()
            await self.process.wait()
        await self.process.stdout.aclose()


class InlineWriter:
    """SQL on the trio thread: no process, but the loop blocks for each commit.

    Tests on trio's MockClock use it: while another process works, every task looks blocked and
    the mock clock would jump past deadlines mid-commit.
    """

    def __init__(self, conn, url: str | None = None):
        self.conn = conn
        self.engine = engine(url)
        self.backend_pid = getattr(conn, "backend_pid", None)

    @classmethod
    async def start(
        cls, state_dir: Path, *, url: str | None = None, lease: float = 0.0
    ) -> InlineWriter:
        journal = engine(url)
        try:
            return cls(journal.connect(state_dir, url, lease=lease), url)
        except journal.OPEN_ERRORS as e:
            raise JournalUnusable(str(e)) from e

    async def run(self, batch):
        await trio.lowlevel.checkpoint()
        return self.engine.run_batch(self.conn, batch)

    async def aclose(self) -> None:
        self.conn.close()
