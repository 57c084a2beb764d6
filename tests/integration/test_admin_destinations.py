"""Synapse's federation destinations admin API over real HTTP, on both engines: listing (orders,
directions, the substring filter, pages with next_token), one destination, its rooms, resetting its
backoff, and who may ask (admins only) with what (400 for bad parameters).

Destinations are the federation senders' `federation_destinations` rows, set up here with SQL so each
test controls every column; the senders are off (`send_federation: false`), so nothing else writes
them meanwhile.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.harness import Client, TestHomeServer, admin, ok, user

ADMIN = "/_synapse/admin/v1/federation/destinations"
ENTRY_KEYS = {"destination", "retry_last_ts", "retry_interval", "failure_ts", "last_successful_stream_ordering"}

# (destination, last_successful_stream_ordering, retry_last_ts, retry_interval, failure_ts)
ROWS = [
    ("a.example", 10, 0, 0, None),
    ("b.example", None, 5000, 2000, 4000),
    ("c.other.org", 30, 1000, 8000, 900),
    ("d.example", 20, 0, 0, None),
]


@pytest.fixture
async def server(make_server: Any, engine: str) -> TestHomeServer:
    server: TestHomeServer = await make_server(engine, send_federation=False)
    return server


async def add_destination(server: TestHomeServer, destination: str, last_successful: int | None = None,
                          retry_last_ts: int = 0, retry_interval: int = 0, failure_ts: int | None = None) -> None:
    await server.hs.db.execute(
        "INSERT INTO federation_destinations (destination, last_successful_stream_ordering, retry_last_ts,"
        " retry_interval, failure_ts) VALUES ($1, $2, $3, $4, $5)",
        destination, last_successful, retry_last_ts, retry_interval, failure_ts)


async def listed(client: Client, **params: str) -> list[str]:
    return [d["destination"] for d in (await ok(client, "GET", ADMIN, **params))["destinations"]]


async def test_listing_orders_filters_and_pages(server: TestHomeServer) -> None:
    for row in ROWS:
        await add_destination(server, *row)
    mod = await admin(server)

    page = await ok(mod, "GET", ADMIN)
    assert page["total"] == 4 and "next_token" not in page
    assert [d["destination"] for d in page["destinations"]] == ["a.example", "b.example", "c.other.org", "d.example"]
    assert all(set(d) == ENTRY_KEYS for d in page["destinations"]), page
    assert page["destinations"][1] == {"destination": "b.example", "retry_last_ts": 5000, "retry_interval": 2000,
                                       "failure_ts": 4000, "last_successful_stream_ordering": None}
    assert page["destinations"][0] == {"destination": "a.example", "retry_last_ts": 0, "retry_interval": 0,
                                       "failure_ts": None, "last_successful_stream_ordering": 10}
    assert await listed(mod, dir="b") == ["d.example", "c.other.org", "b.example", "a.example"]

    # Ties go by name, ascending in either direction; NULLs sort as the largest values on both engines.
    assert await listed(mod, order_by="retry_last_ts") == ["a.example", "d.example", "c.other.org", "b.example"]
    assert await listed(mod, order_by="retry_last_ts", dir="b") == [
        "b.example", "c.other.org", "a.example", "d.example"]
    assert await listed(mod, order_by="retry_interval") == ["a.example", "d.example", "b.example", "c.other.org"]
    assert await listed(mod, order_by="failure_ts") == ["c.other.org", "b.example", "a.example", "d.example"]
    assert await listed(mod, order_by="failure_ts", dir="b") == [
        "a.example", "d.example", "b.example", "c.other.org"]
    assert await listed(mod, order_by="last_successful_stream_ordering") == [
        "a.example", "d.example", "c.other.org", "b.example"]
    assert await listed(mod, order_by="destination", dir="f") == [
        "a.example", "b.example", "c.other.org", "d.example"]

    # Pages: next_token is the next offset, as a string, while more remain.
    first = await ok(mod, "GET", ADMIN, limit="3")
    assert [d["destination"] for d in first["destinations"]] == ["a.example", "b.example", "c.other.org"]
    assert (first["total"], first["next_token"]) == (4, "3")
    last = await ok(mod, "GET", ADMIN, limit="3", **{"from": first["next_token"]})
    assert [d["destination"] for d in last["destinations"]] == ["d.example"] and "next_token" not in last
    middle = await ok(mod, "GET", ADMIN, limit="2", **{"from": "1"})
    assert [d["destination"] for d in middle["destinations"]] == ["b.example", "c.other.org"]
    assert middle["next_token"] == "3"
    exact = await ok(mod, "GET", ADMIN, limit="4")
    assert len(exact["destinations"]) == 4 and "next_token" not in exact
    beyond = await ok(mod, "GET", ADMIN, **{"from": "10"})
    assert (beyond["destinations"], beyond["total"]) == ([], 4) and "next_token" not in beyond
    # Synapse's arithmetic, kept: a zero limit returns nothing and points at the same offset.
    empty = await ok(mod, "GET", ADMIN, limit="0")
    assert (empty["destinations"], empty["total"], empty["next_token"]) == ([], 4, "0")
    # A limit beyond 64 bits is clamped, not refused.
    assert len((await ok(mod, "GET", ADMIN, limit="18446744073709551616"))["destinations"]) == 4

    # The filter: a case-insensitive substring; its wildcards are plain characters.
    assert await listed(mod, destination="example") == ["a.example", "b.example", "d.example"]
    assert await listed(mod, destination="EXAMPLE", dir="b") == ["d.example", "b.example", "a.example"]
    assert await listed(mod, destination="other") == ["c.other.org"]
    filtered = await ok(mod, "GET", ADMIN, destination="example", limit="2")
    assert (filtered["total"], filtered["next_token"]) == (3, "2")
    for pattern in ("a_example", "%", "b%e"):
        assert (await ok(mod, "GET", ADMIN, destination=pattern))["total"] == 0, pattern
    assert await listed(mod, destination="") == ["a.example", "b.example", "c.other.org", "d.example"]


async def test_one_destination(server: TestHomeServer) -> None:
    for row in ROWS:
        await add_destination(server, *row)
    await add_destination(server, "e.example:8448", 7)
    mod = await admin(server)
    assert await ok(mod, "GET", f"{ADMIN}/b.example") == {
        "destination": "b.example", "retry_last_ts": 5000, "retry_interval": 2000, "failure_ts": 4000,
        "last_successful_stream_ordering": None}
    assert await ok(mod, "GET", f"{ADMIN}/a.example") == {
        "destination": "a.example", "retry_last_ts": 0, "retry_interval": 0, "failure_ts": None,
        "last_successful_stream_ordering": 10}
    for path in (f"{ADMIN}/e.example:8448", f"{ADMIN}/{quote('e.example:8448', safe='')}"):
        assert (await ok(mod, "GET", path))["destination"] == "e.example:8448"
    for unknown in ("nowhere.example", "A.EXAMPLE", "a.exampl"):
        status, body = await mod.request("GET", f"{ADMIN}/{unknown}")
        assert (status, body["errcode"], body["error"]) == (404, "M_NOT_FOUND", "Unknown destination"), unknown


async def test_one_destination_without_a_backoff_shows_no_failure(server: TestHomeServer) -> None:
    """As Synapse: the backoff columns are shown only while there is a retry_last_ts."""
    await add_destination(server, "half.example", 3, retry_last_ts=0, retry_interval=500, failure_ts=100)
    mod = await admin(server)
    assert await ok(mod, "GET", f"{ADMIN}/half.example") == {
        "destination": "half.example", "retry_last_ts": 0, "retry_interval": 0, "failure_ts": None,
        "last_successful_stream_ordering": 3}
    # The list shows the columns as they are, as Synapse's does.
    (entry,) = (await ok(mod, "GET", ADMIN))["destinations"]
    assert (entry["retry_interval"], entry["failure_ts"]) == (500, 100)


async def _join_remote_member(server: TestHomeServer, room_id: str, user_id: str, membership: str = "join") -> None:
    """A member of another server in the room's current state (as a remote join would leave it)."""
    await server.hs.db.execute(
        "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership)"
        " VALUES ($1, 'm.room.member', $2, $3, $4)", room_id, user_id, f"$fake-{user_id}-{room_id}", membership)


