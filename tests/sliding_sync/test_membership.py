"""Invites, joins, leaves, kicks and bans move rooms between lists, with the state each may see.

The lists are Element X's split: `invites` (is_invite / is_invited true) and `rooms` (false). As in
Synapse, a room the user has just left, been kicked or banned from stays in its list for the response
that reports the leave (its timeline ends with that membership event), then drops out.

A user who left never sees what was sent after: Synapse's CVE-2024-53867 sent a left room's later
state and timeline to a new connection subscribing to it.
"""

from __future__ import annotations

from typing import Any

from tests.sliding_sync.client import SlidingClient, Target, assert_list, state_pairs, timeline_bodies

ROOM_STATE = [["m.room.name", ""], ["m.room.member", "$ME"]]


def _body() -> dict[str, Any]:
    return {"lists": {
        "invites": {"ranges": [[0, 9]], "timeline_limit": 3, "required_state": ROOM_STATE,
                    "filters": {"is_invite": True}},
        "rooms": {"ranges": [[0, 9]], "timeline_limit": 3, "required_state": ROOM_STATE,
                  "filters": {"is_invite": False}},
    }}


def _counts(resp: dict[str, Any]) -> tuple[int, int]:
    return resp["lists"]["invites"]["count"], resp["lists"]["rooms"]["count"]


def _last_membership(room: dict[str, Any], user_id: str | None) -> tuple[str, str]:
    """(membership, sender) of the last m.room.member event for `user_id` in the room's timeline."""
    events = [e for e in room["timeline"] if e["type"] == "m.room.member" and e["state_key"] == user_id]
    assert events, room["timeline"]
    return events[-1]["content"]["membership"], events[-1]["sender"]


async def _users(target: Target) -> tuple[SlidingClient, SlidingClient]:
    return await target.user("alice"), await target.user("bob")


async def test_invite_then_join_then_leave(target: Target) -> None:
    alice, bob = await _users(target)
    room = await bob.create_room(name="bob's room")
    await bob.send_message(room, "before the invite")
    start = await alice.slide(_body(), pos=None)
    assert _counts(start) == (0, 0)

    # Invited: in `invites` with the invite's stripped state, no timeline or history.
    await bob.call("POST", f"/rooms/{room}/invite", {"user_id": alice.user_id})
    invited = await alice.slide(_body())
    assert _counts(invited) == (1, 0)
    assert_list(invited, "invites", [room])
    entry = invited["rooms"][room]
    assert entry["name"] == "bob's room"
    assert entry.get("initial") is True
    stripped = {(e["type"], e["state_key"]) for e in entry["invite_state"]}
    assert {("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.name", ""),
            ("m.room.member", alice.user_id)} <= stripped
    own = [e for e in entry["invite_state"] if e["type"] == "m.room.member" and e["state_key"] == alice.user_id]
    assert own[0]["content"]["membership"] == "invite"
    assert "before the invite" not in str(entry.get("timeline", []))
    if alice.shape == "v4":
        assert entry["membership"] == "invite"

    # Joined: moves to `rooms`, now with its timeline and required_state.
    await alice.call("POST", f"/join/{room}", {})
    joined = await alice.slide(_body())
    assert _counts(joined) == (0, 1)
    assert_list(joined, "rooms", [room])
    entry = joined["rooms"][room]
    assert entry["initial"] is True
    assert entry["joined_count"] == 2
    assert "invite_state" not in entry
    assert _last_membership(entry, alice.user_id) == ("join", alice.user_id)
    assert ("m.room.name", "") in state_pairs(entry)
    if alice.shape == "v4":
        assert entry["membership"] == "join"

    # Left: reported once with the leave, then gone from the lists.
    await alice.call("POST", f"/rooms/{room}/leave", {})
    left = await alice.slide(_body())
    assert_list(left, "rooms", [room])
    entry = left["rooms"][room]
    assert _last_membership(entry, alice.user_id) == ("leave", alice.user_id)
    if alice.shape == "v4":
        assert entry["membership"] == "leave"
    after = await alice.slide(_body())
    assert _counts(after) == (0, 0)
    assert room not in after.get("rooms", {})


async def test_declined_invite_leaves_invites(target: Target) -> None:
    alice, bob = await _users(target)
    room = await bob.create_room(name="declined", invite=[alice.user_id])
    invited = await alice.slide(_body(), pos=None)
    assert _counts(invited) == (1, 0)
    await alice.call("POST", f"/rooms/{room}/leave", {})
    declined = await alice.slide(_body())
    assert declined["lists"]["invites"]["count"] == 0
    after = await alice.slide(_body(), pos=None)
    assert _counts(after) == (0, 0)


