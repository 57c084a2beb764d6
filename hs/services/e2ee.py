"""End-to-end encryption: to-device messaging, device keys, one-time/fallback keys, device-list
tracking, cross-signing and server-side key backup (client-server spec, "End-to-End Encryption",
"Send-to-Device messaging", "Server-side key backups"), and their server-server side ("Device
Management", "End-to-End Encryption", "Send-to-device messaging").

Remote users' keys are not cached: /keys/query and /keys/claim ask their servers each time (a server
that cannot be asked is named in `failures`). A remote user's device-list or cross-signing change (an
EDU) is logged in the device-list stream like a local change, so /sync tells the local users sharing a
room with them to query again. Local changes go out as `m.device_list_update` / `m.signing_key_update`
EDUs to the servers sharing a room with the user, local to-device messages for remote users as
`m.direct_to_device` EDUs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from hs.api.params import body_int, parse_int, require_str
from hs.db.stores.e2ee import E2eeStore
from hs.errors import (
    MatrixError,
    bad_json,
    bad_request,
    invalid_param,
    invalid_signature,
    missing_param,
    not_found,
    wrong_room_keys_version,
)
from hs.events.signing import SignatureVerifyError, decode_verify_key_base64, verify_signed_json
from hs.federation.client import FederationError
from hs.streams.tokens import StreamToken
from hs.util import KeyedLocks, LruCache, json_loads, random_string

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.sync import SyncConfig

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAX_TO_DEVICE_PER_SYNC = 100
CROSS_SIGNING_TYPES = {"master_key": "master", "self_signing_key": "self_signing",
                       "user_signing_key": "user_signing"}
# How long /keys/query and /keys/claim wait for other servers by default (ms; the request's `timeout`).
DEFAULT_REMOTE_TIMEOUT_MS = 10_000
MAX_REMOTE_TIMEOUT_MS = 60_000


def _is_str_dict(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def _verify_key(public_b64: str) -> Any:
    try:
        return decode_verify_key_base64(public_b64)
    except Exception:
        raise invalid_param("Invalid ed25519 public key") from None


def _check_signature(obj: JsonDict, user_id: str, key_id: str, public_b64: str) -> bool:
    try:
        verify_signed_json(obj, user_id, key_id, _verify_key(public_b64))
    except (SignatureVerifyError, MatrixError):
        return False
    return True


def _single_ed25519_key(key: JsonDict) -> tuple[str, str]:
    """(key id, public key) of a cross-signing key's only ed25519 key."""
    keys = key.get("keys")
    if not _is_str_dict(keys) or len(keys) != 1:
        raise invalid_param("A cross-signing key must have exactly one key")
    key_id, public = next(iter(keys.items()))
    if not isinstance(public, str) or not key_id.startswith("ed25519:"):
        raise invalid_param("Cross-signing keys must be ed25519 keys")
    return key_id, public


