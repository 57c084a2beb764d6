"""Presence over real HTTP, on SQLite and PostgreSQL: PUT/GET /presence/{userId}/status, set_presence on
/sync, m.presence in /sync, the idle and offline timeouts, long-poll wake-ups and use_presence: false."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.harness import OPEN_CLIENTS, Client, TestHomeServer, user

Json = dict[str, Any]



def status_path(user_id: str | None) -> str:
    assert user_id is not None
    return f"/presence/{quote(user_id)}/status"


async def put_status(client: Client, presence: str, status_msg: str | None = None) -> None:
    body: Json = {"presence": presence}
    if status_msg is not None:
        body["status_msg"] = status_msg
    status, data = await client.request("PUT", status_path(client.user_id), body)
    assert status == 200, data
    assert data == {}


async def get_status(client: Client, user_id: str | None) -> Json:
    status, data = await client.request("GET", status_path(user_id))
    assert status == 200, data
    return data  # type: ignore[no-any-return]


def presence_of(res: Json, user_id: str | None) -> Json | None:
    """The content of the user's m.presence event in a sync response, or None."""
    found = [e for e in res["presence"]["events"] if e["sender"] == user_id]
    assert len(found) <= 1, found
    if not found:
        return None
    assert found[0]["type"] == "m.presence"
    return found[0]["content"]  # type: ignore[no-any-return]


async def room_of(*members: Client) -> str:
    room = await members[0].create_room(preset="public_chat")
    for m in members[1:]:
        status, data = await m.request("POST", f"/join/{room}", {})
        assert status == 200, data
    return room


async def test_status_is_seen_by_room_mates_only(server: TestHomeServer) -> None:
    alice, bob, carol = [await user(server, n) for n in ("alice", "bob", "carol")]
    await room_of(alice, bob)
    await carol.create_room()
    bob_since = (await bob.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]

    await put_status(alice, "online", "writing tests")

    inc = await bob.sync(bob_since)
    content = presence_of(inc, alice.user_id)
    assert content is not None
    assert content["presence"] == "online"
    assert content["status_msg"] == "writing tests"
    assert content["currently_active"] is True
    assert 0 <= content["last_active_ago"] < 10000
    initial = await bob.sync()
    in_initial = presence_of(initial, alice.user_id)
    assert in_initial is not None
    assert {k: v for k, v in in_initial.items() if k != "last_active_ago"} == {
        "presence": "online", "status_msg": "writing tests", "currently_active": True}
    # The syncer's own presence is included too.
    own = presence_of(initial, bob.user_id)
    assert own is not None and own["presence"] == "online"

    assert presence_of(await carol.sync(carol_since), alice.user_id) is None
    carol_initial = await carol.sync()
    assert presence_of(carol_initial, alice.user_id) is None
    assert presence_of(carol_initial, bob.user_id) is None

    # A later incremental sync with nothing new carries no presence.
    again = await bob.sync(inc["next_batch"])
    assert presence_of(again, alice.user_id) is None


