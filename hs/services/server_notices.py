"""Server notices (Synapse's "Server Notices" and its admin API's send_server_notice): a system user,
`server_notices.system_mxid_localpart`, sends a message to a local user in a room kept for that user
alone, tagged `m.server_notice` in the user's account data (the spec's Server Notices module).

The room is made on the first notice (private chat, named and described as configured, the user invited,
or joined with `auto_join`); its power levels give members -10 (`users_default`) so they cannot write in
it. A user who left is invited again by the next notice. The system user is registered, without a
password, when first needed. Sending is not rate-limited: notices are an admin's, often many at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hs.config import ServerNoticesConfig
from hs.db.stores.admin_rooms import AdminRoomStore
from hs.errors import bad_request, not_found
from hs.events.auth import get_domain
from hs.services.ratelimit import RATELIMIT_EXEMPT

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

NOTICE_TAG = "m.server_notice"
TAG_TYPE = "m.tag"
# Members other than the system user cannot send in the notices room (Synapse's value).
MEMBER_POWER = -10


class ServerNotices:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = AdminRoomStore(hs.db)

    @property
    def config(self) -> ServerNoticesConfig:
        config = self.hs.config.server_notices
        if config is None:
            raise bad_request("Server notices are not enabled on this server")
        return config

    @property
    def system_user(self) -> str:
        return f"@{self.config.system_mxid_localpart}:{self.hs.server_name}"

    async def send(self, user_id: str, content: dict[str, Any], etype: str = "m.room.message",
                   state_key: str | None = None, txn: tuple[str, str, str] | None = None) -> str:
        """Send one notice to a local user; its event ID."""
        config = self.config
        if get_domain(user_id) != self.hs.server_name:
            raise bad_request("Server notices can only be sent to local users")
        if await self.hs.user_store.get_user(user_id) is None:
            raise not_found("User not found")
        reset = RATELIMIT_EXEMPT.set(True)
        try:
            await self._ensure_system_user(config)
            room_id = await self._room_for(user_id, config)
            event = await self.hs.event_sender.send(room_id, self.system_user, etype, content,
                                                    state_key=state_key, txn=txn)
        finally:
            RATELIMIT_EXEMPT.reset(reset)
        logger.info("server notice %s sent to %s in %s", event.event_id, user_id, room_id)
        return event.event_id

    async def _ensure_system_user(self, config: ServerNoticesConfig) -> None:
        if await self.hs.user_store.get_user(self.system_user) is not None:
            return
        try:
            await self.hs.registration.register_user(config.system_mxid_localpart, None,
                                                     displayname=config.system_mxid_display_name)
        except Exception:  # registered concurrently by another notice
            if await self.hs.user_store.get_user(self.system_user) is None:
                raise
        if config.system_mxid_avatar_url:
            await self.store.set_avatar(self.system_user, config.system_mxid_avatar_url)

    async def _room_for(self, user_id: str, config: ServerNoticesConfig) -> str:
        """The user's notices room, made if there is none (or it is gone); the user invited (or joined)
        again if they left it."""
        from hs.services.auth import Requester

        system = Requester(self.system_user, "", "")
        room_id = await self.store.notices_room(user_id)
        if room_id is not None and await self.hs.room_store.room_exists(room_id):
            current = await self.hs.event_store.get_membership(room_id, user_id)
            ours = await self.hs.event_store.get_membership(room_id, self.system_user)
            if ours is not None and ours[0] == "join":
                if current is None or current[0] not in ("join", "invite"):
                    await self.hs.room_membership.update_membership(system, room_id, user_id, "invite",
                                                                    ratelimit=False)
                    await self._maybe_join(user_id, room_id, config)
                return room_id
        body: dict[str, Any] = {
            "preset": "private_chat", "name": config.room_name, "invite": [user_id],
            "power_level_content_override": {"users_default": MEMBER_POWER},
        }
        if config.room_topic:
            body["topic"] = config.room_topic
        if config.room_avatar_url:
            body["initial_state"] = [{"type": "m.room.avatar", "state_key": "",
                                      "content": {"url": config.room_avatar_url}}]
        room_id = await self.hs.room_creator.create_room(system, body)
        await self.store.set_notices_room(user_id, room_id)

        def tag(current: dict[str, Any] | None) -> dict[str, Any]:
            tags = dict((current or {}).get("tags") or {})
            tags[NOTICE_TAG] = {"order": 0.5}
            return {**(current or {}), "tags": tags}

        await self.hs.account_data_stream.update(user_id, room_id, TAG_TYPE, tag)
        await self._maybe_join(user_id, room_id, config)
        logger.info("made server notices room %s for %s", room_id, user_id)
        return room_id

    async def _maybe_join(self, user_id: str, room_id: str, config: ServerNoticesConfig) -> None:
        if config.auto_join:
            from hs.services.auth import Requester

            await self.hs.room_membership.update_membership(Requester(user_id, "", ""), room_id, user_id, "join",
                                                            ratelimit=False)
