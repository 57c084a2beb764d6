"""The published room directory: whether a room is listed (GET/PUT /directory/list/room/{roomId})
and the list itself (/publicRooms), each room described by its summary (`RoomSummaries.entry`).

Who may publish a room, or delete others' aliases, is Synapse's rule: a joined member allowed to send
`m.room.canonical_alias`, or a server admin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.errors import forbidden, invalid_param, not_found
from hs.events.auth import get_send_level, get_user_power_level
from hs.events.event import JsonDict
from hs.services.room_ids import check_room_id
from hs.services.room_membership import MEMBER

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester


class RoomDirectory:
    """Which rooms this server lists publicly, who may change that, and the list itself."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.rooms = hs.room_store

    async def _is_server_admin(self, user_id: str) -> bool:
        user = await self.hs.user_store.get_user(user_id)
        return bool(user and user.get("admin"))


    async def can_change_room_list(self, room_id: str, user_id: str) -> bool:
        """Synapse's rule for publishing a room or deleting others' aliases: a joined member allowed to
        send m.room.canonical_alias (or a server admin)."""
        if await self._is_server_admin(user_id):
            return True
        state = await self.hs.event_store.get_current_state_events(room_id, [
            ("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""), (MEMBER, user_id)])
        member = state.get((MEMBER, user_id))
        if member is None or member.membership != "join":
            return False
        rv = await self.rooms.get_room_version(room_id)
        level = get_send_level(state, "m.room.canonical_alias", True, rv)
        return get_user_power_level(user_id, state, rv) >= level

    async def get_visibility(self, room_id: str) -> str:
        check_room_id(room_id)
        room = await self.rooms.get_room(room_id)
        if room is None:
            raise not_found("Room not found")
        return "public" if room["is_public"] else "private"

    async def set_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        check_room_id(room_id)
        if visibility not in ("public", "private"):
            raise invalid_param("Invalid visibility setting")
        if not await self.rooms.room_exists(room_id):
            raise not_found("Room not found")
        if not await self.can_change_room_list(room_id, requester.user_id):
            raise forbidden("This user is not permitted to publish rooms to the room list")
        await self.rooms.set_room_is_public(room_id, visibility == "public")

    async def public_rooms(self, limit: int | None, since: str | None, search_term: str | None,
                           room_types: list[str | None] | None) -> JsonDict:
        offset = 0
        if since:
            if since[:1] not in ("n", "p") or not since[1:].isdigit():
                raise invalid_param("Invalid since token")
            offset = int(since[1:])
        entries = []
        for room_id in await self.rooms.get_public_room_ids():
            entry = await self.hs.room_summaries.entry(room_id)
            if entry is None:
                continue
            if room_types is not None and entry.get("room_type") not in room_types:
                continue
            if search_term:
                term = search_term.casefold()
                haystack = [entry.get("name"), entry.get("topic"), entry.get("canonical_alias")]
                if not any(isinstance(h, str) and term in h.casefold() for h in haystack):
                    continue
            entries.append(entry)
        entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
        total = len(entries)
        end = total if limit is None else offset + limit
        result: JsonDict = {"chunk": entries[offset:end], "total_room_count_estimate": total}
        if end < total:
            result["next_batch"] = f"n{end}"
        if offset > 0:
            result["prev_batch"] = f"p{max(0, offset - (limit or offset))}"
        return result


