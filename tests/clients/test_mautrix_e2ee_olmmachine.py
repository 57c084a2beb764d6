"""End-to-bridge encryption the way mautrix's own bridges do it (`mautrix.bridge.e2ee.EncryptionManager` in
appservice mode with MSC4190): a `mautrix.crypto.OlmMachine` with a memory crypto store, whose client
creates the bot's device with `create_device_msc4190` and then acts as it, fed by the appservice
transactions (`handle_as_to_device_event`, `handle_as_device_lists`, `handle_as_otk_counts`), keeps an
encrypted conversation with a matrix-nio user against a real homeserver (SQLite and PostgreSQL).

mautrix.crypto needs python-olm and base58: the dev extras install mautrix[encryption] for them
(matrix-nio 0.26 no longer brings python-olm: it uses vodozemac). test_mautrix_e2ee_bridge.py covers the
same traffic with the bridge's Olm/Megolm done in vodozemac.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nio
import pytest
import yaml
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client import Client
from mautrix.client.state_store import MemoryStateStore
from mautrix.crypto import OlmMachine, StateStore
from mautrix.crypto.store.memory import MemoryCryptoStore
from mautrix.errors import EncryptionError
from mautrix.types import (
    DeviceID,
    EncryptedEvent,
    EncryptionAlgorithm,
    EncryptionKeyAlgorithm,
    Event,
    EventType,
    MessageEvent,
    MessageType,
    RoomEncryptionStateEventContent,
    RoomID,
    TextMessageEventContent,
    UserID,
)

from tests.clients.bridges import fast_backoff, nio_receive, until
from tests.clients.test_nio_e2ee import ENCRYPTION_STATE, Target, _e2ee_client, _register
from tests.harness import TestHomeServer
from tests.services import free_port

AS_TOKEN = "olmmachine-bridge-as-token"
HS_TOKEN = "olmmachine-bridge-hs-token"
BOT = UserID("@olmbot:test.local")
DEVICE = DeviceID("MAUTRIXCRYPTO")


class MemoryASStore(ASStateStore, MemoryStateStore):
    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


class PortalStateStore(StateStore):
    """What OlmMachine asks of a bridge about its rooms: the portal rooms are all encrypted."""

    def __init__(self) -> None:
        self.rooms: set[RoomID] = set()

    async def is_encrypted(self, room_id: RoomID) -> bool:
        return room_id in self.rooms

    async def get_encryption_info(self, room_id: RoomID) -> RoomEncryptionStateEventContent | None:
        if room_id not in self.rooms:
            return None
        return RoomEncryptionStateEventContent(algorithm=EncryptionAlgorithm.MEGOLM_V1)

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        return sorted(self.rooms)


class OlmBridge:
    """A mautrix AppService with an OlmMachine wired to its transactions, as EncryptionManager does."""

    def __init__(self, base_url: str, port: int) -> None:
        self.port = port
        self.appservice = AppService(
            server=base_url, domain="test.local", as_token=AS_TOKEN, hs_token=HS_TOKEN, bot_localpart="olmbot",
            id="olm-bridge", state_store=MemoryASStore(), ephemeral_events=True, encryption_events=True,
            log="test.mautrix.olm")
        self.client = Client(mxid=BOT, base_url=base_url, token=AS_TOKEN)
        self.portals = PortalStateStore()
        self.crypto_store = MemoryCryptoStore(account_id=BOT, pickle_key="test")
        self.crypto = OlmMachine(self.client, self.crypto_store, self.portals)
        self.appservice.otk_handler = self.on_otk_counts
        self.appservice.device_list_handler = self.crypto.handle_as_device_lists
        self.appservice.to_device_handler = self.crypto.handle_as_to_device_event
        self.appservice.matrix_event_handler(self.on_event)
        self.otk_counts: list[int] = []
        self.decrypted: list[MessageEvent] = []
        self.errors: list[str] = []

    async def start(self) -> None:
        await self.appservice.start(host="127.0.0.1", port=self.port)
        # EncryptionManager.start with msc4190: the device made by the service, then the keys shared.
        await self.client.create_device_msc4190(device_id=DEVICE, initial_display_name="olm bridge")
        await self.crypto.load()
        await self.crypto_store.put_device_id(DEVICE)
        await self.crypto.share_keys()

    async def stop(self) -> None:
        await self.appservice.stop()
        await self.client.api.session.close()

    async def on_otk_counts(self, counts: Any) -> None:
        ours = counts.get(BOT, {}).get(DEVICE)
        if ours is not None:
            self.otk_counts.append(ours.signed_curve25519)
        await self.crypto.handle_as_otk_counts(counts)

    async def on_event(self, event: Event) -> None:
        if isinstance(event, EncryptedEvent):
            try:
                decrypted = await self.crypto.decrypt_megolm_event(event)
            except Exception as e:  # recorded: the test asserts there were none
                self.errors.append(repr(e))
                return
            if isinstance(decrypted, MessageEvent):
                self.decrypted.append(decrypted)

    async def send_text(self, room_id: RoomID, user_ids: list[UserID], body: str) -> str:
        """EncryptionManager.encrypt: share a group session with the room's users if there is none."""
        content = TextMessageEventContent(msgtype=MessageType.TEXT, body=body)
        try:
            encrypted = await self.crypto.encrypt_megolm_event(room_id, EventType.ROOM_MESSAGE, content)
        except EncryptionError:
            await self.crypto.share_group_session(room_id, user_ids)
            encrypted = await self.crypto.encrypt_megolm_event(room_id, EventType.ROOM_MESSAGE, content)
        # mautrix's EventContent union omits encrypted content; EncryptionManager sends it the same way.
        event_id = await self.client.send_message_event(
            room_id, EventType.ROOM_ENCRYPTED, encrypted)  # type: ignore[arg-type]
        return str(event_id)


