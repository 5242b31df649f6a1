"""What relay.toml holds: frozen attrs classes, their defaults, and the checks on each value.

The classes know nothing of TOML or of how errors are worded for a person; relay/config/loading.py
reads the file into them. A validator's complaint is a ``FieldError`` naming its field, so that
loading can place it (``relay.toml: webhooks[0].url: ...``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from attrs import field, frozen

from relay.compose import RequestTemplate

PLACEHOLDER_OPEN = "@{{"


class ConfigError(Exception):
    """The configuration is unusable; ``errors`` holds one actionable line per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


class FieldError(ValueError):
    """A validator's complaint about one field; attrs reports it against the whole class."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def validator(check):
    """Wrap ``check(value) -> message or None`` into an attrs validator whose message lands on
    ``table.field`` (``relay.toml: webhooks[0].url: ...``). Plugins use it for their option
    tables too."""

    @functools.wraps(check)
    def validate(instance, attribute, value):
        if value is not None and (message := check(value)):
            raise FieldError(attribute.name, message)

    return validate


@validator
def _positive(value):
    if not value > 0:
        return f"must be greater than 0, got {value!r}"


@validator
def _not_negative(value):
    if not value >= 0:  # nan too
        return f"must be 0 or more, got {value!r}"


@validator
def _at_least_one(value):
    if value < 1:
        return f"must be at least 1, got {value!r}"


WEBHOOK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@validator
def _webhook_id(value):
    if not WEBHOOK_ID.match(value):
        return "must be 1-128 letters, digits or '_.:-', starting with a letter or digit"


# relay's HTTP client sends no userinfo, and a URL is shown by relay check, webhooks list and
# in logs: a password there would be dropped on the wire and printed everywhere else.
URL_CREDENTIALS = (
    "credentials in the URL (user:password@) are not sent; use headers = "
    '{ Authorization = "Basic %creds%" } with creds (base64 of user:password) in [secrets]'
)


@validator
def _url(value):
    """Static scheme, host and port: no event can redirect a request to another host. No
    message quotes the URL's authority, which may hold a password."""
    try:
        parts = urlsplit(value)
    except ValueError as e:  # its text may quote the authority
        reason = "an unclosed [ in the host" if "IPv6" in str(e) else "a host it cannot use"
        return f"not a valid URL ({reason})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if PLACEHOLDER_OPEN in parts.netloc or PLACEHOLDER_OPEN in parts.scheme:
        return "placeholders may not appear in the scheme, host or port"
    if "@" in parts.netloc:
        return URL_CREDENTIALS
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL (the port must be a number from 0 to 65535)"
    if not parts.hostname:
        return "has no host"


@validator
def _listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        return "must be HOST:PORT, e.g. 127.0.0.1:8765"


@validator
def _networks(value):
    for network in value:
        try:
            ipaddress.ip_network(network)
        except ValueError as e:
            return f"{network!r} is not an IP network like 127.0.0.0/8 ({e})"


def _one_of(*choices: str):
    @validator
    def check(value):
        if value not in choices:
            return f"must be one of {', '.join(choices)}, got {value!r}"

    return check


@validator
def _jitter(value):
    if not 0 <= value <= 1:
        return f"must be a fraction between 0 and 1, got {value!r}"


@frozen
class Backoff:
    """Delay after failed attempt n: ``min(first * factor ** (n - 1), max)``, seconds."""

    first: float = field(default=10.0, validator=_positive)
    factor: float = field(default=10.0, validator=_positive)
    max: float = field(default=100000.0, validator=_positive)
    jitter: float = field(default=0.0, validator=_jitter)

    def delay(self, failed_attempt: int) -> float:
        return min(self.first * self.factor ** (failed_attempt - 1), self.max)


class Duration(float):
    """Seconds, written as a number or as ``"90s"``, ``"30m"``, ``"12h"``, ``"5d"`` in relay.toml
    (relay/config/loading.py reads them)."""

    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    @classmethod
    def parse(cls, value) -> Duration:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(value)
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
            if match:
                return cls(float(match[1]) * cls.UNITS[match[2]])
            raise ValueError(
                f'expected seconds or a duration like "90s", "30m", "12h", "5d", got {value!r}'
            )
        got = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise TypeError(f'expected seconds or a duration like "5d", got {got}')


class Rate(float):
    """Attempts a second, written ``"100/s"``, ``"600/m"`` or ``"1000/h"`` in relay.toml: a token
    bucket per webhook (relay/delivery/rate.py)."""

    UNITS = {"s": 1, "m": 60, "h": 3600}

    @classmethod
    def parse(cls, value) -> Rate:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*", value)
            if match and float(match[1]) > 0:
                return cls(float(match[1]) / cls.UNITS[match[2]])
            raise ValueError(
                'expected attempts per second, minute or hour like "100/s" or "600/m",'
                f" got {value!r}"
            )
        got = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise TypeError(f'expected a rate like "100/s", got {got}')

    @property
    def burst(self) -> float:
        """Attempts that may start at once after a quiet spell: a second's worth, at least one
        (``"6000/m"`` starts at most 100 at once, not 6000)."""
        return max(1.0, float(self))


# order_by: a dotted path into the event's envelope, e.g. "payload.id".
ORDER_BY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


