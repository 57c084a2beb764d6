"""The spec's checks on receipt of a PDU and on inbound transactions, driven by a fake remote server
the test controls (tests/federation/fake_remote.py): it joins a public room on an hs properly, then
sends crafted PDUs, transactions and requests. What the hs must drop, reject or refuse leaves its
stored room state (read through the Client-Server API as a local user) unchanged, and its log says why.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hs.events.hashing import compute_event_id
from hs.events.signing import SigningKey, sign_event
from hs.federation.xmatrix import sign_request
from tests.federation.client import TlsClient, unique, user
from tests.federation.conftest import MakeFedHs
from tests.federation.fake_remote import FakeRemote, q
from tests.federation.hs_server import FederatingHs
from tests.federation.test_rooms import text, wait_for_event
from tests.federation.tls import TestCA

MESSAGE = "m.room.message"


@pytest.fixture
async def make_fake(federation_ca: TestCA, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[FakeRemote] = []

    async def factory() -> FakeRemote:
        fake = FakeRemote(federation_ca, tmp_path)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield factory
    finally:
        for fake in started:
            await fake.stop()


@dataclass
class Joined:
    local: FederatingHs
    alice: TlsClient  # the room's creator, on the hs
    room_id: str
    fake: FakeRemote
    mallory: str  # the fake server's joined user

    async def state_ids(self) -> set[str]:
        status, body = await self.alice.request("GET", f"/rooms/{self.room_id}/state")
        assert status == 200, body
        return {e["event_id"] for e in body}

    async def held(self, event_id: str) -> bool:
        return bool(await self.local.hs.event_store.have_events([event_id]))

    async def send(self, pdus: list[dict[str, Any]], **kwargs: Any) -> tuple[int, Any]:
        return await self.fake.send_transaction(self.local.server_name, pdus, **kwargs)

    async def visible(self, event_id: str) -> tuple[int, Any]:
        return await self.alice.request("GET", f"/rooms/{self.room_id}/event/{q(event_id)}")


@pytest.fixture
async def joined(make_fed_hs: MakeFedHs, make_fake: Any, caplog: pytest.LogCaptureFixture) -> Joined:
    caplog.set_level(logging.INFO, logger="hs")
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    room_id = await alice.create_room(preset="public_chat", name="inbound safety")
    fake = await make_fake()
    mallory = fake.user_id("mallory")
    await fake.join(local.server_name, room_id, "mallory")
    j = Joined(local, alice, room_id, fake, mallory)
    # The join is in the room for the hs's users too.
    await wait_for_event(alice, room_id, lambda e: e.get("state_key") == mallory
                         and e.get("content", {}).get("membership") == "join")
    return j


def logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(all(w in r.getMessage() for w in words) for r in caplog.records)


async def test_fake_server_joins_and_messages_flow(joined: Joined) -> None:
    """The baseline: the fake server's signed message is accepted; the hs's is sent to it."""
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "hi"})
    status, body = await joined.send([pdu])
    assert status == 200 and body == {"pdus": {eid: {}}}, body
    seen = await wait_for_event(joined.alice, joined.room_id, text("hi"))
    assert seen["event_id"] == eid
    sent = await joined.alice.send_message(joined.room_id, "to the fake")
    for _ in range(200):
        if sent in joined.fake.events:
            break
        await asyncio.sleep(0.1)
    assert sent in joined.fake.events, joined.fake.requests


async def test_forged_signature_is_dropped(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    before = await joined.state_ids()
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, "m.room.topic", {"topic": "forged"}, "",
                                 keep=False)
    # Signed by a key the server does not publish, under its published key ID.
    forger = SigningKey(joined.fake.key.version, SigningKey.generate().key)
    forged = {k: v for k, v in pdu.items() if k != "signatures"}
    sign_event(forged, joined.fake.server_name, forger, joined.fake.rooms[joined.room_id].rv)
    assert forged["signatures"] != pdu["signatures"]
    status, body = await joined.send([forged])
    assert status == 200, body
    assert "signature" in body["pdus"][eid]["error"], body
    assert not await joined.held(eid)
    assert await joined.state_ids() == before
    assert logged(caplog, eid, "signature")


async def test_bad_content_hash_keeps_the_redacted_form(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE,
                                 {"msgtype": "m.text", "body": "original"}, keep=False)
    tampered = copy.deepcopy(pdu)
    tampered["content"]["body"] = "tampered on the way"  # the signature covers the redacted form only
    status, body = await joined.send([tampered])
    assert status == 200 and body["pdus"] == {eid: {}}, body
    status, ev = await joined.visible(eid)
    assert status == 200, ev
    assert ev["content"] == {}, ev
    assert logged(caplog, eid, "content hash")


async def test_event_failing_auth_is_rejected(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    """A public_chat room: state events need power 50, mallory has 0."""
    before = await joined.state_ids()
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, "m.room.name", {"name": "taken over"}, "",
                                 keep=False)
    status, body = await joined.send([pdu])
    assert status == 200, body
    assert "rejected" in body["pdus"][eid]["error"], body
    assert await joined.state_ids() == before
    status, name = await joined.alice.request("GET", f"/rooms/{joined.room_id}/state/m.room.name")
    assert status == 200 and name == {"name": "inbound safety"}
    status, ev = await joined.visible(eid)
    assert status == 404, ev
    status, msgs = await joined.alice.request("GET", f"/rooms/{joined.room_id}/messages",
                                              params={"dir": "b", "limit": "50"})
    assert status == 200 and eid not in {e["event_id"] for e in msgs["chunk"]}
    assert logged(caplog, "rejected", eid)
    # The rejected event is remembered as such (not fetched nor served again).
    stored = await joined.local.hs.event_store.get_event(eid)
    assert stored is not None and stored.internal.rejected


async def test_pdu_of_another_servers_sender_is_refused(joined: Joined, make_fake: Any,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A second fake server's user sends a properly signed message; the first relays it: refused."""
    other = await make_fake()
    await other.join(joined.local.server_name, joined.room_id, "eve")
    eid, pdu = other.build(joined.room_id, other.user_id("eve"), MESSAGE, {"msgtype": "m.text", "body": "relayed"},
                           keep=False)
    status, body = await joined.send([pdu])
    assert status == 200, body
    assert "origin" in body["pdus"][eid]["error"], body
    assert not await joined.held(eid)
    assert logged(caplog, eid, joined.fake.server_name, "dropped")
    # The same event from its own server is fine.
    status, body = await other.send_transaction(joined.local.server_name, [pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, body


async def test_replayed_transaction_is_answered_again_not_processed(joined: Joined) -> None:
    calls: list[dict[str, Any]] = []

    async def count(origin: str, content: dict[str, Any]) -> None:
        calls.append(content)

    joined.local.hs.federation_transactions.edu_handlers["org.example.count"] = count
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "once"})
    edu = {"edu_type": "org.example.count", "content": {"n": 1}}
    first = await joined.send([pdu], edus=[edu], txn_id="txn-replayed")
    assert first == (200, {"pdus": {eid: {}}})
    # The same transaction ID again, even with other contents: the first answer, nothing processed.
    eid2, pdu2 = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "twice"},
                                   keep=False)
    again = await joined.send([pdu2], edus=[edu], txn_id="txn-replayed")
    assert again == first
    assert calls == [{"n": 1}]
    assert not await joined.held(eid2)
    # Another transaction ID is processed.
    assert await joined.send([], edus=[edu], txn_id="txn-other") == (200, {"pdus": {}})
    assert len(calls) == 2


