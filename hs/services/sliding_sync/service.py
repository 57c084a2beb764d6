"""Sliding sync (MSC4186, simplified sliding sync): one request, computed and long-polled.

Consistency as /sync (hs/services/sync.py): the response covers the events stream up to `upto`, the
notifier's position taken before anything is read, and the connection's previous position covered
everything up to its own token, so each event reaches the client once.

Per request:
1. the connection's position (hs/services/sliding_sync/connections.py), or a new connection;
2. the user's rooms at `upto` with their bump stamps (one statement), the lists' counts and rooms in
   range (hs/services/sliding_sync/room_list.py);
3. room data only for the rooms in a range or subscribed to, and of those already sent on the
   connection only the ones with something new (one in-memory check for all of them)
   (hs/services/sliding_sync/room_data.py);
4. the extensions (hs/services/sliding_sync/extensions.py).
When nothing is new (no room entry, the lists' rooms unchanged, no extension data) an existing
connection waits on the notifier for the user and their rooms up to `timeout`, then computes again; a
server stop answers at once as if the timeout had expired. A response with nothing new keeps the `pos`
it was given (no write); otherwise a new position is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram

from hs.db.stores.sliding_sync import RoomRecord
from hs.services.sliding_sync.connections import Connection, Connections
from hs.services.sliding_sync.request import RoomConfig, SlidingSyncRequest
from hs.services.sliding_sync.room_data import RoomData, RoomPlan, RoomResult, config_key
from hs.services.sliding_sync.room_list import ListResult, RoomInfo, RoomLists
from hs.streams.notifier import LongPollInterrupted
from hs.streams.tokens import StreamToken

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

SLIDING_SYNC_COMPUTE = Histogram(
    "hs_sliding_sync_compute_seconds", "Time to compute one sliding sync pass", ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))


@dataclass
class SlidingSyncResponse:
    """The response before it is rendered in the request's shape."""

    pos: str
    lists: dict[str, ListResult]
    rooms: dict[str, RoomResult]
    extensions: dict[str, Any]


@dataclass
class _Pass:
    lists: dict[str, ListResult]
    digest: dict[str, Any]
    rooms: dict[str, RoomResult]
    records: dict[str, RoomRecord]
    extensions: dict[str, Any]
    new: bool
    watch: list[str]


