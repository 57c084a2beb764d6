"""Server name resolution (the spec's steps), .well-known caching as Synapse does it, SRV ordering,
and the outbound IP range filter. The network is replaced by scripted fetchers and SRV tables."""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Sequence
from typing import cast

import dns.message
import dns.rcode
import dns.rrset
import pytest

from hs.config import DEFAULT_IP_RANGE_BLACKLIST
from hs.federation.discovery import (
    WELL_KNOWN_DEFAULT_CACHE_PERIOD,
    WELL_KNOWN_DOWN_CACHE_PERIOD,
    WELL_KNOWN_GRACE_PERIOD_FACTOR,
    WELL_KNOWN_INVALID_CACHE_PERIOD,
    WELL_KNOWN_MAX_CACHE_PERIOD,
    WELL_KNOWN_MAX_REDIRECTS,
    WELL_KNOWN_MIN_CACHE_PERIOD,
    DiscoveryError,
    ResolvedServer,
    ServerResolver,
    SrvRecord,
    WellKnownFetchError,
    WellKnownResponse,
    make_dns_srv_lookup,
    order_srv_records,
    parse_server_name,
)
from hs.federation.ip_filter import IpRangeFilter


class FixedJitter(random.Random):
    """``uniform`` returns its upper bound (or lower, with ``high=False``); shuffles stay seeded."""

    def __init__(self, high: bool = True) -> None:
        super().__init__(1)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


Reply = WellKnownResponse | WellKnownFetchError


class FakeWeb:
    """Scripted one-hop HTTPS: url -> response (or an error to raise); counts calls."""

    def __init__(self, replies: dict[str, Reply] | None = None) -> None:
        self.replies: dict[str, Reply] = dict(replies or {})
        self.calls: list[str] = []

    async def __call__(self, url: str) -> WellKnownResponse:
        self.calls.append(url)
        reply = self.replies.get(url, WellKnownResponse(404, {}, b"{}"))
        if isinstance(reply, WellKnownFetchError):
            raise reply
        return reply


class FakeDns:
    def __init__(self, table: dict[str, list[SrvRecord]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[str] = []

    async def __call__(self, name: str) -> Sequence[SrvRecord]:
        self.calls.append(name)
        return self.table.get(name, [])


def wk(host: str) -> str:
    return f"https://{host}/.well-known/matrix/server"


def ok(server: str, headers: dict[str, str] | None = None) -> WellKnownResponse:
    return WellKnownResponse(200, headers or {}, f'{{"m.server": "{server}"}}'.encode())


def resolver(web: FakeWeb | None = None, dns: FakeDns | None = None, clock: Clock | None = None,
             rng: random.Random | None = None) -> ServerResolver:
    return ServerResolver(web or FakeWeb(), dns or FakeDns(), clock=clock or Clock(), rng=rng or FixedJitter())


# -- the resolution table -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        ("1.2.3.4", ResolvedServer("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")),
        ("1.2.3.4:8000", ResolvedServer("1.2.3.4", 8000, "1.2.3.4", "1.2.3.4:8000")),
        ("[2001:db8::1]", ResolvedServer("2001:db8::1", 8448, "2001:db8::1", "[2001:db8::1]")),
        ("[2001:db8::1]:443", ResolvedServer("2001:db8::1", 443, "2001:db8::1", "[2001:db8::1]:443")),
        ("[::ffff:1.2.3.4]:1", ResolvedServer("::ffff:1.2.3.4", 1, "::ffff:1.2.3.4", "[::ffff:1.2.3.4]:1")),
        ("example.com:1234", ResolvedServer("example.com", 1234, "example.com", "example.com:1234")),
        ("localhost:8448", ResolvedServer("localhost", 8448, "localhost", "localhost:8448")),
    ],
)
async def test_literal_and_explicit_port_skip_well_known_and_srv(name: str, expected: ResolvedServer) -> None:
    web, dns = FakeWeb(), FakeDns()
    assert await resolver(web, dns).resolve(name) == expected
    assert web.calls == [] and dns.calls == []


