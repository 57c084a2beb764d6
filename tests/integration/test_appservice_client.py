"""Application services acting as clients (application service API, "Client-Server API Extensions"):
the as_token and masquerading as namespace users and their devices, registration of namespace users
and the exclusive namespaces closed to everyone else, aliases, no rate limits with `rate_limited: false`,
timestamp massaging on /send and /state, and the services' room directories per network. Real HTTP,
on SQLite and PostgreSQL, with registration files written by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from hs.events.signing import SigningKey
from tests.harness import OPEN_CLIENTS, Client, TestHomeServer, ok, user

AS_TOKEN = "as-token-bridge"
OTHER_TOKEN = "as-token-other"
MSC4190_TOKEN = "as-token-devices"

BRIDGE: dict[str, Any] = {
    "id": "bridge", "url": None, "as_token": AS_TOKEN, "hs_token": "hs-token-bridge",
    "sender_localpart": "bridgebot", "rate_limited": False, "protocols": ["irc"],
    "namespaces": {"users": [{"regex": "@irc_.*:test.local", "exclusive": True}],
                   "aliases": [{"regex": "#irc_.*:test.local", "exclusive": True}],
                   "rooms": []},
}
# A second service: its exclusive users are closed to the bridge; its namespace is open (not
# exclusive) for aliases, so anyone may create those.
OTHER: dict[str, Any] = {
    "id": "other", "url": None, "as_token": OTHER_TOKEN, "hs_token": "hs-token-other",
    "sender_localpart": "otherbot", "rate_limited": True,
    "namespaces": {"users": [{"regex": "@slack_.*:test.local", "exclusive": True},
                             {"regex": "@shared_.*:test.local", "exclusive": False}],
                   "aliases": [{"regex": "#slack_.*:test.local", "exclusive": False}]},
}
# A service that manages its users' devices itself (MSC4190): no logins for it.
DEVICES: dict[str, Any] = {
    "id": "devices", "url": None, "as_token": MSC4190_TOKEN, "hs_token": "hs-token-devices",
    "sender_localpart": "devicebot", "io.element.msc4190": True, "org.matrix.msc3202": True,
    "namespaces": {"users": [{"regex": "@tg_.*:test.local", "exclusive": True}]},
}

# A service that may call only from 10.0.0.0/8: from here its token is no token at all (as Synapse).
WALLED: dict[str, Any] = {
    "id": "walled", "url": None, "as_token": "as-token-walled", "hs_token": "hs-token-walled",
    "sender_localpart": "walledbot", "ip_range_whitelist": ["10.0.0.0/8"],
    "namespaces": {"users": [{"regex": "@walled_.*:test.local", "exclusive": True}]},
}


def q(s: str) -> str:
    return quote(s, safe="")


async def start(make_server: Any, engine: str, tmp_path: Path, **config: Any) -> TestHomeServer:
    paths = []
    for reg in (BRIDGE, OTHER, DEVICES, WALLED):
        path = tmp_path / f"{reg['id']}.yaml"
        path.write_text(yaml.safe_dump(reg))
        paths.append(str(path.resolve()))
    return await make_server(engine, app_service_config_files=paths, **config)


def service(server: TestHomeServer, token: str = AS_TOKEN) -> Client:
    c = server.client()
    c.token = token
    OPEN_CLIENTS.append(c)
    return c


async def as_register(c: Client, username: str, **body: Any) -> tuple[int, Any]:
    return await c.request("POST", "/register", {"type": "m.login.application_service", "username": username,
                                                 **body})


# -- identity assertion -------------------------------------------------------------------------------------

async def test_as_token_acts_as_the_sender_or_a_registered_namespace_user(make_server: Any, engine: str,
                                                                         tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path)
    bridge = service(server)
    assert await ok(bridge, "GET", "/account/whoami") == {"user_id": "@bridgebot:test.local", "is_guest": False}
    # The token as the access_token parameter works as well as the header.
    anon = server.client()
    OPEN_CLIENTS.append(anon)
    status, data = await anon.request("GET", "/account/whoami", params={"access_token": AS_TOKEN}, auth=False)
    assert (status, data["user_id"]) == (200, "@bridgebot:test.local")

    # The sender has a profile to set, as bridges do at start-up.
    await ok(bridge, "PUT", f"/profile/{q('@bridgebot:test.local')}/displayname", {"displayname": "Bridge"})
    assert (await ok(anon, "GET", f"/profile/{q('@bridgebot:test.local')}"))["displayname"] == "Bridge"

    # A namespace user must be registered before the service may act as them (Synapse: 403).
    status, data = await bridge.request("GET", "/account/whoami", params={"user_id": "@irc_alice:test.local"})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), data
    assert (await as_register(bridge, "irc_alice", inhibit_login=True))[0] == 200
    data = await ok(bridge, "GET", "/account/whoami", user_id="@irc_alice:test.local")
    assert data == {"user_id": "@irc_alice:test.local", "is_guest": False}

    # Outside the namespace: 403 M_FORBIDDEN, whether or not the user exists.
    await user(server, "carol")
    for target in ("@carol:test.local", "@slack_x:test.local", "@irc_x:elsewhere.org"):
        status, data = await bridge.request("GET", "/account/whoami", params={"user_id": target})
        assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), (target, data)
        assert "cannot masquerade" in data["error"] or target == "@irc_x:elsewhere.org"

    # A wrong token is an unknown token; a user's own `user_id` parameter changes nothing.
    wrong = service(server, "not-a-token")
    status, data = await wrong.request("GET", "/account/whoami", params={"user_id": "@irc_alice:test.local"})
    assert (status, data["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    walled = service(server, "as-token-walled")
    status, data = await walled.request("GET", "/account/whoami")
    assert (status, data["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, data = await as_register(walled, "walled_x", inhibit_login=True)
    assert (status, data["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    carol = await user(server, "carol2")
    data = await ok(carol, "GET", "/account/whoami", user_id="@irc_alice:test.local")
    assert data["user_id"] == "@carol2:test.local"


async def test_device_masquerading(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path)
    bridge = service(server)
    status, login = await as_register(bridge, "irc_dev")  # with a device and token
    assert status == 200 and login["device_id"], login
    me = {"user_id": "@irc_dev:test.local"}
    data = await ok(bridge, "GET", "/account/whoami", **me, device_id=login["device_id"])
    assert data["device_id"] == login["device_id"]
    data = await ok(bridge, "GET", "/account/whoami", **me, **{"org.matrix.msc3202.device_id": login["device_id"]})
    assert data["device_id"] == login["device_id"]  # MSC3202's unstable name
    # A device the user does not have: 400 M_UNKNOWN_DEVICE (the spec's words; Synapse too).
    status, data = await bridge.request("GET", "/account/whoami", params={**me, "device_id": "NOSUCH"})
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_DEVICE"), data
    # Without user_id the device must be the sender's.
    status, data = await bridge.request("GET", "/account/whoami", params={"device_id": login["device_id"]})
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_DEVICE"), data



async def test_keys_of_a_masqueraded_device(make_server: Any, engine: str, tmp_path: Path) -> None:
    """A service uploads keys for a user's device it names (end-to-bridge encryption): device keys need
    the device_id (400 without, as Synapse), cross-signing keys no UIA (the spec)."""
    server = await start(make_server, engine, tmp_path)
    bridge = service(server)
    status, login = await as_register(bridge, "irc_keys")
    assert status == 200, login
    me = {"user_id": "@irc_keys:test.local"}
    status, data = await bridge.request("POST", "/keys/upload", {"one_time_keys": {}}, params=me)
    assert (status, data["errcode"]) == (400, "M_UNKNOWN"), data
    counts = await ok(bridge, "POST", "/keys/upload", {"one_time_keys": {"signed_curve25519:AAAA": {
        "key": "k", "signatures": {}}}}, **me, device_id=login["device_id"])
    assert counts["one_time_key_counts"]["signed_curve25519"] == 1
    public = SigningKey.generate("M").verify_key_base64
    master = {"user_id": me["user_id"], "usage": ["master"], "keys": {f"ed25519:{public}": public}}
    await ok(bridge, "POST", "/keys/device_signing/upload", {"master_key": master}, **me)
    keys = await ok(bridge, "POST", "/keys/query", {"device_keys": {me["user_id"]: []}}, **me)
    assert keys["master_keys"][me["user_id"]]["keys"] == {f"ed25519:{public}": public}


# -- registration ------------------------------------------------------------------------------------------

async def test_appservice_registration_and_exclusive_namespaces(make_server: Any, engine: str,
                                                                tmp_path: Path) -> None:
    # Registration closed to users: a service registers its users all the same.
    server = await start(make_server, engine, tmp_path, enable_registration=False)
    bridge = service(server)
    status, data = await as_register(bridge, "irc_bob")
    assert status == 200 and data["user_id"] == "@irc_bob:test.local", data
    puppet = server.client()
    OPEN_CLIENTS.append(puppet)
    puppet.token = data["access_token"]
    assert (await ok(puppet, "GET", "/account/whoami"))["user_id"] == "@irc_bob:test.local"
    status, data = await as_register(bridge, "irc_bob", inhibit_login=True)
    assert (status, data["errcode"]) == (400, "M_USER_IN_USE")
    # inhibit_login: the account alone. mautrix sends the user to be as `user_id` (not registered yet).
    status, data = await bridge.request("POST", "/register", {
        "type": "m.login.application_service", "username": "irc_quiet", "inhibit_login": True},
        params={"kind": "user", "user_id": "@irc_quiet:test.local"})
    assert status == 200 and "access_token" not in data and data["user_id"] == "@irc_quiet:test.local"
    # Outside the service's namespace, or in another service's exclusive one: 400 M_EXCLUSIVE.
    for name in ("alice", "slack_bob"):
        status, data = await as_register(bridge, name)
        assert (status, data["errcode"]) == (400, "M_EXCLUSIVE"), (name, data)
    # Another service's non-exclusive namespace is open to that service.
    other = service(server, OTHER_TOKEN)
    assert (await as_register(other, "shared_x", inhibit_login=True))[0] == 200
    # Only an as_token will do: none is 401 M_MISSING_TOKEN, a user's token 401 M_UNKNOWN_TOKEN.
    anon = server.client()
    OPEN_CLIENTS.append(anon)
    status, data = await as_register(anon, "irc_anon")
    assert (status, data["errcode"]) == (401, "M_MISSING_TOKEN")
    status, data = await as_register(service(server, puppet.token or ""), "irc_anon")
    assert (status, data["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, data = await as_register(service(server, "wrong"), "irc_anon")
    assert (status, data["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    # MSC4190: the service must inhibit the login, and may not log in as its users.
    devices = service(server, MSC4190_TOKEN)
    status, data = await as_register(devices, "tg_a")
    assert (status, data["errcode"]) == (400, "M_APPSERVICE_LOGIN_UNSUPPORTED"), data
    assert (await as_register(devices, "tg_a", inhibit_login=True))[0] == 200
    status, data = await devices.request("POST", "/login", {"type": "m.login.application_service",
                                                            "identifier": {"type": "m.id.user", "user": "tg_a"}})
    assert (status, data["errcode"]) == (400, "M_APPSERVICE_LOGIN_UNSUPPORTED"), data

    # m.login.application_service logins: a namespace user, with a new device and token.
    login_flows = await ok(anon, "GET", "/login")
    assert {"type": "m.login.application_service"} in login_flows["flows"]
    body = {"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "irc_quiet"}}
    data = await ok(bridge, "POST", "/login", body)
    assert data["user_id"] == "@irc_quiet:test.local" and data["access_token"]
    status, data = await bridge.request("POST", "/login", {**body, "identifier": {"type": "m.id.user",
                                                                                  "user": "alice"}})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN")
    status, data = await anon.request("POST", "/login", body)
    assert (status, data["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_exclusive_user_namespaces_closed_to_users(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path)
    anon = server.client()
    OPEN_CLIENTS.append(anon)
    for name in ("irc_mallory", "slack_mallory", "bridgebot", "devicebot"):
        status, data = await anon.request("POST", "/register", {"username": name, "password": "password123",
                                                                "auth": {"type": "m.login.dummy"}})
        assert (status, data["errcode"]) == (400, "M_EXCLUSIVE"), (name, data)
        status, data = await anon.request("GET", "/register/available", params={"username": name})
        assert (status, data["errcode"]) == (400, "M_EXCLUSIVE"), (name, data)
    # A non-exclusive namespace stays open.
    assert (await ok(anon, "GET", "/register/available", username="shared_alice")) == {"available": True}
    await user(server, "shared_alice")


# -- device management (MSC4190) ----------------------------------------------------------------------------

async def test_appservice_creates_and_deletes_devices(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path)
    devices = service(server, MSC4190_TOKEN)
    assert (await as_register(devices, "tg_bob", inhibit_login=True))[0] == 200
    me = {"user_id": "@tg_bob:test.local"}
    status, data = await devices.request("PUT", "/devices/BRIDGEDEV", {"display_name": "bridge"}, params=me)
    assert (status, data) == (201, {})
    status, data = await devices.request("PUT", "/devices/BRIDGEDEV", {"display_name": "renamed"}, params=me)
    assert (status, data) == (200, {})
    listed = await ok(devices, "GET", "/devices", **me)
    assert [(d["device_id"], d["display_name"]) for d in listed["devices"]] == [("BRIDGEDEV", "renamed")]
    # The device is the service's to act with (uploading keys, say).
    data = await ok(devices, "POST", "/keys/upload", {"one_time_keys": {"signed_curve25519:A": {"key": "x"}}},
                    **me, device_id="BRIDGEDEV")
    assert data["one_time_key_counts"].get("signed_curve25519") == 1
    # Deleting needs no user-interactive auth.
    status, data = await devices.request("DELETE", "/devices/BRIDGEDEV", params=me)
    assert (status, data) == (200, {})
    assert (await ok(devices, "GET", "/devices", **me))["devices"] == []
    status, _ = await devices.request("PUT", "/devices/D2", {}, params=me)
    assert status == 201
    assert (await ok(devices, "POST", "/delete_devices", {"devices": ["D2"]}, **me)) == {}
    # Nor does deactivating one of the service's users (as Synapse).
    assert (await as_register(devices, "tg_gone", inhibit_login=True))[0] == 200
    gone = {"user_id": "@tg_gone:test.local"}
    assert (await ok(devices, "POST", "/account/deactivate", {}, **gone))["id_server_unbind_result"]
    # A user still cannot create a device this way, nor delete one without UIA.
    alice = await user(server, "alice")
    status, data = await alice.request("PUT", "/devices/NEWDEV", {})
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")
    status, data = await alice.request("DELETE", f"/devices/{alice.device_id}", {})
    assert status == 401 and "flows" in data


# -- aliases ------------------------------------------------------------------------------------------------

async def test_exclusive_alias_namespaces(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path)
    alice = await user(server, "alice")
    room_id = await alice.create_room(preset="public_chat")
    bridge = service(server)
    alias = "#irc_chan:test.local"
    status, data = await alice.request("PUT", f"/directory/room/{q(alias)}", {"room_id": room_id})
    assert (status, data["errcode"]) == (400, "M_EXCLUSIVE"), data
    assert await ok(bridge, "PUT", f"/directory/room/{q(alias)}", {"room_id": room_id}) == {}
    assert (await ok(alice, "GET", f"/directory/room/{q(alias)}"))["room_id"] == room_id
    # The service keeps to its own namespace.
    status, data = await bridge.request("PUT", f"/directory/room/{q('#general:test.local')}", {"room_id": room_id})
    assert (status, data["errcode"]) == (400, "M_EXCLUSIVE"), data
    # A non-exclusive alias namespace is open to users.
    assert await ok(alice, "PUT", f"/directory/room/{q('#slack_chan:test.local')}", {"room_id": room_id}) == {}
    # Users cannot delete the service's alias even as the room's admin; the service can.
    status, data = await alice.request("DELETE", f"/directory/room/{q(alias)}")
    assert (status, data["errcode"]) == (400, "M_EXCLUSIVE"), data
    assert await ok(bridge, "DELETE", f"/directory/room/{q(alias)}") == {}
    status, _ = await alice.request("GET", f"/directory/room/{q(alias)}")
    assert status == 404


# -- rate limits and timestamps -------------------------------------------------------------------------------

async def test_no_rate_limits_for_an_unlimited_service(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path, rc_message={"per_second": 0.001, "burst_count": 2})
    alice = await user(server, "alice")
    room_id = await alice.create_room(preset="public_chat")
    bridge = service(server)
    assert (await as_register(bridge, "irc_fast", inhibit_login=True))[0] == 200
    puppet = {"user_id": "@irc_fast:test.local"}
    await ok(bridge, "POST", f"/join/{q(room_id)}", {}, **puppet)
    await ok(bridge, "POST", f"/join/{q(room_id)}", {})  # the sender too
    for i in range(6):
        await ok(bridge, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/p{i}", {"msgtype": "m.text",
                                                                                  "body": str(i)}, **puppet)
        await ok(bridge, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/s{i}", {"msgtype": "m.text",
                                                                                  "body": str(i)})
    # A rate-limited service (and a user) are limited as usual.
    other = service(server, OTHER_TOKEN)
    await ok(other, "POST", f"/join/{q(room_id)}", {})
    statuses = [(await other.request("PUT", f"/rooms/{q(room_id)}/send/m.room.message/o{i}",
                                     {"msgtype": "m.text", "body": "x"}))[0] for i in range(4)]
    assert 429 in statuses, statuses
    statuses = [(await alice.request("PUT", f"/rooms/{q(room_id)}/send/m.room.message/a{i}",
                                     {"msgtype": "m.text", "body": "x"}))[0] for i in range(4)]
    assert 429 in statuses, statuses


async def test_timestamp_massaging(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path)
    alice = await user(server, "alice")
    room_id = await alice.create_room(preset="public_chat", power_level_content_override={
        "users": {"@irc_old:test.local": 50}})
    bridge = service(server)
    assert (await as_register(bridge, "irc_old", inhibit_login=True))[0] == 200
    puppet = {"user_id": "@irc_old:test.local"}
    # A membership sent as state takes the timestamp too (as Synapse).
    join = await ok(bridge, "PUT", f"/rooms/{q(room_id)}/state/m.room.member/{q('@irc_old:test.local')}",
                    {"membership": "join"}, **puppet, ts="1000000000000")
    sent = await ok(bridge, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1",
                    {"msgtype": "m.text", "body": "from the past"}, **puppet, ts="1234567890123")
    state = await ok(bridge, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", {"topic": "old"},
                     **puppet, ts="1111111111111")
    plain = await ok(bridge, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/t2",
                     {"msgtype": "m.text", "body": "now"}, **puppet)
    seen = {}
    for key, answer in (("join", join), ("sent", sent), ("state", state), ("plain", plain)):
        ev = await ok(alice, "GET", f"/rooms/{q(room_id)}/event/{q(answer['event_id'])}")
        seen[key] = ev["origin_server_ts"]
    assert (seen["join"], seen["sent"], seen["state"]) == (1000000000000, 1234567890123, 1111111111111)
    assert seen["plain"] > 1700000000000
    # A `ts` that is no timestamp: 400. A user's `ts` changes nothing; nor does a service's elsewhere.
    status, data = await bridge.request("PUT", f"/rooms/{q(room_id)}/send/m.room.message/t3",
                                        {"msgtype": "m.text", "body": "x"}, params={**puppet, "ts": "soon"})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM"), data
    mine = await ok(alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/t4",
                    {"msgtype": "m.text", "body": "x"}, ts="1234")
    ev = await ok(alice, "GET", f"/rooms/{q(room_id)}/event/{q(mine['event_id'])}")
    assert ev["origin_server_ts"] > 1700000000000
    left = await ok(bridge, "POST", f"/rooms/{q(room_id)}/leave", {}, **puppet, ts="1234")
    assert left == {}
    member = await ok(alice, "GET", f"/rooms/{q(room_id)}/state/m.room.member/{q('@irc_old:test.local')}",
                      format="event")
    assert member["origin_server_ts"] > 1700000000000


# -- the services' room directories --------------------------------------------------------------------------

async def test_appservice_room_directories(make_server: Any, engine: str, tmp_path: Path) -> None:
    server = await start(make_server, engine, tmp_path)
    alice = await user(server, "alice")
    bridged = await alice.create_room(preset="public_chat", name="bridged")
    listed = await alice.create_room(preset="public_chat", name="listed")
    await ok(alice, "PUT", f"/directory/list/room/{q(listed)}", {"visibility": "public"})
    bridge = service(server)
    path = f"/directory/list/appservice/irc/{q(bridged)}"
    assert await ok(bridge, "PUT", path, {"visibility": "public"}) == {}
    assert await ok(bridge, "PUT", path, {"visibility": "public"}) == {}  # idempotent

    async def rooms(**body: Any) -> list[str]:
        data = await ok(alice, "POST", "/publicRooms", body)
        return sorted(r["room_id"] for r in data["chunk"])

    assert await rooms() == [listed]
    assert await rooms(third_party_instance_id="bridge|irc") == [bridged]
    assert await rooms(third_party_instance_id="bridge|slack") == []
    assert await rooms(include_all_networks=True) == sorted([bridged, listed])
    assert (await ok(alice, "GET", "/publicRooms"))["chunk"][0]["room_id"] == listed

    # Refusals: a user (not a service), a bad visibility, an unknown room, a malformed instance ID,
    # include_all_networks together with one network.
    status, data = await alice.request("PUT", path, {"visibility": "public"})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN")
    status, data = await bridge.request("PUT", path, {"visibility": "hidden"})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await bridge.request("PUT", f"/directory/list/appservice/irc/{q('!nope:test.local')}",
                                        {"visibility": "public"})
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")
    status, data = await alice.request("POST", "/publicRooms", {"third_party_instance_id": "irc"})
    assert status == 400, data
    status, data = await alice.request("POST", "/publicRooms", {"third_party_instance_id": "bridge|irc",
                                                                "include_all_networks": True})
    assert status == 400, data

    # Taking the room out: visibility private, or DELETE.
    assert await ok(bridge, "PUT", path, {"visibility": "private"}) == {}
    assert await rooms(third_party_instance_id="bridge|irc") == []
    await ok(bridge, "PUT", path, {})  # public, Synapse's default
    assert await rooms(third_party_instance_id="bridge|irc") == [bridged]
    assert await ok(bridge, "DELETE", path) == {}
    assert await rooms(include_all_networks=True) == [listed]
