"""Guest access (the spec's Guest Access module, Synapse's `allow_guest_access`): registering a guest
(refused while the option is off), the endpoints a guest may and may not call, joining only rooms whose
`m.room.guest_access` is `can_join`, and upgrading a guest to a full account under the same user ID.
Through real HTTP, on both engines."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from hs.replication.http_client import REPLICATION_PREFIX
from hs.roles.routes import all_routes
from hs.services.auth import GUEST_ROUTES, GUEST_TURN_ROUTE, guest_route
from tests.harness import OPEN_CLIENTS, Client, TestHomeServer, ok, user

GUEST_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
MakeServer = Callable[..., Awaitable[TestHomeServer]]


async def guest(server: TestHomeServer, body: dict[str, Any] | None = None) -> Client:
    """A new guest account's client (closed after the test)."""
    c = server.client()
    OPEN_CLIENTS.append(c)
    status, data = await c.request("POST", "/register", body or {}, params={"kind": "guest"}, auth=False)
    assert status == 200, data
    c.token, c.user_id, c.device_id = data["access_token"], data["user_id"], data["device_id"]
    return c


async def guest_server(make_server: MakeServer, engine: str, **config: Any) -> TestHomeServer:
    return await make_server(engine, allow_guest_access=True, **config)


def refused(status: int, body: Any) -> bool:
    return status == 403 and isinstance(body, dict) and body.get("errcode") == GUEST_FORBIDDEN


# -- registering ------------------------------------------------------------------------------------------
async def test_guest_registration_refused_by_default(make_server: MakeServer, engine: str) -> None:
    server = await make_server(engine)
    c = server.client()
    OPEN_CLIENTS.append(c)
    status, body = await c.request("POST", "/register", {}, params={"kind": "guest"}, auth=False)
    assert refused(status, body), body
    assert await server.hs.db.fetchval("SELECT COUNT(*) FROM users") == 0


async def test_guest_registration(make_server: MakeServer, engine: str) -> None:
    # Registration of full accounts closed: guests are still let in (as on Synapse).
    server = await guest_server(make_server, engine, enable_registration=False)
    g = await guest(server, {"initial_device_display_name": "Guest phone", "device_id": "CHOSEN",
                             "username": "ignored", "password": "ignored"})
    assert g.user_id is not None and g.user_id.endswith(":test.local")
    assert g.user_id[1:].split(":")[0].isdigit()  # a generated, numeric ID (reserved for guests)
    assert g.device_id != "CHOSEN"  # a guest does not choose its device ID
    assert await ok(g, "GET", "/account/whoami") == {"user_id": g.user_id, "device_id": g.device_id,
                                                     "is_guest": True}
    devices = (await ok(g, "GET", "/devices"))["devices"]
    assert [(d["device_id"], d["display_name"]) for d in devices] == [(g.device_id, "Guest phone")]
    other = await guest(server)
    assert other.user_id != g.user_id
    # Full registration stays closed.
    status, body = await other.request("POST", "/register", {"username": "bob", "password": "pw12345678",
                                                             "auth": {"type": "m.login.dummy"}}, auth=False)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body