async def test_replayed_transaction_after_a_restart_is_not_processed_again(joined: Joined) -> None:
    """The answer is stored: after the hs restarts (memory lost), a retry still gets it, unprocessed."""
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "once"})
    first = await joined.send([pdu], txn_id="txn-across-restart")
    assert first == (200, {"pdus": {eid: {}}})
    await joined.local.restart()
    calls: list[dict[str, Any]] = []

    async def count(origin: str, content: dict[str, Any]) -> None:
        calls.append(content)

    joined.local.hs.federation_transactions.edu_handlers["org.example.count"] = count
    eid2, pdu2 = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "twice"},
                                   keep=False)
    again = await joined.send([pdu2], edus=[{"edu_type": "org.example.count", "content": {}}],
                              txn_id="txn-across-restart")
    assert again == first
    assert calls == [] and not await joined.held(eid2)


async def test_a_redaction_received_before_its_target_applies_when_the_target_arrives(joined: Joined) -> None:
    rv = joined.fake.rooms[joined.room_id].rv
    heads = list(joined.fake.rooms[joined.room_id].heads)
    target, target_pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE,
                                           {"msgtype": "m.text", "body": "regretted"}, prev_events=heads, keep=False)
    content: dict[str, Any] = {"redacts": target} if rv.updated_redaction_rules else {}
    extra = None if rv.updated_redaction_rules else {"redacts": target}
    redaction, redaction_pdu = joined.fake.build(joined.room_id, joined.mallory, "m.room.redaction", content,
                                                 prev_events=heads, extra=extra, keep=False)
    status, body = await joined.send([redaction_pdu])
    assert status == 200 and body["pdus"] == {redaction: {}}, body
    status, body = await joined.send([target_pdu])
    assert status == 200 and body["pdus"] == {target: {}}, body
    status, event = await joined.visible(target)
    assert status == 200, event
    assert "body" not in event["content"], event  # redacted on arrival
    assert event["unsigned"]["redacted_because"]["event_id"] == redaction


