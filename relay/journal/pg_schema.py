"""The journal's schema on PostgreSQL, its versions, and opening a journal there.

The tables are SQLite's (relay/journal/schema.py), with what sharing asks for: ``seq`` columns
for arrival order (SQLite's rowids), and on deliveries ``lease_until``: the deadline, by the
server's clock, until which the run in ``held_by`` holds it in memory. Times relays write are
their own wall clocks, as on SQLite; leases alone are the server's, so that relays whose clocks
differ agree on when one expired.

Versioned in ``journal_schema`` (one row): ``migrate`` brings a database up to
``SCHEMA_VERSION`` in one transaction under an advisory lock, so that relays starting together
migrate once; ``relay journal migrate`` runs it on its own, and a relay that starts runs it when
needed. A database of a newer version is refused. ``journal_id`` (random, made with the schema)
tells one journal from another: a state_dir's note (``RUN_FILE``) counts only for the journal it
was written for.

Each state_dir is an owner (a random id kept in its note), recorded on every run it starts
(``runs.owner``, schema 2): a relay that starts there knows all of its state_dir's earlier runs
are dead (the state_dir's lock says so), not only the last one, and takes back at once what any
of them held (postgresql.recover). Other relays' runs are left to their leases.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import psycopg

from relay.journal.engines import scrub

SCHEMA_VERSION = 2
# In state_dir: "<journal_id> <run id> <owner>": the last run started there, and the state_dir's
# owner id (its runs' runs.owner). Schema 1 wrote the first two only.
RUN_FILE = "journal.run"
# Held by ``migrate``'s transaction: relays that start together migrate one after another.
MIGRATION_LOCK = 0x72656C6179  # "relay"

SCHEMA_1 = """
CREATE TABLE journal_schema (version integer NOT NULL, journal_id text NOT NULL);
CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id text PRIMARY KEY,
    name text NOT NULL,
    body bytea NOT NULL,
    received_at double precision NOT NULL
);
-- No foreign key to events: it would lock the event's row for each delivery inserted, and
-- retention (prune) deletes an event only once no delivery of it is left.
CREATE TABLE deliveries (
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id text PRIMARY KEY,
    event_id text NOT NULL,
    webhook_id text NOT NULL,
    state text NOT NULL DEFAULT 'pending',      -- pending | delivered | failed
    attempts integer NOT NULL DEFAULT 0,
    next_at double precision,                   -- NULL: held in the memory of run held_by
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    last_outcome text,
    held_by bigint,                             -- the run (runs.id) that holds it, or last did
    lease_until double precision,               -- held until then (server clock), unless renewed
    order_key text,
    attempt_base integer NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_asleep ON deliveries (webhook_id, next_at) WHERE next_at IS NOT NULL;
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_pending_by_webhook ON deliveries (webhook_id, created_at)
    WHERE state = 'pending';
CREATE INDEX deliveries_failed ON deliveries (seq) WHERE state = 'failed';
CREATE INDEX deliveries_pending ON deliveries (seq) WHERE state = 'pending';
CREATE INDEX deliveries_ordered ON deliveries (webhook_id, order_key, seq)
    WHERE state = 'pending' AND order_key IS NOT NULL;
-- What each run holds in memory: renewed by run, taken over by run once expired.
CREATE INDEX deliveries_held ON deliveries (held_by, lease_until)
    WHERE state = 'pending' AND next_at IS NULL;
CREATE TABLE attempts (
    delivery_id text NOT NULL,
    number integer NOT NULL,
    started_at double precision NOT NULL,
    duration double precision NOT NULL,
    status integer,
    error text,
    request bytea,
    response bytea,
    PRIMARY KEY (delivery_id, number)
);
CREATE TABLE bindings (
    message_id text PRIMARY KEY,
    webhook_id text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX bindings_by_expiry ON bindings (expires_at);
CREATE TABLE webhook_state (
    webhook_id text PRIMARY KEY,
    enabled boolean NOT NULL,
    reason text,
    changed_at double precision NOT NULL
);
-- One row per relay start: seen_at (server clock) is its heartbeat, renewed with its leases;
-- ended_at is set once nothing it held is left to take over.
CREATE TABLE runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at double precision NOT NULL,
    seen_at double precision NOT NULL,
    ended_at double precision
);
CREATE INDEX runs_live ON runs (seen_at) WHERE ended_at IS NULL;
CREATE TABLE replays (
    delivery_id text NOT NULL,
    replayed_at double precision NOT NULL,
    by text NOT NULL,
    attempts_before integer NOT NULL
);
CREATE INDEX replays_by_delivery ON replays (delivery_id);
"""
# 2: runs.owner, the state_dir that started the run, so that a relay restarted there takes back
# what every earlier run of it held (two crashes in a row left the first one's to its leases).
# Runs of schema 1 have none: a relay's first start on schema 2 recovers its last run by id.
SCHEMA_2 = """
ALTER TABLE runs ADD COLUMN owner text;
CREATE INDEX runs_by_owner ON runs (owner);
"""
MIGRATIONS = {1: SCHEMA_1, 2: SCHEMA_2}  # version: the SQL that makes it from the one before

# The tables and columns a journal must have (as relay/journal/schema.py's COLUMNS).
COLUMNS = {
    "events": {"seq", "id", "name", "body", "received_at"},
    "deliveries": {
        "seq",
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
        "lease_until",
        "order_key",
        "attempt_base",
    },
    "attempts": {"delivery_id", "number", "started_at", "duration", "status", "error"},
    "bindings": {"message_id", "webhook_id", "expires_at"},
    "webhook_state": {"webhook_id", "enabled", "reason", "changed_at"},
    "runs": {"id", "started_at", "seen_at", "ended_at", "owner"},
    "replays": {"delivery_id", "replayed_at", "by", "attempts_before"},
}


class SchemaError(Exception):
    """The database cannot be used as this relay's journal (newer, or not a journal)."""


OPEN_ERRORS = (OSError, psycopg.Error, SchemaError)


def raw_connect(url: str, **options) -> psycopg.Connection:
    """A connection to ``url``; its errors never show the URL's password."""
    try:
        return psycopg.connect(url, connect_timeout=10, **options)
    except psycopg.Error as e:
        raise psycopg.OperationalError(scrub(str(e), url)) from None


def version(conn: psycopg.Connection) -> tuple[int, str | None]:
    """``(schema version, journal_id)``; ``(0, None)`` for a database with no journal yet."""
    if conn.execute("SELECT to_regclass('journal_schema')").fetchone()[0] is None:
        return 0, None
    row = conn.execute("SELECT version, journal_id FROM journal_schema").fetchone()
    return (row[0], row[1]) if row else (0, None)


def migrate(conn: psycopg.Connection, where: str) -> tuple[int, int]:
    """Bring the journal in ``conn``'s database to ``SCHEMA_VERSION``; ``(before, after)``.
    ``where`` names it in errors (the masked URL)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        before, journal_id = version(conn)
        if before > SCHEMA_VERSION:
            raise SchemaError(
                f"{where}: written by a newer relay (schema {before}, this relay knows"
                f" {SCHEMA_VERSION})"
            )
        for number in range(before + 1, SCHEMA_VERSION + 1):
            try:
                conn.execute(MIGRATIONS[number])
            except psycopg.errors.DuplicateTable as e:
                raise SchemaError(
                    f"{where}: not a relay journal, and cannot become one: {e}".rstrip()
                    + " (use a database of its own)"
                ) from None
        if before == 0:
            conn.execute(
                "INSERT INTO journal_schema VALUES (%s, %s)", (SCHEMA_VERSION, uuid.uuid4().hex)
            )
        elif before < SCHEMA_VERSION:
            conn.execute("UPDATE journal_schema SET version = %s", (SCHEMA_VERSION,))
    if problems := schema_problems(conn):
        raise SchemaError(f"{where}: {'; '.join(problems)}")
    return before, SCHEMA_VERSION


def schema_problems(conn: psycopg.Connection) -> list[str]:
    # pg_catalog, not information_schema.columns: the view cost a fresh connection ~6 ms of
    # its ~8 ms start (planning its joins), which every relay start and test pays.
    rows = conn.execute(
        "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
        " AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s) AND a.attnum > 0"
        " AND NOT a.attisdropped",
        (list(COLUMNS),),
    ).fetchall()
    tables: dict[str, set[str]] = {}
    for table, column in rows:
        tables.setdefault(table, set()).add(column)
    problems = []
    for table, columns in COLUMNS.items():
        if table not in tables:
            problems.append(f"schema: no table {table}")
        elif missing := columns - tables[table]:
            problems.append(f"schema: table {table} has no column {', '.join(sorted(missing))}")
    return problems


class Run(NamedTuple):
    id: int
    owner: str  # the state_dir's (runs.owner)
    previous: int | None  # the last run the state_dir's note names (of schema 1, maybe no owner)


def noted_runs(state_dir: Path, journal_id: str | None) -> tuple[str | None, int | None]:
    """``(owner, last run)`` as the state_dir's note has them for the journal ``journal_id``
    (None each: no note, or one for another journal)."""
    try:
        noted = (state_dir / RUN_FILE).read_text().split()
        if len(noted) in (2, 3) and noted[0] == journal_id:
            return (noted[2] if len(noted) == 3 else None), int(noted[1])
    except (OSError, ValueError):
        pass
    return None, None


def start_run(conn: psycopg.Connection, state_dir: Path) -> Run:
    """Start a run of ``state_dir``: a row in ``runs`` with the state_dir's owner id, and the
    note that keeps that id (made on the first start, or for another journal)."""
    _, journal_id = version(conn)
    owner, previous = noted_runs(state_dir, journal_id)
    path = state_dir / RUN_FILE
    owner = owner or uuid.uuid4().hex
    with conn.transaction():
        now = "extract(epoch from now())"
        (run_id,) = conn.execute(
            f"INSERT INTO runs (started_at, seen_at, owner) VALUES (%s, {now}, %s) RETURNING id",
            (time.time(), owner),
        ).fetchone()
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    with open(temporary, "w") as f:
        f.write(f"{journal_id} {run_id} {owner}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return Run(run_id, owner, previous)
