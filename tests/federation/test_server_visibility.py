"""History visibility applied to other servers: what /backfill, /event and /get_missing_events give a
server is whole where the history visibility at the event lets one of its users see it, and redacted
otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.federation.client import unique, user
from tests.federation.fake_remote import FakeRemote, q
from tests.federation.tls import TestCA


async def test_events_before_a_servers_join_go_out_redacted_in_joined_rooms(
        make_fed_hs: Any, federation_ca: TestCA, tmp_path: Path) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    room_id = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}])
    secret = await alice.send_message(room_id, "before the fake server joined")
    fake = FakeRemote(federation_ca, tmp_path)
    await fake.start()
    try:
        await fake.join(local.server_name, room_id, "mallory")
        after = await alice.send_message(room_id, "after the fake server joined")
        status, body = await fake.request(local.server_name, "GET", f"/_matrix/federation/v1/event/{q(secret)}")
        assert status == 200, body
        assert "body" not in body["pdus"][0]["content"]  # redacted: the content is gone
        assert body["pdus"][0]["hashes"]  # ... but its hashes and signatures remain
        status, body = await fake.request(local.server_name, "GET", f"/_matrix/federation/v1/event/{q(after)}")
        assert status == 200 and body["pdus"][0]["content"]["body"] == "after the fake server joined"
        status, body = await fake.request(local.server_name, "GET", f"/_matrix/federation/v1/backfill/{q(room_id)}",
                                          query={"v": [after], "limit": "50"})
        assert status == 200, body
        by_body = {p["content"].get("body") for p in body["pdus"] if p["type"] == "m.room.message"}
        assert "after the fake server joined" in by_body and "before the fake server joined" not in by_body
    finally:
        await fake.stop()


async def test_shared_history_goes_out_whole(make_fed_hs: Any, federation_ca: TestCA, tmp_path: Path) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    room_id = await alice.create_room(preset="public_chat")  # history_visibility: shared
    earlier = await alice.send_message(room_id, "shared history")
    fake = FakeRemote(federation_ca, tmp_path)
    await fake.start()
    try:
        await fake.join(local.server_name, room_id, "mallory")
        status, body = await fake.request(local.server_name, "GET", f"/_matrix/federation/v1/event/{q(earlier)}")
        assert status == 200 and body["pdus"][0]["content"]["body"] == "shared history"
    finally:
        await fake.stop()


async def _typing_seen(alice: Any, room_id: str, user_id: str, since: str | None) -> tuple[bool, str]:
    body = await alice.sync(since=since, timeout=1000)
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    typing = [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == "m.typing"]
    return any(user_id in e["content"].get("user_ids", []) for e in typing), body["next_batch"]


async def test_server_acl_drops_a_denied_servers_typing(make_fed_hs: Any, federation_ca: TestCA,
                                                        tmp_path: Path) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    room_id = await alice.create_room(preset="public_chat")
    fake = FakeRemote(federation_ca, tmp_path)
    await fake.start()
    try:
        await fake.join(local.server_name, room_id, "mallory")
        mallory = fake.user_id("mallory")
        _, since = await _typing_seen(alice, room_id, mallory, None)
        edu = {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": mallory, "typing": True}}
        status, _ = await fake.send_transaction(local.server_name, [], edus=[edu])
        assert status == 200
        seen, since = await _typing_seen(alice, room_id, mallory, since)
        assert seen  # allowed before the ACL
        status, body = await alice.request("PUT", f"/rooms/{room_id}/state/m.room.server_acl",
                                           {"allow": ["*"], "deny": ["localhost"]})
        assert status == 200, body
        # Denied now: its "stopped typing" is dropped, so Mallory still shows as typing.
        edu["content"]["typing"] = False
        status, _ = await fake.send_transaction(local.server_name, [], edus=[edu])
        assert status == 200
        still, _ = await _typing_seen(alice, room_id, mallory, None)
        assert still
    finally:
        await fake.stop()
