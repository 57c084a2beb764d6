"""Event relationships: /relations, /threads, and the aggregations bundled with parent events.

Relations (`m.relates_to` with a `rel_type`) are indexed in `event_relations` as events are persisted
(hs/db/stores/events.py) and dropped when the child is redacted. Aggregations are bundled into the
parent's `unsigned.m.relations` by /messages, /context, /event, /relations and /threads:
`m.thread` (latest reply, count, whether the user took part), `m.replace` (the newest edit by the
original sender, in full) and `m.reference` (the referencing event IDs). /sync does not bundle them
(a woken /sync would pay a query for it); clients see thread replies and edits arrive there anyway.

Pagination tokens are stream positions (`r<position>`); /relations also takes a /messages token
(`t<depth>-<position>`) or a /sync token (`s...`) as its `from`, as the spec allows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from hs.db.stores.relations import RelationsStore
from hs.errors import invalid_param, not_found
from hs.events.event import Event
from hs.services.room_history import MAX_LIMIT
from hs.services.serialize import serialize_events
from hs.streams.tokens import InvalidToken, StreamToken, TopologicalToken

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

DEFAULT_LIMIT = 50
THREAD, REPLACE, REFERENCE = "m.thread", "m.replace", "m.reference"
END = 2 ** 62


def decode_position(token: str, room_position: Callable[[StreamToken], int]) -> int:
    """A stream position from a relations token, a /messages token or a /sync token (at the room's
    position in it: `room_position`, its writer's)."""
    try:
        if token.startswith("r") and token[1:].isascii() and token[1:].isdigit() and len(token) < 20:
            return int(token[1:])
        if token.startswith("t"):
            return TopologicalToken.decode(token).stream + 1
        return room_position(StreamToken.decode(token)) + 1
    except (InvalidToken, ValueError):
        raise invalid_param(f"Invalid pagination token {token[:100]!r}") from None


class RelationsService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = RelationsStore(hs.db)

    # -- /relations ---------------------------------------------------------------------------------------
    async def relations(self, requester: Requester, room_id: str, parent_id: str, rel_type: str | None,
                        event_type: str | None, from_token: str | None, to_token: str | None, limit: int,
                        forwards: bool) -> dict[str, Any]:
        user_id = requester.user_id
        access = await self.hs.room_history.check_read_access(user_id, room_id)
        parent = await self.hs.event_store.get_event(parent_id)
        if parent is None or parent.room_id != room_id or not await self.hs.visibility.is_visible(
                user_id, parent, access.membership):
            raise not_found("Event not found")
        limit = min(max(limit, 1), MAX_LIMIT)
        room_position = partial(self.hs.events_stream.room_position, room_id=room_id)
        start = decode_position(from_token, room_position) if from_token else None
        stop = decode_position(to_token, room_position) if to_token else None
        # Backwards: below `from` (exclusive), down to `to`; forwards: from `from` up, below `to`.
        lower, upper = (start, stop) if forwards else (stop, start)
        if access.cap is not None:  # a departed member sees what came before they left
            cap = (access.cap.internal.stream_ordering or 0) + 1
            upper = cap if upper is None else min(upper, cap)
        rows = await self.store.children(parent_id, room_id, rel_type, event_type, lower=lower, upper=upper,
                                         limit=limit + 1, forwards=forwards)
        more = len(rows) > limit
        rows = rows[:limit]
        body: dict[str, Any] = {"chunk": await self._visible_chunk(
            requester, room_id, access.membership, [r["event_id"] for r in rows])}
        if more and rows:
            last = int(rows[-1]["stream_ordering"])
            body["next_batch"] = f"r{last + 1}" if forwards else f"r{last}"
        if from_token:
            body["prev_batch"] = from_token
        return body

    # -- /threads -----------------------------------------------------------------------------------------
    async def threads(self, requester: Requester, room_id: str, participated_only: bool, from_token: str | None,
                      limit: int) -> dict[str, Any]:
        """Thread roots, the most recently active first."""
        user_id = requester.user_id
        access = await self.hs.room_history.check_read_access(user_id, room_id)
        limit = min(max(limit, 1), MAX_LIMIT)
        room_position = partial(self.hs.events_stream.room_position, room_id=room_id)
        before = decode_position(from_token, room_position) if from_token else END
        participant = user_id if participated_only else None  # wrote the root or a reply
        rows = await self.store.thread_roots(room_id, before, participant, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        body: dict[str, Any] = {"chunk": await self._visible_chunk(
            requester, room_id, access.membership, [r["root"] for r in rows])}
        if more and rows:
            body["next_batch"] = f"r{int(rows[-1]['latest'])}"
        return body

    async def _visible_chunk(self, requester: Requester, room_id: str, membership: str | None,
                             event_ids: list[str]) -> list[dict[str, Any]]:
        """The events (in this order) the user may see, serialized with their aggregations."""
        found = await self.hs.event_store.get_events(event_ids)
        events = [found[e] for e in event_ids if e in found]
        visible = await self.hs.visibility.filter_events_for_user(requester.user_id, events, {room_id: membership})
        return await self.serialize(visible, requester)

    # -- bundled aggregations -------------------------------------------------------------------------------
    async def serialize(self, events: list[Event], requester: Requester) -> list[dict[str, Any]]:
        """Events in the client format with their aggregations bundled."""
        out = await serialize_events(self.hs, events, requester.device_id)
        await self.bundle(events, out, requester)
        return out

    async def bundle(self, events: list[Event], serialized: list[dict[str, Any]], requester: Requester) -> None:
        """Add `unsigned.m.relations` to the serialized `events` (same order) that have children."""
        by_id = {ev.event_id: ev for ev in events if not ev.internal.redacted_by}
        if not by_id:
            return
        rows = await self.store.aggregated_children(sorted(by_id))
        if not rows:
            return
        aggregations: dict[str, dict[str, Any]] = {}
        latest_reply: dict[str, str] = {}
        latest_edit: dict[str, str] = {}
        for r in rows:
            parent = by_id[r["relates_to_id"]]
            agg = aggregations.setdefault(parent.event_id, {})
            if r["relation_type"] == THREAD:
                thread = agg.setdefault(THREAD, {"count": 0, "current_user_participated":
                                                 parent.sender == requester.user_id})
                thread["count"] += 1
                thread["current_user_participated"] |= r["sender"] == requester.user_id
                latest_reply[parent.event_id] = r["event_id"]
            elif r["relation_type"] == REPLACE and r["sender"] == parent.sender:
                latest_edit[parent.event_id] = r["event_id"]
            elif r["relation_type"] == REFERENCE:
                agg.setdefault(REFERENCE, {"chunk": []})["chunk"].append({"event_id": r["event_id"]})
        wanted = [*latest_reply.values(), *latest_edit.values()]
        found = await self.hs.event_store.get_events(wanted)
        # The latest edit and thread reply pass the reader's visibility like any event they get (an
        # ignored sender's reply is left out, an erased sender's edit is pruned for later joiners).
        children = await self.hs.visibility.filter_events_for_user(
            requester.user_id, [found[e] for e in wanted if e in found])
        full = dict(zip((ev.event_id for ev in children),
                        await serialize_events(self.hs, children, requester.device_id), strict=True))
        for parent_id, reply_id in latest_reply.items():
            if reply_id in full:
                aggregations[parent_id][THREAD]["latest_event"] = full[reply_id]
        for parent_id, edit_id in latest_edit.items():
            if edit_id in full:
                aggregations[parent_id][REPLACE] = full[edit_id]
        for ev, out in zip(events, serialized, strict=True):
            bundled = aggregations.get(ev.event_id)
            if bundled is not None and THREAD in bundled and "latest_event" not in bundled[THREAD]:
                del bundled[THREAD]  # its latest reply is gone
            if bundled:
                out.setdefault("unsigned", {})["m.relations"] = bundled