@pytest.mark.parametrize(("pdus", "edus"), [(51, 0), (0, 101)])
async def test_oversized_transaction_is_refused(joined: Joined, pdus: int, edus: int) -> None:
    before = await joined.state_ids()
    built = [joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": str(i)},
                               keep=False)[1] for i in range(pdus)]
    status, body = await joined.send(built, edus=[{"edu_type": "m.typing", "content": {}}] * edus)
    assert status == 400, body
    assert body["errcode"] == "M_BAD_JSON"
    assert await joined.state_ids() == before
    rv = joined.fake.rooms[joined.room_id].rv
    assert not await joined.local.hs.event_store.have_events([compute_event_id(p, rv) for p in built])


async def test_transaction_at_the_limits_is_taken(joined: Joined) -> None:
    """50 PDUs (a chain) and 100 EDUs: the most one transaction may hold, all processed."""
    built = [joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": f"n{i}"})
             for i in range(50)]
    status, body = await joined.send([p for _, p in built], edus=[{"edu_type": "m.typing", "content": {}}] * 100)
    assert status == 200 and body["pdus"] == {e: {} for e, _ in built}, body
    assert await joined.local.hs.event_store.get_forward_extremities(joined.room_id) == [built[-1][0]]


async def test_unsigned_request_is_refused(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    status, body = await joined.send([], authorization=False)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
    assert logged(caplog, "refused PUT /_matrix/federation/v1/send/", "Missing X-Matrix")


async def test_tampered_request_is_refused(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "x"},
                                 keep=False)
    # Signed for an empty transaction, sent with a PDU in it.
    status, body = await joined.send([pdu], signed_body={"origin": joined.fake.server_name, "pdus": [], "edus": []})
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
    assert not await joined.held(eid)
    assert logged(caplog, "refused", joined.fake.server_name)
    # A header signed by another key under the server's key ID.
    forger = SigningKey(joined.fake.key.version, SigningKey.generate().key)
    path = "/_matrix/federation/v1/send/t-forged"
    txn = {"origin": joined.fake.server_name, "pdus": [pdu], "edus": []}
    header = sign_request(joined.fake.server_name, joined.local.server_name, forger, "PUT", path, txn)
    status, body = await joined.fake.request(joined.local.server_name, "PUT", path, txn, authorization=header)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
    # Addressed to another server.
    header = sign_request(joined.fake.server_name, "elsewhere.example", joined.fake.key, "PUT", path, txn)
    status, body = await joined.fake.request(joined.local.server_name, "PUT", path, txn, authorization=header)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
    assert logged(caplog, "refused", "elsewhere.example")
    assert not await joined.held(eid)


