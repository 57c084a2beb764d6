"""Sliding sync's extensions: to_device, e2ee, account_data, receipts and typing.

Each extension asks the /sync section of its stream (hs/services/sync_sections.py) with a narrower
request (this user and device, the connection's `since`, the response's `upto`, only the rooms the
extension covers) and reshapes the section's /sync-shaped output into the extension's object. So an
extension never disagrees with /sync about what changed in a range.

What each one answers (MSC3885, MSC3884, MSC3959, MSC3960, MSC3961 as Synapse serves them):

* `to_device` `{next_batch, events}`: the device's messages after the extension's own `since` (the
  to_device stream position from the previous `next_batch`), at most `limit` (default 100, at most
  1000, where Synapse stops at 100). Messages at or below `since` are acknowledged and deleted, as
  /sync does with its token; a `since` ahead of the stream gets nothing and deletes nothing.
* `e2ee` `{device_one_time_keys_count, device_unused_fallback_key_types, device_lists}`: the counts
  always; `device_lists {changed, left}` only on an existing connection (a new one has no "since").
* `account_data` `{global, rooms}`: global account data (with `m.push_rules`) changed since `since`,
  all of it on a new connection; per room, for the rooms the extension covers.
* `receipts` `{rooms: {room: m.receipt event}}` and `typing` `{rooms: {room: m.typing event}}`: for
  the covered rooms the user is joined to (never a room they only are invited to or left).

Which rooms an extension covers follows Synapse's rules (`covered_rooms`): `lists` names lists of
the request (`*` all of them; absent means `*`, null means none) and adds their rooms in range;
`rooms` names rooms (`*` all; absent means `*`, null means none) and adds those that are in the
response, whether through a room subscription or a list: Synapse matches `rooms` against every room
of the response, not only the subscriptions.

Rooms sent from scratch: on a new connection every covered room starts from nothing: all its room
account data, the current typing users, and as receipts the user's own plus those on the events of
the room's timeline (as Synapse, not every receipt of a large room). On an existing connection a
room is treated so when the core names it in `ExtensionRequest.initial` (a room that came into range
or was subscribed to), otherwise the extension sends what changed in (since, upto]. Without the
room's timeline from the core, receipts on its `RECENT_EVENTS_FOR_RECEIPTS` newest events stand in.
A room that left the lists and comes back without being sent from scratch gets what changed since
the token it was last sent at when the core names it in `ExtensionRequest.previously` (Synapse keeps
that per room and extension; here the room's own record stands for every extension); else what
changed since the connection's `since`, missing what changed while it was out of the lists.

Every enabled extension is in the response even when empty (as Synapse encodes them; clients read
`to_device.next_batch` every time). "Anything new" is what Synapse counts for waking a long poll:
to-device events, device-list changes, account data, receipts, typing; key counts alone are not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hs.api.params import parse_int
from hs.errors import bad_json
from hs.services.sync import SyncConfig

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.streams.tokens import StreamToken

JsonDict = dict[str, Any]

WILDCARD = "*"
TO_DEVICE_DEFAULT_LIMIT = 100
TO_DEVICE_MAX_LIMIT = 1000
# Receipts of a room sent from scratch without its timeline given: those on its newest events.
RECENT_EVENTS_FOR_RECEIPTS = 10
# Bounds on what a request may name (its lists are at most 100; room IDs are at most 255 bytes).
MAX_NAMES = 1000
MAX_NAME_LENGTH = 4096

ROOM_EXTENSIONS = ("account_data", "receipts", "typing")
KNOWN_EXTENSIONS = ("to_device", "e2ee", *ROOM_EXTENSIONS)


@dataclass
class ExtensionRequest:
    """What the core knows about one sliding-sync response, for the extensions."""

    user_id: str
    device_id: str | None
    requested: dict[str, Any]  # the request body's `extensions` object (JSON as received)
    since: StreamToken | None  # the token the connection's `pos` covered (None: new connection)
    upto: StreamToken  # the token this response covers (taken before reading)
    lists: dict[str, list[str]]  # room IDs in each list's ranges, by list name
    subscriptions: list[str]  # room IDs of room_subscriptions
    joined: list[str]  # all rooms the user is joined to at `upto`
    # Optional: rooms this response sends from scratch on an existing connection (`initial: true`),
    # each with the event IDs of the timeline sent for it. Their account data is sent whole and their
    # receipts as on a new connection. On a new connection every room is such a room anyway; a
    # room's timeline given here narrows its receipts to exactly the events the client gets.
    initial: dict[str, list[str]] = field(default_factory=dict)
    # Optional: rooms of this response the connection had sent before they left its lists, each
    # with the token they were sent up to; they get what changed since that token, not since `since`.
    previously: dict[str, StreamToken] = field(default_factory=dict)


@dataclass(frozen=True)
class RoomScope:
    """An extension's `lists` and `rooms`: None when null (none), else names, `*` meaning all."""

    lists: tuple[str, ...] | None = (WILDCARD,)
    rooms: tuple[str, ...] | None = (WILDCARD,)


