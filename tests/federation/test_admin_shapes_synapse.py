"""hs's users admin API against a real Synapse's (from PyPI, tests/federation/synapse.py), call for call.

The same calls go to both servers, each about its own users (the user IDs differ by server name, and the
session's Synapse is shared, so every name is unique): the user list and one user's details, PUT create
and modify, lock (the locked user's token), shadow-ban (a send still answered), whois, joined rooms,
devices, logging in as a user, password reset, device deletion, deactivation with erase, and the errors
(non-admins, other servers' users, unknown users, bad bodies). Statuses and key sets must be equal, and
values too where they do not depend on the server or the clock.

One difference is kept on purpose: whois keys sessions by device ID, as the spec's
GET /admin/whois/{userId} and hs's client whois do, where Synapse puts every connection under one ""
device; the structure inside (sessions, connections with ip, last_seen, user_agent) is the same.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.federation.client import TlsClient, unique, user
from tests.federation.hs_server import FederatingHs
from tests.federation.synapse import SynapseServer

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
# Values that are the server's or the clock's: compared by type only.
VOLATILE = {"name", "creation_ts", "last_seen_ts", "user_id", "access_token", "last_seen_ip", "last_seen",
            "user_agent", "device_id", "last_seen_user_agent", "event_id"}


@pytest.fixture(params=["sqlite", "postgres"])
async def local(request: pytest.FixtureRequest, make_fed_hs: Any) -> FederatingHs:
    server: FederatingHs = await make_fed_hs(request.param)
    return server


async def admin_client(server: Any) -> TlsClient:
    user_id, token = await server.register_user(unique("admin"), admin=True)
    client: TlsClient = server.client(token)
    client.user_id = user_id
    return client


def q(user_id: str | None) -> str:
    return quote(str(user_id), safe="")


def same_shape(ours: Any, theirs: Any, where: str = "") -> None:
    """Equal key sets all the way down; equal values but for VOLATILE keys (same JSON type there)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        assert set(ours) == set(theirs), (where, sorted(set(ours) ^ set(theirs)), ours, theirs)
        for key in ours:
            if key in VOLATILE:
                assert type(ours[key]) is type(theirs[key]) or None in (ours[key], theirs[key]), (where, key, ours,
                                                                                                  theirs)
            else:
                same_shape(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        assert len(ours) == len(theirs), (where, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            same_shape(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, (where, ours, theirs)


class Pair:
    """One actor on each server; `call` sends the same request to both, `{me}`/`{target}` filled per server."""

    def __init__(self, servers: tuple[Any, Any], clients: tuple[TlsClient, TlsClient]) -> None:
        self.servers = servers
        self.clients = clients

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
                   targets: tuple[str, str] | None = None) -> tuple[tuple[int, Any], tuple[int, Any]]:
        out = []
        for i, client in enumerate(self.clients):
            p = path.replace("{target}", q(targets[i])) if targets else path
            out.append(await client.request(method, p, body, params=params))
        return out[0], out[1]

    async def same(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
                   targets: tuple[str, str] | None = None, status: int = 200) -> Any:
        ours, theirs = await self.call(method, path, body, params, targets)
        assert ours[0] == theirs[0] == status, (method, path, ours, theirs)
        same_shape(ours[1], theirs[1], f"{method} {path}")
        return ours[1], theirs[1]


async def test_users_admin_api_answers_as_synapse(local: FederatingHs, synapse: SynapseServer) -> None:
    servers = (local, synapse)
    admins = Pair(servers, (await admin_client(local), await admin_client(synapse)))
    name = unique("target")
    bobs = (await user(local, name), await user(synapse, name))
    bob_ids = (str(bobs[0].user_id), str(bobs[1].user_id))

    # The list, filtered to this test's user, and one user's details.
    ours, theirs = await admins.same("GET", f"{V2}/users", params={"user_id": name})
    assert ours["total"] == 1 and [u["name"] for u in ours["users"]] == [bob_ids[0]]
    await admins.same("GET", f"{V2}/users", params={"name": name, "limit": "0"})
    await admins.same("GET", f"{V2}/users", params={"user_id": name, "order_by": "creation_ts", "dir": "b",
                                                    "deactivated": "true", "locked": "true", "guests": "false"})
    for not_user_type in ("bot", "", "support"):
        await admins.same("GET", f"{V2}/users", params={"user_id": name, "not_user_type": not_user_type})
    for deactivated in ("true", "false"):
        await admins.same("GET", "/_synapse/admin/v3/users", params={"user_id": name, "deactivated": deactivated})
    await admins.same("GET", f"{V2}/users/{{target}}", targets=bob_ids)

    # PUT: create (201), then modify (200).
    new = unique("created")
    new_ids = (f"@{new}:{local.server_name}", f"@{new}:{synapse.server_name}")
    await admins.same("PUT", f"{V2}/users/{{target}}", {"password": "a-long-password-1", "displayname": "Created",
                                                        "avatar_url": "mxc://example.org/abc", "user_type": "bot"},
                      targets=new_ids, status=201)
    await admins.same("PUT", f"{V2}/users/{{target}}", {"displayname": "Renamed", "admin": True, "user_type": None},
                      targets=new_ids)
    for bad in ({"admin": "yes"}, {"user_type": "wizard"}, {"locked": 1}, {"deactivated": True, "locked": True}):
        await admins.same("PUT", f"{V2}/users/{{target}}", bad, targets=new_ids, status=400)

    # Locked: the user's token answers M_USER_LOCKED on both; unlocked, it works again.
    await admins.same("PUT", f"{V2}/users/{{target}}", {"locked": True}, targets=bob_ids)
    targets = Pair(servers, bobs)
    await targets.same("GET", "/_matrix/client/v3/account/whoami", status=401)
    await admins.same("PUT", f"{V2}/users/{{target}}", {"locked": False}, targets=bob_ids)
    await targets.same("GET", "/_matrix/client/v3/account/whoami")

    # whois, joined rooms, devices.
    rooms = []
    for client in bobs:
        status, body = await client.request("POST", "/createRoom", {})
        assert status == 200, body
        rooms.append(body["room_id"])
    ours, theirs = await admins.call("GET", f"{V1}/users/{{target}}/joined_rooms", targets=bob_ids)
    assert ours == (200, {"joined_rooms": [rooms[0]], "total": 1}) and theirs == (
        200, {"joined_rooms": [rooms[1]], "total": 1})
    ours, theirs = await admins.call("GET", f"{V1}/users/{{target}}/memberships", targets=bob_ids)
    assert ours == (200, {"memberships": {rooms[0]: "join"}}) and theirs == (200, {"memberships": {rooms[1]: "join"}})
    ours, theirs = await admins.call("GET", f"{V1}/whois/{{target}}", targets=bob_ids)
    assert ours[0] == theirs[0] == 200 and set(ours[1]) == set(theirs[1]) == {"user_id", "devices"}
    for answer in (ours[1], theirs[1]):
        (device,) = answer["devices"].values()
        assert set(device) == {"sessions"} and set(device["sessions"][0]) == {"connections"}
    ours, theirs = await targets.call("GET", f"{V1}/whois/{{target}}", targets=bob_ids)  # about oneself: allowed
    assert ours[0] == theirs[0] == 200 and set(ours[1]) == set(theirs[1]), (ours, theirs)
    # An unknown local user: 200 on both (Synapse lists one "" device with no connections, hs none).
    ours, theirs = await admins.call("GET", f"{V1}/whois/{{target}}", targets=(f"@{name}x:{local.server_name}",
                                                                               f"@{name}x:{synapse.server_name}"))
    assert ours[0] == theirs[0] == 200 and set(ours[1]) == set(theirs[1]), (ours, theirs)
    await admins.same("GET", f"{V1}/users/{{target}}/admin", targets=bob_ids)
    await admins.same("PUT", f"{V1}/users/{{target}}/admin", {"admin": True}, targets=bob_ids)
    await admins.same("GET", f"{V1}/users/{{target}}/admin", targets=bob_ids)
    await admins.same("PUT", f"{V1}/users/{{target}}/admin", {"admin": False}, targets=bob_ids)
    await admins.same("PUT", f"{V1}/users/{{target}}/admin", {}, targets=bob_ids, status=400)
    ours, theirs = await admins.call("GET", f"{V2}/users/{{target}}/devices", targets=bob_ids)
    assert ours[0] == theirs[0] == 200 and ours[1]["total"] == theirs[1]["total"] == 1
    assert set(ours[1]["devices"][0]) == set(theirs[1]["devices"][0]), (ours, theirs)
    devices = (ours[1]["devices"][0]["device_id"], theirs[1]["devices"][0]["device_id"])
    for i, client in enumerate(admins.clients):  # one device per server: a path of its own each
        path = f"{V2}/users/{q(bob_ids[i])}/devices/{devices[i]}"
        status, one = await client.request("GET", path)
        assert status == 200 and set(one) == set(ours[1]["devices"][0]), one
        assert await client.request("PUT", path, {"display_name": "renamed"}) == (200, {})
        assert (await client.request("GET", path))[1]["display_name"] == "renamed"
    await admins.same("GET", f"{V2}/users/{{target}}/devices/NOSUCHDEVICE", targets=bob_ids, status=404)
    await admins.same("PUT", f"{V2}/users/{{target}}/devices/NOSUCHDEVICE", {"display_name": "x"}, targets=bob_ids,
                      status=404)
    await admins.same("POST", f"{V2}/users/{{target}}/delete_devices", {"devices": ["NOSUCHDEVICE"]},
                      targets=bob_ids)
    await admins.same("POST", f"{V2}/users/{{target}}/delete_devices", {}, targets=bob_ids, status=400)

    # Shadow-ban: {} and the send still answered with an event ID; lifted with DELETE.
    await admins.same("POST", f"{V1}/users/{{target}}/shadow_ban", {}, targets=bob_ids)
    await admins.same("GET", f"{V2}/users/{{target}}", targets=bob_ids)
    ours = await bobs[0].request("PUT", f"/rooms/{rooms[0]}/send/m.room.message/t1", {"msgtype": "m.text",
                                                                                      "body": "x"})
    theirs = await bobs[1].request("PUT", f"/rooms/{rooms[1]}/send/m.room.message/t1", {"msgtype": "m.text",
                                                                                         "body": "x"})
    assert ours[0] == theirs[0] == 200
    same_shape(ours[1], theirs[1])
    await admins.same("DELETE", f"{V1}/users/{{target}}/shadow_ban", {}, targets=bob_ids)

    # Logging in as the user, with and without an expiry.
    await admins.same("POST", f"{V1}/users/{{target}}/login", {}, targets=bob_ids)
    await admins.same("POST", f"{V1}/users/{{target}}/login", {"valid_until_ms": 4_000_000_000_000}, targets=bob_ids)
    await admins.same("POST", f"{V1}/users/{{target}}/login", {"valid_until_ms": "soon"}, targets=bob_ids,
                      status=400)
    own = (str(admins.clients[0].user_id), str(admins.clients[1].user_id))
    await admins.same("POST", f"{V1}/users/{{target}}/login", {}, targets=own, status=400)

    # Password reset (sessions kept), device deletion, deactivation with erase.
    await admins.same("POST", f"{V1}/reset_password/{{target}}", {"new_password": "another-long-pw-2",
                                                                 "logout_devices": False}, targets=bob_ids)
    await admins.same("POST", f"{V1}/reset_password/{{target}}", {}, targets=bob_ids, status=400)
    await admins.same("DELETE", f"{V2}/users/{{target}}/devices/NOSUCHDEVICE", targets=bob_ids)
    await admins.same("POST", f"{V1}/deactivate/{{target}}", {"erase": "yes"}, targets=bob_ids, status=400)
    await admins.same("POST", f"{V1}/deactivate/{{target}}", {"erase": True}, targets=bob_ids)
    await admins.same("GET", f"{V2}/users/{{target}}", targets=bob_ids)
    await admins.same("GET", "/_synapse/admin/v3/users", params={"user_id": name, "deactivated": "true"})
    await admins.same("GET", f"{V2}/users", params={"user_id": name, "deactivated": "true"})

    # User media statistics: uploads by two new users, listed alike (filtered to them by name).
    uploader = unique("uploader")
    uploaders = (await user(local, uploader), await user(synapse, uploader))
    for client in uploaders:
        for size in (10, 20):
            status, body = await client.request("POST", "/_matrix/media/v3/upload", raw=b"x" * size)
            assert status == 200, body
    stats = f"{V1}/statistics/users/media"
    ours, theirs = await admins.same("GET", stats, params={"search_term": uploader})
    assert [(u["media_count"], u["media_length"]) for u in ours["users"]] == [(2, 30)]
    await admins.same("GET", stats, params={"search_term": uploader, "order_by": "media_length", "dir": "b",
                                            "limit": "0"})
    for bad in ({"order_by": "size"}, {"from_ts": "10", "until_ts": "5"}, {"search_term": ""}):
        ours, theirs = await admins.call("GET", stats, params=bad)
        # The same status and errcode (hs words its enum errors its own way).
        assert (ours[0], ours[1]["errcode"]) == (theirs[0], theirs[1]["errcode"]) == (400, "M_INVALID_PARAM"), (
            bad, ours, theirs)

    # Errors: unknown users, other servers' users, non-admins.
    nobody = unique("nobody")
    nobodies = (f"@{nobody}:{local.server_name}", f"@{nobody}:{synapse.server_name}")
    for method, path in (("GET", f"{V2}/users/{{target}}"), ("POST", f"{V1}/deactivate/{{target}}"),
                         ("POST", f"{V1}/users/{{target}}/login"), ("GET", f"{V2}/users/{{target}}/devices")):
        await admins.same(method, path, {} if method == "POST" else None, targets=nobodies, status=404)
    remote = ("@someone:elsewhere.invalid", "@someone:elsewhere.invalid")
    for method, path in (("GET", f"{V2}/users/{{target}}"), ("PUT", f"{V2}/users/{{target}}"),
                         ("POST", f"{V1}/deactivate/{{target}}"), ("GET", f"{V1}/whois/{{target}}"),
                         ("POST", f"{V1}/users/{{target}}/shadow_ban"), ("POST", f"{V1}/users/{{target}}/login"),
                         ("GET", f"{V2}/users/{{target}}/devices")):
        await admins.same(method, path, {} if method in ("POST", "PUT") else None, targets=remote, status=400)
    plain = Pair(servers, (await user(local, unique("plain")), await user(synapse, unique("plain"))))
    for method, path in (("GET", f"{V2}/users"), ("GET", f"{V2}/users/{{target}}"), ("PUT", f"{V2}/users/{{target}}"),
                         ("POST", f"{V1}/reset_password/{{target}}"), ("POST", f"{V1}/users/{{target}}/login"),
                         ("GET", f"{V1}/users/{{target}}/joined_rooms")):
        await plain.same(method, path, {} if method in ("POST", "PUT") else None, targets=new_ids, status=403)
