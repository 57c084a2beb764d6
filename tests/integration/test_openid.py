"""OpenID tokens: requested by a user for themselves, exchanged for the user ID at the (unauthenticated)
federation userinfo endpoint while valid, good for nothing else; expired, unknown and deactivated
users' tokens refused with 401 M_UNKNOWN_TOKEN. On both engines."""

from __future__ import annotations

from hs.db.stores.openid import OpenIdStore
from hs.util import now_ms
from tests.harness import OPEN_CLIENTS, Client, TestHomeServer, ok, user

USERINFO = "/_matrix/federation/v1/openid/userinfo"


async def user_less(server: TestHomeServer) -> Client:
    """A client without an account (closed after the test)."""
    c = server.client()
    OPEN_CLIENTS.append(c)
    return c


async def userinfo(server: TestHomeServer, token: str | None) -> tuple[int, dict[str, str]]:
    params = {"access_token": token} if token is not None else None
    status, body = await (await user_less(server)).request("GET", USERINFO, params=params, auth=False)
    return status, body


async def test_request_token_and_userinfo(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    token = await ok(alice, "POST", f"/user/{alice.user_id}/openid/request_token", {})
    assert set(token) == {"access_token", "token_type", "matrix_server_name", "expires_in"}
    assert token["token_type"] == "Bearer" and token["matrix_server_name"] == "test.local"
    assert token["expires_in"] == 3600
    assert await userinfo(server, token["access_token"]) == (200, {"sub": alice.user_id})
    # Each request gives a new token; the first stays good.
    again = await ok(alice, "POST", f"/user/{alice.user_id}/openid/request_token", {})
    assert again["access_token"] != token["access_token"]
    assert (await userinfo(server, token["access_token"]))[1] == {"sub": alice.user_id}
    # Stored hashed: the token itself is nowhere in the table.
    stored = await server.hs.db.fetch("SELECT token_hash FROM openid_tokens")
    assert len(stored) == 2 and token["access_token"] not in {r["token_hash"] for r in stored}


async def test_openid_token_is_not_an_access_token(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    token = (await ok(alice, "POST", f"/user/{alice.user_id}/openid/request_token", {}))["access_token"]
    holder = await user_less(server)
    holder.token = token
    status, body = await holder.request("GET", "/account/whoami")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    status, body = await holder.request("POST", f"/user/{alice.user_id}/openid/request_token", {})
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    # ... and an access token is not an OpenID token.
    assert alice.token is not None
    status, body = await userinfo(server, alice.token)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body


async def test_refusals(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    status, body = await alice.request("POST", f"/user/{bob.user_id}/openid/request_token", {})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = await alice.request("POST", f"/user/{alice.user_id}/openid/request_token", raw=b"not json")
    assert status == 400 and body["errcode"] == "M_NOT_JSON", body
    status, body = await (await user_less(server)).request(
        "POST", f"/user/{alice.user_id}/openid/request_token", {}, auth=False)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", body
    status, body = await userinfo(server, "no-such-token")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    status, body = await userinfo(server, None)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", body


async def test_expired_token_refused_and_purged(server: TestHomeServer) -> None:
    """A token past its hour is refused; the next request for a token deletes it."""
    alice = await user(server, "alice")
    store = OpenIdStore(server.hs.db)
    await store.add("expired-token", alice.user_id, now_ms() - 1)
    status, body = await userinfo(server, "expired-token")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    await ok(alice, "POST", f"/user/{alice.user_id}/openid/request_token", {})
    assert await server.hs.db.fetchval("SELECT COUNT(*) FROM openid_tokens") == 1


async def test_deactivated_users_token_refused(server: TestHomeServer) -> None:
    nina = await user(server, "nina")
    token = (await ok(nina, "POST", f"/user/{nina.user_id}/openid/request_token", {}))["access_token"]
    await ok(nina, "POST", "/account/deactivate", {"auth": {
        "type": "m.login.password", "user": "nina", "password": "password123"}})
    status, body = await userinfo(server, token)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
