"""How the console writes times, durations, rates and bodies: Jinja2 filters, and the parsing
of the time fields of its forms (``10m``, ``2h``, or an ISO 8601 time).

Times go out as UTC (``<time datetime=...>``, which the page's script shows in the browser's
own zone); a time typed without a zone is taken as UTC, as the page shows them before the
script runs.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

_DURATION = re.compile(r"(?:\d+(?:\.\d+)?\s*[smhd]\s*)+")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadTime(ValueError):
    pass


def parse_when(text: str, now: float) -> float:
    """A duration meaning that long before ``now`` (``10m``, ``1h30m``), or an ISO 8601 time
    (UTC unless it says its zone), or Unix seconds: as Unix seconds."""
    text = text.strip().lower()
    if _DURATION.fullmatch(text):
        return now - sum(float(n) * UNITS[unit] for n, unit in _PART.findall(text))
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.upper().replace(" ", "T"))
    except ValueError:
        raise BadTime(
            "expected a duration before now (10m, 2h, 7d) or a time (2025-12-02T00:25, UTC"
            " unless it has a zone)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock(at: float | None) -> str:
    """``2025-12-02 00:25:51 UTC``."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float | None) -> str:
    """``7m 12s``: an age or a wait, to the second (under a minute: to the tenth)."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def duration(seconds: float | None) -> str:
    """An attempt's duration: ``12 ms``, ``1.25 s``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.0095 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def percent(share: float | None) -> str:
    if share is None:
        return "-"
    if share == 1:
        return "100%"
    return f"{share * 100:.1f}%"


def count(n: int) -> str:
    return f"{n:,}"


def pretty_json(text: str | None) -> str | None:
    """A body as indented JSON when it is JSON, else as it is."""
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


FILTERS = {
    "iso": iso,
    "clock": clock,
    "span": span,
    "duration": duration,
    "percent": percent,
    "count": count,
    "pretty_json": pretty_json,
}
