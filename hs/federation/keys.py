"""Server signing keys: this server's published keys, and other servers' keys fetched, checked and cached.

Other servers' keys come from the trusted notaries (`trusted_key_servers`, POST /_matrix/key/v2/query)
and else from the server itself (GET /_matrix/key/v2/server), as Synapse asks them. Every response
must be signed by the server it describes with a key it lists, and a notary's answer also by the
notary. Keys are kept in memory and in the `server_keys` table (shared by workers, kept over restarts).

When a key may be used (Synapse's rule, the spec's for room versions 5+): a key listed in
`verify_keys` is good for what was signed up to the response's `valid_until_ts`, capped at 7 days
after it was fetched; a key under `old_verify_keys` for what was signed before its `expired_ts`.
A signature made at time T is checked only with a key good at T: T is the event's
`origin_server_ts` (0 for room versions 1-4, which ignore validity) or now for a request. A cached
key that does not reach T is fetched again.

Several checks needing the same server's keys at once share one fetch; a fetch that failed is
remembered for `FAILURE_CACHE_MS`, so that a dead server, or a sender naming keys that do not exist,
is not asked again for every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import nacl.signing

from hs.config import TrustedKeyServer
from hs.db.stores.server_keys import ServerKeyStore, StoredServerKey
from hs.events.auth import get_domain
from hs.events.canonical_json import encode_canonical_json
from hs.events.event import Event
from hs.events.redaction import redact_shallow
from hs.events.room_versions import EventFormat, RoomVersion
from hs.events.signing import (
    ED25519,
    JsonDict,
    SignatureVerifyError,
    decode_verify_key_base64,
    sign_json,
    verify_signed_json,
)
from hs.util import LruCache, json_loads, now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

SERVER_KEYS_PATH = "/_matrix/key/v2/server"
KEY_QUERY_PATH = "/_matrix/key/v2/query"
# A key is never trusted for longer than this after it was fetched, whatever valid_until_ts says.
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
# How long a fetch that failed (server down, bad response, key not published) is not repeated.
FAILURE_CACHE_MS = 30_000
MAX_CACHED_SERVERS = 10_000
# A server's /key/v2/server is a cheap request: one that has not answered in this time will not. A
# notary may itself have to ask the server, so it gets longer.
DIRECT_FETCH_TIMEOUT_S = 10.0
NOTARY_FETCH_TIMEOUT_S = 20.0
# A notary with no `verify_keys` configured: matrix.org's published key, as Synapse's default has it.
KNOWN_NOTARY_KEYS = {"matrix.org": {"ed25519:auto": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"}}


class KeyLookupError(Exception):
    """A server's keys could not be fetched, or the response was not acceptable."""


class InvalidServerSignature(SignatureVerifyError):
    """A server's signature on an object (an event, a request, a key response) is missing, made with
    a key we cannot find or that was not valid at the time, or does not verify."""

    def __init__(self, server_name: str, key_id: str | None, reason: str) -> None:
        self.server_name = server_name
        self.key_id = key_id
        self.reason = reason
        where = f"{server_name} ({key_id})" if key_id else server_name
        super().__init__(f"signature of {where}: {reason}")


class KeyClient(Protocol):
    """What the KeyRing needs of the federation client."""

    async def get_json(self, destination: str, path: str, /, *, timeout: float = ..., signed: bool = ...) -> Any: ...

    async def post_json(self, destination: str, path: str, body: Any, /, *, timeout: float = ...) -> Any: ...


@dataclass(frozen=True)
class ServerKey:
    """A key of another server (or ours) and until when what it signed may be trusted."""

    server_name: str
    key_id: str
    verify_key: nacl.signing.VerifyKey
    usable_until_ts: int
    response_valid_until_ts: int  # of the response it came in: a fresher response replaces it

    def usable_at(self, ts: int) -> bool:
        return self.usable_until_ts >= ts

    @classmethod
    def from_stored(cls, k: StoredServerKey) -> ServerKey:
        if k.expired_ts is not None:
            until = k.expired_ts
        else:
            until = min(k.valid_until_ts, k.fetched_ts + MAX_KEY_VALIDITY_MS)
        return cls(k.server_name, k.key_id, decode_verify_key_base64(k.verify_key), until, k.valid_until_ts)


