"""Membership across servers, against a real Synapse and against a second hs: invites both ways (the
invitee's /sync shows the stripped state), accepting with a join and rejecting with a leave through
the inviter's server, remote profiles, a remote member leaving, being kicked and banned, and a later
joiner from the other server getting the room's full state."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hs.events.event import Event
from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.client import TlsClient, unique, user
from tests.federation.fake_remote import FakeRemote, FakeRoom, q
from tests.federation.test_rooms import text, wait_for_event, wait_joined
from tests.federation.tls import TestCA


def member(user_id: str, membership: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e.get("type") == "m.room.member" and e.get("state_key") == user_id
                      and e.get("content", {}).get("membership") == membership)


class Syncer:
    """One user's /sync, followed incrementally (Synapse answers a repeated initial sync from a cache)."""

    def __init__(self, client: TlsClient) -> None:
        self.client = client
        self.since: str | None = None

    async def wait(self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = 20.0) -> Any:
        """/syncs from the last position until `predicate(response)` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            params = {"timeout": "1000"} if self.since is not None else {"timeout": "0"}
            if self.since is not None:
                params["since"] = self.since
            status, body = await self.client.request("GET", "/sync", params=params)
            assert status == 200, body
            self.since = body["next_batch"]
            found = predicate(body)
            if found:
                return found
        raise AssertionError(f"{self.client.user_id}'s /sync never showed {what}; last: {str(body)[:1500]}")


def rooms(body: dict[str, Any], section: str) -> dict[str, Any]:
    section_rooms: dict[str, Any] = body.get("rooms", {}).get(section, {})
    return section_rooms


def invite_state(room_id: str) -> Callable[[dict[str, Any]], Any]:
    return lambda body: rooms(body, "invite").get(room_id, {}).get("invite_state")


def left(room_id: str) -> Callable[[dict[str, Any]], Any]:
    return lambda body: room_id in rooms(body, "leave")


def left_by(room_id: str, user_id: str) -> Callable[[dict[str, Any]], Any]:
    """The user's membership event in the room's `leave` entry (its timeline, else its state)."""
    def find(body: dict[str, Any]) -> Any:
        entry = rooms(body, "leave").get(room_id)
        if entry is None:
            return None
        events = [*entry.get("state", {}).get("events", []), *entry.get("timeline", {}).get("events", [])]
        mine = [e for e in events if e.get("type") == "m.room.member" and e.get("state_key") == user_id]
        assert mine, entry
        return mine[-1]
    return find


async def ok(client: TlsClient, method: str, path: str, body: Any = None, **params: str) -> Any:
    status, answer = await client.request(method, path, body, params=params or None)
    assert status == 200, (method, path, status, answer)
    return answer


async def invite(inviter: TlsClient, room_id: str, invitee: str) -> None:
    await ok(inviter, "POST", f"/rooms/{room_id}/invite", {"user_id": invitee})


def check_invite_state(state: dict[str, Any], room_name: str, inviter: str, invitee: str) -> None:
    events = state["events"]
    names = [e for e in events if e.get("type") == "m.room.name"]
    assert names and names[0]["content"]["name"] == room_name, events
    assert any(e.get("type") == "m.room.create" for e in events), events
    mine = [e for e in events if e.get("type") == "m.room.member" and e.get("state_key") == invitee]
    assert mine and mine[0]["content"]["membership"] == "invite" and mine[0]["sender"] == inviter, events


# -- invites from hs to the other server ----------------------------------------------------------------
async def test_hs_invites_remote_user_who_sees_stripped_state_and_joins(make_fed_hs: Any,
                                                                         remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="private_chat", name="invite test")
    await invite(alice, room_id, bob.user_id)
    # The invite is in the room here, co-signed by the invitee's server.
    ev = await wait_for_event(alice, room_id, member(bob.user_id, "invite"))
    assert ev["sender"] == alice.user_id
    state = await Syncer(bob).wait(invite_state(room_id), "the invite")
    check_invite_state(state, "invite test", alice.user_id, bob.user_id)
    # Accepting: a join through the inviter's server (the only one in the room).
    await ok(bob, "POST", f"/join/{quote(room_id)}", {})
    await wait_joined(alice, room_id, bob.user_id)
    sent = await alice.send_message(room_id, "welcome")
    seen = await wait_for_event(bob, room_id, text("welcome"))
    assert seen["event_id"] == sent


async def test_remote_user_rejects_hs_invite(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="private_chat", name="to be refused")
    await invite(alice, room_id, bob.user_id)
    bob_sync = Syncer(bob)
    await bob_sync.wait(invite_state(room_id), "the invite")
    await ok(bob, "POST", f"/rooms/{quote(room_id)}/leave", {})
    await wait_for_event(alice, room_id, member(bob.user_id, "leave"))
    await bob_sync.wait(left(room_id), "the rejected invite as left")


async def test_invite_refused_by_the_invitees_server_is_not_persisted(make_fed_hs: Any,
                                                                     remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    room_id = await alice.create_room(preset="private_chat")
    ghost = f"@{unique('nobody')}:{remote_server.server_name}"
    status, body = await alice.request("POST", f"/rooms/{room_id}/invite", {"user_id": ghost})
    if status == 200:  # Synapse co-signs invites for users it does not have
        await wait_for_event(alice, room_id, member(ghost, "invite"))
        return
    assert status == 404 and body["errcode"] == "M_NOT_FOUND", body
    members = await ok(alice, "GET", f"/rooms/{room_id}/members")
    assert all(e["state_key"] != ghost for e in members["chunk"])
    # The room is not stuck: its next event is built and persisted as usual.
    await alice.send_message(room_id, "still fine")
    await wait_for_event(alice, room_id, text("still fine"))


# -- invites from the other server to hs ----------------------------------------------------------------
async def test_remote_invites_hs_user_who_accepts(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await bob.create_room(preset="private_chat", name="from afar", topic="the topic")
    await invite(bob, room_id, alice.user_id)
    alice_sync = Syncer(alice)
    state = await alice_sync.wait(invite_state(room_id), "the invite")
    check_invite_state(state, "from afar", bob.user_id, alice.user_id)
    # The room moves on after the invite: the join is not built on it.
    await bob.send_message(room_id, "waiting for alice")
    # Accepting without naming a server: the inviter's is used.
    await ok(alice, "POST", f"/rooms/{quote(room_id)}/join", {})
    await wait_joined(bob, room_id, alice.user_id)
    joined = await alice_sync.wait(lambda body: rooms(body, "join").get(room_id), "the joined room")
    assert room_id not in rooms(joined, "invite")
    topic = await ok(alice, "GET", f"/rooms/{quote(room_id)}/state/m.room.topic")
    assert topic["topic"] == "the topic"
    sent = await alice.send_message(room_id, "thanks for the invite")
    seen = await wait_for_event(bob, room_id, text("thanks for the invite"))
    assert seen["event_id"] == sent
    await wait_for_event(alice, room_id, text("waiting for alice"))
    # A second local user invited to the room, now one this server is in: the invite comes through the
    # room (co-signed first), and joining is local.
    dave = await user(local, unique("dave"))
    await invite(bob, room_id, dave.user_id)
    state = await Syncer(dave).wait(invite_state(room_id), "the invite to a room the server is in")
    check_invite_state(state, "from afar", bob.user_id, dave.user_id)
    await ok(dave, "POST", f"/join/{quote(room_id)}", {})
    await wait_joined(bob, room_id, dave.user_id)


async def test_hs_user_rejects_remote_invite(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await bob.create_room(preset="private_chat", name="declined")
    await invite(bob, room_id, alice.user_id)
    alice_sync = Syncer(alice)
    await alice_sync.wait(invite_state(room_id), "the invite")
    # The room moves on after the invite: the leave's template is built on a later event.
    await bob.send_message(room_id, "are you coming?")
    await ok(alice, "POST", f"/rooms/{quote(room_id)}/leave", {"reason": "busy"})
    ev = await wait_for_event(bob, room_id, member(alice.user_id, "leave"))
    assert ev["sender"] == alice.user_id and ev["content"].get("reason") == "busy"
    await alice_sync.wait(left(room_id), "the rejected invite as left")
    status, body = await alice.request("GET", "/sync", params={"timeout": "0"})
    assert status == 200 and room_id not in rooms(body, "invite"), body
    # Invited again, and this time accepted.
    await invite(bob, room_id, alice.user_id)
    state = await alice_sync.wait(invite_state(room_id), "the second invite")
    check_invite_state(state, "declined", bob.user_id, alice.user_id)
    await ok(alice, "POST", f"/join/{quote(room_id)}", {})
    await wait_joined(bob, room_id, alice.user_id)


async def test_invite_from_a_server_gone_away_is_rejected_here(make_fed_hs: Any) -> None:
    local = await make_fed_hs()
    remote = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote, unique("bob"))
    room_id = await bob.create_room(preset="private_chat", name="soon gone")
    await invite(bob, room_id, alice.user_id)
    alice_sync = Syncer(alice)
    await alice_sync.wait(invite_state(room_id), "the invite")
    await remote.stop()
    await ok(alice, "POST", f"/rooms/{quote(room_id)}/leave", {})
    ev = await alice_sync.wait(left_by(room_id, alice.user_id), "the invite rejected")
    assert ev["content"]["membership"] == "leave" and ev["sender"] == alice.user_id, ev
    status, body = await alice.request("GET", "/sync", params={"timeout": "0"})
    assert status == 200 and room_id not in rooms(body, "invite"), body


# -- profiles ---------------------------------------------------------------------------------------------
async def test_remote_profile_lookup(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    await ok(bob, "PUT", f"/profile/{quote(bob.user_id)}/displayname", {"displayname": "Bob Remote"})
    profile = await ok(alice, "GET", f"/profile/{quote(bob.user_id)}")
    assert profile.get("displayname") == "Bob Remote"
    name = await ok(alice, "GET", f"/profile/{quote(bob.user_id)}/displayname")
    assert name == {"displayname": "Bob Remote"}
    ghost = f"@{unique('nobody')}:{remote_server.server_name}"
    status, body = await alice.request("GET", f"/profile/{quote(ghost)}")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND", body
    # An unreachable server is no profile either.
    status, body = await alice.request("GET", f"/profile/{quote('@x:localhost:1')}/avatar_url")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND", body
    # The invite of a remote user carries their profile.
    room_id = await alice.create_room(preset="private_chat")
    await invite(alice, room_id, bob.user_id)
    ev = await wait_for_event(alice, room_id, member(bob.user_id, "invite"))
    assert ev["content"].get("displayname") == "Bob Remote"


# -- a remote member leaving, kicked, banned ---------------------------------------------------------------
async def _room_with_remote_member(make_fed_hs: Any, remote_server: Any, **create: Any,
                                   ) -> tuple[str, TlsClient, TlsClient, str]:
    """(hs's server name, alice on hs, bob on the remote server, the room alice made and bob joined)."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="public_chat", **create)
    await ok(bob, "POST", f"/join/{quote(room_id)}", {}, server_name=local.server_name)
    await wait_joined(alice, room_id, bob.user_id)
    return local.server_name, alice, bob, room_id


async def test_remote_member_leaves(make_fed_hs: Any, remote_server: Any) -> None:
    _, alice, bob, room_id = await _room_with_remote_member(make_fed_hs, remote_server)
    bob_sync = Syncer(bob)
    await bob_sync.wait(lambda body: room_id in rooms(body, "join"), "the room joined")
    await ok(bob, "POST", f"/rooms/{quote(room_id)}/leave", {})
    await wait_for_event(alice, room_id, member(bob.user_id, "leave"))
    members = await ok(alice, "GET", f"/rooms/{quote(room_id)}/joined_members")
    assert set(members["joined"]) == {alice.user_id}
    await bob_sync.wait(left(room_id), "the room left")


async def test_kick_and_ban_of_remote_member(make_fed_hs: Any, remote_server: Any) -> None:
    server_name, alice, bob, room_id = await _room_with_remote_member(make_fed_hs, remote_server)
    bob_sync = Syncer(bob)
    await bob_sync.wait(lambda body: room_id in rooms(body, "join"), "the room joined")
    await ok(alice, "POST", f"/rooms/{quote(room_id)}/kick", {"user_id": bob.user_id, "reason": "out"})
    # The kicked user's server hears of it, though it has no member left in the room.
    ev = await bob_sync.wait(left_by(room_id, bob.user_id), "the kick")
    assert ev["content"]["membership"] == "leave" and ev["sender"] == alice.user_id, ev
    assert ev["content"].get("reason") == "out", ev
    # Back in, then banned: the ban reaches their server, and the room stays closed to them.
    await ok(bob, "POST", f"/join/{quote(room_id)}", {}, server_name=server_name)
    await wait_joined(alice, room_id, bob.user_id)
    await bob_sync.wait(lambda body: room_id in rooms(body, "join"), "the room joined again")
    await ok(alice, "POST", f"/rooms/{quote(room_id)}/ban", {"user_id": bob.user_id})
    ev = await bob_sync.wait(left_by(room_id, bob.user_id), "the ban")
    assert ev["content"]["membership"] == "ban" and ev["sender"] == alice.user_id, ev
    status, body = await bob.request("POST", f"/join/{quote(room_id)}", {}, params={"server_name": server_name})
    assert status == 403, body


async def test_later_joiner_from_the_remote_side_gets_full_state(make_fed_hs: Any, remote_server: Any) -> None:
    server_name, alice, bob, room_id = await _room_with_remote_member(make_fed_hs, remote_server,
                                                                      name="named early")
    # State changed after the remote server joined reaches it through transactions.
    await ok(alice, "PUT", f"/rooms/{quote(room_id)}/state/m.room.topic", {"topic": "set later"})
    await wait_for_event(bob, room_id, lambda e: e.get("type") == "m.room.topic")
    carol = await user(remote_server, unique("carol"))
    await ok(carol, "POST", f"/join/{quote(room_id)}", {}, server_name=server_name)
    await wait_joined(alice, room_id, carol.user_id)
    name = await ok(carol, "GET", f"/rooms/{quote(room_id)}/state/m.room.name")
    topic = await ok(carol, "GET", f"/rooms/{quote(room_id)}/state/m.room.topic")
    assert name["name"] == "named early" and topic["topic"] == "set later"
    members = await ok(carol, "GET", f"/rooms/{quote(room_id)}/joined_members")
    assert set(members["joined"]) == {alice.user_id, bob.user_id, carol.user_id}


# -- the invite endpoints' checks, driven by a fake server ---------------------------------------------------
@pytest.fixture
async def fake_room(make_fed_hs: Any, federation_ca: TestCA, tmp_path: Path,
                    request: pytest.FixtureRequest) -> AsyncIterator[FakeInviter]:
    """A room of version 10 on a fake server (its own create, join, power levels and name) whose
    `mallory` invites the hs's `alice` (the hs on SQLite, or the engine the test's parameter names)."""
    local = await make_fed_hs(getattr(request, "param", "sqlite"))
    alice = await user(local, unique("alice"))
    fake = FakeRemote(federation_ca, tmp_path)
    await fake.start()
    try:
        yield FakeInviter(local, alice, fake, make_fake_room(fake, "10"), fake.user_id("mallory"))
    finally:
        await fake.stop()


def make_fake_room(fake: FakeRemote, version: str) -> str:
    """A room on the fake server, made by its `mallory`: create, join, power levels, join rules, name."""
    room_id = f"!{unique('room')}:{fake.server_name}"
    fake.rooms[room_id] = FakeRoom(room_id, KNOWN_ROOM_VERSIONS[version])
    mallory = fake.user_id("mallory")
    fake.build(room_id, mallory, "m.room.create", {"creator": mallory, "room_version": version}, "")
    fake.build(room_id, mallory, "m.room.member", {"membership": "join"}, mallory)
    fake.build(room_id, mallory, "m.room.power_levels", {"users": {mallory: 100}}, "")
    fake.build(room_id, mallory, "m.room.join_rules", {"join_rule": "invite"}, "")
    fake.build(room_id, mallory, "m.room.name", {"name": "fake room"}, "")
    return room_id


@dataclass
class FakeInviter:
    local: Any
    alice: TlsClient
    fake: FakeRemote
    room_id: str
    mallory: str

    def invite(self, invitee: str | None = None, sender: str | None = None) -> tuple[str, dict[str, Any]]:
        return self.fake.build(self.room_id, sender or self.mallory, "m.room.member", {"membership": "invite"},
                               invitee or self.alice.user_id, keep=False)

    def stripped(self) -> list[dict[str, Any]]:
        return [{k: self.fake.events[e][k] for k in ("type", "state_key", "sender", "content")}
                for e in self.fake.rooms[self.room_id].state.values()]

    async def put(self, event_id: str, pdu: dict[str, Any], version: int = 2, room_version: str = "10",
                  room_id: str | None = None) -> tuple[int, Any]:
        path = f"/_matrix/federation/v{version}/invite/{q(room_id or self.room_id)}/{q(event_id)}"
        if version == 1:
            body = {**pdu, "unsigned": {"invite_room_state": self.stripped()}}
        else:
            body = {"event": pdu, "room_version": room_version, "invite_room_state": self.stripped()}
        return await self.fake.request(self.local.server_name, "PUT", path, body)


@pytest.mark.parametrize("fake_room", ["sqlite", "postgres"], indirect=True)
async def test_inbound_invite_v2_is_co_signed_and_listed(fake_room: FakeInviter) -> None:
    event_id, pdu = fake_room.invite()
    status, body = await fake_room.put(event_id, pdu)
    assert status == 200, body
    signed = body["event"]
    assert set(signed["signatures"]) == {fake_room.fake.server_name, fake_room.local.server_name}
    assert Event(signed, KNOWN_ROOM_VERSIONS["10"]).event_id == event_id
    await fake_room.local.hs.keyring.verify_event_signatures(signed, KNOWN_ROOM_VERSIONS["10"])
    state = await Syncer(fake_room.alice).wait(invite_state(fake_room.room_id), "the invite")
    check_invite_state(state, "fake room", fake_room.mallory, fake_room.alice.user_id)
    # Sent again (a retry): the same answer, nothing new stored.
    status, again = await fake_room.put(event_id, pdu)
    assert status == 200 and again["event"]["signatures"] == signed["signatures"], again
    # Rejected: the fake server offers no make_leave, so the invite is rejected here alone.
    alice = fake_room.alice
    await ok(alice, "POST", f"/rooms/{quote(fake_room.room_id)}/leave", {})
    status, body = await alice.request("GET", "/sync", params={"timeout": "0"})
    assert status == 200 and fake_room.room_id not in rooms(body, "invite"), body
    # Invited again: listed again.
    event_id, pdu = fake_room.invite()
    status, body = await fake_room.put(event_id, pdu)
    assert status == 200, body
    await Syncer(alice).wait(invite_state(fake_room.room_id), "the second invite")


async def test_inbound_invite_v1(fake_room: FakeInviter) -> None:
    # v1 names no room version: it is for rooms of version 1 and 2 (events carry their own ID).
    event_id, pdu = fake_room.invite()
    status, body = await fake_room.put(event_id, pdu, version=1)
    assert status == 400, body  # a v10 event is not a v1 event
    fake_room.room_id = make_fake_room(fake_room.fake, "1")
    event_id, pdu = fake_room.invite()
    status, body = await fake_room.put(event_id, pdu, version=1)
    assert status == 200 and body[0] == 200, body
    assert fake_room.local.server_name in body[1]["event"]["signatures"]
    state = await Syncer(fake_room.alice).wait(invite_state(fake_room.room_id), "the invite")
    check_invite_state(state, "fake room", fake_room.mallory, fake_room.alice.user_id)


async def test_inbound_invite_refusals(fake_room: FakeInviter, make_fed_hs: Any) -> None:
    event_id, pdu = fake_room.invite()
    status, body = await fake_room.put(event_id, pdu, room_version="999")
    assert status == 400 and body["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION", body
    assert body.get("room_version") == "999"
    # Not for a user of this server.
    other = f"@someone:{fake_room.fake.server_name}"
    eid, foreign = fake_room.invite(invitee=other)
    status, body = await fake_room.put(eid, foreign)
    assert status == 400, body
    # For a user this server does not have.
    eid, ghost = fake_room.invite(invitee=f"@ghost:{fake_room.local.server_name}")
    status, body = await fake_room.put(eid, ghost)
    assert status == 404, body
    # Its signature does not verify (signed by another key).
    forged = copy.deepcopy(pdu)
    forged["signatures"] = {fake_room.fake.server_name: {"ed25519:x": "AAAA"}}
    status, body = await fake_room.put(event_id, forged)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    # Its content does not match its hash.
    tampered = copy.deepcopy(pdu)
    tampered["content"]["displayname"] = "changed"
    status, body = await fake_room.put(event_id, tampered)
    assert status == 400, body
    # The path names another event, or another room.
    status, body = await fake_room.put("$other", pdu)
    assert status == 400, body
    # A sender of another server than the requesting one.
    other_server = await make_fed_hs()
    eid, spoofed = fake_room.invite(sender=f"@eve:{other_server.server_name}")
    status, body = await fake_room.put(eid, spoofed)
    assert status == 403, body
    # Not an invite.
    eid, join = fake_room.fake.build(fake_room.room_id, fake_room.mallory, "m.room.member", {"membership": "join"},
                                     fake_room.alice.user_id, keep=False)
    status, body = await fake_room.put(eid, join)
    assert status == 400, body
    # None of it reached alice.
    status, sync = await fake_room.alice.request("GET", "/sync", params={"timeout": "0"})
    assert status == 200 and fake_room.room_id not in rooms(sync, "invite"), sync
