"""Relations: /relations (filters, pages, directions), /threads (all, participated), and the
aggregations bundled into /event, /messages and /context; redacting a child drops its relation."""

from __future__ import annotations

import uuid
from typing import Any

from tests.harness import Client, ok, user

V1 = "/_matrix/client/v1/rooms/{}"


async def send(client: Client, room: str, content: dict[str, Any], etype: str = "m.room.message") -> str:
    data = await ok(client, "PUT", f"/rooms/{room}/send/{etype}/{uuid.uuid4().hex}", content)
    return str(data["event_id"])


def reply(root: str, body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}}


async def test_relations_threads_and_bundles(server: Any) -> None:
    alice, bob, eve = await user(server, "alice"), await user(server, "bob"), await user(server, "eve")
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    root = await alice.send_message(room, "root")
    replies = [await send(bob, room, reply(root, f"reply {i}")) for i in range(3)]
    edit = await send(alice, room, {"msgtype": "m.text", "body": "* root edited", "m.new_content": {
        "msgtype": "m.text", "body": "root edited"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
    reaction = await send(bob, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}},
                          "m.reaction")
    other_root = await bob.send_message(room, "another root")
    await send(bob, room, reply(other_root, "reply there"))
    # A rich reply is not a relation.
    await send(bob, room, {"msgtype": "m.text", "body": "> root", "m.relates_to": {
        "m.in_reply_to": {"event_id": root}}})

    base = V1.format(room) + f"/relations/{root}"
    every = await ok(bob, "GET", base)
    assert [e["event_id"] for e in every["chunk"]] == [reaction, edit, *reversed(replies)]  # newest first
    assert [e["event_id"] for e in (await ok(bob, "GET", base + "/m.thread"))["chunk"]] == list(reversed(replies))
    assert [e["event_id"] for e in (await ok(bob, "GET", base + "/m.annotation/m.reaction"))["chunk"]] == [
        reaction]
    assert (await ok(bob, "GET", base + "/m.annotation/m.room.message"))["chunk"] == []
    page = await ok(bob, "GET", base + "/m.thread", limit="2")
    assert [e["event_id"] for e in page["chunk"]] == [replies[2], replies[1]]
    rest = await ok(bob, "GET", base + "/m.thread", limit="2", **{"from": page["next_batch"]})
    assert [e["event_id"] for e in rest["chunk"]] == [replies[0]] and "next_batch" not in rest
    forwards = await ok(bob, "GET", base + "/m.thread", dir="f", limit="2")
    assert [e["event_id"] for e in forwards["chunk"]] == replies[:2]
    assert (await ok(bob, "GET", base, recurse="true"))["recursion_depth"] == 1

    # Bundled with the root wherever it is served.
    event = await ok(bob, "GET", f"/rooms/{room}/event/{root}")
    bundle = event["unsigned"]["m.relations"]
    assert bundle["m.thread"]["count"] == 3 and bundle["m.thread"]["latest_event"]["event_id"] == replies[2]
    assert bundle["m.thread"]["current_user_participated"] is True  # bob replied
    assert bundle["m.replace"]["event_id"] == edit
    alice_view = (await ok(alice, "GET", f"/rooms/{room}/event/{root}"))["unsigned"]["m.relations"]
    assert alice_view["m.thread"]["current_user_participated"] is True  # alice wrote the root
    messages = await ok(bob, "GET", f"/rooms/{room}/messages", dir="b", limit="50")
    served_root = next(e for e in messages["chunk"] if e["event_id"] == root)
    assert served_root["unsigned"]["m.relations"]["m.thread"]["count"] == 3
    context = await ok(bob, "GET", f"/rooms/{room}/context/{root}", limit="2")
    assert context["event"]["unsigned"]["m.relations"]["m.thread"]["count"] == 3

    threads = await ok(bob, "GET", V1.format(room) + "/threads")
    assert [e["event_id"] for e in threads["chunk"]] == [other_root, root]  # latest activity first
    assert threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"] == 1
    first = await ok(bob, "GET", V1.format(room) + "/threads", limit="1")
    assert [e["event_id"] for e in (await ok(bob, "GET", V1.format(room) + "/threads", limit="1",
                                             **{"from": first["next_batch"]}))["chunk"]] == [root]
    mine = await ok(alice, "GET", V1.format(room) + "/threads", include="participated")
    assert [e["event_id"] for e in mine["chunk"]] == [root]

    # Redacting a reply drops it from the thread.
    await ok(bob, "PUT", f"/rooms/{room}/redact/{replies[2]}/{uuid.uuid4().hex}", {})
    bundle = (await ok(bob, "GET", f"/rooms/{room}/event/{root}"))["unsigned"]["m.relations"]
    assert bundle["m.thread"]["count"] == 2 and bundle["m.thread"]["latest_event"]["event_id"] == replies[1]

    # Outsiders see nothing.
    status, body = await eve.request("GET", base)
    assert status == 403
    status, body = await bob.request("GET", V1.format(room) + "/relations/$missing")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    for params in ({"dir": "x"}, {"from": "garbage"}, {"limit": "0"}):
        status, body = await bob.request("GET", base, params=params)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", params
    status, body = await bob.request("GET", V1.format(room) + "/threads", params={"include": "mine"})
    assert status == 400


async def test_the_migration_indexes_relations_of_events_stored_before_it(server: Any) -> None:
    from hs.db.migrations import _statements, list_migrations

    alice = await user(server, "alice")
    room = await alice.create_room(preset="private_chat")
    root = await alice.send_message(room, "root")
    first = await send(alice, room, reply(root, "one"))
    gone = await send(alice, room, reply(root, "two"))
    await ok(alice, "PUT", f"/rooms/{room}/redact/{gone}/{uuid.uuid4().hex}", {})
    db = server.hs.db
    await db.execute("DELETE FROM event_relations")
    sql = next(text for _, name, text in list_migrations() if name.startswith("011_"))
    backfill = [s for s in _statements(sql, db.engine) if s.startswith("INSERT")]
    assert len(backfill) == 1
    await db.execute(backfill[0])
    rows = await db.fetch("SELECT event_id, relates_to_id, relation_type, sender FROM event_relations")
    assert [(r["event_id"], r["relates_to_id"], r["relation_type"], r["sender"]) for r in rows] == [
        (first, root, "m.thread", alice.user_id)]  # the redacted reply has none
