"""The events store's in-memory index of each room's recent events: /sync timelines and "which rooms
changed" come from memory when it is complete for the range, and from the database when it is not."""

from __future__ import annotations

from typing import Any

from hs.db.stores.events import RECENT_EVENTS_PER_ROOM, EventStore
from hs.events.event import Event
from hs.events.room_versions import KNOWN_ROOM_VERSIONS

V11 = KNOWN_ROOM_VERSIONS["11"]


class RecordingDb:
    engine = "postgres"

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.queries.append(sql)
        return []


def store_with_room(count: int, first: int = 1) -> tuple[EventStore, RecordingDb]:
    db = RecordingDb()
    store = EventStore(db, rooms=None)  # type: ignore[arg-type]
    store.reset_membership_tracking(first - 1)
    for pos in range(first, first + count):
        ev = Event({"type": "m.room.message", "room_id": "!r:x", "sender": "@a:x", "content": {},
                    "depth": pos, "prev_events": [], "auth_events": [], "origin_server_ts": 0}, V11,
                   event_id=f"$e{pos}")
        ev.internal.stream_ordering = pos
        store.cache_event(ev)
        store.on_room_events("!r:x", pos, pos, [(pos, ev.event_id)])
    return store, db


async def test_a_recent_range_is_answered_from_memory() -> None:
    store, db = store_with_room(10)
    events, limited = await store.get_room_events_stream("!r:x", 4, 9, 3)
    assert [e.event_id for e in events] == ["$e7", "$e8", "$e9"] and limited
    events, limited = await store.get_room_events_stream("!r:x", 4, 9, 10)
    assert [e.event_id for e in events] == ["$e5", "$e6", "$e7", "$e8", "$e9"] and not limited
    assert (await store.get_latest_event_at("!r:x", 6)).event_id == "$e6"  # type: ignore[union-attr]
    assert await store.get_rooms_with_events_between(["!r:x", "!quiet:x"], 9, 10) == {"!r:x"}
    assert await store.get_rooms_with_events_between(["!r:x"], 10, 12) == set()
    assert db.queries == []


async def test_a_range_reaching_below_what_memory_holds_goes_to_the_database() -> None:
    store, db = store_with_room(RECENT_EVENTS_PER_ROOM + 10)
    # The newest few are still known exactly, however far back the range starts ...
    events, limited = await store.get_room_events_stream("!r:x", 0, RECENT_EVENTS_PER_ROOM + 10, 5)
    assert len(events) == 5 and limited and db.queries == []
    # ... but whether a long range is `limited`, or the events before the index, need the database.
    await store.get_room_events_stream("!r:x", 0, RECENT_EVENTS_PER_ROOM + 10, RECENT_EVENTS_PER_ROOM)
    assert len(db.queries) == 1
    await store.get_latest_event_at("!r:x", 3)
    assert len(db.queries) == 2


async def test_after_a_replication_gap_memory_is_not_trusted_below_the_new_baseline() -> None:
    store, db = store_with_room(5)
    store.reset_membership_tracking(20)
    await store.get_room_events_stream("!r:x", 2, 5, 10)
    assert len(db.queries) == 1
    # Memory would name the room; below the baseline the database decides (it has no rows here).
    assert await store.get_rooms_with_events_between(["!r:x"], 2, 25) == set()
    assert len(db.queries) == 2


async def test_a_batch_announced_without_its_events_makes_older_ranges_read_the_database() -> None:
    store, db = store_with_room(5)
    store.on_room_events("!r:x", 6, 7, None)
    await store.get_room_events_stream("!r:x", 3, 7, 10)
    assert len(db.queries) == 1
    assert await store.get_rooms_with_events_between(["!r:x"], 3, 7) == {"!r:x"}