# -- what a guest may call --------------------------------------------------------------------------------
async def test_forbidden_endpoints(make_server: MakeServer, engine: str) -> None:
    server = await guest_server(make_server, engine, turn_allow_guests=False)
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}])
    g = await guest(server)
    await ok(g, "POST", f"/rooms/{room}/join", {})
    event_id = await alice.send_message(room, "hello")
    me = g.user_id
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/createRoom", {}),
        ("PUT", f"/user/{me}/account_data/m.test", {"a": 1}),
        ("GET", f"/user/{me}/account_data/m.test", None),
        ("PUT", f"/user/{me}/rooms/{room}/tags/u.work", {}),
        ("POST", f"/user/{me}/filter", {}),
        ("PUT", f"/rooms/{room}/typing/{me}", {"typing": True, "timeout": 1000}),
        ("POST", f"/rooms/{room}/receipt/m.read/{event_id}", {}),
        ("POST", f"/rooms/{room}/read_markers", {"m.fully_read": event_id}),
        ("PUT", f"/profile/{me}/avatar_url", {"avatar_url": "mxc://test.local/abc"}),
        ("POST", f"/rooms/{room}/invite", {"user_id": "@bob:test.local"}),
        ("POST", f"/rooms/{room}/kick", {"user_id": alice.user_id}),
        ("POST", f"/rooms/{room}/forget", {}),
        ("GET", f"/rooms/{room}/joined_members", None),
        ("PUT", f"/rooms/{room}/redact/{event_id}/{uuid.uuid4().hex}", {}),
        ("POST", f"/rooms/{room}/upgrade", {"new_version": "11"}),
        ("GET", "/pushrules/", None),
        ("PUT", f"/presence/{me}/status", {"presence": "online"}),
        ("POST", "/search", {"search_categories": {"room_events": {"search_term": "hello"}}}),
        ("POST", "/user_directory/search", {"search_term": "alice"}),
        ("POST", "/account/password", {"new_password": "x" * 12}),
        ("POST", "/account/deactivate", {}),
        ("DELETE", f"/devices/{g.device_id}", {}),
        ("POST", "/keys/device_signing/upload", {}),
        ("GET", "/room_keys/version", None),
        ("GET", "/pushers", None),
        ("POST", "/logout", {}),
        ("GET", "/voip/turnServer", None),  # turn_allow_guests is off here
        ("GET", "/_matrix/client/v1/media/config", None),
        ("GET", "/_matrix/client/v3/notifications", None),
    ]
    for method, path, body in calls:
        status, answer = await g.request(method, path, body)
        assert refused(status, answer), (method, path, status, answer)
    # Nothing was done: still joined, still a guest, no room created.
    assert (await ok(g, "GET", "/joined_rooms"))["joined_rooms"] == [room]
    assert (await ok(g, "GET", "/account/whoami"))["is_guest"] is True
    # The same calls are a full user's to make.
    status, _ = await alice.request("PUT", f"/user/{alice.user_id}/account_data/m.test", {"a": 1})
    assert status == 200


