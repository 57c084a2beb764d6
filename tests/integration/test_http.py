"""HTTP behaviour every endpoint shares: spec error shapes, unknown endpoints, CORS, body limits,
metrics, and a failing request that does not take the server down."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.harness import TestHomeServer

SQLITE_ONLY = pytest.mark.parametrize("engine", ["sqlite"])


@SQLITE_ONLY
async def test_unknown_endpoint_and_method(server: TestHomeServer) -> None:
    c = server.client()
    status, body = await c.request("GET", "/_matrix/client/v3/no/such/thing")
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
    status, body = await c.request("DELETE", "/_matrix/client/versions")
    assert (status, body["errcode"]) == (405, "M_UNRECOGNIZED")
    await c.close()


@SQLITE_ONLY
async def test_cors_preflight_and_headers(server: TestHomeServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.options(server.base_url + "/_matrix/client/v3/sync",
                             headers={"Origin": "https://app.element.io",
                                      "Access-Control-Request-Method": "GET"}) as r:
            assert r.status in (200, 204)
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        async with s.get(server.base_url + "/_matrix/client/versions") as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"


@SQLITE_ONLY
async def test_missing_and_unknown_tokens(server: TestHomeServer) -> None:
    c = server.client()
    status, body = await c.request("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    c.token = "not-a-token"
    status, body = await c.request("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    await c.close()


async def test_request_body_limit(make_server: Any) -> None:
    srv = await make_server("sqlite", max_request_body_size=4096)
    c = srv.client()
    await c.register("alice")
    room = await c.create_room()
    status, body = await c.request("PUT", f"/rooms/{room}/send/m.room.message/big", raw=b'{"body":"' + b"x" * 9000 + b'"}')
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
    status, page = await c.request("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"})
    assert status == 200 and not [e for e in page["chunk"] if e["type"] == "m.room.message"]
    await c.close()


@SQLITE_ONLY
async def test_crash_in_one_request_is_a_500_and_server_lives(server: TestHomeServer, monkeypatch: Any) -> None:
    c = server.client()
    await c.register("bob")

    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(server.hs.user_store, "get_devices", boom)
    status, body = await c.request("GET", "/devices")
    assert (status, body["errcode"]) == (500, "M_UNKNOWN")
    monkeypatch.undo()
    status, body = await c.request("GET", "/account/whoami")
    assert status == 200 and body["user_id"] == c.user_id
    await c.close()


@SQLITE_ONLY
async def test_metrics_count_requests_and_stream_positions(server: TestHomeServer) -> None:
    c = server.client()
    await c.register("carol")
    room = await c.create_room()
    await c.send_message(room, "hello")
    async with aiohttp.ClientSession() as s, s.get(server.base_url + "/_synapse/metrics") as r:
        text = await r.text()
    assert 'hs_http_requests_total{code="200",endpoint="/_matrix/client/v3/register",method="POST"}' in text
    assert "hs_http_request_seconds_bucket" in text
    assert 'hs_stream_position{stream="events",writer="main"}' in text
    assert "hs_db_transaction_seconds" in text
    await c.close()
