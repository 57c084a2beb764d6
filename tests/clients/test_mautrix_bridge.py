"""A small bridge written with mautrix-python's `mautrix.appservice` (PyPI), on a real port, registered
through `app_service_config_files`, against a real homeserver (SQLite and PostgreSQL): its bot is
invited and joins, it receives the room's events, typing and receipts (MSC2409), a puppet of its
namespace sends with a massaged timestamp, a user query creates a user on demand, it pings itself, and
when its listener is down while messages flow it gets every event once, in order, once back up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from mautrix.appservice import AppService, IntentAPI
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import Event, EventType, Membership, MessageEvent, StateEvent, UserID

from hs.appservice.queries import appservice_queries
from hs.appservice.sender import appservice_sender
from tests.clients.bridges import fast_backoff, until
from tests.harness import TestHomeServer, ok, user
from tests.services import free_port

AS_TOKEN = "mautrix-as-token"
HS_TOKEN = "mautrix-hs-token"


class MemoryASStore(ASStateStore, MemoryStateStore):  # type: ignore[misc]
    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


class Bridge:
    """The bridge: a mautrix AppService whose handlers record what arrives and whose bot joins the rooms
    it is invited to; users of its namespace are made on demand when the homeserver asks about them."""

    def __init__(self, base_url: str, port: int) -> None:
        self.port = port
        self.messages: list[MessageEvent] = []
        self.ephemeral: list[Event] = []
        self.created: list[str] = []
        self.appservice = AppService(
            server=base_url, domain="test.local", as_token=AS_TOKEN, hs_token=HS_TOKEN, bot_localpart="maubot",
            id="mautrix", query_user=self.query_user, state_store=MemoryASStore(), ephemeral_events=True,
            log="test.mautrix")
        self.appservice.matrix_event_handler(self.on_event)

    async def on_event(self, event: Event) -> None:
        if isinstance(event, MessageEvent):
            self.messages.append(event)
        elif isinstance(event, StateEvent) and event.type == EventType.ROOM_MEMBER:
            if event.state_key == self.appservice.bot_mxid and event.content.membership == Membership.INVITE:
                await self.appservice.intent.join_room(event.room_id)
        elif event.type in (EventType.TYPING, EventType.RECEIPT):
            self.ephemeral.append(event)

    async def puppet(self, user_id: str) -> IntentAPI:
        """A user of the namespace, registered by mautrix (m.login.application_service)."""
        intent = self.appservice.intent.user(UserID(user_id))
        await intent.ensure_registered()
        return intent

    async def query_user(self, user_id: UserID) -> dict[str, Any] | None:
        """The homeserver asks about an unknown user of the namespace: create it, as bridges do."""
        intent = await self.puppet(user_id)
        await intent.set_displayname(f"Remote {user_id[1:].split(':')[0]}")
        self.created.append(user_id)
        return {"user_id": user_id}  # mautrix answers 404 for an empty (falsy) answer

    async def start(self) -> None:
        await self.appservice.start(host="127.0.0.1", port=self.port)

    async def stop(self) -> None:
        await self.appservice.stop()

    def texts(self) -> list[str]:
        return [str(m.content.body) for m in self.messages]


def registration(tmp_path: Path, port: int) -> str:
    data = {"id": "mautrix", "url": f"http://127.0.0.1:{port}", "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
            "sender_localpart": "maubot", "rate_limited": False, "receive_ephemeral": True,
            "namespaces": {"users": [{"regex": "@mau_.*:test\\.local", "exclusive": True}],
                           "aliases": [], "rooms": []}}
    path = tmp_path / "mautrix.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)




@pytest.fixture
async def bridge(make_server: Any, engine: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Any:
    fast_backoff(monkeypatch)
    port = free_port()
    server = await make_server(engine, app_service_config_files=[registration(tmp_path, port)])
    b = Bridge(server.base_url, port)
    await b.start()
    await b.appservice.intent.ensure_registered()
    yield server, b
    await b.stop()


async def test_bridge_receives_events_typing_and_receipts(bridge: tuple[TestHomeServer, Bridge]) -> None:
    server, b = bridge
    alice = await user(server, "alice")
    room = await alice.create_room(preset="private_chat", invite=[str(b.appservice.bot_mxid)])

    async def bot_joined() -> bool:
        data = await ok(alice, "GET", f"/rooms/{room}/joined_members")
        return str(b.appservice.bot_mxid) in data["joined"]

    deadline = time.monotonic() + 15
    while not await bot_joined():
        assert time.monotonic() < deadline, "the bot did not join"
        await asyncio.sleep(0.05)
    event_id = await alice.send_message(room, "hello bridge")
    await until(lambda: "hello bridge" in b.texts())
    assert b.messages[-1].sender == alice.user_id and b.messages[-1].room_id == room
    await ok(alice, "PUT", f"/rooms/{room}/typing/{quote(alice.user_id or '')}", {"typing": True, "timeout": 30000})
    await ok(alice, "POST", f"/rooms/{room}/receipt/m.read/{event_id}", {})
    await until(lambda: {e.type for e in b.ephemeral} >= {EventType.TYPING, EventType.RECEIPT})
    typing = next(e for e in b.ephemeral if e.type == EventType.TYPING)
    assert alice.user_id in typing.content.user_ids
    # The bridge pings itself through the homeserver (mautrix raises on an error; a 0 ms round trip it
    # reports as -1).
    assert isinstance(await b.appservice.ping_self("mautrix-ping"), int)


async def test_puppet_sends_with_massaged_timestamp(bridge: tuple[TestHomeServer, Bridge]) -> None:
    server, b = bridge
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat")
    puppet = await b.puppet("@mau_bob:test.local")
    await puppet.join_room(room)
    ts = 1_600_000_000_000
    event_id = await puppet.send_text(room, "from the remote network", timestamp=ts)
    event = await ok(alice, "GET", f"/rooms/{room}/event/{event_id}")
    assert event["sender"] == "@mau_bob:test.local" and event["origin_server_ts"] == ts


async def test_user_query_creates_the_user_on_demand(bridge: tuple[TestHomeServer, Bridge]) -> None:
    server, b = bridge
    alice = await user(server, "alice")
    # The profile lookup of an unknown namespaced user asks the bridge, which creates the user.
    profile = await ok(alice, "GET", "/profile/@mau_newcomer:test.local")
    assert "@mau_newcomer:test.local" in b.created
    assert profile["displayname"] == "Remote mau_newcomer"
    # Outside the namespace the bridge is never asked.
    assert not await appservice_queries(server.hs).query_user("@nobody:test.local")


async def test_bridge_down_then_every_event_once_in_order(bridge: tuple[TestHomeServer, Bridge]) -> None:
    server, b = bridge
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat")
    puppet = await b.puppet("@mau_carol:test.local")
    await puppet.join_room(room)
    await alice.send_message(room, "before")
    await until(lambda: "before" in b.texts())
    await b.stop()
    sent = [f"while down {i}" for i in range(20)]
    for text in sent:
        await alice.send_message(room, text)
    await asyncio.sleep(1.0)
    assert appservice_sender(server.hs).status()["mautrix"]["failures"] >= 1
    b.appservice.live = True
    await b.start()
    await until(lambda: b.texts()[1:] == sent)
    ids = [m.event_id for m in b.messages]
    assert len(ids) == len(set(ids))


async def test_wrong_hs_token_is_refused_by_the_bridge_and_retried(bridge: tuple[TestHomeServer, Bridge]) -> None:
    server, b = bridge
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat")
    puppet = await b.puppet("@mau_dan:test.local")
    await puppet.join_room(room)
    b.appservice.hs_token = "not-what-the-homeserver-sends"  # the bridge now refuses the homeserver
    await alice.send_message(room, "refused first")
    sender = appservice_sender(server.hs)
    await until(lambda: sender.status()["mautrix"]["failures"] >= 1)
    assert "refused first" not in b.texts()
    b.appservice.hs_token = HS_TOKEN
    await until(lambda: "refused first" in b.texts())
    assert b.texts().count("refused first") == 1
