"""The KeyRing: other servers' keys fetched directly and through notaries, checked, cached in memory and
in the database, and used only within their validity; signatures on JSON and events checked with them.

Remote servers are fakes that answer /key/v2/server from real keys (a notary is a real KeyRing on its
own database); time is a clock the tests move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hs.api.federation.keys import parse_key_query
from hs.config import parse_config
from hs.db.migrations import apply_migrations
from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from hs.events.signing import JsonDict, SigningKey, sign_event, sign_json, verify_signed_json
from hs.federation.client import FederationUnreachable
from hs.federation.keys import FAILURE_CACHE_MS, MAX_KEY_VALIDITY_MS, InvalidServerSignature, KeyRing
from hs.server import HomeServer

DAY = 86_400_000
T0 = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class FakeRemote:
    """A server publishing its keys: a current one, retired ones, and how long its answers hold."""

    def __init__(self, name: str, valid_for_ms: int = DAY, clock: Clock | None = None) -> None:
        self.name = name
        self.key = SigningKey.generate("k1")
        self.old: dict[str, tuple[SigningKey, int]] = {}
        self.valid_for_ms = valid_for_ms
        self.clock = clock or Clock()
        self.tamper: Callable[[JsonDict], JsonDict] | None = None

    def rotate(self, version: str, expired_ts: int) -> None:
        self.old[self.key.key_id] = (self.key, expired_ts)
        self.key = SigningKey.generate(version)

    def response(self) -> JsonDict:
        body: JsonDict = {
            "server_name": self.name,
            "verify_keys": {self.key.key_id: {"key": self.key.verify_key_base64}},
            "old_verify_keys": {kid: {"key": k.verify_key_base64, "expired_ts": ts} for kid, (k, ts) in self.old.items()},
            "valid_until_ts": self.clock() + self.valid_for_ms,
        }
        signed = sign_json(body, self.name, self.key)
        return self.tamper(signed) if self.tamper else signed

    def sign(self, obj: JsonDict) -> JsonDict:
        return sign_json(obj, self.name, self.key)


class FakeFederation:
    """The KeyRing's client: GETs go to the fake remotes (or notaries), POST /key/v2/query to notaries."""

    def __init__(self, remotes: dict[str, FakeRemote], notaries: dict[str, KeyRing] | None = None) -> None:
        self.remotes = remotes
        self.notaries = notaries if notaries is not None else {}
        self.calls: list[tuple[str, str]] = []
        self.down: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.notary_tamper: Callable[[JsonDict], JsonDict] | None = None

    async def get_json(self, destination: str, path: str, /, *, timeout: float = 60.0, signed: bool = True) -> Any:
        assert path == "/_matrix/key/v2/server" and not signed
        self.calls.append(("GET", destination))
        if self.gate is not None:
            await self.gate.wait()
        if destination in self.down:
            raise FederationUnreachable(destination, "connection refused")
        if destination in self.notaries:
            return self.notaries[destination].server_keys_response()
        return self.remotes[destination].response()

    async def post_json(self, destination: str, path: str, body: Any, /, *, timeout: float = 60.0) -> Any:
        assert path == "/_matrix/key/v2/query"
        self.calls.append(("POST", destination))
        if destination in self.down:
            raise FederationUnreachable(destination, "connection refused")
        entries = await self.notaries[destination].notary_query(parse_key_query(body))
        if self.notary_tamper is not None:
            entries = [self.notary_tamper(e) for e in entries]
        return {"server_keys": entries}

    def count(self, method: str, destination: str) -> int:
        return self.calls.count((method, destination))