@pytest.mark.parametrize(
    "delegated, srv, expected",
    [
        # 3.1 IP literal, with and without port: Host is the delegated name
        ("5.6.7.8", {}, ResolvedServer("5.6.7.8", 8448, "5.6.7.8", "5.6.7.8")),
        ("5.6.7.8:9000", {}, ResolvedServer("5.6.7.8", 9000, "5.6.7.8", "5.6.7.8:9000")),
        ("[2001:db8::2]", {}, ResolvedServer("2001:db8::2", 8448, "2001:db8::2", "[2001:db8::2]")),
        ("[2001:db8::2]:9000", {}, ResolvedServer("2001:db8::2", 9000, "2001:db8::2", "[2001:db8::2]:9000")),
        # 3.2 hostname with port: no SRV
        ("matrix.example.com:9000", {"_matrix-fed._tcp.matrix.example.com": [SrvRecord(0, 0, 1, "x.example")]},
         ResolvedServer("matrix.example.com", 9000, "matrix.example.com", "matrix.example.com:9000")),
        # 3.3 SRV _matrix-fed for the delegated name; certificate and Host stay the delegated name
        ("matrix.example.com", {"_matrix-fed._tcp.matrix.example.com": [SrvRecord(0, 0, 443, "srv.example.net")],
                                "_matrix._tcp.matrix.example.com": [SrvRecord(0, 0, 8, "old.example.net")]},
         ResolvedServer("srv.example.net", 443, "matrix.example.com", "matrix.example.com")),
        # 3.4 deprecated _matrix SRV when there is no _matrix-fed
        ("matrix.example.com", {"_matrix._tcp.matrix.example.com": [SrvRecord(0, 0, 8, "old.example.net.")]},
         ResolvedServer("old.example.net", 8, "matrix.example.com", "matrix.example.com")),
        # 3.5 no SRV: port 8448
        ("matrix.example.com", {},
         ResolvedServer("matrix.example.com", 8448, "matrix.example.com", "matrix.example.com")),
    ],
)
async def test_well_known_delegation(delegated: str, srv: dict[str, list[SrvRecord]],
                                     expected: ResolvedServer) -> None:
    web = FakeWeb({wk("example.com"): ok(delegated)})
    assert await resolver(web, FakeDns(srv)).resolve("example.com") == expected
    assert web.calls == [wk("example.com")]  # the delegated name's own .well-known is not fetched


@pytest.mark.parametrize(
    "srv, expected",
    [
        ({"_matrix-fed._tcp.example.com": [SrvRecord(0, 0, 443, "fed.example.net")],
          "_matrix._tcp.example.com": [SrvRecord(0, 0, 8, "old.example.net")]},
         ResolvedServer("fed.example.net", 443, "example.com", "example.com")),
        ({"_matrix._tcp.example.com": [SrvRecord(0, 0, 8, "old.example.net")]},
         ResolvedServer("old.example.net", 8, "example.com", "example.com")),
        ({}, ResolvedServer("example.com", 8448, "example.com", "example.com")),
        # the lowest priority wins
        ({"_matrix-fed._tcp.example.com": [SrvRecord(20, 100, 1, "b.example"), SrvRecord(10, 0, 2, "a.example")]},
         ResolvedServer("a.example", 2, "example.com", "example.com")),
    ],
)
async def test_no_well_known_uses_srv_then_8448(srv: dict[str, list[SrvRecord]], expected: ResolvedServer) -> None:
    dns = FakeDns(srv)
    assert await resolver(FakeWeb(), dns).resolve("example.com") == expected
    if "_matrix-fed._tcp.example.com" in srv:
        assert dns.calls == ["_matrix-fed._tcp.example.com"]


async def test_srv_dot_target_means_no_service() -> None:
    dns = FakeDns({"_matrix-fed._tcp.example.com": [SrvRecord(0, 0, 0, ".")]})
    with pytest.raises(DiscoveryError, match="not available"):
        await resolver(FakeWeb(), dns).resolve("example.com")


@pytest.mark.parametrize("name", ["", " example.com", "exa mple.com", "example.com/x", "[::1", "[::1]x",
                                  "[1.2.3.4]", "[nope]:80", "example.com:", "example.com:0",
                                  "example.com:65536", "example.com:８０", "example.com:+80", "a:1:2",
                                  "ex_ample.com"])
async def test_invalid_server_names(name: str) -> None:
    with pytest.raises(DiscoveryError):
        parse_server_name(name)
    with pytest.raises(DiscoveryError):
        await resolver().resolve(name)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"m.server": 5}', b"{}", b'{"m.server": "bad name:x"}', b'{"m.server": ""}'],
)
async def test_invalid_well_known_falls_back(body: bytes) -> None:
    web = FakeWeb({wk("example.com"): WellKnownResponse(200, {}, body)})
    assert await resolver(web).resolve("example.com") == ResolvedServer("example.com", 8448, "example.com",
                                                                        "example.com")


