"""matrix-nio with end-to-end encryption against a real homeserver (SQLite and PostgreSQL): key upload,
key query and claim, Olm-encrypted room keys over to-device messages, Megolm messages decrypted both
ways, a second device picked up through device_lists.changed, and one-time keys handed out once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nio
import pytest

from tests.harness import TestHomeServer

# pyproject's dev extras install matrix-nio[e2e]; without it this must fail, not skip.
assert nio.crypto.ENCRYPTION_ENABLED, "matrix-nio[e2e] (encryption support) is not installed"

ENCRYPTION_STATE = {"type": "m.room.encryption", "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


@dataclass(frozen=True)
class Target:
    """Where the clients connect: a test server, or the cluster's nginx."""

    base_url: str
    server_name: str = "test.local"


async def _register(server: Target, name: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.base_url}/_matrix/client/v3/register", json={
                "username": name, "password": "secret-password", "auth": {"type": "m.login.dummy"},
                "inhibit_login": True}) as resp:
            assert resp.status == 200, await resp.text()


async def _e2ee_client(server: Target, name: str, store: Path, device_name: str) -> nio.AsyncClient:
    store.mkdir(parents=True, exist_ok=True)
    client = nio.AsyncClient(server.base_url, f"@{name}:{server.server_name}", store_path=str(store),
                             config=nio.AsyncClientConfig(encryption_enabled=True))
    login = await client.login("secret-password", device_name=device_name)
    assert isinstance(login, nio.LoginResponse), login
    assert client.olm is not None
    assert client.should_upload_keys
    uploaded = await client.keys_upload()
    assert isinstance(uploaded, nio.KeysUploadResponse), uploaded
    assert uploaded.signed_curve25519_count > 0
    return client


async def _raw(server: Target, token: str, method: str, path: str, body: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{server.base_url}/_matrix/client/v3{path}", json=body,
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def _receive(client: nio.AsyncClient, room_id: str, body: str, attempts: int = 5) -> nio.Event:
    """Sync until an event with `body` arrives in the room's timeline; return it as nio decoded it."""
    for _ in range(attempts):
        res = await client.sync(timeout=3000)
        assert isinstance(res, nio.SyncResponse), res
        room = res.rooms.join.get(room_id)
        if room is None:
            continue
        for ev in room.timeline.events:
            if isinstance(ev, nio.RoomMessageText) and ev.body == body:
                return ev
            if isinstance(ev, nio.MegolmEvent):
                pytest.fail(f"{client.device_id} could not decrypt {ev.event_id} (session {ev.session_id})")
    pytest.fail(f"{client.user_id}/{client.device_id} never received {body!r}")


async def _send(client: nio.AsyncClient, room_id: str, body: str) -> None:
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                  ignore_unverified_devices=True)
    assert isinstance(sent, nio.RoomSendResponse), sent


async def test_encrypted_chat_both_ways_and_a_second_device(server: TestHomeServer, tmp_path: Path) -> None:
    await encrypted_chat_flow(Target(server.base_url), tmp_path)


async def encrypted_chat_flow(server: Target, tmp_path: Path, suffix: str = "") -> None:
    """The streams issue's E2EE flow; the cluster tests run it through nginx unchanged."""
    a_name, b_name = "alice" + suffix, "bob" + suffix
    await _register(server, a_name)
    await _register(server, b_name)
    alice = await _e2ee_client(server, a_name, tmp_path / "alice", "alice-laptop")
    bob = await _e2ee_client(server, b_name, tmp_path / "bob", "bob-phone")
    clients = [alice, bob]
    try:
        created = await alice.room_create(name="Secret", invite=[bob.user_id], initial_state=[ENCRYPTION_STATE])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await bob.sync(timeout=0)
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await alice.sync(timeout=0)
        await bob.sync(timeout=0)
        assert alice.rooms[room_id].encrypted and bob.rooms[room_id].encrypted

        # alice -> bob: nio queries bob's keys, claims a one-time key, sends the room key over Olm.
        await _send(alice, room_id, "hello, encrypted bob")
        assert bob.user_id in alice.device_store.users
        ev = await _receive(bob, room_id, "hello, encrypted bob")
        assert ev.decrypted and ev.sender == alice.user_id

        # bob -> alice.
        await _send(bob, room_id, "hi alice, decrypted fine")
        ev = await _receive(alice, room_id, "hi alice, decrypted fine")
        assert ev.decrypted and ev.sender == bob.user_id

        # bob logs in on a second device; alice learns of it from device_lists.changed.
        await alice.sync(timeout=0)
        bob2 = await _e2ee_client(server, b_name, tmp_path / "bob2", "bob-tablet")
        clients.append(bob2)
        assert bob2.device_id != bob.device_id
        await bob2.sync(timeout=0)
        res = await alice.sync(timeout=3000)
        assert isinstance(res, nio.SyncResponse)
        assert bob.user_id in res.device_list.changed
        assert bob.user_id in alice.users_for_key_query
        assert alice.should_query_keys
        queried = await alice.keys_query()
        assert isinstance(queried, nio.KeysQueryResponse), queried
        assert bob2.device_id in queried.device_keys[bob.user_id]
        assert bob.user_id not in alice.users_for_key_query

        await _send(alice, room_id, "for both of bob's devices")
        assert bob2.device_id in alice.device_store[bob.user_id]
        ev = await _receive(bob2, room_id, "for both of bob's devices")
        assert ev.decrypted and ev.sender == alice.user_id
        ev = await _receive(bob, room_id, "for both of bob's devices")
        assert ev.decrypted

        # One-time keys are handed out at most once, even to concurrent claims.
        counts = await _raw(server, bob2.access_token, "POST", "/keys/upload", {})
        available = counts["one_time_key_counts"]["signed_curve25519"]
        assert available > 0
        body = {"one_time_keys": {bob.user_id: {bob2.device_id: "signed_curve25519"}}}
        results = await asyncio.gather(*(_raw(server, alice.access_token, "POST", "/keys/claim", body)
                                         for _ in range(available + 5)))
        claimed = [key_id for r in results for key_id in r["one_time_keys"].get(bob.user_id, {})
                   .get(bob2.device_id, {})]
        fallback_ids = {k for r in results for k, v in r["one_time_keys"].get(bob.user_id, {})
                        .get(bob2.device_id, {}).items() if isinstance(v, dict) and v.get("fallback")}
        one_time = [k for k in claimed if k not in fallback_ids]
        assert len(one_time) == available
        assert len(set(one_time)) == len(one_time)
        counts = await _raw(server, bob2.access_token, "POST", "/keys/upload", {})
        assert counts["one_time_key_counts"]["signed_curve25519"] == 0
    finally:
        for c in clients:
            await c.close()
