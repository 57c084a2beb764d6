"""Events, state groups, current state and memberships: reading them, and writing them for a persister.

Reads are cached where the data is immutable (events by ID, state groups); current state and
membership reads go to the database, since other writers may change them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.txn_ids import NOT_INDEXED, KnownTransactionIds
from hs.events.event import Event, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from hs.util import LruCache, json_dumps, json_loads, now_ms

StateMap = dict[StateKey, str]
# How many of each room's latest events are indexed in memory (a /sync timeline is usually fewer).
RECENT_EVENTS_PER_ROOM = 64
# A state group chain longer than this is stored in full, bounding the cost of reading it.
MAX_STATE_CHAIN = 50


class EventStore:
    def __init__(self, db: Database, rooms: Any) -> None:
        self.db = db
        self.rooms = rooms
        self._event_cache: LruCache[str, Event] = LruCache(50000, name="db.stores.events.self._event_cache")
        self._state_cache: LruCache[int, StateMap] = LruCache(5000, name="db.stores.events.self._state_cache")
        # Memberships, cached per user and dropped when the events stream reports a membership change
        # of that user (every persisted membership event names its target in the stream message).
        self._rooms_for_user: LruCache[tuple[str, tuple[str, ...]], dict[str, str]] = LruCache(50000, name="db.stores.events.self._rooms_for_user")
        self._membership_changed_at: dict[str, int] = {}
        self._last_membership_change = 0
        self._membership_epoch = 0
        # Below this position we know nothing about membership changes (before start or a catch-up).
        self.membership_baseline = 0
        # Each room's recent events as (position, event ID), from the events stream: every event of
        # the room above `_known_from(room)` is listed, so "which rooms had events in (a, b]" and a
        # /sync timeline are answered from memory (and the event cache) without a query.
        self._room_recent: dict[str, list[tuple[int, str]]] = {}
        self._room_floor: dict[str, int] = {}
        self._max_noted = 0
        # Transaction IDs stored for the rooms this process writes (see txn_ids.py); `writes_room`
        # is set by the events stream once it knows this process's rooms.
        self.txn_ids = KnownTransactionIds()
        self.writes_room: Callable[[str], bool] = lambda room_id: False

    # -- events --------------------------------------------------------------------------------------
    def _row_to_event(self, row: dict[str, Any], version_id: str) -> Event:
        ev = Event(json_loads(row["json"]), KNOWN_ROOM_VERSIONS[version_id], event_id=row["event_id"])
        ev.internal.stream_ordering = row["stream_ordering"]
        ev.internal.instance_name = row["instance_name"]
        ev.internal.state_group_before = row["state_group_before"]
        ev.internal.state_group_after = row["state_group_after"]
        if row.get("txn_id"):
            ev.internal.txn = (row["txn_device_id"], row["txn_id"])
        if row.get("redacted_by"):
            ev.internal.redacted_by = row["redacted_by"]
        return ev

    async def _rows_to_events(self, rows: list[dict[str, Any]]) -> list[Event]:
        out = []
        for row in rows:
            cached = self._event_cache.get(row["event_id"])
            if cached is not None and cached.internal.redacted_by == row.get("redacted_by"):
                out.append(cached)
                continue
            version = await self.rooms.get_room_version_id(row["room_id"])
            ev = self._row_to_event(row, version)
            self._event_cache.set(ev.event_id, ev)
            out.append(ev)
        return out

    async def get_event(self, event_id: str) -> Event | None:
        evs = await self.get_events([event_id])
        return evs.get(event_id)

    async def get_events(self, event_ids: list[str] | set[str] | Any) -> dict[str, Event]:
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, Event] = {}
        missing = []
        for eid in ids:
            ev = self._event_cache.get(eid)
            if ev is not None:
                found[eid] = ev
            else:
                missing.append(eid)
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            placeholders = ",".join(f"${n + 1}" for n in range(len(chunk)))
            rows = await self.db.fetch(f"SELECT * FROM events WHERE event_id IN ({placeholders})", *chunk)
            for ev in await self._rows_to_events(rows):
                found[ev.event_id] = ev
        if len(found) < len(ids):
            await self._get_outliers([eid for eid in missing if eid not in found], found)
        return found

    async def _get_outliers(self, event_ids: list[str], found: dict[str, Event]) -> None:
        """Events held outside the timeline (federation's state and auth chains, rejected and
        soft-failed events), for the lookups that may use them (auth events, state)."""
        for i in range(0, len(event_ids), 500):
            chunk = event_ids[i:i + 500]
            placeholders = ",".join(f"${n + 1}" for n in range(len(chunk)))
            rows = await self.db.fetch(f"SELECT * FROM event_outliers WHERE event_id IN ({placeholders})", *chunk)
            for row in rows:
                version = await self.rooms.get_room_version_id(row["room_id"])
                if version is None:
                    continue
                ev = Event(json_loads(row["json"]), KNOWN_ROOM_VERSIONS[version], event_id=row["event_id"])
                meta = ev.internal
                meta.outlier = True
                meta.rejected = row["rejected_reason"] is not None
                meta.soft_failed = bool(row["soft_failed"])
                meta.state_group_before = row["state_group_before"]
                meta.state_group_after = row["state_group_after"]
                self._event_cache.set(ev.event_id, ev)
                found[ev.event_id] = ev

    async def have_events(self, event_ids: list[str] | set[str]) -> set[str]:
        """Which of these events this server holds, in a timeline or as outliers (rejected included)."""
        return set(await self.get_events(event_ids))

    async def insert_outliers(self, c: Connection, events: list[Event], rejected: dict[str, str] | None = None,
                              ) -> None:
        """Hold events outside the timeline; one already held (anywhere) is left as it is."""
        rejected = rejected or {}
        in_timeline: set[str] = set()
        ids = [ev.event_id for ev in events]
        for i in range(0, len(ids), 500):  # one query per 500 rather than one per event (a join's state)
            chunk = ids[i:i + 500]
            placeholders = ",".join(f"${n + 1}" for n in range(len(chunk)))
            rows = await c.fetch(f"SELECT event_id FROM events WHERE event_id IN ({placeholders})", *chunk)
            in_timeline.update(r["event_id"] for r in rows)
        received = now_ms()
        todo = [ev for ev in events if ev.event_id not in in_timeline]
        if not todo:
            return
        await c.executemany(
            "INSERT INTO event_outliers (event_id, room_id, json, rejected_reason, soft_failed,"
            " state_group_before, state_group_after, received_ts) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
            " ON CONFLICT (event_id) DO NOTHING",
            [(ev.event_id, ev.room_id, json_dumps(ev.pdu), rejected.get(ev.event_id), int(ev.internal.soft_failed),
              ev.internal.state_group_before, ev.internal.state_group_after, received) for ev in todo])
        for ev in todo:
            ev.internal.outlier = True
            ev.internal.rejected = ev.event_id in rejected

    async def get_auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        """The auth events of these events, recursively (not the events themselves); events this
        server does not hold end their branch."""
        chain: set[str] = set()
        frontier = set(event_ids)
        while frontier:
            evs = await self.get_events(frontier)
            frontier = set()
            for ev in evs.values():
                for aid in ev.auth_event_ids:
                    if aid not in chain:
                        chain.add(aid)
                        frontier.add(aid)
        return chain

    def cache_event(self, event: Event) -> None:
        self._event_cache.set(event.event_id, event)

    def cache_state_group(self, group: int, state: StateMap) -> None:
        self._state_cache.set(group, dict(state))

    def invalidate_event(self, event_id: str) -> None:
        self._event_cache.pop(event_id)

    async def get_room_events_stream(self, room_id: str, from_pos: int, to_pos: int, limit: int,
                                     ) -> tuple[list[Event], bool]:
        """Newest `limit` events with from_pos < stream_ordering <= to_pos, oldest first, and whether
        there were more (the timeline is `limited`)."""
        in_range = [eid for pos, eid in self._room_recent.get(room_id, ()) if from_pos < pos <= to_pos]
        if from_pos >= self._known_from(room_id) or len(in_range) > limit:
            wanted = in_range[-limit:] if limit > 0 else []
            found = await self.get_events(wanted)
            if len(found) == len(wanted):
                return [found[eid] for eid in wanted], len(in_range) > limit
        rows = await self.db.fetch(
            "SELECT * FROM events WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3"
            " ORDER BY stream_ordering DESC LIMIT $4",
            room_id, from_pos, to_pos, limit + 1,
        )
        limited = len(rows) > limit
        evs = await self._rows_to_events(rows[:limit])
        evs.reverse()
        return evs, limited

    async def get_latest_event_at(self, room_id: str, position: int) -> Event | None:
        """The room's newest event at or below `position`."""
        known_from = self._known_from(room_id)
        for pos, eid in reversed(self._room_recent.get(room_id, ())):
            if pos <= position:
                if pos > known_from and (ev := await self.get_event(eid)) is not None:
                    return ev
                break
        evs, _ = await self.get_room_events_stream(room_id, 0, position, 1)
        return evs[-1] if evs else None

    def _known_from(self, room_id: str) -> int:
        """Every event of the room above this position is in `_room_recent`."""
        return max(self.membership_baseline, self._room_floor.get(room_id, 0))

    def on_room_events(self, room_id: str, first: int, last: int, events: list[tuple[int, str]] | None) -> None:
        """The events stream persisted events in the room at positions first..last (`events`: each
        one's position and ID; without them only the fact that the room changed is known)."""
        self._max_noted = max(self._max_noted, last)
        recent = self._room_recent.setdefault(room_id, [])
        if events is None:
            recent.clear()
            self._room_floor[room_id] = max(self._room_floor.get(room_id, 0), last)
            return
        recent.extend(events)
        if len(recent) > RECENT_EVENTS_PER_ROOM:
            dropped = len(recent) - RECENT_EVENTS_PER_ROOM
            self._room_floor[room_id] = max(self._room_floor.get(room_id, 0), recent[dropped - 1][0])
            del recent[:dropped]

    async def get_rooms_with_events_between(self, room_ids: list[str], from_pos: int, to_pos: int) -> set[str]:
        """The rooms with events in (from_pos, to_pos]; may also name a room whose recent events are
        not all known here (its timeline is then read, and may simply be empty)."""
        if not room_ids or from_pos >= to_pos:
            return set()
        if from_pos >= self.membership_baseline:
            out = set()
            for room_id in room_ids:
                recent = self._room_recent.get(room_id)
                if recent is None:
                    continue  # no events since the baseline
                if from_pos < self._room_floor.get(room_id, 0) or _any_between(recent, from_pos, to_pos):
                    out.add(room_id)
            return out
        rows = await self.db.fetch(
            "SELECT DISTINCT room_id FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2",
            from_pos, to_pos)
        wanted = set(room_ids)
        return {r["room_id"] for r in rows if r["room_id"] in wanted}

    async def paginate_room(self, room_id: str, depth: int, stream: int, backwards: bool, limit: int,
                            to: tuple[int, int] | None = None) -> list[Event]:
        """Events strictly before (backwards) or after (forwards) the point (depth, stream), in order."""
        if backwards:
            cond = "(depth < $2 OR (depth = $2 AND stream_ordering < $3))"
            order = "DESC"
        else:
            cond = "(depth > $2 OR (depth = $2 AND stream_ordering > $3))"
            order = "ASC"
        args: list[Any] = [room_id, depth, stream, limit]
        extra = ""
        if to is not None:
            if backwards:
                extra = " AND (depth > $5 OR (depth = $5 AND stream_ordering >= $6))"
            else:
                extra = " AND (depth < $5 OR (depth = $5 AND stream_ordering <= $6))"
            args += [to[0], to[1]]
        rows = await self.db.fetch(
            f"SELECT * FROM events WHERE room_id = $1 AND {cond}{extra}"
            f" ORDER BY depth {order}, stream_ordering {order} LIMIT $4", *args)
        return await self._rows_to_events(rows)

    async def get_last_point(self, room_id: str) -> tuple[int, int] | None:
        """(depth, stream_ordering) of the room's last event in topological order."""
        row = await self.db.fetchrow(
            "SELECT depth, stream_ordering FROM events WHERE room_id = $1"
            " ORDER BY depth DESC, stream_ordering DESC LIMIT 1", room_id)
        return (int(row["depth"]), int(row["stream_ordering"])) if row else None

    async def get_depth_at(self, room_id: str, position: int) -> int | None:
        """The depth of the room's last event at or below a stream position, as the database has it
        (not the recent events this process was told about, which may lag behind the token)."""
        depth = await self.db.fetchval(
            "SELECT depth FROM events WHERE room_id = $1 AND stream_ordering <= $2"
            " ORDER BY stream_ordering DESC LIMIT 1", room_id, position)
        return None if depth is None else int(depth)

    async def get_state_group_at(self, room_id: str, depth: int, stream: int) -> int | None:
        """The state group after the room's last event at or before the point (depth, stream); None
        before the room's first event."""
        row = await self.db.fetchrow(
            "SELECT state_group_after FROM events WHERE room_id = $1"
            " AND (depth < $2 OR (depth = $2 AND stream_ordering <= $3))"
            " ORDER BY depth DESC, stream_ordering DESC LIMIT 1", room_id, depth, stream)
        return None if row is None else row["state_group_after"]

    async def get_events_persisted_by(self, instance: str, after: int, limit: int) -> list[Event]:
        """Events this writer persisted above a position, oldest first."""
        rows = await self.db.fetch(
            "SELECT event_id FROM events WHERE instance_name = $1 AND stream_ordering > $2"
            " ORDER BY stream_ordering LIMIT $3", instance, after, limit)
        found = await self.get_events([r["event_id"] for r in rows])
        return sorted(found.values(), key=lambda ev: ev.internal.position())

    async def get_max_stream_ordering(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_ordering), 0) FROM events") or 0)

    # -- transaction IDs -----------------------------------------------------------------------------
    async def get_event_id_for_txn(self, user_id: str, device_id: str, room_id: str, txn_id: str) -> str | None:
        if self.writes_room(room_id):  # this process stores the room's IDs: memory is exact
            known = await self.txn_ids.lookup(user_id, device_id, room_id, txn_id, self._device_txn_ids)
            if known is not NOT_INDEXED:
                return known  # type: ignore[return-value]
        event_id: str | None = await self.db.fetchval(
            "SELECT event_id FROM event_txn_ids WHERE user_id = $1 AND device_id = $2 AND room_id = $3"
            " AND txn_id = $4", user_id, device_id, room_id, txn_id)
        return event_id

    async def _device_txn_ids(self, user_id: str, device_id: str, limit: int) -> list[tuple[str, str, str]]:
        rows = await self.db.fetch(
            "SELECT room_id, txn_id, event_id FROM event_txn_ids WHERE user_id = $1 AND device_id = $2"
            " LIMIT $3", user_id, device_id, limit)
        return [(r["room_id"], r["txn_id"], r["event_id"]) for r in rows]

    # -- state ---------------------------------------------------------------------------------------
    async def get_state_group(self, group: int | None) -> StateMap:
        if group is None:
            return {}
        cached = self._state_cache.get(group)
        if cached is not None:
            return cached
        rows = await self.db.fetch(
            "WITH RECURSIVE chain(id, prev_group, n) AS ("
            " SELECT id, prev_group, 0 FROM state_groups WHERE id = $1"
            " UNION ALL SELECT s.id, s.prev_group, c.n + 1 FROM state_groups s JOIN chain c ON s.id = c.prev_group"
            ") SELECT c.n, g.type, g.state_key, g.event_id FROM chain c"
            " JOIN state_groups_state g ON g.state_group = c.id ORDER BY c.n DESC",
            group,
        )
        state: StateMap = {}
        for r in rows:  # oldest first, so later deltas override
            state[(r["type"], r["state_key"])] = r["event_id"]
        self._state_cache.set(group, state)
        return state

    async def get_state_events_for_group(self, group: int | None,
                                         types: list[tuple[str, str | None]] | None = None) -> dict[StateKey, Event]:
        return await self._state_events(await self.get_state_group(group), types)

    async def _state_events(self, ids: StateMap, types: list[tuple[str, str | None]] | None) -> dict[StateKey, Event]:
        """The events of a state map, all or those of `types` ((type, state key), a None state key
        meaning every state key of that type)."""
        if types is not None:
            ids = {k: v for k, v in ids.items()
                   if any(k[0] == t and (sk is None or k[1] == sk) for t, sk in types)}
        evs = await self.get_events(list(ids.values()))
        return {k: evs[v] for k, v in ids.items() if v in evs}

    async def store_state_group(self, c: Connection, group: int, room_id: str, prev_group: int | None,
                                delta: StateMap, full: StateMap) -> None:
        """Write a group as a delta from prev_group, or in full when the chain grows too long."""
        chain = 0
        if prev_group is not None:
            chain = int(await c.fetchval("SELECT chain_length FROM state_groups WHERE id = $1", prev_group) or 0) + 1
        if prev_group is None or chain > MAX_STATE_CHAIN:
            prev_group, chain, rows = None, 0, full
        else:
            rows = delta
        await c.execute("INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES ($1,$2,$3,$4)",
                        group, room_id, prev_group, chain)
        await c.executemany(
            "INSERT INTO state_groups_state (state_group, type, state_key, event_id) VALUES ($1,$2,$3,$4)",
            [(group, t, sk, eid) for (t, sk), eid in rows.items()])
        self._state_cache.set(group, dict(full))

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        rows = await self.db.fetch(
            "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = $1", room_id)
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

    async def get_current_state_events(self, room_id: str, types: list[tuple[str, str | None]] | None = None,
                                       ) -> dict[StateKey, Event]:
        """The room's current state events, all or those of `types` ((type, state key), a None state
        key meaning every state key of that type), as `get_state_events_for_group` for a group."""
        return await self._state_events(await self.get_current_state_ids(room_id), types)

    async def get_current_state_event(self, room_id: str, etype: str, state_key: str = "") -> Event | None:
        eid = await self.db.fetchval(
            "SELECT event_id FROM current_state_events WHERE room_id = $1 AND type = $2 AND state_key = $3",
            room_id, etype, state_key)
        return None if eid is None else await self.get_event(eid)

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT event_id FROM event_forward_extremities WHERE room_id = $1", room_id)
        return [r["event_id"] for r in rows]

    # -- membership ----------------------------------------------------------------------------------
    async def get_membership(self, room_id: str, user_id: str) -> tuple[str, str] | None:
        """(membership, event_id) of the user's current membership in the room."""
        row = await self.db.fetchrow(
            "SELECT membership, event_id FROM current_state_events"
            " WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2", room_id, user_id)
        return None if row is None else (row["membership"], row["event_id"])

    def on_membership_change(self, users: list[str], position: int) -> None:
        """The events stream persisted membership events for `users` (at or below `position`)."""
        self._membership_epoch += 1
        self._max_noted = max(self._max_noted, position)
        self._last_membership_change = max(self._last_membership_change, position)
        for user in users:
            self._membership_changed_at[user] = max(self._membership_changed_at.get(user, 0), position)
            self._rooms_for_user.invalidate_where(lambda k, _v, u=user: k[0] == u)

    def reset_membership_tracking(self, baseline: int) -> None:
        """After start or a replication gap: forget what we knew. Everything at or below the new
        baseline (never lower than anything already noted, since that is forgotten too) is answered
        from the database."""
        self._membership_epoch += 1
        self._rooms_for_user.clear()
        self._membership_changed_at.clear()
        self._room_recent.clear()
        self._room_floor.clear()
        self.membership_baseline = max(baseline, self.membership_baseline, self._max_noted)

    def user_membership_changed_after(self, user_id: str, position: int) -> bool:
        """False only if this process knows the user's memberships did not change after `position`."""
        if position < self.membership_baseline:
            return True
        return self._membership_changed_at.get(user_id, 0) > position

    def any_membership_changed_after(self, position: int) -> bool:
        return position < self.membership_baseline or self._last_membership_change > position

    def cached_rooms_for_user(self, user_id: str, memberships: tuple[str, ...]) -> dict[str, str] | None:
        """The cached memberships, if any. They reflect exactly the membership changes this process has
        been told of, so together with `user_membership_changed_after` they are a consistent view
        (a fresh database read may already show a change that has not been announced yet)."""
        cached = self._rooms_for_user.get((user_id, tuple(memberships)))
        return None if cached is None else dict(cached)

    async def get_rooms_for_user(self, user_id: str, memberships: tuple[str, ...] = ("join",)) -> dict[str, str]:
        """room_id -> membership for the user's current memberships of the given kinds."""
        key = (user_id, tuple(memberships))
        cached = self._rooms_for_user.get(key)
        if cached is not None:
            return dict(cached)
        epoch = self._membership_epoch
        result = await self._query_rooms_for_user(user_id, memberships)
        if epoch == self._membership_epoch:  # no invalidation raced the query
            self._rooms_for_user.set(key, dict(result))
        return result

    async def _query_rooms_for_user(self, user_id: str, memberships: tuple[str, ...]) -> dict[str, str]:
        placeholders = ",".join(f"${i + 2}" for i in range(len(memberships)))
        rows = await self.db.fetch(
            "SELECT room_id, membership FROM current_state_events WHERE type = 'm.room.member'"
            f" AND state_key = $1 AND membership IN ({placeholders})", user_id, *memberships)
        return {r["room_id"]: r["membership"] for r in rows}

    async def get_event_near_timestamp(self, room_id: str, ts: int, forwards: bool,
                                       upto: int | None = None) -> tuple[str, int] | None:
        """(event ID, origin_server_ts) of the room's event closest to `ts` at or after it (forwards)
        or at or before it; only events at stream positions <= `upto` when given. Scans the room's
        events (no index on timestamps: it would cost every send an index entry)."""
        cmp, order = (">=", "ASC") if forwards else ("<=", "DESC")
        row = await self.db.fetchrow(
            f"SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts {cmp} $2"
            " AND stream_ordering <= $3"
            f" ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT 1",
            room_id, ts, upto if upto is not None else 2 ** 62)
        return None if row is None else (row["event_id"], int(row["origin_server_ts"]))

    async def get_joined_members(self, room_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT state_key FROM current_state_events WHERE room_id = $1 AND type = 'm.room.member'"
            " AND membership = 'join'", room_id)
        return [r["state_key"] for r in rows]

    async def get_membership_changes(self, user_id: str, from_pos: int, to_pos: int) -> list[dict[str, Any]]:
        return await self.db.fetch(
            "SELECT room_id, membership, event_id, stream_ordering FROM room_memberships"
            " WHERE user_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3 ORDER BY stream_ordering",
            user_id, from_pos, to_pos)

    async def has_ever_joined(self, room_id: str, user_id: str) -> bool:
        """Whether the user was ever joined to the room (a departed member saw history only if so)."""
        return bool(await self.db.fetchval(
            "SELECT 1 FROM room_memberships WHERE room_id = $1 AND user_id = $2 AND membership = 'join'",
            room_id, user_id))

    async def is_forgotten(self, user_id: str, room_id: str) -> bool:
        return bool(await self.db.fetchval(
            "SELECT 1 FROM room_forgotten WHERE user_id = $1 AND room_id = $2", user_id, room_id))

    async def forget(self, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO room_forgotten (user_id, room_id) VALUES ($1,$2) ON CONFLICT DO NOTHING", user_id, room_id)

    async def unforget(self, c: Connection, user_id: str, room_id: str) -> None:
        await c.execute("DELETE FROM room_forgotten WHERE user_id = $1 AND room_id = $2", user_id, room_id)

    # -- writing (event persisters only) ---------------------------------------------------------------
    async def move_extremities(self, c: Connection, room_id: str, replaced: list[str], event_id: str,
                               becomes_head: bool = True) -> None:
        """A DAG step: the event's prev events stop being forward extremities and the event is one
        (unless `becomes_head` is False: a child of it arrived first)."""
        # (The table has no unique key, so that the one-head rewrite stays a HOT update: see 008.)
        gone = list(dict.fromkeys([*replaced, event_id]))
        placeholders = ",".join(f"${n + 2}" for n in range(len(gone)))
        await c.execute(f"DELETE FROM event_forward_extremities WHERE room_id = $1 AND event_id IN ({placeholders})",
                        room_id, *gone)
        if becomes_head:
            await c.execute("INSERT INTO event_forward_extremities (room_id, event_id) VALUES ($1, $2)",
                            room_id, event_id)

    async def apply_current_state_delta(self, c: Connection, room_id: str,
                                        delta: list[tuple[str, str, str | None, str | None]]) -> None:
        """Change the room's current state by (type, state key, event ID or None to remove, membership)."""
        for etype, state_key, event_id, membership in delta:
            if event_id is None:
                await c.execute("DELETE FROM current_state_events WHERE room_id = $1 AND type = $2"
                                " AND state_key = $3", room_id, etype, state_key)
            else:
                await c.execute(
                    "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership)"
                    " VALUES ($1,$2,$3,$4,$5) ON CONFLICT (room_id, type, state_key) DO UPDATE"
                    " SET event_id = excluded.event_id, membership = excluded.membership",
                    room_id, etype, state_key, event_id, membership)

    async def record_pending_redaction(self, c: Connection, redacts: str, redaction_id: str, room_id: str) -> None:
        """A redaction whose target is not held yet: applied when the target arrives."""
        await c.execute("INSERT INTO event_pending_redactions (redacts, redaction_id, room_id) VALUES ($1,$2,$3)"
                        " ON CONFLICT (redacts, redaction_id) DO NOTHING", redacts, redaction_id, room_id)

    async def get_pending_redaction_targets(self, room_id: str) -> set[str]:
        rows = await self.db.fetch("SELECT redacts FROM event_pending_redactions WHERE room_id = $1", room_id)
        return {r["redacts"] for r in rows}

    async def get_pending_redactions(self, event_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT redaction_id FROM event_pending_redactions WHERE redacts = $1", event_id)
        return [r["redaction_id"] for r in rows]

    async def apply_late_redaction(self, c: Connection, event_id: str, room_id: str, redaction_id: str) -> None:
        """Redact an event just stored with a redaction that came before it."""
        await c.execute("UPDATE events SET redacted_by = $2 WHERE event_id = $1 AND room_id = $3",
                        event_id, redaction_id, room_id)
        await c.execute("DELETE FROM event_relations WHERE event_id = $1 AND room_id = $2", event_id, room_id)
        await c.execute("DELETE FROM event_pending_redactions WHERE redacts = $1", event_id)

    async def remove_outlier(self, c: Connection, event_id: str) -> None:
        """An outlier taken into the timeline (it now has a place in the room's DAG here)."""
        await c.execute("DELETE FROM event_outliers WHERE event_id = $1", event_id)

    async def set_forward_extremity(self, c: Connection, room_id: str, event_id: str) -> None:
        """Local rooms are linear: after a batch, the room's one extremity is its last event."""
        updated = await c.fetch(
            "UPDATE event_forward_extremities SET event_id = $2 WHERE room_id = $1 RETURNING event_id",
            room_id, event_id)
        if len(updated) != 1:  # a new room (or, defensively, several extremities): replace them all
            await c.execute("DELETE FROM event_forward_extremities WHERE room_id = $1", room_id)
            await c.execute("INSERT INTO event_forward_extremities (room_id, event_id) VALUES ($1, $2)",
                            room_id, event_id)

    async def insert_event(self, c: Connection, event: Event, stream: int, instance: str,
                           group_before: int | None, group_after: int | None,
                           txn: tuple[str, str, str] | None, update_current_state: bool = True,
                           apply_redaction: bool = True) -> None:
        """`update_current_state` False: the caller writes the room's current state itself (an event
        from another server may lose state resolution, or bring several changes with it).
        `apply_redaction` False: a redaction the receiving server must not apply (v3+ rooms: its
        sender is of another server than the target's and lacks the power to redact)."""
        pdu = event.pdu
        await c.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, instance_name, state_group_before, state_group_after, membership,"
            " txn_device_id, txn_id, json)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)",
            stream, event.event_id, event.room_id, event.type, event.state_key, event.sender, event.depth,
            event.origin_server_ts, instance, group_before, group_after, event.membership,
            txn[1] if txn else None, txn[2] if txn else None, json_dumps(pdu),
        )
        if txn is not None:
            event.internal.txn = (txn[1], txn[2])
        if txn is not None:
            user_id, device_id, txn_id = txn
            await c.execute(
                "INSERT INTO event_txn_ids (user_id, device_id, room_id, txn_id, event_id, inserted_ts)"
                " VALUES ($1,$2,$3,$4,$5,$6)", user_id, device_id, event.room_id, txn_id, event.event_id, now_ms())
        if event.is_state() and update_current_state:
            await c.execute(
                "INSERT INTO current_state_events (room_id, type, state_key, event_id, membership)"
                " VALUES ($1,$2,$3,$4,$5) ON CONFLICT (room_id, type, state_key) DO UPDATE"
                " SET event_id = excluded.event_id, membership = excluded.membership",
                event.room_id, event.type, event.state_key, event.event_id, event.membership)
        if event.membership is not None:
            await c.execute(
                "INSERT INTO room_memberships (event_id, room_id, user_id, sender, membership, stream_ordering)"
                " VALUES ($1,$2,$3,$4,$5,$6)",
                event.event_id, event.room_id, event.state_key, event.sender, event.membership, stream)
            if event.membership in ("join", "invite", "knock"):
                await self.unforget(c, event.state_key or "", event.room_id)
        relation = event.relation
        if relation is not None:
            await c.execute(
                "INSERT INTO event_relations (event_id, room_id, relates_to_id, relation_type, event_type, sender,"
                " stream_ordering) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                event.event_id, event.room_id, relation[1], relation[0], event.type, event.sender, stream)
        redacts = event.redacts if event.type == "m.room.redaction" and apply_redaction else None
        if redacts:
            await c.execute("UPDATE events SET redacted_by = $2 WHERE event_id = $1 AND room_id = $3",
                            redacts, event.event_id, event.room_id)
            # A redacted event's content (its m.relates_to with it) is gone: so is its relation.
            await c.execute("DELETE FROM event_relations WHERE event_id = $1 AND room_id = $2",
                            redacts, event.room_id)
        meta = event.internal
        meta.stream_ordering, meta.instance_name = stream, instance
        meta.state_group_before, meta.state_group_after = group_before, group_after


def _any_between(recent: list[tuple[int, str]], from_pos: int, to_pos: int) -> bool:
    """Whether a room's recent (position, event ID) list, oldest first, has a position in
    (from_pos, to_pos]; scanned from the newest end, where a /sync's range usually is."""
    for pos, _ in reversed(recent):
        if pos <= from_pos:
            return False
        if pos <= to_pos:
            return True
    return False
