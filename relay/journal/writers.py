"""The two writers a ``Journal`` commits through: the writer process (relay/journal/writer.py,
the default) and SQL inline on the trio thread; and the errors a journal raises.

A writer is ``await writer.run(batch)`` (a list of ``(operation, args)``, answered with
``(ok, result or error text)`` each: relay/journal/sqlite.py ``run_batch``) and ``aclose()``.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import trio

from relay import children
from relay.journal import sqlite as journal_sql
from relay.journal.frames import FrameReader, encode

log = logging.getLogger(__name__)


class JournalError(Exception):
    """The journal could not do what was asked (disk full, unreadable file ...)."""


class JournalUnusable(JournalError):
    """The journal cannot be opened: damaged, written by a newer relay, or unreadable. The
    message names the file and what to do; nothing was accepted into it."""


class ProcessWriter:
    """The writer process (relay/journal/writer.py), spoken to over its stdin and stdout."""

    def __init__(self, process: trio.Process):
        self.process = process
        self._answers = FrameReader(process.stdout)

    @classmethod
    async def start(cls, state_dir: Path) -> ProcessWriter:
        process = await trio.lowlevel.open_process(
            children.command(children.WRITER, str(state_dir)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        writer = cls(process)
        try:
            ok, error = await writer._receive()
        except BaseException:
            await writer.aclose()
            raise
        if not ok:
            await writer.aclose()
            raise JournalUnusable(error)
        return writer

    async def run(self, batch: list[tuple[str, tuple]]) -> list[tuple[bool, object]]:
        await self.process.stdin.send_all(encode(batch))
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

    def __init__(self, conn):
        self.conn = conn

    @classmethod
    async def start(cls, state_dir: Path) -> InlineWriter:
        try:
            return cls(journal_sql.connect(state_dir))
        except journal_sql.OPEN_ERRORS as e:
            raise JournalUnusable(str(e)) from e

    async def run(self, batch):
        await trio.lowlevel.checkpoint()
        return journal_sql.run_batch(self.conn, batch)

    async def aclose(self) -> None:
        self.conn.close()