def registration(tmp_path: Path, port: int) -> str:
    data = {"id": "olm-bridge", "url": f"http://127.0.0.1:{port}", "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
            "sender_localpart": "olmbot", "rate_limited": False, "receive_ephemeral": True,
            "org.matrix.msc3202": True, "io.element.msc4190": True,
            "namespaces": {"users": [{"regex": "@olm_.*:test\\.local", "exclusive": True}],
                           "aliases": [], "rooms": []}}
    path = tmp_path / "olm-bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)




@pytest.fixture
async def bridge(make_server: Any, engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    fast_backoff(monkeypatch)
    port = free_port()
    server = await make_server(engine, app_service_config_files=[registration(tmp_path, port)])
    b = OlmBridge(server.base_url, port)
    await b.start()
    yield server, b
    await b.stop()




async def test_olm_machine_bridge_and_nio_talk_encrypted(bridge: tuple[TestHomeServer, OlmBridge],
                                                         tmp_path: Path) -> None:
    server, b = bridge
    keys = await b.client.query_keys([BOT])
    assert DEVICE in keys.device_keys[BOT]  # the keys OlmMachine shared, as the masqueraded device

    await _register(Target(server.base_url), "alice")
    alice = await _e2ee_client(Target(server.base_url), "alice", tmp_path / "alice", "alice-laptop")
    try:
        created = await alice.room_create(name="Portal", invite=[BOT], initial_state=[ENCRYPTION_STATE])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = RoomID(created.room_id)
        b.portals.rooms.add(room_id)
        await b.appservice.intent.join_room(room_id)
        await alice.sync(timeout=0)

        # nio -> OlmMachine: the room key arrives as a to-device message in a transaction.
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello, mautrix"},
                                     ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        await until(lambda: bool(b.decrypted or b.errors), "the bridge to decrypt nio's message")
        assert not b.errors, b.errors
        assert b.decrypted[0].content.body == "hello, mautrix" and b.decrypted[0].sender == alice.user_id
        assert b.decrypted[0].event_id == sent.event_id
        # MSC3202: the transactions report the bot device's one-time key count, one fewer after nio's claim
        # (50 uploaded: half of olm's 100); OlmMachine tops it up from that count alone, as the device
        # never syncs.
        await until(lambda: 49 in b.otk_counts, "a one-time key count of 49")
        deadline = time.monotonic() + 10
        while (await b.client.upload_keys()).get(EncryptionKeyAlgorithm.SIGNED_CURVE25519) != 50:
            assert time.monotonic() < deadline, "OlmMachine did not top its one-time keys up"
            await asyncio.sleep(0.05)

        # OlmMachine -> nio: it queries alice's keys and claims her one-time key as its device, shares the
        # group session over Olm, then sends the Megolm event.
        event_id = await b.send_text(room_id, [UserID(alice.user_id)], "hi alice, from OlmMachine")
        ev = await nio_receive(alice, room_id, "hi alice, from OlmMachine")
        assert ev.decrypted and ev.sender == BOT and ev.event_id == event_id
    finally:
        await alice.close()
