"""Push rules CRUD and unread notification counts over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.harness import Client, TestHomeServer

Json = dict[str, Any]
_clients: list[Client] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> Any:
    yield
    while _clients:
        await _clients.pop().close()


async def user(server: TestHomeServer, name: str, displayname: str | None = None) -> Client:
    c = server.client()
    _clients.append(c)
    await c.register(name)
    if displayname is not None:
        await ok(c, "PUT", f"/profile/{c.user_id}/displayname", {"displayname": displayname})
    return c


async def ok(client: Client, method: str, path: str, body: Any = None, **params: str) -> Any:
    status, data = await client.request(method, path, body, params=params or None)
    assert status == 200, (method, path, status, data)
    return data


def ids(rules: list[Json]) -> list[str]:
    return [r["rule_id"] for r in rules]


def push_rules_event(res: Json) -> Json | None:
    found = [e for e in res["account_data"]["events"] if e["type"] == "m.push_rules"]
    return found[-1]["content"] if found else None


# -- reading -------------------------------------------------------------------------------------------------------
async def test_default_rules_for_every_user(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    everything = await ok(alice, "GET", "/pushrules/")
    assert set(everything) == {"global"}
    rules = everything["global"]
    assert set(rules) == {"override", "content", "room", "sender", "underride"}
    assert ids(rules["override"])[:5] == [".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
                                          ".m.rule.member_event", ".m.rule.is_user_mention"]
    assert {".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif", ".m.rule.tombstone",
            ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"} <= set(ids(rules["override"]))
    assert ids(rules["underride"]) == [".m.rule.call", ".m.rule.encrypted_room_one_to_one",
                                       ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"]
    assert rules["content"] == [{
        "rule_id": ".m.rule.contains_user_name", "default": True, "enabled": True, "pattern": "alice",
        "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]}]
    assert rules["room"] == [] and rules["sender"] == []
    master = rules["override"][0]
    assert master == {"rule_id": ".m.rule.master", "default": True, "enabled": False, "conditions": [],
                      "actions": []}
    mention = rules["override"][4]
    assert mention["conditions"] == [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
                                      "value": alice.user_id}]
    # The narrower paths, including the legacy api/v1 prefix.
    assert await ok(alice, "GET", "/pushrules/global/") == rules
    assert await ok(alice, "GET", "/pushrules/global/underride/") == rules["underride"]
    assert await ok(alice, "GET", "/_matrix/client/api/v1/pushrules/") == everything
    assert await ok(alice, "GET", "/pushrules/global/override/.m.rule.master") == master
    # And in the initial sync's account data.
    assert push_rules_event(await alice.sync()) == everything


# -- writing -------------------------------------------------------------------------------------------------------
async def test_push_rule_crud_and_ordering(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    await ok(alice, "PUT", "/pushrules/global/content/cake", {"pattern": "cake*lie", "actions": ["notify"]})
    rule = await ok(alice, "GET", "/pushrules/global/content/cake")
    assert rule == {"rule_id": "cake", "default": False, "enabled": True, "pattern": "cake*lie",
                    "actions": ["notify"]}
    content = await ok(alice, "GET", "/pushrules/global/content/")
    # User rules come before the server defaults of their kind.
    assert ids(content) == ["cake", ".m.rule.contains_user_name"]

    await ok(alice, "PUT", "/pushrules/global/content/pie", {"pattern": "pie", "actions": []})
    assert ids(await ok(alice, "GET", "/pushrules/global/content/"))[:2] == ["pie", "cake"]
    await ok(alice, "PUT", "/pushrules/global/content/tart", {"pattern": "tart", "actions": []}, after="cake")
    assert ids(await ok(alice, "GET", "/pushrules/global/content/"))[:3] == ["pie", "cake", "tart"]
    await ok(alice, "PUT", "/pushrules/global/content/tart", {"pattern": "tart2", "actions": ["notify"]},
             before="pie")
    content = await ok(alice, "GET", "/pushrules/global/content/")
    assert ids(content)[:3] == ["tart", "pie", "cake"]
    assert content[0]["pattern"] == "tart2"
    # Updating in place keeps the position.
    await ok(alice, "PUT", "/pushrules/global/content/pie", {"pattern": "pies", "actions": []})
    assert ids(await ok(alice, "GET", "/pushrules/global/content/"))[:3] == ["tart", "pie", "cake"]

    override = {"conditions": [{"kind": "event_match", "key": "content.body", "pattern": "beer"},
                               {"kind": "room_member_count", "is": "<=10"}],
                "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}]}
    await ok(alice, "PUT", "/pushrules/global/override/beer", override)
    rules = await ok(alice, "GET", "/pushrules/global/")
    # Only the master rule outranks the user's own override rules.
    assert ids(rules["override"])[:2] == [".m.rule.master", "beer"]
    assert rules["override"][1]["conditions"] == override["conditions"]
    await ok(alice, "PUT", "/pushrules/global/room/!abc:test.local", {"actions": []})
    await ok(alice, "PUT", "/pushrules/global/sender/@spam:test.local", {"actions": []})
    rules = await ok(alice, "GET", "/pushrules/global/")
    assert rules["room"] == [{"rule_id": "!abc:test.local", "default": False, "enabled": True, "actions": []}]
    assert ids(rules["sender"]) == ["@spam:test.local"]

    await ok(alice, "DELETE", "/pushrules/global/content/cake")
    status, data = await alice.request("GET", "/pushrules/global/content/cake")
    assert status == 404 and data["errcode"] == "M_NOT_FOUND"
    assert ids(await ok(alice, "GET", "/pushrules/global/content/")) == ["tart", "pie", ".m.rule.contains_user_name"]
    # Rules are per user.
    bob = await user(server, "bob")
    assert ids(await ok(bob, "GET", "/pushrules/global/content/")) == [".m.rule.contains_user_name"]


async def test_push_rule_errors(server: TestHomeServer) -> None:
    alice = await user(server, "alice")

    async def err(method: str, path: str, body: Any = None, **params: str) -> tuple[int, str]:
        status, data = await alice.request(method, path, body, params=params or None)
        return status, data.get("errcode")

    assert await err("GET", "/pushrules/global/override/nope") == (404, "M_NOT_FOUND")
    assert await err("DELETE", "/pushrules/global/override/nope") == (404, "M_NOT_FOUND")
    assert await err("GET", "/pushrules/global/override/nope/enabled") == (404, "M_NOT_FOUND")
    assert await err("PUT", "/pushrules/global/override/nope/enabled", {"enabled": True}) == (404, "M_NOT_FOUND")
    assert await err("PUT", "/pushrules/global/override/nope/actions", {"actions": []}) == (404, "M_NOT_FOUND")
    assert (await err("GET", "/pushrules/global/bogus/x"))[0] == 400
    assert (await err("GET", "/pushrules/global/bogus/"))[0] == 400
    assert (await err("PUT", "/pushrules/global/bogus/x", {"actions": []}))[0] == 400
    assert (await err("DELETE", "/pushrules/global/bogus/x"))[0] == 400
    assert (await err("GET", "/pushrules/device/override/x"))[0] == 400
    assert (await err("GET", "/pushrules/global/override/.m.rule.master/bogus"))[0] == 400
    # Reserved or malformed IDs and bodies.
    assert (await err("PUT", "/pushrules/global/override/.mine", {"actions": [], "conditions": []}))[0] == 400
    assert (await err("PUT", "/pushrules/global/content/x", {"actions": []}))[0] == 400  # no pattern
    assert (await err("PUT", "/pushrules/global/content/x", {"pattern": "x"}))[0] == 400  # no actions
    assert (await err("PUT", "/pushrules/global/content/x", {"pattern": "x", "actions": ["explode"]}))[0] == 400
    assert (await err("PUT", "/pushrules/global/override/x", {"actions": [], "conditions": [{}]}))[0] == 400
    assert (await err("PUT", "/pushrules/global/room/!r:t", {"actions": []}, before="nope"))[0] == 400
    assert (await err("PUT", "/pushrules/global/override/x", {"actions": []}, after=".m.rule.master"))[0] == 400
    assert (await err("PUT", "/pushrules/global/override/.m.rule.master/enabled", {"enabled": "yes"}))[0] == 400
    assert (await err("PUT", "/pushrules/global/override/.m.rule.master/actions", {"actions": "notify"}))[0] == 400
    # Server-default rules cannot be deleted.
    assert await err("DELETE", "/pushrules/global/override/.m.rule.master") == (404, "M_NOT_FOUND")
    # None of that changed anything.
    rules = await ok(alice, "GET", "/pushrules/global/")
    assert rules["room"] == [] and "x" not in ids(rules["override"]) and "x" not in ids(rules["content"])
    status, _ = await alice.request("GET", "/pushrules/", auth=False)
    assert status == 401


async def test_enabled_and_actions(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    master = "/pushrules/global/override/.m.rule.master"
    assert await ok(alice, "GET", master + "/enabled") == {"enabled": False}
    await ok(alice, "PUT", master + "/enabled", {"enabled": True})
    assert await ok(alice, "GET", master + "/enabled") == {"enabled": True}
    assert (await ok(alice, "GET", master))["enabled"] is True

    message = "/pushrules/global/underride/.m.rule.message"
    assert await ok(alice, "GET", message + "/actions") == {"actions": ["notify"]}
    await ok(alice, "PUT", message + "/actions", {"actions": ["notify", {"set_tweak": "highlight"}]})
    assert await ok(alice, "GET", message + "/actions") == {"actions": ["notify", {"set_tweak": "highlight"}]}
    # A default rule changed by the user is still a default rule.
    assert (await ok(alice, "GET", message))["default"] is True

    await ok(alice, "PUT", "/pushrules/global/sender/@x:test.local", {"actions": ["notify"]})
    await ok(alice, "PUT", "/pushrules/global/sender/@x:test.local/enabled", {"enabled": False})
    await ok(alice, "PUT", "/pushrules/global/sender/@x:test.local/actions", {"actions": []})
    assert await ok(alice, "GET", "/pushrules/global/sender/@x:test.local") == {
        "rule_id": "@x:test.local", "default": False, "enabled": False, "actions": []}
    # Re-putting the rule keeps it disabled.
    await ok(alice, "PUT", "/pushrules/global/sender/@x:test.local", {"actions": ["notify"]})
    assert (await ok(alice, "GET", "/pushrules/global/sender/@x:test.local"))["enabled"] is False


async def test_changes_come_down_sync_as_account_data(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    since = (await alice.sync())["next_batch"]
    assert push_rules_event(await alice.sync(since)) is None

    async def later() -> None:
        await asyncio.sleep(0.3)
        await ok(alice, "PUT", "/pushrules/global/content/cake", {"pattern": "cake", "actions": ["notify"]})

    task = asyncio.create_task(later())
    start = time.monotonic()
    res = await alice.sync(since, timeout=10000)
    while push_rules_event(res) is None and time.monotonic() - start < 10:
        # Woken by something else (e.g. presence): keep long-polling from there.
        res = await alice.sync(res["next_batch"], timeout=10000)
    await task
    assert time.monotonic() - start < 5
    content = push_rules_event(res)
    assert content is not None and ids(content["global"]["content"])[0] == "cake"
    assert push_rules_event(await alice.sync(res["next_batch"])) is None
    # Other users are not told.
    bob = await user(server, "bob")
    bob_since = (await bob.sync())["next_batch"]
    await ok(alice, "PUT", "/pushrules/global/override/.m.rule.master/enabled", {"enabled": True})
    assert push_rules_event(await bob.sync(bob_since)) is None
    content = push_rules_event(await alice.sync(res["next_batch"]))
    assert content is not None and content["global"]["override"][0]["enabled"] is True
    # A filter can leave it out.
    filtered = await alice.sync(filter=json.dumps({"account_data": {"not_types": ["m.push_rules"]}}))
    assert push_rules_event(filtered) is None


# -- unread counts -------------------------------------------------------------------------------------------------
def counts(res: Json, room: str) -> tuple[int, int]:
    n = res["rooms"]["join"][room]["unread_notifications"]
    return n["notification_count"], n["highlight_count"]


async def three_in_a_room(server: TestHomeServer) -> tuple[Client, Client, Client, str]:
    alice = await user(server, "alice")
    bob = await user(server, "bob", displayname="Bobby")
    carol = await user(server, "carol")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    await ok(carol, "POST", f"/rooms/{room}/join", {})
    return alice, bob, carol, room


async def receipt(client: Client, room: str, event_id: str, rtype: str = "m.read", body: Json | None = None) -> None:
    await ok(client, "POST", f"/rooms/{room}/receipt/{rtype}/{event_id}", body or {})


async def test_display_name_mention_counts_and_receipt_clears(server: TestHomeServer) -> None:
    alice, bob, carol, room = await three_in_a_room(server)
    since = (await bob.sync())["next_batch"]
    assert counts(await bob.sync(), room) == (0, 0)

    mention = await alice.send_message(room, "hey Bobby, lunch?")
    res = await bob.sync(since)
    # The count arrives in the same sync as the event.
    assert [e["event_id"] for e in res["rooms"]["join"][room]["timeline"]["events"]] == [mention]
    assert counts(res, room) == (1, 1)
    plain = await alice.send_message(room, "anyone else?")
    assert counts(await bob.sync(), room) == (2, 1)
    # Carol was not mentioned; Alice sent them.
    assert counts(await carol.sync(), room) == (2, 0)
    assert counts(await alice.sync(), room) == (0, 0)

    since = (await bob.sync())["next_batch"]
    await receipt(bob, room, mention)
    res = await bob.sync(since)
    assert counts(res, room) == (1, 0)
    await receipt(bob, room, plain, "m.read.private")
    assert counts(await bob.sync(), room) == (0, 0)
    # An older public receipt does not bring them back.
    await receipt(bob, room, mention)
    assert counts(await bob.sync(), room) == (0, 0)
    assert counts(await carol.sync(), room) == (2, 0)


async def test_user_rules_change_what_counts(server: TestHomeServer) -> None:
    alice, bob, carol, room = await three_in_a_room(server)
    await ok(bob, "PUT", f"/pushrules/global/room/{room}", {"actions": []})
    await alice.send_message(room, "quiet")
    assert counts(await bob.sync(), room) == (0, 0)
    # Override rules (mentions) still outrank room rules.
    await alice.send_message(room, "Bobby!")
    assert counts(await bob.sync(), room) == (1, 1)
    await ok(bob, "PUT", "/pushrules/global/override/.m.rule.master/enabled", {"enabled": True})
    await alice.send_message(room, "Bobby again")
    assert counts(await bob.sync(), room) == (1, 1)
    await ok(bob, "PUT", "/pushrules/global/override/.m.rule.master/enabled", {"enabled": False})
    await ok(carol, "PUT", "/pushrules/global/content/lunch",
             {"pattern": "lunch", "actions": ["notify", {"set_tweak": "highlight"}]})
    await alice.send_message(room, "Lunch time")
    assert counts(await carol.sync(), room) == (4, 1)
    # Notices notify nobody.
    await ok(alice, "PUT", f"/rooms/{room}/send/m.room.message/n1", {"msgtype": "m.notice", "body": "Bobby lunch"})
    assert counts(await carol.sync(), room) == (4, 1)


async def test_thread_counts_and_threaded_receipts(server: TestHomeServer) -> None:
    alice, bob, _carol, room = await three_in_a_room(server)
    root = await alice.send_message(room, "root")
    reply = await ok(alice, "PUT", f"/rooms/{room}/send/m.room.message/t1", {
        "msgtype": "m.text", "body": "Bobby, in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    # A reaction to the threaded reply is in the thread too (but reactions do not notify).
    await ok(alice, "PUT", f"/rooms/{room}/send/m.reaction/r1", {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": reply["event_id"], "key": "+"}})
    threaded = json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}})

    res = await bob.sync()
    assert counts(res, room) == (2, 1)
    assert "unread_thread_notifications" not in res["rooms"]["join"][room]
    res = await bob.sync(filter=threaded)
    assert counts(res, room) == (1, 0)
    assert res["rooms"]["join"][room]["unread_thread_notifications"] == {
        root: {"notification_count": 1, "highlight_count": 1}}

    # A receipt for the thread clears the thread only; one for the main timeline clears the rest.
    await receipt(bob, room, reply["event_id"], body={"thread_id": root})
    res = await bob.sync(filter=threaded)
    assert counts(res, room) == (1, 0)
    assert res["rooms"]["join"][room]["unread_thread_notifications"] == {}
    await receipt(bob, room, root, body={"thread_id": "main"})
    assert counts(await bob.sync(filter=threaded), room) == (0, 0)

    # An unthreaded receipt covers every thread.
    await alice.send_message(room, "main again")
    await ok(alice, "PUT", f"/rooms/{room}/send/m.room.message/t2", {
        "msgtype": "m.text", "body": "more", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    last = await alice.send_message(room, "last")
    assert counts(await bob.sync(), room) == (3, 0)
    await receipt(bob, room, last)
    assert counts(await bob.sync(), room) == (0, 0)


async def test_invites_and_redactions(server: TestHomeServer) -> None:
    alice, bob, _carol, room = await three_in_a_room(server)
    dave = await user(server, "dave")
    other = await alice.create_room()
    await ok(alice, "POST", f"/rooms/{other}/invite", {"user_id": dave.user_id})
    # The invite notified Dave, but without a read receipt his join is where he has read up to (as in
    # Synapse): the room starts at 0, and counts what comes after.
    await ok(dave, "POST", f"/rooms/{other}/join", {})
    assert counts(await dave.sync(), other) == (0, 0)
    notified = await ok(dave, "GET", "/notifications")
    assert [n["event"]["type"] for n in notified["notifications"]] == ["m.room.member"]
    first = await alice.send_message(other, "hello there")
    assert counts(await dave.sync(), other) == (1, 0)
    # A recount (here after a redaction) keeps to the same rule.
    await alice.send_message(other, "and again")
    await ok(alice, "PUT", f"/rooms/{other}/redact/{first}/x0", {})
    assert counts(await dave.sync(), other) == (1, 0)

    mention = await alice.send_message(room, "Bobby!")
    assert counts(await bob.sync(), room) == (1, 1)
    await ok(alice, "PUT", f"/rooms/{room}/redact/{mention}/x1", {})
    assert counts(await bob.sync(), room) == (0, 0)


async def test_unread_summary_follows_messages_receipts_and_redactions(server: Any) -> None:
    """The per-room summary counts notifications as they arrive, restarts from a receipt, and drops a
    redacted event's notification."""
    alice, bob = server.client(), server.client()
    await alice.register("sum_alice")
    await bob.register("sum_bob")
    room = await alice.create_room(preset="public_chat")
    assert (await bob.request("POST", f"/join/{room}", {}))[0] == 200
    # A 3-member room: plain messages notify through .m.rule.message (not the one-to-one rule).
    carol = server.client()
    await carol.register("sum_carol")
    assert (await carol.request("POST", f"/join/{room}", {}))[0] == 200
    ids = [await alice.send_message(room, f"message {i}") for i in range(5)]

    async def counts() -> dict[str, int]:
        body = await bob.sync()
        return body["rooms"]["join"][room]["unread_notifications"]

    assert (await counts())["notification_count"] == 5
    status, _ = await bob.request("POST", f"/rooms/{room}/receipt/m.read/{ids[2]}", {})
    assert status == 200
    assert (await counts())["notification_count"] == 2
    status, _ = await alice.request("PUT", f"/rooms/{room}/redact/{ids[4]}/r1", {})
    assert status == 200
    assert (await counts())["notification_count"] == 1
    for c in (alice, bob, carol):
        await c.close()