@dataclass(frozen=True)
class ToDeviceConfig:
    since: int | None = None
    limit: int = TO_DEVICE_DEFAULT_LIMIT


@dataclass(frozen=True)
class ExtensionsConfig:
    """The enabled extensions of a request, parsed; None for one that is off."""

    to_device: ToDeviceConfig | None = None
    e2ee: bool = False
    account_data: RoomScope | None = None
    receipts: RoomScope | None = None
    typing: RoomScope | None = None


# -- parsing ---------------------------------------------------------------------------------------------
def _names(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_NAMES or not all(
            isinstance(v, str) and len(v) <= MAX_NAME_LENGTH for v in value):
        raise bad_json(f"'{where}' must be a list of strings")
    return tuple(value)


def _enabled(obj: JsonDict, where: str) -> bool:
    value = obj.get("enabled")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_json(f"'{where}.enabled' must be a boolean")
    return value


def _scope(obj: JsonDict, where: str) -> RoomScope:
    return RoomScope(
        lists=_names(obj["lists"], f"{where}.lists") if "lists" in obj else (WILDCARD,),
        rooms=_names(obj["rooms"], f"{where}.rooms") if "rooms" in obj else (WILDCARD,),
    )


def _to_device(obj: JsonDict) -> ToDeviceConfig:
    since_raw = obj.get("since")
    since = None
    if since_raw is not None:
        if not isinstance(since_raw, str):
            raise bad_json("'extensions.to_device.since' must be a string")
        # A string that is no position is M_INVALID_PARAM, a wrong type M_BAD_JSON (as Synapse).
        since = parse_int(since_raw, "extensions.to_device.since")
    limit_raw = obj.get("limit")
    limit = TO_DEVICE_DEFAULT_LIMIT
    if limit_raw is not None:
        if isinstance(limit_raw, bool) or not isinstance(limit_raw, int):
            raise bad_json("'extensions.to_device.limit' must be an integer")
        # Clamped, never refused; and never 0, whose empty batch would advance past unsent messages.
        limit = max(1, min(limit_raw, TO_DEVICE_MAX_LIMIT))
    return ToDeviceConfig(since, limit)


def parse_extensions(raw: Any) -> ExtensionsConfig:
    """The request body's `extensions` (absent or null: none). Malformed known extensions are
    400 M_BAD_JSON, as Synapse's request model refuses them; unknown extensions are ignored. The
    core can call this when it reads the request, so a bad one fails before any long poll."""
    if raw is None:
        return ExtensionsConfig()
    if not isinstance(raw, dict):
        raise bad_json("'extensions' must be an object")
    parsed: dict[str, Any] = {}
    for name in KNOWN_EXTENSIONS:
        obj = raw.get(name)
        if obj is None:
            continue
        where = f"extensions.{name}"
        if not isinstance(obj, dict):
            raise bad_json(f"'{where}' must be an object")
        if not _enabled(obj, where):
            continue
        if name == "to_device":
            parsed[name] = _to_device(obj)
        elif name == "e2ee":
            parsed[name] = True
        else:
            parsed[name] = _scope(obj, where)
    return ExtensionsConfig(**parsed)


# -- which rooms ------------------------------------------------------------------------------------------
def covered_rooms(scope: RoomScope, lists: Mapping[str, Iterable[str]], subscriptions: Iterable[str],
                  ) -> set[str]:
    """The rooms of the response an extension covers (Synapse's rules: see the module docstring)."""
    in_response = set(subscriptions)
    for rooms in lists.values():
        in_response.update(rooms)
    covered: set[str] = set()
    if scope.rooms is not None:
        if WILDCARD in scope.rooms:
            covered |= in_response
        else:
            covered |= in_response.intersection(scope.rooms)
    if scope.lists is not None:
        names = lists.keys() if WILDCARD in scope.lists else [n for n in scope.lists if n in lists]
        for name in names:
            covered.update(lists[name])
    return covered


# -- reshaping /sync output -------------------------------------------------------------------------------
def scratch_body() -> JsonDict:
    """An empty /sync body for a section to write into (what SyncService starts each response from)."""
    return {
        "next_batch": "",
        "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
        "presence": {"events": []},
        "account_data": {"events": []},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
    }


def room_account_data(body: JsonDict) -> dict[str, list[JsonDict]]:
    """{room: [account data events]} from a /sync body's joined rooms."""
    out: dict[str, list[JsonDict]] = {}
    for room_id, entry in body["rooms"]["join"].items():
        events = entry.get("account_data", {}).get("events")
        if events:
            out[room_id] = list(events)
    return out


def room_ephemeral(body: JsonDict, event_type: str) -> dict[str, JsonDict]:
    """{room: the ephemeral event of `event_type`} from a /sync body's joined rooms."""
    out: dict[str, JsonDict] = {}
    for room_id, entry in body["rooms"]["join"].items():
        for ev in entry.get("ephemeral", {}).get("events", ()):
            if ev.get("type") == event_type:
                out[room_id] = {"type": event_type, "content": ev["content"]}
    return out


def narrow_receipts(content: JsonDict, user_id: str, event_ids: set[str]) -> JsonDict:
    """An m.receipt content cut to what a room sent from scratch carries: receipts on `event_ids`
    (its timeline) and the user's own receipts anywhere."""
    out: JsonDict = {}
    for event_id, by_type in content.items():
        if event_id in event_ids:
            out[event_id] = by_type
            continue
        mine = {rtype: {user_id: users[user_id]} for rtype, users in by_type.items() if user_id in users}
        if mine:
            out[event_id] = mine
    return out


# -- the extensions ----------------------------------------------------------------------------------------
async def compute_extensions(hs: HomeServer, request: ExtensionRequest) -> tuple[dict[str, Any], bool]:
    """(the response's `extensions` object, whether it holds anything new)

    The extensions read different streams and tables, so they are computed concurrently: a woken
    long poll answers after the slowest one, not after their sum."""
    config = parse_extensions(request.requested)
    jobs: dict[str, Awaitable[JsonDict]] = {}
    if config.to_device is not None:
        jobs["to_device"] = _to_device_extension(hs, request, config.to_device)
    if config.e2ee:
        jobs["e2ee"] = _e2ee_extension(hs, request)
    if config.account_data is not None:
        jobs["account_data"] = _account_data_extension(hs, request, config.account_data)
    if config.receipts is not None:
        jobs["receipts"] = _receipts_extension(hs, request, config.receipts)
    if config.typing is not None:
        jobs["typing"] = _typing_extension(hs, request, config.typing)
    out = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
    return out, any(is_news(name, value) for name, value in out.items())


def is_news(name: str, value: JsonDict) -> bool:
    """Whether an extension's answer is worth waking a long poll for (Synapse's rule: new to-device
    messages, device-list changes, account data, receipts, typing; key counts alone are not)."""
    if name == "to_device":
        return bool(value["events"])
    if name == "e2ee":
        lists = value.get("device_lists", {})
        return bool(lists.get("changed") or lists.get("left"))
    if name == "account_data":
        return bool(value["global"] or value["rooms"])
    return bool(value["rooms"])


def _sync_config(request: ExtensionRequest, since: StreamToken | None) -> SyncConfig:
    return SyncConfig(user_id=request.user_id, device_id=request.device_id, since=since)


def room_groups(since: StreamToken | None, initial: Iterable[str], previously: Mapping[str, StreamToken],
                rooms: Iterable[str]) -> list[tuple[StreamToken | None, list[str]]]:
    """The covered rooms by the token their changes are read from: None for rooms sent from scratch
    (every room of a new connection), `since` itself (the same object) for rooms up to date at it,
    and each earlier token for rooms that were out of the lists since then."""
    if since is None:
        everything = sorted(rooms)
        return [(None, everything)] if everything else []
    scratch_rooms = set(initial)
    fresh: list[str] = []
    live: list[str] = []
    earlier: dict[str, tuple[StreamToken, list[str]]] = {}
    for room_id in sorted(rooms):
        token = previously.get(room_id)
        if room_id in scratch_rooms:
            fresh.append(room_id)
        elif token is None:
            live.append(room_id)
        else:
            earlier.setdefault(token.encode(), (token, []))[1].append(room_id)
    groups: list[tuple[StreamToken | None, list[str]]] = []
    if fresh:
        groups.append((None, fresh))
    if live:
        groups.append((since, live))
    groups.extend(earlier.values())
    return groups


def _groups(request: ExtensionRequest, rooms: set[str]) -> list[tuple[StreamToken | None, list[str]]]:
    return room_groups(request.since, request.initial, request.previously, rooms)


async def _to_device_extension(hs: HomeServer, request: ExtensionRequest, cfg: ToDeviceConfig) -> JsonDict:
    """The device's to-device messages in (since, upto], at most `limit`. Reads the store directly:
    `E2eeService.add_to_device` has a fixed batch size, and this one is the client's."""
    end = request.upto.get("to_device")
    if not request.device_id:
        return {"next_batch": str(end), "events": []}
    since = cfg.since or 0
    if since > end:
        # A position from the future (Synapse answers the same): nothing, and nothing acknowledged.
        return {"next_batch": str(since), "events": []}
    store = hs.e2ee.store
    if since:
        await store.delete_to_device_messages(request.user_id, request.device_id, since)
    rows = [] if end <= since else await store.get_to_device_messages(
        request.user_id, request.device_id, since, end, cfg.limit)
    reached = rows[-1]["stream_id"] if len(rows) == cfg.limit else end
    return {"next_batch": str(reached),
            "events": [{"sender": r["sender"], "type": r["type"], "content": r["content"]} for r in rows]}


async def _e2ee_extension(hs: HomeServer, request: ExtensionRequest) -> JsonDict:
    since = request.since
    body = scratch_body()
    next_token = request.upto if since is None else since.max(request.upto)
    await hs.e2ee.add_device_lists(_sync_config(request, since), next_token, body)
    out: JsonDict = {
        "device_one_time_keys_count": body.get("device_one_time_keys_count", {}),
        "device_unused_fallback_key_types": body.get("device_unused_fallback_key_types", []),
    }
    if since is not None:
        out["device_lists"] = {"changed": list(body["device_lists"]["changed"]),
                               "left": list(body["device_lists"]["left"])}
    return out


async def _account_data_extension(hs: HomeServer, request: ExtensionRequest, scope: RoomScope) -> JsonDict:
    since = request.since
    rooms = covered_rooms(scope, request.lists, request.subscriptions)
    groups = _groups(request, rooms)
    # Global account data and push rules since `since` (everything when new), with the rooms read
    # from the same token; the other rooms from theirs (None: all of a room's account data).
    main = next((ids for token, ids in groups if token is since), [])
    body = scratch_body()
    config = _sync_config(request, since)
    await hs.sync.add_account_data(config, request.upto, body, main)
    await hs.push_rules.add_to_sync(config, request.upto, body)
    per_room = room_account_data(body)
    for token, ids in groups:
        if token is not since:
            other = scratch_body()
            await hs.sync.add_account_data(_sync_config(request, token), request.upto, other, ids)
            per_room.update(room_account_data(other))
    return {"global": list(body["account_data"]["events"]), "rooms": per_room}


async def _receipts_extension(hs: HomeServer, request: ExtensionRequest, scope: RoomScope) -> JsonDict:
    rooms = covered_rooms(scope, request.lists, request.subscriptions) & set(request.joined)
    out: dict[str, JsonDict] = {}
    for token, ids in _groups(request, rooms):
        body = scratch_body()
        await hs.receipts.add_to_sync(_sync_config(request, token), request.upto, body, ids)
        found = room_ephemeral(body, "m.receipt")
        if token is not None:
            out.update(found)
            continue
        # Sent from scratch: the user's own receipts and those on the timeline sent (as Synapse).
        for room_id, ev in found.items():
            timeline = await _timeline_event_ids(hs, request, room_id)
            content = narrow_receipts(ev["content"], request.user_id, timeline)
            if content:
                out[room_id] = {"type": "m.receipt", "content": content}
    return {"rooms": out}


async def _timeline_event_ids(hs: HomeServer, request: ExtensionRequest, room_id: str) -> set[str]:
    """The events of the room's timeline in this response: as the core gave them, else its newest."""
    given = request.initial.get(room_id)
    if given is not None:
        return set(given)
    position = hs.events_stream.room_position(request.upto, room_id)
    events, _ = await hs.event_store.get_room_events_stream(room_id, 0, position, RECENT_EVENTS_FOR_RECEIPTS)
    return {ev.event_id for ev in events}


async def _typing_extension(hs: HomeServer, request: ExtensionRequest, scope: RoomScope) -> JsonDict:
    rooms = covered_rooms(scope, request.lists, request.subscriptions) & set(request.joined)
    out: dict[str, JsonDict] = {}
    for token, ids in _groups(request, rooms):
        if token is not None:
            # Typing positions restart with the stream's writer: one from before reads as 0 (as /sync).
            clamped = hs.typing_stream.clamp(token.get("typing"))
            if clamped != token.get("typing"):
                token = token.with_position("typing", clamped)
        body = scratch_body()
        await hs.sync.add_typing(_sync_config(request, token), request.upto, body, ids)
        out.update(room_ephemeral(body, "m.typing"))
    return {"rooms": out}
