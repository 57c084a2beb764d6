"""Sliding sync requests (MSC4186, simplified sliding sync) in both shapes, parsed into one form.

Two shapes reach the same implementation:

* the unstable one Synapse serves at `/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`:
  `pos` and `timeout` in the query string, `ranges: [[start, end], ...]` per list, `required_state`
  as a list of `[type, state_key]` pairs (`[m.room.member, $LAZY]` asking for lazy-loaded members);
* the stable one at `/_matrix/client/v4/sync`: `pos`, `timeout` and `set_presence` in the body, one
  `range: [start, end]` per list, `required_state` as `{include, exclude, lazy_members}` and the
  `is_invited` filter.

Both become a `SlidingSyncRequest`. Every size is bounded here, so the service never works on more
than 100 lists, 100 room subscriptions, 100 required_state entries per room config or a timeline of
more than 1000 events: malformed bodies are 400 M_BAD_JSON, malformed query parameters 400
M_INVALID_PARAM (as hs/api/params.py does everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hs.errors import MatrixError, bad_json
from hs.services.room_ids import check_room_id

Shape = Literal["unstable", "v4"]
StatePair = tuple[str, str]

MAX_LISTS = 100
MAX_SUBSCRIPTIONS = 100
MAX_TIMELINE_LIMIT = 1000
MAX_RANGE_INDEX = 10000
MAX_RANGES = 100
MAX_REQUIRED_STATE = 100
MAX_LIST_NAME = 64
MAX_CONN_ID = 256
MAX_FILTER_ITEMS = 100
MAX_STRING = 1024
PRESENCE_STATES = ("online", "offline", "unavailable")
# Wildcards and placeholders in required_state (MSC4186).
WILDCARD = "*"
ME = "$ME"
LAZY = "$LAZY"
MEMBER = "m.room.member"


@dataclass(frozen=True)
class RequiredState:
    """Which state a room entry carries: `include` pairs (`*` for any type or key, `$ME` for the
    user's own key), minus `exclude` pairs, plus the members of the timeline's senders when
    `lazy_members`."""

    include: tuple[StatePair, ...] = ()
    exclude: tuple[StatePair, ...] = ()
    lazy_members: bool = False

    def key(self) -> list[Any]:
        """A canonical JSON value: two configs are the same exactly when their keys are equal."""
        return [sorted(map(list, set(self.include))), sorted(map(list, set(self.exclude))), self.lazy_members]

    def merge(self, other: RequiredState) -> RequiredState:
        """The union of two configs (a room in several lists and subscriptions gets all they ask)."""
        include = tuple(dict.fromkeys(self.include + other.include))
        # An exclusion holds only when both ask for it (otherwise one of them wants the state).
        exclude = tuple(p for p in self.exclude if p in other.exclude)
        return RequiredState(include, exclude, self.lazy_members or other.lazy_members)

    def matches(self, etype: str, state_key: str, user_id: str) -> bool:
        """Whether the state entry (etype, state_key) is asked for (lazy members aside)."""
        def hit(pairs: tuple[StatePair, ...]) -> bool:
            for t, k in pairs:
                if t != WILDCARD and t != etype:
                    continue
                if k == WILDCARD or k == state_key or (k == ME and state_key == user_id):
                    return True
            return False

        return hit(self.include) and not hit(self.exclude)

    def is_empty(self) -> bool:
        return not self.include and not self.lazy_members


@dataclass(frozen=True)
class RoomConfig:
    """What a list or a room subscription asks of each room: its state, and how many timeline events."""

    required_state: RequiredState = field(default_factory=RequiredState)
    timeline_limit: int = 0

    def merge(self, other: RoomConfig) -> RoomConfig:
        return RoomConfig(self.required_state.merge(other.required_state),
                          max(self.timeline_limit, other.timeline_limit))


@dataclass(frozen=True)
class ListFilters:
    """A list's filters; None means "not filtered on this"."""

    is_dm: bool | None = None
    spaces: tuple[str, ...] | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    room_types: tuple[str | None, ...] | None = None
    not_room_types: tuple[str | None, ...] = ()
    tags: tuple[str, ...] | None = None
    not_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListConfig:
    name: str
    ranges: tuple[tuple[int, int], ...]
    room: RoomConfig
    filters: ListFilters


@dataclass(frozen=True)
class SlidingSyncRequest:
    user_id: str
    device_id: str | None
    shape: Shape
    conn_id: str
    pos: str | None
    timeout_ms: int
    set_presence: str
    lists: dict[str, ListConfig]
    room_subscriptions: dict[str, RoomConfig]
    extensions: dict[str, Any]


# -- parsing ---------------------------------------------------------------------------------------------
def parse_request(body: dict[str, Any], shape: Shape, *, user_id: str, device_id: str | None,
                  pos: str | None = None, timeout_ms: int = 0, set_presence: str = "online",
                  ) -> SlidingSyncRequest:
    """The body (and for the unstable shape the query's `pos`/`timeout`, already checked by the
    handler) as a `SlidingSyncRequest`; 400 M_BAD_JSON for anything malformed or out of bounds."""
    if shape == "v4":
        pos = _opt_str(body, "pos", "pos") or None
        timeout_ms = _timeout(body.get("timeout"))
        presence = body.get("set_presence", "online")
        if presence is None:
            presence = "online"
        if presence not in PRESENCE_STATES:
            raise bad_json(f"'set_presence' must be one of {', '.join(PRESENCE_STATES)}")
        set_presence = presence
    conn_id = _opt_str(body, "conn_id", "conn_id", MAX_CONN_ID) or ""
    lists = _lists(body.get("lists"), shape)
    subs = _subscriptions(body.get("room_subscriptions"), shape)
    extensions = body.get("extensions")
    if extensions is None:
        extensions = {}
    if not isinstance(extensions, dict):
        raise bad_json("'extensions' must be an object")
    return SlidingSyncRequest(user_id=user_id, device_id=device_id, shape=shape, conn_id=conn_id, pos=pos,
                              timeout_ms=timeout_ms, set_presence=set_presence, lists=lists,
                              room_subscriptions=subs, extensions=extensions)


MAX_TIMEOUT_MS = 10 * 60 * 1000


def _timeout(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_json("'timeout' must be a non-negative integer")
    return min(value, MAX_TIMEOUT_MS)


def _opt_str(obj: dict[str, Any], key: str, name: str, max_length: int = MAX_STRING) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_json(f"'{name}' must be a string")
    if len(value) > max_length:
        raise bad_json(f"'{name}' is longer than {max_length} characters")
    return value


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_json(f"'{name}' must be an object")
    return value


def _int(value: Any, name: str, minimum: int, maximum: int, *, clamp: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json(f"'{name}' must be an integer")
    if value < minimum:
        raise bad_json(f"'{name}' must be at least {minimum}")
    if value > maximum:
        if clamp:
            return maximum
        raise bad_json(f"'{name}' must be at most {maximum}")
    return value


def _lists(value: Any, shape: Shape) -> dict[str, ListConfig]:
    raw = _object(value, "lists")
    if len(raw) > MAX_LISTS:
        raise bad_json(f"At most {MAX_LISTS} lists are accepted")
    out: dict[str, ListConfig] = {}
    for name, spec in raw.items():
        if not name or len(name) > MAX_LIST_NAME:
            raise bad_json(f"List names must be 1 to {MAX_LIST_NAME} characters long")
        where = f"lists.{name}"
        spec = _object(spec, where)
        ranges: tuple[tuple[int, int], ...]
        if shape == "v4":
            rng = spec.get("range")
            ranges = () if rng is None else (_range(rng, f"{where}.range"),)
        else:
            raw_ranges = spec.get("ranges")
            if raw_ranges is None:
                raw_ranges = []
            if not isinstance(raw_ranges, list):
                raise bad_json(f"'{where}.ranges' must be a list")
            if len(raw_ranges) > MAX_RANGES:
                raise bad_json(f"'{where}.ranges' has more than {MAX_RANGES} ranges")
            ranges = tuple(_range(r, f"{where}.ranges") for r in raw_ranges)
        out[name] = ListConfig(name, ranges, _room_config(spec, where, shape),
                               _filters(spec.get("filters"), f"{where}.filters", shape))
    return out


def _range(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise bad_json(f"'{name}' must be [start, end]")
    start = _int(value[0], name, 0, MAX_RANGE_INDEX)
    end = _int(value[1], name, 0, MAX_RANGE_INDEX, clamp=True)
    if end < start:
        raise bad_json(f"'{name}': the end comes before the start")
    return start, end


def _subscriptions(value: Any, shape: Shape) -> dict[str, RoomConfig]:
    raw = _object(value, "room_subscriptions")
    if len(raw) > MAX_SUBSCRIPTIONS:
        raise bad_json(f"At most {MAX_SUBSCRIPTIONS} room subscriptions are accepted")
    out: dict[str, RoomConfig] = {}
    for room_id, spec in raw.items():
        try:
            check_room_id(room_id)
        except MatrixError:
            raise bad_json(f"'room_subscriptions': {room_id[:100]!r} is not a room ID") from None
        where = f"room_subscriptions.{room_id}"
        out[room_id] = _room_config(_object(spec, where), where, shape)
    return out


def _room_config(spec: dict[str, Any], where: str, shape: Shape) -> RoomConfig:
    limit = spec.get("timeline_limit")
    timeline_limit = 0 if limit is None else _int(limit, f"{where}.timeline_limit", 0, MAX_TIMELINE_LIMIT,
                                                  clamp=True)
    raw_state = spec.get("required_state")
    if shape == "v4":
        obj = _object(raw_state, f"{where}.required_state")
        include = _pairs(obj.get("include"), f"{where}.required_state.include")
        exclude = _pairs(obj.get("exclude"), f"{where}.required_state.exclude")
        lazy = obj.get("lazy_members", False)
        if lazy is None:
            lazy = False
        if not isinstance(lazy, bool):
            raise bad_json(f"'{where}.required_state.lazy_members' must be a boolean")
        if len(include) + len(exclude) > MAX_REQUIRED_STATE:
            raise bad_json(f"'{where}.required_state' has more than {MAX_REQUIRED_STATE} entries")
    else:
        pairs = _pairs(raw_state, f"{where}.required_state")
        lazy = any(p == (MEMBER, LAZY) for p in pairs)
        include = tuple(p for p in pairs if p != (MEMBER, LAZY))
        exclude = ()
    return RoomConfig(RequiredState(tuple(dict.fromkeys(include)), tuple(dict.fromkeys(exclude)), lazy),
                      timeline_limit)


def _pairs(value: Any, name: str) -> tuple[StatePair, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_json(f"'{name}' must be a list of [type, state_key]")
    if len(value) > MAX_REQUIRED_STATE:
        raise bad_json(f"'{name}' has more than {MAX_REQUIRED_STATE} entries")
    out = []
    for pair in value:
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair)
                or any(len(p) > MAX_STRING for p in pair)):
            raise bad_json(f"'{name}' entries must be [type, state_key] strings")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _filters(value: Any, where: str, shape: Shape) -> ListFilters:
    raw = _object(value, where)
    invite_key = "is_invited" if shape == "v4" else "is_invite"
    return ListFilters(
        is_dm=_opt_bool(raw, "is_dm", where),
        spaces=_str_list(raw, "spaces", where),
        is_encrypted=_opt_bool(raw, "is_encrypted", where),
        is_invite=_opt_bool(raw, invite_key, where),
        room_types=_type_list(raw, "room_types", where),
        not_room_types=_type_list(raw, "not_room_types", where) or (),
        tags=_str_list(raw, "tags", where),
        not_tags=_str_list(raw, "not_tags", where) or (),
    )


def _opt_bool(raw: dict[str, Any], key: str, where: str) -> bool | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_json(f"'{where}.{key}' must be a boolean")
    return value


def _str_list(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) > MAX_FILTER_ITEMS
            or not all(isinstance(v, str) and len(v) <= MAX_STRING for v in value)):
        raise bad_json(f"'{where}.{key}' must be a list of at most {MAX_FILTER_ITEMS} strings")
    return tuple(value)


def _type_list(raw: dict[str, Any], key: str, where: str) -> tuple[str | None, ...] | None:
    """Room types; null stands for rooms without a type (plain rooms)."""
    value = raw.get(key)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) > MAX_FILTER_ITEMS
            or not all(v is None or (isinstance(v, str) and len(v) <= MAX_STRING) for v in value)):
        raise bad_json(f"'{where}.{key}' must be a list of at most {MAX_FILTER_ITEMS} room types or nulls")
    return tuple(value)
