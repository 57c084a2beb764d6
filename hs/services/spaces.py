"""The space hierarchy (GET /rooms/{roomId}/hierarchy): a space and the rooms below it, depth first.

Only rooms this server knows are described (rooms it would have to ask other servers about are left
out until federation exists). A room is shown when the requester is joined or invited, or could
join or knock (public, knock; restricted when they are in one of the allowed rooms), or its history
is world-readable; otherwise it, and whatever is below it, is left out. Children are ordered as the
spec says: a valid `order` first (by code point), then by the `m.space.child` event's timestamp,
then by room ID. A room reached twice (spaces may loop) is shown once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hs.api.params import MAX_OFFSET, parse_int
from hs.errors import forbidden

if TYPE_CHECKING:
    from hs.events.event import Event
    from hs.server import HomeServer

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
DEFAULT_MAX_DEPTH = 5
MAX_MAX_DEPTH = 20
CHILD = "m.space.child"


@dataclass(frozen=True)
class HierarchyRequest:
    room_id: str
    suggested_only: bool = False
    max_depth: int = DEFAULT_MAX_DEPTH
    limit: int = DEFAULT_LIMIT
    offset: int = 0  # rooms already returned by earlier pages


def valid_order(content: dict[str, Any]) -> str | None:
    """An `order` the spec accepts: a string of at most 50 printable ASCII characters."""
    order = content.get("order")
    if isinstance(order, str) and len(order) <= 50 and all("\x20" <= c <= "\x7e" for c in order):
        return order
    return None


def order_children(children: list[Event]) -> list[Event]:
    def key(ev: Event) -> tuple[int, str, int, str]:
        order = valid_order(ev.content)
        return (0 if order is not None else 1, order or "", ev.origin_server_ts, ev.state_key or "")

    return sorted(children, key=key)


@dataclass(frozen=True)
class HierarchyToken:
    """Where a page continues, and the walk's parameters, which later pages must repeat."""

    offset: int
    suggested_only: bool
    max_depth: int


def encode_token(req: HierarchyRequest, offset: int) -> str:
    return f"{offset}_{int(req.suggested_only)}_{req.max_depth}"


def decode_token(token: str) -> HierarchyToken:
    """A `from` token; ValueError when it is not one this server gave."""
    parts = token.split("_")
    if len(parts) != 3 or parts[1] not in ("0", "1"):
        raise ValueError(token)
    return HierarchyToken(parse_int(parts[0], "from", maximum=MAX_OFFSET, error=ValueError), parts[1] == "1",
                          parse_int(parts[2], "from", maximum=MAX_MAX_DEPTH, error=ValueError))


class SpaceHierarchy:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store

    async def get(self, user_id: str, req: HierarchyRequest) -> dict[str, Any]:
        root = req.room_id
        if not await self.may_preview(user_id, root):
            raise forbidden("You are not allowed to view this room.")
        rooms: list[dict[str, Any]] = []
        seen: set[str] = set()
        wanted_end = req.offset + req.limit
        position = 0
        more = False
        # Depth first: a stack of (room, depth), children pushed in reverse so the first comes next.
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            room_id, depth = stack.pop()
            if room_id in seen:
                continue
            seen.add(room_id)
            if room_id != root and not await self.may_preview(user_id, room_id):
                continue
            summary = await self.hs.room_summaries.entry(room_id)
            if summary is None:
                continue
            if position >= wanted_end:
                more = True
                break
            children = await self._children(room_id, req.suggested_only)
            if position >= req.offset:
                summary["children_state"] = [_stripped(ev) for ev in children]
                rooms.append(summary)
            position += 1
            if depth < req.max_depth:
                for ev in reversed(children):
                    stack.append((ev.state_key or "", depth + 1))
        body: dict[str, Any] = {"rooms": rooms}
        if more:
            body["next_batch"] = encode_token(req, position)
        return body

    async def _children(self, room_id: str, suggested_only: bool) -> list[Event]:
        """The room's valid m.space.child events (non-empty `via`), in the spec's order."""
        events = await self.store.get_current_state_events(room_id, [(CHILD, None)])
        children = []
        for ev in events.values():
            via = ev.content.get("via")
            if not ev.state_key or not isinstance(via, list) or not via:
                continue
            if suggested_only and ev.content.get("suggested") is not True:
                continue
            children.append(ev)
        return order_children(children)

    async def may_preview(self, user_id: str | None, room_id: str) -> bool:
        """Whether the user (None: an unauthenticated client) may see the room's summary: a member
        or invitee, or anyone when the room is public, knockable or world-readable, or (restricted)
        when they are in an allowed room."""
        membership = await self.store.get_membership(room_id, user_id) if user_id is not None else None
        if membership is not None and membership[0] in ("join", "invite"):
            return True
        if membership is not None and membership[0] == "ban":
            return False
        wanted: list[tuple[str, str | None]] = [
            ("m.room.join_rules", ""), ("m.room.history_visibility", ""), ("m.room.create", "")]
        content = {k: ev.content for k, ev in (await self.store.get_current_state_events(room_id, wanted)).items()}
        if ("m.room.create", "") not in content:
            return False  # not a room this server knows
        rule = content.get(("m.room.join_rules", ""), {}).get("join_rule")
        if rule in ("public", "knock", "knock_restricted"):
            return True
        if content.get(("m.room.history_visibility", ""), {}).get("history_visibility") == "world_readable":
            return True
        if rule in ("restricted", "knock_restricted") and user_id is not None:
            allow = content.get(("m.room.join_rules", ""), {}).get("allow")
            for entry in allow if isinstance(allow, list) else []:
                other = entry.get("room_id") if isinstance(entry, dict) else None
                if isinstance(other, str):
                    joined = await self.store.get_membership(other, user_id)
                    if joined is not None and joined[0] == "join":
                        return True
        return False


def _stripped(ev: Event) -> dict[str, Any]:
    return {"type": ev.type, "state_key": ev.state_key, "content": ev.content, "sender": ev.sender,
            "origin_server_ts": ev.origin_server_ts}