async def test_server_outside_the_domain_whitelist_is_forbidden(make_fed_hs: MakeFedHs, make_fake: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hs")
    local = await make_fed_hs(federation_domain_whitelist=["friend.example"])
    fake = await make_fake()
    status, body = await fake.send_transaction(local.server_name, [])
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert logged(caplog, "refused", fake.server_name, "federation_domain_whitelist")
    # Refused before its keys were fetched.
    assert not any(r.startswith("GET /_matrix/key/") for r in fake.requests)


async def test_unknown_prev_events_that_cannot_be_filled(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    before = await joined.state_ids()
    unknown = "$" + "A" * 43
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "orphan"},
                                 prev_events=[unknown], keep=False)
    status, body = await joined.send([pdu])
    assert status == 200, body
    assert unknown in body["pdus"][eid]["error"], body
    assert any(r.startswith("POST /_matrix/federation/v1/get_missing_events/") for r in joined.fake.requests)
    assert not await joined.held(eid) or (await joined.visible(eid))[0] == 404
    assert await joined.state_ids() == before
    assert logged(caplog, eid, "get_missing_events")
    assert logged(caplog, unknown, "could not be had")
    # The room still works both ways.
    eid2, pdu2 = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "after"})
    status, body = await joined.send([pdu2])
    assert status == 200 and body["pdus"] == {eid2: {}}, body
    await wait_for_event(joined.alice, joined.room_id, text("after"))


async def test_event_allowed_before_a_ban_but_not_now_is_soft_failed(joined: Joined,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Mallory is banned; the fake server then sends a message built on the state before the ban. It
    passes the auth rules against its prev events' state, not against the current state: soft-failed,
    not shown, not built upon."""
    room = joined.fake.rooms[joined.room_id]
    old_state, old_heads = dict(room.state), list(room.heads)
    status, body = await joined.alice.request("POST", f"/rooms/{joined.room_id}/ban",
                                              {"user_id": joined.mallory, "reason": "test"})
    assert status == 200, body
    before = await joined.state_ids()
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "late"},
                                 prev_events=old_heads, state=old_state, keep=False)
    status, body = await joined.send([pdu])
    assert status == 200, body
    assert logged(caplog, "soft-failing", eid)
    assert await joined.state_ids() == before
    status, msgs = await joined.alice.request("GET", f"/rooms/{joined.room_id}/messages",
                                              params={"dir": "b", "limit": "50"})
    assert status == 200 and eid not in {e["event_id"] for e in msgs["chunk"]}
    assert eid not in await joined.local.hs.event_store.get_forward_extremities(joined.room_id)
    # The next local event is not built on it.
    await joined.alice.send_message(joined.room_id, "after the ban")
    [head] = await joined.local.hs.event_store.get_forward_extremities(joined.room_id)
    latest = await joined.local.hs.event_store.get_event(head)
    assert latest is not None and eid not in latest.prev_event_ids


async def test_redaction_of_another_servers_event_without_power_is_not_applied(
        joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    """Room v3+: a redaction passes the auth rules whoever sends it; the receiving server applies it
    only when its sender is of the target's server or has the power to redact. Mallory (power 0, of
    the fake server) redacts alice's message: stored, not applied. His own message: applied."""
    rv = joined.fake.rooms[joined.room_id].rv
    target = await joined.alice.send_message(joined.room_id, "alice's words")
    own, own_pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "mine"})
    assert await joined.send([own_pdu]) == (200, {"pdus": {own: {}}})
    redactions = []
    for redacts in (target, own):
        content: dict[str, Any] = {"redacts": redacts} if rv.updated_redaction_rules else {}
        extra = None if rv.updated_redaction_rules else {"redacts": redacts}
        redactions.append(joined.fake.build(joined.room_id, joined.mallory, "m.room.redaction", content, extra=extra))
    status, body = await joined.send([p for _, p in redactions])
    assert status == 200 and body["pdus"] == {e: {} for e, _ in redactions}, body
    status, ev = await joined.visible(target)
    assert status == 200 and ev["content"].get("body") == "alice's words", ev
    status, ev = await joined.visible(own)
    assert status == 200 and ev["content"] == {}, ev
    assert logged(caplog, redactions[0][0], target, "not applied")
    # With the power to redact, mallory's redaction of alice's message applies.
    status, pl = await joined.alice.request("GET", f"/rooms/{joined.room_id}/state/m.room.power_levels")
    pl["users"] = {**pl.get("users", {}), joined.mallory: 50}
    status, body = await joined.alice.request("PUT", f"/rooms/{joined.room_id}/state/m.room.power_levels", pl)
    assert status == 200, body
    for _ in range(200):  # the fake server learns of it (its next event cites it)
        if body["event_id"] in joined.fake.events:
            break
        await asyncio.sleep(0.05)
    target2 = await joined.alice.send_message(joined.room_id, "alice's other words")
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, "m.room.redaction",
                                 {"redacts": target2} if rv.updated_redaction_rules else {},
                                 extra=None if rv.updated_redaction_rules else {"redacts": target2})
    assert await joined.send([pdu]) == (200, {"pdus": {eid: {}}})
    status, ev = await joined.visible(target2)
    assert status == 200 and ev["content"] == {}, ev


