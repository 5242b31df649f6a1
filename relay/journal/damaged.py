"""Reading rows out of a damaged SQLite file (relay journal salvage, relay/journal/repair.py):
a table in ranges of rowids, each range on its own, a range that fails split in halves down to
single rows, so that one bad page loses only the rows on it, and the rowids that could not be
read reported as ranges.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

STEP = 500  # rows per range read
GIVE_UP = 20  # steps in a row that read nothing, past the last readable row of a cut table


class Bad:
    """Rowids that could not be read (or do not exist: a damaged page hides which), and the
    first error, reported as ranges."""

    def __init__(self):
        self.rowids: list[int] = []
        self.error = ""

    def add(self, rowid: int, error: Exception) -> None:
        self.rowids.append(rowid)
        self.error = self.error or str(error)

    def ranges(self) -> list[str]:
        out: list[list[int]] = []
        for rowid in self.rowids:
            if out and out[-1][1] == rowid - 1:
                out[-1][1] = rowid
            else:
                out.append([rowid, rowid])
        return [f"rowids {a}-{b} ({self.error})" for a, b in out]


def readable_rows(
    src, table: str, columns: str, unreadable: list[str], bad: Bad
) -> Iterator[tuple]:
    """Every readable row, ``STEP`` rowids at a time. When the highest rowid cannot be read
    (a file cut short loses the table's last pages), step on until ``GIVE_UP`` steps in a row
    read nothing, jumping over gaps that read as empty (retention deletes the oldest rows)."""
    low, high = _rowid_bounds(src, table)
    after, failing = low - 1, 0
    while high is None or after < high:
        upto = after + STEP if high is None else min(after + STEP, high)
        rows = list(_range(src, table, columns, after, upto, bad))
        yield from rows
        if high is None and not rows:
            try:
                (following,) = src.execute(
                    f"SELECT min(rowid) FROM {table} WHERE rowid > ?", (upto,)
                ).fetchone()
            except sqlite3.DatabaseError:
                failing += 1
                if failing >= GIVE_UP:
                    unreadable.append(f"rowids past {upto}: the end of the table is unreadable")
                    return
            else:
                if following is None:
                    return
                upto, failing = following - 1, 0
        elif rows:
            failing = 0
        after = upto


def _rowid_bounds(src, table: str) -> tuple[int, int | None]:
    """The lowest and highest rowids: through the table's b-tree, else through an index (its
    entries hold the rowids); 1 and None (not known) where neither can be read."""
    try:
        indexes = src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
        ).fetchall()
    except sqlite3.DatabaseError:
        indexes = []
    sources = [table] + [f"{table} INDEXED BY {name}" for (name,) in indexes]
    bounds: list[int | None] = []
    for function in ("min", "max"):
        for source in sources:
            try:
                (found,) = src.execute(f"SELECT {function}(rowid) FROM {source}").fetchone()
            except sqlite3.DatabaseError:
                continue
            bounds.append(0 if found is None else found)
            break
        else:
            bounds.append(None)
    low, high = bounds
    return (1 if low is None else low), high


def _range(src, table, columns, after: int, upto: int, bad: Bad) -> Iterator[tuple]:
    """The rows with rowids in ``(after, upto]``; where reading fails, the rows before the
    failure, then each half of the rest on its own, down to single rows."""
    got: list[tuple] = []
    query = f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? AND rowid <= ? ORDER BY rowid"
    try:
        for row in src.execute(query, (after, upto)):
            got.append(row)
    except sqlite3.DatabaseError as e:
        yield from got
        if got:
            after = got[-1][0]
        if upto - after <= 1:
            if upto > after:
                bad.add(upto, e)
            return
        middle = (after + upto) // 2
        yield from _range(src, table, columns, after, middle, bad)
        yield from _range(src, table, columns, middle, upto, bad)
        return
    yield from got