# -- redirects ------------------------------------------------------------------------------------------
async def test_redirects_are_followed_relative_and_absolute() -> None:
    web = FakeWeb({
        wk("example.com"): WellKnownResponse(301, {"location": "/elsewhere"}, b""),
        "https://example.com/elsewhere": WellKnownResponse(307, {"Location": "https://other.example/wk"}, b""),
        "https://other.example/wk": ok("target.example:1"),
    })
    assert (await resolver(web).resolve("example.com")).host_to_connect == "target.example"
    assert web.calls == [wk("example.com"), "https://example.com/elsewhere", "https://other.example/wk"]


@pytest.mark.parametrize(
    "replies",
    [
        {wk("example.com"): WellKnownResponse(302, {"Location": "https://a.example/"}, b""),
         "https://a.example/": WellKnownResponse(302, {"Location": wk("example.com")}, b"")},  # loop
        {wk("example.com"): WellKnownResponse(302, {"Location": "http://example.com/wk"}, b""),
         "http://example.com/wk": ok("target.example:1")},  # downgrade to plain HTTP
        {wk("example.com"): WellKnownResponse(302, {}, b"")},  # no Location
        {**{f"https://r{i}.example/": WellKnownResponse(302, {"Location": f"https://r{i + 1}.example/"}, b"")
            for i in range(WELL_KNOWN_MAX_REDIRECTS + 2)},
         wk("example.com"): WellKnownResponse(302, {"Location": "https://r0.example/"}, b""),
         f"https://r{WELL_KNOWN_MAX_REDIRECTS + 2}.example/": ok("target.example:1")},  # too many
    ],
)
async def test_bad_redirects_mean_no_delegation(replies: dict[str, Reply]) -> None:
    web = FakeWeb(replies)
    assert (await resolver(web).resolve("example.com")).host_to_connect == "example.com"
    assert len(web.calls) <= WELL_KNOWN_MAX_REDIRECTS + 1


async def test_redirect_bound_allows_exactly_the_maximum() -> None:
    replies: dict[str, Reply] = {
        f"https://r{i}.example/": WellKnownResponse(302, {"Location": f"https://r{i + 1}.example/"}, b"")
        for i in range(WELL_KNOWN_MAX_REDIRECTS - 1)}
    replies[wk("example.com")] = WellKnownResponse(302, {"Location": "https://r0.example/"}, b"")
    replies[f"https://r{WELL_KNOWN_MAX_REDIRECTS - 1}.example/"] = ok("target.example:1")
    assert (await resolver(FakeWeb(replies)).resolve("example.com")).host_to_connect == "target.example"


# -- caching --------------------------------------------------------------------------------------------
async def _fetches_at(res: ServerResolver, web: FakeWeb, clock: Clock, offset: float) -> int:
    """How many fetches resolving example.com at ``offset`` seconds from the first fetch triggers."""
    before = len(web.calls)
    clock.now = START + offset
    await res.resolve("example.com")
    return len(web.calls) - before


START = 1_700_000_000.0


@pytest.mark.parametrize("high", [True, False])
async def test_default_cache_period_has_jitter(high: bool) -> None:
    web, clock = FakeWeb({wk("example.com"): ok("t.example:1")}), Clock()
    res = resolver(web, clock=clock, rng=FixedJitter(high))
    assert await _fetches_at(res, web, clock, 0) == 1
    period = WELL_KNOWN_DEFAULT_CACHE_PERIOD * (1.1 if high else 0.9)
    fresh_until = period * (1 - WELL_KNOWN_GRACE_PERIOD_FACTOR)
    assert await _fetches_at(res, web, clock, fresh_until - 1) == 0
    # in the grace period (last fifth) it is refreshed, and the new answer is cached afresh
    assert await _fetches_at(res, web, clock, fresh_until + 1) == 1
    assert await _fetches_at(res, web, clock, fresh_until + 2) == 0


