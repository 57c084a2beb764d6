"""End-to-bridge encryption: a bridge written with mautrix-python's `mautrix.appservice` keeps an encrypted
conversation with a matrix-nio user, through the homeserver's real endpoints and appservice transactions
(SQLite and PostgreSQL).

The bridge's registration asks for ephemeral events and to-device messages (`receive_ephemeral`, MSC2409),
device lists and one-time key counts (`org.matrix.msc3202`) and device management (`io.element.msc4190`).
Its bot gets a device with `PUT /devices/{deviceId}` as the service, then acts as that device (`device_id`
beside `user_id`, which mautrix sends as `as_device_id`) to upload its keys, query and claim the nio
user's keys, and send to-device messages. The nio user's room key reaches the bridge as a to-device
message inside an appservice transaction, and the encrypted room event in another; the bridge's own room
key reaches nio over Olm through a one-time key the bridge claimed as its masqueraded device. A puppet
(registered with inhibit_login, as MSC4190 requires) gets a device the same way: the transactions count
its one-time keys down to none and its fallback key from unused to used, and the service deletes the
device without UIA.

Why the bridge's Olm/Megolm here is vodozemac's and not `mautrix.crypto`'s OlmMachine: mautrix.crypto
imports python-olm (libolm's binding) and base58, which matrix-nio 0.26 no longer brings (it uses
vodozemac). vodozemac is what nio already installs, so this bridge speaks the protocol itself with it:
the same Olm and Megolm messages an OlmMachine sends, over the same routes, with every field checked.
test_mautrix_e2ee_olmmachine.py runs mautrix's OlmMachine itself where python-olm is installed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nio
import pytest
import vodozemac
import yaml
from mautrix.api import Method
from mautrix.api import Path as MPath
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import (
    ASToDeviceEvent,
    DeviceID,
    DeviceLists,
    DeviceOTKCount,
    Event,
    EventType,
    RoomID,
    UserID,
)
from unpaddedbase64 import decode_base64, encode_base64

from tests.clients.bridges import fast_backoff, nio_receive, until
from tests.clients.test_nio_e2ee import ENCRYPTION_STATE, Target, _e2ee_client, _register
from tests.harness import TestHomeServer, ok, user
from tests.services import free_port

assert nio.crypto.ENCRYPTION_ENABLED, "matrix-nio[e2e] (encryption support) is not installed"

AS_TOKEN = "e2ee-bridge-as-token"
HS_TOKEN = "e2ee-bridge-hs-token"
BOT = "@e2bot:test.local"
DEVICE = "BRIDGEDEVICE"
OLM = "m.olm.v1.curve25519-aes-sha2"
MEGOLM = "m.megolm.v1.aes-sha2"


class MemoryASStore(ASStateStore, MemoryStateStore):
    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


def canonical(obj: Any) -> bytes:
    """Canonical JSON, what Matrix signatures are made over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class E2EEBridge:
    """A mautrix AppService whose bot owns one device (MSC4190) and does Olm/Megolm with vodozemac. It
    records what the transactions carry: to-device messages, device list changes, one-time key counts,
    and the room events it decrypted."""

    def __init__(self, base_url: str, port: int) -> None:
        self.port = port
        self.account = vodozemac.Account()
        self.olm_sessions: dict[str, list[vodozemac.Session]] = {}  # sender curve25519 key -> sessions
        self.inbound: dict[str, vodozemac.InboundGroupSession] = {}  # megolm session ID -> session
        self.to_device: list[ASToDeviceEvent] = []
        self.room_keys: list[dict[str, Any]] = []  # decrypted m.room_key payloads
        self.decrypted: list[dict[str, Any]] = []  # decrypted room events' payloads
        self.encrypted_events: list[Event] = []
        self.changed_users: list[str] = []
        self.otk_counts: list[int] = []
        self.appservice = AppService(
            server=base_url, domain="test.local", as_token=AS_TOKEN, hs_token=HS_TOKEN, bot_localpart="e2bot",
            id="e2ee-bridge", state_store=MemoryASStore(), ephemeral_events=True, encryption_events=True,
            log="test.mautrix.e2ee")
        self.appservice.matrix_event_handler(self.on_event)
        self.appservice.to_device_handler = self.on_to_device
        self.appservice.device_list_handler = self.on_device_lists
        self.appservice.otk_handler = self.on_otk_counts
        self.raw_txns: list[dict[str, Any]] = []  # what each transaction carried besides its events
        handle = self.appservice.handle_transaction

        async def record(txn_id: str, *, extra_data: Any, **kwargs: Any) -> Any:
            # mautrix has taken the keys it knows out of extra_data: the OTK counts come parsed.
            counts = kwargs.get("otk_counts") or {}
            self.raw_txns.append({**extra_data, "otk_counts": {
                user_id: {device_id: count.signed_curve25519 for device_id, count in devices.items()}
                for user_id, devices in counts.items()}})
            return await handle(txn_id, extra_data=extra_data, **kwargs)

        self.appservice.handle_transaction = record  # type: ignore[method-assign]

    @property
    def api(self) -> Any:
        return self.appservice.intent.api

    @property
    def curve25519(self) -> str:
        return self.account.curve25519_key.to_base64()

    @property
    def ed25519(self) -> str:
        return self.account.ed25519_key.to_base64()

    async def start(self) -> None:
        await self.appservice.start(host="127.0.0.1", port=self.port)

    async def stop(self) -> None:
        await self.appservice.stop()

    # -- transactions ------------------------------------------------------------------------------------
    async def on_to_device(self, event: ASToDeviceEvent) -> None:
        self.to_device.append(event)
        if event.type != EventType.TO_DEVICE_ENCRYPTED or event.to_device_id != DEVICE:
            return
        content = event.content.serialize()
        ours = content["ciphertext"].get(self.curve25519)
        if content.get("algorithm") != OLM or ours is None:
            return
        payload = json.loads(self._olm_decrypt(content["sender_key"], ours["type"], ours["body"]))
        # Olm's payload names who it is for and from (the spec's checks): this bot and device.
        assert payload["recipient"] == BOT and payload["recipient_keys"]["ed25519"] == self.ed25519
        assert payload["sender"] == event.sender
        if payload["type"] == "m.room_key" and payload["content"]["algorithm"] == MEGOLM:
            session = vodozemac.InboundGroupSession(vodozemac.SessionKey(payload["content"]["session_key"]))
            self.inbound[session.session_id] = session
            self.room_keys.append(payload)

    def _olm_decrypt(self, sender_key: str, msg_type: int, body: str) -> bytes:
        message = vodozemac.AnyOlmMessage.from_parts(msg_type, decode_base64(body))
        for session in self.olm_sessions.get(sender_key, []):
            pre_key = message.to_pre_key()
            if msg_type == 0 and pre_key is not None and not session.session_matches(pre_key):
                continue
            return session.decrypt(message)
        pre_key = message.to_pre_key()
        assert pre_key is not None, "a normal Olm message for a session the bridge does not have"
        session, plaintext = self.account.create_inbound_session(
            vodozemac.Curve25519PublicKey.from_base64(sender_key), pre_key)
        self.olm_sessions.setdefault(sender_key, []).append(session)
        return plaintext

    async def on_device_lists(self, lists: DeviceLists) -> None:
        self.changed_users.extend(lists.changed)

    async def on_otk_counts(self, counts: dict[UserID, dict[DeviceID, DeviceOTKCount]]) -> None:
        ours = counts.get(UserID(BOT), {}).get(DeviceID(DEVICE))
        if ours is not None:
            self.otk_counts.append(ours.signed_curve25519)

    async def on_event(self, event: Event) -> None:
        if event.type == EventType.ROOM_ENCRYPTED:
            self.encrypted_events.append(event)
            content = event.content.serialize()
            session = self.inbound.get(content["session_id"])
            if session is not None:
                decrypted = session.decrypt(vodozemac.MegolmMessage.from_base64(content["ciphertext"]))
                payload = json.loads(decrypted.plaintext)
                assert payload["room_id"] == event.room_id
                self.decrypted.append({"sender": event.sender, **payload})

    # -- acting as the bot's device ------------------------------------------------------------------------
    async def create_device(self) -> None:
        """MSC4190: the service creates its bot's device (no access token comes back), then acts as it."""
        await self.api.request(Method.PUT, MPath.v3.devices[DEVICE], {"display_name": "bridge"})
        self.api.as_device_id = DeviceID(DEVICE)

    def _signed(self, obj: dict[str, Any]) -> dict[str, Any]:
        signature = self.account.sign(canonical(obj)).to_base64()
        return {**obj, "signatures": {BOT: {f"ed25519:{DEVICE}": signature}}}

    async def upload_keys(self, one_time_keys: int = 10) -> dict[str, int]:
        device_keys = self._signed({
            "user_id": BOT, "device_id": DEVICE, "algorithms": [OLM, MEGOLM],
            "keys": {f"curve25519:{DEVICE}": self.curve25519, f"ed25519:{DEVICE}": self.ed25519}})
        self.account.generate_one_time_keys(one_time_keys)
        otks = {f"signed_curve25519:{key_id}": self._signed({"key": key.to_base64()})
                for key_id, key in self.account.one_time_keys.items()}
        counts = await self.api.request(Method.POST, MPath.v3.keys.upload,
                                        {"device_keys": device_keys, "one_time_keys": otks})
        self.account.mark_keys_as_published()
        return dict(counts["one_time_key_counts"])

    async def send_encrypted(self, room_id: str, user_id: str, body: str) -> str:
        """Encrypt `body` for every device of `user_id`: their keys queried and one-time keys claimed as
        the bot's device, the new Megolm room key sent to each over Olm (to-device), then the event."""
        queried = await self.api.request(Method.POST, MPath.v3.keys.query, {"device_keys": {user_id: []}})
        devices: dict[str, Any] = queried["device_keys"][user_id]
        assert devices, f"no device keys for {user_id}"
        claimed = await self.api.request(Method.POST, MPath.v3.keys.claim, {
            "one_time_keys": {user_id: {d: "signed_curve25519" for d in devices}}})
        group = vodozemac.GroupSession()
        messages: dict[str, Any] = {}
        for device_id, keys in devices.items():
            identity = keys["keys"][f"curve25519:{device_id}"]
            their_ed25519 = keys["keys"][f"ed25519:{device_id}"]
            (otk,) = claimed["one_time_keys"][user_id][device_id].values()
            session = self.account.create_outbound_session(
                vodozemac.Curve25519PublicKey.from_base64(identity),
                vodozemac.Curve25519PublicKey.from_base64(otk["key"]))
            payload = {"type": "m.room_key", "sender": BOT, "sender_device": DEVICE,
                       "keys": {"ed25519": self.ed25519}, "recipient": user_id,
                       "recipient_keys": {"ed25519": their_ed25519},
                       "content": {"algorithm": MEGOLM, "room_id": room_id, "session_id": group.session_id,
                                   "session_key": group.session_key.to_base64()}}
            msg_type, ciphertext = session.encrypt(canonical(payload)).to_parts()
            messages[device_id] = {"algorithm": OLM, "sender_key": self.curve25519,
                                   "ciphertext": {identity: {"type": msg_type, "body": encode_base64(ciphertext)}}}
        await self.api.request(Method.PUT, MPath.v3.sendToDevice["m.room.encrypted"][f"key{time.monotonic_ns()}"],
                               {"messages": {user_id: messages}})
        plaintext = {"type": "m.room.message", "room_id": room_id, "content": {"msgtype": "m.text", "body": body}}
        megolm = group.encrypt(canonical(plaintext)).to_base64()
        sent = await self.api.request(
            Method.PUT, MPath.v3.rooms[room_id].send["m.room.encrypted"][f"m{time.monotonic_ns()}"],
            {"algorithm": MEGOLM, "sender_key": self.curve25519, "device_id": DEVICE,
             "session_id": group.session_id, "ciphertext": megolm})
        return str(sent["event_id"])


