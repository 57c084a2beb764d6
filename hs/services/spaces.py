"""The space hierarchy (GET /rooms/{roomId}/hierarchy): a space and the rooms below it, depth first.

A room this server is in is described from its state here. A child room it is not in is asked of the
servers its `m.space.child` event names (`via`), over federation; their answer also describes that
room's children, used as they are unless they are spaces to descend into. A room is shown when the
requester is joined or invited, or could join or knock (public, knock; restricted when they are in
one of the allowed rooms), or its history is world-readable; otherwise it, and whatever is below it,
is left out. Children are ordered as the spec says: a valid `order` first (by code point), then by
the `m.space.child` event's timestamp, then by room ID. A room reached twice (spaces may loop) is
shown once. Remote answers are not cached between requests: each page asks again.

Other servers ask `GET /_matrix/federation/v1/hierarchy/{roomId}` (`for_server`): the room and its
children one level down, without paging, for rooms this server is in and the asking server may see
(public, knockable or world-readable; a user of that server joined or invited; restricted to a room
that server is in). Children this server is not in are left out; those the asker may not see are
named in `inaccessible_children`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hs.api.params import MAX_OFFSET, parse_int
from hs.errors import forbidden, not_found
from hs.events.auth import get_domain

if TYPE_CHECKING:
    from hs.events.event import Event
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
DEFAULT_MAX_DEPTH = 5
MAX_MAX_DEPTH = 20
CHILD = "m.space.child"
MAX_CHILDREN_FOR_SERVER = 50  # children described in one federation answer (Synapse's cap too)
MAX_VIA_ASKED = 3  # servers asked in turn about a child room this server is not in
REMOTE_TIMEOUT = 10.0  # seconds for one server's answer


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


def order_children(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stripped m.space.child events in the spec's order."""
    def key(ev: dict[str, Any]) -> tuple[int, str, int, str]:
        order = valid_order(ev["content"])
        ts = ev.get("origin_server_ts")
        return (0 if order is not None else 1, order or "", ts if isinstance(ts, int) else 0, ev["state_key"])

    return sorted(children, key=key)


def valid_child(ev: Any, suggested_only: bool) -> bool:
    """An m.space.child event (stripped) that names a room: a room ID state key and a non-empty
    `via` of server names; with `suggested_only`, marked suggested."""
    if not isinstance(ev, dict) or ev.get("type") != CHILD:
        return False
    state_key, content = ev.get("state_key"), ev.get("content")
    if not isinstance(state_key, str) or not state_key.startswith("!") or not isinstance(content, dict):
        return False
    via = content.get("via")
    if not isinstance(via, list) or not via or not all(isinstance(v, str) for v in via):
        return False
    return not suggested_only or content.get("suggested") is True