async def test_allowed_endpoints(make_server: MakeServer, engine: str) -> None:
    server = await guest_server(make_server, engine)
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat", room_alias_name="lobby", initial_state=[
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}])
    hello = await alice.send_message(room, "hello")
    g = await guest(server)
    me = g.user_id
    assert me is not None and g.device_id is not None
    await ok(g, "GET", "/capabilities")
    await ok(g, "GET", "/_matrix/client/versions")
    await ok(g, "GET", "/publicRooms")
    assert (await ok(g, "POST", "/join/%23lobby:test.local", {}))["room_id"] == room
    assert (await ok(g, "GET", "/joined_rooms"))["joined_rooms"] == [room]
    sent = (await ok(g, "PUT", f"/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"}))
    # Any event type since spec v1.2, and state events the power levels allow (none here: 403 M_FORBIDDEN
    # from the auth rules, not the guest check).
    await ok(g, "PUT", f"/rooms/{room}/send/m.reaction/t2",
             {"m.relates_to": {"rel_type": "m.annotation", "event_id": hello, "key": "+1"}})
    status, body = await g.request("PUT", f"/rooms/{room}/state/m.room.topic", {"topic": "x"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    state = await ok(g, "GET", f"/rooms/{room}/state")
    member = next(e for e in state if e["type"] == "m.room.member" and e["state_key"] == me)
    assert member["content"]["membership"] == "join" and member["content"]["kind"] == "guest"
    assert (await ok(g, "GET", f"/rooms/{room}/state/m.room.guest_access"))["guest_access"] == "can_join"
    assert (await ok(g, "GET", f"/rooms/{room}/state/m.room.member/{me}"))["kind"] == "guest"
    await ok(g, "GET", f"/rooms/{room}/event/{sent['event_id']}")
    await ok(g, "GET", f"/rooms/{room}/context/{sent['event_id']}")
    await ok(g, "GET", f"/_matrix/client/v1/rooms/{room}/relations/{hello}")
    bodies = [e["content"].get("body") for e in
              (await ok(g, "GET", f"/rooms/{room}/messages", dir="b", limit="10"))["chunk"]]
    assert "hi" in bodies and "hello" in bodies
    members = {e["state_key"] for e in (await ok(g, "GET", f"/rooms/{room}/members"))["chunk"]}
    assert members == {alice.user_id, me}
    synced = await g.sync()
    assert room in synced["rooms"]["join"]
    # The legacy endpoints the spec lists (the global initialSync is not among them, nor on Synapse).
    assert (await ok(g, "GET", f"/rooms/{room}/initialSync"))["room_id"] == room
    await ok(g, "GET", "/events", timeout="0", room_id=room)  # (a guest must name the room)
    status, body = await g.request("GET", "/initialSync")
    assert refused(status, body), body
    await ok(g, "PUT", f"/profile/{me}/displayname", {"displayname": "Visitor"})
    assert (await ok(g, "GET", f"/profile/{me}"))["displayname"] == "Visitor"
    await ok(g, "GET", "/devices")
    await ok(g, "GET", f"/devices/{g.device_id}")
    await ok(g, "PUT", f"/devices/{g.device_id}", {"display_name": "renamed"})
    await ok(g, "POST", "/keys/upload", {"one_time_keys": {}})
    await ok(g, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    await ok(g, "POST", "/keys/claim", {"one_time_keys": {}})
    await ok(g, "GET", "/keys/changes", **{"from": synced["next_batch"], "to": synced["next_batch"]})
    await ok(g, "PUT", f"/sendToDevice/m.test/{uuid.uuid4().hex}",
             {"messages": {alice.user_id: {"*": {"x": 1}}}})
    await ok(g, "GET", "/voip/turnServer")  # turn_allow_guests is on by default
    await ok(g, "POST", f"/rooms/{room}/leave", {})
    assert (await ok(g, "GET", "/joined_rooms"))["joined_rooms"] == []


# -- joining ----------------------------------------------------------------------------------------------
async def test_join_needs_guest_access_can_join(make_server: MakeServer, engine: str) -> None:
    server = await guest_server(make_server, engine)
    alice = await user(server, "alice")
    g = await guest(server)
    # public_chat sets guest_access "forbidden"; anything but "can_join" (here an empty content) is
    # as good as no m.room.guest_access, which counts as forbidden (the event schema's rule).
    public = await alice.create_room(preset="public_chat")
    bare = await alice.create_room(preset="public_chat")
    await ok(alice, "PUT", f"/rooms/{bare}/state/m.room.guest_access", {})
    for room in (public, bare):
        status, body = await g.request("POST", f"/rooms/{room}/join", {})
        assert refused(status, body), body
        status, body = await g.request("POST", f"/join/{room}", {})
        assert refused(status, body), body
    # A room this server is not in: whether it lets guests in is not known here.
    status, body = await g.request("POST", "/join/!elsewhere:remote.example", {})
    assert refused(status, body), body
    await ok(alice, "PUT", f"/rooms/{public}/state/m.room.guest_access", {"guest_access": "can_join"})
    assert (await ok(g, "POST", f"/rooms/{public}/join", {}))["room_id"] == public
    # The join rules still apply: can_join in an invite-only room is not enough without an invite.
    private = await alice.create_room(preset="private_chat")  # guest_access can_join, join rule invite
    status, body = await g.request("POST", f"/rooms/{private}/join", {})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    # Full users are not concerned by guest access.
    bob = await user(server, "bob")
    await ok(bob, "POST", f"/rooms/{bare}/join", {})


async def test_guests_leave_when_guest_access_ends(make_server: MakeServer, engine: str) -> None:
    """The spec: when m.room.guest_access stops saying can_join, the server sets its guests'
    membership to leave (the state event's sender makes their local guests leave)."""
    server = await guest_server(make_server, engine)
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}])
    both, goes, upgraded = await guest(server), await guest(server), await guest(server)
    for g in (both, goes, upgraded):
        await ok(g, "POST", f"/rooms/{room}/join", {})
    assert upgraded.user_id is not None
    anon = server.client()
    OPEN_CLIENTS.append(anon)
    status, _ = await anon.request("POST", "/register", {
        "guest_access_token": upgraded.token, "password": "sesame-sesame", "auth": {"type": "m.login.dummy"}})
    assert status == 200
    # Another room keeps its guests.
    other = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}])
    await ok(both, "POST", f"/rooms/{other}/join", {})
    await ok(goes, "POST", f"/rooms/{room}/leave", {})
    await ok(goes, "POST", f"/rooms/{room}/join", {})
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.guest_access", {"guest_access": "forbidden"})
    joined = set((await ok(alice, "GET", f"/rooms/{room}/joined_members"))["joined"])
    assert joined == {alice.user_id, upgraded.user_id}
    left = await ok(alice, "GET", f"/rooms/{room}/state/m.room.member/{goes.user_id}")
    assert left["membership"] == "leave" and left["kind"] == "guest"
    assert (await ok(both, "GET", "/joined_rooms"))["joined_rooms"] == [other]
    # Nothing more to do once they are gone, nor while guests may join.
    assert await server.hs.room_membership.kick_guests(room) == []
    assert await server.hs.room_membership.kick_guests(other) == []


