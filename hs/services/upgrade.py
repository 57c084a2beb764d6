"""Room upgrades (POST /rooms/{roomId}/upgrade): a new room of another version replaces an old one.

As the spec describes (and Synapse does): the upgrader needs the power to send `m.room.tombstone` in
the old room. The new room's create event names its predecessor and keeps the room type; the state
users expect to keep is copied (join rules, history visibility, guest access, name, topic, avatar,
encryption, server ACLs, pinned events, space children and parents, bans, power levels: with the
upgrader raised while copying and the copied levels restored last; in a version where creators are
privileged, creators are left out of the copied `users`). Local aliases move to the new room, and so
does a room directory listing. The old room gets a tombstone pointing at the new one, and its power
levels are raised so that ordinary members can no longer talk or invite there.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hs.errors import MatrixError, bad_json, forbidden
from hs.events.auth import get_room_creators, get_send_level, get_user_power_level
from hs.events.event import Event, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from hs.services.rooms import MEMBER, check_room_id, is_valid_user_id

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)

# Copied in this order (single state events), then the keyed ones below, then the power levels.
COPIED_STATE = ("m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.name",
                "m.room.topic", "m.room.avatar", "m.room.encryption", "m.room.server_acl", "m.room.pinned_events")
COPIED_KEYED = ("m.space.child", "m.space.parent")
MAX_COPIED_BANS = 10_000


class RoomUpgrader:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store

    async def upgrade(self, requester: Requester, old_room_id: str, new_version: Any,
                      additional_creators: Any = None) -> str:
        user_id = requester.user_id
        check_room_id(old_room_id)
        if not isinstance(new_version, str):
            raise bad_json("'new_version' must be a string")
        rv = KNOWN_ROOM_VERSIONS.get(new_version)
        if rv is None:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", f"Unsupported room version {new_version!r}")
        creators_extra: list[str] = []
        if additional_creators is not None:
            if not rv.privileged_creators:
                raise bad_json("'additional_creators' needs a room version with privileged creators")
            if not isinstance(additional_creators, list) or not all(
                    isinstance(u, str) and is_valid_user_id(u) for u in additional_creators):
                raise bad_json("'additional_creators' must be a list of user IDs")
            creators_extra = list(dict.fromkeys(u for u in additional_creators if u != user_id))

        state = await self.store.get_current_state_events(old_room_id)
        old_create = state.get(("m.room.create", ""))
        member = state.get((MEMBER, user_id))
        if old_create is None or member is None or member.membership != "join":
            raise forbidden("You are not in the room")
        old_rv = old_create.room_version
        if get_user_power_level(user_id, state, old_rv) < get_send_level(state, "m.room.tombstone", True, old_rv):
            raise forbidden("You don't have permission to upgrade the room")

        new_room_id = await self._create(rv, user_id, old_create, creators_extra)
        await self._copy_state(rv, new_room_id, user_id, state, {user_id, *creators_extra})
        await self._move_aliases(rv, requester, old_room_id, new_room_id, state)
        await self.hs.event_sender.send(old_room_id, user_id, "m.room.tombstone", {
            "body": "This room has been replaced", "replacement_room": new_room_id}, state_key="")
        await self._restrict_old_room(old_room_id, user_id, state)
        return new_room_id

    async def _create(self, rv: RoomVersion, user_id: str, old_create: Event, creators_extra: list[str]) -> str:
        content: dict[str, Any] = {"room_version": rv.identifier, "predecessor": {"room_id": old_create.room_id}}
        if not rv.implicit_room_creator:
            content["creator"] = user_id
        room_type = old_create.content.get("type")
        if isinstance(room_type, str):
            content["type"] = room_type
        if creators_extra:
            content["additional_creators"] = creators_extra
        new_id = None if rv.room_id_from_create_event else await self.hs.rooms.new_room_id()
        create = await self.hs.event_sender.create_room_event(rv, user_id, content, new_id)
        room_id: str = create.room_id
        await self.hs.event_sender.send(room_id, user_id, MEMBER, {
            "membership": "join", **await self.hs.rooms.profile_content(user_id)}, state_key=user_id, room_version=rv)
        return room_id

    async def _copy_state(self, rv: RoomVersion, room_id: str, user_id: str, state: dict[StateKey, Event],
                          creators: set[str]) -> None:
        sender = self.hs.event_sender
        old_pl = state.get(("m.room.power_levels", ""))
        levels = integer_levels(old_pl.content) if old_pl is not None else {}
        users = levels.get("users") or {}
        if rv.privileged_creators:
            users = {u: lvl for u, lvl in users.items() if u not in creators}
        else:
            old_create = state[("m.room.create", "")]
            if old_create.room_version.privileged_creators or old_pl is None:
                # The old room's creators outranked every level (or had 100 by default): 100 here.
                for creator in get_room_creators(state, old_create.room_version) | {user_id}:
                    users[creator] = max(users.get(creator, 0), 100)
        levels["users"] = users
        # While copying, the upgrader (the new room's creator, at 100 until the first power levels)
        # may send anything up to 100, in versions without privileged creators.
        needed = 100
        if rv.privileged_creators:
            await sender.send(room_id, user_id, "m.room.power_levels", levels, state_key="", room_version=rv)
        else:
            await sender.send(room_id, user_id, "m.room.power_levels",
                              {**levels, "users": {**users, user_id: needed}}, state_key="", room_version=rv)
        for etype in COPIED_STATE:
            ev = state.get((etype, ""))
            if ev is not None and ev.content:
                await self._send_copy(rv, room_id, user_id, etype, ev.content, "")
        for (etype, state_key), ev in sorted(state.items()):
            if etype in COPIED_KEYED and ev.content:
                await self._send_copy(rv, room_id, user_id, etype, ev.content, state_key)
        bans = [k[1] for k, ev in sorted(state.items()) if k[0] == MEMBER and ev.membership == "ban"]
        for banned in bans[:MAX_COPIED_BANS]:
            await self._send_copy(rv, room_id, user_id, MEMBER, {"membership": "ban"}, banned)
        if not rv.privileged_creators:
            await sender.send(room_id, user_id, "m.room.power_levels", levels, state_key="", room_version=rv)

    async def _send_copy(self, rv: RoomVersion, room_id: str, user_id: str, etype: str, content: dict[str, Any],
                         state_key: str) -> None:
        try:
            await self.hs.event_sender.send(room_id, user_id, etype, dict(content), state_key=state_key,
                                            room_version=rv)
        except MatrixError as e:  # content the new version's rules refuse: leave it behind
            logger.warning("upgrade of %s: not copying %s/%s: %s", room_id, etype, state_key, e.msg)

    async def _move_aliases(self, rv: RoomVersion, requester: Requester, old_room_id: str, new_room_id: str,
                            state: dict[StateKey, Event]) -> None:
        rooms = self.hs.room_store
        for alias in await rooms.get_aliases_for_room(old_room_id):
            entry = await rooms.get_alias(alias)
            await rooms.delete_alias(alias)
            await rooms.create_alias(alias, new_room_id, entry["creator"] if entry else requester.user_id)
        canonical = state.get(("m.room.canonical_alias", ""))
        if canonical is not None and canonical.content:
            await self._send_copy(rv, new_room_id, requester.user_id, "m.room.canonical_alias",
                                  canonical.content, "")
            try:
                await self.hs.event_sender.send(old_room_id, requester.user_id, "m.room.canonical_alias", {},
                                                state_key="")
            except MatrixError as e:
                logger.warning("upgrade of %s: could not clear the old canonical alias: %s", old_room_id, e.msg)
        room = await rooms.get_room(old_room_id)
        if room is not None and room.get("is_public"):
            await rooms.set_room_is_public(new_room_id, True)
            await rooms.set_room_is_public(old_room_id, False)

    async def _restrict_old_room(self, room_id: str, user_id: str, state: dict[StateKey, Event]) -> None:
        old_pl = state.get(("m.room.power_levels", ""))
        content: dict[str, Any] = dict(old_pl.content) if old_pl is not None else {}
        users_default = content.get("users_default", 0)
        restricted = max(50, (users_default if isinstance(users_default, int) else 0) + 1)
        content["events_default"] = max(restricted, content.get("events_default", 0)
                                         if isinstance(content.get("events_default"), int) else 0)
        content["invite"] = max(restricted, content.get("invite", 0) if isinstance(content.get("invite"), int) else 0)
        try:
            await self.hs.event_sender.send(room_id, user_id, "m.room.power_levels", content, state_key="")
        except MatrixError as e:
            logger.warning("upgrade of %s: could not restrict the old room: %s", room_id, e.msg)


def integer_levels(content: dict[str, Any]) -> dict[str, Any]:
    """Power levels with numeric strings (allowed before room v10) as integers, as v10+ requires;
    values that are neither are dropped."""
    def level(value: Any) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
        return None

    out: dict[str, Any] = {}
    for key, value in content.items():
        if key in ("users", "events", "notifications"):
            if isinstance(value, dict):
                out[key] = {k: lv for k, v in value.items() if isinstance(k, str) and (lv := level(v)) is not None}
        elif (lv := level(value)) is not None:
            out[key] = lv
    return out