async def test_a_room_rule_without_actions_silences_the_room(server: TestHomeServer) -> None:
    """A room rule with `actions: []` (or the legacy `["dont_notify"]`, which the spec says to read as
    empty) outranks the one-to-one and message rules: nothing counts, in a DM or a group; mentions
    (override rules) still do."""
    alice, bob, _carol, group = await three_in_a_room(server)
    dm = await alice.create_room(preset="trusted_private_chat", is_direct=True, invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{dm}", {})
    await ok(bob, "PUT", f"/pushrules/global/room/{dm}", {"actions": []})
    await ok(bob, "PUT", f"/pushrules/global/room/{group}", {"actions": ["dont_notify"]})
    for room in (dm, group):
        await alice.send_message(room, "quiet")
    res = await bob.sync()
    assert counts(res, dm) == (0, 0) and counts(res, group) == (0, 0)
    # Unmuting (the actions endpoint) counts again; muting again stops it.
    await ok(bob, "PUT", f"/pushrules/global/room/{dm}/actions", {"actions": ["notify"]})
    await alice.send_message(dm, "loud")
    assert counts(await bob.sync(), dm) == (1, 0)
    await ok(bob, "PUT", f"/pushrules/global/room/{dm}/actions", {"actions": []})
    await alice.send_message(dm, "quiet again")
    assert counts(await bob.sync(), dm) == (1, 0)
    await ok(alice, "PUT", f"/rooms/{dm}/send/m.room.message/m1",
             {"msgtype": "m.text", "body": "look", "m.mentions": {"user_ids": [bob.user_id]}})
    assert counts(await bob.sync(), dm) == (2, 1)


async def test_a_rule_written_while_the_rules_are_read_is_not_lost(server: TestHomeServer) -> None:
    """Bob's rules are read into the cache (for an event or a request) while he mutes a room: what
    that read found must not be cached over the change, or the room stays loud until his next rule
    change. The read is held here until the mute is written."""
    alice, bob, _carol, room = await three_in_a_room(server)
    store = server.hs.push_store
    real = store.get_user_rules
    gate = asyncio.Event()
    held: list[bool] = []

    async def slow_first_read(user_id: str) -> list[Json]:
        rules = await real(user_id)
        if not held:  # only the cache's read: the rule write reads too
            held.append(True)
            await gate.wait()
        return rules

    server.hs.push_rules._invalidate(None)  # nothing cached: the next use reads
    store.get_user_rules = slow_first_read  # type: ignore[method-assign]
    try:
        reading = asyncio.create_task(ok(bob, "GET", "/pushrules/"))
        while not held:
            await asyncio.sleep(0.01)
        await ok(bob, "PUT", f"/pushrules/global/room/{room}", {"actions": []})
        gate.set()
        await reading
    finally:
        store.get_user_rules = real  # type: ignore[method-assign]
    assert ids(await ok(bob, "GET", "/pushrules/global/room/")) == [room]
    await alice.send_message(room, "quiet")
    assert counts(await bob.sync(), room) == (0, 0)