def registration(tmp_path: Path, port: int) -> str:
    data = {"id": "e2ee-bridge", "url": f"http://127.0.0.1:{port}", "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
            "sender_localpart": "e2bot", "rate_limited": False, "receive_ephemeral": True,
            "org.matrix.msc3202": True, "io.element.msc4190": True,
            "namespaces": {"users": [{"regex": "@e2b_.*:test\\.local", "exclusive": True}],
                           "aliases": [], "rooms": []}}
    path = tmp_path / "e2ee-bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)




@pytest.fixture
async def bridge(make_server: Any, engine: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Any:
    fast_backoff(monkeypatch)
    port = free_port()
    server = await make_server(engine, app_service_config_files=[registration(tmp_path, port)])
    b = E2EEBridge(server.base_url, port)
    await b.start()
    yield server, b
    await b.stop()




async def test_encrypted_conversation_between_bridge_and_nio(bridge: tuple[TestHomeServer, E2EEBridge],
                                                             tmp_path: Path) -> None:
    server, b = bridge
    # The bot's device, made by the service (MSC4190), and its keys uploaded as that device.
    await b.create_device()
    counts = await b.upload_keys(10)
    assert counts["signed_curve25519"] == 10

    await _register(Target(server.base_url), "alice")
    alice = await _e2ee_client(Target(server.base_url), "alice", tmp_path / "alice", "alice-laptop")
    try:
        created = await alice.room_create(name="Bridged", invite=[BOT], initial_state=[ENCRYPTION_STATE])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await b.appservice.intent.join_room(room_id)
        await alice.sync(timeout=0)
        assert alice.rooms[room_id].encrypted and BOT in alice.rooms[room_id].users

        # nio -> bridge: nio queries the bot's device keys, claims one of its one-time keys and sends the
        # Megolm room key over Olm; the bridge gets it as a to-device message in a transaction, and the
        # m.room.encrypted event in a transaction too.
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello, bridge"},
                                     ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        await until(lambda: any(d.get("content", {}).get("body") == "hello, bridge" for d in b.decrypted),
                    "the bridge to decrypt nio's message")
        assert b.decrypted[-1]["sender"] == alice.user_id
        (key,) = b.room_keys
        assert key["sender"] == alice.user_id and key["sender_device"] == alice.device_id
        assert key["keys"]["ed25519"] == alice.olm.account.identity_keys["ed25519"]
        delivered = [e for e in b.to_device if e.type == EventType.TO_DEVICE_ENCRYPTED]
        assert delivered[0].to_user_id == BOT and delivered[0].to_device_id == DEVICE
        # MSC3202: the claim used one of the device's one-time keys, and the transactions say so.
        await until(lambda: bool(b.otk_counts) and b.otk_counts[-1] == 9, "a one-time key count of 9")

        # bridge -> nio: the bridge claims alice's one-time key as its masqueraded device and sends its own
        # room key over Olm, then the Megolm event.
        event_id = await b.send_encrypted(room_id, alice.user_id, "hi alice, from the bridge")
        ev = await nio_receive(alice, room_id, "hi alice, from the bridge")
        assert ev.decrypted and ev.sender == BOT and ev.event_id == event_id

        # MSC3202: alice's device list changes (a new device name) reach the bridge, which shares a room.
        status = await alice.update_device(alice.device_id, {"display_name": "alice-renamed"})
        assert isinstance(status, nio.UpdateDeviceResponse), status
        await until(lambda: alice.user_id in b.changed_users, "alice in device_lists.changed")

        # A second message in the same nio session decrypts with the room key the bridge already has.
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "and again"},
                                     ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        await until(lambda: any(d.get("content", {}).get("body") == "and again" for d in b.decrypted),
                    "the second message")
        assert len(b.room_keys) == 1
        assert all(e.content.serialize().get("session_id") in b.inbound for e in b.encrypted_events
                   if e.sender == alice.user_id)
    finally:
        await alice.close()


