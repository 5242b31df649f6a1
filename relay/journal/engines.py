"""One interface, one module per engine: what the journal asks of a database.

The committer (relay/journal/committer.py) and its writers know a journal only through an
engine, a module that has:

- ``connect(state_dir, url, *, lease, start_run=True)``: a connection, its schema created or
  migrated, and (``start_run``) a run started in it: ``conn.run_id`` marks what this run holds.
- ``OPERATIONS``: every operation as ``op(conn, *args)``, the same names, arguments and results
  in each engine (relay/journal/sqlite.py documents them), and ``run_batch(conn, batch)``,
  which runs a batch of them in one transaction (group commit), ``(ok, result or error)`` each.
- ``OPEN_ERRORS``: what ``connect`` may raise, each naming what is wrong.
- ``LEASES``: whether other relays share the journal, so that what a relay holds in memory is
  leased (``renew_leases``, relay/journal/leases.py) and changes are announced to the others.

``relay/journal/sqlite.py`` (the default: a file in ``state_dir``, one relay) and
``relay/journal/postgresql.py`` (``[journal] url = "postgresql://..."``: any number of relays,
each with a state_dir of its own) are the two. The commands' read-only views dispatch the same
way (views.py, states.py: a ``url`` argument, None for SQLite).

The URL reaches the journal as a plain string; ``masked`` is how any message shows it.
"""

from __future__ import annotations

from types import ModuleType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")


def engine(url: str | None) -> ModuleType:
    """The engine module for a journal at ``url`` (None: SQLite in the state_dir). PostgreSQL's
    is imported only when used: a relay on SQLite never loads psycopg."""
    if url is None:
        from relay.journal import sqlite

        return sqlite
    from relay.journal import postgresql

    return postgresql


def masked(url: str) -> str:
    """``url`` with its password as ``***``: the only form in which any message shows it. libpq
    takes one after the ``user:`` and as a ``password`` parameter of the query string."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        if _passwords(parts.query):
            query = [
                (name, "***" if name == "password" else value)
                for name, value in parse_qsl(parts.query, keep_blank_values=True)
            ]
            parts = parts._replace(query=urlencode(query, safe="*/:@"))
        return urlunsplit(parts)
    except ValueError:
        return "(an unreadable URL)"


def _passwords(query: str) -> list[str]:
    return [v for n, v in parse_qsl(query, keep_blank_values=True) if n == "password" and v]


def scrub(text: str, url: str | None) -> str:
    """``text`` (an error's, say) with ``url``'s password, wherever it appears, as ``***``."""
    if not url:
        return text
    try:
        parts = urlsplit(url)
        passwords = [parts.password] if parts.password else []
        passwords += _passwords(parts.query)
    except ValueError:
        return text
    text = text.replace(url, masked(url))
    for password in passwords:
        text = text.replace(password, "***")
    return text
