"""relay's soak: proof, run every day, that an acknowledged event is never lost (issue 14).

    scripts/soak [--kills 200] [--seed N] [--json PATH] [--max-minutes 30] [--no-disk]

Streams marked events through the real daemon (``relay run``, a subprocess) while its
receiver flaps (answers 500, hangs past the attempt's timeout, refuses connections, at random
intervals), and kill -9s it at random moments ``--kills`` times, in turn the whole process
group at once and each of its three processes alone (the relay, the journal writer
``relay _journal-writer``, the delivery process ``relay _delivery``), restarting it each
time. Before half the kills the writer stalls (SIGSTOP for up to 0.3 s, a slow fsync), so
that a kill finds events the relay took but has not yet committed. Meanwhile it posts hostile
input (malformed JSON, huge bodies, wrong content types, NaN, deep nesting, bytes that are not
HTTP ...), none of which may be accepted or crash it.

At the end the receiver stops flapping, and the soak waits until every acknowledged event has
arrived, then reports: events acknowledged, delivered, lost (acknowledged, never delivered:
must be 0), duplicates (a Relay-Delivery-Id answered 200 more than once: allowed, as delivery
is at least once, and counted), hostile inputs tried and accepted (must be 0), and exits that
were not the soak's doing (must be none).

Then, as root, the journal moves to a 20 MB tmpfs that a file fills: the relay must answer
503 while it cannot write, lose nothing it acknowledged, and take events again once the file
is deleted. Not root, or no mount: skipped, and the summary says why.

Exit status 1 when anything was lost or any check failed. The package: run.py (the options,
the order of a run, the summary), relay.py (the daemon's processes), receiver.py (the
flapping receiver, on h11), traffic.py (marked events, hostile input), disk.py (the full disk).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
