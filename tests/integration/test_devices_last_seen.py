"""GET /devices and /devices/{deviceId}: display name, address and time are always there (null when
unknown, as Synapse sends them and matrix-nio requires), and each
device's last sighting (address, time, user agent) is recorded from authenticated requests, with
X-Forwarded-For trusted only on listeners configured with `x_forwarded`."""

from __future__ import annotations

from typing import Any

from tests.harness import ok, user


async def test_devices_show_where_they_were_seen(server: Any) -> None:
    alice = await user(server, "alice")
    # A device that never made a request after registering has no address yet, and no display name.
    await server.hs.db.execute("UPDATE devices SET last_seen_ip = NULL, last_seen_ts = NULL WHERE device_id = $1",
                               alice.device_id)
    server.hs.auth._last_seen.clear()  # as after a restart: the next request is a new sighting
    row = await server.hs.user_store.get_device(alice.user_id, alice.device_id)
    assert row["last_seen_ip"] is None and row["display_name"] is None
    device = await ok(alice, "GET", f"/devices/{alice.device_id}")
    # This request was itself a sighting: address and time are there; no display name was given.
    assert device == {"device_id": alice.device_id, "display_name": None, "last_seen_ip": "127.0.0.1",
                      "last_seen_ts": device["last_seen_ts"]}
    assert isinstance(device["last_seen_ts"], int)
    devices = (await ok(alice, "GET", "/devices"))["devices"]
    assert devices == [device]
    await ok(alice, "PUT", f"/devices/{alice.device_id}", {"display_name": "laptop"})
    assert (await ok(alice, "GET", f"/devices/{alice.device_id}"))["display_name"] == "laptop"
    whois = await ok(alice, "GET", f"/admin/whois/{alice.user_id}")
    connection = whois["devices"][alice.device_id]["sessions"][0]["connections"][0]
    assert connection["ip"] == "127.0.0.1" and connection["user_agent"].startswith("Python")


async def test_forwarded_addresses_are_trusted_only_on_x_forwarded_listeners(server: Any) -> None:
    alice = await user(server, "alice")
    forwarded = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}

    async def seen_ip() -> str:
        await server.hs.auth.sightings_stored()
        row = await server.hs.user_store.get_device(alice.user_id, alice.device_id)
        return str(row["last_seen_ip"])

    await _get(alice, "/account/whoami", forwarded)
    assert await seen_ip() == "127.0.0.1"  # a client may not claim an address
    server.config.listeners[0].x_forwarded = True
    await _get(alice, "/account/whoami", forwarded)
    assert await seen_ip() == "203.0.113.7"  # behind a proxy: its first hop is the client


async def test_a_device_seen_again_from_the_same_place_is_stored_every_two_minutes(server: Any) -> None:
    alice = await user(server, "alice")
    await ok(alice, "GET", "/account/whoami")
    await server.hs.auth.sightings_stored()
    await server.hs.db.execute("UPDATE devices SET last_seen_ts = 5 WHERE device_id = $1", alice.device_id)
    await ok(alice, "GET", "/account/whoami")
    await server.hs.auth.sightings_stored()
    row = await server.hs.user_store.get_device(alice.user_id, alice.device_id)
    assert row["last_seen_ts"] == 5  # same address and agent within the granularity: no write
    await _get(alice, "/account/whoami", {"User-Agent": "another client"})
    await server.hs.auth.sightings_stored()
    sessions = await server.hs.user_store.get_device_sessions(alice.user_id)
    assert sessions[0]["last_seen_user_agent"] == "another client" and sessions[0]["last_seen_ts"] > 5


async def _get(client: Any, path: str, headers: dict[str, str]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(
            f"{client.base_url}/_matrix/client/v3{path}",
            headers={"Authorization": f"Bearer {client.token}", **headers}) as resp:
        assert resp.status == 200, await resp.text()


async def test_requests_a_worker_forwards_are_not_sightings(server: Any) -> None:
    """A stream writer answering a worker's forwarded request would record the worker's address."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from hs.api.base import HS_KEY, get_requester

    alice = await user(server, "alice")
    await ok(alice, "GET", "/account/whoami")
    await server.hs.auth.sightings_stored()
    server.hs.auth._last_seen.clear()
    await server.hs.db.execute("UPDATE devices SET last_seen_ts = 5 WHERE device_id = $1", alice.device_id)
    headers = {"Authorization": f"Bearer {alice.token}"}
    app = web.Application()
    app[HS_KEY] = server.hs
    forwarded = make_mocked_request("PUT", "/_hs/replication/client/_matrix/client/v3/rooms/x/typing/y",
                                    headers=headers, app=app)
    assert (await get_requester(forwarded)).device_id == alice.device_id
    await server.hs.auth.sightings_stored()
    assert (await server.hs.user_store.get_device(alice.user_id, alice.device_id))["last_seen_ts"] == 5
