"""Ignoring users (client-server spec, "Ignoring Users"): `m.ignored_user_list` in the account data
leaves the ignored users' non-state events out of /sync, /messages, /context and /event, and their
invites out of /sync; un-ignoring resumes their events without resending the ones missed meanwhile.
Real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]


async def ignore(client: Client, *user_ids: str) -> None:
    await ok(client, "PUT", f"/user/{client.user_id}/account_data/m.ignored_user_list",
             {"ignored_users": {u: {} for u in user_ids}})


async def shared_room(alice: Client, bob: Client) -> str:
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    return room


def timeline(res: Json, room: str) -> list[Json]:
    entry = res["rooms"]["join"].get(room)
    return [] if entry is None else list(entry["timeline"]["events"])


def bodies(events: list[Json]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def messages(client: Client, room: str, **params: str) -> Json:
    query = {"dir": "b", "limit": "50", **params}
    return dict(await ok(client, "GET", f"/rooms/{room}/messages", **query))


async def test_ignored_users_messages_are_left_out_but_their_state_events_kept(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await shared_room(alice, bob)
    await alice.send_message(room, "a1")
    await bob.send_message(room, "b1")
    first = await alice.sync()
    assert bodies(timeline(first, room)) == ["a1", "b1"]

    await ignore(alice, bob.user_id)
    b2 = await bob.send_message(room, "b2")
    topic = await ok(bob, "PUT", f"/rooms/{room}/state/m.room.member/{bob.user_id}",
                     {"membership": "join", "displayname": "Bobby"})
    a2 = await alice.send_message(room, "a2")

    # Incremental: the account data change, then no b2, but bob's state event and alice's message.
    res = await alice.sync(first["next_batch"])
    assert any(e["type"] == "m.ignored_user_list" for e in res["account_data"]["events"])
    events = timeline(res, room)
    assert bodies(events) == ["a2"]
    assert topic["event_id"] in [e["event_id"] for e in events]

    # A fresh initial sync leaves out the earlier message too (the client hides what it had).
    events = timeline(await alice.sync(), room)
    assert bodies(events) == ["a1", "a2"]
    assert topic["event_id"] in [e["event_id"] for e in events]

    # /messages (both directions) and /context.
    chunk = (await messages(alice, room))["chunk"]
    assert bodies(chunk) == ["a2", "a1"]
    assert any(e["event_id"] == topic["event_id"] for e in chunk)
    chunk = (await messages(alice, room, dir="f"))["chunk"]
    assert bodies(chunk) == ["a1", "a2"]
    ctx = await ok(alice, "GET", f"/rooms/{room}/context/{a2}", limit="20")
    assert bodies(ctx["events_before"]) == ["a1"]
    assert any(e["event_id"] == topic["event_id"] for e in ctx["events_before"])
    # The ignored user's own message is not served on its own either.
    status, data = await alice.request("GET", f"/rooms/{room}/event/{b2}")
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")
    status, _ = await alice.request("GET", f"/rooms/{room}/context/{b2}")
    assert status == 404

    # Bob, and anyone else, still sees everything.
    assert bodies((await messages(bob, room))["chunk"]) == ["a2", "b2", "b1", "a1"]


async def test_unignoring_resumes_new_events_only(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await shared_room(alice, bob)
    await ignore(alice, bob.user_id)
    await bob.send_message(room, "while ignored")
    first = await alice.sync()
    assert bodies(timeline(first, room)) == []

    await ignore(alice)  # an empty list: nobody ignored any more
    await bob.send_message(room, "after")
    res = await alice.sync(first["next_batch"])
    # The spec: resume sending the user's events, but not those missed while they were ignored.
    assert bodies(timeline(res, room)) == ["after"]
    # A fresh sync (what the spec tells clients to do) and /messages have everything.
    assert bodies(timeline(await alice.sync(), room)) == ["while ignored", "after"]
    assert bodies((await messages(alice, room))["chunk"]) == ["after", "while ignored"]


async def test_ignoring_applies_to_a_waiting_long_poll_and_other_devices(server: TestHomeServer) -> None:
    """The list is cached; a change of it is seen at once by every device's next sync."""
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await shared_room(alice, bob)
    other = server.client()
    status, data = await other.request("POST", "/login", {"type": "m.login.password", "user": "alice",
                                                          "password": "password123"}, auth=False)
    assert status == 200, data
    other.token = data["access_token"]
    try:
        since = (await other.sync())["next_batch"]
        await bob.send_message(room, "seen")
        res = await other.sync(since)
        assert bodies(timeline(res, room)) == ["seen"]
        await ignore(alice, bob.user_id)
        await bob.send_message(room, "hidden")
        res = await other.sync(res["next_batch"])
        assert bodies(timeline(res, room)) == []
        await ignore(alice)
        await bob.send_message(room, "seen again")
        res = await other.sync(res["next_batch"])
        assert bodies(timeline(res, room)) == ["seen again"]
    finally:
        await other.close()