@validator
def _order_by(value):
    if not ORDER_BY.match(value):
        return f'must be a dotted path into the event, like "payload.id", got {value!r}'


@frozen(kw_only=True)
class DeliverySettings:
    """Delivery settings: ``[defaults]`` sets them for every webhook, a webhook for itself."""

    timeout: float = field(default=3.0, validator=_positive)
    tries: int = field(default=3, validator=_at_least_one)
    backoff: Backoff = Backoff()
    concurrency: int = field(default=16, validator=_at_least_one)
    signer: str = "signature"
    transport: str = "http"
    retry: str = "exponential"
    # Seconds a webhook may fail without a success before it is disabled; None: never.
    disable_after: Duration | None = field(default=None, validator=_positive)
    # Attempts a second at most (a token bucket); None: as fast as ``concurrency`` allows.
    rate: Rate | None = None


@frozen(kw_only=True)
class Webhook(DeliverySettings):
    """One destination. Unset delivery keys come from ``[defaults]``."""

    id: str = field(validator=_webhook_id)
    url: str = field(validator=_url)
    events: tuple[str, ...] = ("*",)
    name: str | None = None
    # false: deliveries are journaled and kept, never attempted (see relay webhooks disable).
    enabled: bool = True
    # Deliveries whose events share this value go one after another, in the order relay
    # accepted them (relay/delivery/ordering.py); None: no order.
    order_by: str | None = field(default=None, validator=_order_by)
    # A list holds several secrets during a rotation; signers that can, sign with each.
    secret: str | tuple[str, ...] | None = field(default=None, repr=False)
    # Plugin option tables (``[webhooks.NAME]``), keyed by NAME: raw tables when read, then the
    # objects of the classes plugins register for them (see plugins.Components.bind).
    options: dict[str, Any] = field(factory=dict, repr=False)
    # Compose webhooks (see relay/compose/): setting any of these shapes the request.
    method: str | None = field(
        default=None, validator=_one_of("GET", "POST", "PUT", "PATCH", "DELETE")
    )
    headers: dict[str, str] | None = field(default=None, repr=False)  # may hold a token
    body: dict[str, Any] | None = None
    body_format: str | None = field(default=None, validator=_one_of("json", "form", "multipart"))
    on_missing: str = field(default="empty", validator=_one_of("empty", "fail"))
    # Compiled from the keys above and [secrets] when the file loads; never read from the file.
    template: RequestTemplate | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every signing secret, newest first; the seed signs with the webhook's id when none."""
        if self.secret is None:
            return (self.id,)
        return (self.secret,) if isinstance(self.secret, str) else self.secret

    @property
    def signing_key(self) -> bytes:
        return self.secrets[0].encode()


@frozen
class RelaySettings:
    listen: str | None = field(default=None, validator=_listen)
    socket: Path | None = None
    state_dir: Path = Path("var")
    plugins: tuple[str, ...] = ()
    plugins_dir: Path | None = None
    max_body: int = field(default=1024 * 1024, validator=_at_least_one)
    grace: float = field(default=10.0, validator=_positive)
    queue: int = field(default=1024, validator=_at_least_one)
    # Seconds a finished delivery (and its event) stays in the journal; 0 keeps all forever.
    retention: float = field(default=86400.0, validator=_not_negative)
    # Seconds a message stays bound to the webhook that wants its delivery reports (POST
    # /reports, or an event naming its webhook_id); 7 days by default.
    reports_ttl: float = field(default=7 * 86400.0, validator=_positive)
    # Networks webhooks may reach besides the public internet (relay/http/netpolicy.py): every
    # other non-global address (loopback, private, CGNAT, unique-local) is refused.
    allow_networks: tuple[str, ...] = field(default=(), validator=_networks)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log: Literal["text", "json"] = "text"  # json: one object per line (relay/logs.py)
    watch: bool = False  # reload when the file changes
    # "process": SQLite in a writer process (default); "inline": on the relay's trio thread.
    journal: Literal["process", "inline"] = "process"
    # "process": lanes, scheduler and attempts in a delivery process of their own (default);
    # "inline": in the relay's own trio thread (tests on trio's MockClock need that).
    delivery: Literal["process", "inline"] = "process"
    # The admin listener (relay/admin/: /metrics, /api/), for operators, never the gateway. Its
    # token: required unless it is a loopback address; a literal or { env = "..." } in the file,
    # resolved when it loads (relay/config/loading.py).
    admin: str | None = field(default=None, validator=_listen)
    admin_token: str | None = field(default=None, repr=False)


@frozen
class JournalSettings:
    """``[journal]`` (relay/config/journal.py): absent, SQLite in state_dir."""

    # postgresql://...: a database that relays share. May hold a password: never printed.
    url: str | None = field(default=None, repr=False)
    # Seconds a relay holds what it claimed without renewing (it renews every third of it);
    # a relay that dies has its deliveries attempted by the others once it expires.
    lease: float = field(default=30.0, validator=_positive)


@frozen
class Config:
    path: Path
    relay: RelaySettings
    defaults: DeliverySettings
    webhooks: tuple[Webhook, ...]
    journal: JournalSettings = JournalSettings()

    def webhook(self, webhook_id: str) -> Webhook | None:
        return self._by_id.get(webhook_id)

    @functools.cached_property
    def _by_id(self) -> dict[str, Webhook]:
        return {w.id: w for w in self.webhooks}