async def test_gap_is_filled_with_get_missing_events(joined: Joined) -> None:
    """Three events of the fake server's, only the last one sent: the hs fetches the two before it."""
    joined.fake.serve_missing = True
    ids = []
    for i in range(3):
        eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": f"gap {i}"})
        ids.append(eid)
    status, body = await joined.send([pdu])
    assert status == 200 and body["pdus"] == {ids[2]: {}}, body
    for eid in ids:
        status, ev = await joined.visible(eid)
        assert status == 200, ev
    status, msgs = await joined.alice.request("GET", f"/rooms/{joined.room_id}/messages",
                                              params={"dir": "b", "limit": "10"})
    assert [e["event_id"] for e in msgs["chunk"][:3]] == ids[::-1]
    assert await joined.local.hs.event_store.get_forward_extremities(joined.room_id) == [ids[2]]


async def test_gap_is_bridged_with_the_state_at_the_unknown_prev_event(joined: Joined) -> None:
    """get_missing_events refused, state_ids answered: the event goes in with the state at its prev
    event as the fake server gives it (mallory's new display name, an event the hs only holds as an
    outlier), and the room's current state takes it."""
    joined.fake.serve_state = True
    rename, _ = joined.fake.build(joined.room_id, joined.mallory, "m.room.member",
                                  {"membership": "join", "displayname": "Mallory Renamed"}, joined.mallory)
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "renamed"})
    status, body = await joined.send([pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, body
    await wait_for_event(joined.alice, joined.room_id, text("renamed"))
    status, member = await joined.alice.request("GET",
                                                f"/rooms/{joined.room_id}/state/m.room.member/{joined.mallory}")
    assert status == 200 and member.get("displayname") == "Mallory Renamed", member
    assert rename in await joined.state_ids()
    # The room goes on from there: the hs's next event is built on the fake server's (and on the hs's
    # own head before it, which the bridged event does not cite: two forward extremities merge).
    heads = set(await joined.local.hs.event_store.get_forward_extremities(joined.room_id))
    assert eid in heads and rename not in heads
    sent = await joined.alice.send_message(joined.room_id, "after the bridge")
    latest = await joined.local.hs.event_store.get_event(sent)
    assert latest is not None and set(latest.prev_event_ids) == heads
    assert await joined.local.hs.event_store.get_forward_extremities(joined.room_id) == [sent]


async def test_a_bridged_outlier_sent_later_takes_its_place_in_the_timeline(joined: Joined) -> None:
    """An event first held as an outlier (the state at a gap, from state_ids) and then sent as a PDU
    goes into the timeline (readable in /messages), without becoming a forward extremity: its child
    already extends it."""
    joined.fake.serve_state = True
    rename_id, rename = joined.fake.build(joined.room_id, joined.mallory, "m.room.member",
                                          {"membership": "join", "displayname": "Mallory Later"}, joined.mallory)
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "child"})
    status, body = await joined.send([pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, body
    held = await joined.local.hs.event_store.get_event(rename_id)
    assert held is not None and held.internal.outlier
    status, body = await joined.send([rename])
    assert status == 200 and body["pdus"] == {rename_id: {}}, body
    held = await joined.local.hs.event_store.get_event(rename_id)
    assert held is not None and not held.internal.outlier and held.internal.stream_ordering is not None
    await wait_for_event(joined.alice, joined.room_id, lambda e: e.get("event_id") == rename_id)
    heads = set(await joined.local.hs.event_store.get_forward_extremities(joined.room_id))
    assert rename_id not in heads and eid in heads, heads


async def test_event_after_a_rejected_event_is_accepted(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    """The spec's Rejection: a later event citing a rejected one as prev event is allowed if it passes
    the auth rules, against the state before the rejected event. The fake server fills no gaps and
    serves no state: the hs works it out from what it holds."""
    before = await joined.state_ids()
    rejected, r_pdu = joined.fake.build(joined.room_id, joined.mallory, "m.room.name", {"name": "nope"}, "")
    status, body = await joined.send([r_pdu])
    assert "rejected" in body["pdus"][rejected]["error"], body
    # Our view moves on as if the name stood: its auth events would cite it for nothing (not a
    # message's auth event), its prev events cite it.
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "after"})
    assert pdu["prev_events"] == [rejected]
    status, body = await joined.send([pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, (body, joined.fake.requests)
    await wait_for_event(joined.alice, joined.room_id, text("after"))
    assert await joined.state_ids() == before
    status, name = await joined.alice.request("GET", f"/rooms/{joined.room_id}/state/m.room.name")
    assert name == {"name": "inbound safety"}
    assert not any("state_ids" in r for r in joined.fake.requests), joined.fake.requests
    # The hs's next event is not built on the rejected one.
    sent = await joined.alice.send_message(joined.room_id, "next")
    latest = await joined.local.hs.event_store.get_event(sent)
    assert latest is not None and rejected not in latest.prev_event_ids


async def test_event_after_a_soft_failed_event_is_accepted(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    """Alice raises the level for messages above mallory's; the fake server, not having seen it, sends
    a message (soft-failed here). Alice lowers it again, and the fake server's next message, built on
    the soft-failed one, is accepted: the state after a soft-failed event is worked out here (the state
    before it), not asked of the fake server, which serves none."""
    room = joined.fake.rooms[joined.room_id]
    old_state, old_heads = dict(room.state), list(room.heads)
    path = f"/rooms/{joined.room_id}/state/m.room.power_levels"
    status, pl = await joined.alice.request("GET", path)
    assert (await joined.alice.request("PUT", path, {**pl, "events_default": 50}))[0] == 200
    soft, soft_pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "soft"},
                                       prev_events=old_heads, state=old_state, keep=False)
    status, body = await joined.send([soft_pdu])
    assert status == 200 and body["pdus"] == {soft: {}}, body
    assert logged(caplog, "soft-failing", soft)
    assert (await joined.alice.request("PUT", path, {**pl, "events_default": 0}))[0] == 200
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "later"},
                                 prev_events=[soft], state=old_state, keep=False)
    status, body = await joined.send([pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, (body, joined.fake.requests)
    await wait_for_event(joined.alice, joined.room_id, text("later"))
    assert not any("state_ids" in r for r in joined.fake.requests), joined.fake.requests
    status, now = await joined.alice.request("GET", path)
    assert now.get("events_default", 0) == 0
    status, msgs = await joined.alice.request("GET", f"/rooms/{joined.room_id}/messages",
                                              params={"dir": "b", "limit": "50"})
    assert soft not in {e["event_id"] for e in msgs["chunk"]}


async def test_soft_failure_sees_local_events_not_yet_committed(joined: Joined) -> None:
    """Alice's ban is built (the room's head) but its commit is held back; the fake server's message,
    built before the ban, arrives meanwhile: it is checked against the room's current state as this
    server knows it, ban included, so it is soft-failed (the database's current state lags behind
    the queue of events being persisted)."""
    sender = joined.local.hs.event_sender
    release = asyncio.Event()
    persist = sender._persist_batch

    async def held(room_id: str, batch: Any) -> None:
        if any(p.event.membership == "ban" for p in batch):
            await release.wait()
        await persist(room_id, batch)

    sender._persist_batch = held  # type: ignore[method-assign]
    room = joined.fake.rooms[joined.room_id]
    old_state, old_heads = dict(room.state), list(room.heads)
    ban = asyncio.ensure_future(joined.alice.request("POST", f"/rooms/{joined.room_id}/ban",
                                                     {"user_id": joined.mallory}))
    try:
        for _ in range(200):
            heads = sender._heads.get(joined.room_id, [])
            if any(h.membership == "ban" for h in heads):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the ban was not built")
        eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "racing"},
                                     prev_events=old_heads, state=old_state, keep=False)
        # (Were it accepted, it would queue behind the held ban: the guard turns that into a failure.)
        status, body = await asyncio.wait_for(joined.send([pdu]), 30)
        assert status == 200 and body["pdus"] == {eid: {}}, body
    finally:
        release.set()
        status, _ = await ban
    assert status == 200
    status, msgs = await joined.alice.request("GET", f"/rooms/{joined.room_id}/messages",
                                              params={"dir": "b", "limit": "50"})
    assert eid not in {e["event_id"] for e in msgs["chunk"]}
    stored = await joined.local.hs.event_store.get_event(eid)
    assert stored is not None and stored.internal.soft_failed