async def test_kick_and_ban(target: Target) -> None:
    alice, bob = await _users(target)
    kick_room = await bob.create_room(name="kick", preset="public_chat")
    ban_room = await bob.create_room(name="ban", preset="public_chat")
    for room in (kick_room, ban_room):
        await alice.call("POST", f"/join/{room}", {})
    start = await alice.slide(_body(), pos=None)
    assert _counts(start) == (0, 2)

    await bob.call("POST", f"/rooms/{kick_room}/kick", {"user_id": alice.user_id, "reason": "out"})
    kicked = await alice.slide(_body())
    assert_list(kicked, "rooms", {kick_room, ban_room})
    assert _last_membership(kicked["rooms"][kick_room], alice.user_id) == ("leave", bob.user_id)
    if alice.shape == "v4":
        assert kicked["rooms"][kick_room]["membership"] == "leave"

    await bob.call("POST", f"/rooms/{ban_room}/ban", {"user_id": alice.user_id, "reason": "gone"})
    banned = await alice.slide(_body())
    assert_list(banned, "rooms", {kick_room, ban_room})
    assert _last_membership(banned["rooms"][ban_room], alice.user_id) == ("ban", bob.user_id)
    if alice.shape == "v4":
        assert banned["rooms"][ban_room]["membership"] == "ban"

    # As in Synapse, kicks and bans stay in the list (the user can see who did it and why); only
    # the user's own leave drops the room. Nothing after the kick or ban is sent.
    await bob.send_message(kick_room, "secret after the kick")
    await bob.send_message(ban_room, "secret after the ban")
    after = await alice.slide(_body())
    assert _counts(after) == (0, 2)
    assert "secret" not in str(after.get("rooms", {}))
    fresh = await alice.slide(_body(), pos=None)
    assert _counts(fresh) == (0, 2)
    assert "secret" not in str(fresh["rooms"])
    assert _last_membership(fresh["rooms"][kick_room], alice.user_id) == ("leave", bob.user_id)
    assert _last_membership(fresh["rooms"][ban_room], alice.user_id) == ("ban", bob.user_id)


async def test_left_user_sees_nothing_sent_after_leaving(target: Target) -> None:
    """CVE-2024-53867: neither the running connection nor a new one subscribing to the room gets the
    messages or state sent after the leave."""
    alice, bob = await _users(target)
    room = await bob.create_room(name="before", preset="public_chat")
    await alice.call("POST", f"/join/{room}", {})
    await bob.send_message(room, "while alice was here")
    await alice.slide(_body(), pos=None)
    await alice.call("POST", f"/rooms/{room}/leave", {})
    await alice.slide(_body())

    await bob.send_message(room, "secret after the leave")
    await bob.send_state(room, "m.room.name", {"name": "secret name"})
    await bob.send_state(room, "m.room.topic", {"topic": "secret topic"})

    subscription = {room: {"timeline_limit": 20, "required_state": [["*", "*"]]}}
    running = await alice.slide({**_body(), "room_subscriptions": subscription})
    fresh = await alice.slide({**_body(), "room_subscriptions": subscription}, pos=None)
    for resp in (running, fresh):
        text = str(resp)
        assert "secret" not in text, resp
        entry = resp.get("rooms", {}).get(room)
        if entry is None:
            continue
        assert entry.get("name", "before") == "before"
        assert ("m.room.topic", "") not in state_pairs(entry)
        assert "secret after the leave" not in timeline_bodies(entry)


async def test_subscription_to_left_room_shows_it_as_left(target: Target) -> None:
    """As Synapse does: a new connection subscribing to a room the user left gets the room as it was
    at the leave (state and timeline up to the leave event), nothing later."""
    alice, bob = await _users(target)
    room = await bob.create_room(name="before", preset="public_chat")
    await alice.call("POST", f"/join/{room}", {})
    await bob.send_message(room, "while alice was here")
    await alice.call("POST", f"/rooms/{room}/leave", {})
    await bob.send_message(room, "secret after the leave")
    await bob.send_state(room, "m.room.name", {"name": "secret name"})

    fresh = await alice.slide({"room_subscriptions": {room: {"timeline_limit": 20,
                                                             "required_state": [["*", "*"]]}}}, pos=None)
    entry = fresh["rooms"][room]
    assert "secret" not in str(entry)
    assert entry["name"] == "before"
    assert _last_membership(entry, alice.user_id) == ("leave", alice.user_id)
    assert entry["timeline"][-1]["state_key"] == alice.user_id
    assert "while alice was here" in timeline_bodies(entry)
    assert ("m.room.member", alice.user_id) in state_pairs(entry)
    if alice.shape == "v4":
        assert entry["membership"] == "leave"
