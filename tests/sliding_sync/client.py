"""A small sliding sync client for tests: one request description, sent in either shape.

hs serves simplified sliding sync (MSC4186) twice: Synapse's unstable shape at
`/_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (`pos`/`timeout` as query parameters,
`ranges`, `required_state` as `[type, state_key]` pairs with `$LAZY`, `is_invite`, rooms with `timeline`
and `invite_state`) and the stable shape at `/_matrix/client/v4/sync` (`pos`/`timeout`/`set_presence` in
the body, a single `range`, `required_state: {include, exclude, lazy_members}`, `is_invited`, rooms with
`timeline_events`, `stripped_state` and `membership`).

Tests describe a request once, in the unstable vocabulary (a plain dict), and `SlidingClient.sync` turns
it into the shape under test and normalises the answer back to the unstable vocabulary, so one test body
checks both endpoints (and Synapse, which only has the unstable one).
"""

from __future__ import annotations

import copy
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.harness import OPEN_CLIENTS, Client

UNSTABLE_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
V4_PATH = "/_matrix/client/v4/sync"
SHAPES = ("unstable", "v4")

LAZY = "$LAZY"


class SlidingSyncError(AssertionError):
    """A sliding sync request that did not answer 200; carries the status and JSON body."""

    def __init__(self, status: int, body: Any, request: Any) -> None:
        super().__init__(f"sliding sync answered {status}: {body!r} to {request!r}")
        self.status = status
        self.body = body
        self.request = request


# -- request shapes ----------------------------------------------------------------------------------


def _v4_required_state(pairs: list[list[str]]) -> dict[str, Any]:
    """`[[type, state_key], ...]` (with `["m.room.member", "$LAZY"]` for lazy members) as the stable
    `{include, exclude, lazy_members}` object (include/exclude hold `[type, state_key]` pairs). A `["-", ...]` pair is not part of the unstable shape;
    tests that want `exclude` pass it in `required_state_exclude`."""
    include: list[list[str]] = []
    lazy = False
    for ev_type, state_key in pairs:
        if ev_type == "m.room.member" and state_key == LAZY:
            lazy = True
            continue
        include.append([ev_type, state_key])
    out: dict[str, Any] = {"include": include}
    if lazy:
        out["lazy_members"] = True
    return out


def _v4_filters(filters: Any) -> Any:
    if not isinstance(filters, dict):
        return filters
    out = dict(filters)
    if "is_invite" in out:
        out["is_invited"] = out.pop("is_invite")
    return out


def _v4_room_config(cfg: Any) -> Any:
    if not isinstance(cfg, dict):
        return cfg
    out = dict(cfg)
    if isinstance(out.get("required_state"), list) and all(
            isinstance(p, list) and len(p) == 2 for p in out["required_state"]):
        out["required_state"] = _v4_required_state(out["required_state"])
    if "required_state_exclude" in out:
        out.setdefault("required_state", {"include": []})["exclude"] = [
            list(p) for p in out.pop("required_state_exclude")]
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def to_v4(body: dict[str, Any]) -> dict[str, Any]:
    """The stable-shape body of an unstable-shape request body (without `pos`/`timeout`). Malformed
    parts (for the error tests) are passed through as they are."""
    out = copy.deepcopy(body)
    for name, lst in list(_dict(out.get("lists")).items()):
        lst = _v4_room_config(lst)
        if not isinstance(lst, dict):
            continue
        ranges = lst.pop("ranges", None)
        if isinstance(ranges, list) and len(ranges) != 1:
            lst["ranges"] = ranges  # not expressible as one range: left for the server to refuse
        elif ranges is not None:
            lst["range"] = ranges[0] if isinstance(ranges, list) else ranges
        if "filters" in lst:
            lst["filters"] = _v4_filters(lst["filters"])
        out["lists"][name] = lst
    for room_id, sub in list(_dict(out.get("room_subscriptions")).items()):
        out["room_subscriptions"][room_id] = _v4_room_config(sub)
    return out


def to_unstable(body: dict[str, Any]) -> dict[str, Any]:
    """The unstable body: drops the test-only `required_state_exclude` (not expressible there)."""
    out = copy.deepcopy(body)
    for cfg in [*_dict(out.get("lists")).values(), *_dict(out.get("room_subscriptions")).values()]:
        if isinstance(cfg, dict):
            cfg.pop("required_state_exclude", None)
    return out


# -- response normalisation --------------------------------------------------------------------------


def normalise(resp: dict[str, Any]) -> dict[str, Any]:
    """A response of either shape in the unstable vocabulary: rooms' `timeline_events` become
    `timeline`, `stripped_state` becomes `invite_state`; `membership` stays when present."""
    out = copy.deepcopy(resp)
    for room in out.get("rooms", {}).values():
        if "timeline_events" in room:
            room["timeline"] = room.pop("timeline_events")
        if "stripped_state" in room:
            room["invite_state"] = room.pop("stripped_state")
    return out


