"""PUT /sendToDevice and to-device delivery in /sync, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from tests.harness import OPEN_CLIENTS, Client, TestHomeServer, user

Json = dict[str, Any]


async def login(server: TestHomeServer, name: str, device_id: str | None = None) -> Client:
    c = server.client()
    OPEN_CLIENTS.append(c)
    body: Json = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                  "password": "password123"}
    if device_id:
        body["device_id"] = device_id
    status, data = await c.request("POST", "/login", body, auth=False)
    assert status == 200, data
    c.token, c.user_id, c.device_id = data["access_token"], data["user_id"], data["device_id"]
    return c


async def send(client: Client, messages: Json, event_type: str = "m.test", txn: str | None = None) -> None:
    status, data = await client.request("PUT", f"/sendToDevice/{event_type}/{txn or uuid.uuid4().hex}",
                                        {"messages": messages})
    assert (status, data) == (200, {}), data


def to_device(res: Json) -> list[Json]:
    return list(res["to_device"]["events"])


async def inbox_rows(server: TestHomeServer, user_id: str) -> int:
    return int(await server.hs.db.fetchval("SELECT COUNT(*) FROM device_inbox WHERE user_id = $1", user_id))


# -- delivery ------------------------------------------------------------------------------------------------
async def test_message_is_delivered_redelivered_on_retry_and_deleted_after(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    start = (await bob.sync())["next_batch"]
    await send(alice, {bob.user_id: {bob.device_id: {"n": 1}}}, "m.room_key_request")

    first = await bob.sync(start)
    assert to_device(first) == [{"sender": alice.user_id, "type": "m.room_key_request", "content": {"n": 1}}]
    # The response was lost: a retry with the same token gets the message again.
    retry = await bob.sync(start)
    assert to_device(retry) == to_device(first)
    assert retry["next_batch"] == first["next_batch"]
    assert await inbox_rows(server, bob.user_id) == 1
    # Syncing from the token that delivered it acknowledges it: it is gone for good.
    after = await bob.sync(first["next_batch"])
    assert to_device(after) == []
    assert await inbox_rows(server, bob.user_id) == 0
    assert to_device(await bob.sync(start)) == []


async def test_initial_sync_delivers_pending_messages_in_order(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    for i in range(3):
        await send(alice, {bob.user_id: {bob.device_id: {"i": i}}})
    res = await bob.sync()
    assert [e["content"]["i"] for e in to_device(res)] == [0, 1, 2]


async def test_messages_only_reach_the_addressed_device(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    bob2 = await login(server, "bob")
    await send(alice, {bob.user_id: {bob2.device_id: {"to": "second"}}})
    assert to_device(await bob.sync()) == []
    assert [e["content"] for e in to_device(await bob2.sync())] == [{"to": "second"}]


async def test_star_reaches_every_device_of_the_user(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    bob2 = await login(server, "bob")
    await send(alice, {bob.user_id: {"*": {"all": True}}})
    for device in (bob, bob2):
        assert [e["content"] for e in to_device(await device.sync())] == [{"all": True}]
    assert to_device(await alice.sync()) == []


async def test_transaction_id_is_idempotent_per_device(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    alice2 = await login(server, "alice")
    bob = await user(server, "bob")
    for _ in range(3):
        await send(alice, {bob.user_id: {bob.device_id: {"from": 1}}}, txn="same")
    # The same transaction ID from another device of the sender is another request.
    await send(alice2, {bob.user_id: {bob.device_id: {"from": 2}}}, txn="same")
    assert [e["content"] for e in to_device(await bob.sync())] == [{"from": 1}, {"from": 2}]


async def test_at_most_100_per_sync_and_the_rest_follows(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    for i in range(105):
        await send(alice, {bob.user_id: {bob.device_id: {"i": i}}})
    first = await bob.sync()
    assert [e["content"]["i"] for e in to_device(first)] == list(range(100))
    second = await bob.sync(first["next_batch"])
    assert [e["content"]["i"] for e in to_device(second)] == list(range(100, 105))
    third = await bob.sync(second["next_batch"])
    assert to_device(third) == []
    assert await inbox_rows(server, bob.user_id) == 0


async def test_unknown_users_and_devices_are_ignored(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await send(alice, {"@nobody:test.local": {"*": {}}, bob.user_id: {"NOSUCHDEVICE": {"x": 1}},
                       "@remote:elsewhere.example": {"DEV": {"x": 2}}})
    assert to_device(await bob.sync()) == []
    assert int(await server.hs.db.fetchval("SELECT COUNT(*) FROM device_inbox")) == 0


async def test_deleting_a_device_drops_its_pending_messages(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    bob2 = await login(server, "bob")
    await send(alice, {bob.user_id: {"*": {"x": 1}}})
    assert await inbox_rows(server, bob.user_id) == 2
    status, _ = await bob2.request("POST", "/logout")
    assert status == 200
    assert await inbox_rows(server, bob.user_id) == 1


# -- long-polling --------------------------------------------------------------------------------------------
async def test_send_wakes_the_recipient_only(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    bob_since = (await bob.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]

    async def timed(client: Client, since: str, timeout: int) -> tuple[float, Json]:
        t = time.monotonic()
        res = await client.sync(since, timeout=timeout)
        return time.monotonic() - t, res

    bob_task = asyncio.create_task(timed(bob, bob_since, 10_000))
    carol_task = asyncio.create_task(timed(carol, carol_since, 800))
    await asyncio.sleep(0.2)
    await send(alice, {bob.user_id: {bob.device_id: {"wake": "up"}}})
    bob_took, bob_res = await bob_task
    carol_took, carol_res = await carol_task
    assert bob_took < 5
    assert [e["content"] for e in to_device(bob_res)] == [{"wake": "up"}]
    assert carol_took >= 0.7
    assert to_device(carol_res) == []


# -- errors --------------------------------------------------------------------------------------------------
async def test_bad_requests(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    cases: list[tuple[Any, int, str]] = [
        ({}, 400, "M_MISSING_PARAM"),
        ({"messages": []}, 400, "M_BAD_JSON"),
        ({"messages": {bob.user_id: []}}, 400, "M_BAD_JSON"),
        ({"messages": {bob.user_id: {bob.device_id: "not an object"}}}, 400, "M_BAD_JSON"),
    ]
    for body, code, errcode in cases:
        status, data = await alice.request("PUT", f"/sendToDevice/m.test/{uuid.uuid4().hex}", body)
        assert (status, data["errcode"]) == (code, errcode), body
    status, data = await alice.request("PUT", "/sendToDevice/m.test/t1", raw=b"{not json")
    assert (status, data["errcode"]) == (400, "M_NOT_JSON")
    status, data = await alice.request("PUT", "/sendToDevice/m.test/t2", {"messages": {}}, auth=False)
    assert status == 401
    assert to_device(await bob.sync()) == []


async def test_oversized_payload_is_rejected(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    big = "x" * (server.config.max_request_body_size + 1)
    status, data = await alice.request("PUT", "/sendToDevice/m.test/big",
                                       {"messages": {bob.user_id: {bob.device_id: {"blob": big}}}})
    assert (status, data["errcode"]) == (413, "M_TOO_LARGE")
    assert to_device(await bob.sync()) == []
    # The transaction ID was not used up by the rejected request.
    await send(alice, {bob.user_id: {bob.device_id: {"small": True}}}, txn="big")
    assert [e["content"] for e in to_device(await bob.sync())] == [{"small": True}]
