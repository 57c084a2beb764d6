"""Sliding sync extensions without a server: parsing the request, which rooms each extension covers
(Synapse's `lists`/`rooms` rules), and reshaping /sync section output."""

from __future__ import annotations

from typing import Any

import pytest

from hs.errors import MatrixError
from hs.services.sliding_sync.extensions import (
    RoomScope,
    ToDeviceConfig,
    covered_rooms,
    narrow_receipts,
    parse_extensions,
    room_account_data,
    room_ephemeral,
    room_groups,
    scratch_body,
)
from hs.streams.tokens import StreamToken

LISTS = {"all": ["!a", "!b", "!c"], "dms": ["!d", "!a"], "empty": []}
SUBS = ["!s", "!a"]


# -- parsing ---------------------------------------------------------------------------------------------
def test_absent_or_disabled_extensions_are_off_and_unknown_ones_ignored() -> None:
    for raw in (None, {}, {"to_device": {"enabled": False}}, {"e2ee": {}}, {"typing": {"enabled": None}},
                {"org.example.unknown": {"enabled": True}}, {"thread_subscriptions": {"enabled": True}}):
        cfg = parse_extensions(raw)
        assert (cfg.to_device, cfg.e2ee, cfg.account_data, cfg.receipts, cfg.typing) == (
            None, False, None, None, None), raw


def test_enabled_extensions_with_their_defaults() -> None:
    cfg = parse_extensions({name: {"enabled": True} for name in
                            ("to_device", "e2ee", "account_data", "receipts", "typing")})
    assert cfg.to_device == ToDeviceConfig(since=None, limit=100)
    assert cfg.e2ee is True
    assert cfg.account_data == cfg.receipts == cfg.typing == RoomScope(lists=("*",), rooms=("*",))


def test_lists_and_rooms_null_means_none_and_values_are_kept() -> None:
    cfg = parse_extensions({"receipts": {"enabled": True, "lists": None, "rooms": ["!x"]},
                            "typing": {"enabled": True, "lists": ["dms"], "rooms": None}})
    assert cfg.receipts == RoomScope(lists=None, rooms=("!x",))
    assert cfg.typing == RoomScope(lists=("dms",), rooms=None)


def test_to_device_since_and_limit() -> None:
    assert parse_extensions({"to_device": {"enabled": True, "since": "42", "limit": 7}}).to_device == \
        ToDeviceConfig(since=42, limit=7)
    # The limit is clamped to [1, 1000], never refused.
    assert parse_extensions({"to_device": {"enabled": True, "limit": 5000}}).to_device == ToDeviceConfig(limit=1000)
    assert parse_extensions({"to_device": {"enabled": True, "limit": 0}}).to_device == ToDeviceConfig(limit=1)


@pytest.mark.parametrize("raw", [
    [],
    {"to_device": []},
    {"to_device": {"enabled": "yes"}},
    {"to_device": {"enabled": True, "since": 5}},
    {"to_device": {"enabled": True, "limit": "10"}},
    {"to_device": {"enabled": True, "limit": True}},
    {"account_data": {"enabled": True, "lists": "all"}},
    {"receipts": {"enabled": True, "rooms": [1]}},
    {"typing": {"enabled": 1}},
])
def test_malformed_extensions_are_bad_json(raw: Any) -> None:
    with pytest.raises(MatrixError) as info:
        parse_extensions(raw)
    assert (info.value.code, info.value.errcode) == (400, "M_BAD_JSON")


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", ""])
def test_a_to_device_since_that_is_no_position_is_invalid_param(since: str) -> None:
    with pytest.raises(MatrixError) as info:
        parse_extensions({"to_device": {"enabled": True, "since": since}})
    assert (info.value.code, info.value.errcode) == (400, "M_INVALID_PARAM")


def test_a_disabled_extension_is_not_validated_further() -> None:
    # Synapse validates every field; a disabled extension with a bad `since` is still off here.
    assert parse_extensions({"to_device": {"enabled": False, "since": "x"}}).to_device is None


# -- which rooms -----------------------------------------------------------------------------------------
def test_default_scope_covers_every_list_and_subscription() -> None:
    assert covered_rooms(RoomScope(), LISTS, SUBS) == {"!a", "!b", "!c", "!d", "!s"}


