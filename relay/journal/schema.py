"""The journal's schema, and opening a journal: the checks at start, the migrations, the run.

``connect`` refuses a journal that is not the one its state_dir had or cannot be read back
(relay/journal/integrity.py), brings an older schema up to this one (guarded by ``PRAGMA
user_version``), and starts a run: a row in ``runs`` whose id marks what this run holds in
memory (``deliveries.held_by``), so that the next run tells a dead run's deliveries from its
own by identity, never by comparing wall-clock times.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relay.journal import integrity
from relay.journal.integrity import JournalDamaged

FILENAME = "journal.sqlite3"
# 2: runs, and deliveries.held_by (recovery by run, not by comparing wall-clock times).
# 3: what operators look at and ask for: each attempt's request and response
# (attempts.request, .response), replays, and ordering per key (deliveries.order_key,
# .attempt_base).
SCHEMA_VERSION = 3

# One row per start of a writer: a run's id marks the deliveries it holds in memory, so that
# the next run knows them for a dead one's without comparing wall-clock times (a clock may
# step back across a restart). ``seen_at``: the last probe that this run's writes reach disk.
RUNS = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    seen_at REAL
);
"""
# Replays (relay replay): a delivery given a fresh attempt budget, by whom and when.
REPLAYS = """
CREATE TABLE IF NOT EXISTS replays (
    delivery_id TEXT NOT NULL,
    replayed_at REAL NOT NULL,
    by TEXT NOT NULL,
    attempts_before INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS replays_by_delivery ON replays (delivery_id);
"""
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id),
    webhook_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL,                           -- NULL: held in the relay's memory
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_outcome TEXT,
    held_by INTEGER,                        -- the run (runs.id) that took it into memory
    order_key TEXT,                         -- order_by's value (NULL: not ordered)
    attempt_base INTEGER NOT NULL DEFAULT 0 -- attempts made before its last replay
);
CREATE INDEX IF NOT EXISTS deliveries_asleep
    ON deliveries (webhook_id, next_at) WHERE next_at IS NOT NULL;
-- An event's deliveries, for retention (prune). Ids grow with time, so inserts append.
CREATE INDEX IF NOT EXISTS deliveries_by_event ON deliveries (event_id);
-- Pending deliveries by webhook, oldest first: the admin listener's pending counts (read once,
-- at start) and oldest pending age (MIN per webhook, O(log n), at each scrape). Measured: 0.6 µs
-- more of the writer's CPU an event (13.3 against 12.7 µs, appended and delivered).
CREATE INDEX IF NOT EXISTS deliveries_pending_by_webhook
    ON deliveries (webhook_id, created_at) WHERE state = 'pending';
