"""End-to-end encryption across servers, against a real Synapse and against a second hs: device and
cross-signing keys queried and one-time keys claimed over federation both ways, to-device messages to
one device and to `*` both ways, a remote user's device change reaching the local user's
/sync device_lists.changed both ways, and matrix-nio clients chatting with Megolm across servers."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nio
import pytest

from hs.events.signing import SigningKey, sign_json
from hs.federation.client import FederationError
from tests.federation.client import MatrixServer, TlsClient, unique, user
from tests.federation.test_rooms import wait_joined

Json = dict[str, Any]


async def ok(client: TlsClient, method: str, path: str, body: Any = None, **params: str) -> Any:
    status, data = await client.request(method, path, body, params=params or None)
    assert status == 200, (method, path, status, data)
    return data


async def e2ee_user(server: MatrixServer, name: str) -> TlsClient:
    """A registered user whose `device_id` is set (from whoami)."""
    c = await user(server, unique(name))
    c.device_id = (await ok(c, "GET", "/account/whoami"))["device_id"]
    return c


async def second_device(server: MatrixServer, first: TlsClient) -> TlsClient:
    """The same user logged in once more (password of tests.federation.client.user)."""
    c = server.client()
    assert first.user_id is not None
    data = await ok(c, "POST", "/login", {"type": "m.login.password", "password": "password123",
                                          "identifier": {"type": "m.id.user", "user": first.user_id}})
    c.token, c.user_id, c.device_id = data["access_token"], data["user_id"], data["device_id"]
    return c


def signed_device_keys(client: TlsClient) -> Json:
    assert client.user_id and client.device_id
    key = SigningKey.generate(client.device_id)
    obj: Json = {
        "user_id": client.user_id, "device_id": client.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{client.device_id}": "Y3VydmVrZXk" + uuid.uuid4().hex[:8],
                 f"ed25519:{client.device_id}": key.verify_key_base64},
    }
    return sign_json(obj, client.user_id, key)


def one_time_keys(n: int, tag: str) -> Json:
    return {f"signed_curve25519:{tag}{i}": {"key": f"otk-{tag}-{i}", "signatures": {}} for i in range(n)}


def cross_signing_key(user_id: str, usage: str, key: SigningKey, *signers: SigningKey) -> Json:
    obj: Json = {"user_id": user_id, "usage": [usage], "keys": {key.key_id: key.verify_key_base64}}
    for signer in signers:
        sign_json(obj, user_id, signer)
    return obj


def new_cross_signing_key() -> SigningKey:
    """Cross-signing keys are named by their public key: ed25519:<public key>."""
    k = SigningKey.generate()
    return SigningKey(k.verify_key_base64, k.key)


async def upload_cross_signing(client: TlsClient) -> tuple[Json, Json]:
    """A fresh master key and a self-signing key it signs (no UIA needed: the user had none)."""
    assert client.user_id
    master, ssk = new_cross_signing_key(), new_cross_signing_key()
    body = {"master_key": cross_signing_key(client.user_id, "master", master),
            "self_signing_key": cross_signing_key(client.user_id, "self_signing", ssk, master)}
    await ok(client, "POST", "/keys/device_signing/upload", body)
    return body["master_key"], body["self_signing_key"]


async def sync_until(client: TlsClient, found: Callable[[Json], bool], since: str | None = None,
                     timeout: float = 30.0) -> tuple[Json, str]:
    """Long-poll /sync until a response satisfies `found`; returns it and its next_batch."""
    deadline = time.monotonic() + timeout
    seen: list[Json] = []
    while time.monotonic() < deadline:
        params = {"timeout": "2000"}
        if since:
            params["since"] = since
        body = await ok(client, "GET", "/sync", **params)
        since = body["next_batch"]
        if found(body):
            return body, since
        seen.append({k: body.get(k) for k in ("to_device", "device_lists")})
    raise AssertionError(f"no matching /sync for {client.user_id} within {timeout}s; saw {seen[-5:]}")


def to_device_events(body: Json) -> list[Json]:
    return list(body.get("to_device", {}).get("events", []))


def has_to_device(marker: str) -> Callable[[Json], bool]:
    return lambda b: any(e.get("content", {}).get("marker") == marker for e in to_device_events(b))


async def shared_room(local: TlsClient, remote: TlsClient, local_server: MatrixServer) -> str:
    """A room on the local server that the remote user joined over federation."""
    room_id = await local.create_room(preset="public_chat")
    status, body = await remote.request("POST", f"/join/{room_id}", {},
                                        params={"server_name": local_server.server_name})
    assert status == 200, body
    assert remote.user_id
    await wait_joined(local, room_id, remote.user_id)
    return room_id


def without_unsigned(key: Json) -> Json:
    return {k: v for k, v in key.items() if k != "unsigned"}


# -- keys/query and keys/claim ---------------------------------------------------------------------------
async def test_remote_keys_are_queried_and_claimed_both_ways(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    bob = await e2ee_user(remote_server, "bob")
    alice_keys, bob_keys = signed_device_keys(alice), signed_device_keys(bob)
    await ok(alice, "POST", "/keys/upload", {"device_keys": alice_keys, "one_time_keys": one_time_keys(2, "a")})
    await ok(bob, "POST", "/keys/upload", {"device_keys": bob_keys, "one_time_keys": one_time_keys(2, "b")})
    alice_master, _ = await upload_cross_signing(alice)
    bob_master, bob_ssk = await upload_cross_signing(bob)

    # hs asks the remote server.
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
    assert q["failures"] == {}
    assert without_unsigned(q["device_keys"][bob.user_id][bob.device_id]) == bob_keys
    assert without_unsigned(q["master_keys"][bob.user_id]) == bob_master
    assert without_unsigned(q["self_signing_keys"][bob.user_id]) == bob_ssk
    assert bob.user_id not in q.get("user_signing_keys", {})
    c = await ok(alice, "POST", "/keys/claim", {"one_time_keys": {bob.user_id: {bob.device_id: "signed_curve25519"}}})
    assert c["failures"] == {}
    (key_id, key), = c["one_time_keys"][bob.user_id][bob.device_id].items()
    assert key_id.startswith("signed_curve25519:b") and key["key"].startswith("otk-b-")
    counts = (await ok(bob, "POST", "/keys/upload", {}))["one_time_key_counts"]
    assert counts.get("signed_curve25519") == 1

    # The remote server asks hs (/user/keys/query, /user/keys/claim).
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert not q.get("failures"), q
    assert without_unsigned(q["device_keys"][alice.user_id][alice.device_id]) == alice_keys
    assert without_unsigned(q["master_keys"][alice.user_id]) == alice_master
    c = await ok(bob, "POST", "/keys/claim",
                 {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}})
    assert not c.get("failures"), c
    (key_id, key), = c["one_time_keys"][alice.user_id][alice.device_id].items()
    assert key_id.startswith("signed_curve25519:a") and key["key"].startswith("otk-a-")
    counts = (await ok(alice, "POST", "/keys/upload", {}))["one_time_key_counts"]
    assert counts == {"signed_curve25519": 1}


async def test_unreachable_server_is_a_failure(make_fed_hs: Any) -> None:
    local = await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    nobody = "@nobody:localhost:1"  # nothing listens on port 1
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {nobody: [], alice.user_id: []}})
    assert set(q["failures"]) == {"localhost:1"}
    assert nobody not in q["device_keys"] and alice.user_id in q["device_keys"]
    c = await ok(alice, "POST", "/keys/claim", {"one_time_keys": {nobody: {"DEV": "signed_curve25519"}}})
    assert set(c["failures"]) == {"localhost:1"} and c["one_time_keys"] == {}


async def test_federation_user_devices_lists_keys_and_stream_id(make_fed_hs: Any) -> None:
    """GET /_matrix/federation/v1/user/devices, as a second hs's federation client asks it."""
    local, other = await make_fed_hs(), await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    keys = signed_device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": keys})
    master, ssk = await upload_cross_signing(alice)
    answer = await other.hs.federation_client.get_json(
        local.server_name, f"/_matrix/federation/v1/user/devices/{alice.user_id}")
    assert answer["user_id"] == alice.user_id
    assert isinstance(answer["stream_id"], int) and answer["stream_id"] > 0
    assert [d["device_id"] for d in answer["devices"]] == [alice.device_id]
    assert answer["devices"][0]["keys"] == keys
    assert answer["master_key"] == master and answer["self_signing_key"] == ssk
    assert "user_signing_key" not in answer


