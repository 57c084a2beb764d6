"""Which IP addresses outbound requests may connect to (`ip_range_blacklist` / `ip_range_whitelist`).

Another server's name, its `.well-known` delegation and its DNS records are all chosen by that
server's owner; without a filter they could point us at our own private network. The check is made
on the addresses actually connected to, after DNS, so no name can slip past it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never reachable targets whatever the lists say: connecting to "any address" lands on this host
# (Synapse adds both to every blacklist).
ALWAYS_REFUSED: frozenset[IPAddress] = frozenset(
    {ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv6Address("::")})


def _networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def parse_ip(ip: str) -> IPAddress | None:
    """The address ``ip`` denotes, or None; brackets and an IPv6 zone are dropped, and an IPv4-mapped
    IPv6 address (``::ffff:127.0.0.1``) is the IPv4 address it reaches."""
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]  # zone of a link-local address: the range check ignores it
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class IpRangeFilter:
    """``allowed(ip)``: the whitelist wins over the blacklist; 0.0.0.0, :: and non-addresses are refused."""

    def __init__(self, blacklist: Iterable[str], whitelist: Iterable[str] = ()) -> None:
        self._blacklist = _networks(blacklist)
        self._whitelist = _networks(whitelist)

    def allowed(self, ip: str) -> bool:
        addr = parse_ip(ip)
        if addr is None or addr in ALWAYS_REFUSED:
            return False
        if any(addr in net for net in self._whitelist):
            return True
        return not any(addr in net for net in self._blacklist)
