"""Which addresses relay may connect to: so that a webhook URL cannot reach into the network relay
runs in (server-side request forgery).

The check is on the address a request will connect to, after DNS resolution, and the client
connects to that checked address (no second lookup a DNS rebinding could change). So every
spelling of a host that the resolver understands (``localhost``, ``2130706433``, ``0177.0.0.1``,
``0x7f.1``, ``[::ffff:127.0.0.1]``) is judged by what it resolves to, not by how it is written.

Always refused, whatever ``allow_networks`` says: link-local addresses (169.254.0.0/16, fe80::/10)
and the cloud metadata endpoints (169.254.169.254, fd00:ec2::254), which hand out credentials.
Refused unless an ``allow_networks`` entry contains them: every other address that is not
globally routable (loopback, private, CGNAT 100.64.0.0/10, unique-local fc00::/7, multicast,
reserved, unspecified). An IPv6 address that embeds an IPv4 one (IPv4-mapped ::ffff:0:0/96,
IPv4-compatible ::/96, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32) is judged by the
IPv4 address it carries (and, for the translators' prefixes, by itself too): ``::ffff:127.0.0.1``
is loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import trio

from relay.http.messages import PermanentFailure

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NEVER = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")


class RefusedAddress(PermanentFailure):
    """The address is not one relay may connect to; the message says why. Permanent: no
    retry can change where a URL leads (short of a DNS change, which a replay picks up)."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, by any of the standard embeddings."""
    if address.version == 4:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):  # not :: nor ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class NetworkPolicy:
    """``check(address)`` raises RefusedAddress for an address relay must not connect to."""

    def __init__(self, allow: Iterable[str | IPNetwork] = ()):
        self.allow = tuple(ipaddress.ip_network(n) for n in allow)

    def check(self, address: str | IPAddress) -> None:
        address = ipaddress.ip_address(address)
        if address.version == 6 and address.scope_id:
            address = ipaddress.ip_address(str(address).split("%", 1)[0])
        carried = embedded_ipv4(address)
        if carried is not None and (address.ipv4_mapped or address in _COMPATIBLE):
            candidates = (carried,)  # another spelling of the IPv4 address itself
        else:  # a translator's address (NAT64, 6to4, Teredo): both must pass
            candidates = tuple(filter(None, (address, carried)))
        for candidate in candidates:
            self._check_one(candidate, shown=address)

    def _check_one(self, address: IPAddress, shown: IPAddress) -> None:
        shown = shown if shown == address else f"{shown} ({address})"
        if any(address.version == n.version and address in n for n in NEVER):
            raise RefusedAddress(f"{shown} is a link-local or metadata address: never allowed")
        if address.is_global and not address.is_multicast:
            return
        if any(address.version == n.version and address in n for n in self.allow):
            return
        raise RefusedAddress(
            f"{shown} is a {_kind(address)} address, not allowed by [relay] allow_networks"
        )


def _kind(address: IPAddress) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.version == 4 and address in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (CGNAT)"
    if address.is_private:
        return "private"
    return "non-global"


async def resolve_allowed(policy: NetworkPolicy, host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to that ``policy`` allows, in the resolver's order;
    raise RefusedAddress naming the host when it allows none (no connection is made)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e.strerror}") from None
    allowed, refused = [], []
    for *_, sockaddr in infos:
        address = sockaddr[0]
        try:
            policy.check(address)
        except RefusedAddress as e:
            refused.append(str(e))
        else:
            if address not in allowed:
                allowed.append(address)
    if not allowed:
        raise RefusedAddress(f"refused to connect to {host}: {'; '.join(dict.fromkeys(refused))}")
    return allowed
