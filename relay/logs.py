"""Log lines for people (``text``) or for a log pipeline (``json``), the same in every process.

``[relay] log = "json"`` (or ``relay run --log json``) writes one JSON object per line:
``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, then what the call site knew and
passed with ``extra=`` (``webhook``, ``delivery_id``, ``event_id``, ``attempt``, ...), and
``exception`` with the traceback when there is one. A collector can then select one delivery's
lines by a field rather than by a regular expression over the message, which stays the same
sentence the text format prints.

Nothing here knows relay's configuration: relay/config/loading.py's ``configure_logging``
decides the level and the format, and both of relay's processes call it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

FORMATS = ("text", "json")
# ``relay run --log`` puts its choice here for the delivery process, which reads relay.toml
# itself: both processes must write the same format to the same stderr.
OVERRIDE = "RELAY_LOG"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Every attribute a LogRecord has without ``extra=``: the rest of its __dict__ is what the call
# site passed, and goes into the JSON object as it is.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
}
_FIRST = ("time", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a message's own newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _FIRST:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a plugin's extra= value that JSON cannot hold still makes a line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    """Send every logger's records at ``level`` and above to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
