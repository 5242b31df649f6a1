"""The durable journal: events, their deliveries and every attempt's outcome, on disk.

``committer`` is the interface the rest of relay uses (``Journal``: group commit, one writer),
``writers`` the two it commits through, ``writer`` the process that owns the database,
``frames`` what crosses its pipe, ``sqlite`` the engine's SQL, ``schema`` the tables and opening
a journal, ``retention`` what finished leaves the journal, ``bindings`` the side of delivery
reports (which webhook wants a message's later events), ``replays`` the side of replays (a fresh
attempt budget, and their queue apart from what is due), ``views`` read-only listings for the
commands (and the admin listener's pending counts), and ``history`` a delivery's attempts and
replays, read-only. The journal knows no HTTP and no plugins.

``engines`` is the interface each engine has: ``sqlite`` (a file in state_dir, one relay) and
``postgresql`` (with ``pg_batch``, ``pg_schema``, ``pg_views``: one database that relays share;
``leases`` and ``pg_notify`` keep their leases and hear each other).

``integrity`` says whether a journal is the one its state_dir had and readable (checked at
start), ``health`` what its writes have come to (failed ones are kept and written again), and
``repair`` checks and salvages a journal for ``relay journal``.

Exports ``Journal``, ``JournalError``, ``JournalUnusable`` (a journal refused at start),
``FILENAME``, ``DeliveryRow``, ``list_deliveries``, ``count_pending``, and ``check`` and
``salvage``.
"""

from relay.journal.committer import FILENAME, Journal, JournalError
from relay.journal.repair import check, salvage
from relay.journal.views import DeliveryRow, count_pending, list_deliveries
from relay.journal.writers import JournalUnusable

__all__ = [
    "FILENAME",
    "DeliveryRow",
    "Journal",
    "JournalError",
    "JournalUnusable",
    "check",
    "count_pending",
    "list_deliveries",
    "salvage",
]
