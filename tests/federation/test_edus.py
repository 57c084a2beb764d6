"""Typing, read receipts and presence across servers (m.typing, m.receipt, m.presence EDUs), each
against a real Synapse and against a second hs: what one side's user does shows in the other side's
/sync. Plus the inbound checks, driven through hs's transaction handler: an EDU about a user of another
server than the origin, or about a room the user is not joined to, changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from hs.services.typing import REMOTE_TIMEOUT_MS
from tests.federation.client import MatrixServer, TlsClient, unique, user
from tests.federation.test_rooms import text, wait_for_event, wait_joined

Json = dict[str, Any]
WAIT_S = 20.0


class SyncWatcher:
    """A client's /sync position: `wait` long-polls on from it, so a change made after the watcher
    was started (or after the last `wait`) is seen even if it was quickly undone."""

    def __init__(self, client: TlsClient, *servers: MatrixServer) -> None:
        self.client = client
        self.servers = servers
        self.since: str | None = None

    async def start(self) -> SyncWatcher:
        self.since = (await self.client.sync())["next_batch"]
        return self

    async def wait(self, found: Callable[[Json], Any], what: str, timeout: float = WAIT_S) -> Any:
        """Incremental /syncs until `found(response)` is truthy; return that. On timeout fail naming
        `what`, with the last responses' relevant parts and the servers' log tails."""
        deadline = time.monotonic() + timeout
        seen: list[Any] = []
        while time.monotonic() < deadline:
            body = await self.client.sync(self.since, timeout=1000)
            self.since = body["next_batch"]
            result = found(body)
            if result:
                return result
            seen = (seen + [{"presence": body.get("presence"), "ephemeral": {
                r: e.get("ephemeral") for r, e in body.get("rooms", {}).get("join", {}).items()}}])[-3:]
        logs = "\n".join(f"--- {s.server_name} ---\n{s.log_tail(40)}" for s in self.servers)
        raise AssertionError(f"{self.client.user_id} did not see {what} within {timeout}s; last syncs: {seen}\n{logs}")


def ephemeral(body: Json, room_id: str, event_type: str) -> list[Json]:
    entry = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e["content"] for e in entry.get("ephemeral", {}).get("events", []) if e.get("type") == event_type]


def typing_users(body: Json, room_id: str) -> list[str] | None:
    """The room's typing users in this sync response, None if it says nothing about them."""
    contents = ephemeral(body, room_id, "m.typing")
    return list(contents[-1]["user_ids"]) if contents else None


def read_by(body: Json, room_id: str, event_id: str, user_id: str | None) -> Json | None:
    """The m.read receipt data of `user_id` for the event in this sync response, if any."""
    for content in ephemeral(body, room_id, "m.receipt"):
        data = content.get(event_id, {}).get("m.read", {}).get(user_id)
        if data is not None:
            return dict(data)
    return None


def presence_of(body: Json, user_id: str | None) -> Json | None:
    for ev in body.get("presence", {}).get("events", []):
        if ev.get("type") == "m.presence" and ev.get("sender") == user_id:
            return dict(ev["content"])
    return None


async def shared_room(local: MatrixServer, remote: MatrixServer) -> tuple[TlsClient, TlsClient, str]:
    """alice on `local` creates a public room, bob on `remote` joins it over federation."""
    alice = await user(local, unique("alice"))
    bob = await user(remote, unique("bob"))
    room_id = await alice.create_room(preset="public_chat", name="edu test")
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, (body, remote.log_tail(40))
    await wait_joined(alice, room_id, str(bob.user_id))
    return alice, bob, room_id


async def put_typing(client: TlsClient, room_id: str, typing: bool) -> None:
    body: Json = {"typing": typing, "timeout": 30_000} if typing else {"typing": False}
    status, data = await client.request("PUT", f"/rooms/{room_id}/typing/{quote(str(client.user_id))}", body)
    assert status == 200, data