async def _latest(server: TestHomeServer, room_id: str) -> int:
    return int(await server.hs.db.fetchval("SELECT MAX(stream_ordering) FROM events WHERE room_id = $1", room_id))


async def test_rooms_shared_with_a_destination(server: TestHomeServer) -> None:
    mod = await admin(server)
    r1, r2, r3, r4 = [await mod.create_room(preset="public_chat") for _ in range(4)]
    await add_destination(server, "remote.example", 1)
    await add_destination(server, "lonely.example")
    await add_destination(server, "re_mote.example")
    await _join_remote_member(server, r1, "@bob:remote.example")
    await _join_remote_member(server, r1, "@carol:remote.example")  # one room, however many members
    await _join_remote_member(server, r2, "@bob:remote.example")
    await _join_remote_member(server, r3, "@dan:remote.example", "leave")  # left: not shared
    await _join_remote_member(server, r3, "@eve:other-remote.example")  # another server's name ends alike
    await _join_remote_member(server, r4, "@fay:reXmote.example")  # for re_mote.example, were '_' a wildcard
    await mod.send_message(r2, "latest")

    shared = sorted([r1, r2])
    page = await ok(mod, "GET", f"{ADMIN}/remote.example/rooms")
    assert page == {"rooms": [{"room_id": r, "stream_ordering": await _latest(server, r)} for r in shared],
                    "total": 2}
    assert all(isinstance(r["stream_ordering"], int) for r in page["rooms"])
    assert (await ok(mod, "GET", f"{ADMIN}/remote.example/rooms", dir="b"))["rooms"] == list(
        reversed(page["rooms"]))
    first = await ok(mod, "GET", f"{ADMIN}/remote.example/rooms", limit="1")
    assert (first["rooms"], first["total"], first["next_token"]) == (page["rooms"][:1], 2, "1")
    second = await ok(mod, "GET", f"{ADMIN}/remote.example/rooms", limit="1", **{"from": "1"})
    assert second["rooms"] == page["rooms"][1:] and "next_token" not in second
    # A new event moves the room's stream ordering on.
    before = await _latest(server, r1)
    await mod.send_message(r1, "newer")
    rooms = {r["room_id"]: r["stream_ordering"] for r in
             (await ok(mod, "GET", f"{ADMIN}/remote.example/rooms"))["rooms"]}
    assert rooms[r1] > before and rooms[r1] == await _latest(server, r1)

    for destination in ("lonely.example", "re_mote.example"):
        assert await ok(mod, "GET", f"{ADMIN}/{destination}/rooms") == {"rooms": [], "total": 0}
    status, body = await mod.request("GET", f"{ADMIN}/other-remote.example/rooms")
    assert (status, body["errcode"], body["error"]) == (404, "M_NOT_FOUND", "Unknown destination")