async def test_invites_from_ignored_users_are_not_sent(server: TestHomeServer) -> None:
    alice, bob, carol = await user(server, "alice"), await user(server, "bob"), await user(server, "carol")
    await ignore(alice, bob.user_id)
    first = await alice.sync()
    from_bob = await bob.create_room(invite=[alice.user_id])
    from_carol = await carol.create_room(invite=[alice.user_id])
    res = await alice.sync(first["next_batch"])
    assert from_bob not in res["rooms"]["invite"]
    assert from_carol in res["rooms"]["invite"]
    res = await alice.sync()
    assert from_bob not in res["rooms"]["invite"]
    assert from_carol in res["rooms"]["invite"]
    # Nothing stops alice joining the room she was invited to anyway (the invite stands).
    await ok(alice, "POST", f"/rooms/{from_bob}/join", {})
    assert from_bob in (await alice.sync())["rooms"]["join"]


async def test_malformed_list_ignores_nobody_and_filter_json_still_applies(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await shared_room(alice, bob)
    await ok(alice, "PUT", f"/user/{alice.user_id}/account_data/m.ignored_user_list",
             {"ignored_users": [bob.user_id]})
    await bob.send_message(room, "b1")
    assert bodies(timeline(await alice.sync(), room)) == ["b1"]
    # Ignoring and a /messages filter combine.
    await ignore(alice, bob.user_id)
    await alice.send_message(room, "a1")
    filt = json.dumps({"types": ["m.room.message"]})
    assert bodies((await messages(alice, room, filter=filt))["chunk"]) == ["a1"]


async def test_search_and_relations_leave_ignored_users_out(server: TestHomeServer) -> None:
    """The other readers of room events go through the same filter: server-side search and /relations."""
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await shared_room(alice, bob)
    root = await alice.send_message(room, "pineapple root")
    await bob.send_message(room, "pineapple from bob")
    reply = {"msgtype": "m.text", "body": "bob replies", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    await ok(bob, "PUT", f"/rooms/{room}/send/m.room.message/t1", reply)
    await ignore(alice, bob.user_id)

    body = {"search_categories": {"room_events": {"search_term": "pineapple"}}}
    results = (await ok(alice, "POST", "/search", body))["search_categories"]["room_events"]["results"]
    assert [r["result"]["content"]["body"] for r in results] == ["pineapple root"]
    chunk = (await ok(alice, "GET", f"/_matrix/client/v1/rooms/{room}/relations/{root}"))["chunk"]
    assert chunk == []
    assert len((await ok(bob, "GET", f"/_matrix/client/v1/rooms/{room}/relations/{root}"))["chunk"]) == 1


async def test_an_ignored_users_thread_reply_is_not_bundled(server: TestHomeServer) -> None:
    """The latest thread reply bundled into its root passes the reader's ignore list too: an ignored
    user's reply is not handed over inside someone else's event."""
    alice, bob, carol = await user(server, "alice"), await user(server, "bob"), await user(server, "carol")
    room = await shared_room(alice, bob)
    await ok(carol, "POST", f"/rooms/{room}/join", {})
    root = await alice.send_message(room, "root")
    await ok(bob, "PUT", f"/rooms/{room}/send/m.room.message/t1", {
        "msgtype": "m.text", "body": "bob's reply", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})

    def relations(res: Json) -> Json:
        root_event = next(e for e in res["chunk"] if e["event_id"] == root)
        return dict(root_event.get("unsigned", {}).get("m.relations", {}))

    assert relations(await messages(carol, room))["m.thread"]["latest_event"]["content"]["body"] == "bob's reply"
    await ignore(carol, bob.user_id)
    assert "m.thread" not in relations(await messages(carol, room))
    assert relations(await messages(alice, room))["m.thread"]["count"] == 1


async def test_a_user_cannot_ignore_themselves(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    status, body = await alice.request("PUT", f"/user/{alice.user_id}/account_data/m.ignored_user_list",
                                       {"ignored_users": {alice.user_id: {}}})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
