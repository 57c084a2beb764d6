"""Push and ignoring (issue 18): a user who ignores the sender is not notified of their messages — no
entry in GET /notifications, no unread notification count in /sync — as Synapse's bulk push rule
evaluator leaves them out; other senders still notify. The ignore index behind it follows every
change of `m.ignored_user_list`, and lists stored before the index existed are indexed at start-up.
Real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from hs.db.stores.ignored_users import IgnoredUsersStore
from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]


async def ignore(client: Client, *user_ids: str) -> None:
    await ok(client, "PUT", f"/user/{client.user_id}/account_data/m.ignored_user_list",
             {"ignored_users": {u: {} for u in user_ids}})


async def notified_bodies(client: Client) -> list[str]:
    res = await ok(client, "GET", "/notifications")
    return [n["event"]["content"].get("body") for n in res["notifications"]
            if n["event"]["type"] == "m.room.message"]


def notification_count(res: Json, room: str) -> int:
    return int(res["rooms"]["join"][room]["unread_notifications"].get("notification_count", 0))


async def test_ignored_senders_messages_do_not_notify(server: TestHomeServer) -> None:
    alice, bob, carol = (await user(server, "alice"), await user(server, "bob"),
                         await user(server, "carol"))
    room = await carol.create_room(preset="public_chat")
    for member in (alice, bob):
        await ok(member, "POST", f"/rooms/{room}/join", {})
    await ignore(alice, bob.user_id)

    await bob.send_message(room, "from bob")
    await server.hs.event_sender.flush_rests()
    assert await notified_bodies(alice) == []
    assert notification_count(await alice.sync(), room) == 0

    await carol.send_message(room, "from carol")
    await server.hs.event_sender.flush_rests()
    assert await notified_bodies(alice) == ["from carol"]
    assert notification_count(await alice.sync(), room) == 1
    # Bob's state events still count as usual (they are shown to alice), and carol, who ignores
    # nobody, is notified of bob's message.
    assert await notified_bodies(carol) == ["from bob"]

    # Un-ignored: bob notifies alice again.
    await ok(alice, "PUT", f"/user/{alice.user_id}/account_data/m.ignored_user_list", {"ignored_users": {}})
    await bob.send_message(room, "bob again")
    await server.hs.event_sender.flush_rests()
    assert await notified_bodies(alice) == ["bob again", "from carol"]
    assert notification_count(await alice.sync(), room) == 2


async def test_ignore_index_follows_the_list_and_is_built_for_older_lists(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    index = IgnoredUsersStore(server.hs.db)
    await ignore(alice, bob.user_id, "@remote:elsewhere.example")
    # A remote user may be ignored too.
    assert await index.ignorers_of([bob.user_id, "@remote:elsewhere.example", alice.user_id]) == {
        bob.user_id: {alice.user_id}, "@remote:elsewhere.example": {alice.user_id}}
    await ignore(alice, "@remote:elsewhere.example")
    assert await index.ignorers_of([bob.user_id, "@remote:elsewhere.example"]) == {
        "@remote:elsewhere.example": {alice.user_id}}
    # Per-room account data of that type is not an ignore list.
    room = await alice.create_room()
    await ok(bob, "PUT", f"/user/{bob.user_id}/rooms/{room}/account_data/m.ignored_user_list",
             {"ignored_users": {alice.user_id: {}}})
    assert await index.ignorers_of([alice.user_id]) == {}

    # As after the migration: the index empty, the backfill pending; the writer's start-up fills it.
    await server.hs.db.execute("DELETE FROM ignored_users")
    await server.hs.db.execute("INSERT INTO ignored_users_backfill (pending) VALUES (1)")
    await server.hs.account_data_stream.setup()
    assert await index.ignorers_of(["@remote:elsewhere.example", alice.user_id]) == {
        "@remote:elsewhere.example": {alice.user_id}}
    assert not await index.backfill_if_pending()
