"""Filter parsing, validation and event matching (client-server spec, "Filtering"; filter.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from hs.errors import MatrixError
from hs.services.filtering import (
    DEFAULT_FILTER,
    DEFAULT_TIMELINE_LIMIT,
    MAX_TIMELINE_LIMIT,
    EventFilter,
    Filter,
    only_fields,
    type_matches,
)


@dataclass
class Ev:
    type: str
    sender: str = "@alice:test"
    room_id: str = "!room:test"
    content: dict[str, Any] = field(default_factory=dict)


def errcode(value: Any) -> str:
    with pytest.raises(MatrixError) as exc:
        Filter.parse(value)
    assert exc.value.code == 400
    return exc.value.errcode


# -- parsing and validation --------------------------------------------------------------------------
def test_empty_filter_is_the_default() -> None:
    f = Filter.parse({})
    assert f == DEFAULT_FILTER
    assert f.timeline_limit == DEFAULT_TIMELINE_LIMIT == 10
    assert f.include_leave is False
    assert f.lazy_load_members is False
    assert f.event_format == "client"
    assert f.event_fields is None


def test_full_spec_example_parses() -> None:
    example = {
        "room": {
            "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
            "timeline": {"limit": 10, "types": ["m.room.message"], "not_rooms": ["!726s6s6q:example.com"],
                         "not_senders": ["@spam:example.com"]},
            "ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"],
                          "not_senders": ["@spam:example.com"]},
        },
        "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
        "event_format": "client",
        "event_fields": ["type", "content", "sender"],
    }
    f = Filter.parse(example)
    assert f.room.timeline.types == ("m.room.message",)
    assert f.room.timeline.not_senders == frozenset({"@spam:example.com"})
    assert f.room.state.not_rooms == frozenset({"!726s6s6q:example.com"})
    assert f.presence.types == ("m.presence",)
    assert f.event_fields == ("type", "content", "sender")
    assert f.raw is example


def test_room_filter_flags() -> None:
    f = Filter.parse({"room": {"include_leave": True, "rooms": ["!a:test"], "not_rooms": ["!b:test"],
                               "timeline": {"limit": 3},
                               "state": {"lazy_load_members": True, "include_redundant_members": True}}})
    assert f.include_leave is True
    assert f.timeline_limit == 3
    assert f.lazy_load_members is True
    assert f.include_redundant_members is True
    assert f.room_allowed("!a:test")
    assert not f.room_allowed("!b:test")
    assert not f.room_allowed("!c:test")


def test_timeline_limit_is_clamped() -> None:
    assert Filter.parse({"room": {"timeline": {"limit": 100000}}}).timeline_limit == MAX_TIMELINE_LIMIT


def test_not_rooms_wins_over_rooms() -> None:
    f = Filter.parse({"room": {"rooms": ["!a:test"], "not_rooms": ["!a:test"]}})
    assert not f.room_allowed("!a:test")


@pytest.mark.parametrize("value", [
    [],
    "a string",
    {"room": []},
    {"room": {"timeline": "x"}},
    {"room": {"timeline": {"types": "m.room.message"}}},
    {"room": {"timeline": {"types": [1]}}},
    {"room": {"timeline": {"limit": "10"}}},
    {"room": {"timeline": {"limit": 1.5}}},
    {"room": {"timeline": {"limit": True}}},
    {"room": {"include_leave": "yes"}},
    {"room": {"state": {"lazy_load_members": 1}}},
    {"room": {"timeline": {"contains_url": "true"}}},
    {"presence": {"not_senders": "@a:test"}},
    {"event_fields": "type"},
    {"event_format": 3},
])
def test_malformed_filters_are_bad_json(value: Any) -> None:
    assert errcode(value) == "M_BAD_JSON"


@pytest.mark.parametrize("value", [
    {"room": {"timeline": {"limit": 0}}},
    {"room": {"timeline": {"limit": -5}}},
    {"event_format": "xml"},
    {"room": {"rooms": ["not-a-room"]}},
    {"room": {"not_rooms": ["@user:test"]}},
    {"room": {"timeline": {"senders": ["alice"]}}},
    {"room": {"timeline": {"not_senders": ["!room:test"]}}},
])
def test_unacceptable_values_are_invalid_param(value: Any) -> None:
    assert errcode(value) == "M_INVALID_PARAM"


def test_unknown_keys_are_ignored() -> None:
    f = Filter.parse({"org.example.custom": 1, "room": {"timeline": {"org.example": True}}})
    assert f.timeline_limit == DEFAULT_TIMELINE_LIMIT


# -- matching ------------------------------------------------------------------------------------------
def test_wildcards() -> None:
    assert type_matches("m.room.*", "m.room.message")
    assert type_matches("m.room.*", "m.room.")
    assert not type_matches("m.room.*", "m.roomy")
    assert type_matches("*", "anything")
    assert type_matches("m.*.name", "m.room.name")
    assert not type_matches("m.*.name", "m.room.topic")
    assert type_matches("m.room.message", "m.room.message")
    assert not type_matches("m.room.message", "m.room.message.extra")
    # Regex metacharacters in a pattern are literal.
    assert not type_matches("m.room.mess?ge", "m.room.message")
    assert type_matches("a.b(c)", "a.b(c)")


def test_types_and_not_types() -> None:
    f = EventFilter.parse({"types": ["m.room.*"], "not_types": ["m.room.member"]}, "f")
    assert f.matches(Ev("m.room.message"))
    assert not f.matches(Ev("m.room.member"))  # not_types wins over types
    assert not f.matches(Ev("org.example.custom"))
    assert EventFilter.parse({"not_types": ["*"]}, "f").filter([Ev("a"), Ev("b")]) == []
    assert EventFilter.parse({"types": []}, "f").filter([Ev("a")]) == []  # an empty list matches nothing


def test_senders_and_not_senders() -> None:
    f = EventFilter.parse({"senders": ["@alice:test", "@bob:test"], "not_senders": ["@bob:test"]}, "f")
    assert f.matches(Ev("m.room.message", sender="@alice:test"))
    assert not f.matches(Ev("m.room.message", sender="@bob:test"))
    assert not f.matches(Ev("m.room.message", sender="@carol:test"))
    only_not = EventFilter.parse({"not_senders": ["@spam:test"]}, "f")
    assert only_not.matches(Ev("x", sender="@carol:test"))
    assert not only_not.matches(Ev("x", sender="@spam:test"))


def test_rooms_and_not_rooms() -> None:
    f = EventFilter.parse({"rooms": ["!a:test", "!b:test"], "not_rooms": ["!b:test"]}, "f")
    assert f.matches(Ev("x", room_id="!a:test"))
    assert not f.matches(Ev("x", room_id="!b:test"))
    assert not f.matches(Ev("x", room_id="!c:test"))


def test_contains_url() -> None:
    with_url = Ev("m.room.message", content={"url": "mxc://test/abc"})
    without = Ev("m.room.message", content={"body": "hi"})
    not_a_string = Ev("m.room.message", content={"url": 5})
    yes = EventFilter.parse({"contains_url": True}, "f")
    no = EventFilter.parse({"contains_url": False}, "f")
    either = EventFilter.parse({}, "f")
    assert yes.filter([with_url, without, not_a_string]) == [with_url]
    assert no.filter([with_url, without, not_a_string]) == [without, not_a_string]
    assert either.filter([with_url, without]) == [with_url, without]


def test_unrestricted() -> None:
    assert EventFilter().is_unrestricted
    assert EventFilter.parse({"limit": 5, "lazy_load_members": True}, "f").is_unrestricted
    assert not EventFilter.parse({"types": ["a"]}, "f").is_unrestricted
    assert not EventFilter.parse({"contains_url": False}, "f").is_unrestricted


def test_check_without_room_or_sender() -> None:
    presence = EventFilter.parse({"types": ["m.presence"], "not_senders": ["@x:test"]}, "f")
    assert presence.check("m.presence", "@alice:test")
    assert not presence.check("m.presence", "@x:test")
    assert not presence.check("m.typing")


# -- event_fields --------------------------------------------------------------------------------------
def test_only_fields() -> None:
    event = {"type": "m.room.message", "sender": "@a:test", "event_id": "$e",
             "content": {"body": "hi", "msgtype": "m.text", "a.b": 1}, "unsigned": {"age": 5}}
    assert only_fields(event, ["type", "content.body"]) == {"type": "m.room.message", "content": {"body": "hi"}}
    assert only_fields(event, ["content.a\\.b"]) == {"content": {"a.b": 1}}
    assert only_fields(event, ["content.missing", "nothing"]) == {}
    assert only_fields(event, ["content", "content.body"]) == {"content": event["content"]}
