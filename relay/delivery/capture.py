"""What the journal keeps of each attempt (``attempts.request`` and ``.response``), for ``relay
deliveries show``: the request as it was sent, its secrets masked, and the answer's head and
first bytes of body.

Every attempt makes one of each, on the delivery's hot path, so they are plain bytes made with
a few string joins: no JSON, no escaping, no copy of what the journal holds already.

``request``: ``<body> <method> <url>\\n``, a line ``<name>: <value>\\n`` per header as sent, an
empty line, then the first ``BODY_KEPT`` bytes of the body. ``<body>`` is ``=`` when the body is
the event's own, byte for byte (a plain webhook's: the event is in the journal, and no copy is
kept), else the body's length in bytes.

``response``: the head as it came (the status line and header lines, CRLF between them), or,
from a transport that keeps none (a plugin's), ``HTTP <status>`` and its headers; then CRLF CRLF
and the first ``BODY_KEPT`` bytes of the body.

Masked as ``***``: in the URL its userinfo, and the values of query parameters named like a
credential or holding a secret; whole header values of Authorization and every header named
like a credential (token, secret, key, password, auth, cookie, session), of the headers whose
template takes a ``%secret%``, of values that look like one (``Bearer ...``, ``Basic ...``, a
JWT), and of any value holding a secret; the secrets in the body. The secrets are what the
webhook's template takes from ``[secrets]`` and its signing ``secret``, as they are and percent-
and JSON-encoded. ``Signature`` and ``Relay-Delivery-Id`` stay: an HMAC says nothing of its key.
In the answer: Set-Cookie and the headers named like a token, secret, key or authorization, and
in its body the secrets and whatever was masked in the request (a receiver that echoes it back).

Measured in one process (the real relay, delivery and ingest inline, a transport answering at
once with an nginx-like head and a 15-byte body): making both records cost ~7-9 µs of CPU an
attempt, against ~56 µs an event for all the rest; sending them to the writer, nothing more
that the noise showed. That is most of what the bench shows the delivery process spending more.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit

from relay.config import Webhook
from relay.delivery.attempt import Run
from relay.model import Delivery, Request, Response

BODY_KEPT = 4096  # bytes of a body kept, the request's and the answer's
MASK = "***"
# Names (of headers, of query parameters) that say they carry a credential.
_NAME_WORDS = r"auth|token|secret|passw|cookie|session|credential|signature|api-?key|apikey"
_NAME_ENDS = r"key|sig|code"
SECRET_NAME = re.compile(rf"{_NAME_WORDS}|(?:^|[-_])(?:{_NAME_ENDS})$", re.IGNORECASE)
# Values that look like a credential whatever their header's name: an authorization scheme and
# its credentials, or a JWT.
_TOKEN = r"(?:bearer|basic|token|digest|negotiate|apikey|hmac|aws4-hmac-sha256)\s|eyJ[\w-]{8,}\."
TOKEN_VALUE = re.compile(_TOKEN, re.IGNORECASE)
# relay's own headers, and what every request has: masked only for holding a secret.
KEPT = frozenset(
    {"signature", "relay-delivery-id", "content-type", "content-length", "user-agent", "host"}
)
# What a header's name alone says: mask its value, keep it, or look at the value; worked out
# once per name (a receiver's names come and go: at most _NAMES_CACHED are kept).
_HIDE, _LOOK, _KEEP = "hide", "look", "keep"
_RULES: dict[str, str] = {}
_NAMES_CACHED = 512
# What an answer's head holds when a header may carry a credential (Set-Cookie, a token): a
# search of its bytes, before looking at any header (a dict lookup a header cost more).
_ANSWER_HINTS = re.compile(rb"ookie|OOKIE|oken|OKEN|ecret|uthori|-key|-Key")


def secret_forms(values) -> list[str]:
    """Every form a secret's value may take in a request: as it is, percent-encoded (URL, form
    body) and JSON-escaped; longest first, so that a secret holding another is masked whole."""
    forms = set()
    for value in filter(None, values):
        forms.update({value, quote(value, safe=""), quote_plus(value)})
        forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    return sorted(forms, key=len, reverse=True)


def webhook_secrets(webhook: Webhook) -> set[str]:
    """What of ``[secrets]`` the webhook's template sends, and its signing ``secret``."""
    values = set(webhook.template.secrets_used()[0]) if webhook.template is not None else set()
    if webhook.secret is not None:  # with none, its id signs: not a secret
        values.update(webhook.secrets)
    return values


