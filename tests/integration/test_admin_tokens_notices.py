"""Synapse's admin API for registration tokens (CRUD, and registering with the m.login.registration_token
UIA stage when `registration_requires_token`), server notices (send_server_notice, the notices room
tagged m.server_notice) and the server version, over real HTTP on both engines; admins only."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.harness import TestHomeServer, admin, ok, user

ADMIN = "/_synapse/admin/v1"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
TOKEN_FIELDS = {"token", "uses_allowed", "pending", "completed", "expiry_time"}


async def register_with_token(server: TestHomeServer, name: str, token: str | None) -> tuple[int, Any]:
    """Register through UIA: the first round for a session, then the token stage, then dummy."""
    client = server.client()
    try:
        body: dict[str, Any] = {"username": name, "password": "password123"}
        status, first = await client.request("POST", "/register", body, auth=False)
        assert status == 401, first
        assert first["flows"] == [{"stages": ["m.login.registration_token", "m.login.dummy"]}]
        session = first["session"]
        status, second = await client.request(
            "POST", "/register", {**body, "auth": {"type": "m.login.registration_token", "token": token,
                                                   "session": session}}, auth=False)
        if status != 401 or second.get("errcode"):
            return status, second
        assert second["completed"] == ["m.login.registration_token"]
        return await client.request("POST", "/register", {
            **body, "auth": {"type": "m.login.dummy", "session": session}}, auth=False)
    finally:
        await client.close()


async def test_registration_tokens_crud(make_server: Any, engine: str) -> None:
    server = await make_server(engine)
    boss = await admin(server)
    bob = await user(server, "bob")
    # Non-admins are refused, everywhere.
    for method, path in (("GET", "/registration_tokens"), ("POST", "/registration_tokens/new"),
                         ("GET", "/registration_tokens/abc"), ("DELETE", "/registration_tokens/abc")):
        status, body = await bob.request(method, ADMIN + path, {} if method == "POST" else None)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", (method, path)
    status, _ = await server.client().request("GET", ADMIN + "/registration_tokens", auth=False)
    assert status == 401

    made = await ok(boss, "POST", ADMIN + "/registration_tokens/new", {})
    assert set(made) == TOKEN_FIELDS and len(made["token"]) == 16
    assert (made["uses_allowed"], made["pending"], made["completed"], made["expiry_time"]) == (None, 0, 0, None)
    short = await ok(boss, "POST", ADMIN + "/registration_tokens/new", {"length": 5, "uses_allowed": 1})
    assert len(short["token"]) == 5 and short["uses_allowed"] == 1
    expiry = int(time.time() * 1000) + 3_600_000
    named = await ok(boss, "POST", ADMIN + "/registration_tokens/new",
                     {"token": "abc-DEF_1.~", "expiry_time": expiry})
    assert named == {"token": "abc-DEF_1.~", "uses_allowed": None, "pending": 0, "completed": 0,
                     "expiry_time": expiry}
    for bad in ({"token": "abc-DEF_1.~"}, {"token": ""}, {"token": "a b"}, {"token": "x" * 65}, {"token": 5},
                {"length": 0}, {"length": 65}, {"length": "5"}, {"uses_allowed": -1}, {"uses_allowed": 1.5},
                {"expiry_time": 1000}, {"expiry_time": "soon"}):
        status, body = await boss.request("POST", ADMIN + "/registration_tokens/new", bad)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", (bad, body)

    listed = await ok(boss, "GET", ADMIN + "/registration_tokens")
    assert sorted(t["token"] for t in listed["registration_tokens"]) == sorted(
        [made["token"], short["token"], "abc-DEF_1.~"])
    assert await ok(boss, "GET", ADMIN + "/registration_tokens/abc-DEF_1.~") == named
    changed = await ok(boss, "PUT", ADMIN + "/registration_tokens/abc-DEF_1.~",
                       {"uses_allowed": 0, "expiry_time": None})
    assert (changed["uses_allowed"], changed["expiry_time"]) == (0, None)
    # uses_allowed 0: used up, so no longer valid.
    valid = await ok(boss, "GET", ADMIN + "/registration_tokens", valid="true")
    assert "abc-DEF_1.~" not in {t["token"] for t in valid["registration_tokens"]}
    invalid = await ok(boss, "GET", ADMIN + "/registration_tokens", valid="false")
    assert [t["token"] for t in invalid["registration_tokens"]] == ["abc-DEF_1.~"]
    status, body = await boss.request("PUT", ADMIN + "/registration_tokens/abc-DEF_1.~", {"uses_allowed": "x"})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"

    assert await ok(boss, "DELETE", ADMIN + "/registration_tokens/abc-DEF_1.~") == {}
    for method in ("GET", "DELETE", "PUT"):
        status, body = await boss.request(method, ADMIN + "/registration_tokens/abc-DEF_1.~",
                                          {} if method == "PUT" else None)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
        assert body["error"] == "No such registration token: abc-DEF_1.~"


async def test_registration_requires_token(make_server: Any, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server(engine, registration_requires_token=True)
    boss_client = server.client()
    # An admin made by shared-secret registration, which needs no token.
    reg = server.hs.registration
    login = await reg.register_and_login("boss", await reg.hash_password("password123"), admin=True)
    boss_client.token = login.access_token
    try:
        token = (await ok(boss_client, "POST", ADMIN + "/registration_tokens/new",
                          {"token": "onetime", "uses_allowed": 1}))["token"]
        anon = server.client()
        status, body = await anon.request("GET", VALIDITY, params={"token": token}, auth=False)
        assert (status, body) == (200, {"valid": True})
        status, body = await anon.request("GET", VALIDITY, params={"token": "nope"}, auth=False)
        assert (status, body) == (200, {"valid": False})

        # No token, or a wrong one: not registered.
        client = server.client()
        status, body = await client.request("POST", "/register", {
            "username": "carol", "password": "password123", "auth": {"type": "m.login.dummy"}}, auth=False)
        assert status == 401 and body["completed"] == ["m.login.dummy"]
        await client.close()
        status, body = await register_with_token(server, "carol", "wrong")
        assert status == 401 and body["errcode"] == "M_UNAUTHORIZED"

        status, body = await register_with_token(server, "carol", token)
        assert status == 200 and body["user_id"] == "@carol:test.local", body
        spent = await ok(boss_client, "GET", ADMIN + f"/registration_tokens/{token}")
        assert (spent["pending"], spent["completed"]) == (0, 1)
        status, body = await anon.request("GET", VALIDITY, params={"token": token}, auth=False)
        assert (status, body) == (200, {"valid": False})
        status, body = await register_with_token(server, "dave", token)
        assert status == 401 and body["errcode"] == "M_UNAUTHORIZED"

        # A session that passed the stage holds a pending use; when it expires unused, the use comes back.
        await ok(boss_client, "POST", ADMIN + "/registration_tokens/new", {"token": "twice", "uses_allowed": 1})
        client = server.client()
        status, first = await client.request("POST", "/register", {"username": "erin", "password": "pw-123456"},
                                             auth=False)
        status, body = await client.request("POST", "/register", {"auth": {
            "type": "m.login.registration_token", "token": "twice", "session": first["session"]}}, auth=False)
        assert status == 401 and body["completed"] == ["m.login.registration_token"]
        held = await ok(boss_client, "GET", ADMIN + "/registration_tokens/twice")
        assert (held["pending"], held["completed"]) == (1, 0)
        status, body = await anon.request("GET", VALIDITY, params={"token": "twice"}, auth=False)
        assert body == {"valid": False}
        later = time.time() * 1000 + 49 * 3600 * 1000  # past the sessions' 48 hours
        monkeypatch.setattr("hs.services.registration.now_ms", lambda: int(later))
        await client.request("POST", "/register", {"username": "frank", "password": "pw-123456"}, auth=False)
        for _ in range(100):
            if (await ok(boss_client, "GET", ADMIN + "/registration_tokens/twice"))["pending"] == 0:
                break
            await asyncio.sleep(0.02)
        status, body = await anon.request("GET", VALIDITY, params={"token": "twice"}, auth=False)
        assert body == {"valid": True}
        await client.close()
        await anon.close()
    finally:
        await boss_client.close()


NOTICES = {"system_mxid_localpart": "notices", "system_mxid_display_name": "Server Notices",
           "room_name": "Notices", "room_topic": "From the admins"}


async def test_server_notices(make_server: Any, engine: str) -> None:
    server = await make_server(engine, server_notices=NOTICES)
    boss = await admin(server)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    notice = {"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "maintenance at 5"}}
    status, body = await bob.request("POST", ADMIN + "/send_server_notice", notice)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"

    event_id = (await ok(boss, "POST", ADMIN + "/send_server_notice", notice))["event_id"]
    sync = await alice.sync()
    invites = sync["rooms"]["invite"]
    assert len(invites) == 1
    room_id = next(iter(invites))
    state = {e["type"]: e for e in invites[room_id]["invite_state"]["events"]}
    assert state["m.room.name"]["content"]["name"] == "Notices"
    assert state["m.room.member"]["sender"] == "@notices:test.local"
    tags = await ok(alice, "GET", f"/user/{alice.user_id}/rooms/{room_id}/tags")
    assert "m.server_notice" in tags["tags"]

    await ok(alice, "POST", f"/join/{room_id}", {})
    messages = await ok(alice, "GET", f"/rooms/{room_id}/messages", dir="b", limit="20")
    notices = [e for e in messages["chunk"] if e["type"] == "m.room.message"]
    assert [e["event_id"] for e in notices] == [event_id]
    assert notices[0]["content"]["body"] == "maintenance at 5"
    topic = await ok(alice, "GET", f"/rooms/{room_id}/state/m.room.topic")
    assert topic["topic"] == "From the admins"
    profile = await ok(alice, "GET", "/profile/@notices:test.local")
    assert profile["displayname"] == "Server Notices"
    # Members cannot write in the notices room.
    status, body = await alice.request("PUT", f"/rooms/{room_id}/send/m.room.message/t1",
                                       {"msgtype": "m.text", "body": "hi"})
    assert status == 403

    # A second notice goes to the same room; a PUT with a transaction ID is idempotent.
    second = await ok(boss, "PUT", ADMIN + "/send_server_notice/txn1",
                      {"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "done"}})
    again = await ok(boss, "PUT", ADMIN + "/send_server_notice/txn1",
                     {"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "done"}})
    assert second == again
    event = await ok(alice, "GET", f"/rooms/{room_id}/event/{second['event_id']}")
    assert event["content"]["body"] == "done"

    # After leaving, the next notice invites the user again to the same room.
    await ok(alice, "POST", f"/rooms/{room_id}/leave", {})
    await ok(boss, "POST", ADMIN + "/send_server_notice",
             {"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "back"}})
    membership = await server.hs.event_store.get_membership(room_id, alice.user_id)
    assert membership is not None and membership[0] == "invite"

    for bad, code in (({"user_id": "@x:elsewhere", "content": {}}, 400), ({"user_id": "@ghost:test.local",
                                                                          "content": {}}, 404),
                      ({"user_id": alice.user_id}, 400), ({"content": {}}, 400),
                      ({"user_id": alice.user_id, "content": "text"}, 400)):
        status, body = await boss.request("POST", ADMIN + "/send_server_notice", bad)
        assert status == code, (bad, body)


async def test_server_notices_off_and_version(make_server: Any, engine: str) -> None:
    server = await make_server(engine)
    boss = await admin(server)
    alice = await user(server, "alice")
    status, body = await boss.request("POST", ADMIN + "/send_server_notice",
                                      {"user_id": alice.user_id, "content": {"body": "x"}})
    assert status == 400 and body["error"] == "Server notices are not enabled on this server"
    # server_version needs no token, as in Synapse.
    status, body = await server.client().request("GET", ADMIN + "/server_version", auth=False)
    assert status == 200 and set(body) == {"server_version"} and isinstance(body["server_version"], str)


async def test_server_notices_auto_join(make_server: Any, engine: str) -> None:
    server = await make_server(engine, server_notices={**NOTICES, "auto_join": True})
    boss = await admin(server)
    alice = await user(server, "alice")
    await ok(boss, "POST", ADMIN + "/send_server_notice",
             {"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "hello"}})
    joined = (await ok(alice, "GET", "/joined_rooms"))["joined_rooms"]
    assert len(joined) == 1
