"""Server name resolution (spec, Server-Server API, "Resolving server names").

A server name says where to connect only indirectly: an IP literal or an explicit port is used as
given; otherwise ``https://<hostname>/.well-known/matrix/server`` may delegate to another name, and
SRV records (``_matrix-fed._tcp``, then the deprecated ``_matrix._tcp``) may name a host and port,
with port 8448 as the fallback. The result also says which name the TLS certificate must carry and
what ``Host`` header to send, which differ from the host connected to once delegation is involved.

The network is reached through two injected callables, so the rules can be tested without DNS or
HTTP: a one-hop well-known fetcher (this module follows redirects itself, to bound them and refuse
loops and downgrades to plain HTTP) and an SRV lookup. Addresses (A/AAAA) are resolved when
connecting, where the IP range filter applies.

Well-known answers are cached as Synapse does: the response's Cache-Control/Expires, clamped to
[5 min, 48 h], or 24 h with +-10 % jitter when it says nothing; failures for 1 h with jitter, or
only 2 min when the name had a valid answer in the last cache period + 2 h (so a blip does not
drop its delegation for an hour); and a valid entry is refreshed in the last 20 % of its life, the
old answer being kept if the refresh fails transiently.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from hs.events.canonical_json import json_loads

logger = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448
WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_MAX_SIZE = 50 * 1024  # bytes of body read before giving up
WELL_KNOWN_MAX_REDIRECTS = 10
WELL_KNOWN_DEFAULT_CACHE_PERIOD = 24 * 3600.0  # seconds, when the response has no cache headers
WELL_KNOWN_DEFAULT_CACHE_PERIOD_JITTER = 0.1  # +- fraction applied to default and failure periods
WELL_KNOWN_MIN_CACHE_PERIOD = 5 * 60.0
WELL_KNOWN_MAX_CACHE_PERIOD = 48 * 3600.0
WELL_KNOWN_INVALID_CACHE_PERIOD = 1 * 3600.0  # a failed or invalid lookup
WELL_KNOWN_DOWN_CACHE_PERIOD = 2 * 60.0  # a failure for a name that recently had a valid answer
WELL_KNOWN_REMEMBER_DOMAIN_HAD_VALID = 2 * 3600.0  # how long past its expiry a valid answer counts
WELL_KNOWN_GRACE_PERIOD_FACTOR = 0.2  # refresh a valid entry in the last fifth of its life

SRV_SERVICES = ("_matrix-fed._tcp", "_matrix._tcp")  # in order; the second is deprecated

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9.\-]{1,255}$")


class DiscoveryError(Exception):
    """The server name is malformed, or DNS says the service is not available there."""


@dataclass(frozen=True)
class ResolvedServer:
    """Where to send a request for a server name, and how to present it."""

    host_to_connect: str  # a hostname (resolved with A/AAAA when connecting) or an IP, without brackets
    port: int
    tls_server_name: str  # the name the certificate must carry; SNI unless it is an IP address
    host_header: str


@dataclass(frozen=True)
class ServerName:
    """A parsed ``host[:port]``; IPv6 literals are kept without brackets in ``host``."""

    host: str
    port: int | None
    is_ip: bool

    @property
    def host_for_header(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return self.host_for_header if self.port is None else f"{self.host_for_header}:{self.port}"


def parse_server_name(name: str) -> ServerName:
    """Split and check a server name (appendices, "Server Name"); raises DiscoveryError."""
    if not name or name != name.strip():
        raise DiscoveryError(f"invalid server name {name!r}")
    port_text: str | None = None
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            raise DiscoveryError(f"invalid server name {name!r}: unclosed '['")
        host, rest = name[1:end], name[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise DiscoveryError(f"invalid server name {name!r}")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise DiscoveryError(f"invalid server name {name!r}: not an IPv6 literal") from None
        is_ip = True
    else:
        host, sep, port_part = name.partition(":")
        if sep:
            port_text = port_part
        if not _HOSTNAME_RE.match(host):
            raise DiscoveryError(f"invalid server name {name!r}")
        is_ip = _is_ipv4(host)
    port: int | None = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise DiscoveryError(f"invalid server name {name!r}: bad port")
        port = int(port_text)
    return ServerName(host, port, is_ip)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


# -- SRV ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "." (service decidedly not available) is kept as "."


SrvLookup = Callable[[str], Awaitable[Sequence[SrvRecord]]]


def order_srv_records(records: Sequence[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority; within a priority, a weighted random order (weight 0
    records only come first by chance when every weight is 0)."""
    rng = rng or random.Random()
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        while group:
            total = sum(r.weight for r in group)
            if total == 0:
                pick = group[rng.randrange(len(group))]
            else:
                point = rng.uniform(0, total)
                running = 0
                pick = group[-1]
                for r in group:
                    running += r.weight
                    if r.weight and running >= point:
                        pick = r
                        break
            out.append(pick)
            group.remove(pick)
    return out


