"""Server keys and request authentication between in-process homeservers over real HTTPS: publishing
keys, fetching them directly and through a notary, X-Matrix signed requests accepted and tampered ones
refused, the profile and directory queries, and federation_domain_whitelist."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from hs.events.signing import decode_verify_key_base64, sign_json, verify_signed_json
from hs.federation.client import FederationError
from hs.federation.keys import InvalidServerSignature
from hs.federation.xmatrix import sign_request
from hs.util import now_ms
from tests.federation.client import unique, user
from tests.federation.conftest import MakeFedHs
from tests.federation.hs_server import FederatingHs


async def raw_request(server: FederatingHs, method: str, path: str, *, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A request to `server` over HTTPS with exactly these headers (no signing of our own)."""
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(server.cert.ca_path)))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = URL(server.base_url + path, encoded=True)  # sent exactly as signed
        async with session.request(method, url, json=body, headers=headers or {}) as resp:
            return resp.status, await resp.json(content_type=None)


def signed_auth(origin: FederatingHs, destination: str, method: str, uri: str, content: Any = None) -> str:
    return sign_request(origin.server_name, destination, origin.hs.signing_key, method, uri, content)


async def test_key_server_publishes_a_self_signed_key(make_fed_hs: MakeFedHs) -> None:
    b = await make_fed_hs()
    key = b.hs.signing_key
    for path in ("/_matrix/key/v2/server", f"/_matrix/key/v2/server/{quote(key.key_id)}"):
        status, body = await raw_request(b, "GET", path)
        assert status == 200, body
        assert body["server_name"] == b.server_name
        assert body["verify_keys"] == {key.key_id: {"key": key.verify_key_base64}}
        assert body["old_verify_keys"] == {}
        assert body["valid_until_ts"] > now_ms() + 3_600_000
        verify_signed_json(body, b.server_name, key.key_id, decode_verify_key_base64(body["verify_keys"][key.key_id]
                                                                                      ["key"]))
    status, body = await raw_request(b, "GET", "/_matrix/federation/v1/version")
    assert status == 200 and body["server"]["name"] == "hs" and body["server"]["version"]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_server_fetches_another_servers_key_directly(make_fed_hs: MakeFedHs,
                                                           engine: str) -> None:
    a = await make_fed_hs(engine)
    b = await make_fed_hs()
    signed = sign_json({"hello": "world"}, b.server_name, b.hs.signing_key)
    await a.hs.keyring.verify_json(b.server_name, signed, now_ms())
    [stored] = await a.hs.keyring.store.get_keys(b.server_name)
    assert (stored.key_id, stored.verify_key, stored.from_server) == (
        b.hs.signing_key.key_id, b.hs.signing_key.verify_key_base64, b.server_name)
    # The key survives a restart (read back from the database), and a forgery is still refused.
    await a.restart()
    await a.hs.keyring.verify_json(b.server_name, signed, now_ms())
    with pytest.raises(InvalidServerSignature, match="does not verify"):
        await a.hs.keyring.verify_json(b.server_name, {**signed, "hello": "there"}, now_ms())


async def test_server_fetches_keys_through_a_notary(make_fed_hs: MakeFedHs) -> None:
    c = await make_fed_hs()
    b = await make_fed_hs()
    ckey = c.hs.signing_key
    a = await make_fed_hs(trusted_key_servers=[
        {"server_name": c.server_name, "verify_keys": {ckey.key_id: ckey.verify_key_base64}}])
    keys = await a.hs.keyring.get_server_keys(b.server_name, [b.hs.signing_key.key_id], now_ms())
    assert list(keys) == [b.hs.signing_key.key_id]
    [stored] = await a.hs.keyring.store.get_keys(b.server_name)
    assert stored.from_server == c.server_name
    # The notary's answer over HTTP: B's response, signed by B and by C.
    queries: list[tuple[str, str, Any]] = [
        ("POST", "/_matrix/key/v2/query", {"server_keys": {b.server_name: {}}}),
        ("GET", f"/_matrix/key/v2/query/{b.server_name}?minimum_valid_until_ts={now_ms()}", None),
    ]
    for method, path, body in queries:
        status, answer = await raw_request(c, method, path, body=body)
        assert status == 200, answer
        [entry] = answer["server_keys"]
        assert entry["server_name"] == b.server_name
        verify_signed_json(entry, b.server_name, b.hs.signing_key.key_id, b.hs.signing_key.verify_key)
        verify_signed_json(entry, c.server_name, ckey.key_id, ckey.verify_key)
    status, answer = await raw_request(c, "POST", "/_matrix/key/v2/query", body={"server_keys": {}})
    assert (status, answer) == (200, {"server_keys": []})
    status, answer = await raw_request(c, "POST", "/_matrix/key/v2/query", body={"server_keys": {"bad/name": {}}})
    assert status == 400, answer


