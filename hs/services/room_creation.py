"""POST /createRoom: the request validated and turned into the new room's events, in Synapse's order
(the creator's join, power levels from the preset or the request, the canonical alias, the preset's join
rules, history visibility and guest access, initial_state, name, topic, invites), which
`hs/services/new_room.py` then creates all or nothing.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from hs.db.stores.rooms import NewRoom
from hs.errors import (
    MatrixError,
    bad_json,
    bad_request,
    guest_access_forbidden,
    invalid_param,
    invalid_room_state,
    room_in_use,
    unsupported_room_version,
)
from hs.events.auth import get_domain, is_valid_user_id
from hs.events.event import JsonDict, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from hs.services.new_room import InitialEvent
from hs.services.new_room import create_room as create_new_room
from hs.services.room_ids import parse_alias
from hs.services.room_membership import MEMBER

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join",
                     "invite_level": 0, "invitees_are_admins": False},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join",
                             "invite_level": 0, "invitees_are_admins": True},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden",
                    "invite_level": 50, "invitees_are_admins": False},
}
_ALIAS_LOCALPART_BAD = re.compile(r"[\s:#]")


class RoomCreator:
    """Turns a createRoom request into a new room."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def create_room(self, requester: Requester, body: JsonDict) -> str:
        """POST /createRoom: the room is created with every event the request implies, or not at all.

        The request is validated first; then the events (creator's join, power levels, alias, presets,
        initial_state, name, topic, invites) are built and persisted with the room's rows in one
        transaction on the room's persister (`hs/services/new_room.py`), so an event the auth rules
        refuse, or a failure while storing, leaves no half-built room.
        """
        user_id = requester.user_id
        if requester.is_guest:
            raise guest_access_forbidden("Guest access is not allowed")
        cfg = self._validate_create_body(body)
        self.hs.ratelimiters["message"].check(user_id)
        rv: RoomVersion = cfg["room_version"]
        preset = PRESETS[cfg["preset"]]
        invitees: list[str] = [u for u in cfg["invite"] if u != user_id]

        alias = None
        if cfg["room_alias_name"] is not None:
            alias = f"#{cfg['room_alias_name']}:{self.hs.server_name}"
            parse_alias(alias)
            if await self.hs.room_store.get_alias(alias) is not None:
                raise room_in_use("Room alias already taken")

        create_content: JsonDict = dict(cfg["creation_content"])
        create_content.pop("creator", None)
        create_content["room_version"] = rv.identifier
        if not rv.implicit_room_creator:
            create_content["creator"] = user_id
        if rv.privileged_creators and preset["invitees_are_admins"] and invitees:
            extra = create_content.get("additional_creators")
            extra = list(extra) if isinstance(extra, list) else []
            create_content["additional_creators"] = list(dict.fromkeys(extra + invitees))
        if rv.privileged_creators and "additional_creators" in create_content:
            extra = create_content["additional_creators"]
            if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
                raise bad_json("additional_creators must be a list of user IDs")

        # Local invitees' invites are built with the room; another server's user is invited once the
        # room exists, since their server must co-sign the invite (federation's /invite).
        local_invitees = [u for u in invitees if get_domain(u) == self.hs.server_name]
        remote_invitees = [u for u in invitees if get_domain(u) != self.hs.server_name]
        initial = await self._initial_events(cfg, rv, user_id, preset, local_invitees, alias)
        room = NewRoom(creator=user_id, is_public=cfg["visibility"] == "public", alias=alias)
        try:
            room_id = await create_new_room(self.hs, rv, user_id, create_content, initial, room)
        except MatrixError as e:
            if e.errcode == "M_FORBIDDEN":  # the auth rules refused an event the request asked for
                raise invalid_room_state(f"Invalid initial state: {e.msg}") from None
            raise
        for invitee in remote_invitees:
            direct: JsonDict = {"is_direct": True} if cfg["is_direct"] else {}
            try:
                await self.hs.room_membership.update_membership(requester, room_id, invitee, "invite",
                                                                content=direct, ratelimit=False)
            except MatrixError as e:  # the room stands; the client may invite again (as Synapse)
                logger.warning("createRoom %s: inviting %s failed: %s", room_id, invitee, e.msg)
        return room_id

    async def _initial_events(self, cfg: JsonDict, rv: RoomVersion, user_id: str, preset: dict[str, Any],
                              invitees: list[str], alias: str | None) -> list[InitialEvent]:
        """The events after the create event, in Synapse's order."""
        def state(etype: str, content: JsonDict, state_key: str = "") -> InitialEvent:
            return InitialEvent(user_id, etype, content, state_key)

        initial_state: dict[StateKey, JsonDict] = {}
        for item in cfg["initial_state"]:
            initial_state[(item["type"], item.get("state_key", ""))] = item["content"]
        initial_state.pop(("m.room.create", ""), None)

        profile = self.hs.room_membership.profile_content
        events = [state(MEMBER, {"membership": "join", **await profile(user_id)}, user_id)]
        pl_initial = initial_state.pop(("m.room.power_levels", ""), None)
        if pl_initial is None:
            pl_initial = self._default_power_levels(rv, user_id, preset, invitees,
                                                    cfg["power_level_content_override"])
        events.append(state("m.room.power_levels", pl_initial))
        if alias is not None:
            events.append(state("m.room.canonical_alias", {"alias": alias}))
        for key, field in (("m.room.join_rules", "join_rule"), ("m.room.history_visibility", "history_visibility"),
                           ("m.room.guest_access", "guest_access")):
            if (key, "") not in initial_state:
                events.append(state(key, {field: preset[field]}))
        for (etype, state_key), content in initial_state.items():
            if cfg["name"] is not None and (etype, state_key) == ("m.room.name", ""):
                continue
            if cfg["topic"] is not None and (etype, state_key) == ("m.room.topic", ""):
                continue
            events.append(state(etype, content, state_key))
        if cfg["name"] is not None:
            events.append(state("m.room.name", {"name": cfg["name"]}))
        if cfg["topic"] is not None:
            topic = cfg["topic"]
            events.append(state("m.room.topic", {
                "topic": topic, "m.topic": {"m.text": [{"body": topic, "mimetype": "text/plain"}]}}))
        for invitee in invitees:
            invite: JsonDict = {"membership": "invite", **await profile(invitee)}
            if cfg["is_direct"]:
                invite["is_direct"] = True
            events.append(state(MEMBER, invite, invitee))
        return events

    def _validate_create_body(self, body: JsonDict) -> JsonDict:
        def opt(key: str, typ: type, what: str) -> Any:
            value = body.get(key)
            if value is not None and not isinstance(value, typ):
                raise bad_json(f"'{key}' must be {what}")
            return value

        visibility = opt("visibility", str, "a string") or "private"
        if visibility not in ("public", "private"):
            raise bad_json("'visibility' must be 'public' or 'private'")
        preset = opt("preset", str, "a string")
        if preset is None:
            preset = "public_chat" if visibility == "public" else "private_chat"
        if preset not in PRESETS:
            raise bad_json(f"'{preset}' is not a valid preset")
        version_id = opt("room_version", str, "a string") or self.hs.config.default_room_version
        if version_id not in KNOWN_ROOM_VERSIONS:
            raise unsupported_room_version("Your homeserver does not support this room version")
        alias_name = opt("room_alias_name", str, "a string")
        if alias_name is not None and (not alias_name or _ALIAS_LOCALPART_BAD.search(alias_name)):
            raise invalid_param("Invalid characters in room alias")
        invite = opt("invite", list, "a list of user IDs") or []
        for u in invite:
            if not isinstance(u, str):
                raise bad_json("'invite' must be a list of user IDs")
            if not is_valid_user_id(u):
                raise invalid_param(f"Invalid user ID {u!r}")
        invite_3pid = opt("invite_3pid", list, "a list") or []
        if invite_3pid:
            raise bad_request("Third party invites are not supported by this server")
        initial_state = opt("initial_state", list, "a list of state events") or []
        for item in initial_state:
            if (not isinstance(item, dict) or not isinstance(item.get("type"), str)
                    or not isinstance(item.get("content"), dict)
                    or not isinstance(item.get("state_key", ""), str)):
                raise bad_json("initial_state entries need 'type' and 'content' (and a string 'state_key')")
            if item["type"] == MEMBER:
                raise invalid_room_state("initial_state may not contain member events")
        return {
            "visibility": visibility,
            "preset": preset,
            "room_version": KNOWN_ROOM_VERSIONS[version_id],
            "room_alias_name": alias_name,
            "name": opt("name", str, "a string"),
            "topic": opt("topic", str, "a string"),
            "invite": list(dict.fromkeys(invite)),
            "initial_state": initial_state,
            "creation_content": opt("creation_content", dict, "an object") or {},
            "power_level_content_override": opt("power_level_content_override", dict, "an object") or {},
            "is_direct": bool(opt("is_direct", bool, "a boolean")),
        }

    @staticmethod
    def _default_power_levels(rv: RoomVersion, creator: str, preset: dict[str, Any], invitees: list[str],
                              override: JsonDict) -> JsonDict:
        users: dict[str, int] = {}
        if not rv.privileged_creators:
            users[creator] = 100
            if preset["invitees_are_admins"]:
                for u in invitees:
                    users[u] = 100
        content: JsonDict = {
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 150 if rv.privileged_creators else 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": preset["invite_level"],
        }
        content.update(override)
        return content

