"""Filters (client-server spec, "Filtering"; filter.yaml): parsing, validation and event matching.

A filter is validated once, when it is uploaded or passed inline to /sync, and turned into an
immutable `Filter`. Shape errors (a list that is not a list, a flag that is not a boolean) are
M_BAD_JSON; well-shaped but unacceptable values (a limit below 1, an unknown event_format, a room ID
that is not one) are M_INVALID_PARAM.

Event matching follows the spec: `not_*` lists win over their positive counterparts, an absent
positive list matches everything, and `*` in `types`/`not_types` matches any run of characters.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from hs.errors import bad_json, invalid_param

DEFAULT_TIMELINE_LIMIT = 10
# Like Synapse's `filter_timeline_limit`: bigger timeline limits are clamped, not rejected.
MAX_TIMELINE_LIMIT = 100
EVENT_FORMATS = ("client", "federation")

_ROOM_EVENT_FILTER_KEYS = ("timeline", "state", "ephemeral", "account_data")
_BOOL_KEYS = ("contains_url", "lazy_load_members", "include_redundant_members", "unread_thread_notifications")


@lru_cache(maxsize=4096)
def _type_pattern(pattern: str) -> re.Pattern[str] | None:
    """A compiled regex for a pattern with `*` wildcards, or None when it has none (compare exactly)."""
    if "*" not in pattern:
        return None
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def type_matches(pattern: str, value: str) -> bool:
    regex = _type_pattern(pattern)
    if regex is None:
        return pattern == value
    return regex.fullmatch(value) is not None


def _matches_any(patterns: Iterable[str], value: str) -> bool:
    return any(type_matches(p, value) for p in patterns)


# -- validation helpers ------------------------------------------------------------------------------
def _check_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_json(f"'{where}' must be an object")
    return value


def _string_list(obj: dict[str, Any], key: str, where: str, prefix: str | None = None,
                 kind: str = "") -> tuple[str, ...] | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"'{where}.{key}' must be a list of strings")
    if prefix is not None:
        for v in value:
            # Room IDs from room version 12 have no server part, so only user IDs need the colon.
            if not v.startswith(prefix) or len(v) < 2 or (prefix == "@" and ":" not in v):
                raise invalid_param(f"'{where}.{key}' contains an invalid {kind}: {v!r}")
    return tuple(value)


def _bool(obj: dict[str, Any], key: str, where: str) -> bool | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, bool):
        raise bad_json(f"'{where}.{key}' must be a boolean")
    return value


@dataclass(frozen=True)
class EventFilter:
    """An EventFilter or RoomEventFilter (the room-only fields are simply unused elsewhere)."""

    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: frozenset[str] | None = None
    not_senders: frozenset[str] = frozenset()
    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    @classmethod
    def parse(cls, value: Any, where: str, min_limit: int = 1) -> EventFilter:
        obj = _check_object(value, where)
        limit = obj.get("limit")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise bad_json(f"'{where}.limit' must be an integer")
            if limit < min_limit:
                raise invalid_param(f"'{where}.limit' must be at least {min_limit}")
        types = _string_list(obj, "types", where)
        senders = _string_list(obj, "senders", where, "@", "user ID")
        rooms = _string_list(obj, "rooms", where, "!", "room ID")
        flags = {k: _bool(obj, k, where) for k in _BOOL_KEYS}
        return cls(
            limit=limit,
            types=types,
            not_types=_string_list(obj, "not_types", where) or (),
            senders=None if senders is None else frozenset(senders),
            not_senders=frozenset(_string_list(obj, "not_senders", where, "@", "user ID") or ()),
            rooms=None if rooms is None else frozenset(rooms),
            not_rooms=frozenset(_string_list(obj, "not_rooms", where, "!", "room ID") or ()),
            contains_url=flags["contains_url"],
            lazy_load_members=bool(flags["lazy_load_members"]),
            include_redundant_members=bool(flags["include_redundant_members"]),
            unread_thread_notifications=bool(flags["unread_thread_notifications"]),
        )

    # -- matching ------------------------------------------------------------------------------------
    def type_allowed(self, event_type: str) -> bool:
        if self.not_types and _matches_any(self.not_types, event_type):
            return False
        return self.types is None or _matches_any(self.types, event_type)

    def sender_allowed(self, sender: str) -> bool:
        if sender in self.not_senders:
            return False
        return self.senders is None or sender in self.senders

    def room_allowed(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def check(self, event_type: str, sender: str | None = None, room_id: str | None = None,
              content: dict[str, Any] | None = None) -> bool:
        """Whether an event with these fields passes; absent fields (e.g. presence has no room) pass."""
        if not self.type_allowed(event_type):
            return False
        if sender is not None and not self.sender_allowed(sender):
            return False
        if room_id is not None and not self.room_allowed(room_id):
            return False
        if self.contains_url is not None:
            has_url = isinstance((content or {}).get("url"), str)
            if has_url != self.contains_url:
                return False
        return True

    def matches(self, event: Any) -> bool:
        """For an `hs.events.event.Event` (or anything with type/sender/room_id/content)."""
        return self.check(event.type, event.sender, event.room_id, event.content)

    def filter(self, events: Iterable[Any]) -> list[Any]:
        return [e for e in events if self.matches(e)]

    @property
    def is_unrestricted(self) -> bool:
        """True if the filter lets every event through (so callers can skip matching)."""
        return (self.types is None and not self.not_types and self.senders is None
                and not self.not_senders and self.rooms is None and not self.not_rooms
                and self.contains_url is None)


@dataclass(frozen=True)
class RoomFilter:
    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    include_leave: bool = False
    timeline: EventFilter = field(default_factory=EventFilter)
    state: EventFilter = field(default_factory=EventFilter)
    ephemeral: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)

    @classmethod
    def parse(cls, value: Any, min_limit: int = 1) -> RoomFilter:
        obj = _check_object(value, "room")
        rooms = _string_list(obj, "rooms", "room", "!", "room ID")
        subs = {k: EventFilter.parse(obj[k], f"room.{k}", min_limit if k == "timeline" else 1)
                if k in obj else EventFilter() for k in _ROOM_EVENT_FILTER_KEYS}
        return cls(
            rooms=None if rooms is None else frozenset(rooms),
            not_rooms=frozenset(_string_list(obj, "not_rooms", "room", "!", "room ID") or ()),
            include_leave=bool(_bool(obj, "include_leave", "room")),
            **subs,
        )

    def room_allowed(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms


@dataclass(frozen=True)
class Filter:
    """A whole filter (filter.yaml's Filter): what /sync and friends return."""

    room: RoomFilter = field(default_factory=RoomFilter)
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def parse(cls, value: Any, allow_zero_limit: bool = False) -> Filter:
        """Validate a filter definition; raises MatrixError (400 M_BAD_JSON / M_INVALID_PARAM).

        `allow_zero_limit` takes a timeline `limit: 0` (an empty timeline): the spec asks for limits above 0, which
        uploaded filters keep to, but Synapse takes any number and clients pass `{"room": {"timeline":
        {"limit": 0}}}` inline to /sync to get rooms' state without their timelines."""
        obj = _check_object(value, "filter")
        min_limit = 0 if allow_zero_limit else 1
        event_fields = _string_list(obj, "event_fields", "filter")
        event_format = obj.get("event_format", "client")
        if not isinstance(event_format, str):
            raise bad_json("'event_format' must be a string")
        if event_format not in EVENT_FORMATS:
            raise invalid_param(f"'event_format' must be one of {', '.join(EVENT_FORMATS)}")
        return cls(
            room=RoomFilter.parse(obj["room"], min_limit) if "room" in obj else RoomFilter(),
            presence=EventFilter.parse(obj["presence"], "presence") if "presence" in obj else EventFilter(),
            account_data=(EventFilter.parse(obj["account_data"], "account_data")
                          if "account_data" in obj else EventFilter()),
            event_fields=event_fields,
            event_format=event_format,
            raw=obj,
        )

    # -- conveniences for /sync ------------------------------------------------------------------------
    @property
    def timeline_limit(self) -> int:
        limit = self.room.timeline.limit
        if limit is None:
            return DEFAULT_TIMELINE_LIMIT
        return min(limit, MAX_TIMELINE_LIMIT)

    @property
    def include_leave(self) -> bool:
        return self.room.include_leave

    @property
    def lazy_load_members(self) -> bool:
        # The spec supports lazy-loading on the `state` filter for /sync; accept it on `timeline` too,
        # as some clients put it there.
        return self.room.state.lazy_load_members or self.room.timeline.lazy_load_members

    @property
    def include_redundant_members(self) -> bool:
        return self.room.state.include_redundant_members or self.room.timeline.include_redundant_members

    def room_allowed(self, room_id: str) -> bool:
        return self.room.room_allowed(room_id)


DEFAULT_FILTER = Filter()


def _split_field_path(path: str) -> list[str]:
    """A dot-separated property path, where `\\.` is a literal dot and `\\\\` a literal backslash."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(path)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt if nxt in (".", "\\") else ch + nxt)
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def only_fields(event: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """A copy of a serialized event holding just the requested `event_fields` paths."""
    out: dict[str, Any] = {}
    for path in fields:
        parts = _split_field_path(path)
        src: Any = event
        for part in parts:
            if not isinstance(src, dict) or part not in src:
                break
            src = src[part]
        else:
            dst = out
            for part in parts[:-1]:
                nxt = dst.get(part)
                if not isinstance(nxt, dict):
                    nxt = dst[part] = {}
                dst = nxt
            dst[parts[-1]] = copy.deepcopy(src)  # never alias (and later mutate) the event's own dicts
    return out
