"""The raw answers' shapes: the unstable endpoint speaks Synapse's vocabulary, the v4 endpoint the
stable one, and neither leaks the other's field names."""

from __future__ import annotations

from typing import Any

from tests.sliding_sync.client import Target


async def _raw(target: Target) -> tuple[dict[str, Any], str, str]:
    alice = await target.user("alice")
    bob = await target.user("bob")
    joined = await alice.create_room(name="joined")
    await alice.send_message(joined, "hello")
    invited = await bob.create_room(name="invited", invite=[alice.user_id])
    body = {"lists": {
        "rooms": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [["m.room.name", ""]],
                  "filters": {"is_invite": False}},
        "invites": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [["m.room.name", ""]],
                    "filters": {"is_invite": True}},
    }}
    await alice.slide(body, pos=None)
    assert alice.last_raw is not None
    return alice.last_raw, joined, invited


async def test_raw_shape(target: Target) -> None:
    raw, joined, invited = await _raw(target)
    assert isinstance(raw["pos"], str) and raw["pos"]
    room, invite = raw["rooms"][joined], raw["rooms"][invited]
    if target.shape == "unstable":
        assert raw["lists"]["rooms"]["count"] == 1
        assert raw["lists"]["rooms"]["ops"] == [{"op": "SYNC", "range": [0, 9], "room_ids": [joined]}]
        assert [e["content"]["body"] for e in room["timeline"]] == ["hello"]
        assert "timeline_events" not in room and "membership" not in room
        assert invite["invite_state"] and "stripped_state" not in invite
    else:
        assert raw["lists"] == {"rooms": {"count": 1}, "invites": {"count": 1}}
        assert [e["content"]["body"] for e in room["timeline_events"]] == ["hello"]
        assert "timeline" not in room and "unstable_expanded_timeline" not in room
        assert room["membership"] == "join"
        assert invite["stripped_state"] and "invite_state" not in invite
        assert invite["membership"] == "invite"
    assert isinstance(room["bump_stamp"], int)
    assert room["name"] == "joined" and invite["name"] == "invited"
