"""The e2ee and to_device extensions carry what a real E2EE client needs, checked with matrix-nio.

alice's device is a matrix-nio client (its own Olm account and keys) that receives only through
sliding sync: each answer is turned into the /sync v3 sections nio reads (to_device events, one-time
key counts, unused fallback key types, device_lists, the room's timeline and state) and handed to
nio's own sync handling. bob, a second nio client on /sync v3, sends her an encrypted message: nio must
decrypt the Olm-wrapped room key from the to_device extension and then the Megolm message from the
timeline. Also: OTK counts follow uploads and claims, fallback key types appear, and a member who
leaves every shared room is in device_lists.left.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import nio

from tests.sliding_sync.client import SlidingClient, Target, state_pairs

assert nio.crypto.ENCRYPTION_ENABLED, "matrix-nio[e2e] (encryption support) is not installed"

ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


async def _nio(target: Target, who: SlidingClient, store: Path) -> tuple[nio.AsyncClient, int]:
    """A nio client logged in as `who` on a new device, with its keys uploaded; and the server's count
    of its one-time keys after the upload."""
    store.mkdir(parents=True, exist_ok=True)
    context = ssl.create_default_context(cafile=target.ca_path) if target.ca_path else None
    client = nio.AsyncClient(target.base_url, who.user_id or "", store_path=str(store),
                             config=nio.AsyncClientConfig(encryption_enabled=True),
                             ssl=context)
    login = await client.login("password123", device_name="nio")
    assert isinstance(login, nio.LoginResponse), login
    uploaded = await client.keys_upload()
    assert isinstance(uploaded, nio.KeysUploadResponse), uploaded
    return client, uploaded.signed_curve25519_count


def _body(room_id: str, to_device_since: str | None) -> dict[str, Any]:
    to_device: dict[str, Any] = {"enabled": True}
    if to_device_since:
        to_device["since"] = to_device_since
    return {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 10, "required_state": [["*", "*"]]}},
            "room_subscriptions": {room_id: {"timeline_limit": 10, "required_state": [["*", "*"]]}},
            "extensions": {"e2ee": {"enabled": True}, "to_device": to_device}}


def as_v3_sync(resp: dict[str, Any]) -> dict[str, Any]:
    """The /sync v3 sections a client library reads, from a (normalised) sliding sync answer."""
    ext = resp.get("extensions", {})
    e2ee = ext.get("e2ee", {})
    to_device = ext.get("to_device", {})
    join = {}
    for room_id, room in resp.get("rooms", {}).items():
        join[room_id] = {
            "timeline": {"events": room.get("timeline", []), "limited": bool(room.get("limited")),
                         "prev_batch": room.get("prev_batch", "")},
            "state": {"events": room.get("required_state", [])},
            "ephemeral": {"events": []}, "account_data": {"events": []},
        }
    return {
        "next_batch": resp["pos"],
        "rooms": {"join": join, "invite": {}, "leave": {}},
        "to_device": {"events": to_device.get("events", [])},
        "device_one_time_keys_count": e2ee.get("device_one_time_keys_count", {}),
        "device_unused_fallback_key_types": e2ee.get("device_unused_fallback_key_types", []),
        "device_lists": e2ee.get("device_lists", {"changed": [], "left": []}),
        "account_data": {"events": []}, "presence": {"events": []},
    }


async def test_encrypted_exchange_through_sliding_sync(target: Target, tmp_path: Path) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    alice_nio, otks = await _nio(target, alice, tmp_path / "alice")
    bob_nio, _ = await _nio(target, bob, tmp_path / "bob")
    try:
        assert otks > 0
        room = await alice.create_room(name="secret", invite=[bob.user_id], initial_state=[ENCRYPTION])
        await bob.call("POST", f"/join/{room}", {})

        # alice's nio device syncs through sliding sync only.
        ss = SlidingClient(target.base_url, alice.shape, target.ca_path)
        ss.token, ss.user_id, ss.device_id = alice_nio.access_token, alice.user_id, alice_nio.device_id
        try:
            first = await ss.slide(_body(room, None), pos=None)
            e2ee = first["extensions"]["e2ee"]
            counts = e2ee["device_one_time_keys_count"]
            assert counts["signed_curve25519"] == otks
            assert e2ee.get("device_unused_fallback_key_types", []) == []
            assert ("m.room.encryption", "") in state_pairs(first["rooms"][room])
            since = first["extensions"]["to_device"].get("next_batch")
            await alice_nio.receive_response(nio.SyncResponse.from_dict(as_v3_sync(first)))
            assert alice_nio.rooms[room].encrypted

            # bob (nio on /sync v3) sends an encrypted message: claims one of alice's OTKs, sends
            # her the room key over Olm, then the Megolm event.
            synced = await bob_nio.sync(timeout=0, full_state=True)
            assert isinstance(synced, nio.SyncResponse), synced
            sent = await bob_nio.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "for alice only"},
                                           ignore_unverified_devices=True)
            assert isinstance(sent, nio.RoomSendResponse), sent

            second = await ss.slide(_body(room, since))
            to_device = second["extensions"]["to_device"]["events"]
            assert [e["type"] for e in to_device] == ["m.room.encrypted"]
            assert to_device[0]["sender"] == bob.user_id
            assert [e["type"] for e in second["rooms"][room]["timeline"]][-1] == "m.room.encrypted"
            counts = second["extensions"]["e2ee"]["device_one_time_keys_count"]
            assert counts["signed_curve25519"] == otks - 1  # bob claimed one
            v3 = nio.SyncResponse.from_dict(as_v3_sync(second))
            await alice_nio.receive_response(v3)
            texts = [e for e in v3.rooms.join[room].timeline.events if isinstance(e, nio.RoomMessageText)]
            assert [(t.sender, t.body) for t in texts] == [(bob.user_id, "for alice only")], \
                v3.rooms.join[room].timeline.events

            # A fallback key: its type is reported as unused.
            fallback = {"signed_curve25519:AAAAHg": {"key": "f" * 43, "fallback": True,
                                                     "signatures": {alice.user_id: {
                                                         f"ed25519:{alice_nio.device_id}": "s" * 86}}}}
            await ss.call("POST", "/keys/upload", {"fallback_keys": fallback})
            third = await ss.slide(_body(room, second["extensions"]["to_device"].get("next_batch")))
            assert third["extensions"]["e2ee"]["device_unused_fallback_key_types"] == ["signed_curve25519"]
            assert third["extensions"]["to_device"].get("events", []) == []

            # bob leaves the only room they share: his devices no longer concern alice.
            await bob.call("POST", f"/rooms/{room}/leave", {})
            fourth = await ss.slide(_body(room, third["extensions"]["to_device"].get("next_batch")))
            assert bob.user_id in fourth["extensions"]["e2ee"]["device_lists"]["left"]
        finally:
            await ss.close()
    finally:
        await alice_nio.close()
        await bob_nio.close()
