"""Reads of the relations index (`event_relations`, written with the events in hs/db/stores/events.py):
an event's children, a room's thread roots, and the rows its parents' aggregations are built from."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Database
from hs.db.stores.where import Where


class RelationsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def children(self, parent_id: str, room_id: str, rel_type: str | None, event_type: str | None, *,
                       lower: int | None, upper: int | None, limit: int, forwards: bool) -> list[dict[str, Any]]:
        """{event_id, stream_ordering} of the parent's children at positions in [lower, upper) (either
        end open when None), oldest first when `forwards`, else newest first; `event_type` counts only
        with a `rel_type`."""
        where = Where()
        where.add("relates_to_id = {}", parent_id)
        where.add("room_id = {}", room_id)
        if rel_type is not None:
            where.add("relation_type = {}", rel_type)
            if event_type is not None:
                where.add("event_type = {}", event_type)
        if lower is not None:
            where.add("stream_ordering >= {}", lower)
        if upper is not None:
            where.add("stream_ordering < {}", upper)
        return await self.db.fetch(
            f"SELECT event_id, stream_ordering FROM event_relations WHERE {where}"
            f" ORDER BY stream_ordering {'ASC' if forwards else 'DESC'} LIMIT {where.arg(limit)}", *where.args)

    async def thread_roots(self, room_id: str, before: int, participant: str | None,
                           limit: int) -> list[dict[str, Any]]:
        """{root, latest} of the room's threads whose latest reply is below `before`, the most recently
        active first; with a `participant`, only threads they wrote the root of or replied to."""
        where = Where()
        room, upper = where.arg(room_id), where.arg(before)
        having = [f"MAX(r.stream_ordering) < {upper}"]
        if participant is not None:
            n = where.arg(participant)
            having.append(f"(SUM(CASE WHEN r.sender = {n} THEN 1 ELSE 0 END) > 0 OR MIN(e.sender) = {n})")
        return await self.db.fetch(
            "SELECT r.relates_to_id AS root, MAX(r.stream_ordering) AS latest FROM event_relations r"
            " JOIN events e ON e.event_id = r.relates_to_id"
            f" WHERE r.room_id = {room} AND r.relation_type = 'm.thread'"
            f" GROUP BY r.relates_to_id HAVING {' AND '.join(having)}"
            f" ORDER BY latest DESC LIMIT {where.arg(limit)}", *where.args)

    async def aggregated_children(self, parent_ids: list[str]) -> list[dict[str, Any]]:
        """{relates_to_id, event_id, relation_type, sender, stream_ordering} of the parents' threads,
        edits and references, oldest first."""
        where = Where()
        where.add(f"relates_to_id IN ({where.marks(parent_ids)})")
        return await self.db.fetch(
            "SELECT relates_to_id, event_id, relation_type, sender, stream_ordering FROM event_relations"
            f" WHERE {where} AND relation_type IN ('m.thread', 'm.replace', 'm.reference')"
            " ORDER BY stream_ordering", *where.args)