def _fallback_types(txns: list[dict[str, Any]], user_id: str, device_id: str) -> list[list[str]]:
    key = "org.matrix.msc3202.device_unused_fallback_key_types"
    return [t[key][user_id][device_id] for t in txns if device_id in t.get(key, {}).get(user_id, {})]


def _otk_counts(txns: list[dict[str, Any]], user_id: str, device_id: str) -> list[int]:
    return [t["otk_counts"][user_id][device_id] for t in txns if device_id in t["otk_counts"].get(user_id, {})]


async def test_puppet_device_fallback_key_and_deletion(bridge: tuple[TestHomeServer, E2EEBridge]) -> None:
    """A puppet (a namespace user registered with inhibit_login, which MSC4190 requires) gets a device and
    keys the same way; the transactions count its one-time keys down to none and report its fallback key
    unused, then used; the service deletes the device without UIA and its keys go with it."""
    server, b = bridge
    puppet_id = "@e2b_carol:test.local"
    puppet = b.appservice.intent.user(UserID(puppet_id))
    await puppet.ensure_registered()
    await puppet.api.request(Method.PUT, MPath.v3.devices["PUPPETDEV"], {"display_name": "carol's bridge"})
    puppet.api.as_device_id = DeviceID("PUPPETDEV")
    account = vodozemac.Account()

    def signed(obj: dict[str, Any]) -> dict[str, Any]:
        return {**obj, "signatures": {puppet_id: {"ed25519:PUPPETDEV": account.sign(canonical(obj)).to_base64()}}}

    account.generate_one_time_keys(3)
    fallback = vodozemac.Curve25519SecretKey().public_key().to_base64()
    uploaded = await puppet.api.request(Method.POST, MPath.v3.keys.upload, {
        "device_keys": signed({"user_id": puppet_id, "device_id": "PUPPETDEV", "algorithms": [OLM, MEGOLM],
                               "keys": {"curve25519:PUPPETDEV": account.curve25519_key.to_base64(),
                                        "ed25519:PUPPETDEV": account.ed25519_key.to_base64()}}),
        "one_time_keys": {f"signed_curve25519:{k}": signed({"key": v.to_base64()})
                          for k, v in account.one_time_keys.items()},
        "fallback_keys": {"signed_curve25519:AAAAFB": signed({"key": fallback, "fallback": True})}})
    assert uploaded["one_time_key_counts"]["signed_curve25519"] == 3

    dave = await user(server, "dave")
    room_id = await dave.create_room(preset="private_chat")
    await ok(dave, "POST", f"/rooms/{room_id}/invite", {"user_id": puppet_id})
    await puppet.join_room(RoomID(room_id))
    # The join is the puppet's event: its key counts ride along (Synapse's choice of users).
    await until(lambda: _fallback_types(b.raw_txns, puppet_id, "PUPPETDEV")[-1:] == [["signed_curve25519"]]
                and _otk_counts(b.raw_txns, puppet_id, "PUPPETDEV")[-1:] == [3], "the puppet's key counts")

    # Three one-time keys, then the fallback key (again and again, now marked used).
    claim = {"one_time_keys": {puppet_id: {"PUPPETDEV": "signed_curve25519"}}}
    keys = [next(iter((await ok(dave, "POST", "/keys/claim", claim))["one_time_keys"][puppet_id]["PUPPETDEV"]
                      .values())) for _ in range(5)]
    assert [k["key"] for k in keys[3:]] == [fallback, fallback] and all(k["fallback"] for k in keys[3:])
    assert all("fallback" not in k for k in keys[:3])
    seen = len(b.raw_txns)
    await dave.send_message(room_id, "claimed")
    await until(lambda: _fallback_types(b.raw_txns[seen:], puppet_id, "PUPPETDEV") == [[]]
                and _otk_counts(b.raw_txns[seen:], puppet_id, "PUPPETDEV") == [0], "the counts after the claims")

    # MSC4190: the service deletes the device (no UIA); its keys go, and dave and the bridge hear of it.
    since = (await dave.sync())["next_batch"]
    puppet.api.as_device_id = None
    await puppet.api.request(Method.DELETE, MPath.v3.devices["PUPPETDEV"], {})
    queried = await ok(dave, "POST", "/keys/query", {"device_keys": {puppet_id: []}})
    assert queried["device_keys"].get(puppet_id, {}) == {}
    synced = await dave.sync(since=since, timeout=3000)
    assert puppet_id in synced.get("device_lists", {}).get("changed", [])
    await until(lambda: puppet_id in b.changed_users, "the puppet in device_lists.changed")
