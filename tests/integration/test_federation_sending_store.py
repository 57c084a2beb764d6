"""The federation sender's durable state on both engines: leases (one owner at a time, taken over
only when free or expired), progress and backoff, the EDU outbox, relays and catch-up reads."""

from __future__ import annotations

from typing import Any

from hs.db.stores.federation_sending import FederationSendingStore


async def test_leases_have_one_owner_at_a_time(server: Any) -> None:
    store = FederationSendingStore(server.hs.db)
    await store.add_destinations({"a.example": 10, "b.example": 10})
    now = 1_000_000
    assert await store.take_leases(["a.example", "b.example"], "s1", now, 30_000) == {"a.example", "b.example"}
    # Another sender cannot take them while s1's leases hold; s1 renews its own.
    assert await store.take_leases(["a.example", "b.example"], "s2", now + 1000, 30_000) == set()
    assert await store.take_leases(["a.example"], "s1", now + 1000, 30_000) == {"a.example"}
    # Released (a clean stop, or the destination moved): the next owner takes it at once.
    await store.release_leases(["a.example"], "s1")
    assert await store.take_leases(["a.example"], "s2", now + 2000, 30_000) == {"a.example"}
    # s1 cannot release what it no longer holds.
    await store.release_leases(["a.example"], "s1")
    row = await store.get_destination("a.example")
    assert row is not None and row.lease_owner == "s2"
    # Expired (its owner crashed): taken over after the lease time, not before.
    assert await store.take_leases(["b.example"], "s2", now + 30_000, 30_000) == set()
    assert await store.take_leases(["b.example"], "s2", now + 30_001, 30_000) == {"b.example"}
    # Unknown destinations have no row, so no lease.
    assert await store.take_leases(["c.example"], "s1", now, 30_000) == set()


async def test_progress_backoff_and_outbox(server: Any) -> None:
    store = FederationSendingStore(server.hs.db)
    await store.add_destinations({"a.example": 5})
    await store.add_destinations({"a.example": 99})  # a second sighting changes nothing
    row = await store.get_destination("a.example")
    assert row is not None and row.last_successful_stream_ordering == 5 and row.retry_interval == 0
    await store.set_failed("a.example", 1000, 2000)
    await store.set_failed("a.example", 3000, 4000)
    row = await store.get_destination("a.example")
    assert row is not None and (row.retry_last_ts, row.retry_interval, row.failure_ts) == (3000, 4000, 1000)
    await store.set_sent("a.example", 20)
    row = await store.get_destination("a.example")
    assert row is not None and (row.last_successful_stream_ordering, row.retry_interval, row.failure_ts) == (20, 0, None)
    await store.set_sent("a.example", 15)  # progress never goes back
    row = await store.get_destination("a.example")
    assert row is not None and row.last_successful_stream_ordering == 20

    await store.add_edus([("a.example", "m.direct_to_device", {"n": i}) for i in range(3)], 1)
    await store.add_edus([("b.example", "m.receipt", {"n": 9})], 1)
    edus = await store.get_edus("a.example", 2)
    assert [c["n"] for _i, _t, c in edus] == [0, 1]
    await store.delete_edus([i for i, _t, _c in edus])
    assert [c["n"] for _i, _t, c in await store.get_edus("a.example", 10)] == [2]
    assert sorted(await store.destinations_with_edus()) == ["a.example", "b.example"]


async def test_catch_up_reads_local_and_relayed_events_of_shared_rooms(server: Any) -> None:
    hs = server.hs
    client = server.client()
    await client.register("alice")
    room_id = await client.create_room()
    other = await client.create_room()
    sent = [await client.send_message(room_id, f"m{i}") for i in range(3)]
    await client.send_message(other, "elsewhere")
    store = FederationSendingStore(hs.db)
    suffix = ":" + hs.server_name
    rows = await store.owed_events([room_id], 0, 10**12, suffix, 100)
    ids = [r["event_id"] for r in rows]
    assert ids[-3:] == sent and all(r["relay_origin"] is None for r in rows)
    # Only after the position asked, only up to the bound, only the rooms named.
    first = int(rows[-3]["stream_ordering"])
    assert [r["event_id"] for r in await store.owed_events([room_id], first, 10**12, suffix, 100)] == sent[1:]
    assert [r["event_id"] for r in await store.owed_events([room_id], 0, first, suffix, 100)][-1] == sent[0]
    assert await store.owed_events([], 0, 10**12, suffix, 100) == []
    # A remote user's event we relayed is owed too (with its origin, which must not get it back).
    await store.add_relay(sent[1], "remote.example")
    relayed = {r["event_id"]: r["relay_origin"] for r in await store.owed_events([room_id], 0, 10**12, suffix, 100)}
    assert relayed[sent[1]] == "remote.example"
    assert await store.get_relays([sent[1], sent[0]]) == {sent[1]: "remote.example"}
