"""Reading a room's state and members as a client may: GET /state, /state/{type}/{key}, /members
(now or at a pagination token) and /joined_members. A departed member reads the state as it was when
they left (`RoomHistory.check_read_access`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.errors import forbidden, not_found
from hs.events.event import JsonDict, StateKey
from hs.services.room_history import Point, ReadAccess, point_of
from hs.services.room_membership import MEMBER
from hs.services.serialize import serialize_events

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester


class RoomStateReader:
    """A room's state as the requester may see it: now, or as it was when they left."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store

    async def _state_ids_for_access(self, room_id: str, access: ReadAccess) -> dict[StateKey, str]:
        if access.cap is not None:
            return await self.store.get_state_group(access.cap.internal.state_group_after)
        return await self.store.get_current_state_ids(room_id)

    async def get_state(self, requester: Requester, room_id: str) -> list[JsonDict]:
        access = await self.hs.room_history.check_read_access(requester.user_id, room_id)
        ids = await self._state_ids_for_access(room_id, access)
        evs = await self.store.get_events(list(ids.values()))
        ordered = sorted(evs.values(), key=lambda e: e.internal.stream_ordering or 0)
        return await serialize_events(self.hs, ordered)

    async def get_state_event(self, requester: Requester, room_id: str, etype: str, state_key: str,
                              fmt: str = "content") -> JsonDict:
        access = await self.hs.room_history.check_read_access(requester.user_id, room_id)
        ids = await self._state_ids_for_access(room_id, access)
        eid = ids.get((etype, state_key))
        ev = await self.store.get_event(eid) if eid is not None else None
        if ev is None:
            raise not_found(f"Event not found: no {etype} state with key {state_key!r}")
        serialized = (await serialize_events(self.hs, [ev]))[0]
        if fmt == "event":
            return serialized
        return dict(serialized.get("content") or {})

    async def get_members(self, requester: Requester, room_id: str, at: str | None, membership: str | None,
                          not_membership: str | None) -> list[JsonDict]:
        access = await self.hs.room_history.check_read_access(requester.user_id, room_id)
        if at is not None:
            point = await self.hs.room_history.parse_token(room_id, at)
            if access.cap is not None:
                point = min(point, point_of(access.cap))
            ids = await self._state_ids_at(room_id, point)
        else:
            ids = await self._state_ids_for_access(room_id, access)
        member_ids = [eid for (t, _sk), eid in ids.items() if t == MEMBER]
        evs = await self.store.get_events(member_ids)
        out = []
        for ev in sorted(evs.values(), key=lambda e: e.state_key or ""):
            m = ev.membership
            if membership is not None or not_membership is not None:
                keep = (membership is not None and m == membership) or (
                    not_membership is not None and m != not_membership)
                if not keep:
                    continue
            out.append(ev)
        return await serialize_events(self.hs, out)

    async def get_joined_members(self, requester: Requester, room_id: str) -> dict[str, JsonDict]:
        access = await self.hs.room_history.check_read_access(requester.user_id, room_id)
        if access.membership != "join":
            raise forbidden("Getting joined members while not being a current member of the room is forbidden.")
        ids = await self.store.get_current_state_ids(room_id)
        evs = await self.store.get_events([eid for (t, _), eid in ids.items() if t == MEMBER])
        joined: dict[str, JsonDict] = {}
        for ev in evs.values():
            if ev.membership != "join" or ev.state_key is None:
                continue
            info: JsonDict = {}
            if isinstance(ev.content.get("displayname"), str):
                info["display_name"] = ev.content["displayname"]
            if isinstance(ev.content.get("avatar_url"), str):
                info["avatar_url"] = ev.content["avatar_url"]
            joined[ev.state_key] = info
        return joined

    async def _state_ids_at(self, room_id: str, point: Point) -> dict[StateKey, str]:
        """The room state after the last event at or before `point`."""
        return await self.store.get_state_group(await self.store.get_state_group_at(room_id, point[0], point[1]))