async def test_typing_both_ways(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice, bob, room_id = await shared_room(local, remote_server)
    alice_sync = await SyncWatcher(alice, local, remote_server).start()
    bob_sync = await SyncWatcher(bob, local, remote_server).start()

    await put_typing(alice, room_id, True)
    await bob_sync.wait(lambda b: alice.user_id in (typing_users(b, room_id) or ()), f"{alice.user_id} typing")
    await put_typing(alice, room_id, False)
    await bob_sync.wait(lambda b: typing_users(b, room_id) == [], f"{alice.user_id} stop typing")

    await put_typing(bob, room_id, True)
    await alice_sync.wait(lambda b: bob.user_id in (typing_users(b, room_id) or ()), f"{bob.user_id} typing")
    await put_typing(bob, room_id, False)
    await alice_sync.wait(lambda b: typing_users(b, room_id) == [], f"{bob.user_id} stop typing")


async def test_read_receipts_both_ways(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice, bob, room_id = await shared_room(local, remote_server)
    alice_sync = await SyncWatcher(alice, local, remote_server).start()
    bob_sync = await SyncWatcher(bob, local, remote_server).start()

    from_alice = await alice.send_message(room_id, "read me, bob")
    await wait_for_event(bob, room_id, text("read me, bob"))
    status, body = await bob.request("POST", f"/rooms/{room_id}/receipt/m.read/{quote(from_alice)}", {})
    assert status == 200, body
    data = await alice_sync.wait(lambda b: read_by(b, room_id, from_alice, bob.user_id),
                                 f"{bob.user_id}'s receipt for {from_alice}")
    assert isinstance(data.get("ts"), int)

    status, sent = await bob.request("PUT", f"/rooms/{room_id}/send/m.room.message/r1",
                                     {"msgtype": "m.text", "body": "read me, alice"})
    assert status == 200, sent
    from_bob = sent["event_id"]
    await wait_for_event(alice, room_id, text("read me, alice"))
    status, body = await alice.request("POST", f"/rooms/{room_id}/receipt/m.read/{quote(from_bob)}", {})
    assert status == 200, body
    await bob_sync.wait(lambda b: read_by(b, room_id, from_bob, alice.user_id),
                        f"{alice.user_id}'s receipt for {from_bob}")


async def test_presence_both_ways(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice, bob, room_id = await shared_room(local, remote_server)
    alice_sync = await SyncWatcher(alice, local, remote_server).start()
    bob_sync = await SyncWatcher(bob, local, remote_server).start()

    bob_status = unique("bob is baking")
    status, body = await bob.request("PUT", f"/presence/{quote(str(bob.user_id))}/status",
                                     {"presence": "online", "status_msg": bob_status})
    assert status == 200, body
    seen = await alice_sync.wait(lambda b: (p := presence_of(b, bob.user_id)) and p.get("status_msg") == bob_status
                                 and p, f"{bob.user_id}'s presence")
    assert seen["presence"] == "online"
    # GET of a remote room-mate's status answers from what their server sent.
    status, got = await alice.request("GET", f"/presence/{quote(str(bob.user_id))}/status")
    assert status == 200 and got["presence"] == "online" and got["status_msg"] == bob_status, got

    alice_status = unique("alice is reading")
    status, body = await alice.request("PUT", f"/presence/{quote(str(alice.user_id))}/status",
                                       {"presence": "unavailable", "status_msg": alice_status})
    assert status == 200, body
    seen = await bob_sync.wait(lambda b: (p := presence_of(b, alice.user_id)) and p.get("status_msg") == alice_status
                               and p, f"{alice.user_id}'s presence")
    assert seen["presence"] == "unavailable"


async def test_inbound_edus_about_others_are_dropped(make_fed_hs: Any) -> None:
    """An EDU counts only from the user's own server and for a room the user is joined to here."""
    local = await make_fed_hs()
    remote = await make_fed_hs()
    alice, bob, room_id = await shared_room(local, remote)
    other_room = await alice.create_room(preset="public_chat", name="bob is not here")
    from_alice = await alice.send_message(room_id, "receipt target")
    hs = local.hs
    mallory = f"@mallory:{unique('elsewhere')}.example"
    txn = [0]

    async def deliver(*edus: Json, origin: str = remote.server_name) -> None:
        txn[0] += 1
        answer = await hs.federation_transactions.on_transaction(
            origin, f"edu-test-{txn[0]}", {"origin": origin, "pdus": [], "edus": list(edus)})
        assert answer == {"pdus": {}}

    def typing(user_id: str, room: str) -> Json:
        return {"edu_type": "m.typing", "content": {"room_id": room, "user_id": user_id, "typing": True}}

    def receipt(user_id: str, room: str) -> Json:
        return {"edu_type": "m.receipt", "content": {room: {"m.read": {
            user_id: {"event_ids": [from_alice], "data": {"ts": 1234}}}}}}

    def presence(user_id: str) -> Json:
        return {"edu_type": "m.presence", "content": {"push": [
            {"user_id": user_id, "presence": "online", "last_active_ago": 10, "status_msg": "spoofed"}]}}

    # Another server's user, and bob in a room he is not in: nothing changes.
    await deliver(typing(mallory, room_id), typing(str(bob.user_id), other_room), receipt(mallory, room_id),
                  presence(mallory))
    assert hs.typing_stream.typing_users(room_id) == []
    assert hs.typing_stream.typing_users(other_room) == []
    assert await hs.receipts_stream.store.get_user_receipt(room_id, "m.read", mallory) is None
    assert await hs.presence_stream.store.get(mallory) is None
    # The same EDUs about bob, from a server that is not his, change nothing either.
    await deliver(typing(str(bob.user_id), room_id), receipt(str(bob.user_id), room_id),
                  presence(str(bob.user_id)), origin=f"{unique('impostor')}.example")
    assert hs.typing_stream.typing_users(room_id) == []
    assert await hs.receipts_stream.store.get_user_receipt(room_id, "m.read", str(bob.user_id)) is None

    # From bob's own server, about a room he is in: taken (so the drops above were the checks).
    await deliver(typing(str(bob.user_id), room_id), receipt(str(bob.user_id), room_id), presence(str(bob.user_id)))
    assert hs.typing_stream.typing_users(room_id) == [bob.user_id]
    stored = await hs.receipts_stream.store.get_user_receipt(room_id, "m.read", str(bob.user_id))
    assert stored is not None and stored["event_id"] == from_alice and stored["ts"] == 1234
    state = await hs.presence_stream.store.get(str(bob.user_id))
    assert state is not None and state.state == "online" and state.status_msg == "spoofed"
    # A remote user's typing counts for the federation timeout (the EDU carries none), not forever.
    timer = hs.typing_stream._timers[room_id][str(bob.user_id)]
    remaining_ms = (timer.when() - asyncio.get_running_loop().time()) * 1000
    assert REMOTE_TIMEOUT_MS - 5_000 < remaining_ms <= REMOTE_TIMEOUT_MS


async def test_presence_reaches_a_server_when_its_user_joins(make_fed_hs: Any, remote_server: Any) -> None:
    """A local user's presence set before the remote user joined is sent to the remote server at its
    join, not only at the local user's next change."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="public_chat", name="presence on join")
    alice_status = unique("alice was here first")
    status, body = await alice.request("PUT", f"/presence/{quote(str(alice.user_id))}/status",
                                       {"presence": "online", "status_msg": alice_status})
    assert status == 200, body
    bob_sync = await SyncWatcher(bob, local, remote_server).start()
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, (body, remote_server.log_tail(40))
    seen = await bob_sync.wait(lambda b: (p := presence_of(b, alice.user_id)) and p.get("status_msg") == alice_status
                               and p, f"{alice.user_id}'s presence after joining")
    assert seen["presence"] == "online"
