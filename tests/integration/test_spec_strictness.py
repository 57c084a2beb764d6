"""Spec corners of the write paths, through real HTTP on both engines (issue 18): membership changes
refused before any event is built, where Synapse is more lenient than hs was (and clients rely on it),
details of the push gateway and /notifications payloads, the user directory following room changes,
unstable aliases clients still send, and room upgrade / redaction corner cases."""

from __future__ import annotations

from typing import Any

from hs.events.signing import sign_json
from tests.harness import Client, TestHomeServer, ok, user
from tests.integration.test_keys import cross_signing, device_keys, shared_room
from tests.integration.test_pushers import FakeGateway, gateway, pusher_body, quick_retries

__all__ = ["gateway", "quick_retries"]  # fixtures used here

Json = dict[str, Any]


async def err(client: Client, method: str, path: str, body: Any = None) -> tuple[int, str | None]:
    status, data = await client.request(method, path, body)
    return status, data.get("errcode") if isinstance(data, dict) else None


async def member_state(client: Client, room: str, user_id: str) -> Json:
    return await ok(client, "GET", f"/rooms/{room}/state/m.room.member/{user_id}")  # type: ignore[no-any-return]


async def event_count(server: TestHomeServer, room: str) -> int:
    rows = await server.hs.db.fetch("SELECT event_id FROM events WHERE room_id = $1", room)
    return len(rows)


# -- membership: refused above the auth rules ------------------------------------------------------------

async def test_invite_or_kick_of_a_banned_user_is_refused(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    await ok(alice, "POST", f"/rooms/{room}/ban", {"user_id": bob.user_id, "reason": "spam"})
    before = await event_count(server, room)
    assert await err(alice, "POST", f"/rooms/{room}/invite", {"user_id": bob.user_id}) == (403, "M_FORBIDDEN")
    assert await err(alice, "POST", f"/rooms/{room}/kick", {"user_id": bob.user_id}) == (403, "M_FORBIDDEN")
    # ... also when sent as a state event.
    assert await err(alice, "PUT", f"/rooms/{room}/state/m.room.member/{bob.user_id}",
                     {"membership": "invite"}) == (403, "M_FORBIDDEN")
    assert await event_count(server, room) == before
    assert (await member_state(alice, room, bob.user_id))["membership"] == "ban"
    # Banning again and unbanning still work.
    await ok(alice, "POST", f"/rooms/{room}/ban", {"user_id": bob.user_id, "reason": "still spam"})
    await ok(alice, "POST", f"/rooms/{room}/unban", {"user_id": bob.user_id})
    await ok(alice, "POST", f"/rooms/{room}/invite", {"user_id": bob.user_id})


async def test_kick_of_a_user_not_in_the_room_is_refused(server: TestHomeServer) -> None:
    alice, bob, carol = await user(server, "alice"), await user(server, "bob"), await user(server, "carol")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    await ok(bob, "POST", f"/rooms/{room}/leave")
    before = await event_count(server, room)
    for target in (bob.user_id, carol.user_id, "@nobody:test.local"):
        assert await err(alice, "POST", f"/rooms/{room}/kick", {"user_id": target}) == (403, "M_FORBIDDEN"), target
    assert await event_count(server, room) == before
    # An invited user can be kicked (the invite withdrawn), a joined one too.
    await ok(alice, "POST", f"/rooms/{room}/invite", {"user_id": carol.user_id})
    await ok(alice, "POST", f"/rooms/{room}/kick", {"user_id": carol.user_id})
    assert (await member_state(alice, room, carol.user_id))["membership"] == "leave"
    await ok(bob, "POST", f"/join/{room}")
    await ok(alice, "POST", f"/rooms/{room}/kick", {"user_id": bob.user_id, "reason": "bye"})
    assert await member_state(alice, room, bob.user_id) == {"membership": "leave", "reason": "bye"}
    # The same kick again is no no-op: he is not in the room any more.
    assert await err(alice, "POST", f"/rooms/{room}/kick", {"user_id": bob.user_id, "reason": "bye"}) == (
        403, "M_FORBIDDEN")


async def test_join_keeps_the_content_it_was_given(server: TestHomeServer) -> None:
    alice, bob, carol = await user(server, "alice"), await user(server, "bob"), await user(server, "carol")
    room = await alice.create_room(preset="public_chat", room_alias_name="corner")
    await ok(bob, "PUT", f"/profile/{bob.user_id}/displayname", {"displayname": "Bob"})
    await ok(bob, "POST", f"/join/{room}", {"foo": "bar", "reason": "hello", "membership": "leave",
                                             "nested": {"a": [1, 2]}})
    assert await member_state(alice, room, bob.user_id) == {
        "membership": "join", "foo": "bar", "reason": "hello", "nested": {"a": [1, 2]}, "displayname": "Bob"}
    await ok(carol, "POST", "/join/%23corner:test.local", {"foo": "baz"})
    assert (await member_state(alice, room, carol.user_id))["foo"] == "baz"
    status, data = await carol.request("POST", f"/join/{room}", {"reason": 5})
    assert (status, data["errcode"]) == (400, "M_BAD_JSON")


# -- upgrades and redactions -------------------------------------------------------------------------------

async def test_upgrade_of_an_unknown_room_is_not_found(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    assert await err(alice, "POST", "/rooms/!unknown:test.local/upgrade", {"new_version": "11"}) == (
        404, "M_NOT_FOUND")


async def test_upgrade_predecessor_names_the_tombstone(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    for old_version, new_version in (("10", "11"), ("1", "9")):
        old = await alice.create_room(preset="private_chat", room_version=old_version)
        new = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": new_version}))["replacement_room"]
        tombstone = await ok(alice, "GET", f"/rooms/{old}/state/m.room.tombstone")
        assert tombstone["replacement_room"] == new
        tomb_event = await ok(alice, "GET", f"/rooms/{old}/state/m.room.tombstone", format="event")
        create = await ok(alice, "GET", f"/rooms/{new}/state/m.room.create")
        assert create["predecessor"] == {"room_id": old, "event_id": tomb_event["event_id"]}
        assert create["room_version"] == new_version
    # Room version 12: the room ID is the create event's hash, so the create event cannot name the
    # tombstone (which names the room); the spec lets `event_id` be left out there, as Synapse does.
    old = await alice.create_room(preset="private_chat", room_version="11")
    new = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "12"}))["replacement_room"]
    create = await ok(alice, "GET", f"/rooms/{new}/state/m.room.create")
    assert create["predecessor"] == {"room_id": old}