@pytest.mark.parametrize(
    "headers, period",
    [
        ({"Cache-Control": "max-age=3600"}, 3600.0),
        ({"cache-control": "public, max-age=\"7200\""}, 7200.0),
        ({"Cache-Control": "max-age=10"}, WELL_KNOWN_MIN_CACHE_PERIOD),
        ({"Cache-Control": "max-age=999999999"}, WELL_KNOWN_MAX_CACHE_PERIOD),
        ({"Cache-Control": "no-store, max-age=3600"}, WELL_KNOWN_MIN_CACHE_PERIOD),
        ({"Expires": email.utils.formatdate(START + 5000, usegmt=True)}, 5000.0),
        ({"Expires": "0"}, WELL_KNOWN_MIN_CACHE_PERIOD),
        ({"Cache-Control": "max-age=oops", "Expires": email.utils.formatdate(START + 4000, usegmt=True)}, 4000.0),
    ],
)
async def test_cache_headers_set_the_period_within_bounds(headers: dict[str, str], period: float) -> None:
    web, clock = FakeWeb({wk("example.com"): ok("t.example:1", headers)}), Clock()
    clock.now = START
    res = resolver(web, clock=clock)
    assert await _fetches_at(res, web, clock, 0) == 1
    fresh_until = period * (1 - WELL_KNOWN_GRACE_PERIOD_FACTOR)
    assert await _fetches_at(res, web, clock, fresh_until - 1) == 0
    assert await _fetches_at(res, web, clock, fresh_until + 1) == 1


@pytest.mark.parametrize(
    "failure",
    [WellKnownResponse(404, {}, b""), WellKnownResponse(500, {}, b""), WellKnownResponse(200, {}, b"{}"),
     WellKnownFetchError("connection refused"), WellKnownFetchError("too big", temporary=False)],
)
@pytest.mark.parametrize("high", [True, False])
async def test_failures_are_cached_for_an_hour_with_jitter(failure: Reply, high: bool) -> None:
    web, clock = FakeWeb({wk("example.com"): failure}), Clock()
    res = resolver(web, clock=clock, rng=FixedJitter(high))
    assert await _fetches_at(res, web, clock, 0) == 1
    period = WELL_KNOWN_INVALID_CACHE_PERIOD * (1.1 if high else 0.9)
    assert await _fetches_at(res, web, clock, period - 1) == 0
    assert await _fetches_at(res, web, clock, period + 1) == 1


async def test_failure_after_a_valid_answer_is_cached_briefly() -> None:
    web, clock = FakeWeb({wk("example.com"): ok("t.example:1", {"Cache-Control": "max-age=3600"})}), Clock()
    res = resolver(web, clock=clock)
    assert (await res.resolve("example.com")).host_to_connect == "t.example"
    web.replies[wk("example.com")] = WellKnownResponse(404, {}, b"")
    # expired: the 404 is believed, but only for the short "down" period
    assert await _fetches_at(res, web, clock, 3601) == 1
    assert (await res.resolve("example.com")).host_to_connect == "example.com"
    assert await _fetches_at(res, web, clock, 3601 + WELL_KNOWN_DOWN_CACHE_PERIOD * 1.1 - 1) == 0
    assert await _fetches_at(res, web, clock, 3601 + WELL_KNOWN_DOWN_CACHE_PERIOD * 1.1 + 1) == 1


async def test_transient_failure_in_grace_period_keeps_the_old_answer() -> None:
    web, clock = FakeWeb({wk("example.com"): ok("t.example:1", {"Cache-Control": "max-age=1000"})}), Clock()
    res = resolver(web, clock=clock)
    await _fetches_at(res, web, clock, 0)
    web.replies[wk("example.com")] = WellKnownFetchError("connection reset")
    assert await _fetches_at(res, web, clock, 900) == 1
    assert (await res.resolve("example.com")).host_to_connect == "t.example"
    # a definite answer (404) in the grace period replaces it
    web.replies[wk("example.com")] = WellKnownResponse(404, {}, b"")
    assert await _fetches_at(res, web, clock, 950) == 1
    assert (await res.resolve("example.com")).host_to_connect == "example.com"


async def test_cache_is_per_hostname() -> None:
    web = FakeWeb({wk("a.example"): ok("x.example:1"), wk("b.example"): ok("y.example:2")})
    res = resolver(web)
    assert (await res.resolve("a.example")).host_to_connect == "x.example"
    assert (await res.resolve("b.example")).host_to_connect == "y.example"
    await res.resolve("a.example")
    await res.resolve("b.example")
    assert web.calls == [wk("a.example"), wk("b.example")]


# -- SRV order ------------------------------------------------------------------------------------------
def test_srv_order_priority_first_then_weighted() -> None:
    records = [SrvRecord(20, 5, 1, "c"), SrvRecord(10, 0, 2, "b"), SrvRecord(10, 100, 3, "a"),
               SrvRecord(30, 0, 4, "d")]
    rng = random.Random(7)
    for _ in range(50):
        ordered = order_srv_records(records, rng)
        assert [r.target for r in ordered] == ["a", "b", "c", "d"]  # weight 0 never beats weight 100


