"""Erased users over federation (issue 18; the spec's `erase` of account deactivation): an erased
user's events go out redacted through /event, /backfill and /get_missing_events to a server that had
no user joined when they were sent, and whole to one that had. Driven by fake remote servers
(tests/federation/fake_remote.py) over real federation HTTP; SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.federation.client import TlsClient, unique, user
from tests.federation.conftest import MakeFedHs
from tests.federation.fake_remote import FakeRemote, q
from tests.federation.test_inbound_safety import make_fake  # noqa: F401 - fixture

Json = dict[str, Any]


async def get_event(fake: FakeRemote, destination: str, event_id: str) -> Json:
    status, body = await fake.request(destination, "GET", f"/_matrix/federation/v1/event/{q(event_id)}")
    assert status == 200, body
    return dict(body["pdus"][0])


async def deactivate_erasing(client: TlsClient) -> None:
    name = str(client.user_id)[1:].split(":")[0]
    status, body = await client.request("POST", "/account/deactivate", {
        "erase": True, "auth": {"type": "m.login.password", "user": name, "password": "password123"}})
    assert status == 200, body


async def test_erased_senders_events_go_out_redacted_to_servers_that_joined_later(
        make_fed_hs: MakeFedHs, make_fake: Any, engine: str) -> None:  # noqa: F811 - fixture
    local = await make_fed_hs(engine)
    dest = local.server_name
    alice, bob = await user(local, unique("alice")), await user(local, unique("bob"))
    room_id = await alice.create_room(preset="public_chat")  # shared history: visibility lets all see
    status, body = await bob.request("POST", f"/rooms/{room_id}/join", {})
    assert status == 200, body
    early = await bob.send_message(room_id, "before any other server")
    witness = await make_fake()
    await witness.join(dest, room_id, "mallory")
    secret = await bob.send_message(room_id, "bob's secret")
    kept = await alice.send_message(room_id, "alice's words")
    await deactivate_erasing(bob)
    latecomer = await make_fake()
    await latecomer.join(dest, room_id, "eve")

    # The server that joined after: bob's messages redacted, alice's whole.
    for event_id in (early, secret):
        pdu = await get_event(latecomer, dest, event_id)
        assert "body" not in pdu["content"] and pdu["sender"] == bob.user_id, pdu
        assert pdu["hashes"] and pdu["signatures"]
    assert (await get_event(latecomer, dest, kept))["content"]["body"] == "alice's words"
    status, body = await latecomer.request(dest, "GET", f"/_matrix/federation/v1/backfill/{q(room_id)}",
                                           query={"v": [kept], "limit": "50"})
    assert status == 200, body
    messages = [p for p in body["pdus"] if p["type"] == "m.room.message"]
    assert {p["content"].get("body") for p in messages} == {None, "alice's words"}, messages
    assert len(messages) == 3
    status, body = await latecomer.request(
        dest, "POST", f"/_matrix/federation/v1/get_missing_events/{q(room_id)}",
        {"earliest_events": [], "latest_events": [kept], "limit": 20, "min_depth": 0})
    assert status == 200, body
    missing = [p for p in body["events"] if p["type"] == "m.room.message"]
    assert missing and all("body" not in p["content"] for p in missing), missing

    # The server that had a user joined when the secret was sent still gets it whole; not the earlier one.
    assert (await get_event(witness, dest, secret))["content"]["body"] == "bob's secret"
    assert "body" not in (await get_event(witness, dest, early))["content"]