async def test_redaction_of_an_event_of_another_room_is_refused(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    here, there = await alice.create_room(), await alice.create_room()
    elsewhere = await alice.send_message(there, "not in here")
    before = await event_count(server, here)
    assert await err(alice, "PUT", f"/rooms/{here}/redact/{elsewhere}/t1", {}) == (400, "M_UNKNOWN")
    assert await err(alice, "PUT", f"/rooms/{here}/send/m.room.redaction/t2", {"redacts": elsewhere}) == (
        400, "M_UNKNOWN")
    assert await event_count(server, here) == before
    message = await ok(alice, "GET", f"/rooms/{there}/event/{elsewhere}")
    assert message["content"] == {"msgtype": "m.text", "body": "not in here"}


# -- where Synapse is more lenient -------------------------------------------------------------------------

async def test_device_keys_whose_self_signature_does_not_verify_are_stored(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await shared_room(alice, bob)
    keys, _ = device_keys(alice)
    keys = {**keys, "algorithms": ["m.megolm.v1.aes-sha2"]}  # no longer what was signed
    await ok(alice, "POST", "/keys/upload", {"device_keys": keys})
    got = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    stored = got["device_keys"][alice.user_id][alice.device_id]
    assert stored["algorithms"] == ["m.megolm.v1.aes-sha2"] and stored["signatures"] == keys["signatures"]
    # Made-up keys and signatures, as some test clients send them.
    assert alice.device_id is not None
    made_up = {"user_id": alice.user_id, "device_id": alice.device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
               "keys": {f"ed25519:{alice.device_id}": "not a key"},
               "signatures": {alice.user_id: {f"ed25519:{alice.device_id}": "not a signature"}}}
    await ok(alice, "POST", "/keys/upload", {"device_keys": made_up})
    # What is not the requester's own device is still refused.
    assert await err(alice, "POST", "/keys/upload", {"device_keys": {**made_up, "user_id": bob.user_id}}) == (
        400, "M_INVALID_PARAM")


async def test_key_backup_takes_any_algorithm_and_auth_data(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    version = (await ok(alice, "POST", "/room_keys/version", {
        "algorithm": "m.megolm_backup.v1", "auth_data": "anopaquestring"}))["version"]
    info = await ok(alice, "GET", "/room_keys/version")
    assert (info["algorithm"], info["auth_data"], info["version"]) == ("m.megolm_backup.v1", "anopaquestring",
                                                                       version)
    await ok(alice, "PUT", f"/room_keys/version/{version}", {
        "algorithm": "m.megolm_backup.v1", "auth_data": ["another", 1], "version": version})
    assert (await ok(alice, "GET", f"/room_keys/version/{version}"))["auth_data"] == ["another", 1]
    session = {"first_message_index": 3, "forwarded_count": 0, "is_verified": False,
               "session_data": "anopaquestring"}
    await ok(alice, "PUT", f"/room_keys/keys/!abcd/1234?version={version}", session)
    assert await ok(alice, "GET", f"/room_keys/keys/!abcd/1234?version={version}") == session
    for body in ({"auth_data": {}}, {"algorithm": 5, "auth_data": {}}, {"algorithm": "m.megolm_backup.v1"}):
        status, code = await err(alice, "POST", "/room_keys/version", body)
        assert status == 400 and code in ("M_MISSING_PARAM", "M_BAD_JSON"), body


async def test_avatar_url_need_not_be_mxc(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    await ok(alice, "PUT", f"/profile/{alice.user_id}/avatar_url", {"avatar_url": "http://something"})
    assert await ok(alice, "GET", f"/profile/{alice.user_id}/avatar_url") == {"avatar_url": "http://something"}
    assert await err(alice, "PUT", f"/profile/{alice.user_id}/avatar_url", {"avatar_url": 5}) == (
        400, "M_INVALID_PARAM")


async def test_pusher_data_format_other_than_event_id_only(server: TestHomeServer, gateway: FakeGateway) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    body = pusher_body(gateway.url)
    body["data"] = {**body["data"], "format": "full"}
    await ok(bob, "POST", "/pushers/set", body)
    assert (await ok(bob, "GET", "/pushers"))["pushers"][0]["data"]["format"] == "full"
    # Not event_id_only: the full notification, with its `id` (the event ID) as Synapse sends it.
    event_id = await alice.send_message(room, "full format")
    notification = (await gateway.wait_for(1))[0]["notification"]
    assert notification["id"] == notification["event_id"] == event_id
    assert notification["content"]["body"] == "full format"
    assert set(notification["devices"][0]) >= {"app_id", "pushkey", "pushkey_ts", "data", "tweaks"}
    assert "unread" in notification["counts"]
    for fmt in (5, {"x": 1}):
        status, data = await bob.request("POST", "/pushers/set", {**body, "data": {"url": gateway.url,
                                                                                   "format": fmt}})
        assert status == 400, fmt


async def test_full_notification_carries_id(server: TestHomeServer, gateway: FakeGateway) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url))
    event_id = await alice.send_message(room, "hello")
    notification = (await gateway.wait_for(1))[0]["notification"]
    assert notification["id"] == notification["event_id"] == event_id
    assert set(notification) >= {"id", "room_id", "type", "sender", "content", "devices", "counts"}
    assert set(notification["devices"][0]) >= {"app_id", "pushkey", "pushkey_ts", "data", "tweaks"}
    assert "unread" in notification["counts"]


async def test_event_id_only_notification(server: TestHomeServer, gateway: FakeGateway) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    body = pusher_body(gateway.url)
    body["data"] = {**body["data"], "format": "event_id_only"}
    await ok(bob, "POST", "/pushers/set", body)
    event_id = await alice.send_message(room, "short")
    notification = (await gateway.wait_for(1))[0]["notification"]
    # The spec's minimal notification, as Synapse sends it: no content, no `id`.
    assert notification["event_id"] == event_id and notification["room_id"] == room
    assert "content" not in notification and "id" not in notification


async def test_malformed_push_rule_paths_are_bad_requests(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    base = "/_matrix/client/v3/pushrules"
    gets = ["", "/global", "/global/room", "/not_a_scope/", "/global/not_a_template/",
            "/global/override/.m.rule.master/not_an_attr", "/global/override/.m.rule.master/enabled/extra"]
    for path in gets:
        status, data = await alice.request("GET", base + path)
        assert status == 400 and data["errcode"] == "M_UNRECOGNIZED", (path, status, data)
    puts = ["/", "/not_a_scope/room/%23spam:example.com", "/global", "/global/room", "/global/room/",
            "/global/not_a_template/foo", "/global/override/.m.rule.master/not_an_attr"]
    for path in puts:
        status, data = await alice.request("PUT", base + path, {"actions": ["notify"]})
        assert status == 400 and data["errcode"] == "M_UNRECOGNIZED", (path, status, data)
    for path in ("/global/room", "/global/room/", "/"):
        status, data = await alice.request("DELETE", base + path)
        assert status == 400 and data["errcode"] == "M_UNRECOGNIZED", (path, status, data)
    # Unknown rules are still 404, and the well-formed paths still work.
    status, data = await alice.request("GET", base + "/global/override/not_a_rule_id")
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")
    assert "override" in await ok(alice, "GET", "/pushrules/global/")
    status, _ = await alice.request("GET", "/_matrix/client/v3/pushrulesx/")
    assert status == 404


# -- payload details --------------------------------------------------------------------------------------

async def test_notifications_carry_profile_tag(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    await alice.send_message(room, "hello")
    await server.hs.event_sender.flush_rests()
    items = (await ok(bob, "GET", "/notifications"))["notifications"]
    assert items and all("profile_tag" in n for n in items)
    assert set(items[0]) >= {"actions", "event", "profile_tag", "read", "room_id", "ts"}


async def test_whois_connections_carry_the_ip(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    body = await ok(alice, "GET", f"/admin/whois/{alice.user_id}")
    (connection,) = body["devices"][alice.device_id]["sessions"][0]["connections"]
    assert connection["ip"] == "127.0.0.1" and isinstance(connection["last_seen"], int)
    assert "user_agent" in connection


# -- user directory ---------------------------------------------------------------------------------------

async def search(client: Client, term: str) -> list[str]:
    body = await ok(client, "POST", "/user_directory/search", {"search_term": term})
    return [r["user_id"] for r in body["results"]]


async def test_user_directory_follows_join_rules_and_history_visibility(server: TestHomeServer) -> None:
    alice, bob, eve = await user(server, "alice"), await user(server, "bobby"), await user(server, "eve")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    assert await search(eve, "bobby") == [bob.user_id]
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.join_rules", {"join_rule": "invite"})
    assert await search(eve, "bobby") == []
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.history_visibility", {"history_visibility": "world_readable"})
    assert await search(eve, "bobby") == [bob.user_id]
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.history_visibility", {"history_visibility": "shared"})
    assert await search(eve, "bobby") == []
    # Those sharing the room still find him.
    assert await search(alice, "bobby") == [bob.user_id]


async def test_user_directory_finds_oneself_only_through_public_rooms(server: TestHomeServer) -> None:
    """A user sharing only a private room finds no one there by sharing it with themselves: they are
    found (by themselves too) once the room becomes public by join rule or history visibility."""
    alice, bob = await user(server, "alice"), await user(server, "bobby")
    await ok(bob, "PUT", f"/profile/{bob.user_id}/displayname", {"displayname": "QWERTYUIOP"})
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    assert await search(bob, "QWERTYUIOP") == []
    assert await search(alice, "QWERTYUIOP") == [bob.user_id]  # alice shares the room with him
    for etype, public, private in (("m.room.join_rules", {"join_rule": "public"}, {"join_rule": "invite"}),
                                   ("m.room.history_visibility", {"history_visibility": "world_readable"},
                                    {"history_visibility": "shared"})):
        await ok(alice, "PUT", f"/rooms/{room}/state/{etype}", public)
        assert await search(bob, "QWERTYUIOP") == [bob.user_id], etype
        await ok(alice, "PUT", f"/rooms/{room}/state/{etype}", private)
        assert await search(bob, "QWERTYUIOP") == [], etype


# -- unstable aliases -------------------------------------------------------------------------------------

async def test_unstable_cross_signing_aliases(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await shared_room(alice, bob)
    assert alice.user_id is not None
    body, keys = cross_signing(alice.user_id)
    await ok(alice, "POST", "/_matrix/client/unstable/keys/device_signing/upload", body)
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    assert q["master_keys"][alice.user_id] == body["master_key"]
    # The self-signing key signs alice's device, uploaded through the unstable signatures path.
    dev_keys, _ = device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": dev_keys})
    signed = sign_json({k: v for k, v in dev_keys.items() if k != "signatures"}, alice.user_id,
                       keys["self_signing"])
    result = await ok(alice, "POST", "/_matrix/client/unstable/keys/signatures/upload",
                      {alice.user_id: {alice.device_id: signed}})
    assert result == {"failures": {}}
    q = await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    sigs = q["device_keys"][alice.user_id][alice.device_id]["signatures"][alice.user_id]
    assert keys["self_signing"].key_id in sigs


async def test_upgrade_naming_its_tombstone_is_still_all_or_nothing(server: TestHomeServer, monkeypatch: Any) -> None:
    """The v1-v11 upgrade builds the tombstone first and creates the new room before persisting it: a
    new room that cannot be created leaves no tombstone, a tombstone refused creates no room."""
    alice, bob = await user(server, "alice"), await user(server, "bob")
    old = await alice.create_room(preset="public_chat", room_version="10")
    await ok(bob, "POST", f"/join/{old}")
    sender = server.hs.event_sender

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected: the new room cannot be created")

    monkeypatch.setattr(sender, "persist_new_room", broken)
    status, _ = await alice.request("POST", f"/rooms/{old}/upgrade", {"new_version": "11"})
    assert status == 500
    monkeypatch.undo()
    state = await ok(alice, "GET", f"/rooms/{old}/state")
    assert not any(e["type"] == "m.room.tombstone" for e in state)
    assert await server.hs.db.fetch("SELECT room_id FROM rooms WHERE predecessor_room_id = $1", old) == []
    await alice.send_message(old, "the old room goes on")
    # Bob may not send the tombstone: no room is created either.
    assert await err(bob, "POST", f"/rooms/{old}/upgrade", {"new_version": "11"}) == (403, "M_FORBIDDEN")
    assert await server.hs.db.fetch("SELECT room_id FROM rooms WHERE predecessor_room_id = $1", old) == []
    # Then the upgrade goes through, its predecessor naming the tombstone.
    new = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "11"}))["replacement_room"]
    tombstone = await ok(alice, "GET", f"/rooms/{old}/state/m.room.tombstone", format="event")
    assert tombstone["content"]["replacement_room"] == new
    create = await ok(alice, "GET", f"/rooms/{new}/state/m.room.create")
    assert create["predecessor"] == {"room_id": old, "event_id": tombstone["event_id"]}
    # ... and the old room was restricted after it.
    assert await err(bob, "PUT", f"/rooms/{old}/send/m.room.message/late", {"msgtype": "m.text", "body": "x"}) == (
        403, "M_FORBIDDEN")


async def test_tombstones_are_state_naming_another_room(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room, other = await alice.create_room(), await alice.create_room()
    assert await err(alice, "PUT", f"/rooms/{room}/send/m.room.tombstone/t1", {"replacement_room": other}) == (
        400, "M_UNKNOWN")
    assert await err(alice, "PUT", f"/rooms/{room}/state/m.room.tombstone", {"replacement_room": room}) == (
        400, "M_UNKNOWN")
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.tombstone", {"replacement_room": other, "body": "moved"})


async def test_upgrade_keeps_a_room_local_only(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    old = await alice.create_room(creation_content={"m.federate": False})
    new = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "11"}))["replacement_room"]
    assert (await ok(alice, "GET", f"/rooms/{new}/state/m.room.create"))["m.federate"] is False
    plain = await alice.create_room()
    new = (await ok(alice, "POST", f"/rooms/{plain}/upgrade", {"new_version": "11"}))["replacement_room"]
    assert "m.federate" not in await ok(alice, "GET", f"/rooms/{new}/state/m.room.create")


async def test_upgrade_carries_members_tags_direct_and_push_rules(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    old = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{old}")
    for client in (alice, bob):
        uid = client.user_id
        await ok(client, "PUT", f"/user/{uid}/rooms/{old}/tags/u.work", {"order": 0.5})
        await ok(client, "PUT", f"/user/{uid}/account_data/m.direct", {"@someone:test.local": ["!x:test.local", old]})
        await ok(client, "PUT", f"/pushrules/global/room/{old}", {"actions": ["dont_notify"]})
    await ok(bob, "PUT", "/pushrules/global/override/quiet-old", {
        "actions": [], "conditions": [{"kind": "event_match", "key": "room_id", "pattern": old}]})
    new = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "11"}))["replacement_room"]
    for client in (alice, bob):
        uid = client.user_id
        assert (await ok(client, "GET", f"/user/{uid}/rooms/{new}/tags"))["tags"] == {"u.work": {"order": 0.5}}
        direct = await ok(client, "GET", f"/user/{uid}/account_data/m.direct")
        assert direct == {"@someone:test.local": ["!x:test.local", old, new]}
        rule = await ok(client, "GET", f"/pushrules/global/room/{new}")
        assert rule["actions"] == ["dont_notify"] and rule["enabled"] is True
    rule = await ok(bob, "GET", "/pushrules/global/override/quiet-old")
    assert rule["conditions"][0]["pattern"] == old  # the old rule stays; a copy names the new room
    assert (await ok(bob, "GET", f"/pushrules/global/room/{old}"))["actions"] == ["dont_notify"]
    copied = await ok(bob, "GET", f"/pushrules/global/override/{new}")
    assert copied["conditions"] == [{"kind": "event_match", "key": "room_id", "pattern": new}]
    assert copied["actions"] == []