MakeRing = Callable[..., Awaitable[tuple[KeyRing, FakeFederation]]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def remote(clock: Clock) -> FakeRemote:
    return FakeRemote("remote.test", clock=clock)


@pytest.fixture
async def make_ring(tmp_path: Path, clock: Clock, remote: FakeRemote) -> AsyncIterator[MakeRing]:
    """Factory: a KeyRing for `ours.test` (its own SQLite database unless `db_dir` is shared)."""
    servers: list[HomeServer] = []
    remotes = {remote.name: remote}

    async def make(name: str = "ours.test", db_dir: str = "ours", notaries: dict[str, KeyRing] | None = None,
                   **config: Any) -> tuple[KeyRing, FakeFederation]:
        raw = {"server_name": name, "database": {"engine": "sqlite", "path": str(tmp_path / f"{db_dir}.db")},
               "trusted_key_servers": [], **config}
        hs = HomeServer(parse_config(raw, config_dir=str(tmp_path)), signing_key=SigningKey.generate("ours"))
        await hs.db.open()
        await apply_migrations(hs.db)
        servers.append(hs)
        fed = FakeFederation(remotes, notaries)
        return KeyRing(hs, client=fed, clock=clock), fed

    yield make
    for hs in servers:
        await hs.db.close()


def request_json(remote: FakeRemote) -> JsonDict:
    return remote.sign({"method": "GET", "uri": "/_matrix/federation/v1/version", "origin": remote.name,
                        "destination": "ours.test"})


def message(sender_server: str, ts: int, version: str = "10", **extra: Any) -> JsonDict:
    pdu: JsonDict = {"type": "m.room.message", "room_id": "!room:remote.test", "sender": f"@alice:{sender_server}",
                     "content": {"msgtype": "m.text", "body": "hi"}, "origin_server_ts": ts, "depth": 3,
                     "prev_events": [], "auth_events": [], **extra}
    return pdu


# -- this server's keys --------------------------------------------------------------------------------
async def test_own_key_response_is_self_signed_with_old_keys(make_ring: MakeRing, clock: Clock) -> None:
    old = SigningKey.generate("old1")
    ring, _ = await make_ring(old_signing_keys={"ed25519:old1": {"key": old.verify_key_base64, "expired_ts": 123}},
                              key_refresh_interval="2h")
    response = ring.server_keys_response()
    key = ring.hs.signing_key
    assert response["server_name"] == "ours.test"
    assert response["verify_keys"] == {key.key_id: {"key": key.verify_key_base64}}
    assert response["old_verify_keys"] == {"ed25519:old1": {"key": old.verify_key_base64, "expired_ts": 123}}
    assert response["valid_until_ts"] == clock() + 2 * 3_600_000
    verify_signed_json(response, "ours.test", key.key_id, key.verify_key)
    # Our own signatures are checked with our keys, without asking anybody.
    await ring.verify_json("ours.test", sign_json({"a": 1}, "ours.test", key), clock())
    await ring.verify_json("ours.test", sign_json({"a": 1}, "ours.test", old), 100)
    with pytest.raises(InvalidServerSignature, match="not at"):
        await ring.verify_json("ours.test", sign_json({"a": 1}, "ours.test", old), 124)


# -- fetching directly, caching ----------------------------------------------------------------------
async def test_direct_fetch_is_cached_in_memory_and_database(make_ring: MakeRing, remote: FakeRemote,
                                                             clock: Clock) -> None:
    ring, fed = await make_ring()
    await ring.verify_json(remote.name, request_json(remote), clock())
    await ring.verify_json(remote.name, request_json(remote), clock())
    assert fed.calls == [("GET", remote.name)]
    # Another process on the same database finds the key there.
    other, other_fed = await make_ring()
    await other.verify_json(remote.name, request_json(remote), clock())
    assert other_fed.calls == []
    rows = await ring.store.get_keys(remote.name)
    assert [(r.key_id, r.verify_key, r.valid_until_ts, r.expired_ts, r.from_server) for r in rows] == [
        ("ed25519:k1", remote.key.verify_key_base64, T0 + DAY, None, remote.name)]


async def test_tampered_object_fails_naming_server_and_key(make_ring: MakeRing, remote: FakeRemote,
                                                           clock: Clock) -> None:
    ring, _ = await make_ring()
    signed = request_json(remote)
    signed["uri"] = "/_matrix/federation/v1/send/1"
    with pytest.raises(InvalidServerSignature) as e:
        await ring.verify_json(remote.name, signed, clock())
    assert (e.value.server_name, e.value.key_id) == (remote.name, "ed25519:k1")
    assert "does not verify" in str(e.value)
    with pytest.raises(InvalidServerSignature, match="not signed by remote.test"):
        await ring.verify_json(remote.name, {"a": 1}, clock())


async def test_expired_key_refused_for_later_time_accepted_for_earlier(make_ring: MakeRing, remote: FakeRemote,
                                                                       clock: Clock) -> None:
    ring, fed = await make_ring()
    valid_until = T0 + DAY
    await ring.verify_json(remote.name, request_json(remote), clock())
    # Signed after the key's validity: the key is fetched again, still not valid then: refused.
    with pytest.raises(InvalidServerSignature) as e:
        await ring.verify_json(remote.name, request_json(remote), valid_until + 1)
    assert e.value.key_id == "ed25519:k1" and "not at" in e.value.reason
    assert fed.count("GET", remote.name) == 2
    # Signed before it: fine, from the cache.
    await ring.verify_json(remote.name, request_json(remote), valid_until)
    await ring.verify_json(remote.name, request_json(remote), 0)
    assert fed.count("GET", remote.name) == 2


async def test_key_refetched_when_cached_validity_falls_short(make_ring: MakeRing, remote: FakeRemote,
                                                              clock: Clock) -> None:
    ring, fed = await make_ring()
    await ring.verify_json(remote.name, request_json(remote), clock())
    clock.now += 2 * DAY  # the remote has kept publishing, our copy ran out
    await ring.verify_json(remote.name, request_json(remote), clock())
    assert fed.count("GET", remote.name) == 2
    assert (await ring.store.get_keys(remote.name))[0].valid_until_ts == clock() + DAY


async def test_validity_is_capped_at_seven_days_after_fetching(make_ring: MakeRing, remote: FakeRemote,
                                                               clock: Clock) -> None:
    remote.valid_for_ms = 365 * DAY
    ring, fed = await make_ring()
    await ring.verify_json(remote.name, request_json(remote), clock())
    await ring.verify_json(remote.name, request_json(remote), T0 + MAX_KEY_VALIDITY_MS)
    assert fed.count("GET", remote.name) == 1
    with pytest.raises(InvalidServerSignature, match="not at"):
        await ring.verify_json(remote.name, request_json(remote), T0 + MAX_KEY_VALIDITY_MS + 1)
    assert fed.count("GET", remote.name) == 2  # the cap forced a refetch (which cannot help yet)
    clock.now += DAY + FAILURE_CACHE_MS
    await ring.verify_json(remote.name, request_json(remote), T0 + MAX_KEY_VALIDITY_MS + 1)
    assert fed.count("GET", remote.name) == 3  # fetched a day later: good for 7 days from then


async def test_rotated_key_still_verifies_what_it_signed_before(make_ring: MakeRing, remote: FakeRemote,
                                                                clock: Clock) -> None:
    room_version = KNOWN_ROOM_VERSIONS["10"]
    early = sign_event(message(remote.name, T0 + 1000), remote.name, remote.key, room_version)
    late = sign_event(message(remote.name, T0 + 5000), remote.name, remote.key, room_version)
    ring, _ = await make_ring()
    await ring.verify_event_signatures(early, room_version)  # k1 is current
    remote.rotate("k2", expired_ts=T0 + 2000)
    clock.now += 2 * DAY
    # A server that never saw k1 as current learns it from old_verify_keys.
    fresh, fed = await make_ring(db_dir="fresh")
    await fresh.verify_event_signatures(early, room_version)
    with pytest.raises(InvalidServerSignature, match="ed25519:k1"):
        await fresh.verify_event_signatures(late, room_version)
    # The first one refreshes its copy of k1 when asked for something newer than what it knew.
    await ring.verify_event_signatures(early, room_version)
    with pytest.raises(InvalidServerSignature):
        await ring.verify_event_signatures(
            sign_event(message(remote.name, T0 + 2 * DAY), remote.name, remote.old["ed25519:k1"][0], room_version),
            room_version)
    # Requests are checked at "now": only the current key will do.
    await fresh.verify_json(remote.name, request_json(remote), clock())
    with pytest.raises(InvalidServerSignature):
        await fresh.verify_json(remote.name, sign_json({"a": 1}, remote.name, remote.old["ed25519:k1"][0]), clock())


async def test_room_versions_before_5_ignore_validity(make_ring: MakeRing, remote: FakeRemote, clock: Clock) -> None:
    v4 = KNOWN_ROOM_VERSIONS["4"]
    pdu = sign_event(message(remote.name, T0 + 30 * DAY), remote.name, remote.key, v4)
    ring, _ = await make_ring()
    await ring.verify_event_signatures(pdu, v4)
    v5 = KNOWN_ROOM_VERSIONS["5"]
    with pytest.raises(InvalidServerSignature):
        await ring.verify_event_signatures(sign_event(message(remote.name, T0 + 30 * DAY), remote.name, remote.key,
                                                      v5), v5)


# -- responses that are refused ------------------------------------------------------------------------
async def test_bad_self_signature_is_refused(make_ring: MakeRing, remote: FakeRemote, clock: Clock) -> None:
    impostor = SigningKey.generate("k1")

    def swap_key(response: JsonDict) -> JsonDict:
        return {**response, "verify_keys": {"ed25519:k1": {"key": impostor.verify_key_base64}}}

    remote.tamper = swap_key
    ring, _ = await make_ring()
    with pytest.raises(InvalidServerSignature, match="does not verify|bad signature"):
        await ring.verify_json(remote.name, request_json(remote), clock())
    assert await ring.store.get_keys(remote.name) == []


async def test_response_signed_with_unlisted_key_is_refused(make_ring: MakeRing, remote: FakeRemote,
                                                            clock: Clock) -> None:
    other = SigningKey.generate("k9")
    remote.tamper = lambda r: sign_json({k: v for k, v in r.items() if k != "signatures"}, remote.name, other)
    ring, _ = await make_ring()
    with pytest.raises(InvalidServerSignature, match="not signed by remote.test with a key it lists"):
        await ring.verify_json(remote.name, request_json(remote), clock())


async def test_response_for_another_server_name_is_refused(make_ring: MakeRing, remote: FakeRemote,
                                                           clock: Clock) -> None:
    def rename(response: JsonDict) -> JsonDict:
        body = {k: v for k, v in response.items() if k != "signatures"}
        return sign_json({**body, "server_name": "evil.test"}, "evil.test", remote.key)

    remote.tamper = rename
    ring, _ = await make_ring()
    with pytest.raises(InvalidServerSignature, match="'evil.test', expected 'remote.test'"):
        await ring.verify_json(remote.name, request_json(remote), clock())


# -- sharing fetches, remembering failures --------------------------------------------------------------
async def test_concurrent_checks_share_one_fetch(make_ring: MakeRing, remote: FakeRemote, clock: Clock) -> None:
    ring, fed = await make_ring()
    fed.gate = asyncio.Event()
    checks = [asyncio.create_task(ring.verify_json(remote.name, request_json(remote), clock())) for _ in range(5)]
    while not fed.calls:
        await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    fed.gate.set()
    await asyncio.gather(*checks)
    assert fed.calls == [("GET", remote.name)]


async def test_failed_fetch_is_remembered_briefly(make_ring: MakeRing, remote: FakeRemote, clock: Clock) -> None:
    ring, fed = await make_ring()
    fed.down.add(remote.name)
    with pytest.raises(InvalidServerSignature, match="connection refused"):
        await ring.verify_json(remote.name, request_json(remote), clock())
    with pytest.raises(InvalidServerSignature, match="connection refused"):
        await ring.verify_json(remote.name, request_json(remote), clock())
    assert fed.count("GET", remote.name) == 1
    fed.down.clear()
    clock.now += FAILURE_CACHE_MS + 1
    await ring.verify_json(remote.name, request_json(remote), clock())
    assert fed.count("GET", remote.name) == 2


# -- notaries --------------------------------------------------------------------------------------------
async def test_keys_through_a_notary_with_configured_key(make_ring: MakeRing, remote: FakeRemote,
                                                         clock: Clock) -> None:
    notary, notary_fed = await make_ring("notary.test", db_dir="notary")
    nkey = notary.hs.signing_key
    ring, fed = await make_ring(notaries={"notary.test": notary}, trusted_key_servers=[
        {"server_name": "notary.test", "verify_keys": {nkey.key_id: nkey.verify_key_base64}}])
    fed.down.add(remote.name)  # we cannot reach the remote; the notary can
    await ring.verify_json(remote.name, request_json(remote), clock())
    assert fed.calls == [("POST", "notary.test")]
    assert notary_fed.calls == [("GET", remote.name)]
    stored = await ring.store.get_keys(remote.name)
    assert [(k.key_id, k.from_server) for k in stored] == [("ed25519:k1", "notary.test")]


async def test_notary_answer_with_bad_notary_signature_falls_back_to_direct(make_ring: MakeRing, remote: FakeRemote,
                                                                           clock: Clock) -> None:
    notary, _ = await make_ring("notary.test", db_dir="notary")
    wrong = SigningKey.generate("x")
    ring, fed = await make_ring(notaries={"notary.test": notary}, trusted_key_servers=[
        {"server_name": "notary.test", "verify_keys": {notary.hs.signing_key.key_id: wrong.verify_key_base64}}])
    await ring.verify_json(remote.name, request_json(remote), clock())
    assert fed.calls == [("POST", "notary.test"), ("GET", remote.name)]
    assert [k.from_server for k in await ring.store.get_keys(remote.name)] == [remote.name]
    # With the server unreachable too, the error says what went wrong with each.
    remote2 = FakeRemote("remote2.test", clock=clock)
    fed.remotes[remote2.name] = remote2
    fed.down.add(remote2.name)
    with pytest.raises(InvalidServerSignature) as e:
        await ring.verify_json(remote2.name, request_json(remote2), clock())
    assert "notary notary.test: notary notary.test's signature: bad signature" in e.value.reason
    assert "remote2.test: GET /_matrix/key/v2/server failed: remote2.test: connection refused" in e.value.reason


async def test_notary_relaying_a_forged_key_is_refused(make_ring: MakeRing, remote: FakeRemote, clock: Clock) -> None:
    """The notary signs its answer correctly, but the key response inside is not the server's."""
    notary, _ = await make_ring("notary.test", db_dir="notary")
    nkey = notary.hs.signing_key
    forged = SigningKey.generate("k1")

    def forge(entry: JsonDict) -> JsonDict:
        body = {k: v for k, v in entry.items() if k != "signatures"}
        body["verify_keys"] = {"ed25519:k1": {"key": forged.verify_key_base64}}
        return sign_json(sign_json(body, remote.name, remote.key), "notary.test", nkey)

    ring, fed = await make_ring(notaries={"notary.test": notary}, trusted_key_servers=[
        {"server_name": "notary.test", "verify_keys": {nkey.key_id: nkey.verify_key_base64}}])
    fed.notary_tamper = forge
    fed.down.add(remote.name)
    with pytest.raises(InvalidServerSignature, match="notary notary.test"):
        await ring.verify_json(remote.name, request_json(remote), clock())
    assert await ring.store.get_keys(remote.name) == []


async def test_notary_without_keys_is_used_only_insecurely(make_ring: MakeRing, remote: FakeRemote,
                                                           clock: Clock) -> None:
    notary, _ = await make_ring("notary.test", db_dir="notary")
    ring, fed = await make_ring(notaries={"notary.test": notary},
                                trusted_key_servers=[{"server_name": "notary.test"}])
    await ring.verify_json(remote.name, request_json(remote), clock())
    assert fed.calls == [("GET", remote.name)]  # not asked: nothing to check its answers with
    insecure, fed = await make_ring(db_dir="insecure", notaries={"notary.test": notary}, trusted_key_servers=[
        {"server_name": "notary.test", "accept_keys_insecurely": True}])
    fed.down.add(remote.name)
    await insecure.verify_json(remote.name, request_json(remote), clock())
    # The notary's own key came from the notary itself, then its answer was checked with it.
    assert sorted(fed.calls) == [("GET", "notary.test"), ("POST", "notary.test")]


# -- the notary side -------------------------------------------------------------------------------------
async def test_notary_answers_from_cache_refetches_when_asked_for_later_validity(
        make_ring: MakeRing, remote: FakeRemote, clock: Clock) -> None:
    notary, fed = await make_ring("notary.test", db_dir="notary")
    nkey = notary.hs.signing_key
    [entry] = await notary.notary_query({remote.name: {}})
    verify_signed_json(entry, remote.name, "ed25519:k1", remote.key.verify_key)
    verify_signed_json(entry, "notary.test", nkey.key_id, nkey.verify_key)
    assert fed.count("GET", remote.name) == 1
    clock.now += FAILURE_CACHE_MS + 1
    await notary.notary_query({remote.name: {"ed25519:k1": None}})
    assert fed.count("GET", remote.name) == 1  # fresh enough
    [entry] = await notary.notary_query({remote.name: {"ed25519:k1": T0 + 2 * DAY}})
    assert fed.count("GET", remote.name) == 2
    assert entry["valid_until_ts"] == clock() + DAY
    # The remote goes away: the last answer is still served.
    fed.down.add(remote.name)
    clock.now += 3 * DAY
    [entry] = await notary.notary_query({remote.name: {}})
    assert entry["valid_until_ts"] < clock()
    # A server nobody can reach and nobody cached: nothing.
    assert await notary.notary_query({"unknown.test": {}}) == []
    # Asked about itself: its own keys.
    [own] = await notary.notary_query({"notary.test": {}})
    assert own["verify_keys"] == {nkey.key_id: {"key": nkey.verify_key_base64}}


# -- event signature rules -------------------------------------------------------------------------------
async def test_event_signers_per_room_version(make_ring: MakeRing, remote: FakeRemote, clock: Clock) -> None:
    other = FakeRemote("other.test", clock=clock)
    ring, fed = await make_ring()
    fed.remotes[other.name] = other
    # v1: the event ID's server must sign too.
    v1 = KNOWN_ROOM_VERSIONS["1"]
    pdu = sign_event(message(remote.name, T0, event_id="$abc:other.test"), remote.name, remote.key, v1)
    with pytest.raises(InvalidServerSignature, match="other.test"):
        await ring.verify_event_signatures(pdu, v1)
    await ring.verify_event_signatures(sign_event(pdu, other.name, other.key, v1), v1)
    # v10: a restricted join authorised by another server's user needs that server's signature.
    v10 = KNOWN_ROOM_VERSIONS["10"]
    join: JsonDict = {"type": "m.room.member", "state_key": f"@bob:{remote.name}", "sender": f"@bob:{remote.name}",
                      "room_id": "!room:other.test", "origin_server_ts": T0, "depth": 4, "prev_events": [],
                      "auth_events": [], "content": {"membership": "join",
                                                     "join_authorised_via_users_server": "@admin:other.test"}}
    signed = sign_event(join, remote.name, remote.key, v10)
    with pytest.raises(InvalidServerSignature, match="other.test"):
        await ring.verify_event_signatures(signed, v10)
    both = sign_event(signed, other.name, other.key, v10)
    await ring.verify_event_signatures(both, v10)
    # Signatures cover the redacted form: a redacted copy verifies, a changed one does not.
    from hs.events.redaction import redact_pdu

    await ring.verify_event_signatures(redact_pdu(both, v10), v10)
    changed = {**both, "content": {**both["content"], "membership": "leave"}}
    with pytest.raises(InvalidServerSignature, match="does not verify"):
        await ring.verify_event_signatures(changed, v10)
