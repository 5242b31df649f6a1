"""``[journal]``: where the journal is. Absent, SQLite in ``[relay] state_dir``, for one relay;
``url = "postgresql://..."`` (or ``url = { env = "RELAY_JOURNAL_URL" }``, resolved as [secrets]
are), one PostgreSQL database that any number of relays share, each with a state_dir of its own.

The URL may hold a password: no message quotes it, and whatever shows the URL shows it masked
(relay/journal/engines.py ``masked``).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from relay.compose import resolve_secrets

SCHEMES = ("postgresql", "postgres")
EXAMPLE = "postgresql://user:password@host:5432/dbname"


def journal_table(table: dict) -> tuple[dict, list[str]]:
    """``[journal]`` with ``url`` resolved and checked; the problems name the key and the
    variable, never the value."""
    if "url" not in table:
        return table, []
    values, problems = resolve_secrets({"url": table["url"]}, os.environ)
    lines = [f"journal.url: {message}" for _, message in problems]
    url = values.get("url") or None
    if not problems:
        if url is None:
            lines.append("journal.url: must not be empty")
        elif problem := url_problem(url):
            lines.append(f"journal.url: {problem}")
    return {**table, "url": url}, lines


def url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"not a URL relay can read (expected {EXAMPLE})"
    if parts.scheme not in SCHEMES:
        return f"must be a PostgreSQL URL like {EXAMPLE}"
    return None
