"""``relay journal check`` and ``salvage``: what is wrong with a journal, and copying out of a
damaged one every row that can still be read.

Salvage reads the damaged file read-only, table by table in ranges of rowids (attempts by their
deliveries' ids, bindings by key), each range on its own: a range that fails (a damaged page)
is split in halves down to single rows, so that one bad page loses only the rows on it. This is
SQLite's ``.recover`` idea in plain SQL: ``Connection.iterdump`` stops at the first error.
What comes out goes into a new journal in another directory, never over the damaged one; a
delivery whose event could not be read is left out (it could not be sent), and pending
deliveries that a relay held in memory are recovered by the first run on the new journal.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from attrs import Factory, define

from relay.journal import integrity
from relay.journal import sqlite as journal_sql
from relay.journal.damaged import STEP, Bad, readable_rows

EVENTS = "id, name, body, received_at"
DELIVERIES = (
    "id, event_id, webhook_id, state, attempts, next_at, created_at, updated_at, last_outcome,"
    " order_key, attempt_base"
)
ATTEMPTS = "delivery_id, number, started_at, duration, status, error, request, response"
# Small tables copied whole, where the source has them (schema 3): who replayed what, and the
# webhooks switched off (a salvage must not switch them back on).
WHOLE = {
    "replays": "delivery_id, replayed_at, by, attempts_before",
    "webhook_state": "webhook_id, enabled, reason, changed_at",
}


class SalvageError(Exception):
    """Salvage cannot start: the destination holds a journal, or the source cannot be opened."""


def check(state_dir: Path) -> tuple[bool, list[str]]:
    """Every check the relay makes at start, and ``quick_check`` whatever the journal's size;
    ``(ok, lines to print)``. Read-only: a running relay is not disturbed."""
    path = (state_dir / journal_sql.FILENAME).absolute()
    try:
        integrity.check_file(path)
    except integrity.JournalDamaged as e:
        return False, [str(e)]
    if not path.exists():
        return True, [f"{path}: no journal yet (a relay creates it when it first starts)"]
    try:
        conn = _open_source(path)
    except SalvageError as e:
        return False, [str(e)]
    try:
        problems = [f"quick_check: {p}" for p in integrity.quick_check(conn, limit=20)]
        version = _read(conn, "PRAGMA user_version", problems)
        tables = _tables(conn, problems)
        old = version[0][0] if version else journal_sql.SCHEMA_VERSION
        if old <= 2:  # migrated at the next start: not a problem
            tables.get("deliveries", set()).update({"order_key", "attempt_base"})
            tables.get("attempts", set()).update({"request", "response"})
            tables["replays"] = journal_sql.COLUMNS["replays"]
        if old == 1:
            tables["runs"] = journal_sql.COLUMNS["runs"]
            tables.get("deliveries", set()).add("held_by")
        if tables or not problems:
            problems += journal_sql.schema_problems(tables)
        counts = _read(
            conn,
            "SELECT (SELECT count(*) FROM events), state, count(*) FROM deliveries GROUP BY state",
            problems,
        )
    finally:
        conn.close()
    if problems:
        return False, [f"{path}: {p}" for p in problems] + [str(integrity.damaged(path, "above"))]
    events = counts[0][0] if counts else 0
    states = ", ".join(f"{n:,} {state}" for _, state, n in counts) or "none"
    return True, [f"{path}: ok (schema {version[0][0]}; {events:,} events; deliveries: {states})"]


@define
class Salvaged:
    """What salvage copied and what it could not read, per table."""

    copied: dict[str, int] = Factory(dict)
    unreadable: dict[str, list[str]] = Factory(dict)  # rowid ranges, keys, errors
    left_out: dict[str, int] = Factory(dict)  # readable, but of no use (a delivery's event lost)

    def lines(self) -> list[str]:
        out = []
        for table, n in self.copied.items():
            line = f"{table}: {n:,} copied"
            if left := self.left_out.get(table):
                line += f", {left:,} left out (their event could not be read)"
            out.append(line)
            for problem in self.unreadable.get(table, []):
                out.append(f"  could not read {problem}")
        return out


def salvage(source: Path, dest_dir: Path) -> Salvaged:
    """Copy every readable event, delivery, attempt and binding of the journal ``source`` into
    a new journal in ``dest_dir``."""
    dest_path = dest_dir / journal_sql.FILENAME
    if dest_path.exists() or integrity.marker_path(dest_path).exists():
        raise SalvageError(f"{dest_dir} holds a journal already; salvage into a new directory")
    src = _open_source(source)
    report = Salvaged()
    try:
        dest = journal_sql.connect(dest_dir, start_run=False)
        try:
            _copy_rows(src, dest, "events", EVENTS, report)
            _copy_rows(src, dest, "deliveries", _present(src, "deliveries", DELIVERIES), report)
            with dest:
                # A delivery whose event is gone cannot be sent; one whose state is not one of
                # the three came off a damaged page that still parsed.
                orphans = dest.execute(
                    "DELETE FROM deliveries WHERE event_id NOT IN (SELECT id FROM events)"
                    " OR state NOT IN ('pending', 'delivered', 'failed')"
                ).rowcount
            report.left_out["deliveries"] = orphans
            report.copied["deliveries"] -= orphans
            _copy_attempts(src, dest, report)
            _copy_bindings(src, dest, report)
            for table, columns in WHOLE.items():
                _copy_whole(src, dest, table, _present(src, table, columns), report)
        finally:
            dest.close()
    finally:
        src.close()
    return report


def _open_source(path: Path) -> sqlite3.Connection:
    """``path`` read-only; ``immutable`` (its WAL unread) only when SQLite cannot open it so.

    ``writable_schema`` (on a read-only connection: it writes nothing) lets SQLite read a file
    shorter than its header says, page by page, where it would otherwise refuse the whole."""
    if not path.exists():
        raise SalvageError(f"{path}: no such file")
    error: Exception | None = None
    for query in ("mode=ro", "immutable=1"):
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?{query}", uri=True)
        try:
            conn.execute("PRAGMA writable_schema=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.DatabaseError as e:
            conn.close()
            error = e
    raise SalvageError(f"{path}: SQLite cannot read it ({error})")


def _read(conn, sql: str, problems: list[str]) -> list[tuple]:
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.DatabaseError as e:
        problems.append(f"{sql.split()[0].lower()} failed: {e}")
        return []


def _tables(conn, problems: list[str]) -> dict[str, set[str]]:
    names = _read(conn, "SELECT name FROM sqlite_master WHERE type = 'table'", problems)
    return {
        name: {row[1] for row in _read(conn, f"PRAGMA table_info({name})", problems)}
        for (name,) in names
    }


def _copy_rows(src, dest, table: str, columns: str, report: Salvaged) -> None:
    """Rows of a rowid table, with their rowids (they follow arrival: ``relay deliveries``
    and recovery rely on that)."""
    unreadable = report.unreadable.setdefault(table, [])
    marks = ", ".join("?" * (columns.count(",") + 2))
    insert = f"INSERT INTO {table} (rowid, {columns}) VALUES ({marks})"
    copied, bad = 0, Bad()
    chunk: list[tuple] = []
    for row in readable_rows(src, table, columns, unreadable, bad):
        chunk.append(row)
        if len(chunk) >= STEP:
            copied += _insert(dest, insert, chunk, unreadable)
            chunk = []
    copied += _insert(dest, insert, chunk, unreadable)
    unreadable[:0] = bad.ranges()
    report.copied[table] = copied


def _insert(dest, sql: str, rows: list[tuple], unreadable: list[str]) -> int:
    """Insert ``rows`` in one transaction; when that fails (a value that damage made NULL,
    say), each row on its own. Returns how many went in."""
    if not rows:
        return 0
    try:
        _transaction(dest, lambda: dest.executemany(sql, rows))
        return len(rows)
    except sqlite3.Error:
        pass
    copied = 0
    for row in rows:
        try:
            dest.execute(sql, row)
            copied += 1
        except sqlite3.Error as e:
            unreadable.append(f"{row[0]}: its values do not fit the table ({e})")
    return copied


def _transaction(conn, work) -> None:
    conn.execute("BEGIN IMMEDIATE")  # the journal's connection is in autocommit mode
    try:
        work()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _copy_attempts(src, dest, report: Salvaged) -> None:
    """Attempts by the ids of the deliveries copied (the table has no rowids to range over);
    a chunk that fails is read one delivery at a time."""
    columns = _present(src, "attempts", ATTEMPTS)
    marks = ", ".join("?" * len(columns.split(", ")))
    insert = f"INSERT OR REPLACE INTO attempts ({columns}) VALUES ({marks})"
    select = f"SELECT {columns} FROM attempts"
    ids = [
        i for (i,) in dest.execute("SELECT id FROM deliveries WHERE attempts > 0 ORDER BY rowid")
    ]
    copied, lost, error = 0, [], None
    unreadable = report.unreadable.setdefault("attempts", [])
    for start in range(0, len(ids), STEP):
        chunk = ids[start : start + STEP]
        try:
            rows = src.execute(
                f"{select} WHERE delivery_id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
        except sqlite3.DatabaseError:
            rows = []
            for delivery_id in chunk:
                try:
                    rows += src.execute(f"{select} WHERE delivery_id = ?", (delivery_id,))
                except sqlite3.DatabaseError as e:
                    lost.append(delivery_id)
                    error = e
        copied += _insert(dest, insert, rows, unreadable)
    if lost:
        unreadable.append(
            f"the attempts of {len(lost):,} deliveries ({lost[0]} ... {lost[-1]}; {error})"
        )
    report.copied["attempts"] = copied


def _copy_bindings(src, dest, report: Salvaged) -> None:
    """Bindings in key order; past a damaged page, the keys that their expiry index (a b-tree
    of its own, which holds them) can still list, each row looked up alone."""
    unreadable = report.unreadable.setdefault("bindings", [])
    insert = "INSERT OR REPLACE INTO bindings VALUES (?, ?, ?)"
    select = "SELECT message_id, webhook_id, expires_at FROM bindings"
    rows: list[tuple] = []
    try:
        for row in src.execute(f"{select} ORDER BY message_id"):
            rows.append(row)
    except sqlite3.DatabaseError as e:
        error = e
    else:
        report.copied["bindings"] = _insert(dest, insert, rows, unreadable)
        return
    copied = _insert(dest, insert, rows, unreadable)
    keys: list[str] = []
    try:
        for (key,) in src.execute(
            "SELECT message_id FROM bindings INDEXED BY bindings_by_expiry"
            " WHERE expires_at > -1e308"
        ):
            keys.append(key)
    except sqlite3.DatabaseError as e:
        unreadable.append(
            f"the keys of bindings through their expiry index, past {len(keys)} ({e})"
        )
    more, listed, lost = [], 0, 0
    for key in keys:
        if dest.execute("SELECT 1 FROM bindings WHERE message_id = ?", (key,)).fetchone():
            continue
        listed += 1
        try:
            more += src.execute(f"{select} WHERE message_id = ?", (key,))
        except sqlite3.DatabaseError:
            lost += 1
    copied += _insert(dest, insert, more, unreadable)
    unreadable.append(
        f"bindings past message id {rows[-1][0] if rows else ''!r} in key order ({error});"
        f" past it, their expiry index listed {listed:,} more, {lost:,} of them unreadable"
    )
    report.copied["bindings"] = copied


def _copy_whole(src, dest, table: str, columns: str, report: Salvaged) -> None:
    """A small table, its rows up to the first that cannot be read."""
    if not columns:  # an older schema: the table is not there
        return
    unreadable = report.unreadable.setdefault(table, [])
    rows: list[tuple] = []
    try:
        rows.extend(src.execute(f"SELECT {columns} FROM {table}"))
    except sqlite3.DatabaseError as e:
        unreadable.append(f"{table} past its first {len(rows):,} rows ({e})")
    marks = ", ".join("?" * len(columns.split(", ")))
    insert = f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})"
    report.copied[table] = _insert(dest, insert, rows, unreadable)


def _present(src, table: str, columns: str) -> str:
    """Those of ``columns`` the source's ``table`` has (an older schema lacks the newer ones;
    the new journal's defaults fill them); "" when it has no such table."""
    try:
        have = {row[1] for row in src.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError:
        return columns  # the schema cannot be read: the rows will say what can be
    return ", ".join(c for c in columns.split(", ") if c in have)