def mask_text(text: str, forms: list[str]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def mask_url(url: str, forms: list[str]) -> str:
    """``url`` with its userinfo, its credential-like query values and its secrets masked."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL one can read: nothing of it past the scheme
        return url.partition(":")[0] + ":" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else url.partition("?")[0]
    if parts.query:
        rebuilt += "?" + "&".join(_parameter(p, forms) for p in parts.query.split("&"))
    if parts.fragment:
        rebuilt += "#" + parts.fragment
    return mask_text(rebuilt, forms)


def _parameter(pair: str, forms: list[str]) -> str:
    name, equals, value = pair.partition("=")
    if equals and (SECRET_NAME.search(unquote_plus(name)) or any(f in value for f in forms)):
        return f"{name}={MASK}"
    return pair


def rule(name: str) -> str:
    """What a header's name says of its value, secrets aside: ``_HIDE``, ``_KEEP``, or
    ``_LOOK`` (masked if the value looks like a credential)."""
    found = _RULES.get(name)
    if found is None:
        if len(_RULES) >= _NAMES_CACHED:
            _RULES.clear()
        lowered = name.lower()
        if lowered in KEPT:
            found = _KEEP
        elif SECRET_NAME.search(lowered):
            found = _HIDE
        else:
            found = _LOOK
        _RULES[name] = found
    return found


def hides(name: str, value: str) -> bool:
    """Whether a header's value is masked for its name or its look (secrets aside)."""
    found = rule(name)
    return found is _HIDE or (found is _LOOK and TOKEN_VALUE.match(value) is not None)


class Capture:
    """Makes both records of an attempt. What a webhook's secrets are is worked out once per
    webhook (a reload's new webhook gets it anew)."""

    def __init__(self):
        self._maskers: dict[str, Masker] = {}

    def __call__(
        self,
        webhook: Webhook,
        delivery: Delivery,
        request: Request | None,
        response: Response | None,
    ) -> tuple[bytes | None, bytes | None]:
        if request is None:  # none could be built: nothing was sent, nothing answered
            return None, None
        masker = self.masker(webhook)
        sent, hidden = masker.request(request, delivery.event.body)
        return sent, (None if response is None else masker.response(response, hidden))

    def of(self, run: Run) -> tuple[bytes | None, bytes | None]:
        """Both records of ``run``'s attempt: from the messages the hooks made, or from what
        relay's own attempt (relay/delivery/flat.py) sent, its header lines or a composed
        webhook's request, and the answer as the wire gave it."""
        if run.lines is None and run.answer is None:  # the hooks' messages, or nothing sent
            return self(run.webhook, run.delivery, run.request, run.response)
        masker = self.masker(run.webhook)
        body = run.delivery.event.body
        hidden: list[str] = []
        if run.lines is None:  # a composed webhook's request
            sent, hidden = masker.request(run.request, body)
        elif masker.from_secrets or masker.holds_secret(run.lines):  # rare: header by header
            request = Request("POST", run.url, tuple(_pairs(run.lines)), body)
            sent, hidden = masker.request(request, body)
        else:
            sent = masker.lines("POST", run.url, run.lines, body, body)
        if run.answer is None:  # the deadline cut it short
            return sent, None
        return sent, masker.answer(run.answer.head, run.answer.body, hidden)

    def masker(self, webhook: Webhook) -> Masker:
        masker = self._maskers.get(webhook.id)
        if masker is None or masker.webhook is not webhook:
            masker = self._maskers[webhook.id] = Masker(webhook)
        return masker


class Masker:
    """Both records of one webhook's attempts: ``request`` and ``response`` from the messages,
    or, for relay's own attempt (relay/delivery/flat.py), which has no message objects, from
    its header lines (``lines``) and the answer's head and body (``answer``)."""

    def __init__(self, webhook: Webhook):
        self.webhook = webhook
        self.from_secrets = frozenset()
        if webhook.template is not None:
            self.from_secrets = webhook.template.secrets_used()[1]
        self.forms = secret_forms(webhook_secrets(webhook))
        self.form_bytes = [f.encode() for f in self.forms]
        self.longest = max(map(len, self.form_bytes), default=0)
        self._url = ("", "")  # the last URL and its masked form: a plain webhook has one

    def request(self, request: Request, event_body: bytes) -> tuple[bytes, list[str]]:
        """The record, and the values it masked."""
        headers = request.headers
        lines = "\n".join(map(": ".join, headers))
        # Whether any header may need masking; none, the usual case, is a dict lookup a header
        # (relay's own are _KEEP) and a search of the lines for each secret's forms.
        suspect = bool(self.from_secrets)  # headers from [secrets]: judged one by one
        if not suspect:
            rules = _RULES
            for name, value in headers:
                if rules.get(name) is not _KEEP and hides(name, value):
                    suspect = True
                    break
            else:
                suspect = self.holds_secret(lines)
        hidden: list[str] = []
        if suspect:
            shown = []
            for name, value in headers:
                if (
                    name.lower() in self.from_secrets
                    or hides(name, value)
                    or any(f in value for f in self.forms)
                ):
                    hidden.append(value)
                    value = MASK
                shown.append(f"{name}: {value}")
            lines = "\n".join(shown)
        return self.lines(request.method, request.url, lines, request.body, event_body), hidden

    def holds_secret(self, text: str) -> bool:
        for form in self.forms:
            if form in text:
                return True
        return False

    def lines(self, method: str, url: str, lines: str, body: bytes, event_body: bytes) -> bytes:
        """The record of a request whose header lines (``name: value``, joined by newlines)
        need no masking, or have been masked."""
        if url == self._url[0]:
            url = self._url[1]
        else:
            masked = mask_url(url, self.forms)
            self._url, url = (url, masked), masked
        if body is event_body or body == event_body:
            head = f"= {method} {url}\n{lines}\n\n" if lines else f"= {method} {url}\n\n"
            return head.encode("utf-8", "backslashreplace")
        kept = _scrub(body[: BODY_KEPT + self.longest], self.form_bytes)[:BODY_KEPT]
        mark = len(body)
        head = f"{mark} {method} {url}\n{lines}\n\n" if lines else f"{mark} {method} {url}\n\n"
        return head.encode("utf-8", "backslashreplace") + kept

    def response(self, response: Response, hidden: list[str]) -> bytes:
        head = response.head
        if not head:
            lines = [f"HTTP {response.status}"]
            for name, value in response.headers:
                lines.append(f"{name}: {MASK if rule(name) is _HIDE else value}")
            head = "\r\n".join(lines).encode("latin-1", "replace")
            return self._answer(head, response.body, hidden)
        return self.answer(head, response.body, hidden)

    def answer(self, head: bytes, body: bytes, hidden: list[str]) -> bytes:
        """The record of an answer whose head came as ``head`` (the status line and header
        lines, CRLF between them)."""
        if _ANSWER_HINTS.search(head) is not None:
            head = _mask_head(head)
        return self._answer(head, body, hidden)

    def _answer(self, head: bytes, body: bytes, hidden: list[str]) -> bytes:
        if not body:
            return head + b"\r\n\r\n"
        if hidden:
            scrubbed = [*self.form_bytes, *_echoed(hidden)]
            body = _scrub(body[: BODY_KEPT + max(map(len, scrubbed))], scrubbed)
        elif self.form_bytes:
            body = _scrub(body[: BODY_KEPT + self.longest], self.form_bytes)
        return head + b"\r\n\r\n" + body[:BODY_KEPT]


def _pairs(lines: str):
    """The header pairs of relay's own attempt's lines (``name: value`` per line)."""
    for line in lines.split("\n"):
        name, _, value = line.partition(": ")
        yield name, value


def _mask_head(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    for i in range(1, len(lines)):
        name = lines[i].partition(b":")[0]
        if rule(name.decode("latin-1").strip()) is _HIDE:
            lines[i] = name + b": " + MASK.encode()
    return b"\r\n".join(lines)


def _echoed(hidden: list[str]) -> list[bytes]:
    """What of the masked values an echo of the request would show: each whole, and its
    credentials without their scheme (``Bearer abc...``: ``abc...``), longest first."""
    forms = set()
    for value in hidden:
        forms.add(value)
        words = value.split()
        if words and len(words[-1]) >= 8:
            forms.add(words[-1])
    return sorted((f.encode("utf-8", "backslashreplace") for f in forms), key=len, reverse=True)


def _scrub(data: bytes, forms: list[bytes]) -> bytes:
    for form in forms:
        if form and form in data:
            data = data.replace(form, MASK.encode())
    return data
