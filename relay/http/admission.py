"""Who a TCP listener lets in, judged on a request's head before its body is read.

relay/http/server.py asks a listener's ``Admission`` about each request it reads there (the
Unix socket has none: its file mode is its protection). Two checks, both about the wire only;
the words that name relay's settings come from the caller.

**Host, against DNS rebinding.** A page in a browser on the relay's machine can have the
browser post to 127.0.0.1 under the page's own name: ``evil.example`` resolves to the attacker,
then to 127.0.0.1, and the browser, seeing one origin, sends the page's requests to the relay
and lets it read the answers. What such a request cannot hide is its ``Host: evil.example``.
So a Host must name the listener: the address it is bound to, a loopback name (``localhost``,
``127.0.0.1``, ``[::1]``) or a name the operator allowed; else 421 Misdirected Request. Only
the name is judged, not the port: ssh -L, kubectl port-forward and docker -p change the port
and keep the name, and a rebinding page gains nothing from a port. A listener on every address
(``0.0.0.0``, ``::``) takes any IP literal (nobody can rebind a literal) and the machine's host
name. A request without Host (HTTP/1.0) comes from no browser and is let in. The Host values
seen to pass are remembered (up to KNOWN_MAX), so the check is one set lookup per request.

**A bearer token** (RFC 6750), when the listener has one: ``Authorization: Bearer <token>``,
compared in constant time (how long a refusal takes says nothing of how much of a guess was
right), else 401 with ``WWW-Authenticate: Bearer``. A refusal says what is missing, never what
was expected, and the token is never logged nor echoed back.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable

import trio

from relay.http.http11 import shown
from relay.http.limits import Throttled
from relay.http.server import Reply

log = logging.getLogger(__name__)

KNOWN_MAX = 256  # Host values remembered as allowed: beyond, each costs a parse (~2 µs)
LOG_INTERVAL = 10.0  # at most one line per this about refused requests, with their count
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_WILDCARDS = {"0.0.0.0", "::", ""}


def bearer_matches(sent: str | bytes | None, token: str) -> bool:
    """Whether an Authorization value is ``Bearer <token>`` (the scheme in any case)."""
    if sent is None:
        return False
    if isinstance(sent, str):  # relay's server decodes header values as latin-1: the bytes sent
        sent = sent.encode("latin-1")
    scheme, _, credentials = sent.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(
        credentials.strip(), token.encode("utf-8")
    )


class Bearer:
    """How one listener words its token: ``key`` names the setting, ``listener`` the listener,
    in the 401's error; ``realm`` goes in its challenge."""

    def __init__(self, key: str, listener: str, realm: str):
        self.key = key
        self.listener = listener
        self.challenge = (("WWW-Authenticate", f'Bearer realm="{realm}"'),)
        self._refused = Throttled(LOG_INTERVAL, log)

    def refusal(self, sent: bool) -> Reply:
        """The 401: what is missing, never what was expected (nor what was sent)."""
        if sent:
            error = f"the bearer token sent is not the relay's ({self.key})"
        else:
            error = f"this relay's {self.listener} needs Authorization: Bearer <{self.key}>"
        self._refused.note(trio.current_time(), f"refused a request: {error}")
        return Reply.json({"error": error}, headers=self.challenge)


class Hosts:
    """The names a listener answers to (``names``: lowercase, IPv6 in brackets), its bound
    ``addresses`` (so that another spelling of one passes too), and with ``any_ip`` every IP
    literal; ``hint`` ends a refusal, saying how to allow another name."""

    def __init__(
        self,
        names: Iterable[str],
        addresses: Iterable[str],
        *,
        any_ip: bool,
        ports: Iterable[int] = (),
        hint: str = "",
    ):
        self.names = frozenset(name.lower() for name in names)
        self.addresses = frozenset(ipaddress.ip_address(a) for a in addresses)
        self.any_ip = any_ip
        self.hint = hint
        # What a Host says most often, as clients write it: no port, or the one listened on;
        # and, as they pass, the rest.
        self.known = {name.encode() for name in self.names}
        self.known.update(f"{name}:{port}".encode() for name in self.names for port in ports)
        self._refused = Throttled(LOG_INTERVAL, log)

    @classmethod
    def of(cls, listeners, configured: str, allowed: Iterable[str] = (), hint: str = "") -> Hosts:
        """For TCP ``listeners`` opened on ``configured`` (``HOST:PORT`` as the file has it),
        and the ``allowed`` names besides."""
        host = configured.rpartition(":")[0]
        sockets = [listener.socket.getsockname() for listener in listeners]
        bound = {name[0] for name in sockets}
        any_ip = host.strip("[]") in _WILDCARDS or bool(bound & _WILDCARDS)
        names = {*LOOPBACK_NAMES, *allowed, *(_bracketed(address) for address in bound)}
        if host.strip("[]") not in _WILDCARDS:
            names.add(host if host.startswith("[") else _bracketed(host))
        if any_ip:
            names.add(socket.gethostname())
        addresses = {a for a in bound if a not in _WILDCARDS} | {"127.0.0.1", "::1"}
        ports = {name[1] for name in sockets}
        return cls(names, addresses, any_ip=any_ip, ports=ports, hint=hint)

    def allows(self, host: bytes) -> bool:
        """Whether ``host`` (a Host header's value, its syntax checked) names this listener."""
        if host in self.known:
            return True
        text = host.decode("latin-1").lower()
        name = text[: text.index("]") + 1] if text.startswith("[") else text.partition(":")[0]
        if not (name in self.names or self._is_address(name)):
            return False
        if len(self.known) < KNOWN_MAX:
            self.known.add(host)
        return True

    def _is_address(self, name: str) -> bool:
        literal = name[1:-1] if name.startswith("[") else name
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            return False
        if (address.version == 6) != (literal != name):  # IPv6 in brackets, IPv4 without
            return False
        return self.any_ip or address in self.addresses

    def refusal(self, host: bytes) -> Reply:
        names = ", ".join(sorted(self.names)) + (", or any IP address" if self.any_ip else "")
        error = (
            f"misdirected request: Host {shown(host)} is not a name of this listener ({names});"
            " other names are refused, against DNS rebinding"
        )
        self._refused.note(trio.current_time(), f"refused a request: {error}")
        return Reply.json({"error": error + (f": {self.hint}" if self.hint else "")})


class Admission:
    """What a TCP listener asks of each request's head: a Host of ``hosts``, and, with
    ``bearer`` and while ``token()`` gives one (read per request: a reload may change it), the
    token, except on the paths in ``open`` (a liveness probe's)."""

    __slots__ = ("hosts", "token", "bearer", "open")

    def __init__(
        self,
        hosts: Hosts,
        *,
        token: Callable[[], str | None] | None = None,
        bearer: Bearer | None = None,
        open: Iterable[str] = (),
    ):
        self.hosts = hosts
        self.token = token if bearer is not None else None
        self.bearer = bearer
        self.open = frozenset(path.encode() for path in open)

    def __call__(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes]
    ) -> tuple[int, Reply] | None:
        """None to serve the request, else the answer to refuse it with."""
        host = headers.get(b"host")
        if host is not None and host not in self.hosts.known and not self.hosts.allows(host):
            return 421, self.hosts.refusal(host)
        if self.token is not None and (token := self.token()) is not None:
            if target not in self.open:
                sent = headers.get(b"authorization")
                if not bearer_matches(sent, token):
                    return 401, self.bearer.refusal(sent is not None)
        return None


def _bracketed(host: str) -> str:
    """An IPv6 address as a Host writes it (``[::1]``); any other name as it is."""
    return f"[{host}]" if ":" in host else host