# -- the client --------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where a test sends its requests: a base URL (http for hs, https for Synapse), the CA to trust,
    the server's name (user IDs end in it) and the sliding sync shape to speak."""

    kind: str  # "hs" | "synapse"
    base_url: str
    server_name: str
    shape: str = "unstable"
    ca_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self) -> SlidingClient:
        c = SlidingClient(self.base_url, self.shape, self.ca_path)
        OPEN_CLIENTS.append(c)
        return c

    async def user(self, prefix: str) -> SlidingClient:
        """A newly registered user (unique localpart) logged in on a fresh device."""
        c = self.client()
        await c.register(f"{prefix}-{uuid.uuid4().hex[:8]}")
        return c


class SlidingClient(Client):
    """tests.harness.Client (raw Client-Server calls, optionally over https) plus sliding sync in one
    shape; keeps the connection's `pos` between calls unless told otherwise."""

    __test__ = False

    def __init__(self, base_url: str, shape: str = "unstable", ca_path: str | None = None) -> None:
        super().__init__(base_url)
        assert shape in SHAPES, shape
        self.shape = shape
        self.ca_path = ca_path
        self.pos: str | None = None
        self.last_raw: dict[str, Any] | None = None

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      params: dict[str, str] | None = None, auth: bool = True) -> tuple[int, Any]:
        if self._session is None:
            connector = None
            if self.ca_path:
                connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.ca_path))
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=60))
        return await super().request(method, path, body, raw=raw, params=params, auth=auth)

    async def reconnect(self) -> None:
        """Drop the HTTP session (e.g. after a server restart); the next request opens a new one."""
        await self.close()
        self._session = None

    async def sync_raw(self, body: dict[str, Any], *, pos: str | None = None,
                       timeout: int | None = 0) -> tuple[int, Any]:
        """One request in this client's shape; (status, raw JSON). `body` is in the unstable
        vocabulary; `pos` and `timeout` go where the shape wants them."""
        if self.shape == "unstable":
            params: dict[str, str] = {}
            if pos is not None:
                params["pos"] = pos
            if timeout is not None:
                params["timeout"] = str(timeout)
            return await self.request("POST", UNSTABLE_PATH, to_unstable(body), params=params or None)
        v4 = to_v4(body)
        if pos is not None:
            v4["pos"] = pos
        if timeout is not None:
            v4["timeout"] = timeout
        return await self.request("POST", V4_PATH, v4)

    async def slide(self, body: dict[str, Any], *, pos: str | None | bool = True,
                   timeout: int | None = 0) -> dict[str, Any]:
        """A request that must succeed; returns the normalised response and remembers its `pos`.

        `pos=True` (default) continues from the last response, `pos=None` starts over, a string is
        sent as is."""
        since = self.pos if pos is True else (pos if isinstance(pos, str) else None)
        status, data = await self.sync_raw(body, pos=since, timeout=timeout)
        if status != 200:
            raise SlidingSyncError(status, data, body)
        self.last_raw = data
        self.pos = data["pos"]
        return normalise(data)

    async def send_state(self, room_id: str, ev_type: str, content: dict[str, Any],
                         state_key: str = "") -> str:
        status, data = await self.request("PUT", f"/rooms/{room_id}/state/{ev_type}/{state_key}", content)
        assert status == 200, (ev_type, status, data)
        return str(data["event_id"])

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """A Client-Server request that must succeed; its JSON body."""
        status, data = await self.request(method, path, body)
        assert status == 200, (method, path, status, data)
        return data


# -- helpers for reading responses --------------------------------------------------------------------


def list_room_ids(resp: dict[str, Any], name: str) -> list[str] | None:
    """The room IDs in list `name`'s window, in order, or None for the stable shape, whose lists carry
    only their `count` (clients order the rooms they get by `bump_stamp`)."""
    lst = resp["lists"][name]
    if "room_ids" in lst:
        return list(lst["room_ids"])
    if "ops" not in lst:
        return None
    ids: list[str] = []
    for op in lst["ops"]:
        if op.get("op") == "SYNC":
            ids.extend(op.get("room_ids", []))
    return ids


def assert_list(resp: dict[str, Any], name: str, expected: list[str] | set[str]) -> None:
    """List `name` has `len(expected)` rooms and, where the shape says which (unstable), exactly these
    (in this order when `expected` is a list). The window must cover the whole list."""
    assert resp["lists"][name]["count"] == len(expected), (name, resp["lists"][name], expected)
    ids = list_room_ids(resp, name)
    if ids is None:
        return
    if isinstance(expected, set):
        assert set(ids) == expected, (name, ids, expected)
    else:
        assert ids == expected, (name, ids, expected)


def by_recency(resp: dict[str, Any]) -> list[str]:
    """The response's rooms ordered as a client orders them: highest `bump_stamp` first."""
    return sorted(resp.get("rooms", {}), key=lambda r: resp["rooms"][r]["bump_stamp"], reverse=True)


def timeline_bodies(room: dict[str, Any]) -> list[str]:
    return [e["content"].get("body", "") for e in room.get("timeline", []) if e["type"] == "m.room.message"]


def state_pairs(room: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in room.get("required_state", [])}