async def test_event_citing_stale_auth_events_is_rejected(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    """Alice gives mallory power and takes it back; the fake server then sends a name change built on
    the room's latest events but citing the old power levels as its auth event: it passes against its
    auth events, not against the state before it (its prev events'): rejected, state unchanged."""
    path = f"/rooms/{joined.room_id}/state/m.room.power_levels"
    status, pl = await joined.alice.request("GET", path)
    status, up = await joined.alice.request("PUT", path, {**pl, "users": {**pl.get("users", {}), joined.mallory: 50}})
    assert status == 200
    room = joined.fake.rooms[joined.room_id]
    for _ in range(200):
        if room.state.get(("m.room.power_levels", "")) == up["event_id"]:
            break
        await asyncio.sleep(0.05)
    powerful = dict(room.state)
    status, down = await joined.alice.request("PUT", path, pl)
    assert status == 200
    for _ in range(200):
        if down["event_id"] in room.heads:
            break
        await asyncio.sleep(0.05)
    before = await joined.state_ids()
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, "m.room.name", {"name": "stale power"}, "",
                                 state=powerful, keep=False)
    assert down["event_id"] in pdu["prev_events"] and up["event_id"] in pdu["auth_events"]
    status, body = await joined.send([pdu])
    assert "rejected against the state before it" in body["pdus"][eid]["error"], body
    assert await joined.state_ids() == before
    assert logged(caplog, "rejected", eid, "state before")


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
async def test_more_forward_extremities_than_one_event_cites_are_all_merged(joined: Joined, restart: bool) -> None:
    """The fake server forks the room twelve ways (twelve messages on the same prev event); a local
    event cites at most ten prev events, and the two heads it leaves out stay heads (in memory and
    in the database: a restart in between changes nothing): the next local event cites them, and
    the room ends with one forward extremity."""
    base = list(joined.fake.rooms[joined.room_id].heads)
    forks = [joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": f"fork {i}"},
                               prev_events=base, keep=False) for i in range(12)]
    status, body = await joined.send([p for _, p in forks])
    assert status == 200 and body["pdus"] == {e: {} for e, _ in forks}, body
    store = joined.local.hs.event_store
    fork_ids = {e for e, _ in forks}
    assert fork_ids <= set(await store.get_forward_extremities(joined.room_id))
    first = await store.get_event(await joined.alice.send_message(joined.room_id, "merge 1"))
    assert first is not None and len(first.prev_event_ids) == 10
    left = fork_ids - set(first.prev_event_ids)
    assert set(await store.get_forward_extremities(joined.room_id)) == left | {first.event_id}
    if restart:
        await joined.local.restart()
        store = joined.local.hs.event_store
    second = await store.get_event(await joined.alice.send_message(joined.room_id, "merge 2"))
    assert second is not None and set(second.prev_event_ids) >= left | {first.event_id}
    assert await store.get_forward_extremities(joined.room_id) == [second.event_id]


