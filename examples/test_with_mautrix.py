"""Testing a mautrix-python bot against a throwaway hs, with the fixtures of the `hs` pytest plugin.

Nothing here comes from hs's own test suite: `pip install hs` (which registers the plugin) plus mautrix
and pytest-asyncio is all it takes. The bot runs its real sync loop (`Client.start`); the test plays its
user. Run: `pytest examples/test_with_mautrix.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from mautrix.client import Client
from mautrix.client.state_store import MemoryStateStore, MemorySyncStore
from mautrix.types import (
    EventType,
    Membership,
    MemberStateEventContent,
    MessageEvent,
    PaginationDirection,
    RoomID,
    StateEvent,
    UserID,
)


class EchoBot:
    """The code under test: joins when invited, and answers `!echo <text>` with `<text>`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        client.add_event_handler(EventType.ROOM_MEMBER, self.on_member)
        client.add_event_handler(EventType.ROOM_MESSAGE, self.on_message)

    async def on_member(self, event: StateEvent) -> None:
        content = event.content
        if (event.state_key == self.client.mxid and isinstance(content, MemberStateEventContent)
                and content.membership == Membership.INVITE):
            await self.client.join_room(event.room_id)

    async def on_message(self, event: MessageEvent) -> None:
        body = event.content.body or ""
        if event.sender != self.client.mxid and body.startswith("!echo "):
            await self.client.send_text(event.room_id, body.removeprefix("!echo "))


def mautrix_client(base_url: str, user: tuple[str, str, str]) -> Client:
    """A mautrix client logged in with what `hs_user_factory` returned."""
    user_id, access_token, device_id = user
    return Client(mxid=UserID(user_id), device_id=device_id, base_url=base_url, token=access_token,
                  state_store=MemoryStateStore(), sync_store=MemorySyncStore())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Until `check()` holds: the bot works in its own sync loop, on its own time."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def texts(client: Client, room_id: RoomID) -> list[str]:
    page = await client.get_messages(room_id, PaginationDirection.BACKWARD, limit=50)
    return [e.content.body for e in reversed(page.events) if e.type == EventType.ROOM_MESSAGE]


@pytest.mark.asyncio
async def test_echo_bot_in_its_sync_loop(hs_server: Any, hs_user_factory: Any) -> None:
    alice = mautrix_client(hs_server.base_url, await hs_user_factory("alice"))
    bot = mautrix_client(hs_server.base_url, await hs_user_factory("echobot"))
    EchoBot(bot)
    bot.start(None)  # the bot's /sync loop, as in production
    try:
        room_id = await alice.create_room(name="Echo test", invitees=[bot.mxid])

        async def bot_joined() -> bool:
            return bot.mxid in await alice.get_joined_members(room_id)

        await eventually(bot_joined)
        await alice.send_text(room_id, "!echo hello from hs")

        async def echoed() -> bool:
            return (await texts(alice, room_id))[-1:] == ["hello from hs"]

        await eventually(echoed)
        assert await texts(alice, room_id) == ["!echo hello from hs", "hello from hs"]
    finally:
        bot.stop()
        await alice.api.session.close()
        await bot.api.session.close()


@pytest.mark.asyncio
async def test_media_round_trip(hs_server: Any, hs_user_factory: Any) -> None:
    """The homeserver is complete: media upload and (authenticated) download work as on a deployment."""
    client = mautrix_client(hs_server.base_url, await hs_user_factory())
    try:
        mxc = await client.upload_media(b"\x89PNG fake image bytes", mime_type="image/png", filename="a.png")
        assert mxc.startswith(f"mxc://{hs_server.server_name}/")
        assert await client.download_media(mxc) == b"\x89PNG fake image bytes"
    finally:
        await client.api.session.close()


@pytest.mark.asyncio
async def test_against_hs_run_subprocess(hs_process_session: Any, hs_user_factory: Any) -> None:
    """`hs_process_session` is `hs run` on a generated config, started once (under a second) for the
    session: the server as deployed, in a process of its own. `server=` registers there."""
    user = await hs_user_factory(server=hs_process_session)
    client = mautrix_client(hs_process_session.base_url, user)
    try:
        whoami = await client.whoami()
        assert (whoami.user_id, whoami.device_id) == (user.user_id, user.device_id)
        await client.set_displayname("Subprocess user")
        assert await client.get_displayname(client.mxid) == "Subprocess user"
    finally:
        await client.api.session.close()