def make_dns_srv_lookup(nameservers: Sequence[str] | None = None, port: int = 53) -> SrvLookup:
    """An SRV lookup with dnspython's async resolver and a TTL-respecting cache. NXDOMAIN and "no
    answer" are "no records"; other DNS failures (including no usable resolver configuration)
    raise DiscoveryError. The resolver is made on first use, from the system configuration unless
    ``nameservers`` (and ``port``) are given."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    resolver: dns.asyncresolver.Resolver | None = None

    async def lookup(name: str) -> list[SrvRecord]:
        nonlocal resolver
        try:
            if resolver is None:
                resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
                if nameservers is not None:
                    resolver.nameservers = list(nameservers)
                    resolver.port = port
                resolver.cache = dns.resolver.Cache()
            answer = await resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, OSError) as e:
            raise DiscoveryError(f"SRV lookup for {name} failed: {type(e).__name__}: {e}") from e
        return [SrvRecord(int(r.priority), int(r.weight), int(r.port), r.target.to_text(omit_final_dot=True) or ".")
                for r in answer]

    return lookup


# -- well-known ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WellKnownResponse:
    """One HTTP response (redirects not followed). Header names are matched case-insensitively."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class WellKnownFetchError(Exception):
    """The fetch failed before a response: ``temporary`` for connection trouble and timeouts, not for
    an oversized body or a refused address."""

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


# GET one https URL without following redirects, reading at most WELL_KNOWN_MAX_SIZE bytes of body.
WellKnownFetcher = Callable[[str], Awaitable[WellKnownResponse]]


class _LookupFailed(Exception):
    def __init__(self, reason: str, temporary: bool) -> None:
        super().__init__(reason)
        self.temporary = temporary


@dataclass
class _CacheEntry:
    result: ServerName | None  # None: no (valid) delegation
    fetched_at: float
    expires_at: float


def cache_period_from_headers(response: WellKnownResponse, now: float) -> float | None:
    """Seconds the response says it may be cached for, or None when it does not say (Synapse's
    reading: ``no-store`` is 0, then ``max-age``, then ``Expires``; an unparsable Expires is 0)."""
    cache_control = response.header("Cache-Control")
    if cache_control:
        directives: dict[str, str | None] = {}
        for part in cache_control.split(","):
            key, sep, value = part.strip().partition("=")
            directives[key.strip().lower()] = value.strip().strip('"') if sep else None
        if "no-store" in directives:
            return 0.0
        max_age = directives.get("max-age")
        if max_age:
            try:
                return float(int(max_age))
            except ValueError:
                pass
    expires = response.header("Expires")
    if expires is not None:
        try:
            when = email.utils.parsedate_to_datetime(expires)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when.tzinfo is None:
            return 0.0
        return when.timestamp() - now
    return None


def parse_well_known_body(body: bytes) -> ServerName:
    """The delegated name from a well-known body; raises ValueError if the body is not valid."""
    try:
        data = json_loads(body)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    server = data.get("m.server")
    if not isinstance(server, str):
        raise ValueError("no m.server string")
    try:
        return parse_server_name(server)
    except DiscoveryError as e:
        raise ValueError(str(e)) from e


