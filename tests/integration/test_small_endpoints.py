"""Small endpoints clients call: admin whois, third-party lookups without bridges, the deprecated
GET /events/{eventId}, registration token validity."""

from __future__ import annotations

from typing import Any

from tests.harness import ok, user


async def test_whois_for_admins_and_oneself(server: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    mine = await ok(alice, "GET", f"/admin/whois/{alice.user_id}")
    assert mine["user_id"] == alice.user_id and list(mine["devices"]) == [alice.device_id]
    connections = mine["devices"][alice.device_id]["sessions"][0]["connections"]
    assert len(connections) == 1 and isinstance(connections[0]["last_seen"], int)
    status, body = await bob.request("GET", f"/admin/whois/{alice.user_id}")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    await server.hs.db.execute("UPDATE users SET admin = 1 WHERE user_id = $1", bob.user_id)
    assert (await ok(bob, "GET", f"/admin/whois/{alice.user_id}"))["user_id"] == alice.user_id
    status, body = await bob.request("GET", "/admin/whois/@someone:elsewhere.org")
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    status, body = await bob.request("GET", "/admin/whois/@nobody:test.local")
    assert status == 404


async def test_third_party_lookups_find_nothing_without_bridges(server: Any) -> None:
    alice = await user(server, "alice")
    assert await ok(alice, "GET", "/thirdparty/protocols") == {}
    assert await ok(alice, "GET", "/thirdparty/location", alias="#irc:example.org") == []
    assert await ok(alice, "GET", "/thirdparty/user/irc") == []
    status, body = await alice.request("GET", "/thirdparty/protocol/irc")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"


async def test_deprecated_get_event(server: Any) -> None:
    alice, eve = await user(server, "alice"), await user(server, "eve")
    room = await alice.create_room(preset="private_chat")
    event_id = await alice.send_message(room, "hi")
    assert (await ok(alice, "GET", f"/events/{event_id}"))["content"]["body"] == "hi"
    status, _ = await eve.request("GET", f"/events/{event_id}")
    assert status in (403, 404)
    status, body = await alice.request("GET", "/events/$missing")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"


async def test_registration_token_validity(make_server: Any) -> None:
    path = "/_matrix/client/v1/register/m.login.registration_token/validity"
    open_server = await make_server()
    client = open_server.client()
    status, body = await client.request("GET", path, params={"token": "abc"}, auth=False)
    assert (status, body) == (200, {"valid": False})
    status, body = await client.request("GET", path, auth=False)
    assert status == 400 and body["errcode"] == "M_MISSING_PARAM"
    await client.close()
    closed = await make_server(enable_registration=False)
    client = closed.client()
    status, body = await client.request("GET", path, params={"token": "abc"}, auth=False)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    await client.close()
