"""Pushers: POST /pushers/set and GET /pushers, and notifications delivered to a real HTTP push
gateway (a small aiohttp server standing in for Sygnal) as the Push Gateway API describes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from hs.services.pushers import PusherPool
from tests.harness import Client, ok, user
from tests.services import free_port


class FakeGateway:
    """Records every notification; answers with the queued statuses first, then 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/_matrix/push/v1/notify"
        self.received: list[dict[str, Any]] = []
        self.failures = 0  # answer this many requests with 500 first
        self.reject: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.arrived = asyncio.Event()

    async def _notify(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.failures > 0:
            self.failures -= 1
            return web.json_response({"error": "down"}, status=500)
        self.received.append(body)
        self.arrived.set()
        keys = [d["pushkey"] for d in body["notification"]["devices"]]
        return web.json_response({"rejected": [k for k in keys if k in self.reject]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/_matrix/push/v1/notify", self._notify)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count:
            assert asyncio.get_running_loop().time() < deadline, f"{len(self.received)} of {count} arrived"
            await asyncio.sleep(0.02)
        return self.received


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    g = FakeGateway()
    await g.start()
    try:
        yield g
    finally:
        await g.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PusherPool, "RETRY_INITIAL_S", 0.05)


def pusher_body(url: str, pushkey: str = "key-1", **extra: Any) -> dict[str, Any]:
    return {"kind": "http", "app_id": "org.example.app.android", "pushkey": pushkey,
            "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
            "data": {"url": url, "custom": "kept"}, **extra}


async def two_in_a_room(server: Any) -> tuple[Client, Client, str]:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="private_chat", name="Chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    return alice, bob, room


async def test_set_get_and_delete(server: Any, gateway: FakeGateway) -> None:
    bob = await user(server, "bob")
    assert await ok(bob, "GET", "/pushers") == {"pushers": []}
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url, profile_tag="tag"))
    pushers = (await ok(bob, "GET", "/pushers"))["pushers"]
    assert pushers == [{"pushkey": "key-1", "kind": "http", "app_id": "org.example.app.android",
                        "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
                        "profile_tag": "tag", "data": {"url": gateway.url, "custom": "kept"}}]
    await ok(bob, "POST", "/pushers/set", {"kind": None, "app_id": "org.example.app.android", "pushkey": "key-1"})
    assert await ok(bob, "GET", "/pushers") == {"pushers": []}


async def test_invalid_pushers_are_refused(server: Any, gateway: FakeGateway) -> None:
    bob = await user(server, "bob")
    body = pusher_body(gateway.url)
    cases = [
        ({k: v for k, v in body.items() if k != "app_id"}, "M_MISSING_PARAM"),
        ({k: v for k, v in body.items() if k != "lang"}, "M_MISSING_PARAM"),
        ({**body, "data": {"url": "http://gateway.example/notify"}}, "M_INVALID_PARAM"),
        ({**body, "data": {}}, "M_MISSING_PARAM"),
        ({**body, "kind": "email"}, "M_INVALID_PARAM"),
        ({**body, "pushkey": "k" * 513}, "M_INVALID_PARAM"),
        ({**body, "app_id": "a" * 65}, "M_INVALID_PARAM"),
        ({**body, "append": "yes"}, "M_BAD_JSON"),
        ({**body, "data": {"url": gateway.url, "format": 5}}, "M_INVALID_PARAM"),
    ]
    for case, errcode in cases:
        status, data = await bob.request("POST", "/pushers/set", case)
        assert (status, data["errcode"]) == (400, errcode), case
    assert await ok(bob, "GET", "/pushers") == {"pushers": []}


async def test_append_false_takes_the_pushkey_from_other_users(server: Any, gateway: FakeGateway) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await ok(alice, "POST", "/pushers/set", pusher_body(gateway.url))
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url, append=True))
    assert len((await ok(alice, "GET", "/pushers"))["pushers"]) == 1
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url))
    assert (await ok(alice, "GET", "/pushers"))["pushers"] == []
    assert len((await ok(bob, "GET", "/pushers"))["pushers"]) == 1