class E2eeService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = E2eeStore(hs.db)
        # (user, device) -> (one-time key counts, unused fallback key types): read by every /sync,
        # changed only by uploads, claims and device deletion, which invalidate it in every process.
        self._key_counts: LruCache[tuple[str, str], tuple[dict[str, int], list[str]]] = LruCache(100_000, name="services.e2ee.self._key_counts")
        self._key_counts_epoch = 0
        hs.caches.register("e2e_key_counts", self._drop_key_counts)
        # One device-list change of a user at a time, so their EDUs leave in stream order.
        self._device_list_locks = KeyedLocks()

    def _drop_key_counts(self, key: Any) -> None:
        self._key_counts_epoch += 1
        if key is None:
            self._key_counts.clear()
        else:
            self._key_counts.pop((key[0], key[1]))

    async def _invalidate_key_counts(self, user_id: str, device_id: str) -> None:
        await self.hs.caches.invalidate("e2e_key_counts", [user_id, device_id])

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        cached = self._key_counts.get((user_id, device_id))
        if cached is not None:
            return dict(cached[0]), list(cached[1])
        epoch = self._key_counts_epoch
        counts = await self.one_time_key_counts(user_id, device_id)
        fallback = list(await self.store.unused_fallback_key_types(user_id, device_id))
        if epoch == self._key_counts_epoch:
            self._key_counts.set((user_id, device_id), (dict(counts), list(fallback)))
        return counts, fallback

    # -- to-device ---------------------------------------------------------------------------------------
    async def send_to_device(self, sender: str, sender_device: str, event_type: str, txn_id: str,
                             body: JsonDict) -> None:
        messages = body.get("messages")
        if messages is None:
            raise missing_param("Missing 'messages'")
        if not _is_str_dict(messages) or not all(_is_str_dict(v) for v in messages.values()):
            raise bad_json("'messages' must be an object of user IDs to objects of device IDs")
        for by_device in messages.values():
            for content in by_device.values():
                if not isinstance(content, dict):
                    raise bad_json("Message content must be an object")
        rows: list[tuple[str, str, JsonDict]] = []
        remote: dict[str, JsonDict] = {}
        for user_id, by_device in messages.items():
            if _server_of(user_id) != self.hs.server_name:
                if by_device:
                    remote.setdefault(_server_of(user_id), {})[user_id] = by_device
                continue
            rows.extend(await self._local_to_device_rows(user_id, by_device))
        fresh = await self.hs.to_device_stream.send(sender, sender_device, event_type, txn_id, rows)
        if not fresh or not remote:
            return
        if not self.hs.sends_federation:
            logger.info("to-device messages for %s dropped: federation sending is off", sorted(remote))
            return
        for server, for_server in remote.items():
            # The message ID is what the receiving server deduplicates by; the transaction ID was ours.
            await self.hs.federation_outbox.send_edu(server, "m.direct_to_device", {
                "sender": sender, "type": event_type, "message_id": random_string(24), "messages": for_server})

    async def _local_to_device_rows(self, user_id: str, by_device: JsonDict) -> list[tuple[str, str, JsonDict]]:
        """(user, device, content) rows for a local user's devices; `*` is all of them, unknown
        devices get nothing."""
        devices = {d["device_id"] for d in await self.hs.user_store.get_devices(user_id)}
        rows: list[tuple[str, str, JsonDict]] = []
        for device_id, content in by_device.items():
            targets = sorted(devices) if device_id == "*" else ([device_id] if device_id in devices else [])
            rows.extend((user_id, d, content) for d in targets)
        return rows

    async def on_direct_to_device(self, origin: str, content: JsonDict) -> None:
        """An `m.direct_to_device` EDU: deliver its messages to the local devices named. A message
        whose sender is not a user of `origin` is dropped; a repeated message ID is delivered once."""
        sender, event_type = content.get("sender"), content.get("type")
        message_id, messages = content.get("message_id"), content.get("messages")
        if not (isinstance(sender, str) and isinstance(event_type, str) and isinstance(message_id, str)
                and _is_str_dict(messages)):
            logger.info("malformed m.direct_to_device from %s dropped", origin)
            return
        if _server_of(sender) != origin:
            logger.warning("m.direct_to_device from %s with sender %s dropped", origin, sender)
            return
        rows: list[tuple[str, str, JsonDict]] = []
        for user_id, by_device in messages.items():
            if _server_of(user_id) != self.hs.server_name or not _is_str_dict(by_device):
                continue
            valid = {d: c for d, c in by_device.items() if isinstance(c, dict)}
            rows.extend(await self._local_to_device_rows(user_id, valid))
        # Remote senders have no device here: "" keeps their message IDs apart from local transactions.
        await self.hs.to_device_stream.send(sender, "", event_type, message_id, rows)

    # -- device hooks (login, logout, deletion) ----------------------------------------------------------
    async def on_device_created(self, user_id: str, device_id: str) -> None:
        await self._devices_changed(user_id, [device_id])

    async def on_device_changed(self, user_id: str, device_id: str) -> None:
        """A device's display name changed: it is part of the keys others query."""
        await self._devices_changed(user_id, [device_id])

    async def on_devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        if not device_ids:
            return
        await self.store.delete_device_data(user_id, device_ids)
        for device_id in device_ids:
            await self._invalidate_key_counts(user_id, device_id)
        await self._devices_changed(user_id, device_ids, deleted=True)

    # -- device-list changes: logged here, sent to the servers sharing a room ---------------------------
    async def _devices_changed(self, user_id: str, device_ids: Sequence[str], deleted: bool = False) -> None:
        """Log a change of each device (one position each: every one is an EDU of the user's sequence)
        and send each as an `m.device_list_update` to the servers that share a room with the user."""
        async with self._device_list_locks.lock(user_id):
            positions = [(d, await self.hs.device_lists_stream.record_change(user_id, d)) for d in device_ids]
            if not self.hs.sends_federation:
                return
            servers = await self._servers_sharing_room(user_id)
            if not servers:
                return
            keys = {} if deleted else await self._local_device_keys(user_id, list(device_ids), user_id)
            for device_id, position in positions:
                if position is None:
                    continue
                prev = await self.store.last_device_change_position(user_id, before=position)
                edu: JsonDict = {"user_id": user_id, "device_id": device_id, "stream_id": position,
                                 "prev_id": [prev] if prev is not None else [], "deleted": deleted}
                key = keys.get(device_id)
                if key is not None:
                    edu["keys"] = {k: v for k, v in key.items() if k != "unsigned"}
                    name = key.get("unsigned", {}).get("device_display_name")
                    if name is not None:
                        edu["device_display_name"] = name
                await self.hs.federation_outbox.send_edus(servers, "m.device_list_update", edu)

    async def _cross_signing_changed(self, user_id: str) -> None:
        """Log a change of the user's cross-signing keys (or of their signatures) and send the public
        master and self-signing keys as an `m.signing_key_update`."""
        await self.hs.device_lists_stream.record_change(user_id)
        if not self.hs.sends_federation:
            return
        servers = await self._servers_sharing_room(user_id)
        if not servers:
            return
        edu: JsonDict = {"user_id": user_id}
        for key_type, key in (await self._public_cross_signing_keys(user_id)).items():
            edu[f"{key_type}_key"] = key
        await self.hs.federation_outbox.send_edus(servers, "m.signing_key_update", edu)

    async def _servers_sharing_room(self, user_id: str) -> set[str]:
        servers: set[str] = set()
        for room_id in await self.hs.event_store.get_rooms_for_user(user_id, ("join",)):
            servers |= await self.hs.federation_outbox.servers_in_room(room_id)
        servers.discard(self.hs.server_name)
        return servers

    async def on_remote_device_list_update(self, origin: str, content: JsonDict) -> None:
        """An `m.device_list_update` or `m.signing_key_update` EDU: the user's devices or keys changed on
        their server. Remote keys are not cached here, so the change is only logged: the local users
        sharing a room with them see them in device_lists.changed and query again."""
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or _server_of(user_id) != origin:
            logger.info("device-list EDU from %s about %r dropped", origin, user_id)
            return
        device_id = content.get("device_id")
        await self.hs.device_lists_stream.record_remote_change(
            user_id, device_id if isinstance(device_id, str) else None)

    # -- keys/upload -------------------------------------------------------------------------------------
    @staticmethod
    def _parse_key_map(body: JsonDict, name: str) -> list[tuple[str, str, JsonDict | str]]:
        raw = body.get(name)
        if raw is None:
            return []
        if not _is_str_dict(raw):
            raise bad_json(f"'{name}' must be an object")
        out: list[tuple[str, str, JsonDict | str]] = []
        for full_id, key in raw.items():
            algorithm, sep, key_id = full_id.partition(":")
            if not sep or not algorithm or not key_id:
                raise invalid_param(f"Invalid key ID {full_id!r} in '{name}': expected <algorithm>:<key id>")
            if isinstance(key, dict):
                if not isinstance(key.get("key"), str):
                    raise bad_json(f"Key {full_id!r} in '{name}' must have a string 'key'")
            elif not isinstance(key, str):
                raise bad_json(f"Key {full_id!r} in '{name}' must be a string or an object")
            out.append((algorithm, key_id, key))
        return out

    def _validate_device_keys(self, user_id: str, device_id: str, keys: Any) -> JsonDict:
        if not isinstance(keys, dict):
            raise bad_json("'device_keys' must be an object")
        if keys.get("user_id") != user_id:
            raise invalid_param("'device_keys.user_id' does not match the requesting user")
        if keys.get("device_id") != device_id:
            raise invalid_param("'device_keys.device_id' does not match the requesting device")
        algorithms = keys.get("algorithms")
        if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
            raise bad_json("'device_keys.algorithms' must be a list of strings")
        key_map = keys.get("keys")
        if not _is_str_dict(key_map) or not all(isinstance(v, str) for v in key_map.values()):
            raise bad_json("'device_keys.keys' must be an object of strings")
        signatures = keys.get("signatures")
        if not _is_str_dict(signatures) or not all(_is_str_dict(v) for v in signatures.values()):
            raise bad_json("'device_keys.signatures' must be an object")
        # The device's self-signature is not verified (nor its ed25519 key required), as in Synapse:
        # clients verify device keys themselves (the spec asks them to), and some upload keys whose
        # signature a server cannot check, or that it would refuse for no one's benefit.
        return {k: v for k, v in keys.items() if k != "unsigned"}

    async def upload_keys(self, user_id: str, device_id: str, body: JsonDict) -> JsonDict:
        """Validate everything first (so a bad upload stores nothing), then store."""
        device_keys = None
        if body.get("device_keys") is not None:
            device_keys = self._validate_device_keys(user_id, device_id, body["device_keys"])
        one_time = self._parse_key_map(body, "one_time_keys")
        fallback = self._parse_key_map(body, "fallback_keys") or self._parse_key_map(
            body, "org.matrix.msc2732.fallback_keys")
        if len({a for a, _i, _k in fallback}) != len(fallback):
            raise invalid_param("Only one fallback key per algorithm may be uploaded")

        if one_time:
            conflicts = await self.store.add_one_time_keys(
                user_id, device_id, [(a, i, k if isinstance(k, dict) else {"key": k, "_plain": True})
                                     for a, i, k in one_time])
            if conflicts:
                raise invalid_param(f"One-time key {conflicts[0]} already exists with different content")
        if device_keys is not None and await self.store.set_device_keys(user_id, device_id, device_keys):
            await self._devices_changed(user_id, [device_id])
        if fallback:
            await self.store.set_fallback_keys(
                user_id, device_id, [(a, i, k if isinstance(k, dict) else {"key": k, "_plain": True})
                                     for a, i, k in fallback])
        if one_time or fallback:
            await self._invalidate_key_counts(user_id, device_id)
        return {"one_time_key_counts": await self.one_time_key_counts(user_id, device_id)}

    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        counts = await self.store.count_one_time_keys(user_id, device_id)
        counts.setdefault("signed_curve25519", 0)
        return counts

    # -- keys/query --------------------------------------------------------------------------------------
    async def query_keys(self, requester_id: str, body: JsonDict) -> JsonDict:
        wanted = body.get("device_keys")
        if wanted is None:
            raise missing_param("Missing 'device_keys'")
        if not _is_str_dict(wanted) or not all(
                isinstance(v, list) and all(isinstance(d, str) for d in v) for v in wanted.values()):
            raise bad_json("'device_keys' must be an object of user IDs to lists of device IDs")
        result: JsonDict = {"device_keys": {}, "failures": {}, "master_keys": {}, "self_signing_keys": {},
                            "user_signing_keys": {}}
        remote: dict[str, dict[str, list[str]]] = {}
        for user_id, device_ids in wanted.items():
            if _server_of(user_id) != self.hs.server_name:
                remote.setdefault(_server_of(user_id), {})[user_id] = device_ids
                continue
            await self._add_local_keys(result, user_id, device_ids, requester_id)

        async def ask(server: str, users: dict[str, list[str]]) -> None:
            answer = await self._ask_remote(server, "query", {"device_keys": users}, _remote_timeout(body))
            for user_id, device_ids in users.items():
                _take_remote_keys(result, answer, user_id, device_ids)

        await self._ask_servers(remote, ask, result["failures"])
        return result

    async def _add_local_keys(self, result: JsonDict, user_id: str, device_ids: list[str],
                              requester_id: str | None) -> None:
        """A local user's device keys and cross-signing keys into a query `result` (user-signing key
        only for the user themself: a federation query has no requester)."""
        result["device_keys"][user_id] = await self._local_device_keys(user_id, device_ids, requester_id)
        for key_type, key in (await self._public_cross_signing_keys(user_id, requester_id)).items():
            result.setdefault(f"{key_type}_keys", {})[user_id] = key

    async def _local_device_keys(self, user_id: str, device_ids: list[str] | None,
                                 requester_id: str | None) -> JsonDict:
        """device ID -> keys (with their cross-signing signatures and the display name in `unsigned`)
        of the user's current devices that uploaded keys; all of them when `device_ids` is empty."""
        signatures = await self.store.get_signatures_for(user_id)
        keys = await self.store.get_device_keys(user_id)
        names = {d["device_id"]: d.get("display_name") for d in await self.hs.user_store.get_devices(user_id)}
        out: JsonDict = {}
        for dev, key in keys.items():
            if device_ids and dev not in device_ids:
                continue
            if dev not in names:
                continue
            key = _merge_signatures(key, [s for s in signatures if s["target_device_id"] == dev])
            key["unsigned"] = {"device_display_name": names[dev]} if names[dev] is not None else {}
            out[dev] = key
        return out

    async def _public_cross_signing_keys(self, user_id: str, requester_id: str | None = None) -> JsonDict:
        """key type (master, self_signing, and user_signing for the user themself) -> the key with the
        signatures the requester may see (the owner's, and the requester's own)."""
        signatures = await self.store.get_signatures_for(user_id)
        out: JsonDict = {}
        for key_type, key in (await self.store.get_cross_signing_keys(user_id)).items():
            if key_type == "user_signing" and user_id != requester_id:
                continue
            _kid, public = _single_ed25519_key(key)
            sigs = [s for s in signatures if s["target_device_id"] == public
                    and (s["user_id"] in (user_id, requester_id))]
            out[key_type] = _merge_signatures(key, sigs)
        return out

    # -- asking other servers ----------------------------------------------------------------------------
    async def _ask_remote(self, server: str, what: str, body: JsonDict, timeout_s: float) -> JsonDict:
        answer = await self.hs.federation_client.post_json(
            server, f"/_matrix/federation/v1/user/keys/{what}", body, timeout=timeout_s)
        if not isinstance(answer, dict):
            raise FederationError(server, f"keys/{what} answer is not an object")
        return answer

    @staticmethod
    async def _ask_servers(by_server: dict[str, Any], ask: Callable[[str, Any], Awaitable[None]],
                           failures: JsonDict) -> None:
        """Run `ask(server, what)` for every server at once; a server that fails goes in `failures`
        (spec: keyed by server name; its users are then missing from the answer)."""
        if not by_server:
            return

        async def one(server: str, what: Any) -> None:
            try:
                await ask(server, what)
            except FederationError as e:
                logger.info("E2EE keys request to %s failed: %s", server, e)
                failures[server] = {"status": e.status or 503, "message": str(e)}
            except Exception as e:
                logger.exception("E2EE keys request to %s failed", server)
                failures[server] = {"status": 503, "message": f"{type(e).__name__}"}

        await asyncio.gather(*(one(server, what) for server, what in by_server.items()))

    # -- keys/query and keys/claim from other servers ----------------------------------------------------
    def _local_users_only(self, origin: str, wanted: dict[str, Any]) -> dict[str, Any]:
        local = {u: v for u, v in wanted.items() if _server_of(u) == self.hs.server_name}
        if len(local) < len(wanted):
            logger.info("%s asked about %d users not of this server", origin, len(wanted) - len(local))
        return local

    async def federation_query_keys(self, origin: str, body: JsonDict) -> JsonDict:
        """POST /_matrix/federation/v1/user/keys/query: our users' device, master and self-signing keys
        (never a user-signing key); users of other servers are left out."""
        wanted = body.get("device_keys")
        if not _is_str_dict(wanted) or not all(
                isinstance(v, list) and all(isinstance(d, str) for d in v) for v in wanted.values()):
            raise bad_json("'device_keys' must be an object of user IDs to lists of device IDs")
        result: JsonDict = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        for user_id, device_ids in self._local_users_only(origin, wanted).items():
            await self._add_local_keys(result, user_id, device_ids, None)
        result.pop("user_signing_keys", None)
        return result

    async def federation_claim_keys(self, origin: str, body: JsonDict) -> JsonDict:
        """POST /_matrix/federation/v1/user/keys/claim: one key per (local user, device)."""
        wanted = body.get("one_time_keys")
        if not _is_str_dict(wanted) or not all(
                _is_str_dict(v) and all(isinstance(a, str) for a in v.values()) for v in wanted.values()):
            raise bad_json("'one_time_keys' must be an object of user IDs to device IDs to algorithms")
        claimed: JsonDict = {}
        for user_id, by_device in self._local_users_only(origin, wanted).items():
            await self._claim_local(claimed, user_id, by_device)
        return {"one_time_keys": claimed}

    async def federation_user_devices(self, user_id: str) -> JsonDict:
        """GET /_matrix/federation/v1/user/devices/{userId}: a local user's devices with keys, their
        public cross-signing keys, and the `stream_id` of the user's latest device-list update (what
        the next `m.device_list_update`'s `prev_id` names)."""
        if _server_of(user_id) != self.hs.server_name:
            raise bad_request(f"{user_id} is not a user of this server")
        keys = await self._local_device_keys(user_id, None, None)
        devices = []
        for device_id, key in sorted(keys.items()):
            device: JsonDict = {"device_id": device_id, "keys": {k: v for k, v in key.items() if k != "unsigned"}}
            name = key.get("unsigned", {}).get("device_display_name")
            if name is not None:
                device["device_display_name"] = name
            devices.append(device)
        answer: JsonDict = {"user_id": user_id, "stream_id": await self.store.last_device_change_position(user_id) or 0,
                            "devices": devices}
        for key_type, key in (await self._public_cross_signing_keys(user_id)).items():
            answer[f"{key_type}_key"] = key
        return answer

    # -- keys/claim --------------------------------------------------------------------------------------
    async def claim_keys(self, body: JsonDict) -> JsonDict:
        wanted = body.get("one_time_keys")
        if wanted is None:
            raise missing_param("Missing 'one_time_keys'")
        if not _is_str_dict(wanted) or not all(
                _is_str_dict(v) and all(isinstance(a, str) for a in v.values()) for v in wanted.values()):
            raise bad_json("'one_time_keys' must be an object of user IDs to device IDs to algorithms")
        claimed: JsonDict = {}
        failures: JsonDict = {}
        remote: dict[str, JsonDict] = {}
        for user_id, by_device in wanted.items():
            if _server_of(user_id) != self.hs.server_name:
                remote.setdefault(_server_of(user_id), {})[user_id] = by_device
                continue
            await self._claim_local(claimed, user_id, by_device)

        async def ask(server: str, users: JsonDict) -> None:
            answer = await self._ask_remote(server, "claim", {"one_time_keys": users}, _remote_timeout(body))
            got = answer.get("one_time_keys")
            if not _is_str_dict(got):
                return
            for user_id, by_device in users.items():
                theirs = got.get(user_id)
                if not _is_str_dict(theirs):
                    continue
                keys = {d: k for d, k in theirs.items() if d in by_device and _is_str_dict(k)}
                if keys:
                    claimed[user_id] = keys

        await self._ask_servers(remote, ask, failures)
        return {"one_time_keys": claimed, "failures": failures}

    async def _claim_local(self, claimed: JsonDict, user_id: str, by_device: dict[str, str]) -> None:
        for device_id, algorithm in by_device.items():
            found = await self.store.claim_key(user_id, device_id, algorithm)
            if found is None:
                continue
            await self._invalidate_key_counts(user_id, device_id)
            full_id, key = found
            claimed.setdefault(user_id, {})[device_id] = {full_id: _unwrap_key(key)}

    # -- device-list changes (sync and keys/changes) -----------------------------------------------------
    async def device_list_changes(self, user_id: str, since: StreamToken, upto: StreamToken,
                                  ) -> tuple[list[str], list[str]]:
        """(changed, left): users sharing a room with `user_id` whose devices changed or who newly share a
        room within the range, and users who no longer share any room."""
        dl_from, dl_to = since.get("device_lists"), upto.get("device_lists")
        events = self.hs.events_stream
        # The union of every room's range (each room's is its writer's); rows are filtered per room.
        ev_from, ev_to = events.bounds(since, upto)
        if ev_to > ev_from and not self.hs.event_store.any_membership_changed_after(ev_from):
            ev_to = ev_from  # messages only: no one joined or left, so only device changes matter
        if dl_to <= dl_from and ev_to <= ev_from:
            return [], []  # the common case: nothing to look at
        sharers = await self.store.get_users_sharing_room(user_id)
        changed: set[str] = set()
        left: set[str] = set()
        if dl_to > dl_from:
            for other in await self.store.get_users_with_device_changes(dl_from, dl_to):
                if other == user_id or other in sharers:
                    changed.add(other)
        if ev_to > ev_from:
            mine = [r for r in await self.hs.event_store.get_membership_changes(user_id, ev_from, ev_to)
                    if events.in_range(r["room_id"], r["stream_ordering"], since, upto)]
            current_rooms = set(await self.hs.event_store.get_rooms_for_user(user_id, ("join",)))
            rooms = sorted(current_rooms | {r["room_id"] for r in mine})
            last_mine: dict[str, str] = {}
            for r in mine:
                last_mine[r["room_id"]] = r["membership"]
            joined_now = [r for r, m in last_mine.items() if m == "join" and r in current_rooms]
            left_rooms = [r for r, m in last_mine.items() if m != "join" and r not in current_rooms]
            changed |= await self.store.get_joined_members(joined_now) - {user_id}
            candidates_left = await self.store.get_joined_members(left_rooms)
            for row in await self.store.get_membership_changes_in_rooms(rooms, ev_from, ev_to):
                if row["user_id"] == user_id or not events.in_range(row["room_id"], row["stream_ordering"],
                                                                     since, upto):
                    continue
                if row["membership"] == "join":
                    changed.add(row["user_id"])
                elif row["membership"] in ("leave", "ban"):
                    candidates_left.add(row["user_id"])
            left = {u for u in candidates_left if u not in sharers and u != user_id}
        changed = {u for u in changed if u == user_id or u in sharers} - left
        return sorted(changed), sorted(left)

    # -- sync --------------------------------------------------------------------------------------------
    async def add_to_device(self, config: SyncConfig, upto: StreamToken, body: JsonDict) -> tuple[bool, int | None]:
        """The to-device section of /sync: the device's messages in the range, at most
        MAX_TO_DEVICE_PER_SYNC of them. Returns whether there were any, and the position of the last
        one sent when more may wait (the next sync continues right after it)."""
        user_id, device_id, since = config.user_id, config.device_id, config.since
        if not device_id:
            return False, None
        after = since.get("to_device") if since is not None else 0
        if after:
            # The client has the messages up to its token: they can go.
            await self.store.delete_to_device_messages(user_id, device_id, after)
        end = upto.get("to_device")
        if end <= after:
            return False, None
        rows = await self.store.get_to_device_messages(user_id, device_id, after, end, MAX_TO_DEVICE_PER_SYNC)
        if not rows:
            return False, None
        body["to_device"] = {"events": [{"sender": r["sender"], "type": r["type"], "content": r["content"]}
                                        for r in rows]}
        reached = int(rows[-1]["stream_id"]) if len(rows) == MAX_TO_DEVICE_PER_SYNC else None
        return True, reached

    async def add_device_lists(self, config: SyncConfig, next_token: StreamToken, body: JsonDict) -> bool:
        """The device-lists section of /sync: who changed devices or stopped sharing a room with the
        user since the token, and this device's one-time and fallback key counts."""
        user_id, device_id, since = config.user_id, config.device_id, config.since
        if device_id:
            counts, fallback_types = await self.key_counts(user_id, device_id)
            body["device_one_time_keys_count"] = counts
            body["device_unused_fallback_key_types"] = fallback_types
        if since is None:
            return False
        changed, left = await self.device_list_changes(user_id, since, next_token)
        body["device_lists"] = {"changed": changed, "left": left}
        return bool(changed or left)

    # -- cross-signing -----------------------------------------------------------------------------------
    async def cross_signing_needs_uia(self, user_id: str, body: JsonDict) -> bool:
        """UIA is needed unless the user has no master key yet, or the upload repeats the stored keys."""
        existing = await self.store.get_cross_signing_keys(user_id)
        if "master" not in existing:
            return False
        for field, key_type in CROSS_SIGNING_TYPES.items():
            if field in body and body[field] is not None:
                if not isinstance(body[field], dict):
                    return True
                new = {k: v for k, v in body[field].items() if k != "signatures"}
                old = {k: v for k, v in existing.get(key_type, {}).items() if k != "signatures"}
                if new != old:
                    return True
        return False

    async def upload_cross_signing_keys(self, user_id: str, body: JsonDict) -> None:
        existing = await self.store.get_cross_signing_keys(user_id)
        new: dict[str, tuple[str, JsonDict]] = {}
        for field, key_type in CROSS_SIGNING_TYPES.items():
            key = body.get(field)
            if key is None:
                continue
            if not isinstance(key, dict):
                raise bad_json(f"'{field}' must be an object")
            if key.get("user_id") != user_id:
                raise invalid_param(f"'{field}.user_id' does not match the requesting user")
            usage = key.get("usage")
            if not isinstance(usage, list) or key_type not in usage:
                raise invalid_param(f"'{field}.usage' must include {key_type!r}")
            if "signatures" in key and not (_is_str_dict(key["signatures"]) and all(
                    _is_str_dict(v) for v in key["signatures"].values())):
                raise bad_json(f"'{field}.signatures' must be an object")
            _kid, public = _single_ed25519_key(key)
            _verify_key(public)
            new[key_type] = (public, key)
        if not new:
            raise missing_param("No cross-signing keys given")
        if "master" in new:
            master_kid, master_pub = _single_ed25519_key(new["master"][1])
        elif "master" in existing:
            master_kid, master_pub = _single_ed25519_key(existing["master"])
        else:
            raise missing_param("No master key available to sign the other keys")
        for key_type in ("self_signing", "user_signing"):
            if key_type in new and not _check_signature(new[key_type][1], user_id, master_kid, master_pub):
                raise invalid_signature(f"The {key_type} key is not signed by the master key")
        await self.store.set_cross_signing_keys(user_id, new)
        await self._cross_signing_changed(user_id)

    async def upload_signatures(self, user_id: str, body: JsonDict) -> JsonDict:
        if not all(isinstance(v, dict) and all(isinstance(o, dict) for o in v.values()) for v in body.values()):
            raise bad_json("The body must be an object of user IDs to key IDs to signed objects")
        failures: JsonDict = {}
        rows: list[tuple[str, str, str, str, str]] = []
        own_cross = await self.store.get_cross_signing_keys(user_id)
        own_devices = await self.store.get_device_keys(user_id)
        # What changed: own devices' keys, the own master key, or only the signer's view of others.
        signed_devices: set[str] = set()
        master_signed = False
        others_signed = False
        remote_masters: dict[str, JsonDict | None] = {}

        def fail(target_user: str, target: str, errcode: str, error: str) -> None:
            failures.setdefault(target_user, {})[target] = {"status": 400, "errcode": errcode, "error": error}

        def cross_signed(target_user: str, target: str, obj: JsonDict, sigs: JsonDict, kind: str) -> str | None:
            """The ID of our `kind` key (self_signing, user_signing) if it signed `obj`; else None, the
            failure recorded."""
            key = own_cross.get(kind)
            name = kind.replace("_", "-")
            if key is None:
                fail(target_user, target, "M_MISSING_PARAM", f"No {name} key uploaded")
                return None
            kid, pub = _single_ed25519_key(key)
            if kid not in sigs or not _check_signature(obj, user_id, kid, pub):
                fail(target_user, target, "M_INVALID_SIGNATURE", f"Invalid {name} signature")
                return None
            return kid

        for target_user, objects in body.items():
            for target, obj in objects.items():
                sigs = (obj.get("signatures") or {}).get(user_id) if isinstance(obj.get("signatures"), dict) else None
                if not isinstance(sigs, dict) or not sigs:
                    fail(target_user, target, "M_INVALID_SIGNATURE", "No signature from the uploading user")
                    continue
                if target_user == user_id:
                    master = own_cross.get("master")
                    master_pub = _single_ed25519_key(master)[1] if master is not None else None
                    if target == master_pub:
                        # A device signs its user's master key.
                        ok = False
                        for key_id, sig in sigs.items():
                            dev = key_id.removeprefix("ed25519:")
                            dev_key = own_devices.get(dev, {}).get("keys", {}).get(key_id)
                            if isinstance(dev_key, str) and _check_signature(obj, user_id, key_id, dev_key):
                                rows.append((user_id, key_id, user_id, target, str(sig)))
                                ok = True
                        if not ok:
                            fail(target_user, target, "M_INVALID_SIGNATURE", "Invalid signature")
                        else:
                            master_signed = True
                        continue
                    if target not in own_devices:
                        fail(target_user, target, "M_NOT_FOUND", "Unknown device or key")
                        continue
                    kind = "self_signing"  # our own device
                else:
                    if _server_of(target_user) != self.hs.server_name:
                        if target_user not in remote_masters:
                            remote_masters[target_user] = await self._remote_master_key(target_user)
                        their = remote_masters[target_user]
                    else:
                        their = (await self.store.get_cross_signing_keys(target_user)).get("master")
                    if their is None or _single_ed25519_key(their)[1] != target:
                        fail(target_user, target, "M_NOT_FOUND", "Unknown master key")
                        continue
                    kind = "user_signing"  # another user's master key
                kid = cross_signed(target_user, target, obj, sigs, kind)
                if kid is not None:
                    rows.append((user_id, kid, target_user, target, str(sigs[kid])))
                    if kind == "self_signing":
                        signed_devices.add(target)
                    else:
                        others_signed = True
        if rows:
            await self.store.add_signatures(rows)
        if signed_devices:
            await self._devices_changed(user_id, sorted(signed_devices))
        if master_signed:
            await self._cross_signing_changed(user_id)
        elif others_signed and not signed_devices:
            # A user-signing signature is seen by the signer alone: their other devices need to know.
            await self.hs.device_lists_stream.record_change(user_id)
        return {"failures": failures}

    async def _remote_master_key(self, user_id: str) -> JsonDict | None:
        """A remote user's master key as their server gives it (None if it cannot be had)."""
        server = _server_of(user_id)
        result: JsonDict = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        try:
            answer = await self._ask_remote(server, "query", {"device_keys": {user_id: []}},
                                            DEFAULT_REMOTE_TIMEOUT_MS / 1000)
        except FederationError as e:
            logger.info("master key of %s not fetched: %s", user_id, e)
            return None
        _take_remote_keys(result, answer, user_id, [])
        key = result["master_keys"].get(user_id)
        return key if isinstance(key, dict) else None

    # -- key backup --------------------------------------------------------------------------------------
    @staticmethod
    def parse_version(raw: str | None) -> int:
        """A backup version from a path or query; what is not a version we could have given is 404."""
        if raw is None:
            raise missing_param("Missing 'version'")
        try:
            return parse_int(raw, "version", error=ValueError)
        except ValueError:
            raise not_found(f"Unknown backup version {raw[:40]!r}") from None

    async def _version_info(self, user_id: str, version: int | None) -> JsonDict:
        row = await self.store.get_backup_version(user_id, version)
        if row is None:
            raise not_found("No current backup version" if version is None else "Unknown backup version")
        return row

    async def get_backup_version(self, user_id: str, version: int | None) -> JsonDict:
        row = await self._version_info(user_id, version)
        v = int(row["version"])
        return {"algorithm": row["algorithm"], "auth_data": json_loads(row["auth_data"]), "version": str(v),
                "etag": str(row["etag"]), "count": await self.store.count_backup_keys(user_id, v)}

    @staticmethod
    def _validate_version_body(body: JsonDict) -> tuple[str, Any]:
        """(algorithm, auth_data): any algorithm name and any auth_data, as Synapse takes them (both
        are the clients' business: they store, read and check them; the spec's algorithm and object
        shape are not enforced). Both must be present."""
        algorithm = require_str(body, "algorithm")
        if "auth_data" not in body or body["auth_data"] is None:
            raise missing_param("Missing 'auth_data'")
        assert algorithm is not None
        return algorithm, body["auth_data"]

    async def create_backup_version(self, user_id: str, body: JsonDict) -> JsonDict:
        algorithm, auth_data = self._validate_version_body(body)
        version = await self.store.create_backup_version(user_id, algorithm, auth_data)
        return {"version": str(version)}

    async def update_backup_version(self, user_id: str, version: int, body: JsonDict) -> None:
        algorithm, auth_data = self._validate_version_body(body)
        if "version" in body and body["version"] != str(version):
            raise invalid_param("'version' in the body does not match the version in the path")
        row = await self._version_info(user_id, version)
        if row["algorithm"] != algorithm:
            raise invalid_param("The algorithm of a backup version cannot be changed")
        await self.store.update_backup_version(user_id, version, auth_data)

    async def delete_backup_version(self, user_id: str, version: int) -> None:
        if not await self.store.delete_backup_version(user_id, version):
            raise not_found("Unknown backup version")

    @staticmethod
    def _key_data(data: Any) -> JsonDict:
        if not isinstance(data, dict):
            raise bad_json("Key backup data must be an object")
        for field in ("first_message_index", "forwarded_count"):  # BIGINT columns
            if body_int(data, field) is None:
                raise bad_json(f"'{field}' must be a non-negative integer")
        if not isinstance(data.get("is_verified"), bool):
            raise bad_json("'is_verified' must be a boolean")
        # Any JSON value, as Synapse stores it (it is opaque to servers; the spec's is an object).
        if data.get("session_data") is None:
            raise missing_param("Missing 'session_data'")
        return data

    def parse_backup_upload(self, body: JsonDict, room_id: str | None,
                            session_id: str | None) -> list[tuple[str, str, JsonDict]]:
        if room_id is not None and session_id is not None:
            return [(room_id, session_id, self._key_data(body))]
        if room_id is not None:
            rooms: Any = {room_id: body}
        else:
            rooms = body.get("rooms")
            if not _is_str_dict(rooms):
                raise bad_json("'rooms' must be an object")
        out: list[tuple[str, str, JsonDict]] = []
        for rid, room in rooms.items():
            sessions = room.get("sessions") if isinstance(room, dict) else None
            if not _is_str_dict(sessions):
                raise bad_json("'sessions' must be an object")
            out.extend((rid, sid, self._key_data(data)) for sid, data in sessions.items())
        return out

    async def put_backup_keys(self, user_id: str, version: int, keys: list[tuple[str, str, JsonDict]]) -> JsonDict:
        result = await self.store.put_backup_keys(user_id, version, keys)
        if result is None:
            current = await self.store.get_backup_version(user_id, None)
            if current is None or await self.store.get_backup_version(user_id, version) is None:
                raise not_found(f"Unknown backup version {version}")
            raise wrong_room_keys_version(str(current["version"]))
        etag, count = result
        return {"etag": str(etag), "count": count}

    async def get_backup_keys(self, user_id: str, version: int, room_id: str | None,
                              session_id: str | None) -> JsonDict:
        await self._version_info(user_id, version)
        rows = await self.store.get_backup_keys(user_id, version, room_id, session_id)

        def data(r: JsonDict) -> JsonDict:
            return {"first_message_index": int(r["first_message_index"]),
                    "forwarded_count": int(r["forwarded_count"]), "is_verified": bool(r["is_verified"]),
                    "session_data": json_loads(r["session_data"])}

        if room_id is not None and session_id is not None:
            if not rows:
                raise not_found("No room_keys found")
            return data(rows[0])
        if room_id is not None:
            return {"sessions": {r["session_id"]: data(r) for r in rows}}
        rooms: JsonDict = {}
        for r in rows:
            rooms.setdefault(r["room_id"], {"sessions": {}})["sessions"][r["session_id"]] = data(r)
        return {"rooms": rooms}

    async def delete_backup_keys(self, user_id: str, version: int, room_id: str | None,
                                 session_id: str | None) -> JsonDict:
        await self._version_info(user_id, version)
        etag, count = await self.store.delete_backup_keys(user_id, version, room_id, session_id)
        return {"etag": str(etag), "count": count}


