"""Sliding sync extensions on a real server, SQLite and PostgreSQL: `compute_extensions` called directly
with tokens taken as the sync service takes them (the notifier's position before reading), the rooms,
messages, receipts, typing and keys made over HTTP."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hs.services.sliding_sync.extensions import ExtensionRequest, compute_extensions
from hs.streams.tokens import StreamToken
from tests.harness import OPEN_CLIENTS, Client, TestHomeServer, ok, user
from tests.sliding_sync.client import SlidingClient, Target

Json = dict[str, Any]
ALL = {name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")}


@dataclass
class Answer:
    ext: Json
    updated: bool
    upto: StreamToken


async def extensions(server: TestHomeServer, client: Client, requested: Json, since: StreamToken | None = None,
                     lists: dict[str, list[str]] | None = None, subscriptions: list[str] | None = None,
                     initial: dict[str, list[str]] | None = None,
                     previously: dict[str, StreamToken] | None = None) -> Answer:
    """What the core does for one response: `upto` first, then the joined rooms, then the extensions."""
    assert client.user_id
    hs = server.hs
    upto = hs.notifier.current
    joined = list(await hs.event_store.get_rooms_for_user(client.user_id, ("join",)))
    request = ExtensionRequest(user_id=client.user_id, device_id=client.device_id, requested=requested,
                               since=since, upto=upto, lists=lists or {}, subscriptions=subscriptions or [],
                               joined=joined, initial=initial or {}, previously=previously or {})
    ext, updated = await compute_extensions(hs, request)
    return Answer(ext, updated, upto)


async def login(server: TestHomeServer, name: str) -> Client:
    c = server.client()
    OPEN_CLIENTS.append(c)
    body: Json = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                  "password": "password123"}
    status, data = await c.request("POST", "/login", body, auth=False)
    assert status == 200, data
    c.token, c.user_id, c.device_id = data["access_token"], data["user_id"], data["device_id"]
    return c


async def send_to_device(sender: Client, target: Client, content: Json) -> None:
    await ok(sender, "PUT", f"/sendToDevice/m.test/{uuid.uuid4().hex}",
             {"messages": {target.user_id: {target.device_id: content}}})


async def inbox_rows(server: TestHomeServer, user_id: str | None) -> int:
    return int(await server.hs.db.fetchval("SELECT COUNT(*) FROM device_inbox WHERE user_id = $1", user_id))


async def rooms_with(owner: Client, member: Client, n: int) -> list[str]:
    rooms = []
    for _ in range(n):
        room = await owner.create_room(invite=[member.user_id])
        await ok(member, "POST", f"/rooms/{room}/join", {})
        rooms.append(room)
    return rooms


# -- general -----------------------------------------------------------------------------------------------
async def test_only_enabled_extensions_answer_and_empty_ones_are_still_there(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    none = await extensions(server, alice, {"to_device": {"enabled": False}, "org.example.x": {"enabled": True}})
    assert (none.ext, none.updated) == ({}, False)
    first = await extensions(server, alice, ALL)
    assert set(first.ext) == set(ALL)
    assert first.ext["to_device"] == {"next_batch": str(first.upto.get("to_device")), "events": []}
    assert first.ext["e2ee"] == {"device_one_time_keys_count": {"signed_curve25519": 0},
                                 "device_unused_fallback_key_types": []}
    assert "device_lists" not in first.ext["e2ee"]  # a new connection has no "since"
    assert first.ext["receipts"] == {"rooms": {}} and first.ext["typing"] == {"rooms": {}}
    # The push rules are global account data, on a new connection always.
    assert [e["type"] for e in first.ext["account_data"]["global"]] == ["m.push_rules"]
    # Nothing happened since: every extension is there, empty, and nothing is new.
    again = await extensions(server, alice, ALL, since=first.upto)
    assert again.updated is False
    assert again.ext["account_data"] == {"global": [], "rooms": {}}
    assert again.ext["e2ee"]["device_lists"] == {"changed": [], "left": []}


# -- to_device -----------------------------------------------------------------------------------------------
async def test_to_device_delivered_once_acknowledged_and_capped_by_limit(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    for i in range(3):
        await send_to_device(alice, bob, {"i": i})
    conn = await extensions(server, bob, {"to_device": {"enabled": True, "limit": 2}})
    got = conn.ext["to_device"]
    assert conn.updated
    assert [e["content"]["i"] for e in got["events"]] == [0, 1]
    assert got["events"][0] == {"sender": alice.user_id, "type": "m.test", "content": {"i": 0}}
    # The response was lost: the same `since` (none) gets the same batch again.
    retry = await extensions(server, bob, {"to_device": {"enabled": True, "limit": 2}})
    assert retry.ext["to_device"] == got
    assert await inbox_rows(server, bob.user_id) == 3
    # The next batch, from the extension's own `since`, which acknowledges (deletes) the first two.
    nxt = await extensions(server, bob, {"to_device": {"enabled": True, "limit": 2, "since": got["next_batch"]}},
                           since=conn.upto)
    assert [e["content"]["i"] for e in nxt.ext["to_device"]["events"]] == [2]
    assert nxt.ext["to_device"]["next_batch"] == str(nxt.upto.get("to_device"))
    assert await inbox_rows(server, bob.user_id) == 1
    done = await extensions(server, bob, {"to_device": {"enabled": True, "since": nxt.ext["to_device"]["next_batch"]}},
                            since=nxt.upto)
    assert done.ext["to_device"]["events"] == [] and done.updated is False
    assert await inbox_rows(server, bob.user_id) == 0
    # A message sent now arrives in the next response, once.
    await send_to_device(alice, bob, {"i": 3})
    since = done.ext["to_device"]["next_batch"]
    late = await extensions(server, bob, {"to_device": {"enabled": True, "since": since}}, since=done.upto)
    assert [e["content"] for e in late.ext["to_device"]["events"]] == [{"i": 3}] and late.updated
    final = await extensions(server, bob, {"to_device": {"enabled": True,
                                                         "since": late.ext["to_device"]["next_batch"]}},
                             since=late.upto)
    assert final.ext["to_device"]["events"] == []


async def test_to_device_only_for_the_device_and_a_future_since_gets_nothing(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    bob2 = await login(server, "bob")
    await send_to_device(alice, bob2, {"to": "second"})
    assert (await extensions(server, bob, {"to_device": {"enabled": True}})).ext["to_device"]["events"] == []
    future = str(server.hs.notifier.current.get("to_device") + 1000)
    ahead = await extensions(server, bob2, {"to_device": {"enabled": True, "since": future}})
    assert ahead.ext["to_device"] == {"next_batch": future, "events": []}
    assert await inbox_rows(server, bob.user_id) == 1  # nothing acknowledged by a position from the future
    got = await extensions(server, bob2, {"to_device": {"enabled": True}})
    assert [e["content"] for e in got.ext["to_device"]["events"]] == [{"to": "second"}]


# -- e2ee ----------------------------------------------------------------------------------------------------
async def test_e2ee_key_counts_and_a_new_device_in_device_lists(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await rooms_with(alice, bob, 1)
    otks = {f"signed_curve25519:k{i}": {"key": f"otk{i}", "signatures": {}} for i in range(4)}
    fallback = {"signed_curve25519:fb": {"key": "fb", "fallback": True, "signatures": {}}}
    await ok(alice, "POST", "/keys/upload", {"one_time_keys": otks, "fallback_keys": fallback})
    conn = await extensions(server, alice, {"e2ee": {"enabled": True}})
    assert conn.ext["e2ee"]["device_one_time_keys_count"] == {"signed_curve25519": 4}
    assert conn.ext["e2ee"]["device_unused_fallback_key_types"] == ["signed_curve25519"]
    assert "device_lists" not in conn.ext["e2ee"] and conn.updated is False

    await login(server, "bob")  # a new device of a user alice shares a room with
    nxt = await extensions(server, alice, {"e2ee": {"enabled": True}}, since=conn.upto)
    assert nxt.ext["e2ee"]["device_lists"] == {"changed": [bob.user_id], "left": []}
    assert nxt.updated
    # Only in that response: the next one from its token has no change.
    after = await extensions(server, alice, {"e2ee": {"enabled": True}}, since=nxt.upto)
    assert after.ext["e2ee"]["device_lists"] == {"changed": [], "left": []} and after.updated is False
    assert after.ext["e2ee"]["device_one_time_keys_count"] == {"signed_curve25519": 4}
    # A claimed key shows in the counts (not something that wakes a long poll, as in Synapse).
    await ok(bob, "POST", "/keys/claim", {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}})
    claimed = await extensions(server, alice, {"e2ee": {"enabled": True}}, since=after.upto)
    assert claimed.ext["e2ee"]["device_one_time_keys_count"] == {"signed_curve25519": 3}


async def test_e2ee_device_lists_left_when_no_room_is_shared_any_more(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    (room,) = await rooms_with(alice, bob, 1)
    conn = await extensions(server, alice, {"e2ee": {"enabled": True}})
    await ok(bob, "POST", f"/rooms/{room}/leave", {})
    nxt = await extensions(server, alice, {"e2ee": {"enabled": True}}, since=conn.upto)
    assert nxt.ext["e2ee"]["device_lists"] == {"changed": [], "left": [bob.user_id]} and nxt.updated
    after = await extensions(server, alice, {"e2ee": {"enabled": True}}, since=nxt.upto)
    assert after.ext["e2ee"]["device_lists"] == {"changed": [], "left": []}


# -- account data --------------------------------------------------------------------------------------------
async def test_account_data_global_and_per_room_only_for_requested_rooms(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    a, b, c = [await alice.create_room() for _ in range(3)]
    uid = alice.user_id
    await ok(alice, "PUT", f"/user/{uid}/account_data/org.example.global", {"v": 1})
    for room in (a, b, c):
        await ok(alice, "PUT", f"/user/{uid}/rooms/{room}/account_data/org.example.room", {"room": room})
    lists = {"main": [a, c]}
    scoped = {"account_data": {"enabled": True, "lists": ["main"], "rooms": [b]}}
    conn = await extensions(server, alice, scoped, lists=lists, subscriptions=[b])
    data = conn.ext["account_data"]
    assert {e["type"]: e["content"] for e in data["global"]}["org.example.global"] == {"v": 1}
    assert data["rooms"] == {r: [{"type": "org.example.room", "content": {"room": r}}] for r in (a, b, c)}
    # Only the list, not the subscription; then only the subscription.
    only_list = await extensions(server, alice, {"account_data": {"enabled": True, "lists": ["main"], "rooms": []}},
                                 lists=lists, subscriptions=[b])
    assert set(only_list.ext["account_data"]["rooms"]) == {a, c}
    only_sub = await extensions(server, alice, {"account_data": {"enabled": True, "lists": [], "rooms": [b]}},
                                lists=lists, subscriptions=[b])
    assert set(only_sub.ext["account_data"]["rooms"]) == {b}

    # Changes since: the global one, and the covered room's; not the room outside the response.
    small = {"main": [a]}
    await ok(alice, "PUT", f"/user/{uid}/account_data/org.example.global", {"v": 2})
    await ok(alice, "PUT", f"/user/{uid}/rooms/{a}/account_data/org.example.room", {"room": a, "v": 2})
    await ok(alice, "PUT", f"/user/{uid}/rooms/{c}/account_data/org.example.room", {"room": c, "v": 2})
    nxt = await extensions(server, alice, {"account_data": {"enabled": True}}, since=conn.upto, lists=small)
    assert nxt.updated
    assert nxt.ext["account_data"] == {
        "global": [{"type": "org.example.global", "content": {"v": 2}}],
        "rooms": {a: [{"type": "org.example.room", "content": {"room": a, "v": 2}}]},
    }
    quiet = await extensions(server, alice, {"account_data": {"enabled": True}}, since=nxt.upto, lists=small)
    assert quiet.ext["account_data"] == {"global": [], "rooms": {}} and quiet.updated is False
    # A room the core sends from scratch on this connection gets all its account data.
    grown = await extensions(server, alice, {"account_data": {"enabled": True}}, since=nxt.upto,
                             lists={"main": [a, b]}, initial={b: []})
    assert grown.ext["account_data"]["rooms"] == {b: [{"type": "org.example.room", "content": {"room": b}}]}


# -- typing --------------------------------------------------------------------------------------------------
async def test_typing_only_for_requested_rooms_and_only_when_changed(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    a, b = await rooms_with(alice, bob, 2)
    for room in (a, b):
        await ok(bob, "PUT", f"/rooms/{room}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
    req = {"typing": {"enabled": True}}
    conn = await extensions(server, alice, req, lists={"top": [a]})
    assert conn.ext["typing"] == {"rooms": {a: {"type": "m.typing", "content": {"user_ids": [bob.user_id]}}}}
    same = await extensions(server, alice, req, since=conn.upto, lists={"top": [a]})
    assert same.ext["typing"] == {"rooms": {}} and same.updated is False
    await ok(bob, "PUT", f"/rooms/{b}/typing/{bob.user_id}", {"typing": False})
    elsewhere = await extensions(server, alice, req, since=conn.upto, lists={"top": [a]})
    assert elsewhere.ext["typing"] == {"rooms": {}} and elsewhere.updated is False
    await ok(bob, "PUT", f"/rooms/{a}/typing/{bob.user_id}", {"typing": False})
    stopped = await extensions(server, alice, req, since=elsewhere.upto, lists={"top": [a]})
    assert stopped.ext["typing"] == {"rooms": {a: {"type": "m.typing", "content": {"user_ids": []}}}}
    assert stopped.updated
    # Subscriptions count too (rooms `*`), and a list nobody asked for does not.
    await ok(bob, "PUT", f"/rooms/{b}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
    sub = await extensions(server, alice, {"typing": {"enabled": True, "lists": ["other"]}}, since=stopped.upto,
                           lists={"top": [a]}, subscriptions=[b])
    assert set(sub.ext["typing"]["rooms"]) == {b}


async def test_typing_and_receipts_never_for_rooms_the_user_is_not_joined_to(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    room = await bob.create_room(invite=[alice.user_id, carol.user_id])
    await ok(carol, "POST", f"/rooms/{room}/join", {})
    event = await carol.send_message(room, "hi")
    await ok(carol, "PUT", f"/rooms/{room}/typing/{carol.user_id}", {"typing": True, "timeout": 30000})
    await ok(carol, "POST", f"/rooms/{room}/receipt/m.read/{event}", {})
    # Alice is only invited: the room may be in her list, but she sees neither.
    got = await extensions(server, alice, {"typing": {"enabled": True}, "receipts": {"enabled": True}},
                           lists={"all": [room]})
    assert got.ext == {"typing": {"rooms": {}}, "receipts": {"rooms": {}}}


# -- receipts ------------------------------------------------------------------------------------------------
async def test_receipts_for_requested_rooms_initial_and_incremental(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    a, b = await rooms_with(alice, bob, 2)
    old = await bob.send_message(a, "old")
    for _ in range(12):  # pushes `old` out of the newest events
        await alice.send_message(a, "filler")
    newest = await alice.send_message(a, "newest")
    in_b = await alice.send_message(b, "b")
    await ok(bob, "POST", f"/rooms/{a}/receipt/m.read/{old}", {})
    await ok(alice, "POST", f"/rooms/{a}/receipt/m.read/{old}", {})
    await ok(bob, "POST", f"/rooms/{b}/receipt/m.read/{in_b}", {})
    await ok(bob, "POST", f"/rooms/{a}/receipt/m.read.private/{newest}", {})

    req = {"receipts": {"enabled": True}}
    conn = await extensions(server, alice, req, lists={"top": [a]})
    assert conn.ext["receipts"]["rooms"].keys() == {a}
    content = conn.ext["receipts"]["rooms"][a]
    assert content["type"] == "m.receipt"
    # A new connection: alice's own receipt; bob's on an old event is left out, and so is bob's
    # private one.
    assert set(content["content"]) == {old}
    assert set(content["content"][old]["m.read"]) == {alice.user_id}
    # With the timeline given by the core, receipts on those events come too.
    given = await extensions(server, alice, req, lists={"top": [a]}, initial={a: [old, newest]})
    assert set(given.ext["receipts"]["rooms"][a]["content"][old]["m.read"]) == {alice.user_id, bob.user_id}

    # Incremental: bob reads the newest event of each room; alice sees it only for the covered room.
    await ok(bob, "POST", f"/rooms/{a}/receipt/m.read/{newest}", {})
    await ok(bob, "POST", f"/rooms/{b}/receipt/m.read/{in_b}", {"thread_id": "main"})
    nxt = await extensions(server, alice, req, since=conn.upto, lists={"top": [a]})
    assert nxt.updated
    rooms = nxt.ext["receipts"]["rooms"]
    assert set(rooms) == {a}
    assert set(rooms[a]["content"]) == {newest}
    assert set(rooms[a]["content"][newest]["m.read"]) == {bob.user_id}
    quiet = await extensions(server, alice, req, since=nxt.upto, lists={"top": [a]})
    assert quiet.ext["receipts"] == {"rooms": {}} and quiet.updated is False
    # A room that comes into range on this connection: its receipts as for a new connection.
    grown = await extensions(server, alice, req, since=nxt.upto, lists={"top": [a, b]}, initial={b: [in_b]})
    assert set(grown.ext["receipts"]["rooms"]) == {b}
    assert set(grown.ext["receipts"]["rooms"][b]["content"][in_b]["m.read"]) == {bob.user_id}


# -- rooms back in the lists -----------------------------------------------------------------------------
async def test_a_room_back_in_the_lists_gets_what_changed_while_it_was_out(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    a, b = await rooms_with(alice, bob, 2)
    event = await bob.send_message(b, "read me")
    req = {"account_data": {"enabled": True}, "receipts": {"enabled": True}, "typing": {"enabled": True}}
    # B is in the lists, then leaves them (only A covered) while things happen in it.
    first = await extensions(server, alice, req, lists={"top": [a, b]})
    left_at = first.upto
    out = await extensions(server, alice, req, since=first.upto, lists={"top": [a]})
    await ok(alice, "PUT", f"/user/{alice.user_id}/rooms/{b}/account_data/org.example.note", {"n": 1})
    await ok(bob, "POST", f"/rooms/{b}/receipt/m.read/{event}", {})
    await ok(bob, "PUT", f"/rooms/{b}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
    still_out = await extensions(server, alice, req, since=out.upto, lists={"top": [a]})
    assert still_out.updated is False
    # Back, named as previously sent up to `left_at`: the changes since then, though older than `since`.
    back = await extensions(server, alice, req, since=still_out.upto, lists={"top": [a, b]},
                            previously={b: left_at})
    assert back.ext["account_data"]["rooms"] == {b: [{"type": "org.example.note", "content": {"n": 1}}]}
    assert set(back.ext["receipts"]["rooms"][b]["content"][event]["m.read"]) == {bob.user_id}
    assert back.ext["typing"]["rooms"] == {b: {"type": "m.typing", "content": {"user_ids": [bob.user_id]}}}
    # Without that, only what changed since the connection's `since`: nothing.
    plain = await extensions(server, alice, req, since=still_out.upto, lists={"top": [a, b]})
    assert plain.updated is False


# == Through real HTTP, both shapes ==========================================================================
# These need the core's endpoints. They run against hs speaking the unstable and the v4 shape (SQLite);
# HS_SS_EXT_TARGETS=hs-unstable,hs-v4,synapse adds a real Synapse (unstable shape), against which the
# expectations were checked. Each asks something the long-poll tests of tests/sliding_sync/test_live.py
# do not: which rooms an extension covers in a real list window, to_device's own `since` and `limit`,
# the shape of a new connection's answer, and malformed extensions.

def _http_targets() -> list[str]:
    return [t.strip() for t in os.environ.get("HS_SS_EXT_TARGETS", "hs-unstable,hs-v4").split(",") if t.strip()]


@pytest.fixture(scope="session")
def ext_synapse(tmp_path_factory: pytest.TempPathFactory, pg_base_dsn: str) -> Iterator[Any]:
    from tests.sliding_sync.synapse_server import running_synapse

    with running_synapse(tmp_path_factory.mktemp("ext-synapse"), pg_base_dsn) as synapse:
        yield synapse


@pytest.fixture(params=_http_targets())
async def target(request: pytest.FixtureRequest, make_server: Any) -> Target:
    name = str(request.param)
    if name == "synapse":
        synapse = request.getfixturevalue("ext_synapse")
        return Target("synapse", synapse.base_url, synapse.server_name, "unstable", str(synapse.cert.ca_path))
    if importlib.util.find_spec("hs.api.client.sliding_sync") is None:
        pytest.skip("the core's sliding sync endpoints (hs/api/client/sliding_sync.py) have not landed")
    srv = await make_server("sqlite")
    return Target("hs", srv.base_url, srv.config.server_name, name.removeprefix("hs-"))


def window(size: int, timeline_limit: int = 1) -> Json:
    return {"ranges": [[0, size - 1]], "timeline_limit": timeline_limit, "required_state": [["m.room.name", ""]]}


async def slide(client: SlidingClient, body: Json, timeout: int = 0, new: bool = False) -> Json:
    return dict((await client.slide(body, pos=None if new else True, timeout=timeout)).get("extensions", {}))


async def test_http_new_connection_answers_every_enabled_extension(target: Target) -> None:
    alice = await target.user("alice")
    await alice.create_room(name="one")
    ext = await slide(alice, {"lists": {"all": window(5)}, "extensions": ALL}, new=True)
    assert set(ext) == set(ALL)
    assert isinstance(ext["to_device"]["next_batch"], str) and ext["to_device"]["events"] == []
    assert ext["e2ee"]["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert ext["e2ee"]["device_unused_fallback_key_types"] == []
    assert "device_lists" not in ext["e2ee"]
    assert "m.push_rules" in [e["type"] for e in ext["account_data"]["global"]]
    assert ext["typing"] == {"rooms": {}} and ext["receipts"] == {"rooms": {}}
    # Nothing enabled, or only unknown extensions: an empty object.
    none = await slide(alice, {"lists": {"all": window(5)},
                               "extensions": {"to_device": {"enabled": False}, "org.example.x": {"enabled": True}}})
    assert none == {}


async def test_http_extensions_cover_only_the_requested_window(target: Target) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    rooms: dict[str, str] = {}
    for name in ("outside", "subscribed", "top"):  # the newest message puts `top` first in the list
        room = await alice.create_room(name=name, invite=[bob.user_id])
        await bob.call("POST", f"/join/{room}", {})
        await alice.send_message(room, name)
        rooms[name] = room
    top, outside, subscribed = rooms["top"], rooms["outside"], rooms["subscribed"]
    body = {"lists": {"top": window(1)}, "room_subscriptions": {subscribed: {"timeline_limit": 1, "required_state": []}},
            "extensions": {"typing": {"enabled": True}, "receipts": {"enabled": True, "rooms": []},
                           "account_data": {"enabled": True, "lists": [], "rooms": [subscribed]}}}
    await slide(alice, body, new=True)
    uid = alice.user_id
    read: dict[str, str] = {}
    for room in (top, outside, subscribed):
        await bob.call("PUT", f"/rooms/{room}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
        read[room] = (await bob.call("GET", f"/rooms/{room}/messages?dir=b&limit=1"))["chunk"][0]["event_id"]
        await bob.call("POST", f"/rooms/{room}/receipt/m.read/{read[room]}", {})
        await alice.call("PUT", f"/user/{uid}/rooms/{room}/account_data/org.example.note", {"room": room})
    ext = await slide(alice, body)
    # typing: lists and rooms default to `*`: the list's window and the subscription.
    assert set(ext["typing"]["rooms"]) == {top, subscribed}
    # receipts: every list, no rooms: the window only.
    assert set(ext["receipts"]["rooms"]) == {top}
    assert bob.user_id in ext["receipts"]["rooms"][top]["content"][read[top]]["m.read"]
    # account data: no lists, the subscribed room only.
    assert ext["account_data"]["rooms"] == {
        subscribed: [{"type": "org.example.note", "content": {"room": subscribed}}]}
    # A new connection: `rooms: ["*"]` is every room of the response, the list's too (Synapse's rule);
    # receipts start from those on the timeline sent (the window's newest event, which bob read).
    fresh = await slide(alice, {**body, "extensions": {"typing": {"enabled": True, "lists": [], "rooms": ["*"]},
                                                       "receipts": {"enabled": True}}}, new=True)
    assert set(fresh["typing"]["rooms"]) == {top, subscribed}
    assert set(fresh["receipts"]["rooms"]) == {top, subscribed}
    assert bob.user_id in fresh["receipts"]["rooms"][top]["content"][read[top]]["m.read"]


async def test_http_to_device_since_limit_and_acknowledgement(target: Target) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    for i in range(3):
        await bob.call("PUT", f"/sendToDevice/m.test/{uuid.uuid4().hex}",
                       {"messages": {alice.user_id: {alice.device_id: {"i": i}}}})
    body: Json = {"lists": {"all": window(1)}, "extensions": {"to_device": {"enabled": True, "limit": 2}}}
    first = (await slide(alice, body, new=True))["to_device"]
    assert [e["content"]["i"] for e in first["events"]] == [0, 1]
    assert first["events"][0]["sender"] == bob.user_id and first["events"][0]["type"] == "m.test"
    # Without its `since` the extension starts over: the same batch (nothing was acknowledged).
    assert (await slide(alice, body))["to_device"]["events"] == first["events"]
    body["extensions"]["to_device"]["since"] = first["next_batch"]
    second = (await slide(alice, body))["to_device"]
    assert [e["content"]["i"] for e in second["events"]] == [2]
    # The first two are acknowledged: even a new connection from that `since` gets only the third.
    assert (await slide(alice, body, new=True))["to_device"]["events"] == [
        {"sender": bob.user_id, "type": "m.test", "content": {"i": 2}}]
    body["extensions"]["to_device"]["since"] = second["next_batch"]
    assert (await slide(alice, body))["to_device"]["events"] == []
    # All acknowledged now: starting over without a `since` finds nothing.
    del body["extensions"]["to_device"]["since"]
    assert (await slide(alice, body, new=True))["to_device"]["events"] == []


async def test_http_a_change_outside_the_window_does_not_wake_or_appear(target: Target) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    rooms = []
    for name in ("old", "new"):
        room = await alice.create_room(name=name, invite=[bob.user_id])
        await bob.call("POST", f"/join/{room}", {})
        await alice.send_message(room, name)
        rooms.append(room)
    old, new = rooms
    body = {"lists": {"top": window(1)}, "extensions": {"typing": {"enabled": True}, "receipts": {"enabled": True}}}
    await slide(alice, body, new=True)
    await slide(alice, body)
    await bob.call("PUT", f"/rooms/{old}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
    # A short long-poll: it ends at its timeout with nothing for the room outside the window.
    quiet = await slide(alice, body, timeout=1000)
    assert old not in quiet.get("typing", {}).get("rooms", {})
    await bob.call("PUT", f"/rooms/{new}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
    woken = await slide(alice, body, timeout=20000)
    assert set(woken["typing"]["rooms"]) == {new}


@pytest.mark.parametrize(("extensions", "errcode"), [
    # A value of the right type that does not parse: M_INVALID_PARAM; a wrong type: M_BAD_JSON (Synapse's).
    ({"to_device": {"enabled": True, "since": "not-a-number"}}, "M_INVALID_PARAM"),
    ({"to_device": {"enabled": True, "limit": "ten"}}, "M_BAD_JSON"),
    ({"typing": {"enabled": True, "lists": "all"}}, "M_BAD_JSON"),
    ({"receipts": {"enabled": "yes"}}, "M_BAD_JSON"),
])
async def test_http_malformed_extensions_are_400(target: Target, extensions: Json, errcode: str) -> None:
    alice = await target.user("alice")
    status, data = await alice.sync_raw({"lists": {"all": window(1)}, "extensions": extensions})
    assert (status, data.get("errcode")) == (400, errcode), data
