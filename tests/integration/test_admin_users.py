"""Synapse's users admin API over real HTTP, on both engines: the user list (filters, orders, pages
with next_token), one user's details, creating and modifying users with PUT (password, profile, admin
flag, deactivation, lock, user type), deactivation with erase, password resets, whois, joined rooms,
devices, shadow-bans (sends answered, nothing stored), logging in as a user (with an expiry), and who
may call it (admins only) with what (Synapse's errors)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import pytest

from tests.harness import TestHomeServer, admin, ok, user

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
LIST_KEYS = {"name", "user_type", "is_guest", "admin", "deactivated", "shadow_banned", "displayname",
             "avatar_url", "creation_ts", "erased", "last_seen_ts", "locked"}
DETAIL_KEYS = LIST_KEYS | {"appservice_id", "consent_server_notice_sent", "consent_version", "consent_ts",
                           "suspended", "threepids", "external_ids"}


@pytest.fixture
async def server(make_server: Any, engine: str) -> TestHomeServer:
    srv: TestHomeServer = await make_server(engine)
    return srv


def uid(server: TestHomeServer, localpart: str) -> str:
    return f"@{localpart}:{server.config.server_name}"


def q(user_id: str | None) -> str:
    return quote(str(user_id), safe="")


async def login(server: TestHomeServer, localpart: str, password: str) -> tuple[int, Any]:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": password}
    return await server.client().request("POST", "/login", body, auth=False)


async def test_only_admins(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    calls = [("GET", f"{V2}/users"), ("GET", f"{V2}/users/{q(alice.user_id)}"),
             ("PUT", f"{V2}/users/{q(alice.user_id)}"), ("POST", f"{V1}/deactivate/{q(alice.user_id)}"),
             ("POST", f"{V1}/reset_password/{q(alice.user_id)}"), ("GET", f"{V1}/whois/{q(uid(server, 'x'))}"),
             ("GET", f"{V1}/users/{q(alice.user_id)}/admin"), ("PUT", f"{V1}/users/{q(alice.user_id)}/admin"),
             ("GET", f"{V1}/users/{q(alice.user_id)}/joined_rooms"),
             ("GET", f"{V2}/users/{q(alice.user_id)}/devices"),
             ("DELETE", f"{V2}/users/{q(alice.user_id)}/devices/X"),
             ("POST", f"{V1}/users/{q(alice.user_id)}/shadow_ban"),
             ("DELETE", f"{V1}/users/{q(alice.user_id)}/shadow_ban"),
             ("POST", f"{V1}/users/{q(alice.user_id)}/login")]
    for method, path in calls:
        status, body = await alice.request(method, path, {})
        assert (status, body) == (403, {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"}), path
        status, body = await server.client().request(method, path, {})
        assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", path


async def test_list_users(server: TestHomeServer) -> None:
    boss = await admin(server)
    for name in ("bob", "carol", "dave"):
        await user(server, name)
    await server.hs.db.execute("UPDATE profiles SET displayname = 'zed' WHERE user_id = $1", uid(server, "bob"))
    await server.hs.db.execute("UPDATE users SET deactivated = 1 WHERE user_id = $1", uid(server, "dave"))
    await server.hs.db.execute("UPDATE users SET locked = 1 WHERE user_id = $1", uid(server, "carol"))

    page = await ok(boss, "GET", f"{V2}/users")
    assert [u["name"] for u in page["users"]] == [uid(server, "admin"), uid(server, "bob")]
    assert page["total"] == 2 and "next_token" not in page
    assert set(page["users"][0]) == LIST_KEYS
    assert page["users"][0]["admin"] is True and page["users"][1]["admin"] is False
    assert isinstance(page["users"][0]["last_seen_ts"], int) and isinstance(page["users"][0]["creation_ts"], int)

    everyone = await ok(boss, "GET", f"{V2}/users", deactivated="true", locked="true")
    assert [u["name"] for u in everyone["users"]] == [uid(server, n) for n in ("admin", "bob", "carol", "dave")]
    dave = everyone["users"][3]
    assert dave["deactivated"] is True and everyone["users"][2]["locked"] is True

    v3 = "/_synapse/admin/v3/users"
    assert [u["name"] for u in (await ok(boss, "GET", v3, deactivated="true"))["users"]] == [uid(server, "dave")]
    assert [u["name"] for u in (await ok(boss, "GET", v3, deactivated="false"))["users"]] == [
        uid(server, "admin"), uid(server, "bob")]
    assert (await ok(boss, "GET", v3, locked="true"))["total"] == 4

    first = await ok(boss, "GET", f"{V2}/users", deactivated="true", locked="true", limit="2")
    assert len(first["users"]) == 2 and first["next_token"] == "2" and first["total"] == 4
    rest = await ok(boss, "GET", f"{V2}/users", deactivated="true", locked="true", limit="2", **{"from": "2"})
    assert [u["name"] for u in rest["users"]] == [uid(server, "carol"), uid(server, "dave")]
    assert "next_token" not in rest

    back = await ok(boss, "GET", f"{V2}/users", dir="b", deactivated="true", locked="true")
    assert [u["name"] for u in back["users"]] == [uid(server, n) for n in ("dave", "carol", "bob", "admin")]
    by_name = await ok(boss, "GET", f"{V2}/users", order_by="displayname", dir="b")
    assert by_name["users"][0]["name"] == uid(server, "bob")  # "zed" sorts after "admin"

    assert [u["name"] for u in (await ok(boss, "GET", f"{V2}/users", name="zE"))["users"]] == [uid(server, "bob")]
    assert [u["name"] for u in (await ok(boss, "GET", f"{V2}/users", user_id="BO"))["users"]] == [uid(server, "bob")]
    assert [u["name"] for u in (await ok(boss, "GET", f"{V2}/users", admins="true"))["users"]] == [boss.user_id]
    assert [u["name"] for u in (await ok(boss, "GET", f"{V2}/users", admins="false"))["users"]] == [uid(server, "bob")]

    await server.hs.db.execute("UPDATE users SET user_type = 'bot' WHERE user_id = $1", uid(server, "bob"))

    async def names(**params: str) -> list[str]:
        return [u["name"].split(":")[0][1:] for u in (await ok(boss, "GET", f"{V2}/users", **params))["users"]]

    assert await names(not_user_type="bot") == ["admin"]
    assert await names(not_user_type="") == ["bob"]
    assert await names(not_user_type="support") == ["admin", "bob"]
    status, data = await boss.request("GET", f"{V2}/users?not_user_type=bot&not_user_type=")
    assert status == 200 and data["users"] == [], data

    for params in ({"order_by": "nope"}, {"dir": "x"}, {"limit": "-1"}, {"from": "-1"}, {"guests": "maybe"}):
        status, body = await boss.request("GET", f"{V2}/users", params=params)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", params


async def test_get_user(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    details = await ok(boss, "GET", f"{V2}/users/{q(bob.user_id)}")
    assert set(details) == DETAIL_KEYS
    assert details["name"] == bob.user_id and details["displayname"] == "bob"
    assert details["threepids"] == [] and details["erased"] is False and details["deactivated"] is False

    status, body = await boss.request("GET", f"{V2}/users/{q(uid(server, 'nobody'))}")
    assert (status, body) == (404, {"errcode": "M_NOT_FOUND", "error": "User not found"})
    status, body = await boss.request("GET", f"{V2}/users/{q('@x:elsewhere.org')}")
    assert (status, body) == (400, {"errcode": "M_UNKNOWN", "error": "Can only look up local users"})
    status, body = await boss.request("GET", f"{V2}/users/notauser")
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"


async def test_put_creates_then_modifies(server: TestHomeServer) -> None:
    boss = await admin(server)
    new = uid(server, "newbie")
    status, created = await boss.request("PUT", f"{V2}/users/{q(new)}", {
        "password": "s3cret-pass", "displayname": "New Bie", "avatar_url": "mxc://x/y", "user_type": "bot"})
    assert status == 201, created
    assert set(created) == DETAIL_KEYS
    assert (created["displayname"], created["avatar_url"], created["user_type"], created["admin"]) == (
        "New Bie", "mxc://x/y", "bot", False)
    status, logged_in = await login(server, "newbie", "s3cret-pass")
    assert status == 200, logged_in

    status, changed = await boss.request("PUT", f"{V2}/users/{q(new)}", {
        "displayname": "Renamed", "admin": True, "user_type": None, "password": "another-pass"})
    assert status == 200, changed
    assert (changed["displayname"], changed["admin"], changed["user_type"]) == ("Renamed", True, None)
    # The password changed and, by default, the user's sessions ended.
    assert (await login(server, "newbie", "s3cret-pass"))[0] == 403
    assert (await login(server, "newbie", "another-pass"))[0] == 200
    old = server.client()
    old.token = logged_in["access_token"]
    assert (await old.request("GET", "/account/whoami"))[0] == 401

    status, body = await boss.request("PUT", f"{V2}/users/{q(boss.user_id)}", {"admin": False})
    assert (status, body["error"]) == (400, "You may not demote yourself.")
    for bad in ({"admin": "yes"}, {"user_type": "wizard"}, {"locked": 1}, {"deactivated": True, "locked": True},
                {"password": 5}):
        status, body = await boss.request("PUT", f"{V2}/users/{q(new)}", bad)
        assert status == 400, (bad, body)
    status, body = await boss.request("PUT", f"{V2}/users/{q('@x:elsewhere.org')}", {})
    assert (status, body["error"]) == (400, "This endpoint can only be used with local users")


async def test_put_lock_and_deactivate(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    assert (await ok(boss, "PUT", f"{V2}/users/{q(bob.user_id)}", {"locked": True}))["locked"] is True
    status, body = await bob.request("GET", "/account/whoami")
    assert (status, body) == (401, {"errcode": "M_USER_LOCKED", "error": "User account has been locked",
                                    "soft_logout": True})
    status, body = await login(server, "bob", "password123")  # a new login is refused too (as Synapse)
    assert (status, body["errcode"]) == (401, "M_USER_LOCKED"), body
    assert (await ok(boss, "PUT", f"{V2}/users/{q(bob.user_id)}", {"locked": False}))["locked"] is False
    assert (await ok(bob, "GET", "/account/whoami"))["user_id"] == bob.user_id

    gone = await ok(boss, "PUT", f"{V2}/users/{q(bob.user_id)}", {"deactivated": True})
    assert gone["deactivated"] is True
    assert (await bob.request("GET", "/account/whoami"))[0] == 401
    status, body = await boss.request("PUT", f"{V2}/users/{q(bob.user_id)}", {"deactivated": False})
    assert (status, body["error"]) == (400, "Must provide a password to re-activate an account.")
    back = await ok(boss, "PUT", f"{V2}/users/{q(bob.user_id)}", {"deactivated": False, "password": "pw-again"})
    assert back["deactivated"] is False
    assert (await login(server, "bob", "pw-again"))[0] == 200


async def test_deactivate_with_erase(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    room = await bob.create_room()
    await ok(bob, "PUT", f"/rooms/{room}/state/m.room.join_rules", {"join_rule": "public"})
    await ok(boss, "POST", f"/join/{room}")
    assert await ok(boss, "POST", f"{V1}/deactivate/{q(bob.user_id)}", {"erase": True}) == {
        "id_server_unbind_result": "success"}
    details = await ok(boss, "GET", f"{V2}/users/{q(bob.user_id)}")
    assert details["deactivated"] is True and details["erased"] is True
    assert details["displayname"] is None and details["avatar_url"] is None  # erasure removes the profile
    assert (await ok(boss, "GET", f"{V1}/users/{q(bob.user_id)}/joined_rooms")) == {"joined_rooms": [], "total": 0}
    status, body = await boss.request("POST", f"{V1}/deactivate/{q(bob.user_id)}", {"erase": "yes"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await boss.request("POST", f"{V1}/deactivate/{q(uid(server, 'nobody'))}")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await boss.request("POST", f"{V1}/deactivate/{q('@x:elsewhere.org')}")
    assert (status, body["error"]) == (400, "Can only deactivate local users")


async def test_reset_password(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    await ok(boss, "POST", f"{V1}/reset_password/{q(bob.user_id)}",
             {"new_password": "fresh-pass", "logout_devices": False})
    assert (await ok(bob, "GET", "/account/whoami"))["user_id"] == bob.user_id
    assert (await login(server, "bob", "fresh-pass"))[0] == 200
    await ok(boss, "POST", f"{V1}/reset_password/{q(bob.user_id)}", {"new_password": "fresher-pass"})
    assert (await bob.request("GET", "/account/whoami"))[0] == 401
    status, body = await boss.request("POST", f"{V1}/reset_password/{q(bob.user_id)}", {})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await boss.request("POST", f"{V1}/reset_password/{q(uid(server, 'nobody'))}",
                                      {"new_password": "x-pass-word"})
    assert status == 404


async def test_whois_rooms_devices(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    room = await bob.create_room()
    whois = await ok(boss, "GET", f"{V1}/whois/{q(bob.user_id)}")
    assert whois["user_id"] == bob.user_id and list(whois["devices"]) == [bob.device_id]
    connections = whois["devices"][bob.device_id]["sessions"][0]["connections"]
    assert connections and set(connections[0]) == {"ip", "last_seen", "user_agent"}
    status, body = await boss.request("GET", f"{V1}/whois/{q('@x:elsewhere.org')}")
    assert (status, body["error"]) == (400, "Can only whois a local user")
    assert (await ok(bob, "GET", f"{V1}/whois/{q(bob.user_id)}"))["user_id"] == bob.user_id  # about oneself
    assert await ok(boss, "GET", f"{V1}/whois/{q(uid(server, 'nobody'))}") == {
        "user_id": uid(server, "nobody"), "devices": {}}

    assert await ok(boss, "GET", f"{V1}/users/{q(bob.user_id)}/joined_rooms") == {"joined_rooms": [room], "total": 1}
    other = await boss.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{other}")
    await ok(bob, "POST", f"/rooms/{other}/leave", {})
    invited = await boss.create_room()
    await ok(boss, "POST", f"/rooms/{invited}/invite", {"user_id": bob.user_id})
    assert await ok(boss, "GET", f"{V1}/users/{q(bob.user_id)}/memberships") == {
        "memberships": {room: "join", other: "leave", invited: "invite"}}

    devices = await ok(boss, "GET", f"{V2}/users/{q(bob.user_id)}/devices")
    assert devices["total"] == 1 and devices["devices"][0]["device_id"] == bob.device_id
    assert set(devices["devices"][0]) == {"device_id", "display_name", "last_seen_ip", "last_seen_ts",
                                          "last_seen_user_agent", "user_id"}
    status, body = await boss.request("GET", f"{V2}/users/{q(uid(server, 'nobody'))}/devices")
    assert (status, body["error"]) == (404, "Unknown user")

    one = f"{V2}/users/{q(bob.user_id)}/devices/{bob.device_id}"
    assert await ok(boss, "GET", one) == devices["devices"][0]
    assert await ok(boss, "PUT", one, {"display_name": "Bob's phone"}) == {}
    assert (await ok(boss, "GET", one))["display_name"] == "Bob's phone"
    assert (await ok(bob, "GET", f"/devices/{bob.device_id}"))["display_name"] == "Bob's phone"
    status, body = await boss.request("GET", f"{V2}/users/{q(bob.user_id)}/devices/NOSUCH")
    assert (status, body) == (404, {"errcode": "M_NOT_FOUND", "error": "Not found"})
    status, body = await boss.request("PUT", f"{V2}/users/{q(bob.user_id)}/devices/NOSUCH", {"display_name": "x"})
    assert status == 404
    status, body = await boss.request("PUT", one, {"display_name": "x" * 101})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    assert await ok(boss, "DELETE", one) == {}
    assert (await bob.request("GET", "/account/whoami"))[0] == 401
    assert (await ok(boss, "GET", f"{V2}/users/{q(bob.user_id)}/devices")) == {"devices": [], "total": 0}
    assert await ok(boss, "DELETE", f"{V2}/users/{q(bob.user_id)}/devices/NOSUCH") == {}

    # Several at once.
    second, third = server.client(), server.client()
    for c in (second, third):
        status, body = await c.request("POST", "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "password123"}, auth=False)
        assert status == 200, body
        c.token = body["access_token"]
        c.device_id = body["device_id"]
    assert await ok(boss, "POST", f"{V2}/users/{q(bob.user_id)}/delete_devices",
                    {"devices": [second.device_id, "NOSUCH"]}) == {}
    listed = await ok(boss, "GET", f"{V2}/users/{q(bob.user_id)}/devices")
    assert [d["device_id"] for d in listed["devices"]] == [third.device_id]
    assert (await second.request("GET", "/account/whoami"))[0] == 401
    status, body = await boss.request("POST", f"{V2}/users/{q(bob.user_id)}/delete_devices", {})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    await second.close()
    await third.close()


async def test_shadow_ban(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    room = await boss.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    assert await ok(boss, "POST", f"{V1}/users/{q(bob.user_id)}/shadow_ban") == {}
    assert (await ok(boss, "GET", f"{V2}/users/{q(bob.user_id)}"))["shadow_banned"] is True

    fake = await bob.send_message(room, "nobody sees this", txn_id="t1")
    assert fake.startswith("$") and len(fake) == 44
    assert await bob.send_message(room, "nobody sees this", txn_id="t1") == fake  # a replay: the same ID
    assert await bob.send_message(room, "nobody sees this", txn_id="t2") != fake
    status, _ = await boss.request("GET", f"/rooms/{room}/event/{fake}")
    assert status == 404
    fake_state = await ok(bob, "PUT", f"/rooms/{room}/state/m.custom/x", {"a": 1})
    assert (await boss.request("GET", f"/rooms/{room}/state/m.custom/x"))[0] == 404
    assert fake_state["event_id"].startswith("$")
    stored = await server.hs.db.fetchval(
        "SELECT COUNT(*) FROM events WHERE sender = $1 AND type IN ('m.room.message', 'm.custom')", bob.user_id)
    assert stored == 0

    assert await ok(boss, "DELETE", f"{V1}/users/{q(bob.user_id)}/shadow_ban") == {}
    real = await bob.send_message(room, "now it counts")
    assert (await ok(boss, "GET", f"/rooms/{room}/event/{real}"))["content"]["body"] == "now it counts"
    status, body = await boss.request("POST", f"{V1}/users/{q('@x:elsewhere.org')}/shadow_ban")
    assert (status, body["error"]) == (400, "Only local users can be shadow-banned")


async def test_login_as_user(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    token = (await ok(boss, "POST", f"{V1}/users/{q(bob.user_id)}/login", {}))["access_token"]
    puppet = server.client()
    puppet.token = token
    assert (await ok(puppet, "GET", "/account/whoami"))["user_id"] == bob.user_id

    soon = int(time.time() * 1000) + 1500
    short = (await ok(boss, "POST", f"{V1}/users/{q(bob.user_id)}/login", {"valid_until_ms": soon}))["access_token"]
    brief = server.client()
    brief.token = short
    assert (await ok(brief, "GET", "/account/whoami"))["user_id"] == bob.user_id
    await server.hs.db.execute("UPDATE access_token_expiry SET valid_until_ms = 1")
    from hs.services.admin_users import admin_users
    admin_users(server.hs)._drop(None)  # the cached expiry (a real one would pass with time)
    status, body = await brief.request("GET", "/account/whoami")
    assert (status, body["errcode"], body["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", True)
    assert (await ok(puppet, "GET", "/account/whoami"))["user_id"] == bob.user_id  # no expiry: still good

    status, body = await boss.request("POST", f"{V1}/users/{q(boss.user_id)}/login", {})
    assert (status, body["error"]) == (400, "Cannot use admin API to login as self")
    status, body = await boss.request("POST", f"{V1}/users/{q(bob.user_id)}/login", {"valid_until_ms": "soon"})
    assert (status, body["error"]) == (400, "'valid_until_ms' parameter must be an int")
    status, body = await boss.request("POST", f"{V1}/users/{q(uid(server, 'nobody'))}/login", {})
    assert (status, body["error"]) == (404, "User not found")
    status, body = await boss.request("POST", f"{V1}/users/{q('@x:elsewhere.org')}/login", {})
    assert (status, body["error"]) == (400, "Only local users can be logged in as")


async def test_user_media_statistics(server: TestHomeServer) -> None:
    from tests.media_http import upload_media

    boss = await admin(server)
    bob, carol = await user(server, "bob"), await user(server, "carol")
    for client, sizes in ((bob, (10, 20, 30)), (carol, (500,))):
        for size in sizes:
            await upload_media(server, client, b"x" * size)
    stats_path = f"{V1}/statistics/users/media"
    page = await ok(boss, "GET", stats_path)
    assert page == {"users": [
        {"user_id": bob.user_id, "displayname": "bob", "media_count": 3, "media_length": 60},
        {"user_id": carol.user_id, "displayname": "carol", "media_count": 1, "media_length": 500}], "total": 2}
    by_length = await ok(boss, "GET", stats_path, order_by="media_length", dir="b", limit="1")
    assert [u["user_id"] for u in by_length["users"]] == [carol.user_id] and by_length["next_token"] == 1
    assert [u["user_id"] for u in (await ok(boss, "GET", stats_path, search_term="CAR"))["users"]] == [carol.user_id]
    future = str(int(time.time() * 1000) + 3_600_000)
    assert await ok(boss, "GET", stats_path, from_ts=future) == {"users": [], "total": 0}
    for params in ({"order_by": "size"}, {"from_ts": "10", "until_ts": "5"}, {"search_term": ""}, {"dir": "x"}):
        status, body = await boss.request("GET", stats_path, params=params)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), params
    status, body = await bob.request("GET", stats_path)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_admin_flag(server: TestHomeServer) -> None:
    boss = await admin(server)
    bob = await user(server, "bob")
    path = f"{V1}/users/{q(bob.user_id)}/admin"
    assert await ok(boss, "GET", path) == {"admin": False}
    assert await ok(boss, "PUT", path, {"admin": True}) == {}
    assert await ok(bob, "GET", path) == {"admin": True}  # bob is an admin now
    assert await ok(boss, "PUT", path, {"admin": False}) == {}
    assert await ok(boss, "GET", path) == {"admin": False}
    status, body = await boss.request("PUT", path, {})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await boss.request("PUT", f"{V1}/users/{q(boss.user_id)}/admin", {"admin": False})
    assert (status, body["error"]) == (400, "You may not demote yourself.")
    status, body = await boss.request("GET", f"{V1}/users/{q('@x:elsewhere.org')}/admin")
    assert (status, body["error"]) == (400, "Only local users can be admins of this homeserver")
