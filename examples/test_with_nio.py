"""Testing a matrix-nio bot against a throwaway hs, with the fixtures of the `hs` pytest plugin.

Nothing here comes from hs's own test suite: `pip install hs` (which registers the plugin) plus
matrix-nio and pytest-asyncio is all it takes. The bot is the code under test; the tests play its users.
Run: `pytest examples/test_with_nio.py`.
"""

from __future__ import annotations

from typing import Any

import nio
import pytest


class PingBot:
    """The code under test: a bot that joins the rooms it is invited to and answers `!ping` with `pong`."""

    def __init__(self, client: nio.AsyncClient) -> None:
        self.client = client
        client.add_event_callback(self.on_invite, nio.InviteMemberEvent)
        client.add_event_callback(self.on_message, nio.RoomMessageText)

    async def on_invite(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if event.state_key == self.client.user_id and event.membership == "invite":
            await self.client.join(room.room_id)

    async def on_message(self, room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
        if event.sender != self.client.user_id and event.body == "!ping":
            await self.client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "pong"})


def nio_client(base_url: str, user: tuple[str, str, str]) -> nio.AsyncClient:
    """A nio client logged in with what `hs_user_factory` returned: no /login round trip needed."""
    user_id, access_token, device_id = user
    client = nio.AsyncClient(base_url, user_id, device_id=device_id)
    client.restore_login(user_id, device_id, access_token)
    return client


def bodies(sync: Any, room_id: str) -> list[str]:
    room = sync.rooms.join.get(room_id)
    return [e.body for e in room.timeline.events if isinstance(e, nio.RoomMessageText)] if room else []


@pytest.mark.asyncio
async def test_bot_joins_and_answers_ping(hs_server: Any, hs_user_factory: Any) -> None:
    """A fresh homeserver for this test (`hs_server`, in-process, ~20 ms to start) and two users."""
    alice = nio_client(hs_server.base_url, await hs_user_factory("alice"))
    bot = nio_client(hs_server.base_url, await hs_user_factory("pingbot"))
    PingBot(bot)
    try:
        created = await alice.room_create(name="Bot test", invite=[bot.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id

        await bot.sync(timeout=0)  # the invite arrives; the bot's callback joins
        await bot.sync(timeout=0)  # the join comes back
        assert room_id in bot.rooms

        await alice.sync(timeout=0)
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "!ping"})
        assert isinstance(sent, nio.RoomSendResponse), sent
        await bot.sync(timeout=5000)  # the bot sees !ping and answers

        reply = await alice.sync(timeout=5000)
        assert isinstance(reply, nio.SyncResponse), reply
        assert bodies(reply, room_id) == ["!ping", "pong"]
    finally:
        await alice.close()
        await bot.close()


@pytest.mark.asyncio
async def test_password_login_and_profile(hs_server: Any, hs_user_factory: Any) -> None:
    """Users are real accounts: a second device logs in with the password the factory registered."""
    user_id, _token, first_device = await hs_user_factory("carol", password="s3cret-pass")
    client = nio.AsyncClient(hs_server.base_url, user_id)
    try:
        login = await client.login("s3cret-pass", device_name="second device")
        assert isinstance(login, nio.LoginResponse), login
        assert login.device_id != first_device
        assert isinstance(await client.set_displayname("Carol"), nio.ProfileSetDisplayNameResponse)
        profile = await client.get_profile(user_id)
        assert isinstance(profile, nio.ProfileGetResponse) and profile.displayname == "Carol"
        devices = await client.devices()
        assert isinstance(devices, nio.DevicesResponse)
        assert {d.id for d in devices.devices} == {first_device, login.device_id}
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_session_server_is_shared(hs_server_session: Any, hs_user_factory: Any) -> None:
    """`hs_server_session` is started once for the session (on its own loop in a thread, so any test
    can use it); `server=` registers there instead of on `hs_server`. Tests sharing it use distinct
    names: without a name, the factory makes one up."""
    user = await hs_user_factory(server=hs_server_session)
    client = nio_client(hs_server_session.base_url, user)
    try:
        whoami = await client.whoami()
        assert isinstance(whoami, nio.WhoamiResponse), whoami
        assert whoami.user_id == user.user_id
        assert whoami.user_id.endswith(":" + hs_server_session.server_name)
    finally:
        await client.close()
