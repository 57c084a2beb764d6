"""Sending, transaction IDs, redaction, /messages pagination, /context, single events, filters and history
visibility over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.harness import Client, TestHomeServer, ok, user
from tests.integration.test_rooms import close, q, timeline, users


async def send(c: Client, room_id: str, body: str, txn: str | None = None) -> str:
    return await c.send_message(room_id, body, txn)


async def messages(c: Client, room_id: str, **params: str) -> dict[str, Any]:
    status, data = await c.request("GET", f"/rooms/{q(room_id)}/messages", params=params)
    assert status == 200, data
    return dict(data)


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message" and "body" in e["content"]]


async def test_send_and_txn_idempotency(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="public_chat")
    rid = q(room_id)
    await bob.request("POST", f"/rooms/{rid}/join")
    count = await server.hs.db.fetchval("SELECT COUNT(*) FROM events")

    first = await send(alice, room_id, "once", txn="t1")
    again = await send(alice, room_id, "once", txn="t1")
    assert first == again
    # Even a different body under the same txn ID is the same request replayed.
    status, body = await alice.request("PUT", f"/rooms/{rid}/send/m.room.message/t1", {"body": "other"})
    assert status == 200 and body["event_id"] == first
    assert await server.hs.db.fetchval("SELECT COUNT(*) FROM events") == count + 1
    assert bodies(await timeline(alice, room_id)).count("once") == 1

    # Another user's identical txn ID is a different transaction.
    theirs = await send(bob, room_id, "bob's", txn="t1")
    assert theirs != first
    # The sender's device sees its transaction ID; others do not.
    status, ev = await alice.request("GET", f"/rooms/{rid}/event/{q(first)}")
    assert status == 200 and ev["unsigned"]["transaction_id"] == "t1"
    assert ev["content"] == {"msgtype": "m.text", "body": "once"} and ev["sender"] == alice.user_id
    status, ev = await bob.request("GET", f"/rooms/{rid}/event/{q(first)}")
    assert status == 200 and "transaction_id" not in ev["unsigned"]

    # Custom event types and state-less sends.
    status, body = await alice.request("PUT", f"/rooms/{rid}/send/org.example.ping/p1", {"n": 1})
    assert status == 200
    status, ev = await bob.request("GET", f"/rooms/{rid}/event/{q(body['event_id'])}")
    assert ev["type"] == "org.example.ping" and ev["content"] == {"n": 1} and "state_key" not in ev
    await close(alice, bob)


async def test_redaction(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="public_chat")
    rid = q(room_id)
    await bob.request("POST", f"/rooms/{rid}/join")
    mine = await send(alice, room_id, "secret text")
    bobs = await send(bob, room_id, "bob text")

    # Bob (power 0) may redact his own event but not alice's.
    status, err = await bob.request("PUT", f"/rooms/{rid}/redact/{q(mine)}/r1", {})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, body = await bob.request("PUT", f"/rooms/{rid}/redact/{q(bobs)}/r1", {})
    assert status == 200

    status, body = await alice.request("PUT", f"/rooms/{rid}/redact/{q(mine)}/r2", {"reason": "oops"})
    assert status == 200
    redaction_id = body["event_id"]
    status, again = await alice.request("PUT", f"/rooms/{rid}/redact/{q(mine)}/r2", {"reason": "oops"})
    assert again["event_id"] == redaction_id

    status, ev = await bob.request("GET", f"/rooms/{rid}/event/{q(mine)}")
    assert status == 200
    assert ev["content"] == {}
    because = ev["unsigned"]["redacted_because"]
    assert because["event_id"] == redaction_id and because["content"]["reason"] == "oops"
    assert because["type"] == "m.room.redaction" and because["redacts"] == mine
    status, red = await bob.request("GET", f"/rooms/{rid}/event/{q(redaction_id)}")
    assert red["redacts"] == mine and red["content"]["reason"] == "oops"

    # /messages shows the pruned event too, and exactly one redaction for the replayed txn.
    events = await timeline(bob, room_id)
    pruned = next(e for e in events if e["event_id"] == mine)
    assert pruned["content"] == {} and pruned["unsigned"]["redacted_because"]["event_id"] == redaction_id
    assert [e["event_id"] for e in events if e["type"] == "m.room.redaction" and e.get("redacts") == mine] == [
        redaction_id]
    assert "secret text" not in json.dumps(events)
    await close(alice, bob)


async def test_messages_paginate_backwards_and_forwards(server: TestHomeServer) -> None:
    (alice,) = await users(server, "alice")
    room_id = await alice.create_room(preset="private_chat")
    sent = [await send(alice, room_id, f"msg {i}") for i in range(55)]
    everything = await timeline(alice, room_id)
    all_ids = [e["event_id"] for e in everything]
    assert all_ids[-55:] == sent and everything[0]["type"] == "m.room.create"

    # Backwards from the live end, in pages of 10, until no `end`.
    collected: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"dir": "b", "limit": "10", **({"from": token} if token else {})}
        page = await messages(alice, room_id, **params)
        if token is not None:
            assert page["start"] == token
        ids = [e["event_id"] for e in page["chunk"]]
        assert len(ids) <= 10
        collected += ids
        pages += 1
        if "end" not in page:
            break
        token = page["end"]
    assert collected == list(reversed(all_ids))
    assert pages == len(all_ids) // 10 + 1

    # Forwards from the start of the room.
    collected = []
    token = None
    while True:
        params = {"dir": "f", "limit": "7", **({"from": token} if token else {})}
        page = await messages(alice, room_id, **params)
        collected += [e["event_id"] for e in page["chunk"]]
        if "end" not in page:
            break
        token = page["end"]
    assert collected == all_ids

    # `to` bounds a page: from the live end back to a token taken 20 events ago.
    page = await messages(alice, room_id, dir="b", limit="20")
    assert bodies(page["chunk"]) == [f"msg {i}" for i in range(54, 34, -1)]
    mark = page["end"]
    for i in range(55, 60):
        sent.append(await send(alice, room_id, f"msg {i}"))
    page = await messages(alice, room_id, dir="b", limit="100", to=mark)
    assert bodies(page["chunk"]) == [f"msg {i}" for i in range(59, 34, -1)]
    # Forwards from the mark reaches the newest events without repeating or skipping.
    page = await messages(alice, room_id, dir="f", limit="100", **{"from": mark})
    assert bodies(page["chunk"]) == [f"msg {i}" for i in range(35, 60)]
    assert "end" not in page
    # Forwards between two tokens.
    start_page = await messages(alice, room_id, dir="b", limit="30")  # end: before msg 30
    page = await messages(alice, room_id, dir="f", limit="100", to=mark, **{"from": start_page["end"]})
    assert bodies(page["chunk"]) == [f"msg {i}" for i in range(30, 35)]
    # Pagination tokens of the other form are rejected.
    status, err = await alice.request("GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "from": "x1"})
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
    # Default limit is 10.
    assert len((await messages(alice, room_id, dir="b"))["chunk"]) == 10
    await close(alice)


async def test_messages_accept_sync_tokens(server: TestHomeServer) -> None:
    (alice,) = await users(server, "alice")
    room_id = await alice.create_room(preset="private_chat")
    for i in range(5):
        await send(alice, room_id, f"early {i}")
    from hs.streams.tokens import StreamToken

    mark = StreamToken({"events": server.hs.events_stream.current_position()}).encode()
    for i in range(5):
        await send(alice, room_id, f"late {i}")
    page = await messages(alice, room_id, dir="b", limit="5", **{"from": mark})
    assert bodies(page["chunk"]) == [f"early {i}" for i in range(4, -1, -1)]
    assert page["start"] == mark
    page = await messages(alice, room_id, dir="f", limit="50", **{"from": mark})
    assert bodies(page["chunk"]) == [f"late {i}" for i in range(5)]
    page = await messages(alice, room_id, dir="b", limit="50", to=mark)
    assert bodies(page["chunk"]) == [f"late {i}" for i in range(4, -1, -1)]
    status, data = await alice.request("GET", f"/rooms/{q(room_id)}/members", params={"at": mark})
    assert status == 200 and [e["state_key"] for e in data["chunk"]] == [alice.user_id]
    await close(alice)


async def test_messages_filter_and_lazy_loading(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="public_chat")
    rid = q(room_id)
    await bob.request("POST", f"/rooms/{rid}/join")
    for i in range(6):
        await send(alice if i % 2 == 0 else bob, room_id, f"m{i}")
        await alice.request("PUT", f"/rooms/{rid}/send/org.example.other/x{i}", {"i": i})
    await alice.request("PUT", f"/rooms/{rid}/send/m.room.message/img",
                        {"msgtype": "m.image", "body": "pic", "url": "mxc://test.local/abc"})

    def filt(**f: Any) -> str:
        return json.dumps(f)

    page = await messages(alice, room_id, dir="b", limit="50", filter=filt(types=["m.room.message"]))
    assert bodies(page["chunk"]) == ["pic", "m5", "m4", "m3", "m2", "m1", "m0"]
    page = await messages(alice, room_id, dir="b", limit="50",
                          filter=filt(types=["m.room.message"], not_senders=[alice.user_id]))
    assert bodies(page["chunk"]) == ["m5", "m3", "m1"]
    page = await messages(alice, room_id, dir="b", limit="50", filter=filt(senders=[bob.user_id]))
    assert {e["sender"] for e in page["chunk"]} == {bob.user_id}
    page = await messages(alice, room_id, dir="f", limit="50", filter=filt(types=["org.example.*"]))
    assert [e["content"]["i"] for e in page["chunk"]] == list(range(6))
    page = await messages(alice, room_id, dir="b", limit="50", filter=filt(not_types=["m.room.*", "org.*"]))
    assert page["chunk"] == []
    page = await messages(alice, room_id, dir="b", limit="50", filter=filt(contains_url=True))
    assert bodies(page["chunk"]) == ["pic"]
    # The filter's limit caps the page; pages continue past filtered-out events.
    page = await messages(alice, room_id, dir="b", filter=filt(types=["m.room.message"], limit=2))
    assert bodies(page["chunk"]) == ["pic", "m5"]
    page = await messages(alice, room_id, dir="b", limit="3", filter=filt(types=["m.room.message"]),
                          **{"from": page["end"]})
    assert bodies(page["chunk"]) == ["m4", "m3", "m2"]

    page = await messages(alice, room_id, dir="b", limit="4",
                          filter=filt(lazy_load_members=True, types=["m.room.message"]))
    senders = {e["sender"] for e in page["chunk"]}
    assert senders == {alice.user_id, bob.user_id}
    assert {(e["type"], e["state_key"]) for e in page["state"]} == {("m.room.member", u) for u in senders}
    page = await messages(alice, room_id, dir="b", limit="4")
    assert "state" not in page or page["state"] == []
    status, err = await alice.request("GET", f"/rooms/{rid}/messages", params={"filter": "{not json"})
    assert status == 400 and err["errcode"] == "M_NOT_JSON"
    status, err = await alice.request("GET", f"/rooms/{rid}/messages", params={"filter": filt(types="x")})
    assert status == 400 and err["errcode"] == "M_BAD_JSON"
    await close(alice, bob)


async def test_context(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="public_chat")
    rid = q(room_id)
    await bob.request("POST", f"/rooms/{rid}/join")
    ids = [await send(alice, room_id, f"c{i}") for i in range(20)]

    status, ctx = await bob.request("GET", f"/rooms/{rid}/context/{q(ids[10])}", params={"limit": "6"})
    assert status == 200, ctx
    assert ctx["event"]["event_id"] == ids[10]
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[9], ids[8], ids[7]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[11], ids[12], ids[13]]
    state_keys = {(e["type"], e["state_key"]) for e in ctx["state"]}
    assert ("m.room.member", bob.user_id) in state_keys and ("m.room.create", "") in state_keys

    # start/end continue the timeline around the context with no overlap or gap.
    page = await messages(bob, room_id, dir="b", limit="3", **{"from": ctx["start"]})
    assert [e["event_id"] for e in page["chunk"]] == [ids[6], ids[5], ids[4]]
    page = await messages(bob, room_id, dir="f", limit="3", **{"from": ctx["end"]})
    assert [e["event_id"] for e in page["chunk"]] == [ids[14], ids[15], ids[16]]

    # Filters apply to the surrounding events; limit=0 gives just the event.
    status, ctx = await bob.request("GET", f"/rooms/{rid}/context/{q(ids[1])}",
                                    params={"limit": "10", "filter": json.dumps({"types": ["m.room.message"]})})
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[0]]
    assert all(e["type"] == "m.room.message" for e in ctx["events_after"])
    status, ctx = await bob.request("GET", f"/rooms/{rid}/context/{q(ids[19])}", params={"limit": "0"})
    assert status == 200 and ctx["events_before"] == [] and ctx["events_after"] == []
    status, ctx = await bob.request("GET", f"/rooms/{rid}/context/{q(ids[5])}",
                                    params={"limit": "2", "filter": json.dumps({"lazy_load_members": True})})
    assert {e["state_key"] for e in ctx["state"]} == {alice.user_id}
    status, err = await bob.request("GET", f"/rooms/{rid}/context/{q('$unknown')}")
    assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    await close(alice, bob)


async def test_history_visibility_joined_hides_earlier_events(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="public_chat",
                                      initial_state=[{"type": "m.room.history_visibility",
                                                      "content": {"history_visibility": "joined"}}])
    rid = q(room_id)
    secrets = [await send(alice, room_id, f"secret {i}") for i in range(30)]
    status, _ = await bob.request("POST", f"/rooms/{rid}/join")
    assert status == 200
    after = await send(alice, room_id, "welcome")

    # /messages backwards from the live end: the join and later, then nothing more.
    collected = []
    token = None
    while True:
        page = await messages(bob, room_id, dir="b", limit="5", **({"from": token} if token else {}))
        collected += page["chunk"]
        if "end" not in page:
            break
        token = page["end"]
    assert bodies(collected) == ["welcome"]
    assert (bob.user_id, "join") in [(e.get("state_key"), e["content"].get("membership")) for e in collected]
    # Events from before the room became members-only (its creation) stay visible under "shared".
    assert {e["event_id"] for e in collected}.isdisjoint(secrets)
    page = await messages(bob, room_id, dir="f", limit="100")
    assert bodies(page["chunk"]) == ["welcome"]

    for secret in (secrets[0], secrets[-1]):
        status, err = await bob.request("GET", f"/rooms/{rid}/event/{q(secret)}")
        assert status == 404 and err["errcode"] == "M_NOT_FOUND"
        status, err = await bob.request("GET", f"/rooms/{rid}/context/{q(secret)}")
        assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    status, ev = await bob.request("GET", f"/rooms/{rid}/event/{q(after)}")
    assert status == 200 and ev["content"]["body"] == "welcome"
    status, ctx = await bob.request("GET", f"/rooms/{rid}/context/{q(after)}", params={"limit": "20"})
    assert status == 200
    assert not [b for b in bodies(ctx["events_before"]) if b.startswith("secret")]
    # Alice, joined throughout, sees everything.
    assert bodies(await timeline(alice, room_id)) == [f"secret {i}" for i in range(30)] + ["welcome"]
    status, ev = await alice.request("GET", f"/rooms/{rid}/event/{q(secrets[0])}")
    assert status == 200

    # After leaving, bob sees nothing sent later.
    await bob.request("POST", f"/rooms/{rid}/leave")
    later = await send(alice, room_id, "after bob left")
    status, err = await bob.request("GET", f"/rooms/{rid}/event/{q(later)}")
    assert status == 404
    page = await messages(bob, room_id, dir="b", limit="50")
    assert bodies(page["chunk"]) == ["welcome"]
    await close(alice, bob)


async def test_shared_history_visible_to_later_joiners(server: TestHomeServer) -> None:
    alice, bob, eve = await users(server, "alice", "bob", "eve")
    room_id = await alice.create_room(preset="public_chat")
    rid = q(room_id)
    early = await send(alice, room_id, "before bob")
    await bob.request("POST", f"/rooms/{rid}/join")
    status, ev = await bob.request("GET", f"/rooms/{rid}/event/{q(early)}")
    assert status == 200 and ev["content"]["body"] == "before bob"
    assert "before bob" in bodies((await messages(bob, room_id, dir="b", limit="50"))["chunk"])
    # Outsiders get 403 from room reads and 404 for events.
    status, err = await eve.request("GET", f"/rooms/{rid}/messages", params={"dir": "b"})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, err = await eve.request("GET", f"/rooms/{rid}/event/{q(early)}")
    assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    # World readable: outsiders may read what is sent from then on, not what was shared before.
    await alice.request("PUT", f"/rooms/{rid}/state/m.room.history_visibility",
                        {"history_visibility": "world_readable"})
    public = await send(alice, room_id, "for everyone")
    page = await messages(eve, room_id, dir="b", limit="50")
    assert bodies(page["chunk"]) == ["for everyone"]
    assert page["chunk"][1]["content"] == {"history_visibility": "world_readable"}
    status, ev = await eve.request("GET", f"/rooms/{rid}/event/{q(public)}")
    assert status == 200 and ev["content"]["body"] == "for everyone"
    await close(alice, bob, eve)


async def test_timestamp_to_event(server: Any) -> None:
    """GET /timestamp_to_event: the closest event in either direction; only for readers of the room."""
    alice, eve = await user(server, "alice"), await user(server, "eve")
    room = await alice.create_room(preset="private_chat")
    first = await alice.send_message(room, "first")
    ts_first = (await ok(alice, "GET", f"/rooms/{room}/event/{first}"))["origin_server_ts"]
    await asyncio.sleep(0.01)
    second = await alice.send_message(room, "second")
    ts_second = (await ok(alice, "GET", f"/rooms/{room}/event/{second}"))["origin_server_ts"]
    assert ts_second > ts_first
    path = f"/_matrix/client/v1/rooms/{room}/timestamp_to_event"
    assert await ok(alice, "GET", path, ts=str(ts_first + 1), dir="f") == {
        "event_id": second, "origin_server_ts": ts_second}
    assert await ok(alice, "GET", path, ts=str(ts_second - 1), dir="b") == {
        "event_id": first, "origin_server_ts": ts_first}
    status, body = await alice.request("GET", path, params={"ts": str(ts_second + 10 ** 6), "dir": "f"})
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await eve.request("GET", path, params={"ts": "0", "dir": "f"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    for params in ({"dir": "f"}, {"ts": "x", "dir": "f"}, {"ts": "0", "dir": "up"}):
        status, body = await alice.request("GET", path, params=params)
        assert status == 400 and body["errcode"] in ("M_MISSING_PARAM", "M_INVALID_PARAM"), params