class WellKnownResolver:
    """Fetches and caches ``/.well-known/matrix/server`` delegations."""

    def __init__(
        self,
        fetch: WellKnownFetcher,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: dict[str, _CacheEntry] = {}
        self._had_valid_until: dict[str, float] = {}

    async def get_delegation(self, hostname: str) -> ServerName | None:
        """The delegated server name for ``hostname``, or None when it has no (valid) delegation."""
        now = self._clock()
        entry = self._cache.get(hostname)
        if entry is not None and now < entry.expires_at:
            ttl = entry.expires_at - entry.fetched_at
            if entry.result is None or now < entry.expires_at - WELL_KNOWN_GRACE_PERIOD_FACTOR * ttl:
                return entry.result
        try:
            result, period = await self._lookup(hostname)
        except _LookupFailed as e:
            now = self._clock()
            if entry is not None and entry.result is not None and now < entry.expires_at and e.temporary:
                logger.info("well-known refresh for %s failed (%s); keeping %s", hostname, e, entry.result)
                return entry.result
            logger.info("no well-known delegation for %s: %s", hostname, e)
            result = None
            if self._had_valid_until.get(hostname, 0.0) > now:
                period = WELL_KNOWN_DOWN_CACHE_PERIOD
            else:
                period = WELL_KNOWN_INVALID_CACHE_PERIOD
            period *= self._jitter()
        now = self._clock()
        self._cache[hostname] = _CacheEntry(result, now, now + period)
        if result is not None:
            self._had_valid_until[hostname] = now + period + WELL_KNOWN_REMEMBER_DOMAIN_HAD_VALID
        self._expire(now)
        return result

    def _jitter(self) -> float:
        return self._rng.uniform(1 - WELL_KNOWN_DEFAULT_CACHE_PERIOD_JITTER, 1 + WELL_KNOWN_DEFAULT_CACHE_PERIOD_JITTER)

    def _expire(self, now: float) -> None:
        """Drop long-dead entries so the caches stay as big as the set of servers still talked to."""
        for name in [n for n, until in self._had_valid_until.items() if until <= now]:
            del self._had_valid_until[name]
        if len(self._cache) > 1024:
            for name in [n for n, e in self._cache.items() if e.expires_at <= now]:
                del self._cache[name]

    async def _lookup(self, hostname: str) -> tuple[ServerName, float]:
        url = f"https://{hostname}{WELL_KNOWN_PATH}"
        seen = {url}
        for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
            try:
                response = await self._fetch(url)
            except WellKnownFetchError as e:
                raise _LookupFailed(f"{url}: {e}", e.temporary) from e
            if response.status in _REDIRECT_STATUSES:
                location = response.header("Location")
                if not location:
                    raise _LookupFailed(f"{url}: redirect without Location", False)
                url = urljoin(url, location)
                if urlsplit(url).scheme != "https":
                    raise _LookupFailed(f"redirect to non-https {url}", False)
                if url in seen:
                    raise _LookupFailed(f"redirect loop at {url}", False)
                seen.add(url)
                continue
            if response.status != 200:
                raise _LookupFailed(f"{url}: HTTP {response.status}", response.status >= 500)
            try:
                result = parse_well_known_body(response.body)
            except ValueError as e:
                raise _LookupFailed(f"{url}: invalid body: {e}", False) from e
            period = cache_period_from_headers(response, self._clock())
            if period is None:
                period = WELL_KNOWN_DEFAULT_CACHE_PERIOD * self._jitter()
            else:
                period = min(max(period, WELL_KNOWN_MIN_CACHE_PERIOD), WELL_KNOWN_MAX_CACHE_PERIOD)
            return result, period
        raise _LookupFailed(f"more than {WELL_KNOWN_MAX_REDIRECTS} redirects", False)


# -- the whole procedure ------------------------------------------------------------------------------
class ServerResolver:
    """``resolve(server_name)``: the spec's steps in order."""

    def __init__(
        self,
        fetch_well_known: WellKnownFetcher,
        srv_lookup: SrvLookup | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self.well_known = WellKnownResolver(fetch_well_known, clock=clock, rng=self._rng)
        self._srv_lookup = srv_lookup

    async def resolve(self, server_name: str) -> ResolvedServer:
        name = parse_server_name(server_name)
        # 1. IP literal; 2. hostname with an explicit port: as given, Host = the server name.
        if name.is_ip or name.port is not None:
            return ResolvedServer(name.host, name.port or DEFAULT_FEDERATION_PORT, name.host, server_name)
        # 3. .well-known delegation, then the same steps (without well-known) for the delegated name.
        delegated = await self.well_known.get_delegation(name.host)
        if delegated is not None:
            if delegated.is_ip or delegated.port is not None:
                return ResolvedServer(delegated.host, delegated.port or DEFAULT_FEDERATION_PORT,
                                      delegated.host, str(delegated))
            return await self._srv_or_default(delegated.host)
        # 4-6. SRV records for the name itself, else port 8448.
        return await self._srv_or_default(name.host)

    async def _srv_or_default(self, hostname: str) -> ResolvedServer:
        """SRV (``_matrix-fed`` then ``_matrix``), else port 8448; the certificate and Host header are
        ``hostname``'s whatever host the SRV record names."""
        for service in SRV_SERVICES:
            records = await self._lookup_srv(f"{service}.{hostname}")
            if len(records) == 1 and records[0].target in (".", ""):
                raise DiscoveryError(f"{service}.{hostname}: SRV says the service is not available")
            records = [r for r in records if r.target not in (".", "")]
            if records:
                first = order_srv_records(records, self._rng)[0]
                return ResolvedServer(first.target.rstrip("."), first.port, hostname, hostname)
        return ResolvedServer(hostname, DEFAULT_FEDERATION_PORT, hostname, hostname)

    async def _lookup_srv(self, name: str) -> Sequence[SrvRecord]:
        if self._srv_lookup is None:
            self._srv_lookup = make_dns_srv_lookup()
        return await self._srv_lookup(name)
