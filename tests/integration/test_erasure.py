"""Erasure: deactivating with `erase: true` keeps the user's events in their rooms, but whoever was not
joined when one was sent (a later joiner, a reader of a world-readable room) gets it pruned as a
redaction leaves it, on /sync, /messages, /context and /event; members who saw it live still see it
(as Synapse does). Real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]
PASSWORD = "password123"


async def deactivate(server: TestHomeServer, client: Client, erase: bool) -> None:
    name = str(client.user_id)[1:].split(":")[0]
    status, body = await client.request("POST", "/account/deactivate", {
        "erase": erase, "auth": {"type": "m.login.password", "user": name, "password": PASSWORD}})
    assert status == 200, body
    assert bool(await server.hs.visibility.erased_senders([str(client.user_id)])) == erase


def find(events: list[Json], event_id: str) -> Json:
    for e in events:
        if e["event_id"] == event_id:
            return e
    raise AssertionError(f"{event_id} not in {[e['event_id'] for e in events]}")


async def chunk(client: Client, room: str) -> list[Json]:
    data = await ok(client, "GET", f"/rooms/{room}/messages", dir="b", limit="50")
    return list(data["chunk"])


async def sync_timeline(client: Client, room: str) -> list[Json]:
    res = await client.sync(filter='{"room": {"timeline": {"limit": 50}}}')
    return list(res["rooms"]["join"][room]["timeline"]["events"])


async def test_erased_users_messages_are_pruned_for_later_joiners_only(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")  # history visibility: shared
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    secret = await bob.send_message(room, "bob's secret")
    alice_msg = await alice.send_message(room, "alice's reply")
    await deactivate(server, bob, erase=True)

    carol = await user(server, "carol")
    await ok(carol, "POST", f"/rooms/{room}/join", {})

    # Carol joined after: the message is there, pruned (no body), with its sender and type.
    for events in (await chunk(carol, room), await sync_timeline(carol, room)):
        ev = find(events, secret)
        assert ev["content"] == {} and ev["sender"] == bob.user_id and ev["type"] == "m.room.message"
        assert find(events, alice_msg)["content"]["body"] == "alice's reply"
    ev = await ok(carol, "GET", f"/rooms/{room}/event/{secret}")
    assert ev["content"] == {}
    ctx = await ok(carol, "GET", f"/rooms/{room}/context/{alice_msg}", limit="10")
    assert find(ctx["events_before"], secret)["content"] == {}
    ctx = await ok(carol, "GET", f"/rooms/{room}/context/{secret}", limit="10")
    assert ctx["event"]["content"] == {}
    # Bob's membership events stay meaningful: pruning keeps `membership`.
    member = [e for e in await chunk(carol, room) if e["type"] == "m.room.member" and e["sender"] == bob.user_id]
    assert {e["content"].get("membership") for e in member} == {"join", "leave"}

    # Alice was joined when bob sent it: she keeps seeing it whole, everywhere.
    assert find(await chunk(alice, room), secret)["content"]["body"] == "bob's secret"
    assert find(await sync_timeline(alice, room), secret)["content"]["body"] == "bob's secret"
    ev = await ok(alice, "GET", f"/rooms/{room}/event/{secret}")
    assert ev["content"]["body"] == "bob's secret"


async def test_world_readable_rooms_serve_erased_messages_pruned_to_non_members(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}])
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    secret = await bob.send_message(room, "bob's secret")
    await deactivate(server, bob, erase=True)

    dave = await user(server, "dave")  # never joins: reads a world-readable room
    assert find(await chunk(dave, room), secret)["content"] == {}
    ev = await ok(dave, "GET", f"/rooms/{room}/event/{secret}")
    assert ev["content"] == {}
    assert find(await chunk(alice, room), secret)["content"]["body"] == "bob's secret"


async def test_incremental_sync_of_a_later_joiner_is_pruned_too(server: TestHomeServer) -> None:
    alice, bob, carol = await user(server, "alice"), await user(server, "bob"), await user(server, "carol")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    secret = await bob.send_message(room, "bob's secret")
    await deactivate(server, bob, erase=True)
    since = (await carol.sync())["next_batch"]
    await ok(carol, "POST", f"/rooms/{room}/join", {})
    res = await carol.sync(since, filter='{"room": {"timeline": {"limit": 50}}}')
    assert find(res["rooms"]["join"][room]["timeline"]["events"], secret)["content"] == {}


async def test_deactivation_without_erase_keeps_messages_whole(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    secret = await bob.send_message(room, "bob's words")
    await deactivate(server, bob, erase=False)
    carol = await user(server, "carol")
    await ok(carol, "POST", f"/rooms/{room}/join", {})
    assert find(await chunk(carol, room), secret)["content"]["body"] == "bob's words"
    assert not await server.hs.visibility.erased_senders([str(bob.user_id)])


async def test_erasure_removes_the_profile(server: TestHomeServer) -> None:
    """As Synapse's: the display name and avatar go with an erasing deactivation, and stay without."""
    bob, dave = await user(server, "bob"), await user(server, "dave")
    for who in (bob, dave):
        await ok(who, "PUT", f"/profile/{who.user_id}/displayname", {"displayname": "Named"})
    await deactivate(server, bob, erase=True)
    await deactivate(server, dave, erase=False)
    asker = await user(server, "asker")
    status, body = await asker.request("GET", f"/profile/{bob.user_id}/displayname")
    assert status == 404 or body.get("displayname") is None, body
    assert (await ok(asker, "GET", f"/profile/{dave.user_id}/displayname"))["displayname"] == "Named"