@dataclass
class _Walk:
    """What one hierarchy request learnt from other servers: rooms they described as children (used
    without asking again unless they are spaces to descend into) and rooms they said are closed."""

    described: dict[str, dict[str, Any]] = field(default_factory=dict)
    inaccessible: set[str] = field(default_factory=set)


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
        walk = _Walk()
        wanted_end = req.offset + req.limit
        position = 0
        more = False
        # Depth first: a stack of (room, depth, via), children pushed in reverse so the first comes next.
        stack: list[tuple[str, int, list[str]]] = [(root, 0, [])]
        while stack:
            room_id, depth, via = stack.pop()
            if room_id in seen:
                continue
            seen.add(room_id)
            found = await self._describe(user_id, room_id, root, via, depth, req, walk)
            if found is None:
                continue
            summary, children = found
            if position >= wanted_end:
                more = True
                break
            if position >= req.offset:
                summary["children_state"] = children
                rooms.append(summary)
            position += 1
            if depth < req.max_depth:
                for ev in reversed(children):
                    stack.append((ev["state_key"], depth + 1, ev["content"]["via"]))
        body: dict[str, Any] = {"rooms": rooms}
        if more:
            body["next_batch"] = encode_token(req, position)
        return body

    async def _describe(self, user_id: str, room_id: str, root: str, via: list[str], depth: int,
                        req: HierarchyRequest, walk: _Walk) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """(summary, ordered children) of a room the user may see, or None. A child room this server is
        not in is asked of the servers its m.space.child event names."""
        if room_id != root and via and not await self._server_joined(room_id):
            remote = await self._describe_remote(user_id, room_id, via, depth, req, walk)
            if remote is not None:
                return remote
        if room_id != root and not await self.may_preview(user_id, room_id):
            return None
        summary = await self.hs.room_summaries.entry(room_id)
        if summary is None:
            return None
        return summary, await self._children(room_id, req.suggested_only)

    async def _describe_remote(self, user_id: str, room_id: str, via: list[str], depth: int,
                               req: HierarchyRequest, walk: _Walk,
                               ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        room = walk.described.get(room_id)
        if room is None or (room.get("room_type") == "m.space" and depth < req.max_depth):
            if room_id in walk.inaccessible:
                return None
            answer = await self._ask_hierarchy(room_id, via, req.suggested_only)
            if answer is None:
                return None
            room = answer["room"]
            for child in answer["children"]:
                walk.described.setdefault(child["room_id"], child)
            walk.inaccessible.update(answer["inaccessible_children"])
        room = dict(room)
        if not await self._user_may_see_remote(user_id, room_id, room):
            return None
        children_state = room.pop("children_state", None)
        children = [ev for ev in children_state if valid_child(ev, req.suggested_only)] \
            if isinstance(children_state, list) else []
        room.pop("allowed_room_ids", None)  # for the asking server's check, not for clients
        room.pop("allowed_spaces", None)
        return room, order_children(children)

    async def _ask_hierarchy(self, room_id: str, via: list[str], suggested_only: bool) -> dict[str, Any] | None:
        """The first good federation hierarchy answer of the `via` servers (None if none gives one)."""
        from urllib.parse import quote

        from hs.federation.client import FederationError

        path = f"/_matrix/federation/v1/hierarchy/{quote(room_id, safe='')}"
        for server in [v for v in dict.fromkeys(via) if v != self.hs.server_name][:MAX_VIA_ASKED]:
            try:
                body = await self.hs.federation_client.get_json(
                    server, path, {"suggested_only": "true" if suggested_only else "false"},
                    timeout=REMOTE_TIMEOUT)
            except FederationError as e:
                logger.info("hierarchy of %s from %s: %s", room_id, server, e)
                continue
            room = body.get("room") if isinstance(body, dict) else None
            if not isinstance(room, dict) or room.get("room_id") != room_id:
                logger.info("hierarchy of %s from %s: no summary of the room in the answer", room_id, server)
                continue
            children = body.get("children")
            inaccessible = body.get("inaccessible_children")
            return {
                "room": room,
                "children": [c for c in children if isinstance(c, dict) and isinstance(c.get("room_id"), str)]
                if isinstance(children, list) else [],
                "inaccessible_children": [r for r in inaccessible if isinstance(r, str)]
                if isinstance(inaccessible, list) else [],
            }
        return None

    async def _user_may_see_remote(self, user_id: str, room_id: str, room: dict[str, Any]) -> bool:
        """Synapse's rule for a room another server described: public, knockable or world-readable,
        or the user in one of the rooms its restricted join rule allows, or joined or invited here."""
        if room.get("join_rule") in ("public", "knock", "knock_restricted") or room.get("world_readable") is True:
            return True
        allowed = room.get("allowed_room_ids")
        for other in allowed if isinstance(allowed, list) else []:
            if isinstance(other, str):
                membership = await self.store.get_membership(other, user_id)
                if membership is not None and membership[0] == "join":
                    return True
        membership = await self.store.get_membership(room_id, user_id)
        return membership is not None and membership[0] in ("join", "invite")

    async def _children(self, room_id: str, suggested_only: bool) -> list[dict[str, Any]]:
        """The room's valid m.space.child events (stripped), in the spec's order."""
        events = await self.store.get_current_state_events(room_id, [(CHILD, None)])
        return order_children([c for c in (_stripped(ev) for ev in events.values()) if valid_child(c, suggested_only)])

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

    # -- for other servers ---------------------------------------------------------------------------
    async def for_server(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        """The federation hierarchy answer: `room` (with its `children_state`), `children` (their
        summaries, each with its own `children_state`) and `inaccessible_children`; 404 when this
        server is not in the room or `origin` may not see it."""
        room = await self._server_entry(origin, room_id, suggested_only) \
            if await self.server_may_preview(origin, room_id) else None
        if room is None:
            raise not_found(f"Unknown room: {room_id}")
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for state in room["children_state"][:MAX_CHILDREN_FOR_SERVER]:
            child = state["state_key"]
            if child == room_id or not await self._server_joined(child):
                continue  # not a room this server can describe
            entry = await self._server_entry(origin, child, suggested_only) \
                if await self.server_may_preview(origin, child) else None
            if entry is None:
                inaccessible.append(child)
            else:
                children.append(entry)
        return {"room": room, "children": children, "inaccessible_children": inaccessible}

    async def _server_entry(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any] | None:
        """A room's summary as other servers get it: with its version, encryption, the rooms a
        restricted join rule names (`allowed_room_ids`, for the asker to filter by) and its children."""
        entry = await self.hs.room_summaries.entry(room_id)
        if entry is None:
            return None
        version = await self.hs.room_store.get_room_version_id(room_id)
        if version is not None:
            entry["room_version"] = version
        wanted: list[tuple[str, str | None]] = [("m.room.encryption", ""), ("m.room.join_rules", "")]
        state = await self.store.get_current_state_events(room_id, wanted)
        encryption = state.get(("m.room.encryption", ""))
        algorithm = encryption.content.get("algorithm") if encryption is not None else None
        if isinstance(algorithm, str):
            entry["encryption"] = algorithm
        join_rules = state.get(("m.room.join_rules", ""))
        if join_rules is not None and join_rules.content.get("join_rule") in ("restricted", "knock_restricted"):
            entry["allowed_room_ids"] = _allowed_rooms(join_rules.content)
        entry["children_state"] = await self._children(room_id, suggested_only)
        return entry

    async def _server_joined(self, room_id: str, server: str | None = None) -> bool:
        """Whether a user of `server` (this one by default) is joined to the room, as known here."""
        server = server or self.hs.server_name
        return any(get_domain(m) == server for m in await self.store.get_joined_members(room_id))

    async def server_may_preview(self, origin: str, room_id: str) -> bool:
        """Whether another server may see the room's summary: this server must be in the room (so its
        state is current), and the room public, knockable or world-readable, or a user of `origin`
        joined or invited, or (restricted) `origin` in one of the allowed rooms."""
        if not await self._server_joined(room_id):
            return False
        wanted: list[tuple[str, str | None]] = [("m.room.join_rules", ""), ("m.room.history_visibility", "")]
        state = {k: ev.content for k, ev in (await self.store.get_current_state_events(room_id, wanted)).items()}
        join_rules = state.get(("m.room.join_rules", ""), {})
        if join_rules.get("join_rule") in ("public", "knock", "knock_restricted"):
            return True
        if state.get(("m.room.history_visibility", ""), {}).get("history_visibility") == "world_readable":
            return True
        members = await self.store.get_current_state_events(room_id, [("m.room.member", None)])
        if any(get_domain(key[1]) == origin and ev.membership in ("join", "invite") for key, ev in members.items()):
            return True
        if join_rules.get("join_rule") == "restricted":
            for allowed in _allowed_rooms(join_rules):
                if await self._server_joined(allowed, origin):
                    return True
        return False


def _allowed_rooms(join_rules: dict[str, Any]) -> list[str]:
    allow = join_rules.get("allow")
    return [a["room_id"] for a in allow if isinstance(a, dict) and a.get("type") == "m.room_membership"
            and isinstance(a.get("room_id"), str)] if isinstance(allow, list) else []


def _stripped(ev: Event) -> dict[str, Any]:
    return {"type": ev.type, "state_key": ev.state_key, "content": ev.content, "sender": ev.sender,
            "origin_server_ts": ev.origin_server_ts}
