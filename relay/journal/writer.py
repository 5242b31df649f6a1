"""The journal's writer: a process of its own that owns the database connection (SQLite's, or
PostgreSQL's: relay/journal/engines.py).

Why a process and not a thread: measured here, with the relay's trio loop busy delivering, a
worker thread waits for the GIL at every SQLite call, and ``trio.to_thread.run_sync`` itself
managed 2-4 calls a second beside one busy task (10,900 with none). A process has its own
interpreter: the relay sends it a batch over a pipe and gets the results back when the batch
is committed and fsynced, whatever the relay's loop is doing meanwhile.

Frames both ways are those of relay/journal/frames.py: a batch of ``(operation, args)`` pairs in,
a list of ``(ok, result or error text)`` out (see relay/journal/sqlite.py). On PostgreSQL
(a second argument, ``postgresql``) the first frame in is ``(url, lease)``: the URL may hold a
password, which arguments would show to every user (ps). The first frame out says whether the
journal opened: ``(True, the connection's server process id or None)`` or ``(False, why)``.
The writer ends when its input closes: after the relay exits, even by kill -9, it finishes the
batch it has, commits it, and exits.
"""

from __future__ import annotations

import pickle
import signal
import sys
from pathlib import Path

from relay.journal.engines import engine
from relay.journal.frames import HEADER, encode


def _read_exactly(stream, size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def main() -> int:
    # Ctrl-C or a service manager signals the whole process group; the relay decides when the
    # journal closes (it closes our input), so that what it still writes while draining lands.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    url, lease = None, 0.0
    if sys.argv[2:] == ["postgresql"]:
        header = _read_exactly(source, HEADER.size)
        if header is None:
            return 1
        url, lease = pickle.loads(_read_exactly(source, HEADER.unpack(header)[0]))
    journal = engine(url)
    try:
        conn = journal.connect(Path(sys.argv[1]), url, lease=lease)
    except journal.OPEN_ERRORS as e:
        sink.write(encode((False, str(e))))
        sink.flush()
        return 1
    sink.write(encode((True, getattr(conn, "backend_pid", None))))
    sink.flush()
    run_batch = journal.run_batch
    while (header := _read_exactly(source, HEADER.size)) is not None:
        batch = pickle.loads(_read_exactly(source, HEADER.unpack(header)[0]))
        sink.write(encode(run_batch(conn, batch)))
        sink.flush()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
