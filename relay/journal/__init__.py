"""The durable journal: events, their deliveries and every attempt's outcome, on disk.

``committer`` is the interface the rest of relay uses (``Journal``: group commit, one writer),
``writer`` the process that owns the database, ``frames`` what crosses its pipe, ``sqlite`` the
engine's SQL, ``retention`` what finished leaves the journal, ``bindings`` the side of delivery
reports (which webhook wants a message's later events), and ``views`` read-only listings for
the commands (and the admin listener's pending counts). The journal knows no HTTP and no
plugins.

Exports ``Journal``, ``JournalError``, ``FILENAME``, ``DeliveryRow``, ``list_deliveries`` and
``count_pending``.
"""

from relay.journal.committer import FILENAME, Journal, JournalError
from relay.journal.views import DeliveryRow, count_pending, list_deliveries

__all__ = ["FILENAME", "DeliveryRow", "Journal", "JournalError", "count_pending", "list_deliveries"]