-- `relay deliveries --state failed`: rare among many, so not found by a scan.
CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries (state) WHERE state = 'failed';
-- `relay deliveries` (pending is its default): pending are few among the finished, and the
-- sleeping ones' index (deliveries_asleep) leaves out those the relay holds in memory. Keys
-- append (rowids grow) and leave when a delivery finishes: measured, a delivery's append and
-- outcome cost the writer 10.1 µs of SQL instead of 9.2 (medians of 5, batches of 100).
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (state) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration REAL NOT NULL,
    status INTEGER,
    error TEXT,
    request BLOB,                           -- the request as sent, secrets masked
    response BLOB,                          -- its answer's head and first bytes of body
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;
-- Delivery reports: the webhook that wants the later events of a message (POST /reports, or
-- an event that names its webhook_id binds its payload.id). Found by message id as the writer
-- appends each event (see append); by expiry for retention. One webhook per message: a new
-- binding replaces the old.
CREATE TABLE IF NOT EXISTS bindings (
    message_id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bindings_by_expiry ON bindings (expires_at);
-- Webhooks switched off while their settings stay (relay webhooks disable, a 410 Gone,
-- disable_after): a disabled webhook's deliveries sleep in the journal, unattempted, until it
-- is enabled. One row per webhook whose state ever changed; relay/journal/states.py.
-- Ordering per key (order_by): a webhook's pending deliveries of one key, oldest first. A
-- delivery whose key has an earlier one pending waits with next_at = +inf (never due) until
-- that one finishes.
CREATE INDEX IF NOT EXISTS deliveries_ordered
    ON deliveries (webhook_id, order_key) WHERE state = 'pending' AND order_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS webhook_state (
    webhook_id TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL,
    reason TEXT,
    changed_at REAL NOT NULL
) WITHOUT ROWID;
"""
    + RUNS
    + REPLAYS
)

# The tables and columns a journal must have (what a damaged schema lacks).
COLUMNS = {
    "events": {"id", "name", "body", "received_at"},
    "deliveries": {
        "id",
        "event_id",
        "webhook_id",
        "state",
        "attempts",
        "next_at",
        "created_at",
        "updated_at",
        "last_outcome",
        "held_by",
        "order_key",
        "attempt_base",
    },
    "attempts": {
        "delivery_id",
        "number",
        "started_at",
        "duration",
        "status",
        "error",
        "request",
        "response",
    },
    "bindings": {"message_id", "webhook_id", "expires_at"},
    "runs": {"id", "started_at", "seen_at"},
    "replays": {"delivery_id", "replayed_at", "by", "attempts_before"},
}


class SchemaError(Exception):
    """The journal file cannot be used by this relay."""


# What opening a journal may raise; each says what is wrong, naming the file.
OPEN_ERRORS = (OSError, sqlite3.Error, SchemaError, JournalDamaged)


class JournalConnection(sqlite3.Connection):
    """A connection that knows the run it writes for (``runs.id``; None: a connection that
    holds nothing in memory, e.g. salvage's), and the statements that mark rows with it: the
    run is a literal in them, so that rows need no extra parameter (append is hot)."""

    run_id: int | None = None
    insert_delivery = ""
    claim = ""

    def hold_for(self, run_id: int | None) -> None:
        self.run_id = run_id
        held_by = "NULL" if run_id is None else str(int(run_id))
        self.insert_delivery = (
            "INSERT INTO deliveries (id, event_id, webhook_id, created_at, updated_at, held_by)"
            f" VALUES (?, ?, ?, ?, ?, {held_by})"
        )
        self.claim = f"UPDATE deliveries SET next_at = NULL, updated_at = ?, held_by = {held_by}"
        self.claim += " WHERE id = ?"


def connect(
    state_dir: Path, url: None = None, *, lease: float = 0.0, start_run: bool = True
) -> JournalConnection:
    """Open (creating if needed) the journal in ``state_dir``, and start a run in it. (``url``
    and ``lease`` are PostgreSQL's: relay/journal/engines.py; one relay holds this journal.)

    Refuses (JournalDamaged, naming the file and what to do) a journal that is not the one
    this state_dir had, or that SQLite cannot read back: see relay/journal/integrity.py.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILENAME
    integrity.check_file(path)
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=30,
            factory=JournalConnection,
        )
    except sqlite3.DatabaseError as e:
        raise (integrity.damaged(path, e) if integrity.is_damage(e) else e) from None
    try:
        _prepare(conn, path)
        conn.hold_for(_start_run(conn) if start_run else None)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: JournalConnection, path: Path) -> None:
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # Durable per commit: WAL with synchronous=NORMAL is not, across power loss.
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = _columns(conn)
    except sqlite3.DatabaseError as e:
        raise (integrity.damaged(path, e) if integrity.is_damage(e) else e) from None
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: written by a newer relay (schema {version}, "
            f"this relay knows {SCHEMA_VERSION})"
        )
    if not tables and version == 0:
        integrity.refuse_if_replaced(path)  # a journal existed here: this empty one is not it
        conn.executescript(
            f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        )
        integrity.write_marker(path)
        return
    integrity.check_pages(conn, path)
    for old, migrate in ((1, _migrate_from_1), (2, _migrate_from_2)):
        if version == old:
            try:
                migrate(conn)
            except sqlite3.OperationalError as e:  # no deliveries table to alter, say
                raise integrity.damaged(path, f"schema {old}: {e}") from None
            version += 1
    tables = _columns(conn)
    if problems := schema_problems(tables):
        raise integrity.damaged(path, "; ".join(problems))
    conn.executescript(SCHEMA)  # indexes added since the journal was made
    integrity.write_marker(path, replace=False)  # a journal from before markers


def _columns(conn) -> dict[str, set[str]]:
    names = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {n: {row[1] for row in conn.execute(f"PRAGMA table_info({n})")} for n in names}


def schema_problems(tables: dict[str, set[str]]) -> list[str]:
    """What the journal's tables lack (``tables``: each table's columns), in words."""
    problems = []
    for table, columns in COLUMNS.items():
        if table not in tables:
            problems.append(f"schema: no table {table}")
        elif missing := columns - tables[table]:
            problems.append(f"schema: table {table} has no column {', '.join(sorted(missing))}")
    return problems


def _migrate_from_1(conn) -> None:
    """Schema 1 to 2: runs, and ``held_by`` (NULL in old rows: no run of this schema holds
    them, so the next recovery takes them). In one transaction; ADD COLUMN rewrites no rows."""
    conn.executescript(
        "BEGIN IMMEDIATE; ALTER TABLE deliveries ADD COLUMN held_by INTEGER;"
        f" {RUNS} PRAGMA user_version=2; COMMIT;"
    )


def _migrate_from_2(conn) -> None:
    """Schema 2 to 3: attempts' request and response, replays, and ordering per key (its
    index is made by SCHEMA afterwards). ADD COLUMN rewrites no rows."""
    conn.executescript(
        "BEGIN IMMEDIATE;"
        " ALTER TABLE deliveries ADD COLUMN order_key TEXT;"
        " ALTER TABLE deliveries ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;"
        " ALTER TABLE attempts ADD COLUMN request BLOB;"
        " ALTER TABLE attempts ADD COLUMN response BLOB;"
        f" {REPLAYS} PRAGMA user_version=3; COMMIT;"
    )


def _start_run(conn) -> int:
    return conn.execute("INSERT INTO runs (started_at) VALUES (?)", (time.time(),)).lastrowid