async def test_get_status(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    # Nobody has a presence yet: offline, with no last_active_ago.
    assert await get_status(alice, alice.user_id) == {"presence": "offline"}
    await room_of(alice, bob)
    await put_status(alice, "unavailable", "lunch")
    got = await get_status(bob, alice.user_id)
    assert got["presence"] == "unavailable"
    assert got["status_msg"] == "lunch"
    assert "currently_active" not in got
    # Leaving out status_msg clears it.
    await put_status(alice, "online")
    got = await get_status(bob, alice.user_id)
    assert got["presence"] == "online" and got["currently_active"] is True
    assert "status_msg" not in got
    assert 0 <= got["last_active_ago"] < 10000


async def test_set_presence_on_sync(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await room_of(alice, bob)
    since = (await bob.sync(set_presence="offline"))["next_batch"]

    # offline: the sync does not bring alice online.
    await alice.sync(set_presence="offline")
    assert (await get_status(bob, alice.user_id))["presence"] == "offline"
    res = await bob.sync(since, set_presence="offline")
    assert presence_of(res, alice.user_id) is None
    since = res["next_batch"]

    await alice.sync(set_presence="unavailable")
    res = await bob.sync(since, set_presence="offline")
    content = presence_of(res, alice.user_id)
    assert content is not None and content["presence"] == "unavailable"
    assert (await get_status(bob, alice.user_id))["presence"] == "unavailable"

    await alice.sync()  # online is the default
    res = await bob.sync(res["next_batch"], set_presence="offline")
    content = presence_of(res, alice.user_id)
    assert content is not None and content["presence"] == "online" and content["currently_active"] is True
    # bob never synced with a presence of his own, so he has none.
    assert (await get_status(alice, bob.user_id)) == {"presence": "offline"}


async def test_timeouts_online_unavailable_offline(server: TestHomeServer) -> None:
    presence = server.hs.presence
    presence.set_timeouts(idle_ms=1200, sync_ms=2400, active_granularity_ms=400, check_interval_s=0.05)
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await room_of(alice, bob)
    since = (await bob.sync(set_presence="offline"))["next_batch"]
    await alice.sync()  # online, active now; then silence

    seen: list[tuple[str, bool | None]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not seen or seen[-1][0] != "offline"):
        res = await bob.sync(since, timeout=3000, set_presence="offline")
        since = res["next_batch"]
        content = presence_of(res, alice.user_id)
        if content is not None:
            seen.append((content["presence"], content.get("currently_active")))
    assert seen == [("online", True), ("online", False), ("unavailable", None), ("offline", None)]
    assert (await get_status(bob, alice.user_id))["presence"] == "offline"

    # Syncing again brings her back online.
    await alice.sync()
    res = await bob.sync(since, set_presence="offline")
    assert presence_of(res, alice.user_id)["presence"] == "online"  # type: ignore[index]


async def test_sending_counts_as_activity(server: TestHomeServer) -> None:
    """As Synapse: sending an event (or a read receipt) bumps the last active time and brings an
    unavailable user back online; an offline user stays offline until they sync."""
    server.hs.presence.set_timeouts(idle_ms=300, sync_ms=60000, active_granularity_ms=200, check_interval_s=0.05)
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await room_of(alice, bob)
    await alice.sync()
    deadline = time.monotonic() + 5
    while (await get_status(bob, alice.user_id))["presence"] != "unavailable":
        assert time.monotonic() < deadline, "never went idle"
        await asyncio.sleep(0.05)

    await alice.send_message(room, "back")
    deadline = time.monotonic() + 5
    while (status := await get_status(bob, alice.user_id))["presence"] != "online":
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.02)
    assert status["currently_active"] is True and status["last_active_ago"] < 1000

    carol = await user(server, "carol")  # registered, never synced: offline
    status, data = await carol.request("POST", f"/join/{room}", {})
    assert status == 200, data
    await carol.send_message(room, "hi")
    await asyncio.sleep(0.2)
    assert (await get_status(bob, carol.user_id))["presence"] == "offline"


async def test_long_poll_keeps_user_online(server: TestHomeServer) -> None:
    server.hs.presence.set_timeouts(sync_ms=300, check_interval_s=0.05)
    alice = await user(server, "alice")
    since = (await alice.sync())["next_batch"]
    # A long-poll longer than the offline timeout: she is still syncing, so still online.
    await alice.sync(since, timeout=1000)
    assert (await get_status(alice, alice.user_id))["presence"] == "online"
    await asyncio.sleep(0.8)
    assert (await get_status(alice, alice.user_id))["presence"] == "offline"


async def test_room_mate_long_poll_is_woken_and_outsider_is_not(server: TestHomeServer) -> None:
    alice, bob, carol = [await user(server, n) for n in ("alice", "bob", "carol")]
    await room_of(alice, bob)
    await carol.create_room()
    await alice.sync()
    bob_since = (await bob.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]

    start = time.monotonic()
    bob_task = asyncio.create_task(bob.sync(bob_since, timeout=20000))
    carol_task = asyncio.create_task(carol.sync(carol_since, timeout=1500))
    await asyncio.sleep(0.3)
    await put_status(alice, "unavailable", "away")

    res = await asyncio.wait_for(bob_task, 5)
    assert time.monotonic() - start < 5
    content = presence_of(res, alice.user_id)
    assert content is not None and content["presence"] == "unavailable" and content["status_msg"] == "away"

    carol_res = await asyncio.wait_for(carol_task, 10)
    assert time.monotonic() - start >= 1.4  # ran to its timeout
    assert presence_of(carol_res, alice.user_id) is None
    assert carol_res["presence"]["events"] == []


async def test_refresh_that_changes_nothing_wakes_nobody(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await room_of(alice, bob)
    alice_since = (await alice.sync())["next_batch"]  # online and active
    bob_since = (await bob.sync())["next_batch"]
    position = server.hs.notifier.current.get("presence")

    start = time.monotonic()
    task = asyncio.create_task(bob.sync(bob_since, timeout=1200))
    await asyncio.sleep(0.2)
    await alice.sync(alice_since)  # online -> online, still currently active: nothing to tell
    await alice.sync(alice_since)
    res = await asyncio.wait_for(task, 10)
    assert time.monotonic() - start >= 1.1
    assert res["presence"]["events"] == []
    assert server.hs.notifier.current.get("presence") == position


async def test_presence_survives_restart(make_server: Any, engine: str) -> None:
    srv = await make_server(engine)
    alice = await user(srv, "alice")
    await put_status(alice, "unavailable", "on holiday")
    position = srv.hs.notifier.current.get("presence")
    assert position > 0
    await srv.stop()

    again = TestHomeServer(Path(srv.config.config_dir), engine, srv.dsn, {})
    await again.start()
    try:
        client = again.client()
        OPEN_CLIENTS.append(client)
        client.token, client.user_id = alice.token, alice.user_id
        got = await get_status(client, alice.user_id)
        assert got["presence"] == "unavailable" and got["status_msg"] == "on holiday"
        assert again.hs.notifier.current.get("presence") == position
        await put_status(client, "online")
        assert again.hs.notifier.current.get("presence") > position
    finally:
        await again.stop()


async def test_use_presence_false(make_server: Any, engine: str) -> None:
    srv = await make_server(engine, use_presence=False)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    await room_of(alice, bob)
    since = (await bob.sync())["next_batch"]
    await put_status(alice, "online", "hello")  # accepted, ignored
    assert await get_status(bob, alice.user_id) == {"presence": "offline"}
    assert await get_status(alice, alice.user_id) == {"presence": "offline"}
    await alice.sync()
    assert (await bob.sync(since))["presence"]["events"] == []
    assert (await bob.sync())["presence"]["events"] == []
    # No presence work at all: nothing stored, no state kept, no timer.
    assert await srv.hs.db.fetchval("SELECT COUNT(*) FROM presence") == 0
    assert srv.hs.presence._task is None and not srv.hs.presence._states
    assert srv.hs.notifier.current.get("presence") == 0


async def test_invalid_requests(server: TestHomeServer) -> None:
    alice, bob, carol = [await user(server, n) for n in ("alice", "bob", "carol")]
    await room_of(alice, bob)
    path = status_path(alice.user_id)

    status, data = await bob.request("PUT", path, {"presence": "online"})
    assert status == 403 and data["errcode"] == "M_FORBIDDEN"
    for body, code in [({"presence": "busy"}, "M_INVALID_PARAM"), ({"presence": 1}, "M_INVALID_PARAM"),
                       ({}, "M_MISSING_PARAM"), ({"status_msg": "x"}, "M_MISSING_PARAM"),
                       ({"presence": "online", "status_msg": 5}, "M_INVALID_PARAM"),
                       ({"presence": "online", "mood": "great"}, "M_BAD_JSON")]:
        status, data = await alice.request("PUT", path, body)
        assert status == 400 and data["errcode"] == code, (body, status, data)
    status, data = await alice.request("PUT", path, raw=b"not json")
    assert status == 400 and data["errcode"] == "M_NOT_JSON"
    # None of the refused requests changed anything.
    assert await get_status(alice, alice.user_id) == {"presence": "offline"}

    status, data = await carol.request("GET", path)
    assert status == 403 and data["errcode"] == "M_FORBIDDEN"
    status, data = await alice.request("GET", status_path("@nobody:test.local"))
    assert status == 404 and data["errcode"] == "M_NOT_FOUND"
    status, data = await alice.request("GET", status_path("@someone:elsewhere.example"))
    assert status == 404 and data["errcode"] == "M_NOT_FOUND"
    status, data = await alice.request("GET", "/sync", params={"set_presence": "busy"})
    assert status == 400 and data["errcode"] == "M_INVALID_PARAM"
    status, data = await alice.request("GET", path, auth=False)
    assert status == 401


async def test_presence_filter(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await room_of(alice, bob)
    await put_status(alice, "online")
    res = await bob.sync(filter=json.dumps({"presence": {"not_senders": [alice.user_id]}}))
    assert presence_of(res, alice.user_id) is None
    assert presence_of(res, bob.user_id) is not None
    res = await bob.sync(filter='{"presence": {"types": ["m.nothing"]}}')
    assert res["presence"]["events"] == []


async def test_new_room_mates_get_each_others_presence(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await put_status(alice, "unavailable", "not here")
    bob_since = (await bob.sync())["next_batch"]  # bob online; no shared room yet
    alice_since = (await alice.sync(set_presence="offline"))["next_batch"]
    assert presence_of(await bob.sync(bob_since), alice.user_id) is None

    status, data = await bob.request("POST", f"/join/{room}", {})
    assert status == 200, data
    # Neither presence changed, but each has just become visible to the other.
    res = await bob.sync(bob_since, set_presence="offline")
    content = presence_of(res, alice.user_id)
    assert content is not None and content["presence"] == "unavailable" and content["status_msg"] == "not here"
    res = await alice.sync(alice_since, set_presence="offline")
    content = presence_of(res, bob.user_id)
    assert content is not None and content["presence"] == "online"
    # Once only.
    again = await alice.sync(res["next_batch"], set_presence="offline")
    assert presence_of(again, bob.user_id) is None


# -- across a worker cluster (main, sync workers, a separate presence writer; Redis replication) ----------
from tests.cluster.conftest import cluster, instance_url, redis_server, redis_url  # noqa: E402, F401


@pytest.mark.timeout(300)
async def test_presence_across_workers(cluster: Any) -> None:  # noqa: F811
    """Syncs on sync workers reach the presence writer; its changes reach syncs on every worker."""
    alice, bob = Client(cluster.base_url), Client(cluster.base_url)
    readers = [Client(instance_url(cluster, w)) for w in ("sync1", "sync2")]
    OPEN_CLIENTS.extend([alice, bob, *readers])
    await alice.register("pres_alice" + str(time.monotonic_ns())[-6:])
    await bob.register("pres_bob" + str(time.monotonic_ns())[-6:])
    await room_of(alice, bob)
    for r in readers:
        r.token, r.user_id = bob.token, bob.user_id
    since = (await readers[0].sync(set_presence="offline"))["next_batch"]

    # A sync on a sync worker marks alice online on the writer; bob's long-poll on the other worker wakes.
    task = asyncio.create_task(readers[1].sync(since, timeout=20000, set_presence="offline"))
    await asyncio.sleep(0.2)
    start = time.monotonic()
    alice_direct = [Client(instance_url(cluster, w)) for w in ("sync1", "sync2")]
    OPEN_CLIENTS.extend(alice_direct)
    for c in alice_direct:
        c.token, c.user_id = alice.token, alice.user_id
    await alice_direct[0].sync()  # sync1 is not the presence writer: forwarded to it
    res = await asyncio.wait_for(task, 15)
    assert time.monotonic() - start < 10
    content = presence_of(res, alice.user_id)
    assert content is not None and content["presence"] == "online"

    # A PUT on a worker that is not the writer is forwarded too; GET from another worker.
    await put_status(alice_direct[1], "unavailable", "elsewhere")
    for _ in range(50):
        got = await get_status(readers[0], alice.user_id)
        if got["presence"] == "unavailable":
            break
        await asyncio.sleep(0.05)
    assert got["presence"] == "unavailable" and got["status_msg"] == "elsewhere"
    res = await readers[0].sync(res["next_batch"], set_presence="offline")
    content = presence_of(res, alice.user_id)
    assert content is not None and content["status_msg"] == "elsewhere"