# -- upgrading --------------------------------------------------------------------------------------------
async def test_upgrade_keeps_user_id(make_server: MakeServer, engine: str) -> None:
    server = await guest_server(make_server, engine)
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}])
    g = await guest(server)
    await ok(g, "POST", f"/rooms/{room}/join", {})
    await ok(g, "PUT", f"/profile/{g.user_id}/displayname", {"displayname": "Visitor"})
    assert g.user_id is not None and g.token is not None
    localpart = g.user_id[1:].split(":")[0]
    anon = server.client()
    OPEN_CLIENTS.append(anon)
    # Two UIA rounds: the session remembers the body, guest_access_token included.
    status, first = await anon.request("POST", "/register", {
        "username": localpart, "password": "sesame-sesame", "guest_access_token": g.token}, auth=False)
    assert status == 401 and "session" in first, first
    status, done = await anon.request("POST", "/register", {
        "auth": {"type": "m.login.dummy", "session": first["session"]}}, auth=False)
    assert status == 200, done
    assert done["user_id"] == g.user_id
    full = server.client()
    OPEN_CLIENTS.append(full)
    full.token = done["access_token"]
    assert (await ok(full, "GET", "/account/whoami"))["is_guest"] is False
    # The guest token is no longer good (as on Synapse); the account keeps its rooms and profile.
    status, body = await g.request("GET", "/account/whoami")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    assert (await ok(full, "GET", "/joined_rooms"))["joined_rooms"] == [room]
    assert (await ok(full, "GET", f"/profile/{g.user_id}"))["displayname"] == "Visitor"
    # A full account now: what guests may not do, and a password login.
    await full.create_room()
    status, login = await anon.request("POST", "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
        "password": "sesame-sesame"}, auth=False)
    assert status == 200 and login["user_id"] == g.user_id, login


async def test_upgrade_refusals(make_server: MakeServer, engine: str) -> None:
    server = await guest_server(make_server, engine)
    alice = await user(server, "alice")
    g, other = await guest(server), await guest(server)
    assert g.user_id is not None and other.user_id is not None
    localpart = g.user_id[1:].split(":")[0]
    anon = server.client()
    OPEN_CLIENTS.append(anon)

    async def upgrade(token: Any, username: str) -> tuple[int, Any]:
        return await anon.request("POST", "/register", {
            "username": username, "password": "sesame-sesame", "guest_access_token": token,
            "auth": {"type": "m.login.dummy"}}, auth=False)

    status, body = await upgrade(other.token, localpart)  # another guest's token
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = await upgrade(alice.token, "alice")  # a full user's token
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = await upgrade("hs_not-a-token", localpart)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    # Without a guest token a numeric name stays reserved, and the guest's name is taken.
    status, body = await anon.request("POST", "/register", {
        "username": localpart, "password": "sesame-sesame", "auth": {"type": "m.login.dummy"}}, auth=False)
    assert status == 400 and body["errcode"] in ("M_INVALID_USERNAME", "M_USER_IN_USE"), body
    assert (await ok(g, "GET", "/account/whoami"))["is_guest"] is True
    # The username may be left out: the guest's own.
    status, body = await anon.request("POST", "/register", {
        "password": "sesame-sesame", "guest_access_token": g.token, "auth": {"type": "m.login.dummy"}},
        auth=False)
    assert status == 200 and body["user_id"] == g.user_id, body


# -- the allowlist itself ---------------------------------------------------------------------------------
def test_allowlist_names_real_routes() -> None:
    """Every allowed entry is a route hs has (a typo would silently refuse guests)."""
    routed = {guest_route(r.method, path) for r in all_routes() for path in r.full_paths()}
    routed = {(m, p.replace("{stateKey:.*}", "{stateKey}")) for m, p in routed}
    assert (GUEST_ROUTES | {GUEST_TURN_ROUTE}) - routed == set()
    # A write a worker forwards to its stream's writer is checked there under the same key.
    forwarded = REPLICATION_PREFIX + "/client/_matrix/client/r0/sendToDevice/{eventType}/{txnId}"
    assert guest_route("PUT", forwarded) == ("PUT", "/sendToDevice/{eventType}/{txnId}")
    assert guest_route("GET", "/_matrix/client/versions") == ("GET", "/_matrix/client/versions")
    assert guest_route("GET", "/_synapse/admin/v1/rooms") not in GUEST_ROUTES