async def test_malformed_pdus_get_their_own_errors(joined: Joined, caplog: pytest.LogCaptureFixture) -> None:
    """Broken PDUs beside a good one: each broken one is dropped with its reason, the good one goes in,
    and the transaction as a whole succeeds."""
    good, good_pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "ok"})
    _, built = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"body": "x"}, keep=False)
    no_depth = {k: v for k, v in built.items() if k != "depth"}
    no_depth_id = compute_event_id(no_depth, joined.fake.rooms[joined.room_id].rv)
    huge_id, huge = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"body": "x" * 70_000}, keep=False)
    other_room = {**good_pdu, "room_id": "!elsewhere:" + joined.fake.server_name}
    status, body = await joined.send([no_depth, huge, other_room, "not an object", good_pdu])
    assert status == 200, body
    assert body["pdus"][good] == {}
    assert "65536" in body["pdus"][huge_id]["error"], body
    assert "depth" in body["pdus"][no_depth_id]["error"], body
    assert logged(caplog, no_depth_id, "dropped", "depth")
    assert logged(caplog, "!elsewhere", "not in room")
    await wait_for_event(joined.alice, joined.room_id, text("ok"))
    assert not await joined.held(huge_id)


async def test_state_from_the_sender_cannot_bring_another_rooms_events(joined: Joined,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Bridging a gap, the fake server's state_ids lists an event of another room the hs holds (alice's
    private room's name, after the room's own): it does not enter the state before the event."""
    secret = await joined.alice.create_room(preset="private_chat", name="secret")
    status, events = await joined.alice.request("GET", f"/rooms/{secret}/state")
    foreign = next(e["event_id"] for e in events if e["type"] == "m.room.name")
    joined.fake.serve_state = True
    joined.fake.extra_state_ids = [foreign]
    joined.fake.build(joined.room_id, joined.mallory, "m.room.member",
                      {"membership": "join", "displayname": "M2"}, joined.mallory)
    eid, pdu = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "bridged"})
    status, body = await joined.send([pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, body
    event = await joined.local.hs.event_store.get_event(eid)
    assert event is not None
    before = await joined.local.hs.event_store.get_state_group(event.internal.state_group_before)
    assert foreign not in before.values(), before
    assert before[("m.room.name", "")] != foreign
    assert logged(caplog, "other rooms", foreign)
    status, current = await joined.alice.request("GET", f"/rooms/{joined.room_id}/state/m.room.name")
    assert current == {"name": "inbound safety"}


async def test_pdus_of_a_transaction_are_taken_parents_first(joined: Joined) -> None:
    """A transaction lists a child before its parent: both go in (the hs takes a room's PDUs in
    causal order), with no gap filling asked of the fake server, which does none."""
    e1, p1 = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "parent"})
    e2, p2 = joined.fake.build(joined.room_id, joined.mallory, MESSAGE, {"msgtype": "m.text", "body": "child"})
    status, body = await joined.send([p2, p1])
    assert status == 200 and body["pdus"] == {e1: {}, e2: {}}, body
    assert not any("get_missing_events" in r or "state_ids" in r for r in joined.fake.requests)
    assert await joined.local.hs.event_store.get_forward_extremities(joined.room_id) == [e2]
