"""hs's federation destinations admin API against a real Synapse's, call for call.

The same destination rows are written into both servers' databases (Synapse's `destinations`, hs's
`federation_destinations`), then the same calls go to both: lists in every order and direction, pages,
one destination, its rooms, reset_connection, and the errors (unknown destination, bad parameters,
non-admins). The answers must be equal, bar the wording of parameter errors. A second test federates hs
with Synapse for real and compares the shape of what each says about the other, its shared room
included (Synapse's from its destination_rooms table, hs's from the room's current members).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.federation.client import TlsClient, unique, user
from tests.federation.hs_server import FederatingHs
from tests.federation.synapse import SynapseServer
from tests.federation.test_rooms import text, wait_for_event, wait_joined

ADMIN = "/_synapse/admin/v1/federation/destinations"
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "destination": (str,), "retry_last_ts": (int,), "retry_interval": (int,), "failure_ts": (int, type(None)),
    "last_successful_stream_ordering": (int, type(None))}


@pytest.fixture(params=["sqlite", "postgres"])
async def local(request: pytest.FixtureRequest, make_fed_hs: Any) -> FederatingHs:
    server: FederatingHs = await make_fed_hs(request.param)
    return server


@pytest.fixture
async def synapse_db(synapse: SynapseServer) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(synapse.dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def admin_client(server: Any) -> TlsClient:
    user_id, token = await server.register_user(unique("admin"), admin=True)
    client: TlsClient = server.client(token)
    client.user_id = user_id
    return client


async def both(clients: tuple[TlsClient, TlsClient], method: str, path: str,
               params: dict[str, str] | None = None) -> tuple[tuple[int, Any], tuple[int, Any]]:
    """The same call to hs and to Synapse: ((status, body) of hs, (status, body) of Synapse)."""
    body: dict[str, Any] | None = {} if method == "POST" else None
    ours = await clients[0].request(method, path, body, params=params)
    theirs = await clients[1].request(method, path, body, params=params)
    return ours, theirs


async def test_same_answers_as_synapse_for_the_same_destinations(local: FederatingHs, synapse: SynapseServer,
                                                                 synapse_db: asyncpg.Connection) -> None:
    prefix = unique("dest")  # the session's Synapse is shared: these rows are this test's alone
    rows = [(f"{prefix}-a.invalid", 10, 0, 0, None), (f"{prefix}-b.invalid", None, 5000, 2000, 4000),
            (f"{prefix}-c.invalid", 30, 1000, 8000, 900), (f"{prefix}-d.invalid", 20, 0, 0, None),
            (f"{prefix}-e.invalid", 5, 0, 700, 300)]
    for destination, last_successful, retry_last_ts, retry_interval, failure_ts in rows:
        await synapse_db.execute(
            "INSERT INTO destinations (destination, last_successful_stream_ordering, retry_last_ts, retry_interval,"
            " failure_ts) VALUES ($1, $2, $3, $4, $5)",
            destination, last_successful, retry_last_ts, retry_interval, failure_ts)
        await local.hs.db.execute(
            "INSERT INTO federation_destinations (destination, last_successful_stream_ordering, retry_last_ts,"
            " retry_interval, failure_ts) VALUES ($1, $2, $3, $4, $5)",
            destination, last_successful, retry_last_ts, retry_interval, failure_ts)
    clients = (await admin_client(local), await admin_client(synapse))

    async def same(method: str, path: str, **params: str) -> Any:
        ours, theirs = await both(clients, method, path, params or None)
        assert ours == theirs, (method, path, params, ours, theirs)
        return ours[1]

    listed = await same("GET", ADMIN, destination=prefix)
    assert listed["total"] == 5 and [d["destination"] for d in listed["destinations"]] == [r[0] for r in rows]
    for order_by in ("destination", "retry_last_ts", "retry_interval", "failure_ts",
                     "last_successful_stream_ordering"):
        for direction in ("f", "b"):
            await same("GET", ADMIN, destination=prefix, order_by=order_by, dir=direction)
    await same("GET", ADMIN, destination=prefix.upper())
    for page in ({"limit": "2"}, {"limit": "2", "from": "2"}, {"limit": "2", "from": "4"}, {"limit": "5"},
                 {"from": "9"}, {"limit": "0"}, {"limit": "3", "from": "1", "dir": "b"}):
        body = await same("GET", ADMIN, destination=prefix, **page)
        assert isinstance(body.get("next_token", ""), str), body

    for destination, *_ in rows:
        await same("GET", f"{ADMIN}/{destination}")
        await same("GET", f"{ADMIN}/{destination}/rooms")
        await same("GET", f"{ADMIN}/{destination}/rooms", limit="1", dir="b")

    # reset_connection: {} while backing off, and the backoff is gone on both.
    b, c = rows[1][0], rows[2][0]
    assert await same("POST", f"{ADMIN}/{b}/reset_connection") == {}
    assert (await same("GET", f"{ADMIN}/{b}"))["retry_last_ts"] == 0
    synapse_row = await synapse_db.fetchrow(
        "SELECT retry_last_ts, retry_interval, failure_ts FROM destinations WHERE destination = $1", b)
    hs_row = await local.hs.db.fetchrow(
        "SELECT retry_last_ts, retry_interval, failure_ts FROM federation_destinations WHERE destination = $1", b)
    assert synapse_row is not None and hs_row is not None
    assert tuple(synapse_row) == (hs_row["retry_last_ts"], hs_row["retry_interval"], hs_row["failure_ts"]) == (
        0, 0, None)
    assert await same("POST", f"{ADMIN}/{c}/reset_connection") == {}
    await same("GET", ADMIN, destination=prefix, order_by="failure_ts")
    # ... and Synapse's refusal, word for word, when there is no retry_last_ts (e has an interval).
    for destination in (b, rows[0][0], rows[4][0]):
        refusal = await same("POST", f"{ADMIN}/{destination}/reset_connection")
        assert refusal["errcode"] == "M_UNKNOWN", refusal

    # Unknown destinations: the same 404 everywhere.
    for method, path in (("GET", f"{ADMIN}/{prefix}-nowhere.invalid"),
                         ("GET", f"{ADMIN}/{prefix}-nowhere.invalid/rooms"),
                         ("POST", f"{ADMIN}/{prefix}-nowhere.invalid/reset_connection")):
        assert (await same(method, path)) == {"errcode": "M_NOT_FOUND", "error": "Unknown destination"}

    # Bad parameters: the same status and errcode (the messages are worded differently).
    for path, params in [(ADMIN, {"order_by": "nope"}), (ADMIN, {"order_by": "DESTINATION"}),
                         (ADMIN, {"dir": "x"}), (ADMIN, {"from": "-1"}), (ADMIN, {"limit": "-1"}),
                         (ADMIN, {"from": "abc"}), (f"{ADMIN}/{b}/rooms", {"dir": "x"}),
                         (f"{ADMIN}/{b}/rooms", {"from": "-1"}), (f"{ADMIN}/{b}/rooms", {"limit": "x"})]:
        ours, theirs = await both(clients, "GET", path, params)
        assert (ours[0], ours[1]["errcode"]) == (theirs[0], theirs[1]["errcode"]) == (400, "M_INVALID_PARAM"), (
            path, params, ours, theirs)

    # Who may ask: a non-admin gets the same 403, no token the same 401.
    plain = (await user(local, unique("plain")), await user(synapse, unique("plain")))
    anonymous = (local.client(), synapse.client())
    for method, path in (("GET", ADMIN), ("GET", f"{ADMIN}/{b}"), ("GET", f"{ADMIN}/{b}/rooms"),
                         ("POST", f"{ADMIN}/{c}/reset_connection")):
        ours, theirs = await both(plain, method, path)
        assert ours == theirs == (403, {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"}), (
            path, ours, theirs)
        ours, theirs = await both(anonymous, method, path)
        assert (ours[0], ours[1]["errcode"]) == (theirs[0], theirs[1]["errcode"]) == (401, "M_MISSING_TOKEN"), (
            path, ours, theirs)


async def _wait_listed(client: TlsClient, destination: str, timeout: float = 30.0) -> dict[str, Any]:
    """The destination's entry in the server's list, once it has one."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = await client.request("GET", ADMIN, params={"destination": destination})
        assert status == 200, body
        for entry in body["destinations"]:
            if entry["destination"] == destination:
                return dict(entry)
        await asyncio.sleep(0.3)
    raise AssertionError(f"{destination} never listed; last: {body}")