def test_srv_weights_share_the_first_place_proportionally() -> None:
    records = [SrvRecord(0, 1, 1, "light"), SrvRecord(0, 3, 2, "heavy")]
    rng = random.Random(42)
    firsts = [order_srv_records(records, rng)[0].target for _ in range(4000)]
    share = firsts.count("heavy") / len(firsts)
    assert 0.70 < share < 0.80
    # all-zero weights: every record gets a turn first
    zeros = [SrvRecord(0, 0, 1, "x"), SrvRecord(0, 0, 2, "y")]
    assert {order_srv_records(zeros, rng)[0].target for _ in range(100)} == {"x", "y"}


# -- IP range filter ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ip, allowed",
    [
        ("8.8.8.8", True), ("2606:4700::1111", True), ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("172.16.5.4", False),
        ("100.64.0.1", False), ("169.254.1.1", False), ("224.0.0.1", False),
        ("::1", False), ("[::1]", False), ("fe80::1%eth0", False), ("fd00::1", False), ("2001:db8::1", False),
        ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
        ("0.0.0.0", False), ("::", False), ("not-an-ip", False), ("", False),
    ],
)
def test_default_blacklist(ip: str, allowed: bool) -> None:
    assert IpRangeFilter(DEFAULT_IP_RANGE_BLACKLIST, []).allowed(ip) is allowed


def test_whitelist_wins_but_never_for_the_any_address() -> None:
    f = IpRangeFilter(DEFAULT_IP_RANGE_BLACKLIST, ["127.0.0.0/8", "fd00::/8", "0.0.0.0/0", "::/0"])
    for ip in ("127.0.0.1", "::ffff:127.0.0.2", "fd00::5", "10.0.0.1", "8.8.8.8"):
        assert f.allowed(ip), ip
    assert not f.allowed("0.0.0.0")
    assert not f.allowed("::")
    narrow = IpRangeFilter(DEFAULT_IP_RANGE_BLACKLIST, ["127.0.0.0/8"])
    assert narrow.allowed("127.5.5.5") and narrow.allowed("::ffff:127.0.0.1")
    assert not narrow.allowed("::1") and not narrow.allowed("10.0.0.1")
    # an empty blacklist lets everything but the any-address through
    assert IpRangeFilter([], []).allowed("127.0.0.1")
    assert not IpRangeFilter([], []).allowed("0.0.0.0")


# -- the real SRV lookup, against a DNS server on loopback ------------------------------------------------
class _DnsServer(asyncio.DatagramProtocol):
    """Answers SRV queries from a table; SERVFAIL for names in ``broken``, NXDOMAIN otherwise."""

    def __init__(self, table: dict[str, list[str]], broken: set[str]) -> None:
        self.table, self.broken = table, broken
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        name = query.question[0].name.to_text(omit_final_dot=True)
        self.queries.append(name)
        response = dns.message.make_response(query)
        if name in self.broken:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name in self.table:
            response.answer.append(dns.rrset.from_text_list(name + ".", 300, "IN", "SRV", self.table[name]))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


async def test_dns_srv_lookup_against_a_real_dns_server() -> None:
    table = {"_matrix-fed._tcp.example.test": ["10 5 8443 fed.example.test.", "20 0 443 backup.example.test."],
             "_matrix-fed._tcp.off.test": ["0 0 0 ."]}
    server = _DnsServer(table, {"_matrix-fed._tcp.broken.test"})
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        lookup = make_dns_srv_lookup(["127.0.0.1"], port)
        records = await lookup("_matrix-fed._tcp.example.test")
        assert sorted(records, key=lambda r: r.priority) == [SrvRecord(10, 5, 8443, "fed.example.test"),
                                                               SrvRecord(20, 0, 443, "backup.example.test")]
        await lookup("_matrix-fed._tcp.example.test")
        assert server.queries == ["_matrix-fed._tcp.example.test"]  # the second answer came from the cache
        assert await lookup("_matrix-fed._tcp.missing.test") == []
        with pytest.raises(DiscoveryError, match="broken.test"):
            await lookup("_matrix-fed._tcp.broken.test")
        # through the resolver: SRV target, and "." meaning no service
        res = ServerResolver(FakeWeb(), lookup, rng=FixedJitter())
        assert await res.resolve("example.test") == ResolvedServer("fed.example.test", 8443, "example.test",
                                                                   "example.test")
        with pytest.raises(DiscoveryError, match="not available"):
            await res.resolve("off.test")
    finally:
        transport.close()