async def test_a_message_reaches_the_gateway(server: Any, gateway: FakeGateway) -> None:
    alice, bob, room = await two_in_a_room(server)
    await ok(alice, "PUT", f"/profile/{alice.user_id}/displayname", {"displayname": "Alice A."})
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url))
    await alice.send_message(room, "own messages are not pushed to their sender")  # bob is notified
    event_id = await alice.send_message(room, "hello there")
    received = await gateway.wait_for(2)
    notification = received[1]["notification"]
    assert notification["event_id"] == event_id and notification["room_id"] == room
    assert notification["type"] == "m.room.message" and notification["sender"] == alice.user_id
    assert notification["content"] == {"msgtype": "m.text", "body": "hello there"}
    assert notification["sender_display_name"] == "Alice A." and notification["room_name"] == "Chat"
    assert notification["counts"] == {"unread": 1}  # rooms with unread notifications
    # A room of two: the default one-to-one rule notifies with a sound, so high priority.
    assert notification["prio"] == "high"
    assert notification["devices"] == [{
        "app_id": "org.example.app.android", "pushkey": "key-1", "pushkey_ts": notification["devices"][0]["pushkey_ts"],
        "data": {"custom": "kept"}, "tweaks": {"sound": "default"}}]
    await asyncio.sleep(0.2)
    assert len(gateway.received) == 2  # alice's own messages never went to bob's gateway twice


async def test_event_id_only_and_the_invite_of_a_user(server: Any, gateway: FakeGateway) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url, data={"url": gateway.url,
                                                                          "format": "event_id_only"}))
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    notification = (await gateway.wait_for(1))[0]["notification"]
    assert set(notification) == {"event_id", "room_id", "counts", "prio", "devices"}
    assert notification["room_id"] == room
    assert notification["devices"][0]["data"] == {"format": "event_id_only"}


async def test_a_failing_gateway_is_retried(server: Any, gateway: FakeGateway) -> None:
    alice, bob, room = await two_in_a_room(server)
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url))
    gateway.failures = 3
    first = await alice.send_message(room, "one")
    second = await alice.send_message(room, "two")
    received = await gateway.wait_for(2)
    assert [r["notification"]["event_id"] for r in received] == [first, second]  # in order, none lost


async def test_a_rejected_pushkey_loses_its_pusher(server: Any, gateway: FakeGateway) -> None:
    alice, bob, room = await two_in_a_room(server)
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url))
    gateway.reject.add("key-1")
    await alice.send_message(room, "one")
    await gateway.wait_for(1)
    for _ in range(100):
        if not (await ok(bob, "GET", "/pushers"))["pushers"]:
            break
        await asyncio.sleep(0.05)
    assert (await ok(bob, "GET", "/pushers"))["pushers"] == []


async def test_logging_out_removes_the_devices_pushers(server: Any, gateway: FakeGateway) -> None:
    bob = await user(server, "bob")
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url))
    other = server.client()
    status, login = await other.request("POST", "/login", {"type": "m.login.password", "user": "bob",
                                                           "password": "password123"}, auth=False)
    assert status == 200
    other.token = login["access_token"]
    await ok(bob, "POST", "/logout")
    assert (await ok(other, "GET", "/pushers"))["pushers"] == []
    await other.close()


async def test_undelivered_notifications_are_sent_after_a_restart(server: Any, gateway: FakeGateway) -> None:
    alice, bob, room = await two_in_a_room(server)
    await ok(bob, "POST", "/pushers/set", pusher_body(gateway.url))
    gateway.failures = 10 ** 6  # down
    event_id = await alice.send_message(room, "while the gateway is down")
    await asyncio.sleep(0.3)
    await server.restart()
    gateway.failures = 0
    received = await gateway.wait_for(1)
    assert received[0]["notification"]["event_id"] == event_id


async def test_a_pusher_added_by_another_process_is_found(server: Any, gateway: FakeGateway,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With no pushers the pool reads no notifications; one added elsewhere (straight into the
    database here, as another process would) is found at the next check and gets what came since."""
    monkeypatch.setattr(PusherPool, "POLL_S", 0.2)
    alice, bob, room = await two_in_a_room(server)
    await alice.send_message(room, "before any pusher")
    await asyncio.sleep(0.3)
    body = pusher_body(gateway.url)
    await server.hs.pushers_store.set_pusher(bob.user_id, bob.device_id, body, 0,
                                             server.hs.events_stream.current_position(), False)
    event_id = await alice.send_message(room, "after the pusher")
    received = await gateway.wait_for(1)
    assert [r["notification"]["event_id"] for r in received] == [event_id]