# -- to-device -------------------------------------------------------------------------------------------
async def send_to_device(sender: TlsClient, messages: Json) -> None:
    await ok(sender, "PUT", f"/sendToDevice/m.test.fed/{uuid.uuid4().hex}", {"messages": messages})


async def test_to_device_messages_both_ways(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    alice2 = await second_device(local, alice)
    bob = await e2ee_user(remote_server, "bob")
    bob2 = await second_device(remote_server, bob)
    for c in (alice, alice2, bob, bob2):
        await ok(c, "GET", "/sync", timeout="0")

    # hs -> remote, one device: only that device gets it.
    await send_to_device(alice, {bob.user_id: {bob2.device_id: {"marker": "one"}}})
    body, _ = await sync_until(bob2, has_to_device("one"))
    event = next(e for e in to_device_events(body) if e["content"].get("marker") == "one")
    assert event["sender"] == alice.user_id and event["type"] == "m.test.fed"
    # hs -> remote, every device.
    await send_to_device(alice, {bob.user_id: {"*": {"marker": "all-bob"}}})
    await sync_until(bob, has_to_device("all-bob"))
    await sync_until(bob2, has_to_device("all-bob"))
    # remote -> hs, one device, then every device.
    await send_to_device(bob, {alice.user_id: {alice.device_id: {"marker": "two"}}})
    body, _ = await sync_until(alice, has_to_device("two"))
    event = next(e for e in to_device_events(body) if e["content"].get("marker") == "two")
    assert event["sender"] == bob.user_id and event["type"] == "m.test.fed"
    await send_to_device(bob, {alice.user_id: {"*": {"marker": "all-alice"}}})
    await sync_until(alice, has_to_device("all-alice"))
    body, _ = await sync_until(alice2, has_to_device("all-alice"))
    # The one-device message went to alice's first device only.
    assert not has_to_device("two")(body)


async def test_to_device_from_a_server_not_the_senders_is_dropped(make_fed_hs: Any) -> None:
    local = await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    await ok(alice, "GET", "/sync", timeout="0")
    forged = {"sender": "@mallory:elsewhere.example", "type": "m.test.fed", "message_id": "m1",
              "messages": {alice.user_id: {"*": {"marker": "forged"}}}}
    await local.hs.e2ee.on_direct_to_device("localhost:1", forged)
    genuine = dict(forged, sender="@mallory:localhost:1", message_id="m2")
    genuine["messages"] = {alice.user_id: {"*": {"marker": "genuine"}}}
    await local.hs.e2ee.on_direct_to_device("localhost:1", genuine)
    await local.hs.e2ee.on_direct_to_device("localhost:1", genuine)  # a retry: delivered once
    body, _ = await sync_until(alice, has_to_device("genuine"))
    assert [e["content"]["marker"] for e in to_device_events(body)] == ["genuine"]


# -- device lists ----------------------------------------------------------------------------------------
def changed(user_id: str | None) -> Callable[[Json], bool]:
    return lambda b: user_id in b.get("device_lists", {}).get("changed", [])


async def test_device_list_changes_reach_the_other_side(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    bob = await e2ee_user(remote_server, "bob")
    await ok(alice, "POST", "/keys/upload", {"device_keys": signed_device_keys(alice)})
    await ok(bob, "POST", "/keys/upload", {"device_keys": signed_device_keys(bob)})
    await shared_room(alice, bob, local)
    # Each side has looked at the other's keys once (the remote server starts tracking alice).
    await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    await ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
    _, alice_since = await sync_until(alice, lambda b: True)
    _, bob_since = await sync_until(bob, lambda b: True)

    # The remote user logs in a new device and uploads its keys: alice's /sync names bob.
    bob2 = await second_device(remote_server, bob)
    bob2_keys = signed_device_keys(bob2)
    await ok(bob2, "POST", "/keys/upload", {"device_keys": bob2_keys})
    _, alice_since = await sync_until(alice, changed(bob.user_id), since=alice_since)
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
    assert without_unsigned(q["device_keys"][bob.user_id][bob2.device_id]) == bob2_keys

    # And the other way: alice's new device reaches bob's /sync and bob's server's key cache.
    alice2 = await second_device(local, alice)
    alice2_keys = signed_device_keys(alice2)
    await ok(alice2, "POST", "/keys/upload", {"device_keys": alice2_keys})
    _, bob_since = await sync_until(bob, changed(alice.user_id), since=bob_since)
    q = await query_until(bob, alice.user_id, lambda q: alice2.device_id in q["device_keys"].get(alice.user_id, {}))
    assert without_unsigned(q["device_keys"][alice.user_id][alice2.device_id]) == alice2_keys

    # alice's new cross-signing keys (m.signing_key_update) and her second device's logout (a deleted
    # device) reach bob's side too.
    master, ssk = await upload_cross_signing(alice)
    _, bob_since = await sync_until(bob, changed(alice.user_id), since=bob_since)
    q = await query_until(bob, alice.user_id, lambda q: alice.user_id in q.get("master_keys", {}))
    assert without_unsigned(q["master_keys"][alice.user_id]) == master
    assert without_unsigned(q["self_signing_keys"][alice.user_id]) == ssk
    await ok(alice2, "POST", "/logout", {})
    await sync_until(bob, changed(alice.user_id), since=bob_since)
    q = await query_until(bob, alice.user_id,
                          lambda q: alice2.device_id not in q["device_keys"].get(alice.user_id, {}))
    assert set(q["device_keys"][alice.user_id]) == {alice.device_id}

    # And bob's logout of his second device reaches alice.
    await ok(bob2, "POST", "/logout", {})
    await sync_until(alice, changed(bob.user_id), since=alice_since)
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
    assert set(q["device_keys"][bob.user_id]) == {bob.device_id}


async def query_until(client: TlsClient, user_id: str, found: Callable[[Json], bool], timeout: float = 20) -> Json:
    """/keys/query until the answer satisfies `found` (a server that caches remote keys applies an
    update shortly after it tells its clients of the change)."""
    deadline = time.monotonic() + timeout
    while True:
        q = await ok(client, "POST", "/keys/query", {"device_keys": {user_id: []}})
        if found(q) or time.monotonic() > deadline:
            assert found(q), q
            return dict(q)
        await asyncio.sleep(0.3)


# -- matrix-nio, end to end --------------------------------------------------------------------------------
ENCRYPTION_STATE = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


async def nio_client(server: MatrixServer, ca_path: Path, name: str, store: Path) -> nio.AsyncClient:
    """A logged-in matrix-nio client with encryption, its device keys uploaded, trusting the test CA."""
    user_id, _token = await server.register_user(unique(name))
    store.mkdir(parents=True, exist_ok=True)
    client = nio.AsyncClient(server.base_url, user_id, store_path=str(store),
                             config=nio.AsyncClientConfig(encryption_enabled=True),
                             ssl=ssl.create_default_context(cafile=str(ca_path)))  # type: ignore[arg-type]
    login = await client.login("password123", device_name=name)
    assert isinstance(login, nio.LoginResponse), login
    uploaded = await client.keys_upload()
    assert isinstance(uploaded, nio.KeysUploadResponse), uploaded
    return client


async def nio_sync_until(client: nio.AsyncClient, found: Callable[[], bool], what: str, rounds: int = 15) -> None:
    for _ in range(rounds):
        res = await client.sync(timeout=2000)
        assert isinstance(res, nio.SyncResponse), res
        if found():
            return
    pytest.fail(f"{client.user_id}: never saw {what}")


async def nio_receive(client: nio.AsyncClient, room_id: str, body: str, rounds: int = 15) -> nio.Event:
    """Sync until the room's timeline has a text event with `body`, as nio decrypted it."""
    for _ in range(rounds):
        res = await client.sync(timeout=2000)
        assert isinstance(res, nio.SyncResponse), res
        room = res.rooms.join.get(room_id)
        for ev in room.timeline.events if room is not None else []:
            if isinstance(ev, nio.RoomMessageText) and ev.body == body:
                return ev
            if isinstance(ev, nio.MegolmEvent):
                pytest.fail(f"{client.user_id} could not decrypt {ev.event_id} (session {ev.session_id})")
    pytest.fail(f"{client.user_id} never received {body!r}")


async def nio_send(client: nio.AsyncClient, room_id: str, body: str) -> None:
    if client.should_query_keys:
        await client.keys_query()
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                  ignore_unverified_devices=True)
    assert isinstance(sent, nio.RoomSendResponse), sent


async def test_nio_encrypted_chat_across_servers(make_fed_hs: Any, remote_server: Any, federation_ca: Any,
                                                  tmp_path: Path) -> None:
    local = await make_fed_hs()
    alice = await nio_client(local, federation_ca.ca_path, "alice", tmp_path / "alice")
    bob = await nio_client(remote_server, federation_ca.ca_path, "bob", tmp_path / "bob")
    clients = [alice, bob]
    try:
        created = await alice.room_create(name="Secret", preset=nio.RoomPreset.public_chat,
                                          initial_state=[ENCRYPTION_STATE])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        bob_raw = remote_server.client(bob.access_token)
        status, body = await bob_raw.request("POST", f"/join/{room_id}", {},
                                             params={"server_name": local.server_name})
        assert status == 200, body
        await nio_sync_until(alice, lambda: bob.user_id in alice.rooms.get(room_id, _NO_ROOM).users,
                             "bob in the room")
        await nio_sync_until(bob, lambda: room_id in bob.rooms and bob.rooms[room_id].encrypted,
                             "the encrypted room")

        # alice -> bob: the room key goes over Olm as a to-device message to bob's server.
        await nio_send(alice, room_id, "hello across servers")
        assert bob.device_id in alice.device_store[bob.user_id]
        ev = await nio_receive(bob, room_id, "hello across servers")
        assert ev.decrypted and ev.sender == alice.user_id

        # bob -> alice.
        await nio_send(bob, room_id, "hello back")
        ev = await nio_receive(alice, room_id, "hello back")
        assert ev.decrypted and ev.sender == bob.user_id

        # bob logs in on a second device: alice hears of it (device_lists.changed) and encrypts for it.
        bob2 = nio.AsyncClient(remote_server.base_url, bob.user_id, store_path=str(tmp_path / "bob2"),
                               config=nio.AsyncClientConfig(encryption_enabled=True),
                               ssl=ssl.create_default_context(cafile=str(federation_ca.ca_path)))  # type: ignore[arg-type]
        clients.append(bob2)
        (tmp_path / "bob2").mkdir()
        assert isinstance(await bob2.login("password123", device_name="bob2"), nio.LoginResponse)
        assert isinstance(await bob2.keys_upload(), nio.KeysUploadResponse)
        await bob2.sync(timeout=0)
        await nio_sync_until(alice, lambda: bob.user_id in alice.users_for_key_query, "bob's device change")
        await nio_send(alice, room_id, "for both of bob's devices")
        assert bob2.device_id in alice.device_store[bob.user_id]
        ev = await nio_receive(bob2, room_id, "for both of bob's devices")
        assert ev.decrypted and ev.sender == alice.user_id
        ev = await nio_receive(bob, room_id, "for both of bob's devices")
        assert ev.decrypted
    finally:
        for c in clients:
            await c.close()


class _NoRoom:
    users: dict[str, Any] = {}


_NO_ROOM = _NoRoom()


async def test_device_list_updates_form_a_chain_that_user_devices_continues(make_fed_hs: Any) -> None:
    """Each m.device_list_update names the user's previous one in prev_id, and /user/devices's stream_id
    is the latest: what a server that resyncs correlates the next update with."""
    local, other = await make_fed_hs(), await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    bob = await e2ee_user(other, "bob")
    await shared_room(alice, bob, local)
    sent: list[tuple[str, str, Json]] = []
    real_send_edus = local.hs.federation_outbox.send_edus

    async def capture(destinations: Any, edu_type: str, content: Json) -> None:
        destinations = list(destinations)
        sent.extend((d, edu_type, content) for d in destinations)
        await real_send_edus(destinations, edu_type, content)

    local.hs.federation_outbox.send_edus = capture  # type: ignore[method-assign]
    keys = signed_device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": keys})
    alice2 = await second_device(local, alice)
    await ok(alice2, "POST", "/logout", {})
    updates = [c for d, t, c in sent if t == "m.device_list_update" and d == other.server_name]
    assert [(u["device_id"], u["deleted"]) for u in updates] == [
        (alice.device_id, False), (alice2.device_id, False), (alice2.device_id, True)]
    assert updates[0]["keys"] == keys
    for before, after in zip(updates, updates[1:], strict=False):
        assert after["prev_id"] == [before["stream_id"]] and after["stream_id"] > before["stream_id"]
    answer = await other.hs.federation_client.get_json(
        local.server_name, f"/_matrix/federation/v1/user/devices/{alice.user_id}")
    assert answer["stream_id"] == updates[-1]["stream_id"]
    assert [d["device_id"] for d in answer["devices"]] == [alice.device_id]
    # Only local users: another server's user is not ours to describe.
    with pytest.raises(FederationError) as refused:
        await other.hs.federation_client.get_json(
            local.server_name, f"/_matrix/federation/v1/user/devices/{bob.user_id}")
    assert refused.value.status == 400
    answer = await other.hs.federation_client.post_json(
        local.server_name, "/_matrix/federation/v1/user/keys/query",
        {"device_keys": {alice.user_id: [], bob.user_id: []}})
    assert set(answer["device_keys"]) == {alice.user_id}