def test_named_lists_only_and_unknown_list_names_ignored() -> None:
    assert covered_rooms(RoomScope(lists=("dms", "nope"), rooms=None), LISTS, SUBS) == {"!d", "!a"}
    assert covered_rooms(RoomScope(lists=(), rooms=None), LISTS, SUBS) == set()
    assert covered_rooms(RoomScope(lists=None, rooms=None), LISTS, SUBS) == set()


def test_rooms_match_any_room_of_the_response_as_in_synapse() -> None:
    # A subscribed room, a room only in a list, and a room in neither (not in the response: left out).
    assert covered_rooms(RoomScope(lists=None, rooms=("!s", "!b", "!zzz")), LISTS, SUBS) == {"!s", "!b"}
    # `*` in rooms: every room of the response (Synapse's actual_room_ids), lists included.
    assert covered_rooms(RoomScope(lists=None, rooms=("*",)), LISTS, SUBS) == {"!a", "!b", "!c", "!d", "!s"}
    assert covered_rooms(RoomScope(lists=None, rooms=("*",)), {}, SUBS) == {"!s", "!a"}


def test_lists_and_rooms_add_up() -> None:
    assert covered_rooms(RoomScope(lists=("dms",), rooms=("!s",)), LISTS, SUBS) == {"!a", "!d", "!s"}


def test_room_groups_by_the_token_each_room_is_read_from() -> None:
    since = StreamToken({"receipts": 9})
    earlier = StreamToken({"receipts": 4})
    same_earlier = StreamToken({"receipts": 4})
    rooms = {"!new", "!live", "!back1", "!back2", "!both"}
    # A new connection: every room from scratch, whatever the core says.
    assert room_groups(None, ["!new"], {"!back1": earlier}, rooms) == [(None, sorted(rooms))]
    assert room_groups(None, [], {}, set()) == []
    groups = room_groups(since, ["!new", "!both", "!gone"], {"!back1": earlier, "!back2": same_earlier,
                                                            "!both": earlier}, rooms)
    # From scratch wins over an earlier token; rooms back from the same token are read together.
    assert groups == [(None, ["!both", "!new"]), (since, ["!live"]), (earlier, ["!back1", "!back2"])]
    assert groups[1][0] is since  # `since` itself, so callers can tell the main group apart


# -- reshaping -------------------------------------------------------------------------------------------
def test_room_account_data_and_ephemeral_from_a_sync_body() -> None:
    body = scratch_body()
    join = body["rooms"]["join"]
    join["!a"] = {"account_data": {"events": [{"type": "m.tag", "content": {"tags": {}}}]},
                  "ephemeral": {"events": [{"type": "m.typing", "content": {"user_ids": ["@u"]}},
                                           {"type": "m.receipt", "content": {"$e": {}}}]}}
    join["!b"] = {"account_data": {"events": []}, "ephemeral": {"events": []}}
    assert room_account_data(body) == {"!a": [{"type": "m.tag", "content": {"tags": {}}}]}
    assert room_ephemeral(body, "m.typing") == {"!a": {"type": "m.typing", "content": {"user_ids": ["@u"]}}}
    assert room_ephemeral(body, "m.receipt") == {"!a": {"type": "m.receipt", "content": {"$e": {}}}}


def test_narrow_receipts_keeps_the_timeline_and_the_users_own() -> None:
    content = {
        "$old": {"m.read": {"@me": {"ts": 1}, "@other": {"ts": 2}}, "m.read.private": {"@me": {"ts": 3}}},
        "$older": {"m.read": {"@other": {"ts": 4}}},
        "$recent": {"m.read": {"@other": {"ts": 5}, "@third": {"ts": 6}}},
    }
    assert narrow_receipts(content, "@me", {"$recent"}) == {
        "$old": {"m.read": {"@me": {"ts": 1}}, "m.read.private": {"@me": {"ts": 3}}},
        "$recent": {"m.read": {"@other": {"ts": 5}, "@third": {"ts": 6}}},
    }
    assert narrow_receipts(content, "@nobody", set()) == {}