async def test_reset_connection_clears_the_backoff_and_wakes_the_sender(server: TestHomeServer) -> None:
    for row in ROWS:
        await add_destination(server, *row)
    await add_destination(server, "interval-only.example", retry_interval=500)
    mod = await admin(server)
    woken: list[Any] = []
    server.hs.replication.subscribe("federation", lambda msg: woken.append(msg) if msg.get("kind") == "wake"
                                    else None)

    assert await ok(mod, "POST", f"{ADMIN}/b.example/reset_connection", {}) == {}
    stored = await server.hs.db.fetchrow(
        "SELECT retry_last_ts, retry_interval, failure_ts, last_successful_stream_ordering"
        " FROM federation_destinations WHERE destination = 'b.example'")
    assert stored is not None
    assert (stored["retry_last_ts"], stored["retry_interval"], stored["failure_ts"],
            stored["last_successful_stream_ordering"]) == (0, 0, None, None)
    assert [m["destinations"] for m in woken] == [["b.example"]]
    assert (await ok(mod, "GET", f"{ADMIN}/b.example"))["retry_last_ts"] == 0
    # No body at all is fine too (Synapse reads none).
    assert await ok(mod, "POST", f"{ADMIN}/c.other.org/reset_connection") == {}

    # Not backing off (no retry_last_ts, whatever the interval): Synapse's 400, nothing changed.
    for destination in ("b.example", "a.example", "interval-only.example"):
        status, body = await mod.request("POST", f"{ADMIN}/{destination}/reset_connection", {})
        assert (status, body["errcode"], body["error"]) == (
            400, "M_UNKNOWN", "The retry timing does not need to be reset for this destination."), destination
    interval = await server.hs.db.fetchval(
        "SELECT retry_interval FROM federation_destinations WHERE destination = 'interval-only.example'")
    assert interval == 500
    status, body = await mod.request("POST", f"{ADMIN}/nowhere.example/reset_connection", {})
    assert (status, body["errcode"], body["error"]) == (404, "M_NOT_FOUND", "Unknown destination")
    assert len(woken) == 2


async def test_admins_only(server: TestHomeServer) -> None:
    for row in ROWS:
        await add_destination(server, *row)
    calls = [("GET", ADMIN), ("GET", f"{ADMIN}/b.example"), ("GET", f"{ADMIN}/b.example/rooms"),
             ("POST", f"{ADMIN}/b.example/reset_connection"), ("GET", f"{ADMIN}/nowhere.example"),
             ("POST", f"{ADMIN}/nowhere.example/reset_connection")]
    bob = await user(server, "bob")
    anonymous = server.client()
    try:
        for method, path in calls:
            status, body = await bob.request(method, path, {} if method == "POST" else None)
            assert (status, body["errcode"], body["error"]) == (403, "M_FORBIDDEN", "You are not a server admin"), path
            status, body = await anonymous.request(method, path, {} if method == "POST" else None)
            assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN"), path
            bad = server.client()
            bad.token = "not-a-token"
            status, body = await bad.request(method, path, {} if method == "POST" else None)
            await bad.close()
            assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN"), path
    finally:
        await anonymous.close()
    # Nothing was reset by the refused calls.
    assert await server.hs.db.fetchval(
        "SELECT retry_last_ts FROM federation_destinations WHERE destination = 'b.example'") == 5000


@pytest.mark.parametrize("path", [ADMIN, f"{ADMIN}/b.example/rooms"])
async def test_bad_parameters(server: TestHomeServer, path: str) -> None:
    for row in ROWS:
        await add_destination(server, *row)
    mod = await admin(server)
    bad: list[dict[str, str]] = [{"from": "-1"}, {"limit": "-1"}, {"from": "abc"}, {"limit": "1.5"},
                                 {"from": "²"}, {"dir": "x"}, {"dir": "F"}, {"from": "18446744073709551616"}]
    if path == ADMIN:
        bad += [{"order_by": "nope"}, {"order_by": "lease_owner"}, {"order_by": "DESTINATION"},
                {"order_by": "destination; DROP TABLE users"}]
    for params in bad:
        status, body = await mod.request("GET", path, params=params)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), (params, body)
    assert (await ok(mod, "GET", path, dir="b", limit="1", **{"from": "0"})) is not None