async def test_signed_requests_are_accepted_and_tampered_ones_refused(
        make_fed_hs: MakeFedHs) -> None:
    a = await make_fed_hs()
    b = await make_fed_hs()
    alice = await user(b, unique("alice"))
    status, _ = await alice.request("PUT", f"/profile/{alice.user_id}/displayname", {"displayname": "Alice"})
    assert status == 200
    # A's federation client signs; B fetches A's key from A and accepts.
    profile = await a.hs.federation_client.get_json(b.server_name, "/_matrix/federation/v1/query/profile",
                                                    {"user_id": str(alice.user_id)})
    assert profile == {"displayname": "Alice"}
    field = await a.hs.federation_client.get_json(b.server_name, "/_matrix/federation/v1/query/profile",
                                                  {"user_id": str(alice.user_id), "field": "avatar_url"})
    assert field == {}
    assert [k.key_id for k in await b.hs.keyring.store.get_keys(a.server_name)] == [a.hs.signing_key.key_id]

    uri = f"/_matrix/federation/v1/query/profile?user_id={quote(str(alice.user_id))}"
    ok_header = signed_auth(a, b.server_name, "GET", uri)
    status, body = await raw_request(b, "GET", uri, headers={"Authorization": ok_header})
    assert (status, body) == (200, {"displayname": "Alice"})
    # Signed for another target, another destination, or not at all: 401.
    other_uri = f"/_matrix/federation/v1/query/profile?user_id={quote('@bob:' + b.server_name)}"
    cases = {
        "tampered": (other_uri, {"Authorization": ok_header}),
        "wrong destination": (uri, {"Authorization": signed_auth(a, "elsewhere.test", "GET", uri)}),
        "unsigned": (uri, {}),
        "malformed": (uri, {"Authorization": 'X-Matrix origin="x'}),
    }
    for case, (path, headers) in cases.items():
        status, body = await raw_request(b, "GET", path, headers=headers)
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), (case, body)
    # The body is signed too: a signature over a body that was not sent does not hold.
    dir_uri = "/_matrix/federation/v1/query/directory?room_alias=" + quote(f"#nope:{b.server_name}")
    status, body = await raw_request(b, "GET", dir_uri, headers={
        "Authorization": signed_auth(a, b.server_name, "GET", dir_uri, {"extra": 1})})
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")


async def test_profile_and_directory_queries(make_fed_hs: MakeFedHs) -> None:
    a = await make_fed_hs()
    b = await make_fed_hs()
    bob = await user(b, unique("bob"))
    room_id = await bob.create_room(room_alias_name="lobby")
    alias = f"#lobby:{b.server_name}"
    answer = await a.hs.federation_client.get_json(b.server_name, "/_matrix/federation/v1/query/directory",
                                                   {"room_alias": alias})
    assert answer == {"room_id": room_id, "servers": [b.server_name]}
    with pytest.raises(FederationError) as e:
        await a.hs.federation_client.get_json(b.server_name, "/_matrix/federation/v1/query/directory",
                                              {"room_alias": f"#missing:{b.server_name}"})
    assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
    with pytest.raises(FederationError) as e:
        await a.hs.federation_client.get_json(b.server_name, "/_matrix/federation/v1/query/profile",
                                              {"user_id": f"@nobody:{b.server_name}"})
    assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
    with pytest.raises(FederationError) as e:
        await a.hs.federation_client.get_json(b.server_name, "/_matrix/federation/v1/query/profile",
                                              {"user_id": "@someone:elsewhere.test"})
    assert e.value.status == 400
    closed = await make_fed_hs(allow_profile_lookup_over_federation=False)
    with pytest.raises(FederationError) as e:
        await a.hs.federation_client.get_json(closed.server_name, "/_matrix/federation/v1/query/profile",
                                              {"user_id": f"@bob:{closed.server_name}"})
    assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")


async def test_domain_whitelist_refuses_other_origins(make_fed_hs: MakeFedHs) -> None:
    a = await make_fed_hs()
    b = await make_fed_hs(federation_domain_whitelist=["friend.test"])
    with pytest.raises(FederationError) as e:
        await a.hs.federation_client.get_json(b.server_name, "/_matrix/federation/v1/query/profile",
                                              {"user_id": f"@bob:{b.server_name}"})
    assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")
    assert await b.hs.keyring.store.get_keys(a.server_name) == []  # refused before fetching A's key


def test_federation_routes_are_served_by_main_and_generic_workers() -> None:
    from hs.config import parse_config
    from hs.roles.routes import routes_for_instance

    config = parse_config({
        "server_name": "example.test", "database": {"engine": "postgres", "dsn": "postgresql://x@127.0.0.1/x"},
        "redis": {"enabled": True},
        "instance_map": {"main": {"host": "127.0.0.1", "port": 9093}},
        "workers": {"fed1": {"app": "generic_worker", "listeners": [{"port": 8083, "resources": ["federation"]}]}},
    })
    wanted = {("GET", "/_matrix/key/v2/server"), ("POST", "/_matrix/key/v2/query"),
              ("GET", "/_matrix/key/v2/query/{serverName}"), ("GET", "/_matrix/federation/v1/query/profile"),
              ("GET", "/_matrix/federation/v1/query/directory"), ("GET", "/_matrix/federation/v1/version")}
    for instance in ("main", "fed1"):
        served = {(r.method, full) for r in routes_for_instance(config, instance) for full in r.full_paths()}
        assert wanted <= served, (instance, wanted - served)