def _remote_timeout(body: JsonDict) -> float:
    """Seconds to wait for other servers: the request's `timeout` (ms), within bounds."""
    raw = body.get("timeout", DEFAULT_REMOTE_TIMEOUT_MS)
    ms = raw if isinstance(raw, int) and not isinstance(raw, bool) else DEFAULT_REMOTE_TIMEOUT_MS
    return max(1_000, min(ms, MAX_REMOTE_TIMEOUT_MS)) / 1000


def _take_remote_keys(result: JsonDict, answer: JsonDict, user_id: str, device_ids: list[str]) -> None:
    """A remote user's keys from their server's keys/query answer into `result`: only keys that name
    that user (and the device they are listed under), so a server answers only for what it was asked."""
    devices = answer.get("device_keys", {}).get(user_id) if _is_str_dict(answer.get("device_keys")) else None
    out: JsonDict = {}
    if _is_str_dict(devices):
        for device_id, key in devices.items():
            if device_ids and device_id not in device_ids:
                continue
            if _is_str_dict(key) and key.get("user_id") == user_id and key.get("device_id") == device_id:
                out[device_id] = key
    result["device_keys"][user_id] = out
    for field in ("master_keys", "self_signing_keys"):
        keys = answer.get(field)
        key = keys.get(user_id) if _is_str_dict(keys) else None
        if _is_str_dict(key) and key.get("user_id") == user_id:
            result[field][user_id] = key


def _merge_signatures(key: JsonDict, rows: list[JsonDict]) -> JsonDict:
    out = dict(key)
    sigs = {u: dict(s) for u, s in (key.get("signatures") or {}).items()}
    for r in rows:
        sigs.setdefault(r["user_id"], {})[r["key_id"]] = r["signature"]
    if sigs:
        out["signatures"] = sigs
    return out


def _unwrap_key(key: JsonDict) -> JsonDict | str:
    """Keys uploaded as plain strings are stored wrapped; hand them back as they came."""
    if key.get("_plain"):
        return str(key["key"])
    return key