class SlidingSyncService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.connections = Connections(hs)
        self.room_lists = RoomLists(hs, self.connections.store)
        self.room_data = RoomData(hs, self.connections.store)

    async def sync(self, req: SlidingSyncRequest, still_wanted: Callable[[], bool] = lambda: True,
                   ) -> SlidingSyncResponse:
        """`still_wanted`: False once the client has gone (its answer is then not stored as a position,
        which would replace the one it continues from in its next request)."""
        conn = await self.connections.open(req.user_id, req.device_id, req.conn_id, req.pos)
        # A new connection is written down while its first response is computed (off its critical path).
        started = None if conn.base is not None else asyncio.ensure_future(
            self.connections.start(req.user_id, req.device_id, req.conn_id))
        try:
            return await self._answer(req, conn, started, still_wanted)
        finally:
            if started is not None and not started.done():
                # (An error before `save`: the connection is written down all the same, and unused.)
                started.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _answer(self, req: SlidingSyncRequest, conn: Connection, started: asyncio.Future[int] | None,
                      still_wanted: Callable[[], bool]) -> SlidingSyncResponse:
        await self.hs.presence.user_syncing(req.user_id, req.set_presence, req.timeout_ms)
        notifier = self.hs.notifier
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0, req.timeout_ms) / 1000
        while True:
            now = notifier.current
            kind = "initial" if conn.token is None else "incremental"
            with SLIDING_SYNC_COMPUTE.labels(kind).time():
                result = await self._compute(req, conn, now)
            if result.new or conn.token is None:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if notifier.current.is_after(now):
                continue  # something arrived while computing: its notification has gone out already
            try:
                await notifier.wait(req.user_id, result.watch, remaining)
            except LongPollInterrupted:
                break  # the server is stopping: answer as if the timeout had expired
        token = now if conn.token is None else conn.token.max(now)
        if conn.base is not None and ((not result.new and not result.records) or not still_wanted()):
            pos = str(conn.base)
        else:
            pos = await self.connections.save(conn, started, token, result.digest, result.records)
        return SlidingSyncResponse(pos, result.lists, result.rooms, result.extensions)

    async def _compute(self, req: SlidingSyncRequest, conn: Connection, now: StreamToken) -> _Pass:
        user_id = req.user_id
        since = None if conn.token is None else conn.token.min(now)
        rooms, _changed = await self.room_lists.candidate_rooms(user_id, now, since)
        lists = await self.room_lists.compute(user_id, rooms, req.lists)

        configs: dict[str, RoomConfig] = {}
        for name, result in lists.items():
            room_config = req.lists[name].room
            for room_id in result.all_rooms():
                configs[room_id] = configs[room_id].merge(room_config) if room_id in configs else room_config
        for room_id, room_config in req.room_subscriptions.items():
            if room_id in rooms:  # rooms the user never was in are not served (no peeking)
                configs[room_id] = configs[room_id].merge(room_config) if room_id in configs else room_config

        changed_live = await self._live_rooms_with_events(conn, configs, rooms, since, now)
        results: dict[str, RoomResult] = {}
        records: dict[str, RoomRecord] = {}
        keys: dict[tuple[str, RoomConfig], str] = {}
        for room_id, room_config in configs.items():
            info = rooms[room_id]
            previous = conn.rooms.get(room_id)
            if previous is not None and changed_live.get(room_id) is False:
                # The common case of a long-poll: a live room with nothing new, asked for as before.
                key = keys.get((info.membership.membership, room_config))
                if key is None:
                    key = keys[(info.membership.membership, room_config)] = config_key(
                        info.membership.membership, room_config)
                if key == previous.config:
                    continue
            plan = RoomPlan(room_id, info.membership, room_config, previous, info.bump_stamp)
            entry, record = await self.room_data.compute(user_id, req.device_id, plan, since, now,
                                                         has_events=changed_live.get(room_id))
            if entry is not None:
                results[room_id] = entry
            # (A live room's `sent_upto` is the position's token: no need to write it down again.)
            if previous is None or (previous.status, previous.config, previous.lazy_members) != (
                    record.status, record.config, record.lazy_members):
                records[room_id] = record
        room_position = self.hs.events_stream.room_position
        for room_id, previous in conn.rooms.items():
            if previous.status == "live" and room_id not in configs and conn.token is not None:
                records[room_id] = RoomRecord("previously", room_position(conn.token, room_id), previous.config,
                                              previous.lazy_members)
        await self._add_counts(user_id, results, rooms, now)

        digest = {name: [r.count, _digest(r)] for name, r in lists.items()}
        joined = [r for r, info in rooms.items() if info.membership.membership == "join"]
        extensions, ext_new = await self._extensions(req, conn, now, lists, joined, results)
        new = bool(results) or digest != conn.lists or ext_new
        watch = list(dict.fromkeys([*rooms, *req.room_subscriptions]))
        return _Pass(lists, digest, results, records, extensions, new, watch)

    async def _live_rooms_with_events(self, conn: Connection, configs: dict[str, RoomConfig],
                                      rooms: dict[str, RoomInfo], since: StreamToken | None, now: StreamToken,
                                      ) -> dict[str, bool]:
        """For the joined rooms already live on the connection: whether they had events since it
        (asked once for all of them, per events writer)."""
        if since is None:
            return {}
        live = [r for r in configs if (rec := conn.rooms.get(r)) is not None and rec.status == "live"
                and rooms[r].membership.membership == "join"]
        out = dict.fromkeys(live, False)
        store = self.hs.event_store
        for writer, ids in self.hs.events_stream.rooms_by_writer(live).items():
            for room_id in await store.get_rooms_with_events_between(
                    ids, since.writer_position("events", writer), now.writer_position("events", writer)):
                out[room_id] = True
        return out

    async def _add_counts(self, user_id: str, results: dict[str, RoomResult], rooms: dict[str, RoomInfo],
                          now: StreamToken) -> None:
        """Unread counts (as /sync's), member counts and heroes of the joined rooms sent, and whether
        each room is a DM."""
        if not results:
            return
        joined = [r for r in results if results[r].membership == "join"]
        counts = await self.hs.push_store.get_unread_counts(user_id, joined, now.get("events")) if joined else {}
        for room_id in joined:
            threads = counts.get(room_id, {})
            results[room_id].notification_count = sum(n for n, _ in threads.values())
            results[room_id].highlight_count = sum(h for _, h in threads.values())
        wanted = [r for r, entry in results.items() if entry.needs_counts]
        if wanted:
            members = await self.connections.store.get_member_counts(wanted)
            for room_id in wanted:
                results[room_id].joined_count = members.get(room_id, {}).get("join", 0)
                results[room_id].invited_count = members.get(room_id, {}).get("invite", 0)
        await self.room_data.add_heroes(user_id, results)
        dms = await self.room_lists.dm_rooms(user_id)
        for room_id, entry in results.items():
            entry.is_dm = room_id in dms

    async def _extensions(self, req: SlidingSyncRequest, conn: Connection, now: StreamToken,
                          lists: dict[str, ListResult], joined: list[str], results: dict[str, RoomResult],
                          ) -> tuple[dict[str, Any], bool]:
        if not req.extensions:
            return {}, False
        from hs.services.sliding_sync.extensions import ExtensionRequest, compute_extensions

        # Rooms back in the lists after a time out of them count as sent from scratch for the
        # extensions too: their account data, receipts and typing are sent whole rather than the
        # changes since `since`, which would miss what changed while the room was out.
        initial = {room_id: [e["event_id"] for e in (r.timeline or []) if "event_id" in e]
                   for room_id, r in results.items()
                   if r.initial or r.expanded_timeline
                   or ((rec := conn.rooms.get(room_id)) is not None and rec.status == "previously")}
        ext_request = ExtensionRequest(
            user_id=req.user_id, device_id=req.device_id, requested=req.extensions,
            since=None if conn.token is None else conn.token.min(now), upto=now,
            lists={name: r.all_rooms() for name, r in lists.items()},
            subscriptions=list(req.room_subscriptions), joined=joined, initial=initial)
        return await compute_extensions(self.hs, ext_request)


def _digest(result: ListResult) -> str:
    """A list's rooms in range, in order, as a short digest (to tell whether the list changed)."""
    h = hashlib.sha256()
    for rng, ids in zip(result.ranges, result.room_ids, strict=True):
        h.update(f"{rng[0]}-{rng[1]}:".encode())
        for room_id in ids:
            h.update(room_id.encode() + b",")
        h.update(b";")
    return h.hexdigest()[:32]
