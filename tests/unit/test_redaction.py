"""The redaction algorithm for every room version (rooms/fragments/v1-, v6-, v9-, v11-redactions)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hs.events.redaction import redact_pdu, redact_shallow
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

ALL_VERSIONS = [KNOWN_ROOM_VERSIONS[str(n)] for n in range(1, 13)]


def _num(rv: RoomVersion) -> int:
    return int(rv.identifier)


def _pdu(event_type: str, content: Any, **extra: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": event_type,
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "content": content,
        "hashes": {"sha256": "aGFzaA"},
        "signatures": {"example.org": {"ed25519:1": "c2ln"}},
        "depth": 12,
        "prev_events": ["$prev"],
        "auth_events": ["$auth1", "$auth2"],
        "origin_server_ts": 1_700_000_000_000,
    }
    pdu.update(extra)
    return pdu


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_top_level_keys(rv: RoomVersion) -> None:
    pdu = _pdu(
        "m.room.message",
        {"body": "secret"},
        event_id="$ev:example.org",
        state_key="",
        origin="example.org",
        membership="join",
        prev_state=[],
        unsigned={"age": 5},
        age_ts=123,
        redacts="$other",
        custom_key="x",
    )
    out = redact_pdu(pdu, rv)
    always = {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
    # v11 stopped protecting origin, membership and prev_state.
    expected = always if _num(rv) >= 11 else always | {"origin", "membership", "prev_state"}
    assert set(out) == expected
    for key in expected - {"content"}:
        assert out[key] == pdu[key]
    assert out["content"] == {}


MEMBER_CONTENT = {
    "membership": "join",
    "displayname": "Alice",
    "avatar_url": "mxc://example.org/a",
    "join_authorised_via_users_server": "@admin:example.org",
    "third_party_invite": {
        "display_name": "alice@example.org",
        "signed": {"mxid": "@alice:example.org", "token": "t"},
    },
}


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_member_content(rv: RoomVersion) -> None:
    out = redact_pdu(_pdu("m.room.member", MEMBER_CONTENT, state_key="@alice:example.org"), rv)
    expected: dict[str, Any] = {"membership": "join"}
    if _num(rv) >= 9:
        expected["join_authorised_via_users_server"] = "@admin:example.org"
    if _num(rv) >= 11:
        expected["third_party_invite"] = {"signed": {"mxid": "@alice:example.org", "token": "t"}}
    assert out["content"] == expected


@pytest.mark.parametrize("rv", ALL_VERSIONS[10:], ids=lambda rv: "v" + rv.identifier)
def test_member_third_party_invite_without_signed_is_dropped(rv: RoomVersion) -> None:
    content = {"membership": "invite", "third_party_invite": {"display_name": "x"}}
    assert redact_pdu(_pdu("m.room.member", content, state_key="@b:x"), rv)["content"] == {
        "membership": "invite"
    }


CREATE_CONTENT = {
    "creator": "@alice:example.org",
    "room_version": "9",
    "m.federate": False,
    "predecessor": {"room_id": "!old:example.org", "event_id": "$last"},
    "additional_creators": ["@bob:example.org"],
}


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_create_content(rv: RoomVersion) -> None:
    out = redact_pdu(_pdu("m.room.create", CREATE_CONTENT, state_key=""), rv)
    if _num(rv) >= 11:
        assert out["content"] == CREATE_CONTENT  # v11+: the create event keeps all its content
    else:
        assert out["content"] == {"creator": "@alice:example.org"}


JOIN_RULES_CONTENT = {
    "join_rule": "restricted",
    "allow": [{"type": "m.room_membership", "room_id": "!space:example.org"}],
    "other": True,
}


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_join_rules_content(rv: RoomVersion) -> None:
    out = redact_pdu(_pdu("m.room.join_rules", JOIN_RULES_CONTENT, state_key=""), rv)
    expected: dict[str, Any] = {"join_rule": "restricted"}
    if _num(rv) >= 8:
        expected["allow"] = JOIN_RULES_CONTENT["allow"]
    assert out["content"] == expected


POWER_LEVELS_CONTENT = {
    "ban": 50,
    "events": {"m.room.name": 100},
    "events_default": 0,
    "invite": 0,
    "kick": 50,
    "notifications": {"room": 20},
    "redact": 50,
    "state_default": 50,
    "users": {"@alice:example.org": 100},
    "users_default": 0,
}


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_power_levels_content(rv: RoomVersion) -> None:
    out = redact_pdu(_pdu("m.room.power_levels", POWER_LEVELS_CONTENT, state_key=""), rv)
    expected = {k: v for k, v in POWER_LEVELS_CONTENT.items() if k not in ("notifications", "invite")}
    if _num(rv) >= 11:
        expected["invite"] = 0
    assert out["content"] == expected


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_aliases_content(rv: RoomVersion) -> None:
    out = redact_pdu(
        _pdu("m.room.aliases", {"aliases": ["#a:example.org"], "x": 1}, state_key="example.org"), rv
    )
    # Protected only while aliases were special-cased by the auth rules (v1-v5).
    assert out["content"] == ({"aliases": ["#a:example.org"]} if _num(rv) <= 5 else {})


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_history_visibility_content(rv: RoomVersion) -> None:
    out = redact_pdu(
        _pdu("m.room.history_visibility", {"history_visibility": "shared", "x": 1}, state_key=""), rv
    )
    assert out["content"] == {"history_visibility": "shared"}


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_redaction_event(rv: RoomVersion) -> None:
    pdu = _pdu("m.room.redaction", {"redacts": "$target", "reason": "spam"}, redacts="$target")
    out = redact_pdu(pdu, rv)
    assert "redacts" not in out  # the top-level key is not protected in any version
    assert out["content"] == ({"redacts": "$target"} if _num(rv) >= 11 else {})


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
@pytest.mark.parametrize(
    "event_type", ["m.room.message", "m.room.name", "m.room.topic", "m.room.encrypted", "org.example.custom"]
)
def test_other_types_lose_all_content(rv: RoomVersion, event_type: str) -> None:
    content = {"body": "x", "name": "n", "membership": "join", "creator": "@a:b", "join_rule": "public"}
    assert redact_pdu(_pdu(event_type, content), rv)["content"] == {}


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
@pytest.mark.parametrize("content", [None, "string", ["list"], 5])
def test_missing_or_malformed_content_becomes_empty(rv: RoomVersion, content: Any) -> None:
    pdu = _pdu("m.room.member", content, state_key="@a:b")
    if content is None:
        del pdu["content"]
    assert redact_pdu(pdu, rv)["content"] == {}


def test_v12_behaves_like_v11() -> None:
    for event_type, content in [
        ("m.room.member", MEMBER_CONTENT),
        ("m.room.create", CREATE_CONTENT),
        ("m.room.join_rules", JOIN_RULES_CONTENT),
        ("m.room.power_levels", POWER_LEVELS_CONTENT),
        ("m.room.redaction", {"redacts": "$x"}),
    ]:
        pdu = _pdu(event_type, content, state_key="", origin="example.org")
        assert redact_pdu(pdu, KNOWN_ROOM_VERSIONS["12"]) == redact_pdu(pdu, KNOWN_ROOM_VERSIONS["11"])
    # a v12 create event has no room_id; redaction must not invent one
    create = _pdu("m.room.create", CREATE_CONTENT, state_key="")
    del create["room_id"]
    assert "room_id" not in redact_pdu(create, KNOWN_ROOM_VERSIONS["12"])


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_redact_pdu_is_a_deep_copy_and_leaves_input_alone(rv: RoomVersion) -> None:
    pdu = _pdu("m.room.power_levels", POWER_LEVELS_CONTENT, state_key="", unsigned={"age": 1})
    before = copy.deepcopy(pdu)
    out = redact_pdu(pdu, rv)
    assert pdu == before
    out["content"]["users"]["@mallory:example.org"] = 100
    out["signatures"]["example.org"]["ed25519:1"] = "changed"
    out["prev_events"].append("$x")
    assert pdu == before


@pytest.mark.parametrize("rv", ALL_VERSIONS, ids=lambda rv: "v" + rv.identifier)
def test_redaction_is_idempotent(rv: RoomVersion) -> None:
    for event_type, content in [("m.room.member", MEMBER_CONTENT), ("m.room.create", CREATE_CONTENT)]:
        once = redact_pdu(_pdu(event_type, content, state_key="", origin="o", unsigned={"a": 1}), rv)
        assert redact_pdu(once, rv) == once


def test_redact_shallow_matches_redact_pdu_without_copying_top_level() -> None:
    rv = KNOWN_ROOM_VERSIONS["10"]
    pdu = _pdu("m.room.join_rules", JOIN_RULES_CONTENT, state_key="")
    shallow = redact_shallow(pdu, rv)
    assert shallow == redact_pdu(pdu, rv)
    assert shallow is not pdu and shallow["content"] is not pdu["content"]
    shallow["content"]["new"] = 1
    assert "new" not in pdu["content"]
