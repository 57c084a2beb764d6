"""Knocking across servers, against a real Synapse and against a second hs: a user of hs knocks on a
room of the other server (make_knock / send_knock, the knock kept here with the room's stripped state
for the knocker's /sync), and a user of the other server knocks on a room of hs (send_knock answered
with the room's state); either way the room's admin sees the knock, invites, and the knocker joins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from tests.federation.client import TlsClient, unique, user
from tests.federation.test_membership import Syncer, invite, member, ok, rooms
from tests.federation.test_rooms import text, wait_for_event, wait_joined

KNOCK_RULE = [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]


def knock_state(room_id: str) -> Callable[[dict[str, Any]], Any]:
    return lambda body: rooms(body, "knock").get(room_id, {}).get("knock_state")


def invite_events(room_id: str) -> Callable[[dict[str, Any]], Any]:
    return lambda body: rooms(body, "invite").get(room_id, {}).get("invite_state")


async def knock_room(admin: TlsClient, version: str, name: str) -> str:
    return await admin.create_room(preset="private_chat", name=name, room_version=version,
                                   initial_state=KNOCK_RULE)


async def wait_member_state(admin: TlsClient, room_id: str, user_id: str, membership: str) -> dict[str, Any]:
    """The user's member event with `membership`, as the admin's /sync shows it (timeline or state)."""
    def find(body: dict[str, Any]) -> Any:
        entry = rooms(body, "join").get(room_id, {})
        events = [*entry.get("state", {}).get("events", []), *entry.get("timeline", {}).get("events", [])]
        return next((e for e in events if member(user_id, membership)(e)), None)
    found: dict[str, Any] = await Syncer(admin).wait(find, f"{user_id}'s {membership}")
    return found


def check_knock_state(state: dict[str, Any], room_name: str, knocker: str, reason: str | None) -> None:
    events = state["events"]
    names = [e for e in events if e.get("type") == "m.room.name"]
    assert names and names[0]["content"]["name"] == room_name, events
    assert any(e.get("type") == "m.room.create" for e in events), events
    rules = [e for e in events if e.get("type") == "m.room.join_rules"]
    assert rules and rules[0]["content"]["join_rule"] == "knock", events
    mine = [e for e in events if member(knocker, "knock")(e)]
    assert mine and mine[0]["sender"] == knocker, events
    if reason is not None:
        assert mine[0]["content"].get("reason") == reason, mine


@pytest.mark.parametrize("version", ["10", "12"])
async def test_hs_user_knocks_on_remote_room_and_is_let_in(make_fed_hs: Any, remote_server: Any,
                                                           version: str) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await knock_room(bob, version, "knock knock")
    # Not knowing the room, hs asks the server named in `via` (a v12 room ID names none).
    status, body = await alice.request("POST", f"/knock/{quote(room_id)}", {"reason": "may I?"},
                                       params={"via": remote_server.server_name})
    assert status == 200 and body == {"room_id": room_id}, (status, body, local.log_tail(40))
    alice_sync = Syncer(alice)
    state = await alice_sync.wait(knock_state(room_id), "the knock")
    check_knock_state(state, "knock knock", alice.user_id, "may I?")
    # The room's admin sees the knock, with its reason, and lets alice in.
    knock = await wait_member_state(bob, room_id, alice.user_id, "knock")
    assert knock["sender"] == alice.user_id and knock["content"].get("reason") == "may I?", knock
    await invite(bob, room_id, alice.user_id)
    await alice_sync.wait(invite_events(room_id), "the invite after the knock")
    await ok(alice, "POST", f"/join/{quote(room_id)}", {}, via=remote_server.server_name)
    await wait_joined(bob, room_id, alice.user_id)
    joined = await alice_sync.wait(lambda b: rooms(b, "join").get(room_id), "the joined room")
    assert room_id not in rooms(joined, "knock") and room_id not in rooms(joined, "invite")
    sent = await alice.send_message(room_id, "thanks for letting me in")
    seen = await wait_for_event(bob, room_id, text("thanks for letting me in"))
    assert seen["event_id"] == sent


async def test_hs_user_knock_refused_by_remote_room(make_fed_hs: Any, remote_server: Any) -> None:
    """A room whose join rule is not `knock`: the resident server refuses, nothing is kept here."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await bob.create_room(preset="private_chat", room_version="10")
    status, body = await alice.request("POST", f"/knock/{quote(room_id)}", {},
                                       params={"via": remote_server.server_name})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", (status, body)
    status, sync = await alice.request("GET", "/sync", params={"timeout": "0"})
    assert status == 200 and room_id not in rooms(sync, "knock"), sync


@pytest.mark.parametrize("version", ["10", "12"])
async def test_remote_user_knocks_on_hs_room_and_is_let_in(make_fed_hs: Any, remote_server: Any,
                                                           version: str) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await knock_room(alice, version, "hs knock room")
    status, body = await bob.request("POST", f"/knock/{quote(room_id)}", {"reason": "hello?"},
                                     params={"via": local.server_name})
    assert status == 200 and body.get("room_id") == room_id, (status, body, remote_server.log_tail(40))
    # The knocker's server shows the room from the state send_knock answered with.
    bob_sync = Syncer(bob)
    state = await bob_sync.wait(knock_state(room_id), "the knock")
    check_knock_state(state, "hs knock room", bob.user_id, "hello?")
    # The knock is in the room here, for its admin to see.
    knock = await wait_member_state(alice, room_id, bob.user_id, "knock")
    assert knock["content"].get("reason") == "hello?", knock
    found = await ok(alice, "GET", f"/rooms/{quote(room_id)}/state/m.room.member/{quote(bob.user_id)}")
    assert found["membership"] == "knock", found
    await invite(alice, room_id, bob.user_id)
    await bob_sync.wait(invite_events(room_id), "the invite after the knock")
    await ok(bob, "POST", f"/join/{quote(room_id)}", {}, server_name=local.server_name)
    await wait_joined(alice, room_id, bob.user_id)
    sent = await alice.send_message(room_id, "welcome in")
    seen = await wait_for_event(bob, room_id, text("welcome in"))
    assert seen["event_id"] == sent


@pytest.mark.parametrize("version", ["10", "12"])
async def test_hs_user_rescinds_knock_on_remote_room(make_fed_hs: Any, remote_server: Any, version: str) -> None:
    """/leave after a knock on a room no local user is in: a leave through the room's server (a v12 room
    ID names none: the creator's, known from the stripped state, is asked)."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await knock_room(bob, version, "changed my mind")
    await ok(alice, "POST", f"/knock/{quote(room_id)}", {}, via=remote_server.server_name)
    alice_sync = Syncer(alice)
    await alice_sync.wait(knock_state(room_id), "the knock")
    await wait_member_state(bob, room_id, alice.user_id, "knock")
    await ok(alice, "POST", f"/rooms/{quote(room_id)}/leave", {"reason": "never mind"})
    left = await wait_member_state(bob, room_id, alice.user_id, "leave")
    assert left["sender"] == alice.user_id and left["content"].get("reason") == "never mind", left
    await alice_sync.wait(lambda b: room_id in rooms(b, "leave"), "the rescinded knock as left")