def signature_key_ids(obj: JsonDict, server_name: str) -> list[str]:
    """The ed25519 key IDs `server_name` signed `obj` with (other algorithms are not supported)."""
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict):
        return []
    mine = signatures.get(server_name)
    if not isinstance(mine, dict):
        return []
    return sorted(k for k in mine if isinstance(k, str) and k.startswith(ED25519 + ":"))


def parse_key_response(response: Any, server_name: str, fetched_ts: int, from_server: str) -> list[StoredServerKey]:
    """Check a server keys object (GET /key/v2/server, or one entry of a notary's answer) and return its
    keys to store. It must describe `server_name`, carry an integer valid_until_ts, and be signed by
    `server_name` with at least one of the keys it lists, every such signature valid."""
    if not isinstance(response, dict):
        raise KeyLookupError("key response is not a JSON object")
    if response.get("server_name") != server_name:
        raise KeyLookupError(f"key response is for {response.get('server_name')!r}, expected {server_name!r}")
    valid_until = response.get("valid_until_ts")
    if not isinstance(valid_until, int) or isinstance(valid_until, bool):
        raise KeyLookupError(f"key response of {server_name} has no integer valid_until_ts")
    current = _keys_of(response, "verify_keys", server_name)
    old = _keys_of(response, "old_verify_keys", server_name)
    signed_with = [k for k in signature_key_ids(response, server_name) if k in current]
    if not signed_with:
        raise KeyLookupError(f"key response of {server_name} is not signed by {server_name} with a key it lists")
    for key_id in signed_with:
        try:
            verify_signed_json(response, server_name, key_id, decode_verify_key_base64(current[key_id][0]))
        except SignatureVerifyError as e:
            raise KeyLookupError(f"key response of {server_name}: {e}") from None
    # Stored as the server signed it: other servers' (notaries') signatures are dropped.
    signatures = response["signatures"]
    stored = {**response, "signatures": {server_name: signatures[server_name]}}
    key_json = encode_canonical_json(stored).decode()
    out = [StoredServerKey(server_name, key_id, key, valid_until, None, fetched_ts, from_server, key_json)
           for key_id, (key, _) in current.items()]
    out += [StoredServerKey(server_name, key_id, key, valid_until, expired, fetched_ts, from_server, key_json)
            for key_id, (key, expired) in old.items() if key_id not in current]
    return out


def _keys_of(response: JsonDict, field: str, server_name: str) -> dict[str, tuple[str, int | None]]:
    """`verify_keys` or `old_verify_keys` as key ID -> (base64 key, expired_ts); other algorithms are
    skipped, malformed entries refused."""
    entries = response.get(field, {})
    if not isinstance(entries, dict) or (field == "verify_keys" and field not in response):
        raise KeyLookupError(f"key response of {server_name} has no valid {field}")
    out: dict[str, tuple[str, int | None]] = {}
    for key_id, entry in entries.items():
        if not key_id.startswith(ED25519 + ":"):
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise KeyLookupError(f"key response of {server_name}: {field}.{key_id} has no key")
        try:
            decode_verify_key_base64(entry["key"])
        except ValueError as e:
            raise KeyLookupError(f"key response of {server_name}: {field}.{key_id}: {e}") from None
        expired: int | None = None
        if field == "old_verify_keys":
            expired = entry.get("expired_ts")
            if not isinstance(expired, int) or isinstance(expired, bool):
                raise KeyLookupError(f"key response of {server_name}: {field}.{key_id} has no expired_ts")
        out[key_id] = (entry["key"], expired)
    return out


def event_signers(pdu: JsonDict, room_version: RoomVersion) -> list[str]:
    """The servers whose signatures an event must carry (spec, "Validating hashes and signatures on
    received events"): the sender's; for room versions 1 and 2 also the event ID's; for a join to a
    restricted room authorised by another server's user, that server's too."""
    servers = [get_domain(str(pdu.get("sender", "")))]
    if room_version.event_format == EventFormat.V1:
        event_id = pdu.get("event_id")
        if isinstance(event_id, str) and ":" in event_id:
            servers.append(get_domain(event_id))
    content = pdu.get("content")
    if (room_version.restricted_join_rule and pdu.get("type") == "m.room.member" and isinstance(content, dict)
            and content.get("membership") == "join"):
        authoriser = content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str) and ":" in authoriser:
            servers.append(get_domain(authoriser))
    return list(dict.fromkeys(servers))