async def _wait_room(client: TlsClient, destination: str, room_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = await client.request("GET", f"{ADMIN}/{destination}/rooms", params={"limit": "1000"})
        assert status == 200, body
        if any(r["room_id"] == room_id for r in body["rooms"]):
            return dict(body)
        await asyncio.sleep(0.3)
    raise AssertionError(f"{room_id} never among {destination}'s rooms; last: {body}")


def _check_entry(entry: dict[str, Any]) -> None:
    assert set(entry) == set(ENTRY_TYPES), entry
    for key, types in ENTRY_TYPES.items():
        assert isinstance(entry[key], types), (key, entry)


async def test_what_each_says_about_the_other_after_federating(local: FederatingHs, synapse: SynapseServer) -> None:
    """Real federation: each server's admin API describes the other in the same shape, and lists the
    room they share."""
    alice = await user(local, unique("alice"))
    bob = await user(synapse, unique("bob"))
    room_id = await bob.create_room(preset="public_chat", name="destinations")
    status, body = await alice.request("POST", f"/join/{room_id}", {}, params={"server_name": synapse.server_name})
    assert status == 200, (body, local.log_tail(30))
    await wait_joined(bob, room_id, str(alice.user_id))
    status, sent = await bob.request("PUT", f"/rooms/{room_id}/send/m.room.message/d1",
                                     {"msgtype": "m.text", "body": "to hs"})
    assert status == 200, sent
    await wait_for_event(alice, room_id, text("to hs"))
    # hs's senders record the destinations they send to; the row is made here in case none has yet.
    owed_from = int(await local.hs.db.fetchval("SELECT COALESCE(MAX(stream_ordering), 0) FROM events"))
    await local.hs.federation_outbox.store.add_destinations({synapse.server_name: owed_from})
    clients = (await admin_client(local), await admin_client(synapse))

    ours = await _wait_listed(clients[0], synapse.server_name)
    theirs = await _wait_listed(clients[1], local.server_name)
    _check_entry(ours)
    _check_entry(theirs)
    for (status, listed), server in zip(await both(clients, "GET", ADMIN, {"limit": "0"}), ("hs", "synapse"),
                                        strict=True):
        assert status == 200 and set(listed) == {"destinations", "total", "next_token"}, (server, listed)
        assert listed["destinations"] == [] and isinstance(listed["total"], int) and listed["total"] >= 1
        assert listed["next_token"] == "0"

    status, one = await clients[0].request("GET", f"{ADMIN}/{synapse.server_name}")
    assert status == 200
    _check_entry(one)
    status, one = await clients[1].request("GET", f"{ADMIN}/{local.server_name}")
    assert status == 200
    _check_entry(one)

    for rooms, server in ((await _wait_room(clients[0], synapse.server_name, room_id), "hs"),
                          (await _wait_room(clients[1], local.server_name, room_id), "synapse")):
        assert set(rooms) == {"rooms", "total"} and rooms["total"] == len(rooms["rooms"]) >= 1, (server, rooms)
        for entry in rooms["rooms"]:
            assert set(entry) == {"room_id", "stream_ordering"}, (server, entry)
            assert isinstance(entry["room_id"], str) and isinstance(entry["stream_ordering"], int), (server, entry)
