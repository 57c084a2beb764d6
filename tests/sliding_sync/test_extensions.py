"""Extensions limited to the lists and rooms they name, account data (global and per room) sent once,
and the stable shape's own required_state features (exclude, lazy_members)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sliding_sync.client import Target, state_pairs


def _body(ext_lists: list[str] | None, ext_rooms: list[str] | None, sub: str | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"enabled": True}
    if ext_lists is not None:
        scope["lists"] = ext_lists
    if ext_rooms is not None:
        scope["rooms"] = ext_rooms
    body: dict[str, Any] = {
        "lists": {
            "dms": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [], "filters": {"is_dm": True}},
            "rest": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [], "filters": {"is_dm": False}},
        },
        "extensions": {"typing": dict(scope), "receipts": dict(scope), "account_data": dict(scope)},
    }
    if sub:
        body["room_subscriptions"] = {sub: {"timeline_limit": 1, "required_state": []}}
    return body


async def test_extensions_cover_only_named_lists_and_rooms(target: Target) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    dm = await alice.create_room(is_direct=True, invite=[bob.user_id])
    other = await alice.create_room(name="other", invite=[bob.user_id])
    for room in (dm, other):
        await bob.call("POST", f"/join/{room}", {})
    await alice.call("PUT", f"/user/{alice.user_id}/account_data/m.direct", {bob.user_id: [dm]})
    for room in (dm, other):
        await bob.call("PUT", f"/rooms/{room}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
        await alice.call("PUT", f"/user/{alice.user_id}/rooms/{room}/account_data/m.test.note", {"room": room})

    def covered(resp: dict[str, Any]) -> dict[str, set[str]]:
        ext = resp.get("extensions", {})
        return {"typing": set(ext.get("typing", {}).get("rooms", {})),
                "account_data": set(ext.get("account_data", {}).get("rooms", {}))}

    only_dms = await alice.slide(_body(["dms"], []), pos=None)
    assert covered(only_dms) == {"typing": {dm}, "account_data": {dm}}
    every_list = await alice.slide(_body(["*"], None), pos=None)
    assert covered(every_list) == {"typing": {dm, other}, "account_data": {dm, other}}
    # Rooms named explicitly: only those that are in a list or subscribed to count.
    by_room = await alice.slide(_body([], [other]), pos=None)
    assert covered(by_room) == {"typing": {other}, "account_data": {other}}
    global_types = {e["type"] for e in by_room["extensions"]["account_data"].get("global", [])}
    assert "m.direct" in global_types


async def test_account_data_arrives_once(target: Target) -> None:
    alice = await target.user("alice")
    room = await alice.create_room(name="notes")
    body = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": []}},
            "extensions": {"account_data": {"enabled": True, "lists": ["*"], "rooms": ["*"]}}}
    await alice.slide(body, pos=None)
    await alice.call("PUT", f"/user/{alice.user_id}/account_data/m.test.global", {"v": 1})
    await alice.call("PUT", f"/user/{alice.user_id}/rooms/{room}/account_data/m.test.room", {"v": 2})
    changed = await alice.slide(body)
    ext = changed["extensions"]["account_data"]
    assert [(e["type"], e["content"]) for e in ext["global"]] == [("m.test.global", {"v": 1})]
    assert [(e["type"], e["content"]) for e in ext["rooms"][room]] == [("m.test.room", {"v": 2})]
    again = await alice.slide(body)
    ext = again.get("extensions", {}).get("account_data", {})
    assert ext.get("global", []) == [] and ext.get("rooms", {}) == {}


async def test_stable_required_state_exclude_and_lazy_members(make_server: Any) -> None:
    """v4 only: `exclude` removes entries `include` wildcards; `lazy_members` adds the timeline's
    senders and no other members."""
    from tests.sliding_sync.conftest import hs_target

    target = await hs_target(make_server, "v4")
    alice = await target.user("alice")
    bob = await target.user("bob")
    carol = await target.user("carol")
    room = await alice.create_room(name="stable", topic="a topic", preset="public_chat")
    for who in (bob, carol):
        await who.call("POST", f"/join/{room}", {})
    await bob.send_message(room, "from bob")
    body = {"lists": {"all": {"range": [0, 9], "timeline_limit": 1, "required_state": {
        "include": [["*", ""]], "exclude": [["m.room.topic", ""]], "lazy_members": True}}}}
    status, data = await alice.request("POST", "/_matrix/client/v4/sync", body)
    assert status == 200, data
    entry = data["rooms"][room]
    pairs = state_pairs({"required_state": entry["required_state"]})
    assert ("m.room.name", "") in pairs and ("m.room.create", "") in pairs
    assert ("m.room.topic", "") not in pairs
    members = {k for t, k in pairs if t == "m.room.member"}
    assert members == {bob.user_id}
    assert [e["content"].get("body") for e in entry["timeline_events"]] == ["from bob"]
    assert entry["membership"] == "join"


@pytest.mark.parametrize("presence", ["offline", "bogus"])
async def test_stable_set_presence(make_server: Any, presence: str) -> None:
    from tests.sliding_sync.conftest import hs_target

    target = await hs_target(make_server, "v4")
    alice = await target.user("alice")
    status, data = await alice.request("POST", "/_matrix/client/v4/sync", {"set_presence": presence, "lists": {}})
    if presence == "bogus":
        assert (status, data.get("errcode")) == (400, "M_BAD_JSON"), data
    else:
        assert status == 200, data
