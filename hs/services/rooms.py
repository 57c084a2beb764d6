"""Rooms as clients see them: creation, membership, sending, reading state and history, aliases and the
published room directory.

Every write goes through `EventSender.send`, which builds the event, checks it against the auth rules and
persists it; this service adds what the client-server API puts on top: request validation, presets,
profile data on member events, transaction IDs, deduplication of no-op changes (as Synapse does) and
history visibility on reads.

Pagination tokens name a *gap* between events: `t<depth>-<stream>` is the gap just after the event at
that topological position, so "backwards from a token" returns events at or before it and "forwards"
returns events after it. Sync tokens (`s<events>_...`) are accepted too and name the gap after the
room's last event at or before that stream position.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hs.db.stores.rooms import NewRoom
from hs.errors import MatrixError, bad_json, forbidden, invalid_param, missing_param, not_found
from hs.events.auth import (
    get_join_rule,
    get_named_level,
    get_send_level,
    get_user_power_level,
    is_valid_server_name,
    is_valid_user_id,
)
from hs.events.event import Event, JsonDict, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from hs.services.new_room import InitialEvent
from hs.services.new_room import create_room as create_new_room
from hs.services.serialize import serialize_events
from hs.streams.tokens import InvalidToken, StreamToken, TopologicalToken
from hs.util import random_string

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)

MEMBER = "m.room.member"
MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")
# Events scanned at most by one /messages or /context request while skipping events the user may not
# see or the filter excludes; past this the response carries an `end` token to continue from.
MAX_SCAN = 2000
MAX_LIMIT = 1000

PRESETS: dict[str, dict[str, Any]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join",
                     "invite_level": 0, "invitees_are_admins": False},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join",
                             "invite_level": 0, "invitees_are_admins": True},
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden",
                    "invite_level": 50, "invitees_are_admins": False},
}

# A point in a room's timeline: the gap just after the event at (depth, stream_ordering).
Point = tuple[int, int]
_ALIAS_LOCALPART_BAD = re.compile(r"[\s:#]")


@dataclass
class ReadAccess:
    """How much of a room a user may read: all of it (joined or world readable), or up to their leave."""

    membership: str | None
    # For users who left or were banned: their last membership event; reads stop there.
    cap: Event | None = None


@dataclass
class EventFilter:
    """The parts of a RoomEventFilter /messages and /context apply."""

    types: list[str] | None = None
    not_types: list[str] | None = None
    senders: list[str] | None = None
    not_senders: list[str] | None = None
    rooms: list[str] | None = None
    not_rooms: list[str] | None = None
    contains_url: bool | None = None
    limit: int | None = None
    lazy_load_members: bool = False

    @classmethod
    def parse(cls, raw: Any) -> EventFilter:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise bad_json("filter must be a JSON object")
        f = cls()
        for key in ("types", "not_types", "senders", "not_senders", "rooms", "not_rooms"):
            value = raw.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad_json(f"filter '{key}' must be a list of strings")
            setattr(f, key, value)
        if raw.get("contains_url") is not None:
            if not isinstance(raw["contains_url"], bool):
                raise bad_json("filter 'contains_url' must be a boolean")
            f.contains_url = raw["contains_url"]
        if raw.get("limit") is not None:
            limit = raw["limit"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise bad_json("filter 'limit' must be an integer greater than 0")
            f.limit = limit
        for key in ("lazy_load_members", "include_redundant_members"):
            if raw.get(key) is not None and not isinstance(raw[key], bool):
                raise bad_json(f"filter '{key}' must be a boolean")
        f.lazy_load_members = bool(raw.get("lazy_load_members"))
        return f

    def allows_room(self, room_id: str) -> bool:
        if self.not_rooms is not None and room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def matches(self, ev: Event) -> bool:
        if self.not_types is not None and any(_type_matches(p, ev.type) for p in self.not_types):
            return False
        if self.types is not None and not any(_type_matches(p, ev.type) for p in self.types):
            return False
        if self.not_senders is not None and ev.sender in self.not_senders:
            return False
        if self.senders is not None and ev.sender not in self.senders:
            return False
        if self.contains_url is not None:
            has_url = isinstance(ev.content.get("url"), str)
            if has_url != self.contains_url:
                return False
        return True


def _type_matches(pattern: str, etype: str) -> bool:
    if "*" not in pattern:
        return pattern == etype
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, etype) is not None


def check_room_id(room_id: str) -> None:
    if not room_id.startswith("!") or len(room_id) < 2:
        raise invalid_param(f"'{room_id}' is not a valid room ID")


def parse_alias(alias: str) -> tuple[str, str]:
    """(localpart, server) of a room alias, or 400 M_INVALID_PARAM."""
    localpart, sep, server = alias[1:].partition(":")
    if (not alias.startswith("#") or not sep or not localpart or len(alias.encode()) > 255
            or not is_valid_server_name(server)):
        raise invalid_param("Room alias invalid")
    return localpart, server


def _point_of(ev: Event) -> Point:
    return (ev.depth, int(ev.internal["stream_ordering"]))


def _gap_before(ev: Event) -> Point:
    return (ev.depth, int(ev.internal["stream_ordering"]) - 1)


def encode_point(point: Point) -> str:
    return TopologicalToken(point[0], point[1]).encode()


class RoomService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.rooms = hs.room_store

    # == helpers ============================================================================================
    async def room_exists(self, room_id: str) -> bool:
        return await self.rooms.get_room_version_id(room_id) is not None

    async def _room_version(self, room_id: str) -> RoomVersion | None:
        vid = await self.rooms.get_room_version_id(room_id)
        return None if vid is None else KNOWN_ROOM_VERSIONS[vid]

    async def _current_state_events(self, room_id: str, keys: list[StateKey]) -> dict[StateKey, Event]:
        return await self.store.get_current_state_events(room_id, [(t, sk) for t, sk in keys])

    async def _auth_state(self, room_id: str, user_id: str) -> dict[StateKey, Event]:
        return await self._current_state_events(room_id, [
            ("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""), (MEMBER, user_id)])

    async def _current_content(self, room_id: str, etype: str, state_key: str = "") -> JsonDict | None:
        ev = await self.store.get_current_state_event(room_id, etype, state_key)
        return ev.content if ev is not None else None

    async def _history_visibility(self, room_id: str) -> str:
        content = await self._current_content(room_id, "m.room.history_visibility")
        value = content.get("history_visibility") if content else None
        return value if isinstance(value, str) else "shared"

    async def is_server_admin(self, user_id: str) -> bool:
        user = await self.hs.user_store.get_user(user_id)
        return bool(user and user.get("admin"))

    async def profile_content(self, user_id: str) -> JsonDict:
        if user_id.partition(":")[2] != self.hs.server_name:
            return {}
        profile = await self.hs.user_store.get_profile(user_id) or {}
        return {k: profile[k] for k in ("displayname", "avatar_url") if profile.get(k) is not None}

    async def can_change_room_list(self, room_id: str, user_id: str) -> bool:
        """Synapse's rule for publishing a room or deleting others' aliases: a joined member allowed to
        send m.room.canonical_alias (or a server admin)."""
        if await self.is_server_admin(user_id):
            return True
        state = await self._auth_state(room_id, user_id)
        member = state.get((MEMBER, user_id))
        if member is None or member.membership != "join":
            return False
        rv = await self._room_version(room_id)
        level = get_send_level(state, "m.room.canonical_alias", True, rv)
        return get_user_power_level(user_id, state, rv) >= level

    # == room creation ======================================================================================
    async def create_room(self, requester: Requester, body: JsonDict) -> str:
        """POST /createRoom: the room is created with every event the request implies, or not at all.

        The request is validated first; then the events (creator's join, power levels, alias, presets,
        initial_state, name, topic, invites) are built and persisted with the room's rows in one
        transaction on the room's persister (`hs/services/new_room.py`), so an event the auth rules
        refuse, or a failure while storing, leaves no half-built room.
        """
        user_id = requester.user_id
        if requester.is_guest:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed")
        cfg = self._validate_create_body(body)
        self.hs.ratelimiters["message"].check(user_id)
        rv: RoomVersion = cfg["room_version"]
        preset = PRESETS[cfg["preset"]]
        invitees: list[str] = [u for u in cfg["invite"] if u != user_id]

        alias = None
        if cfg["room_alias_name"] is not None:
            alias = f"#{cfg['room_alias_name']}:{self.hs.server_name}"
            parse_alias(alias)
            if await self.rooms.get_alias(alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")

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

        initial = await self._initial_events(cfg, rv, user_id, preset, invitees, alias)
        room = NewRoom(creator=user_id, is_public=cfg["visibility"] == "public", alias=alias)
        try:
            return await create_new_room(self.hs, rv, user_id, create_content, initial, room)
        except MatrixError as e:
            if e.errcode == "M_FORBIDDEN":  # the auth rules refused an event the request asked for
                raise MatrixError(400, "M_INVALID_ROOM_STATE", f"Invalid initial state: {e.msg}") from None
            raise

    async def _initial_events(self, cfg: JsonDict, rv: RoomVersion, user_id: str, preset: dict[str, Any],
                              invitees: list[str], alias: str | None) -> list[InitialEvent]:
        """The events after the create event, in Synapse's order."""
        def state(etype: str, content: JsonDict, state_key: str = "") -> InitialEvent:
            return InitialEvent(user_id, etype, content, state_key)

        initial_state: dict[StateKey, JsonDict] = {}
        for item in cfg["initial_state"]:
            initial_state[(item["type"], item.get("state_key", ""))] = item["content"]
        initial_state.pop(("m.room.create", ""), None)

        events = [state(MEMBER, {"membership": "join", **await self.profile_content(user_id)}, user_id)]
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
            invite: JsonDict = {"membership": "invite", **await self.profile_content(invitee)}
            if cfg["is_direct"]:
                invite["is_direct"] = True
            events.append(state(MEMBER, invite, invitee))
        return events

    async def new_room_id(self) -> str:
        """A fresh v1-v11 room ID; with several event persisters, one this instance writes if it can."""
        stream = self.hs.events_stream
        for _ in range(64):
            room_id = f"!{random_string(18)}:{self.hs.server_name}"
            if not stream.is_writer or stream.is_writer_for_room(room_id):
                return room_id
        return room_id

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
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION", "Your homeserver does not support this room version")
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
            raise MatrixError(400, "M_UNKNOWN", "Third party invites are not supported by this server")
        initial_state = opt("initial_state", list, "a list of state events") or []
        for item in initial_state:
            if (not isinstance(item, dict) or not isinstance(item.get("type"), str)
                    or not isinstance(item.get("content"), dict)
                    or not isinstance(item.get("state_key", ""), str)):
                raise bad_json("initial_state entries need 'type' and 'content' (and a string 'state_key')")
            if item["type"] == MEMBER:
                raise MatrixError(400, "M_INVALID_ROOM_STATE", "initial_state may not contain member events")
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

    # == membership =========================================================================================
    async def resolve_room(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("!"):
            return room_id_or_alias
        if room_id_or_alias.startswith("#"):
            parse_alias(room_id_or_alias)
            row = await self.rooms.get_alias(room_id_or_alias)
            if row is None:
                raise not_found(f"Room alias {room_id_or_alias} not found")
            return str(row["room_id"])
        raise invalid_param(f"{room_id_or_alias!r} is not a legal room ID or room alias")

    async def update_membership(self, requester: Requester, room_id: str, target: str, action: str,
                                reason: str | None = None, content: JsonDict | None = None,
                                ratelimit: bool = True) -> Event:
        """Change `target`'s membership: action is join, invite, leave, kick, ban or unban."""
        check_room_id(room_id)
        user_id = requester.user_id
        membership = {"kick": "leave", "unban": "leave"}.get(action, action)
        if membership not in MEMBERSHIPS or membership == "knock":
            raise bad_json(f"Unknown membership {action!r}")
        rv = await self._room_version(room_id)
        if rv is None:
            if membership in ("join", "leave") and target == user_id:
                raise not_found("No known servers" if membership == "join" else "Not a known room")
            raise forbidden("Unknown room")
        new_content: JsonDict = dict(content or {})
        new_content["membership"] = membership
        if reason is not None:
            new_content["reason"] = reason
        if membership in ("join", "invite"):
            for k, v in (await self.profile_content(target)).items():
                new_content.setdefault(k, v)
        current = await self.store.get_membership(room_id, target)
        if current is not None:
            old = await self.store.get_event(current[1])
            if (old is not None and old.membership == membership and old.sender == user_id
                    and old.content == new_content):
                return old  # a no-op change: Synapse returns the existing event
        if membership == "join":
            await self._prepare_join(requester, room_id, rv, new_content, current)
            if ratelimit and (current is None or current[0] != "join"):
                self.hs.ratelimiters["joins_local"].check(user_id)
        elif action == "unban" and (current is None or current[0] != "ban"):
            raise forbidden(f"{target} is not banned from the room")
        return await self.hs.event_sender.send(room_id, user_id, MEMBER, new_content, state_key=target,
                                               room_version=rv)

    async def _prepare_join(self, requester: Requester, room_id: str, rv: RoomVersion, content: JsonDict,
                            current: tuple[str, str] | None) -> None:
        user_id = requester.user_id
        if requester.is_guest:
            guest = await self._current_content(room_id, "m.room.guest_access")
            if not guest or guest.get("guest_access") != "can_join":
                raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")
        if current is not None and current[0] in ("join", "invite"):
            return
        state = await self._auth_state(room_id, user_id)
        rule = get_join_rule(state)
        if rule in ("restricted", "knock_restricted") and rv.restricted_join_rule:
            content.pop("join_authorised_via_users_server", None)
            authoriser = await self._restricted_join_authoriser(room_id, user_id, state)
            if authoriser is None:
                raise forbidden("You do not belong to any of the required rooms/spaces to join this room.")
            content["join_authorised_via_users_server"] = authoriser

    async def _restricted_join_authoriser(self, room_id: str, user_id: str,
                                          state: dict[StateKey, Event]) -> str | None:
        """A joined local user able to invite, if `user_id` is joined to a room the allow list names."""
        jr = state.get(("m.room.join_rules", ""))
        allow = jr.content.get("allow") if jr is not None else None
        allowed_rooms = [a.get("room_id") for a in allow or [] if isinstance(a, dict)
                         and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)]
        joined = await self.store.get_rooms_for_user(user_id, ("join",))
        if not any(r in joined for r in allowed_rooms):
            return None
        rv = await self._room_version(room_id)
        pl_state = await self._current_state_events(room_id, [("m.room.create", ""), ("m.room.power_levels", "")])
        invite_level = get_named_level(pl_state, "invite", rv)
        for member in sorted(await self.store.get_joined_members(room_id)):
            if member.partition(":")[2] != self.hs.server_name:
                continue
            if get_user_power_level(member, pl_state, rv) >= invite_level:
                return member
        return None

    async def join(self, requester: Requester, room_id_or_alias: str, reason: str | None = None) -> str:
        room_id = await self.resolve_room(room_id_or_alias)
        await self.update_membership(requester, room_id, requester.user_id, "join", reason)
        return room_id

    async def knock(self, requester: Requester, room_id_or_alias: str, reason: str | None = None) -> str:
        """POST /knock: ask to join a local room. The auth rules decide (join rule `knock`, or
        `knock_restricted` where the room version has it; not banned, invited or joined). Accepting is an
        invite, rejecting a kick, and the knocker rescinds with /leave (all through update_membership)."""
        user_id = requester.user_id
        if requester.is_guest:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed")
        room_id = await self.resolve_room(room_id_or_alias)
        check_room_id(room_id)
        rv = await self._room_version(room_id)
        if rv is None:
            # Only local rooms are known; knocking over federation is not built.
            raise not_found("No known servers")
        if not rv.knock_join_rule:
            raise forbidden(f"Room version {rv.identifier} does not support knocking")
        content: JsonDict = {"membership": "knock", **await self.profile_content(user_id)}
        if reason is not None:
            content["reason"] = reason
        current = await self.store.get_membership(room_id, user_id)
        if current is not None and current[0] == "knock":
            old = await self.store.get_event(current[1])
            if old is not None and old.sender == user_id and old.content == content:
                return room_id  # a no-op change, as update_membership treats one
        else:
            # Knocks count against the join rate limit (rc_joins), as in Synapse.
            self.hs.ratelimiters["joins_local"].check(user_id)
        await self.hs.event_sender.send(room_id, user_id, MEMBER, content, state_key=user_id, room_version=rv)
        return room_id

    async def forget(self, requester: Requester, room_id: str) -> None:
        check_room_id(room_id)
        current = await self.store.get_membership(room_id, requester.user_id)
        if current is None:
            if not await self.room_exists(room_id):
                raise not_found("Room not found")
        elif current[0] == "join":
            raise MatrixError(400, "M_UNKNOWN", f"User {requester.user_id} is in room {room_id}")
        await self.store.forget(requester.user_id, room_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return sorted(await self.store.get_rooms_for_user(user_id, ("join",)))

    # == sending ============================================================================================
    async def _require_room_for_send(self, room_id: str) -> RoomVersion:
        check_room_id(room_id)
        rv = await self._room_version(room_id)
        if rv is None:
            raise forbidden("Unknown room")
        return rv

    async def send_event(self, requester: Requester, room_id: str, etype: str, content: JsonDict,
                         txn_id: str) -> str:
        """PUT /send: idempotent per (user, device, room, txn_id)."""
        redacts = None
        if etype == "m.room.redaction":
            target = content.get("redacts")
            if not isinstance(target, str):
                raise bad_json("m.room.redaction needs a 'redacts' event ID")
            redacts = target
        return await self._send_with_txn(requester, room_id, etype, content, txn_id, redacts)

    async def _send_with_txn(self, requester: Requester, room_id: str, etype: str, content: JsonDict,
                             txn_id: str, redacts: str | None) -> str:
        """A client send keyed by a transaction ID: a replay answers with the original event before
        any rate limit, and the sender is told the lookup was done so it is not repeated."""
        check_room_id(room_id)
        user_id = requester.user_id
        existing = await self.store.get_event_id_for_txn(user_id, requester.device_id, room_id, txn_id)
        if existing is not None:
            return str(existing)
        rv = await self._require_room_for_send(room_id)
        self.hs.ratelimiters["message"].check(user_id)
        ev = await self.hs.event_sender.send(room_id, user_id, etype, content,
                                             txn=(user_id, requester.device_id, txn_id), redacts=redacts,
                                             room_version=rv, txn_checked=True)
        self.hs.presence.user_active(user_id)
        return ev.event_id

    async def send_state(self, requester: Requester, room_id: str, etype: str, state_key: str,
                         content: JsonDict) -> str:
        rv = await self._require_room_for_send(room_id)
        user_id = requester.user_id
        if etype == MEMBER:
            membership = content.get("membership")
            if not isinstance(membership, str):
                raise bad_json("m.room.member content needs a 'membership' string")
            if not is_valid_user_id(state_key):
                raise invalid_param("The state key of m.room.member must be a user ID")
            rest = {k: v for k, v in content.items() if k != "membership"}
            reason = rest.pop("reason", None)
            if reason is not None and not isinstance(reason, str):
                raise bad_json("'reason' must be a string")
            ev = await self.update_membership(requester, room_id, state_key, membership, reason, rest)
            return ev.event_id
        if etype == "m.room.canonical_alias":
            await self._check_canonical_alias(room_id, content)
        current = await self.store.get_current_state_event(room_id, etype, state_key)
        if current is not None and current.sender == user_id and current.content == content:
            return current.event_id
        self.hs.ratelimiters["message"].check(user_id)
        ev = await self.hs.event_sender.send(room_id, user_id, etype, content, state_key=state_key,
                                             room_version=rv)
        return ev.event_id

    async def _check_canonical_alias(self, room_id: str, content: JsonDict) -> None:
        aliases: list[Any] = []
        if content.get("alias") is not None:
            aliases.append(content["alias"])
        alt = content.get("alt_aliases")
        if alt is not None:
            if not isinstance(alt, list):
                raise invalid_param("alt_aliases must be a list")
            aliases += alt
        for alias in aliases:
            if not isinstance(alias, str):
                raise invalid_param("Aliases must be strings")
            _local, server = parse_alias(alias)
            if server != self.hs.server_name:
                continue
            row = await self.rooms.get_alias(alias)
            if row is None or row["room_id"] != room_id:
                raise MatrixError(400, "M_BAD_ALIAS", f"Room alias {alias} does not point to the room")

    async def redact(self, requester: Requester, room_id: str, event_id: str, txn_id: str,
                     content: JsonDict) -> str:
        return await self._send_with_txn(requester, room_id, "m.room.redaction", content, txn_id, event_id)

    # == reading ============================================================================================
    async def check_read_access(self, user_id: str, room_id: str, allow_departed: bool = True) -> ReadAccess:
        """Members read everything, departed members up to their leave, others only world-readable rooms."""
        check_room_id(room_id)
        current = await self.store.get_membership(room_id, user_id)
        if current is not None and current[0] == "join":
            return ReadAccess("join")
        if allow_departed and current is not None and current[0] in ("leave", "ban"):
            ev = await self.store.get_event(current[1])
            if ev is not None and ev.internal.get("stream_ordering") is not None:
                # Did they ever join? Only then did they see anything.
                was_joined = await self.hs.db.fetchval(
                    "SELECT 1 FROM room_memberships WHERE room_id = $1 AND user_id = $2 AND membership = 'join'",
                    room_id, user_id)
                if was_joined:
                    return ReadAccess(current[0], ev)
        if await self.room_exists(room_id) and await self._history_visibility(room_id) == "world_readable":
            return ReadAccess(current[0] if current else None)
        raise forbidden(f"User {user_id} not in room {room_id}")

    async def event_near_timestamp(self, requester: Requester, room_id: str, ts: int, forwards: bool) -> JsonDict:
        """GET /timestamp_to_event: the event closest to `ts` in the given direction, among those the
        user may read (a departed member's up to their departure)."""
        access = await self.check_read_access(requester.user_id, room_id)
        cap = access.cap.internal.get("stream_ordering") if access.cap is not None else None
        found = await self.store.get_event_near_timestamp(room_id, ts, forwards, cap)
        if found is None:
            direction = "forward" if forwards else "backward"
            raise not_found(f"Unable to find event from {ts} in {direction} direction")
        return {"event_id": found[0], "origin_server_ts": found[1]}

    async def _state_ids_for_access(self, room_id: str, access: ReadAccess) -> dict[StateKey, str]:
        if access.cap is not None:
            return await self.store.get_state_group(access.cap.internal.get("state_group_after"))
        return await self.store.get_current_state_ids(room_id)

    async def get_state(self, requester: Requester, room_id: str) -> list[JsonDict]:
        access = await self.check_read_access(requester.user_id, room_id)
        ids = await self._state_ids_for_access(room_id, access)
        evs = await self.store.get_events(list(ids.values()))
        ordered = sorted(evs.values(), key=lambda e: e.internal.get("stream_ordering") or 0)
        return await serialize_events(self.hs, ordered)

    async def get_state_event(self, requester: Requester, room_id: str, etype: str, state_key: str,
                              fmt: str = "content") -> JsonDict:
        access = await self.check_read_access(requester.user_id, room_id)
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
        access = await self.check_read_access(requester.user_id, room_id)
        if at is not None:
            point = await self.parse_token(room_id, at)
            if access.cap is not None:
                point = min(point, _point_of(access.cap))
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
        access = await self.check_read_access(requester.user_id, room_id)
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

    async def get_event(self, requester: Requester, room_id: str, event_id: str) -> JsonDict:
        check_room_id(room_id)
        ev = await self.store.get_event(event_id)
        if ev is None or ev.room_id != room_id:
            raise not_found("Event not found.")
        current = await self.store.get_membership(room_id, requester.user_id)
        if not await self.hs.visibility.is_visible(requester.user_id, ev, current[0] if current else None):
            raise not_found("Event not found.")
        return (await self.hs.relations.serialize([ev], requester))[0]

    # -- tokens and timeline positions ---------------------------------------------------------------------
    async def parse_token(self, room_id: str, token: str) -> Point:
        try:
            if token.startswith("t"):
                t = TopologicalToken.decode(token)
                return (t.depth, t.stream)
            if token.startswith("s"):
                pos = self.hs.events_stream.room_position(StreamToken.decode(token), room_id)
                row = await self.hs.db.fetchrow(
                    "SELECT depth FROM events WHERE room_id = $1 AND stream_ordering <= $2"
                    " ORDER BY stream_ordering DESC LIMIT 1", room_id, pos)
                return (int(row["depth"]) if row else 0, pos)
        except InvalidToken:
            pass
        raise invalid_param(f"Invalid pagination token {token!r}")

    async def _latest_point(self, room_id: str) -> Point:
        row = await self.hs.db.fetchrow(
            "SELECT depth, stream_ordering FROM events WHERE room_id = $1"
            " ORDER BY depth DESC, stream_ordering DESC LIMIT 1", room_id)
        return (int(row["depth"]), int(row["stream_ordering"])) if row else (0, 0)

    async def _state_ids_at(self, room_id: str, point: Point) -> dict[StateKey, str]:
        """The room state after the last event at or before `point`."""
        row = await self.hs.db.fetchrow(
            "SELECT state_group_after FROM events WHERE room_id = $1"
            " AND (depth < $2 OR (depth = $2 AND stream_ordering <= $3))"
            " ORDER BY depth DESC, stream_ordering DESC LIMIT 1", room_id, point[0], point[1])
        if row is None:
            return {}
        return await self.store.get_state_group(row["state_group_after"])

    async def _scan(self, user_id: str, room_id: str, point: Point, backwards: bool, limit: int,
                    to: Point | None, current_membership: str | None, filt: EventFilter,
                    ) -> tuple[list[Event], Point | None]:
        """The next `limit` filter-matching events from the gap `point` in one direction, less those the
        user may not see, and the gap after the last event looked at (None when the timeline has no
        more events that way).

        As in Synapse, history visibility thins a page rather than extending it: a page of events the
        user may not see comes back empty but with a token to continue from.
        """
        if limit <= 0:
            return [], point
        matched: list[Event] = []
        cursor = point
        scanned = 0
        next_point: Point | None = None
        while True:
            want = max(limit - len(matched), 20)
            if backwards:
                to_arg = (to[0], to[1] + 1) if to is not None else None
                batch = await self.store.paginate_room(room_id, cursor[0], cursor[1] + 1, True, want + 1, to_arg)
            else:
                batch = await self.store.paginate_room(room_id, cursor[0], cursor[1], False, want + 1, to)
            more = len(batch) > want
            page = batch[:want]
            done = False
            for i, ev in enumerate(page):
                cursor = _gap_before(ev) if backwards else _point_of(ev)
                scanned += 1
                if filt.matches(ev):
                    matched.append(ev)
                    if len(matched) >= limit:
                        exhausted = i == len(page) - 1 and not more
                        next_point = None if exhausted else cursor
                        done = True
                        break
            if done:
                break
            if not more:
                next_point = None
                break
            if scanned >= MAX_SCAN:
                next_point = cursor
                break
        visibility = self.hs.visibility
        visible = [ev for ev in matched if await visibility.is_visible(user_id, ev, current_membership)]
        return visible, next_point

    async def _lazy_members(self, events: list[Event]) -> list[Event]:
        """The member events of the senders of `events`, as of the state at each sender's event."""
        wanted: dict[str, str] = {}
        for ev in events:
            if ev.sender in wanted:
                continue
            state = await self.store.get_state_group(ev.internal.get("state_group_after"))
            eid = state.get((MEMBER, ev.sender))
            if eid is not None:
                wanted[ev.sender] = eid
        found = await self.store.get_events(list(wanted.values()))
        return [found[e] for e in wanted.values() if e in found]

    async def get_messages(self, requester: Requester, room_id: str, from_token: str | None,
                           to_token: str | None, direction: str, limit: int, filt: EventFilter) -> JsonDict:
        user_id = requester.user_id
        access = await self.check_read_access(user_id, room_id)
        backwards = direction == "b"
        if filt.limit is not None:
            limit = min(limit, filt.limit)
        limit = min(limit, MAX_LIMIT)
        if from_token is not None:
            point = await self.parse_token(room_id, from_token)
        else:
            point = await self._latest_point(room_id) if backwards else (0, 0)
        start = from_token if from_token is not None else encode_point(point)
        to = await self.parse_token(room_id, to_token) if to_token is not None else None
        if access.cap is not None:
            cap = _point_of(access.cap)
            if backwards:
                point = min(point, cap)
            else:
                to = cap if to is None else min(to, cap)
        if not filt.allows_room(room_id):
            return {"chunk": [], "start": start}
        events, next_point = await self._scan(user_id, room_id, point, backwards, limit, to,
                                              access.membership, filt)
        result: JsonDict = {
            "chunk": await self.hs.relations.serialize(events, requester),
            "start": start,
        }
        if next_point is not None:
            result["end"] = encode_point(next_point)
        if filt.lazy_load_members:
            result["state"] = await serialize_events(self.hs, await self._lazy_members(events))
        return result

    async def get_context(self, requester: Requester, room_id: str, event_id: str, limit: int,
                          filt: EventFilter) -> JsonDict:
        user_id = requester.user_id
        access = await self.check_read_access(user_id, room_id)
        ev = await self.store.get_event(event_id)
        if ev is None or ev.room_id != room_id or not await self.hs.visibility.is_visible(
                user_id, ev, access.membership):
            raise not_found("Event not found.")
        if filt.limit is not None:
            limit = min(limit, filt.limit)
        limit = min(limit, MAX_LIMIT)
        before, after, start, end = await self._around(user_id, ev, access, limit // 2, limit - limit // 2, filt)
        last = after[-1] if after else ev
        state_ids = await self.store.get_state_group(last.internal.get("state_group_after"))
        if filt.lazy_load_members:
            state_evs = await self._lazy_members([*before, ev, *after])
        else:
            found = await self.store.get_events(list(state_ids.values()))
            state_evs = sorted(found.values(), key=lambda e: e.internal.get("stream_ordering") or 0)
        serialized = await self.hs.relations.serialize([*before, ev, *after], requester)
        return {
            "event": serialized[len(before)],
            "events_before": serialized[:len(before)],
            "events_after": serialized[len(before) + 1:],
            "start": encode_point(start),
            "end": encode_point(end),
            "state": await serialize_events(self.hs, state_evs),
        }

    async def _around(self, user_id: str, ev: Event, access: ReadAccess, before_limit: int, after_limit: int,
                      filt: EventFilter) -> tuple[list[Event], list[Event], Point, Point]:
        """The events the user may see just before and after `ev`, and the tokens at both ends."""
        room_id = ev.room_id
        before, before_next = await self._scan(user_id, room_id, _gap_before(ev), True, before_limit, None,
                                               access.membership, filt)
        to = _point_of(access.cap) if access.cap is not None else None
        after, after_next = await self._scan(user_id, room_id, _point_of(ev), False, after_limit, to,
                                             access.membership, filt)
        start = before_next if before_next is not None else (
            _gap_before(before[-1]) if before else _gap_before(ev))
        end = after_next if after_next is not None else (_point_of(after[-1]) if after else _point_of(ev))
        return before, after, start, end

    async def context_around(self, requester: Requester, ev: Event, before_limit: int, after_limit: int,
                             ) -> JsonDict:
        """Search results' context: the events around one the user found (and so may see)."""
        access = await self.check_read_access(requester.user_id, ev.room_id)
        before, after, start, end = await self._around(requester.user_id, ev, access, before_limit, after_limit,
                                                       EventFilter())
        device = requester.device_id
        return {"events_before": await serialize_events(self.hs, before, device),
                "events_after": await serialize_events(self.hs, after, device),
                "start": encode_point(start), "end": encode_point(end)}

    # == aliases and the room directory =====================================================================
    def _local_alias(self, alias: str) -> None:
        _localpart, server = parse_alias(alias)
        if server != self.hs.server_name:
            raise invalid_param("Room alias must be local")

    async def create_alias(self, requester: Requester, alias: str, room_id: str) -> None:
        self._local_alias(alias)
        check_room_id(room_id)
        if not await self.room_exists(room_id):
            raise not_found("Room not found")
        if await self.rooms.get_alias(alias) is not None:
            raise MatrixError(409, "M_ROOM_IN_USE", f"Room alias {alias} already exists")
        try:
            created = await self.rooms.create_alias(alias, room_id, requester.user_id)
        except Exception:  # a concurrent create won the primary key
            created = False
        if not created:
            raise MatrixError(409, "M_ROOM_IN_USE", f"Room alias {alias} already exists")

    async def get_alias(self, alias: str) -> JsonDict:
        parse_alias(alias)
        row = await self.rooms.get_alias(alias)
        if row is None:
            raise not_found(f"Room alias {alias} not found")
        return {"room_id": row["room_id"], "servers": [self.hs.server_name]}

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        self._local_alias(alias)
        row = await self.rooms.get_alias(alias)
        if row is None:
            raise not_found(f"Room alias {alias} not found")
        room_id = str(row["room_id"])
        user_id = requester.user_id
        if row["creator"] != user_id and not await self.can_change_room_list(room_id, user_id):
            raise forbidden("You don't have permission to delete the alias.")
        await self.rooms.delete_alias(alias)
        await self._remove_from_canonical_alias(requester, room_id, alias)

    async def _remove_from_canonical_alias(self, requester: Requester, room_id: str, alias: str) -> None:
        """Drop a deleted alias from m.room.canonical_alias, if the user may; never fails the delete."""
        current = await self.store.get_current_state_event(room_id, "m.room.canonical_alias", "")
        if current is None:
            return
        content = dict(current.content)
        changed = False
        if content.get("alias") == alias:
            del content["alias"]
            changed = True
        alt = content.get("alt_aliases")
        if isinstance(alt, list) and alias in alt:
            content["alt_aliases"] = [a for a in alt if a != alias]
            changed = True
        if not changed:
            return
        try:
            await self.hs.event_sender.send(room_id, requester.user_id, "m.room.canonical_alias", content,
                                            state_key="")
        except MatrixError as e:
            logger.info("not updating canonical alias of %s after deleting %s: %s", room_id, alias, e.msg)

    async def get_room_aliases(self, requester: Requester, room_id: str) -> list[str]:
        await self.check_read_access(requester.user_id, room_id, allow_departed=False)
        return await self.rooms.get_aliases_for_room(room_id)

    async def get_directory_visibility(self, room_id: str) -> str:
        check_room_id(room_id)
        room = await self.rooms.get_room(room_id)
        if room is None:
            raise not_found("Room not found")
        return "public" if room["is_public"] else "private"

    async def set_directory_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        check_room_id(room_id)
        if visibility not in ("public", "private"):
            raise invalid_param("Invalid visibility setting")
        if not await self.room_exists(room_id):
            raise not_found("Room not found")
        if not await self.can_change_room_list(room_id, requester.user_id):
            raise forbidden("This user is not permitted to publish rooms to the room list")
        await self.rooms.set_room_is_public(room_id, visibility == "public")

    async def room_summary(self, room_id: str) -> JsonDict | None:
        """A room as the room directory and space hierarchies show it (None if nobody is in it)."""
        keys: list[StateKey] = [
            ("m.room.create", ""), ("m.room.name", ""), ("m.room.topic", ""), ("m.room.canonical_alias", ""),
            ("m.room.join_rules", ""), ("m.room.history_visibility", ""), ("m.room.guest_access", ""),
            ("m.room.avatar", "")]
        state = {k: ev.content for k, ev in (await self._current_state_events(room_id, keys)).items()}
        joined = len(await self.store.get_joined_members(room_id))
        if joined == 0:
            return None
        entry: JsonDict = {
            "room_id": room_id,
            "num_joined_members": joined,
            "world_readable": state.get(("m.room.history_visibility", ""), {}).get("history_visibility")
            == "world_readable",
            "guest_can_join": state.get(("m.room.guest_access", ""), {}).get("guest_access") == "can_join",
            "join_rule": state.get(("m.room.join_rules", ""), {}).get("join_rule", "invite"),
        }
        name = state.get(("m.room.name", ""), {}).get("name")
        if isinstance(name, str) and name:
            entry["name"] = name
        topic = _plain_topic(state.get(("m.room.topic", "")))
        if topic:
            entry["topic"] = topic
        alias = state.get(("m.room.canonical_alias", ""), {}).get("alias")
        if isinstance(alias, str) and alias:
            entry["canonical_alias"] = alias
        avatar = state.get(("m.room.avatar", ""), {}).get("url")
        if isinstance(avatar, str) and avatar:
            entry["avatar_url"] = avatar
        room_type = state.get(("m.room.create", ""), {}).get("type")
        if isinstance(room_type, str):
            entry["room_type"] = room_type
        return entry

    async def public_rooms(self, limit: int | None, since: str | None, search_term: str | None,
                           room_types: list[str | None] | None) -> JsonDict:
        offset = 0
        if since:
            if since[:1] not in ("n", "p") or not since[1:].isdigit():
                raise invalid_param("Invalid since token")
            offset = int(since[1:])
        entries = []
        for room_id in await self.rooms.get_public_room_ids():
            entry = await self.room_summary(room_id)
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


def _plain_topic(content: JsonDict | None) -> str | None:
    if not content:
        return None
    block = content.get("m.topic")
    if isinstance(block, dict) and isinstance(block.get("m.text"), list):
        for rep in block["m.text"]:
            if isinstance(rep, dict) and rep.get("mimetype", "text/plain") == "text/plain" and isinstance(
                    rep.get("body"), str):
                return str(rep["body"])
    topic = content.get("topic")
    return topic if isinstance(topic, str) else None


def require_membership_target(body: JsonDict) -> str:
    """The `user_id` of an invite/kick/ban/unban body: M_MISSING_PARAM if absent, M_BAD_JSON if not a
    string, M_INVALID_PARAM if not a user ID."""
    if "user_id" not in body:
        raise missing_param("Missing 'user_id'")
    target = body["user_id"]
    if not isinstance(target, str):
        raise bad_json("'user_id' must be a string")
    if not is_valid_user_id(target):
        raise invalid_param(f"{target!r} is not a valid user ID")
    return target


