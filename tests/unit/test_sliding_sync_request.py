"""Sliding sync request parsing: both shapes into one form, and the bounds (400 M_BAD_JSON)."""

from __future__ import annotations

from typing import Any

import pytest

from hs.errors import MatrixError
from hs.services.sliding_sync.request import (
    MAX_RANGE_INDEX,
    ListFilters,
    RequiredState,
    RoomConfig,
    SlidingSyncRequest,
    parse_request,
)

ROOM = "!abc:example.org"


def unstable(body: dict[str, Any], **kw: Any) -> SlidingSyncRequest:
    return parse_request(body, "unstable", user_id="@a:x", device_id="D", **kw)


def stable(body: dict[str, Any]) -> SlidingSyncRequest:
    return parse_request(body, "v4", user_id="@a:x", device_id="D")


def test_unstable_shape() -> None:
    req = unstable({
        "conn_id": "main",
        "lists": {"all": {"ranges": [[0, 19], [20, 29]], "timeline_limit": 1,
                          "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"], ["*", "*"]],
                          "filters": {"is_dm": True, "is_invite": False, "room_types": [None, "m.space"],
                                      "not_tags": ["m.lowpriority"]}}},
        "room_subscriptions": {ROOM: {"timeline_limit": 20, "required_state": [["m.room.topic", ""]]}},
        "extensions": {"e2ee": {"enabled": True}},
    }, pos="12", timeout_ms=30000, set_presence="offline")
    assert (req.shape, req.conn_id, req.pos, req.timeout_ms, req.set_presence) == (
        "unstable", "main", "12", 30000, "offline")
    lst = req.lists["all"]
    assert lst.ranges == ((0, 19), (20, 29))
    assert lst.room == RoomConfig(RequiredState((("m.room.name", ""), ("*", "*")), (), True), 1)
    assert lst.filters == ListFilters(is_dm=True, is_invite=False, room_types=(None, "m.space"),
                                      not_tags=("m.lowpriority",))
    assert req.room_subscriptions[ROOM] == RoomConfig(RequiredState((("m.room.topic", ""),)), 20)
    assert req.extensions == {"e2ee": {"enabled": True}}


def test_stable_shape() -> None:
    req = stable({
        "pos": "7", "timeout": 1000, "set_presence": "unavailable",
        "lists": {"all": {"range": [0, 9], "timeline_limit": 5,
                          "required_state": {"include": [["*", "*"]], "exclude": [["m.room.member", "*"]],
                                             "lazy_members": True},
                          "filters": {"is_invited": True}}},
    })
    assert (req.shape, req.pos, req.timeout_ms, req.set_presence, req.conn_id) == ("v4", "7", 1000, "unavailable", "")
    lst = req.lists["all"]
    assert lst.ranges == ((0, 9),)
    assert lst.room.required_state == RequiredState((("*", "*"),), (("m.room.member", "*"),), True)
    assert lst.filters.is_invite is True


def test_empty_body_is_a_request_for_nothing() -> None:
    req = stable({})
    assert (req.lists, req.room_subscriptions, req.extensions, req.pos, req.timeout_ms) == ({}, {}, {}, None, 0)


def test_required_state_matching() -> None:
    rs = RequiredState((("m.room.member", "$ME"), ("m.room.name", "*"), ("*", "x")), (("m.room.name", "no"),))
    assert rs.matches("m.room.member", "@a:x", "@a:x")
    assert not rs.matches("m.room.member", "@b:x", "@a:x")
    assert rs.matches("m.room.name", "", "@a:x")
    assert not rs.matches("m.room.name", "no", "@a:x")
    assert rs.matches("anything", "x", "@a:x")
    merged = rs.merge(RequiredState((("m.room.topic", ""),), (), True))
    assert merged.lazy_members and merged.exclude == () and ("m.room.topic", "") in merged.include


def test_limits_are_clamped() -> None:
    req = unstable({"lists": {"a": {"ranges": [[0, 10 ** 9]], "timeline_limit": 5000}}})
    assert req.lists["a"].ranges == ((0, MAX_RANGE_INDEX),)
    assert req.lists["a"].room.timeline_limit == 1000
    assert stable({"timeout": 10 ** 12}).timeout_ms == 600000


BAD_UNSTABLE: list[dict[str, Any]] = [
    {"lists": []},
    {"lists": {"a": {"ranges": [[5, 1]]}}},
    {"lists": {"a": {"ranges": [[-1, 1]]}}},
    {"lists": {"a": {"ranges": [[MAX_RANGE_INDEX + 1, MAX_RANGE_INDEX + 2]]}}},
    {"lists": {"a": {"ranges": [[0, "9"]]}}},
    {"lists": {"a": {"ranges": [[0, 1, 2]]}}},
    {"lists": {"a": {"timeline_limit": -1}}},
    {"lists": {"a": {"timeline_limit": True}}},
    {"lists": {"a": {"required_state": [["m.room.name"]]}}},
    {"lists": {"a": {"required_state": [["m.room.name", ""]] * 101}}},
    {"lists": {"a": {"filters": {"is_dm": "yes"}}}},
    {"lists": {"a": {"filters": {"spaces": [1]}}}},
    {"lists": {"x" * 65: {}}},
    {"lists": {f"l{i}": {} for i in range(101)}},
    {"room_subscriptions": {"not-a-room": {}}},
    {"room_subscriptions": {f"!r{i}:x": {} for i in range(101)}},
    {"conn_id": 5},
    {"extensions": []},
]


@pytest.mark.parametrize("body", BAD_UNSTABLE)
def test_bad_unstable_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(MatrixError) as err:
        unstable(body)
    assert (err.value.code, err.value.errcode) == (400, "M_BAD_JSON")


BAD_STABLE: list[dict[str, Any]] = [
    {"timeout": -1},
    {"timeout": "10"},
    {"pos": 3},
    {"set_presence": "busy"},
    {"lists": {"a": {"range": [[0, 1]]}}},
    {"lists": {"a": {"required_state": [["m.room.name", ""]]}}},
    {"lists": {"a": {"required_state": {"lazy_members": "yes"}}}},
    {"lists": {"a": {"required_state": {"include": [["a", "b"]] * 60, "exclude": [["c", "d"]] * 60}}}},
    {"lists": {"a": {"filters": {"is_invited": 1}}}},
]


@pytest.mark.parametrize("body", BAD_STABLE)
def test_bad_stable_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(MatrixError) as err:
        stable(body)
    assert (err.value.code, err.value.errcode) == (400, "M_BAD_JSON")
