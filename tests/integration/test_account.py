"""Accounts over real HTTP on both engines: registration, login, logout, devices, tokens, admin API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from hs.db.stores.users import hash_token
from tests.harness import Client, TestHomeServer
from tests.integration.faults import InjectedFailure, failing_transaction
from tests.integration.test_keys import device_keys

ADMIN_REGISTER = "/_synapse/admin/v1/register"


async def _register(srv: TestHomeServer, username: str, password: str = "password123") -> Client:
    client = srv.client()
    await client.register(username, password)
    return client


def _mac(secret: str, nonce: str, user: str, password: str, admin: bool = False) -> str:
    msg = b"\x00".join(p.encode() for p in (nonce, user, password, "admin" if admin else "notadmin"))
    return hmac.new(secret.encode(), msg, hashlib.sha1).hexdigest()


# -- discovery ----------------------------------------------------------------------------------------------
async def test_versions_and_capabilities(server: TestHomeServer) -> None:
    c = server.client()
    status, body = await c.request("GET", "/_matrix/client/versions", auth=False)
    assert status == 200
    assert "v1.1" in body["versions"] and "v1.12" in body["versions"]
    assert body["unstable_features"] == {"org.matrix.simplified_msc3575": True}  # sliding sync (Element X)

    status, body = await c.request("GET", "/capabilities")
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"

    await c.register("capuser")
    status, body = await c.request("GET", "/capabilities")
    assert status == 200
    caps = body["capabilities"]
    assert caps["m.room_versions"]["default"] == server.config.default_room_version
    assert set(caps["m.room_versions"]["available"]) == {str(i) for i in range(1, 13)}
    assert all(v == "stable" for v in caps["m.room_versions"]["available"].values())
    assert caps["m.change_password"] == {"enabled": True}
    assert caps["m.set_displayname"] == {"enabled": True}
    assert caps["m.set_avatar_url"] == {"enabled": True}
    assert caps["m.3pid_changes"] == {"enabled": False}
    await c.close()


async def _get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_well_known(make_server: Any) -> None:
    srv = await make_server("sqlite")
    status, body = await _get_json(srv.base_url + "/.well-known/matrix/client")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"

    srv2 = await make_server("sqlite", public_baseurl="https://matrix.example.org/")
    status, body = await _get_json(srv2.base_url + "/.well-known/matrix/client")
    assert status == 200
    assert body == {"m.homeserver": {"base_url": "https://matrix.example.org/"}}
    # Login responses carry the same discovery information.
    c = srv2.client()
    await c.register("wk")
    status, body = await c.request("POST", "/login", {"type": "m.login.password", "user": "wk",
                                                      "password": "password123"}, auth=False)
    assert status == 200
    assert body["well_known"] == {"m.homeserver": {"base_url": "https://matrix.example.org/"}}
    await c.close()


# -- registration -------------------------------------------------------------------------------------------
async def test_register_uia_dummy_flow(server: TestHomeServer) -> None:
    c = server.client()
    status, body = await c.request("POST", "/register", {"username": "alice", "password": "secretpw1"}, auth=False)
    assert status == 401, body
    assert body["flows"] == [{"stages": ["m.login.dummy"]}]
    assert body["params"] == {}
    session = body["session"]
    assert isinstance(session, str) and session
    assert "errcode" not in body

    # Completing the stage with only the session: the username/password of the first call are used.
    status, body = await c.request("POST", "/register", {"auth": {"type": "m.login.dummy", "session": session}},
                                   auth=False)
    assert status == 200, body
    assert body["user_id"] == "@alice:test.local"
    assert body["home_server"] == "test.local"
    assert body["access_token"].startswith("hs_")
    assert body["device_id"]

    c.token = body["access_token"]
    status, who = await c.request("GET", "/account/whoami")
    assert status == 200
    assert who == {"user_id": "@alice:test.local", "device_id": body["device_id"], "is_guest": False}

    # The password from the first call was kept (as a hash) and works.
    status, login = await c.request("POST", "/login", {"type": "m.login.password", "user": "alice",
                                                       "password": "secretpw1"}, auth=False)
    assert status == 200, login

    # An unknown session is rejected.
    status, body = await c.request("POST", "/register", {"username": "bob", "password": "x12345678",
                                                         "auth": {"type": "m.login.dummy", "session": "nope"}},
                                   auth=False)
    assert status == 400 and body["errcode"] == "M_UNKNOWN"
    await c.close()


async def test_register_options(server: TestHomeServer) -> None:
    c = server.client()
    auth = {"type": "m.login.dummy"}
    status, body = await c.request("POST", "/register", {"username": "quiet", "password": "pw12345678",
                                                         "inhibit_login": True, "auth": auth}, auth=False)
    assert status == 200, body
    assert body == {"user_id": "@quiet:test.local", "home_server": "test.local"}

    status, body = await c.request("POST", "/register", {
        "username": "Mixed.Case", "password": "pw12345678", "device_id": "MYDEVICE",
        "initial_device_display_name": "My Phone", "auth": auth}, auth=False)
    assert status == 200, body
    assert body["user_id"] == "@mixed.case:test.local"
    assert body["device_id"] == "MYDEVICE"
    c.token = body["access_token"]
    status, dev = await c.request("GET", "/devices/MYDEVICE")
    assert status == 200 and dev["display_name"] == "My Phone"

    # Without a username an ID is generated.
    status, body = await c.request("POST", "/register", {"password": "pw12345678", "auth": auth}, auth=False)
    assert status == 200, body
    assert body["user_id"].startswith("@") and body["user_id"].endswith(":test.local")

    # Guests are not supported.
    status, body = await c.request("POST", "/register", {"auth": auth}, params={"kind": "guest"}, auth=False)
    assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    await c.close()


async def test_register_username_validation_and_duplicates(server: TestHomeServer) -> None:
    c = server.client()
    await c.register("taken")
    anon = server.client()
    for bad in ("bad name", "caf\u00e9", "_reserved", "12345", "x" * 300, "a:b", "@x"):
        status, body = await anon.request("POST", "/register", {"username": bad, "password": "pw12345678",
                                                                "auth": {"type": "m.login.dummy"}}, auth=False)
        assert status == 400 and body["errcode"] == "M_INVALID_USERNAME", (bad, body)
        status, body = await anon.request("GET", "/register/available", params={"username": bad}, auth=False)
        assert status == 400 and body["errcode"] == "M_INVALID_USERNAME", (bad, body)

    # Allowed punctuation.
    status, body = await anon.request("GET", "/register/available", params={"username": "a.b_c=d-e/f+g"},
                                      auth=False)
    assert status == 200 and body == {"available": True}

    # Taken, also case-insensitively; reported before any UIA round.
    for name in ("taken", "TAKEN"):
        status, body = await anon.request("GET", "/register/available", params={"username": name}, auth=False)
        assert status == 400 and body["errcode"] == "M_USER_IN_USE"
        status, body = await anon.request("POST", "/register", {"username": name, "password": "pw12345678"},
                                          auth=False)
        assert status == 400 and body["errcode"] == "M_USER_IN_USE"

    status, body = await anon.request("GET", "/register/available", auth=False)
    assert status == 400 and body["errcode"] == "M_MISSING_PARAM"
    await c.close()
    await anon.close()


async def test_registration_closed(make_server: Any, engine: str) -> None:
    srv = await make_server(engine, enable_registration=False)
    c = srv.client()
    status, body = await c.request("POST", "/register", {"username": "nobody", "password": "pw12345678",
                                                         "auth": {"type": "m.login.dummy"}}, auth=False)
    assert status == 403
    assert body["errcode"] == "M_FORBIDDEN"
    assert body["error"] == "Registration has been disabled"
    status, body = await c.request("POST", "/register", {"username": "nobody"}, auth=False)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    assert await srv.hs.user_store.get_user("@nobody:test.local") is None

    # The shared-secret admin API still works while registration is closed.
    status, body = await c.request("GET", ADMIN_REGISTER, auth=False)
    nonce = body["nonce"]
    status, body = await c.request("POST", ADMIN_REGISTER, {
        "nonce": nonce, "username": "viaadmin", "password": "pw12345678", "admin": False,
        "mac": _mac("shared-secret", nonce, "viaadmin", "pw12345678")}, auth=False)
    assert status == 200, body
    assert body["user_id"] == "@viaadmin:test.local"
    await c.close()


async def test_registration_rate_limited(make_server: Any) -> None:
    srv = await make_server("sqlite", rc_registration={"per_second": 0.001, "burst_count": 2})
    c = srv.client()
    for i in range(2):
        await c.register(f"rl{i}")
    # UIA rounds that do not create an account are not counted, but the limit is checked first.
    status, body = await c.request("POST", "/register", {"username": "rl9", "password": "pw12345678",
                                                         "auth": {"type": "m.login.dummy"}}, auth=False)
    assert status == 429, body
    assert body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
    await c.close()


# -- login --------------------------------------------------------------------------------------------------
async def test_login(server: TestHomeServer) -> None:
    c = await _register(server, "carol", "correct horse")
    anon = server.client()
    status, body = await anon.request("GET", "/login", auth=False)
    assert status == 200 and {"type": "m.login.password"} in body["flows"]

    variants: list[dict[str, Any]] = [
        {"identifier": {"type": "m.id.user", "user": "carol"}},
        {"identifier": {"type": "m.id.user", "user": "@carol:test.local"}},
        {"identifier": {"type": "m.id.user", "user": "CAROL"}},
        {"identifier": {"type": "m.id.user", "user": "@Carol:test.local"}},
        {"user": "carol"},
        {"user": "@carol:test.local"},
    ]
    device_ids = set()
    for v in variants:
        status, body = await anon.request("POST", "/login", {"type": "m.login.password", "password": "correct horse",
                                                             **v}, auth=False)
        assert status == 200, (v, body)
        assert body["user_id"] == "@carol:test.local"
        assert body["home_server"] == "test.local"
        assert body["access_token"].startswith("hs_")
        device_ids.add(body["device_id"])
    assert len(device_ids) == len(variants)  # a new device per login

    # The old API prefix works too.
    status, body = await anon.request("POST", "/_matrix/client/r0/login", {
        "type": "m.login.password", "user": "carol", "password": "correct horse", "device_id": "FIXED",
        "initial_device_display_name": "laptop"}, auth=False)
    assert status == 200 and body["device_id"] == "FIXED"
    status, devices = await c.request("GET", "/devices")
    assert status == 200
    by_id = {d["device_id"]: d for d in devices["devices"]}
    assert by_id["FIXED"]["display_name"] == "laptop"
    assert device_ids | {"FIXED", c.device_id} == set(by_id)

    for wrong in ({"user": "carol", "password": "wrong"}, {"user": "nosuchuser", "password": "correct horse"}):
        status, body = await anon.request("POST", "/login", {"type": "m.login.password", **wrong}, auth=False)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body

    status, body = await anon.request("POST", "/login", {"type": "m.login.token", "token": "x"}, auth=False)
    assert status == 400 and body["errcode"] == "M_UNKNOWN"
    status, body = await anon.request("POST", "/login", {"type": "m.login.password", "password": "x"}, auth=False)
    assert status == 400 and body["errcode"] == "M_MISSING_PARAM"
    status, body = await anon.request("POST", "/login", raw=b"not json", auth=False)
    assert status == 400 and body["errcode"] == "M_NOT_JSON"
    await c.close()
    await anon.close()


async def test_login_rate_limits(make_server: Any) -> None:
    limits = {"address": {"per_second": 0.001, "burst_count": 3},
              "account": {"per_second": 1000, "burst_count": 1000},
              "failed_attempts": {"per_second": 1000, "burst_count": 1000}}
    srv = await make_server("sqlite", rc_login=limits)
    c = await _register(srv, "dave")
    body = {"type": "m.login.password", "user": "dave", "password": "password123"}
    for _ in range(3):
        status, resp = await c.request("POST", "/login", body, auth=False)
        assert status == 200, resp
    status, resp = await c.request("POST", "/login", body, auth=False)
    assert status == 429
    assert resp["errcode"] == "M_LIMIT_EXCEEDED"
    assert resp["retry_after_ms"] > 0
    await c.close()

    # Per account: a second user is unaffected.
    limits = {"address": {"per_second": 1000, "burst_count": 1000},
              "account": {"per_second": 0.001, "burst_count": 2},
              "failed_attempts": {"per_second": 1000, "burst_count": 1000}}
    srv = await make_server("sqlite", rc_login=limits)
    c = await _register(srv, "erin")
    await c.register("frank")
    for _ in range(2):
        status, resp = await c.request("POST", "/login", {**body, "user": "erin"}, auth=False)
        assert status == 200
    status, resp = await c.request("POST", "/login", {**body, "user": "@ERIN:test.local"}, auth=False)
    assert status == 429 and resp["errcode"] == "M_LIMIT_EXCEEDED"
    status, resp = await c.request("POST", "/login", {**body, "user": "frank"}, auth=False)
    assert status == 200
    await c.close()

    # Failed attempts: after the burst even the right password is refused for a while.
    limits = {"address": {"per_second": 1000, "burst_count": 1000},
              "account": {"per_second": 1000, "burst_count": 1000},
              "failed_attempts": {"per_second": 0.001, "burst_count": 2}}
    srv = await make_server("sqlite", rc_login=limits)
    c = await _register(srv, "gina")
    for _ in range(2):
        status, resp = await c.request("POST", "/login", {**body, "user": "gina", "password": "bad"}, auth=False)
        assert status == 403
    status, resp = await c.request("POST", "/login", {**body, "user": "gina"}, auth=False)
    assert status == 429 and resp["errcode"] == "M_LIMIT_EXCEEDED" and resp["retry_after_ms"] > 0
    await c.close()


# -- tokens, logout -----------------------------------------------------------------------------------------
async def test_tokens_stored_hashed(server: TestHomeServer) -> None:
    c = await _register(server, "hashy")
    token = c.token
    assert token is not None
    rows = await server.hs.db.fetch("SELECT * FROM access_tokens")
    assert rows
    dump = repr(rows)
    assert token not in dump
    assert token.removeprefix("hs_") not in dump
    assert any(r["token_hash"] == hash_token(token) for r in rows)
    user = await server.hs.user_store.get_user("@hashy:test.local")
    assert user is not None
    assert "password123" not in repr(user) and user["password_hash"].startswith("$2")
    await c.close()


async def test_logout(server: TestHomeServer) -> None:
    c = await _register(server, "henry")
    other = server.client()
    status, body = await other.request("POST", "/login", {"type": "m.login.password", "user": "henry",
                                                          "password": "password123"}, auth=False)
    other.token, other.device_id = body["access_token"], body["device_id"]

    status, body = await c.request("POST", "/logout", {})
    assert status == 200 and body == {}
    status, body = await c.request("GET", "/account/whoami")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    # The device went with its token; the other session still works.
    status, body = await other.request("GET", "/devices")
    assert status == 200
    assert [d["device_id"] for d in body["devices"]] == [other.device_id]

    status, body = await other.request("POST", "/logout", {}, auth=False)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    status, body = await other.request("GET", "/account/whoami", auth=False)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    status, body = await other.request("GET", "/account/whoami")
    assert status == 200 and body["user_id"] == "@henry:test.local"
    await c.close()
    await other.close()


async def test_logout_all(server: TestHomeServer) -> None:
    clients = [await _register(server, "ivy")]
    for _ in range(2):
        cl = server.client()
        status, body = await cl.request("POST", "/login", {"type": "m.login.password", "user": "ivy",
                                                           "password": "password123"}, auth=False)
        assert status == 200
        cl.token = body["access_token"]
        clients.append(cl)
    bystander = await _register(server, "jack")

    status, body = await clients[1].request("POST", "/logout/all", {})
    assert status == 200
    for cl in clients:
        status, body = await cl.request("GET", "/account/whoami")
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    assert await server.hs.user_store.get_devices("@ivy:test.local") == []
    status, body = await bystander.request("GET", "/account/whoami")
    assert status == 200
    for cl in [*clients, bystander]:
        await cl.close()


# -- devices ------------------------------------------------------------------------------------------------
async def test_devices(server: TestHomeServer) -> None:
    c = await _register(server, "kate", "katepass")
    second = server.client()
    status, body = await second.request("POST", "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "kate"}, "password": "katepass",
        "initial_device_display_name": "tablet"}, auth=False)
    second.token, second.device_id = body["access_token"], body["device_id"]
    mallory = await _register(server, "mallory")

    status, body = await c.request("GET", "/devices")
    assert status == 200
    devices = {d["device_id"]: d for d in body["devices"]}
    assert set(devices) == {c.device_id, second.device_id}
    for d in devices.values():
        assert set(d) == {"device_id", "display_name", "last_seen_ip", "last_seen_ts"}
        assert isinstance(d["last_seen_ts"], int)
    assert devices[c.device_id]["last_seen_ip"] == "127.0.0.1"  # this request was a sighting
    assert devices[second.device_id]["display_name"] == "tablet"

    status, body = await c.request("GET", f"/devices/{second.device_id}")
    assert status == 200 and body["device_id"] == second.device_id and body["display_name"] == "tablet"

    status, body = await c.request("PUT", f"/devices/{second.device_id}", {"display_name": "old tablet"})
    assert status == 200 and body == {}
    status, body = await c.request("GET", f"/devices/{second.device_id}")
    assert body["display_name"] == "old tablet"

    # Unknown devices and other users' devices are not found.
    for dev in ("NOSUCHDEV", mallory.device_id):
        status, body = await c.request("GET", f"/devices/{dev}")
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
        status, body = await c.request("PUT", f"/devices/{dev}", {"display_name": "x"})
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
        status, body = await c.request("DELETE", f"/devices/{dev}", {})
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await mallory.request("GET", f"/devices/{c.device_id}")
    assert status == 404

    # Deleting needs the password through UIA.
    status, body = await c.request("DELETE", f"/devices/{second.device_id}")
    assert status == 401, body
    assert body["flows"] == [{"stages": ["m.login.password"]}]
    session = body["session"]

    # A wrong password: 401 with the error and the same session.
    status, body = await c.request("DELETE", f"/devices/{second.device_id}", {"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "kate"},
        "password": "wrong", "session": session}})
    assert status == 401 and body["errcode"] == "M_FORBIDDEN" and body["session"] == session

    # Somebody else's password does not authorise deleting Kate's device.
    status, body = await c.request("DELETE", f"/devices/{second.device_id}", {"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mallory"},
        "password": "password123", "session": session}})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"

    status, body = await c.request("DELETE", f"/devices/{second.device_id}", {"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "kate"},
        "password": "katepass", "session": session}})
    assert status == 200, body
    status, body = await second.request("GET", "/account/whoami")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = await c.request("GET", "/devices")
    assert [d["device_id"] for d in body["devices"]] == [c.device_id]

    # The used session is gone.
    status, body = await c.request("DELETE", f"/devices/{c.device_id}", {"auth": {
        "type": "m.login.password", "user": "kate", "password": "katepass", "session": session}})
    assert status == 400 and body["errcode"] == "M_UNKNOWN"
    for cl in (c, second, mallory):
        await cl.close()


async def test_delete_devices_bulk(server: TestHomeServer) -> None:
    c = await _register(server, "liam")
    extra = []
    for _ in range(2):
        status, body = await c.request("POST", "/login", {"type": "m.login.password", "user": "liam",
                                                          "password": "password123"}, auth=False)
        extra.append(body["device_id"])
    status, body = await c.request("POST", "/delete_devices", {"devices": extra})
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]
    # The device list from the first request is remembered by the session.
    status, body = await c.request("POST", "/delete_devices", {"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "@liam:test.local"},
        "password": "password123", "session": body["session"]}})
    assert status == 200, body
    status, body = await c.request("GET", "/devices")
    assert [d["device_id"] for d in body["devices"]] == [c.device_id]
    await c.close()


async def test_change_password(server: TestHomeServer) -> None:
    c = await _register(server, "mona", "oldpassword")
    other = server.client()
    status, body = await other.request("POST", "/login", {"type": "m.login.password", "user": "mona",
                                                          "password": "oldpassword"}, auth=False)
    other.token = body["access_token"]

    status, body = await c.request("POST", "/account/password", {"new_password": "newpassword"})
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]
    status, body = await c.request("POST", "/account/password", {"new_password": "newpassword", "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mona"},
        "password": "oldpassword", "session": body["session"]}})
    assert status == 200, body

    # The current session survives, the others are logged out.
    status, _ = await c.request("GET", "/account/whoami")
    assert status == 200
    status, body = await other.request("GET", "/account/whoami")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = await c.request("GET", "/devices")
    assert [d["device_id"] for d in body["devices"]] == [c.device_id]

    login = {"type": "m.login.password", "user": "mona"}
    status, _ = await c.request("POST", "/login", {**login, "password": "oldpassword"}, auth=False)
    assert status == 403
    status, body = await c.request("POST", "/login", {**login, "password": "newpassword"}, auth=False)
    assert status == 200
    new_device = body["device_id"]

    # logout_devices: false keeps the other sessions.
    status, body = await c.request("POST", "/account/password", {
        "new_password": "third-password", "logout_devices": False, "auth": {
            "type": "m.login.password", "user": "mona", "password": "newpassword"}})
    assert status == 200, body
    status, body = await c.request("GET", "/devices")
    assert {d["device_id"] for d in body["devices"]} == {c.device_id, new_device}
    await c.close()
    await other.close()


async def test_deactivate(server: TestHomeServer) -> None:
    c = await _register(server, "nina", "ninapass")
    status, body = await c.request("POST", "/account/deactivate", {"auth": {
        "type": "m.login.password", "user": "nina", "password": "ninapass"}})
    assert status == 200, body
    status, body = await c.request("GET", "/account/whoami")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = await c.request("POST", "/login", {"type": "m.login.password", "user": "nina",
                                                      "password": "ninapass"}, auth=False)
    assert status == 403
    status, body = await c.request("GET", "/register/available", params={"username": "nina"}, auth=False)
    assert status == 400 and body["errcode"] == "M_USER_IN_USE"
    await c.close()


async def test_deactivate_leaves_rooms_and_drops_keys(server: TestHomeServer) -> None:
    """A deactivated account leaves the rooms it was in or invited to, and its device keys are gone."""
    owner = await _register(server, "otto")
    c = await _register(server, "olga", "olgapass")
    joined = await owner.create_room(preset="public_chat")
    invited = await owner.create_room()
    status, _ = await c.request("POST", f"/join/{joined}")
    assert status == 200
    status, _ = await owner.request("POST", f"/rooms/{invited}/invite", {"user_id": c.user_id})
    assert status == 200
    status, _ = await c.request("POST", "/keys/upload", {"device_keys": device_keys(c)[0]})
    assert status == 200
    status, body = await owner.request("POST", "/keys/query", {"device_keys": {c.user_id: []}})
    assert status == 200 and list(body["device_keys"][c.user_id]) == [c.device_id]
    status, body = await c.request("POST", "/account/deactivate", {"auth": {
        "type": "m.login.password", "user": "olga", "password": "olgapass"}})
    assert status == 200 and body == {"id_server_unbind_result": "no-support"}
    for room_id in (joined, invited):
        member = await server.hs.event_store.get_current_state_event(room_id, "m.room.member", c.user_id)
        assert member is not None and member.content["membership"] == "leave"
    status, body = await owner.request("POST", "/keys/query", {"device_keys": {c.user_id: []}})
    assert status == 200 and body["device_keys"].get(c.user_id, {}) == {}
    await c.close()
    await owner.close()


# -- shared-secret registration -----------------------------------------------------------------------------
async def test_admin_register(server: TestHomeServer) -> None:
    c = server.client()
    status, body = await c.request("GET", ADMIN_REGISTER, auth=False)
    assert status == 200
    nonce = body["nonce"]

    # A wrong MAC is refused; the nonce is used up by the attempt.
    status, body = await c.request("POST", ADMIN_REGISTER, {
        "nonce": nonce, "username": "root", "password": "rootpass1", "admin": True,
        "mac": _mac("wrong-secret", nonce, "root", "rootpass1", True)}, auth=False)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await c.request("POST", ADMIN_REGISTER, {
        "nonce": nonce, "username": "root", "password": "rootpass1", "admin": True,
        "mac": _mac("shared-secret", nonce, "root", "rootpass1", True)}, auth=False)
    assert status == 400 and body["errcode"] == "M_UNKNOWN"

    # The admin flag is covered by the MAC.
    _, body = await c.request("GET", ADMIN_REGISTER, auth=False)
    nonce = body["nonce"]
    status, body = await c.request("POST", ADMIN_REGISTER, {
        "nonce": nonce, "username": "root", "password": "rootpass1", "admin": True,
        "mac": _mac("shared-secret", nonce, "root", "rootpass1", False)}, auth=False)
    assert status == 403

    _, body = await c.request("GET", ADMIN_REGISTER, auth=False)
    nonce = body["nonce"]
    req = {"nonce": nonce, "username": "root", "password": "rootpass1", "admin": True,
           "displayname": "The Admin", "mac": _mac("shared-secret", nonce, "root", "rootpass1", True)}
    status, body = await c.request("POST", ADMIN_REGISTER, req, auth=False)
    assert status == 200, body
    assert body["user_id"] == "@root:test.local" and body["home_server"] == "test.local"
    assert body["access_token"] and body["device_id"]
    user = await server.hs.user_store.get_user("@root:test.local")
    assert user is not None and user["admin"] == 1
    profile = await server.hs.user_store.get_profile("@root:test.local")
    assert profile is not None and profile["displayname"] == "The Admin"
    c.token = body["access_token"]
    status, who = await c.request("GET", "/account/whoami")
    assert status == 200 and who["user_id"] == "@root:test.local"

    # Nonce reuse, even with a valid MAC.
    status, body = await c.request("POST", ADMIN_REGISTER, {**req, "username": "root2",
                                                            "mac": _mac("shared-secret", nonce, "root2",
                                                                        "rootpass1", True)}, auth=False)
    assert status == 400 and body["errcode"] == "M_UNKNOWN"

    # Missing nonce, and an existing user.
    status, body = await c.request("POST", ADMIN_REGISTER, {"username": "x", "password": "y", "mac": "z"},
                                   auth=False)
    assert status == 400
    _, body = await c.request("GET", ADMIN_REGISTER, auth=False)
    nonce = body["nonce"]
    status, body = await c.request("POST", ADMIN_REGISTER, {
        "nonce": nonce, "username": "root", "password": "pw", "admin": False,
        "mac": _mac("shared-secret", nonce, "root", "pw")}, auth=False)
    assert status == 400 and body["errcode"] == "M_USER_IN_USE"

    # The new user can log in with the password.
    status, body = await c.request("POST", "/login", {"type": "m.login.password", "user": "root",
                                                      "password": "rootpass1"}, auth=False)
    assert status == 200
    await c.close()


async def test_admin_register_without_secret(make_server: Any) -> None:
    srv = await make_server("sqlite", registration_shared_secret=None)
    c = srv.client()
    status, body = await c.request("GET", ADMIN_REGISTER, auth=False)
    nonce = body["nonce"]
    status, body = await c.request("POST", ADMIN_REGISTER, {
        "nonce": nonce, "username": "root", "password": "pw", "admin": False,
        "mac": _mac("", nonce, "root", "pw")}, auth=False)
    assert status == 400
    assert body["errcode"] == "M_UNKNOWN"
    assert body["error"] == "Shared secret registration is not enabled"
    await c.close()


async def test_cli_register_user(server: TestHomeServer, tmp_path: Path) -> None:
    from hs.cli import main

    config = {"server_name": "test.local", "registration_shared_secret": "shared-secret",
              "database": {"engine": "sqlite", "path": str(tmp_path / "unused.db")}}
    cfg_path = tmp_path / "homeserver.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    rc = await asyncio.to_thread(main, ["register-user", "-c", str(cfg_path), "-u", "cliuser", "-p", "clipass123",
                                        "--admin", "--url", server.base_url])
    assert rc == 0
    user = await server.hs.user_store.get_user("@cliuser:test.local")
    assert user is not None and user["admin"] == 1

    c = server.client()
    status, body = await c.request("POST", "/login", {"type": "m.login.password", "user": "cliuser",
                                                      "password": "clipass123"}, auth=False)
    assert status == 200 and body["user_id"] == "@cliuser:test.local"
    # Registering the same user again fails with a non-zero exit code.
    rc = await asyncio.to_thread(main, ["register-user", "-c", str(cfg_path), "-u", "cliuser", "-p", "other",
                                        "--url", server.base_url])
    assert rc == 1
    await c.close()


async def test_cli_register_user_wrong_secret(make_server: Any, tmp_path: Path) -> None:
    srv = await make_server("sqlite")
    from hs.cli import main

    (tmp_path / "secret.txt").write_text("not-the-secret\n")
    config = {"server_name": "test.local", "registration_shared_secret_path": str(tmp_path / "secret.txt"),
              "database": {"engine": "sqlite", "path": str(tmp_path / "unused.db")}}
    cfg_path = tmp_path / "homeserver.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    rc = await asyncio.to_thread(main, ["register-user", "-c", str(cfg_path), "-u", "intruder", "-p", "pw",
                                        "--url", srv.base_url])
    assert rc == 1
    assert await srv.hs.user_store.get_user("@intruder:test.local") is None


# -- third-party identifiers --------------------------------------------------------------------------------
async def test_accounts_have_no_third_party_identifiers(server: TestHomeServer) -> None:
    c = await _register(server, "tpid", "tpidpass")
    status, body = await c.request("GET", "/account/3pid")
    assert (status, body) == (200, {"threepids": []})
    for path in ("/account/3pid/email/requestToken", "/register/email/requestToken",
                 "/account/password/msisdn/requestToken"):
        status, body = await c.request("POST", path, {"client_secret": "s", "email": "a@b.c", "send_attempt": 1})
        assert status == 400 and body["errcode"] == "M_THREEPID_MEDIUM_NOT_SUPPORTED", path
    await c.close()


# -- registration is all-or-nothing ---------------------------------------------------------------------------
async def _account_rows(srv: TestHomeServer, user_id: str) -> dict[str, int]:
    return {table: int(await srv.hs.db.fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = $1", user_id))
            for table in ("users", "profiles", "devices", "access_tokens")}


NO_ROWS = {"users": 0, "profiles": 0, "devices": 0, "access_tokens": 0}


async def test_registration_fails_whole_at_every_statement(server: TestHomeServer, monkeypatch: Any) -> None:
    """The user, profile, device and token rows are written together or not at all: a failure at any
    statement leaves the name free and a retry succeeds."""
    c = server.client()
    body = {"username": "whole", "password": "password123", "device_id": "FIRSTDEV",
            "initial_device_display_name": "Phone", "auth": {"type": "m.login.dummy"}}
    fail_at = 1
    while True:
        with failing_transaction(monkeypatch, server.hs.db, "create_user", fail_at) as ran:
            status, data = await c.request("POST", "/register", body, auth=False)
        if status == 200:
            assert ran[0] == fail_at - 1 and fail_at > 4
            break
        assert status == 500, (fail_at, data)
        assert await _account_rows(server, "@whole:test.local") == NO_ROWS
        status, data = await c.request("GET", "/register/available", params={"username": "whole"}, auth=False)
        assert (status, data) == (200, {"available": True})
        fail_at += 1
    c.token = data["access_token"]
    status, who = await c.request("GET", "/account/whoami")
    assert (status, who["device_id"]) == (200, "FIRSTDEV")
    assert (await c.request("GET", "/devices/FIRSTDEV"))[1]["display_name"] == "Phone"
    await c.close()


async def test_registration_checks_the_device_before_creating_the_account(server: TestHomeServer) -> None:
    c = server.client()
    status, data = await c.request("POST", "/register", {
        "username": "longdevice", "password": "password123", "device_id": "D" * 600,
        "auth": {"type": "m.login.dummy"}}, auth=False)
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    assert await _account_rows(server, "@longdevice:test.local") == NO_ROWS
    status, data = await c.request("POST", "/register", {
        "username": "longdevice", "password": "password123", "device_id": "SHORT",
        "auth": {"type": "m.login.dummy"}}, auth=False)
    assert status == 200 and data["device_id"] == "SHORT"
    await c.close()


async def test_registration_stands_when_the_device_list_change_fails(server: TestHomeServer,
                                                                     monkeypatch: Any) -> None:
    async def broken(user_id: str, device_id: str) -> None:
        raise InjectedFailure("device list")

    monkeypatch.setattr(server.hs.e2ee, "on_device_created", broken)
    c = server.client()
    await c.register("listless")
    status, who = await c.request("GET", "/account/whoami")
    assert (status, who["user_id"]) == (200, "@listless:test.local")
    await c.close()


async def test_admin_registration_fails_whole_at_every_statement(server: TestHomeServer, monkeypatch: Any) -> None:
    c = server.client()
    fail_at = 1
    while True:
        nonce = (await c.request("GET", ADMIN_REGISTER, auth=False))[1]["nonce"]
        body = {"nonce": nonce, "username": "adm", "password": "pw12345678", "admin": False,
                "mac": _mac("shared-secret", nonce, "adm", "pw12345678")}
        with failing_transaction(monkeypatch, server.hs.db, "create_user", fail_at):
            status, data = await c.request("POST", ADMIN_REGISTER, body, auth=False)
        if status == 200:
            assert fail_at > 4
            break
        assert status == 500, (fail_at, data)
        assert await _account_rows(server, "@adm:test.local") == NO_ROWS
        fail_at += 1
    c.token = data["access_token"]
    assert (await c.request("GET", "/account/whoami"))[1]["user_id"] == "@adm:test.local"
    await c.close()