@dataclass
class _Fetch:
    """A fetch of one server's keys in flight, which other checks needing them wait for."""

    key_ids: frozenset[str] | None  # None: every key the server publishes (a direct fetch)
    min_valid_ts: int
    task: asyncio.Task[str | None]  # the error, or None


class KeyRing:
    def __init__(self, hs: HomeServer, client: KeyClient | None = None,
                 clock: Callable[[], int] = now_ms) -> None:
        self.hs = hs
        self.config = hs.config
        self.server_name = hs.server_name
        self.store = ServerKeyStore(hs.db)
        self._client = client
        self.clock = clock
        self._cache: LruCache[str, dict[str, ServerKey]] = LruCache(MAX_CACHED_SERVERS, name="federation.keys.self._cache")
        self._in_flight: dict[tuple[str, bool], _Fetch] = {}
        # (server, key ID) -> (until when not to fetch again, why the last fetch failed)
        self._failures: LruCache[tuple[str, str], tuple[int, str]] = LruCache(MAX_CACHED_SERVERS, name="federation.keys.self._failures")
        # server -> (until when its /key/v2/server is not asked again, why it failed)
        self._unreachable: LruCache[str, tuple[int, str]] = LruCache(MAX_CACHED_SERVERS, name="federation.keys.self._unreachable")
        self._warned_notaries: set[str] = set()
        self._own: dict[str, ServerKey] | None = None

    @property
    def client(self) -> KeyClient:
        if self._client is None:
            return self.hs.federation_client
        return self._client

    # -- this server's keys -------------------------------------------------------------------------
    def server_keys_response(self) -> JsonDict:
        """The body of GET /_matrix/key/v2/server: the current key, the retired ones, signed."""
        key = self.hs.signing_key
        response: JsonDict = {
            "server_name": self.server_name,
            "verify_keys": {key.key_id: {"key": key.verify_key_base64}},
            "old_verify_keys": {key_id: {"key": old.key, "expired_ts": old.expired_ts}
                                for key_id, old in self.config.old_signing_keys.items()},
            "valid_until_ts": self.clock() + self.config.key_refresh_interval,
        }
        return sign_json(response, self.server_name, key)

    def _own_keys(self) -> dict[str, ServerKey]:
        if self._own is None:
            self._own = self._load_own_keys()
        return self._own

    def _load_own_keys(self) -> dict[str, ServerKey]:
        """Our current key (good for anything) and `old_signing_keys` (up to their expired_ts)."""
        key = self.hs.signing_key
        forever = 2**62
        keys = {key.key_id: ServerKey(self.server_name, key.key_id, key.verify_key, forever, forever)}
        for key_id, old in self.config.old_signing_keys.items():
            try:
                verify_key = decode_verify_key_base64(old.key)
            except ValueError:
                logger.warning("old_signing_keys.%s is not a valid ed25519 key; ignored", key_id)
                continue
            keys.setdefault(key_id, ServerKey(self.server_name, key_id, verify_key, old.expired_ts, forever))
        return keys

    # -- verifying ----------------------------------------------------------------------------------
    async def verify_json(self, server_name: str, obj: JsonDict, at_ts: int, *, direct_only: bool = False) -> None:
        """Check `server_name`'s signatures on `obj`, made at `at_ts` (ms; 0 for "any time").

        Signatures with keys we cannot find, or that were not valid at `at_ts`, are skipped; at least
        one must remain and every remaining one must verify. Raises `InvalidServerSignature`."""
        key_ids = signature_key_ids(obj, server_name)
        if not key_ids:
            raise InvalidServerSignature(server_name, None, f"not signed by {server_name}")
        error = await self._ensure_keys(server_name, key_ids, at_ts, direct_only)
        keys = self._usable(server_name, key_ids, at_ts)
        if not keys:
            raise InvalidServerSignature(server_name, ", ".join(key_ids),
                                         self._why_unusable(server_name, key_ids, at_ts, error))
        for key in keys:
            try:
                verify_signed_json(obj, server_name, key.key_id, key.verify_key)
            except SignatureVerifyError:
                raise InvalidServerSignature(server_name, key.key_id, "the signature does not verify") from None

    async def verify_event_signatures(self, event: Event | JsonDict, room_version: RoomVersion | None = None) -> None:
        """Check an event's signatures (on its redacted form, so a redacted copy verifies too) from every
        server that must have signed it; raises `InvalidServerSignature` naming the first failure.

        Not handled yet: invites from a third-party invite, which the sender's server does not sign."""
        if isinstance(event, Event):
            pdu, room_version = event.pdu, event.room_version
        else:
            pdu = event
            if room_version is None:
                raise TypeError("verify_event_signatures needs the room version of a PDU dict")
        redacted = redact_shallow(pdu, room_version)
        ts = pdu.get("origin_server_ts")
        at_ts = ts if room_version.enforce_key_validity and isinstance(ts, int) else 0
        await asyncio.gather(*(self.verify_json(server, redacted, at_ts)
                               for server in event_signers(pdu, room_version)))

    def _usable(self, server_name: str, key_ids: Iterable[str], at_ts: int) -> list[ServerKey]:
        known = self._known(server_name)
        return [known[k] for k in key_ids if k in known and known[k].usable_at(at_ts)]

    def _known(self, server_name: str) -> dict[str, ServerKey]:
        if server_name == self.server_name:
            return self._own_keys()
        return self._cache.get(server_name) or {}

    def _why_unusable(self, server_name: str, key_ids: list[str], at_ts: int, error: str | None) -> str:
        known = self._known(server_name)
        expired = [k for k in key_ids if k in known]
        if expired:
            until = max(known[k].usable_until_ts for k in expired)
            return f"key valid only until {until}, not at {at_ts}" + (f" (refetch: {error})" if error else "")
        return f"key not found ({error})" if error else "key not found"

    # -- finding keys ------------------------------------------------------------------------------
    async def get_server_keys(self, server_name: str, key_ids: Collection[str], at_ts: int) -> dict[str, ServerKey]:
        """The keys among `key_ids` of `server_name` good at `at_ts`, fetched if need be (maybe none)."""
        await self._ensure_keys(server_name, list(key_ids), at_ts, False)
        return {k.key_id: k for k in self._usable(server_name, key_ids, at_ts)}

    async def _ensure_keys(self, server_name: str, key_ids: list[str], at_ts: int, direct_only: bool) -> str | None:
        """Make sure one of `key_ids` good at `at_ts` is cached, if it can be had; returns why not."""
        if server_name == self.server_name or self._usable(server_name, key_ids, at_ts):
            return None
        now = self.clock()
        failures = [self._failures.get((server_name, k)) for k in key_ids]
        if all(f is not None and f[0] > now for f in failures):
            return next(f[1] for f in failures if f is not None)
        await self._load(server_name)
        if self._usable(server_name, key_ids, at_ts):
            return None
        error: str | None = None
        for _attempt in range(2):
            fetch = self._join_or_start(server_name, frozenset(key_ids), at_ts, direct_only)
            error = await asyncio.shield(fetch.task)
            if self._usable(server_name, key_ids, at_ts):
                for k in key_ids:
                    self._failures.pop((server_name, k))
                return None
            if fetch.key_ids is None or (fetch.key_ids >= set(key_ids) and fetch.min_valid_ts >= at_ts):
                break  # a fetch for what we need ran: no point in asking again now
        reason = error or "the server did not publish a key valid then"
        until = self.clock() + FAILURE_CACHE_MS
        for k in key_ids:
            self._failures.set((server_name, k), (until, reason))
        return reason

    def _join_or_start(self, server_name: str, key_ids: frozenset[str], at_ts: int, direct_only: bool) -> _Fetch:
        slot = (server_name, direct_only)
        fetch = self._in_flight.get(slot)
        if fetch is not None and (fetch.key_ids is None or fetch.key_ids >= key_ids):
            return fetch
        notaries = [] if direct_only else self._notaries_for(server_name)
        wanted = key_ids if notaries else None
        task = asyncio.get_running_loop().create_task(self._fetch(server_name, key_ids, at_ts, notaries))
        fetch = _Fetch(wanted, at_ts, task)
        self._in_flight[slot] = fetch

        def done(_task: asyncio.Task[str | None]) -> None:
            if self._in_flight.get(slot) is fetch:
                del self._in_flight[slot]

        task.add_done_callback(done)
        return fetch

    def _notaries_for(self, server_name: str) -> list[TrustedKeyServer]:
        out = []
        for notary in self.config.trusted_key_servers:
            if notary.server_name in (server_name, self.server_name):
                continue  # a notary's own keys come from it directly
            if not (notary.verify_keys or notary.server_name in KNOWN_NOTARY_KEYS or notary.accept_keys_insecurely):
                if notary.server_name not in self._warned_notaries:
                    self._warned_notaries.add(notary.server_name)
                    logger.warning("trusted_key_servers: %s has no verify_keys and accept_keys_insecurely is off;"
                                   " not asking it", notary.server_name)
                continue
            out.append(notary)
        return out

    async def _fetch(self, server_name: str, key_ids: frozenset[str], at_ts: int,
                     notaries: list[TrustedKeyServer]) -> str | None:
        """Ask the notaries, then (if they did not give a key good at `at_ts`) the server itself; store
        whatever valid keys come back. Returns the errors met when no wanted key was found."""
        errors: list[str] = []
        try:
            if notaries:
                results = await asyncio.gather(*(self._from_notary(n, server_name, key_ids, at_ts) for n in notaries),
                                               return_exceptions=True)
                for notary, result in zip(notaries, results, strict=True):
                    if isinstance(result, BaseException):
                        logger.info("key fetch of %s through notary %s failed: %s", server_name, notary.server_name,
                                    result)
                        errors.append(f"notary {notary.server_name}: {result}")
                    else:
                        await self._remember(result)
                if self._usable(server_name, key_ids, at_ts):
                    return None
            try:
                await self._remember(await self._from_server(server_name))
            except Exception as e:
                logger.info("key fetch from %s failed: %s", server_name, e)
                errors.append(f"{server_name}: {e}")
        except Exception as e:  # a bug, not the remote's fault: keep it for the waiters, don't lose it
            logger.exception("key fetch of %s failed", server_name)
            errors.append(f"internal error: {e}")
        return "; ".join(errors) or None

    async def _from_server(self, server_name: str) -> list[StoredServerKey]:
        down = self._unreachable.get(server_name)
        if down is not None and down[0] > self.clock():
            raise KeyLookupError(f"{down[1]} (not asked again yet)")
        try:
            try:
                response = await self.client.get_json(server_name, SERVER_KEYS_PATH, signed=False,
                                                     timeout=DIRECT_FETCH_TIMEOUT_S)
            except Exception as e:
                raise KeyLookupError(f"GET {SERVER_KEYS_PATH} failed: {e}") from None
            keys = parse_key_response(response, server_name, self.clock(), server_name)
        except KeyLookupError as e:
            self._unreachable.set(server_name, (self.clock() + FAILURE_CACHE_MS, str(e)))
            raise
        self._unreachable.pop(server_name)
        return keys

    async def _from_notary(self, notary: TrustedKeyServer, server_name: str, key_ids: frozenset[str],
                           at_ts: int) -> list[StoredServerKey]:
        body = {"server_keys": {server_name: {k: {"minimum_valid_until_ts": at_ts} for k in sorted(key_ids)}}}
        try:
            answer = await self.client.post_json(notary.server_name, KEY_QUERY_PATH, body,
                                                    timeout=NOTARY_FETCH_TIMEOUT_S)
        except Exception as e:
            raise KeyLookupError(f"POST {KEY_QUERY_PATH} failed: {e}") from None
        entries = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(entries, list):
            raise KeyLookupError("the answer has no server_keys list")
        fetched_ts = self.clock()
        out: list[StoredServerKey] = []
        refused: list[str] = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("server_name") != server_name:
                continue  # not what we asked about: ignored
            try:
                await self._check_notary_signature(notary, entry)
                out += parse_key_response(entry, server_name, fetched_ts, notary.server_name)
            except (KeyLookupError, SignatureVerifyError) as e:
                logger.warning("notary %s's answer about %s refused: %s", notary.server_name, server_name, e)
                refused.append(str(e))
        if refused and not out:
            raise KeyLookupError("; ".join(refused))
        return out

    async def _check_notary_signature(self, notary: TrustedKeyServer, entry: JsonDict) -> None:
        name = notary.server_name
        configured = notary.verify_keys or KNOWN_NOTARY_KEYS.get(name)
        if configured:
            signed_with = [k for k in signature_key_ids(entry, name) if k in configured]
            if not signed_with:
                raise KeyLookupError(f"not signed by notary {name} with a configured key "
                                     f"({', '.join(sorted(configured))})")
            for key_id in signed_with:
                try:
                    verify_signed_json(entry, name, key_id, decode_verify_key_base64(configured[key_id]))
                except (SignatureVerifyError, ValueError) as e:
                    raise KeyLookupError(f"notary {name}'s signature: {e}") from None
            return
        # accept_keys_insecurely: the notary's own key, fetched from it directly.
        await self.verify_json(name, entry, self.clock(), direct_only=True)

    async def _load(self, server_name: str) -> None:
        """Merge the stored keys of `server_name` (another worker may have fetched them) into memory."""
        stored = await self.store.get_keys(server_name)
        self._merge(server_name, (ServerKey.from_stored(k) for k in stored))

    async def _remember(self, keys: list[StoredServerKey]) -> None:
        if not keys:
            return
        await self.store.store_keys(keys)
        by_server: dict[str, list[ServerKey]] = {}
        for k in keys:
            by_server.setdefault(k.server_name, []).append(ServerKey.from_stored(k))
        for server_name, server_keys in by_server.items():
            self._merge(server_name, server_keys)

    def _merge(self, server_name: str, keys: Iterable[ServerKey]) -> None:
        cached = dict(self._cache.get(server_name) or {})
        for key in keys:
            old = cached.get(key.key_id)
            if old is None or key.response_valid_until_ts >= old.response_valid_until_ts:
                cached[key.key_id] = key
        self._cache.set(server_name, cached)

    # -- answering as a notary ---------------------------------------------------------------------
    async def notary_query(self, query: dict[str, dict[str, int | None]],
                           minimum_valid_until_ts: int | None = None) -> list[JsonDict]:
        """Answer a notary query: for each server, key ID -> minimum_valid_until_ts (None: now; no key
        IDs: every key, valid at `minimum_valid_until_ts` or now). Each server's responses, as it
        signed them, come from the cache when fresh enough (valid at the asked time and not past half
        their lifetime) and are else fetched from it directly; a server that cannot be reached gets
        its last cached responses, or none. Every response returned is signed by us too."""
        answers = await asyncio.gather(*(self._notary_answer(server, wanted, minimum_valid_until_ts)
                                         for server, wanted in query.items()))
        return [entry for entries in answers for entry in entries]

    async def _notary_answer(self, server_name: str, wanted: dict[str, int | None],
                             minimum_valid_until_ts: int | None) -> list[JsonDict]:
        if server_name == self.server_name:
            return [self.server_keys_response()]
        now = self.clock()
        stored = await self.store.get_keys(server_name)
        if self._notary_needs_fetch(stored, wanted, minimum_valid_until_ts, now):
            fetch = self._join_or_start(server_name, frozenset(wanted), now, True)
            error = await asyncio.shield(fetch.task)
            if error:
                logger.info("notary: fetching %s's keys failed (serving what is cached): %s", server_name, error)
            stored = await self.store.get_keys(server_name)
        chosen = [k for k in stored if not wanted or k.key_id in wanted]
        out: list[JsonDict] = []
        for key_json in dict.fromkeys(k.key_json for k in chosen):
            out.append(sign_json(json_loads(key_json), self.server_name, self.hs.signing_key))
        return out

    @staticmethod
    def _notary_needs_fetch(stored: list[StoredServerKey], wanted: dict[str, int | None],
                            minimum_valid_until_ts: int | None, now: int) -> bool:
        def fresh(k: StoredServerKey, min_valid_ts: int) -> bool:
            half_life = k.fetched_ts + (k.valid_until_ts - k.fetched_ts) // 2
            return k.valid_until_ts >= min_valid_ts and half_life >= now

        if any(k.fetched_ts > now - FAILURE_CACHE_MS for k in stored):
            return False  # asked a moment ago: asking again would give the same answer
        if not wanted:
            min_valid_ts = now if minimum_valid_until_ts is None else minimum_valid_until_ts
            return not any(k.expired_ts is None and fresh(k, min_valid_ts) for k in stored)
        by_id = {k.key_id: k for k in stored}
        return any(key_id not in by_id or not fresh(by_id[key_id], now if ts is None else ts)
                   for key_id, ts in wanted.items())

