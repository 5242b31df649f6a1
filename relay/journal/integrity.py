"""Whether a journal file is the one its state_dir had, and readable, before a relay takes events
into it.

Why: SQLite takes a missing or zero-byte file for a new, empty database, and reads a damaged one
until a query reaches the damage. A relay that accepted either would acknowledge events into a
journal that lost every event before them, or into one it cannot read back. So, at start:

- a marker, ``state_dir/journal.id``, is written (and fsynced) when a journal is created; while
  it exists, a journal file that is missing, empty or without tables is refused, never replaced;
- the header's page count against the file's size, in O(1): a file cut short in the middle;
- SQLite's ``PRAGMA quick_check`` (every page of every table and index) when the journal is at
  most ``QUICK_CHECK_AT_START`` bytes. Measured on this 2-core VM under load: 3 s a GB with the
  file in the page cache, 14-17 s a GB read from disk (a 1 GB journal of 1.4 million events:
  2.7 s and 17.2 s; 84 MB: 0.22-0.28 s and 1.2 s). A relay restarted after a crash must not
  wait that long, so a larger journal starts on the O(1) checks, and ``relay journal check``
  runs the full one.

A refusal names the file and what to do: ``relay journal salvage`` copies out what is readable
(relay/journal/repair.py).
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

MARKER = "journal.id"
QUICK_CHECK_AT_START = 128 * 1024 * 1024  # bytes: ~0.4 s warm, ~2 s from disk (see above)
MAGIC = b"SQLite format 3\x00"


class JournalDamaged(Exception):
    """The journal is not the one its state_dir had, or cannot be read back; the message names
    the file and what to do."""


def marker_path(path: Path) -> Path:
    return path.parent / MARKER


def check_file(path: Path) -> None:
    """The checks that need no SQLite: the file is there if the marker says it should be, and
    is not cut short. Raise JournalDamaged when it fails them."""
    marker = marker_path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    if marker.exists():
        made = _marker_text(marker)
        if size is None:
            raise JournalDamaged(
                f"{path} is missing, but {marker} says a journal was created there ({made}); "
                f"if it was moved, put it back; to start with an empty journal, losing every "
                f"event of the old one, remove {marker}"
            )
        if size == 0:
            raise JournalDamaged(
                f"{path} is empty (0 bytes), but {marker} says a journal was created there "
                f"({made}): it was truncated, and nothing in it can be salvaged; restore it "
                f"from a backup, or remove it and {marker} to start with an empty journal"
            )
    if size and (problem := header_problem(path)):
        raise damaged(path, problem)


# Looks at a file that seems cut short: another connection's checkpoint may be writing it.
LOOKS = 5
LOOK_AGAIN = 0.05  # seconds


def header_problem(path: Path) -> str | None:
    """What the first 100 bytes say is wrong with the file: not SQLite's, or shorter than the
    pages its header counts. Not the size while a WAL file has frames: a checkpoint cut short
    by a crash may have written the new header first, and the WAL still holds the pages.

    Another connection (``relay webhooks disable`` closing, say) may be checkpointing while
    this looks: it writes the new header, then the pages that grow the file, then deletes the
    WAL. So the WAL is looked at first, then the header, then the size, and a file that seems
    cut short is looked at again for a moment: a checkpoint ends within it, a cut stays."""
    for look in range(LOOKS):
        if (problem := _header_problem(path)) is None or "cut short" not in problem:
            return problem
        if look < LOOKS - 1:
            time.sleep(LOOK_AGAIN)
    return problem


def _header_problem(path: Path) -> str | None:
    wal = path.with_name(path.name + "-wal")
    try:
        wal_has_frames = wal.stat().st_size > 0
    except FileNotFoundError:
        wal_has_frames = False
    with path.open("rb") as f:
        header = f.read(100)
        size = os.fstat(f.fileno()).st_size
    if len(header) < 100 or not header.startswith(MAGIC):
        return "its first bytes are not an SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header names a page size of {page_size} bytes"
    if wal_has_frames:
        return None
    if size % page_size:
        return f"{size} bytes is not a whole number of {page_size}-byte pages: it was cut short"
    pages = int.from_bytes(header[28:32], "big")
    counted = header[24:28] == header[92:96]  # the page count is valid for this version
    if counted and size < pages * page_size:
        return (
            f"{size} bytes where its header counts {pages} pages of {page_size} "
            f"({pages * page_size} bytes): it was cut short"
        )
    return None


def quick_check(conn: sqlite3.Connection, limit: int = 10) -> list[str]:
    """SQLite's ``PRAGMA quick_check``: up to ``limit`` problems, none when the pages are
    sound. An error that stops the check is one."""
    try:
        rows = [row[0] for row in conn.execute(f"PRAGMA quick_check({int(limit)})")]
    except sqlite3.DatabaseError as e:
        return [str(e)]
    return [] if rows == ["ok"] else rows


def check_pages(conn: sqlite3.Connection, path: Path) -> None:
    """``quick_check`` at start, when the journal (with its WAL) is small enough to check in
    about a second (``QUICK_CHECK_AT_START``); raise JournalDamaged with what it found."""
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    if size <= QUICK_CHECK_AT_START and (problems := quick_check(conn)):
        raise damaged(path, "quick_check: " + "; ".join(problems))


def damaged(path: Path, what: object) -> JournalDamaged:
    """The refusal of a journal SQLite cannot read back, and what to do about it."""
    return JournalDamaged(
        f"{path} is damaged ({what}); move it aside and run "
        f'"relay journal salvage {path} NEW_STATE_DIR" to copy out what is readable, '
        f"then set [relay] state_dir to NEW_STATE_DIR"
    )


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """SQLite's word for a file that is not, or no longer, a readable database."""
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (11, 26)  # CORRUPT, NOTADB


def refuse_if_replaced(path: Path) -> None:
    """A journal file without tables is a new one, unless the marker says one existed here."""
    marker = marker_path(path)
    if marker.exists():
        raise JournalDamaged(
            f"{path} holds no journal tables, but {marker} says a journal was created there "
            f"({_marker_text(marker)}): it was replaced; restore it from a backup, or remove "
            f"it and {marker} to start with an empty journal"
        )


def write_marker(path: Path, *, replace: bool = True) -> None:
    """Say, durably, that ``path`` holds a journal (``replace=False``: unless it says so
    already). Written after the journal's first commit, so a crash between the two leaves a
    journal without a marker (adopted at the next start), never a marker without a journal."""
    marker = marker_path(path)
    if not replace and marker.exists():
        return
    made = datetime.now(UTC).isoformat(timespec="seconds")
    temporary = marker.with_name(marker.name + ".new")
    with temporary.open("w") as f:
        f.write(f"journal {uuid.uuid4()} created {made}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, marker)
    directory = os.open(marker.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _marker_text(marker: Path) -> str:
    try:
        return marker.read_text(errors="replace").strip()[:200] or "no date"
    except OSError as e:
        return f"unreadable: {e.strerror}"
