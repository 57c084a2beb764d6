"""User-interactive auth details (issue 18), through real HTTP on both engines: registration retried
with its completed UIA session answers with the same account (clients retry over bad networks), a
wrong password's 401 has the UIA shape (with `completed`, empty too), and another account's valid
credentials are a 403 (as Synapse answers them), not a UIA 401."""

from __future__ import annotations

from typing import Any

from tests.harness import OPEN_CLIENTS, TestHomeServer, user


async def test_registration_retried_with_its_completed_session(server: TestHomeServer) -> None:
    for username in ("idem", None):
        c = server.client()
        OPEN_CLIENTS.append(c)
        body: dict[str, Any] = {"password": "password123", **({"username": username} if username else {})}
        status, first = await c.request("POST", "/register", body, auth=False)
        assert status == 401, first
        auth = {"type": "m.login.dummy", "session": first["session"]}
        status, done = await c.request("POST", "/register", {**body, "auth": auth}, auth=False)
        assert status == 200, done
        status, again = await c.request("POST", "/register", {**body, "auth": auth}, auth=False)
        assert status == 200, (username, again)
        assert again["user_id"] == done["user_id"]
        if username:
            assert done["user_id"] == "@idem:test.local"
    # Without the session, the name is taken.
    status, taken = await c.request("POST", "/register", {"username": "idem", "password": "password123",
                                                          "auth": {"type": "m.login.dummy"}}, auth=False)
    assert (status, taken["errcode"]) == (400, "M_USER_IN_USE")


async def test_wrong_password_is_a_uia_401(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    for method, path in (("DELETE", f"/devices/{alice.device_id}"), ("POST", "/account/deactivate")):
        status, first = await alice.request(method, path, {})
        assert status == 401, first
        status, body = await alice.request(method, path, {"auth": {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id},
            "password": "wrong", "session": first["session"]}})
        assert status == 401 and body["errcode"] == "M_FORBIDDEN", body
        assert body["completed"] == [] and body["session"] == first["session"], body
        assert body["flows"] == [{"stages": ["m.login.password"]}] and "params" in body


async def test_another_accounts_credentials_are_403(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    status, first = await alice.request("DELETE", f"/devices/{alice.device_id}", {})
    assert status == 401
    status, body = await alice.request("DELETE", f"/devices/{alice.device_id}", {"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": bob.user_id},
        "password": "password123", "session": first["session"]}})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, _ = await alice.request("GET", f"/devices/{alice.device_id}")
    assert status == 200  # still there
