"""GET /voip/turnServer (TURN credentials from config, Synapse's keys) and GET /thirdparty/protocols."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest

from hs.config import ConfigError, parse_config
from tests.harness import ok, user

URIS = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]


async def test_no_turn_server_configured_gives_an_empty_object(make_server: Any) -> None:
    server = await make_server()
    alice = await user(server, "alice")
    assert await ok(alice, "GET", "/voip/turnServer") == {}
    status, _ = await alice.request("GET", "/_matrix/client/r0/voip/turnServer")
    assert status == 200
    anonymous = server.client()
    status, body = await anonymous.request("GET", "/voip/turnServer")
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    await anonymous.close()


async def test_shared_secret_credentials_follow_the_turn_rest_api(make_server: Any) -> None:
    server = await make_server(turn_uris=URIS, turn_shared_secret="s3cret", turn_user_lifetime="2h")
    alice = await user(server, "alice")
    before = int(time.time())
    body = await ok(alice, "GET", "/voip/turnServer")
    assert body["uris"] == URIS and body["ttl"] == 7200
    expiry, _, user_id = body["username"].partition(":")
    assert user_id == alice.user_id
    assert before + 7200 <= int(expiry) <= int(time.time()) + 7200
    # What a TURN server with use-auth-secret computes from the username:
    expected = base64.b64encode(hmac.new(b"s3cret", body["username"].encode(), hashlib.sha1).digest()).decode()
    assert body["password"] == expected


async def test_fixed_credentials_and_guests(make_server: Any) -> None:
    server = await make_server(turn_uris=URIS, turn_username="calls", turn_password="pw",
                               turn_allow_guests=False)
    alice = await user(server, "alice")
    assert await ok(alice, "GET", "/voip/turnServer") == {
        "username": "calls", "password": "pw", "uris": URIS, "ttl": 3600}
    # A guest (made one in the database) is refused while turn_allow_guests is off.
    await server.hs.db.execute("UPDATE users SET is_guest = 1 WHERE user_id = $1", alice.user_id)
    server.hs.user_store.drop_cached_tokens(alice.user_id)
    status, body = await alice.request("GET", "/voip/turnServer")
    assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"


def test_turn_config_errors_name_the_key() -> None:
    base = {"server_name": "example.org"}
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "turn_uris": ["http://turn.example.org"]})
    assert any(p.startswith("turn_uris") for p in e.value.problems)
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "turn_user_lifetime": "soon"})
    assert any(p.startswith("turn_user_lifetime") for p in e.value.problems)
    assert parse_config({**base, "turn_user_lifetime": "30m"}).turn_user_lifetime == 1_800_000
    assert parse_config({**base, "turn_user_lifetime": 5000}).turn_user_lifetime == 5000


async def test_no_third_party_protocols_without_bridges(server: Any) -> None:
    alice = await user(server, "alice")
    assert await ok(alice, "GET", "/thirdparty/protocols") == {}
