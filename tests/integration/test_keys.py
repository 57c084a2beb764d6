"""E2EE keys over real HTTP on SQLite and PostgreSQL: /keys/upload, query, claim, changes, device-list
tracking in /sync, cross-signing, and server-side key backup (/room_keys)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hs.events.signing import SigningKey, sign_json
from tests.harness import OPEN_CLIENTS, Client, TestHomeServer, ok, user

Json = dict[str, Any]


async def login(server: TestHomeServer, name: str) -> Client:
    c = server.client()
    OPEN_CLIENTS.append(c)
    body: Json = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                  "password": "password123"}
    status, data = await c.request("POST", "/login", body, auth=False)
    assert status == 200, data
    c.token, c.user_id, c.device_id = data["access_token"], data["user_id"], data["device_id"]
    return c


async def err(client: Client, method: str, path: str, body: Any = None, **params: str) -> tuple[int, str]:
    status, data = await client.request(method, path, body, params=params or None)
    return status, data.get("errcode") if isinstance(data, dict) else data


def device_keys(client: Client, key: SigningKey | None = None) -> tuple[Json, SigningKey]:
    assert client.user_id and client.device_id
    key = key or SigningKey.generate(client.device_id)
    obj: Json = {
        "user_id": client.user_id,
        "device_id": client.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{client.device_id}": "Y3VydmVrZXk", f"ed25519:{client.device_id}": key.verify_key_base64},
    }
    return sign_json(obj, client.user_id, key), key


def otks(n: int, prefix: str = "k") -> Json:
    return {f"signed_curve25519:{prefix}{i:03d}": {"key": f"otk-{prefix}{i}", "signatures": {}} for i in range(n)}


async def shared_room(a: Client, b: Client) -> str:
    room = await a.create_room(invite=[b.user_id])
    await ok(b, "POST", f"/rooms/{room}/join", {})
    return room


# -- upload and query ----------------------------------------------------------------------------------------
async def test_upload_query_and_counts(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    keys, _ = device_keys(alice)
    res = await ok(alice, "POST", "/keys/upload", {"device_keys": keys, "one_time_keys": otks(5)})
    assert res == {"one_time_key_counts": {"signed_curve25519": 5}}
    # An empty upload reports the counts.
    assert await ok(alice, "POST", "/keys/upload", {}) == {"one_time_key_counts": {"signed_curve25519": 5}}

    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: [], "@nobody:test.local": []}})
    got = q["device_keys"][alice.user_id][alice.device_id]
    assert {k: v for k, v in got.items() if k != "unsigned"} == keys
    assert got["unsigned"] == {}
    assert q["device_keys"]["@nobody:test.local"] == {}
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: ["OTHER"]}})
    assert q["device_keys"][alice.user_id] == {}

    s = await alice.sync()
    assert s["device_one_time_keys_count"] == {"signed_curve25519": 5}
    assert s["device_unused_fallback_key_types"] == []


async def test_display_name_is_in_unsigned(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await shared_room(alice, bob)
    since = (await bob.sync())["next_batch"]
    await ok(alice, "PUT", f"/devices/{alice.device_id}", {"display_name": "Phone"})
    assert (await bob.sync(since))["device_lists"]["changed"] == [alice.user_id]
    keys, _ = device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": keys})
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {alice.user_id: [alice.device_id]}})
    assert q["device_keys"][alice.user_id][alice.device_id]["unsigned"] == {"device_display_name": "Phone"}


async def test_malformed_uploads_store_nothing(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    keys, _ = device_keys(alice)  # (its self-signature is not checked, as in Synapse: test_spec_strictness)
    wrong_user = dict(keys, user_id=bob.user_id)
    wrong_device = dict(keys, device_id="OTHER")
    unsigned_keys = {k: v for k, v in keys.items() if k != "signatures"}
    cases: list[tuple[Json, str]] = [
        ({"device_keys": wrong_user, "one_time_keys": otks(2)}, "M_INVALID_PARAM"),
        ({"device_keys": wrong_device, "one_time_keys": otks(2)}, "M_INVALID_PARAM"),
        ({"device_keys": unsigned_keys}, "M_BAD_JSON"),
        ({"device_keys": "nope"}, "M_BAD_JSON"),
        ({"device_keys": dict(keys, keys=[])}, "M_BAD_JSON"),
        ({"device_keys": keys, "one_time_keys": []}, "M_BAD_JSON"),
        ({"device_keys": keys, "one_time_keys": {"no_colon": {"key": "x"}}}, "M_INVALID_PARAM"),
        ({"device_keys": keys, "one_time_keys": {"signed_curve25519:a": 5}}, "M_BAD_JSON"),
        ({"device_keys": keys, "fallback_keys": {"signed_curve25519:a": {"nokey": 1}}}, "M_BAD_JSON"),
    ]
    for body, errcode in cases:
        assert await err(alice, "POST", "/keys/upload", body) == (400, errcode), body
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["device_keys"][alice.user_id] == {}
    assert (await alice.sync())["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert await err(alice, "POST", "/keys/query", {"device_keys": []}) == (400, "M_BAD_JSON")
    assert await err(alice, "POST", "/keys/query", {}) == (400, "M_MISSING_PARAM")
    assert await err(alice, "POST", "/keys/claim", {"one_time_keys": {alice.user_id: []}}) == (400, "M_BAD_JSON")


async def test_one_time_key_reupload_rules(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    first = otks(2)
    await ok(alice, "POST", "/keys/upload", {"one_time_keys": first})
    # The same keys again are fine; the same ID with other content is refused, and nothing else is kept.
    assert (await ok(alice, "POST", "/keys/upload", {"one_time_keys": first}))["one_time_key_counts"] == {
        "signed_curve25519": 2}
    changed = {**otks(1, "new"), "signed_curve25519:k000": {"key": "different", "signatures": {}}}
    assert await err(alice, "POST", "/keys/upload", {"one_time_keys": changed}) == (400, "M_INVALID_PARAM")
    assert (await ok(alice, "POST", "/keys/upload", {}))["one_time_key_counts"] == {"signed_curve25519": 2}


# -- claim -------------------------------------------------------------------------------------------------
async def test_claim_hands_out_each_key_once_then_the_fallback(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    fallback = {"signed_curve25519:fb1": {"key": "fallback-key", "fallback": True, "signatures": {}}}
    await ok(alice, "POST", "/keys/upload", {"one_time_keys": otks(5), "fallback_keys": fallback})
    assert (await alice.sync())["device_unused_fallback_key_types"] == ["signed_curve25519"]

    body = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    results = await asyncio.gather(*(ok(bob, "POST", "/keys/claim", body) for _ in range(12)))
    claimed = [r["one_time_keys"][alice.user_id][alice.device_id] for r in results]
    ids = [next(iter(c)) for c in claimed]
    one_time = [i for i in ids if i != "signed_curve25519:fb1"]
    assert sorted(one_time) == sorted(otks(5))  # each one-time key exactly once
    assert ids.count("signed_curve25519:fb1") == 7
    assert all(c == {"signed_curve25519:fb1": fallback["signed_curve25519:fb1"]}
               for c in claimed if "signed_curve25519:fb1" in c)
    s = await alice.sync()
    assert s["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert s["device_unused_fallback_key_types"] == []
    # A new fallback key is unused again; the same one re-uploaded stays used.
    await ok(alice, "POST", "/keys/upload", {"fallback_keys": fallback})
    assert (await alice.sync())["device_unused_fallback_key_types"] == []
    await ok(alice, "POST", "/keys/upload", {"org.matrix.msc2732.fallback_keys": {
        "signed_curve25519:fb2": {"key": "fallback-2", "fallback": True, "signatures": {}}}})
    assert (await alice.sync())["device_unused_fallback_key_types"] == ["signed_curve25519"]


async def test_claim_for_unknown_users_and_devices_is_empty(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    await ok(alice, "POST", "/keys/upload", {"one_time_keys": otks(1)})
    res = await ok(alice, "POST", "/keys/claim", {"one_time_keys": {
        "@nobody:test.local": {"DEV": "signed_curve25519"},
        alice.user_id: {"NOSUCHDEVICE": "signed_curve25519"},
    }})
    assert res["one_time_keys"] == {}
    res = await ok(alice, "POST", "/keys/claim", {"one_time_keys": {alice.user_id: {alice.device_id: "curve25519"}}})
    assert res["one_time_keys"] == {}
    assert (await ok(alice, "POST", "/keys/upload", {}))["one_time_key_counts"] == {"signed_curve25519": 1}


# -- device lists ------------------------------------------------------------------------------------------
async def test_device_list_changes_in_sync_and_keys_changes(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    room = await shared_room(alice, bob)
    bob_since = (await bob.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]
    alice_since = (await alice.sync())["next_batch"]

    keys, _ = device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": keys})
    bob_res = await bob.sync(bob_since)
    assert bob_res["device_lists"] == {"changed": [alice.user_id], "left": []}
    assert (await carol.sync(carol_since))["device_lists"] == {"changed": [], "left": []}
    # The syncer's own device changes are reported to them too.
    assert (await alice.sync(alice_since))["device_lists"]["changed"] == [alice.user_id]
    changes = await ok(bob, "GET", "/keys/changes", **{"from": bob_since, "to": bob_res["next_batch"]})
    assert changes == {"changed": [alice.user_id], "left": []}
    # Nothing new: nothing reported.
    assert (await bob.sync(bob_res["next_batch"]))["device_lists"] == {"changed": [], "left": []}

    # Carol joins: alice and bob see her as changed (they now share a room), she sees them.
    await ok(alice, "POST", f"/rooms/{room}/invite", {"user_id": carol.user_id})
    carol_since = (await carol.sync())["next_batch"]
    bob_since = bob_res["next_batch"]
    await ok(carol, "POST", f"/rooms/{room}/join", {})
    assert (await bob.sync(bob_since))["device_lists"]["changed"] == [carol.user_id]
    assert (await carol.sync(carol_since))["device_lists"]["changed"] == sorted([alice.user_id, bob.user_id])

    # Alice leaves: bob no longer shares a room with her.
    bob_since = (await bob.sync())["next_batch"]
    await ok(alice, "POST", f"/rooms/{room}/leave", {})
    res = await bob.sync(bob_since)
    assert res["device_lists"] == {"changed": [], "left": [alice.user_id]}
    # ...and her later device changes are not reported to bob.
    await login(server, "alice")
    assert (await bob.sync(res["next_batch"]))["device_lists"] == {"changed": [], "left": []}


async def test_new_login_and_device_deletion_are_changes(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await shared_room(alice, bob)
    since = (await bob.sync())["next_batch"]
    alice2 = await login(server, "alice")
    res = await bob.sync(since)
    assert res["device_lists"]["changed"] == [alice.user_id]

    keys, _ = device_keys(alice2)
    await ok(alice2, "POST", "/keys/upload", {"device_keys": keys, "one_time_keys": otks(3)})
    since = (await bob.sync())["next_batch"]
    status, data = await alice.request("DELETE", f"/devices/{alice2.device_id}", {
        "auth": {"type": "m.login.password", "password": "password123",
                 "identifier": {"type": "m.id.user", "user": "alice"}}})
    assert status == 200, data
    assert (await bob.sync(since))["device_lists"]["changed"] == [alice.user_id]
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["device_keys"][alice.user_id] == {}
    assert int(await server.hs.db.fetchval(
        "SELECT COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1", alice.user_id)) == 0


async def test_device_change_wakes_room_mates_only(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    await shared_room(alice, bob)
    bob_since = (await bob.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]

    async def timed(client: Client, since: str, timeout: int) -> tuple[float, Any]:
        t = time.monotonic()
        res = await client.sync(since, timeout=timeout)
        return time.monotonic() - t, res

    bob_task = asyncio.create_task(timed(bob, bob_since, 10_000))
    carol_task = asyncio.create_task(timed(carol, carol_since, 800))
    await asyncio.sleep(0.2)
    keys, _ = device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": keys})
    bob_took, bob_res = await bob_task
    carol_took, carol_res = await carol_task
    assert bob_took < 5 and bob_res["device_lists"]["changed"] == [alice.user_id]
    assert carol_took >= 0.7 and carol_res["device_lists"]["changed"] == []


async def test_keys_changes_needs_tokens(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    assert await err(alice, "GET", "/keys/changes", **{"from": "s0"}) == (400, "M_MISSING_PARAM")
    assert await err(alice, "GET", "/keys/changes", **{"from": "x", "to": "s1"}) == (400, "M_INVALID_PARAM")


# -- cross-signing -------------------------------------------------------------------------------------------
def new_key() -> SigningKey:
    k = SigningKey.generate()
    return SigningKey(k.verify_key_base64, k.key)


def cs_key(user_id: str, usage: str, key: SigningKey, *signers: SigningKey) -> Json:
    obj: Json = {"user_id": user_id, "usage": [usage], "keys": {key.key_id: key.verify_key_base64}}
    for signer in signers:
        sign_json(obj, user_id, signer)
    return obj


def cross_signing(user_id: str) -> tuple[Json, dict[str, SigningKey]]:
    master, ssk, usk = new_key(), new_key(), new_key()
    body = {"master_key": cs_key(user_id, "master", master),
            "self_signing_key": cs_key(user_id, "self_signing", ssk, master),
            "user_signing_key": cs_key(user_id, "user_signing", usk, master)}
    return body, {"master": master, "self_signing": ssk, "user_signing": usk}


PASSWORD_AUTH = {"type": "m.login.password", "password": "password123"}


async def test_cross_signing_upload_query_and_uia(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await shared_room(alice, bob)
    assert alice.user_id
    body, keys = cross_signing(alice.user_id)
    since = (await bob.sync())["next_batch"]
    # The first upload needs no UIA.
    await ok(alice, "POST", "/keys/device_signing/upload", body)
    assert (await bob.sync(since))["device_lists"]["changed"] == [alice.user_id]

    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["master_keys"][alice.user_id] == body["master_key"]
    assert q["self_signing_keys"][alice.user_id] == body["self_signing_key"]
    assert alice.user_id not in q["user_signing_keys"]  # only for the user themselves
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["user_signing_keys"][alice.user_id] == body["user_signing_key"]

    # The same keys again: idempotent, no UIA.
    await ok(alice, "POST", "/keys/device_signing/upload", body)
    # New keys need the password.
    new_body, new_keys = cross_signing(alice.user_id)
    status, data = await alice.request("POST", "/keys/device_signing/upload", new_body)
    assert status == 401 and data["flows"] == [{"stages": ["m.login.password"]}], data
    status, data = await alice.request("POST", "/keys/device_signing/upload", {
        **new_body, "auth": {**PASSWORD_AUTH, "password": "wrong", "session": data["session"]}})
    assert status == 401 and data["errcode"] == "M_FORBIDDEN"
    # The follow-up may leave out the keys: the session remembers them.
    await ok(alice, "POST", "/keys/device_signing/upload", {"auth": {**PASSWORD_AUTH, "session": data["session"]}})
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["master_keys"][alice.user_id] == new_body["master_key"]

    # A self-signing key signed by the old master key is refused now.
    stale = cs_key(alice.user_id, "self_signing", new_key(), keys["master"])
    status, data = await alice.request("POST", "/keys/device_signing/upload",
                                       {"self_signing_key": stale, "auth": PASSWORD_AUTH})
    assert (status, data["errcode"]) == (400, "M_INVALID_SIGNATURE")
    # A self-signing key alone, signed by the stored master key, is accepted.
    ssk = new_key()
    await ok(alice, "POST", "/keys/device_signing/upload", {
        "self_signing_key": cs_key(alice.user_id, "self_signing", ssk, new_keys["master"]),
        "auth": PASSWORD_AUTH})
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["self_signing_keys"][alice.user_id]["keys"] == {ssk.key_id: ssk.verify_key_base64}


async def test_cross_signing_bad_uploads_store_nothing(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    assert alice.user_id and bob.user_id
    body, keys = cross_signing(alice.user_id)
    master = keys["master"]
    two_keys = dict(body["master_key"], keys={master.key_id: master.verify_key_base64, "ed25519:x": "x"})
    cases: list[tuple[Json, tuple[int, str]]] = [
        ({**body, "master_key": cs_key(bob.user_id, "master", master)}, (400, "M_INVALID_PARAM")),
        ({**body, "master_key": dict(body["master_key"], usage=["self_signing"])}, (400, "M_INVALID_PARAM")),
        ({**body, "master_key": two_keys}, (400, "M_INVALID_PARAM")),
        ({**body, "master_key": "nope"}, (400, "M_BAD_JSON")),
        ({**body, "self_signing_key": cs_key(alice.user_id, "self_signing", new_key())},
         (400, "M_INVALID_SIGNATURE")),
        ({"self_signing_key": body["self_signing_key"]}, (400, "M_MISSING_PARAM")),
        ({}, (400, "M_MISSING_PARAM")),
    ]
    for case, expected in cases:
        assert await err(alice, "POST", "/keys/device_signing/upload", case) == expected, case
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["master_keys"] == {} and q["self_signing_keys"] == {} and q["user_signing_keys"] == {}


async def test_signatures_upload(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    assert alice.user_id and bob.user_id and alice.device_id
    dev_keys, dev_key = device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": dev_keys})
    body, keys = cross_signing(alice.user_id)
    await ok(alice, "POST", "/keys/device_signing/upload", body)
    bob_body, _bob_keys = cross_signing(bob.user_id)
    await ok(bob, "POST", "/keys/device_signing/upload", bob_body)

    # The self-signing key signs alice's device; the device signs her master key.
    to_sign = {k: v for k, v in dev_keys.items() if k != "signatures"}
    signed_device = sign_json(dict(to_sign), alice.user_id, keys["self_signing"])
    master = {k: v for k, v in body["master_key"].items() if k != "signatures"}
    signed_master = sign_json(dict(master), alice.user_id, dev_key)
    # alice's user-signing key signs bob's master key.
    bob_master = {k: v for k, v in bob_body["master_key"].items() if k != "signatures"}
    signed_bob = sign_json(dict(bob_master), alice.user_id, keys["user_signing"])
    res = await ok(alice, "POST", "/keys/signatures/upload", {
        alice.user_id: {alice.device_id: signed_device, keys["master"].verify_key_base64: signed_master},
        bob.user_id: {_bob_keys["master"].verify_key_base64: signed_bob},
    })
    assert res == {"failures": {}}

    q = await ok(alice, "POST", "/keys/query", {"device_keys": {alice.user_id: [], bob.user_id: []}})
    sigs = q["device_keys"][alice.user_id][alice.device_id]["signatures"][alice.user_id]
    assert sigs[keys["self_signing"].key_id] == signed_device["signatures"][alice.user_id][keys["self_signing"].key_id]
    assert sigs[dev_key.key_id] == dev_keys["signatures"][alice.user_id][dev_key.key_id]
    assert dev_key.key_id in q["master_keys"][alice.user_id]["signatures"][alice.user_id]
    assert keys["user_signing"].key_id in q["master_keys"][bob.user_id]["signatures"][alice.user_id]
    # Others' signatures on bob's master key are only shown to the signer.
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
    assert alice.user_id not in q["master_keys"][bob.user_id].get("signatures", {})

    # Bad signatures and unknown targets are reported per key, and not stored.
    forged = sign_json(dict(to_sign), alice.user_id, new_key())
    forged["signatures"][alice.user_id] = {keys["self_signing"].key_id: next(iter(
        forged["signatures"][alice.user_id].values()))}
    res = await ok(alice, "POST", "/keys/signatures/upload", {
        alice.user_id: {alice.device_id: forged, "NOSUCHDEVICE": signed_device},
        "@nobody:test.local": {"somekey": signed_bob},
    })
    assert res["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    assert res["failures"][alice.user_id]["NOSUCHDEVICE"]["errcode"] == "M_NOT_FOUND"
    assert res["failures"]["@nobody:test.local"]["somekey"]["errcode"] == "M_NOT_FOUND"
    q = await ok(alice, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    sigs = q["device_keys"][alice.user_id][alice.device_id]["signatures"][alice.user_id]
    assert sigs[keys["self_signing"].key_id] == signed_device["signatures"][alice.user_id][keys["self_signing"].key_id]
    assert await err(alice, "POST", "/keys/signatures/upload", {alice.user_id: []}) == (400, "M_BAD_JSON")


# -- key backup ----------------------------------------------------------------------------------------------
BACKUP_ALG = "m.megolm_backup.v1.curve25519-aes-sha2"


def backup_data(fmi: int, fc: int, verified: bool, tag: str = "x") -> Json:
    return {"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
            "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag}}


async def test_backup_versions(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    assert await err(alice, "GET", "/room_keys/version") == (404, "M_NOT_FOUND")
    v1 = await ok(alice, "POST", "/room_keys/version", {"algorithm": BACKUP_ALG, "auth_data": {"public_key": "a"}})
    assert v1 == {"version": "1"}
    assert await ok(alice, "GET", "/room_keys/version") == {
        "algorithm": BACKUP_ALG, "auth_data": {"public_key": "a"}, "version": "1", "count": 0, "etag": "0"}
    assert await err(bob, "GET", "/room_keys/version") == (404, "M_NOT_FOUND")  # per user
    v2 = await ok(alice, "POST", "/room_keys/version", {"algorithm": BACKUP_ALG, "auth_data": {"public_key": "b"}})
    assert v2 == {"version": "2"}
    assert (await ok(alice, "GET", "/room_keys/version"))["version"] == "2"
    assert (await ok(alice, "GET", "/room_keys/version/1"))["auth_data"] == {"public_key": "a"}

    await ok(alice, "PUT", "/room_keys/version/2", {"algorithm": BACKUP_ALG, "auth_data": {"public_key": "c"},
                                                    "version": "2"})
    assert (await ok(alice, "GET", "/room_keys/version/2"))["auth_data"] == {"public_key": "c"}
    assert await err(alice, "PUT", "/room_keys/version/2", {
        "algorithm": BACKUP_ALG, "auth_data": {}, "version": "3"}) == (400, "M_INVALID_PARAM")
    assert await err(alice, "PUT", "/room_keys/version/2", {
        "algorithm": "other", "auth_data": {}}) == (400, "M_INVALID_PARAM")
    assert await err(alice, "PUT", "/room_keys/version/99", {
        "algorithm": BACKUP_ALG, "auth_data": {}}) == (404, "M_NOT_FOUND")
    assert (await ok(alice, "GET", "/room_keys/version/2"))["auth_data"] == {"public_key": "c"}

    await ok(alice, "DELETE", "/room_keys/version/2")
    assert (await ok(alice, "GET", "/room_keys/version"))["version"] == "1"
    assert await err(alice, "GET", "/room_keys/version/2") == (404, "M_NOT_FOUND")
    assert await err(alice, "DELETE", "/room_keys/version/2") == (404, "M_NOT_FOUND")
    assert await err(alice, "GET", "/room_keys/version/nope") == (404, "M_NOT_FOUND")
    # A new version never reuses a deleted one's number.
    assert (await ok(alice, "POST", "/room_keys/version", {"algorithm": BACKUP_ALG, "auth_data": {}})) == {
        "version": "3"}

    assert await err(alice, "POST", "/room_keys/version", {"auth_data": {}}) == (400, "M_MISSING_PARAM")
    assert await err(alice, "POST", "/room_keys/version", {"algorithm": 5, "auth_data": {}}) == (
        400, "M_BAD_JSON")


async def test_backup_keys_replacement_rules_etag_and_count(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    await ok(alice, "POST", "/room_keys/version", {"algorithm": BACKUP_ALG, "auth_data": {}})
    room = "!room:test.local"
    res = await ok(alice, "PUT", "/room_keys/keys", {"rooms": {room: {"sessions": {
        "S1": backup_data(5, 1, False, "first")}}}}, version="1")
    assert res["count"] == 1
    etag = res["etag"]
    assert (await ok(alice, "GET", "/room_keys/version"))["etag"] == etag

    async def put_s1(data: Json) -> Json:
        return await ok(alice, "PUT", f"/room_keys/keys/{room}/S1", data, version="1")  # type: ignore[no-any-return]

    async def current() -> Json:
        return await ok(alice, "GET", f"/room_keys/keys/{room}/S1", version="1")  # type: ignore[no-any-return]

    steps = [
        (backup_data(7, 0, False, "a"), "first"),     # higher first_message_index: kept old
        (backup_data(5, 0, False, "b"), "b"),         # same index, fewer forwards: replaced
        (backup_data(5, 3, False, "c"), "b"),         # same index, more forwards: kept
        (backup_data(9, 9, True, "d"), "d"),          # verified beats unverified
        (backup_data(0, 0, False, "e"), "d"),         # unverified never replaces verified
        (backup_data(2, 3, True, "f"), "f"),          # both verified: lower index wins
    ]
    for data, expected in steps:
        res = await put_s1(data)
        assert (await current())["session_data"]["ciphertext"] == expected, data
        assert res["count"] == 1
        changed = expected == data["session_data"]["ciphertext"]
        assert (res["etag"] != etag) == changed, data
        etag = res["etag"]
    assert await current() == backup_data(2, 3, True, "f")

    await ok(alice, "PUT", f"/room_keys/keys/{room}", {"sessions": {"S2": backup_data(0, 0, False)}}, version="1")
    everything = await ok(alice, "GET", "/room_keys/keys", version="1")
    assert set(everything["rooms"][room]["sessions"]) == {"S1", "S2"}
    assert (await ok(alice, "GET", f"/room_keys/keys/{room}", version="1"))["sessions"].keys() == {"S1", "S2"}
    assert await ok(alice, "GET", "/room_keys/keys/!other:test.local", version="1") == {"sessions": {}}
    assert await err(alice, "GET", f"/room_keys/keys/{room}/S3", version="1") == (404, "M_NOT_FOUND")
    assert (await ok(alice, "GET", "/room_keys/version"))["count"] == 2

    res = await ok(alice, "DELETE", f"/room_keys/keys/{room}/S1", version="1")
    assert res["count"] == 1 and res["etag"] != etag
    assert await err(alice, "GET", f"/room_keys/keys/{room}/S1", version="1") == (404, "M_NOT_FOUND")
    res = await ok(alice, "DELETE", "/room_keys/keys", version="1")
    assert res["count"] == 0
    assert await ok(alice, "GET", "/room_keys/keys", version="1") == {"rooms": {}}


async def test_backup_keys_wrong_version_and_bad_input(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = "!room:test.local"
    body = {"rooms": {room: {"sessions": {"S1": backup_data(0, 0, False)}}}}
    assert await err(alice, "PUT", "/room_keys/keys", body, version="1") == (404, "M_NOT_FOUND")
    await ok(alice, "POST", "/room_keys/version", {"algorithm": BACKUP_ALG, "auth_data": {}})
    await ok(alice, "POST", "/room_keys/version", {"algorithm": BACKUP_ALG, "auth_data": {}})
    status, data = await alice.request("PUT", "/room_keys/keys", body, params={"version": "1"})
    assert (status, data["errcode"], data["current_version"]) == (403, "M_WRONG_ROOM_KEYS_VERSION", "2")
    assert await err(alice, "PUT", "/room_keys/keys", body, version="99") == (404, "M_NOT_FOUND")
    assert await err(alice, "PUT", "/room_keys/keys", body) == (400, "M_MISSING_PARAM")
    assert await err(alice, "GET", "/room_keys/keys", version="99") == (404, "M_NOT_FOUND")
    bad = [
        {"rooms": []},
        {"rooms": {room: {"sessions": []}}},
        {"rooms": {room: {"sessions": {"S1": dict(backup_data(0, 0, False), first_message_index=-1)}}}},
        {"rooms": {room: {"sessions": {"S1": dict(backup_data(0, 0, False), is_verified="yes")}}}},
        {"rooms": {room: {"sessions": {"S1": backup_data(0, 0, False), "S2": {"forwarded_count": 0}}}}},
    ]
    for b in bad:
        assert await err(alice, "PUT", "/room_keys/keys", b, version="2") == (400, "M_BAD_JSON"), b
    assert await ok(alice, "GET", "/room_keys/keys", version="2") == {"rooms": {}}
    assert (await ok(alice, "GET", "/room_keys/version"))["etag"] == "0"
    # Deleting the version deletes its keys.
    await ok(alice, "PUT", "/room_keys/keys", body, version="2")
    await ok(alice, "DELETE", "/room_keys/version/2")
    assert int(await server.hs.db.fetchval("SELECT COUNT(*) FROM e2e_room_keys")) == 0


async def test_concurrent_backup_versions_get_distinct_numbers(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    results = await asyncio.gather(*(ok(alice, "POST", "/room_keys/version",
                                        {"algorithm": BACKUP_ALG, "auth_data": {"n": i}}) for i in range(6)))
    assert sorted(int(r["version"]) for r in results) == [1, 2, 3, 4, 5, 6]
    assert (await ok(alice, "GET", "/room_keys/version"))["version"] == "6"
