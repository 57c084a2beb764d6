"""What happens to an account after registration, beyond its password: devices deleted (with their
keys), logging out, and deactivation.

A deleted device takes its access tokens and pushers with it (hs/db/stores/users.py) and its keys and
undelivered to-device messages (the E2EE service, which also tells the users who share a room with
it), whichever endpoint deleted it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)


class AccountService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def delete_devices(self, user_id: str, device_ids: list[str] | None) -> list[str]:
        """Delete the user's devices (all when None) with their tokens, pushers and keys; returns the
        IDs of those that existed."""
        deleted: list[str] = await self.hs.user_store.delete_devices(user_id, device_ids)
        await self.hs.e2ee.on_devices_deleted(user_id, deleted)
        return deleted

    async def logout(self, requester: Requester) -> None:
        """End the requester's session: its token and its device."""
        await self.hs.user_store.delete_token(requester.access_token)
        await self.delete_devices(requester.user_id, [requester.device_id])

    async def logout_all(self, user_id: str) -> None:
        """End every session of the user: all devices, and any token left without one."""
        await self.delete_devices(user_id, None)
        await self.hs.user_store.delete_all_tokens(user_id)

    async def deactivate(self, user_id: str, erase: bool = False) -> None:
        """Deactivate the account: no password, no sessions, and out of every room it was in, invited
        to or knocking on. A room it cannot leave is logged and skipped.

        With `erase` the user is also marked erased (before leaving, so nothing they send is missed):
        their events stay in the rooms but are served pruned to whoever was not joined when they were
        sent (hs/services/visibility.py), and their display name and avatar are removed, which is what
        Synapse does with `erase: true`."""
        if erase:
            await self.hs.visibility.mark_erased(user_id)
        await self.hs.user_store.deactivate(user_id)
        await self.logout_all(user_id)
        rooms = await self.hs.event_store.get_rooms_for_user(user_id, ("join", "invite", "knock"))
        for room_id in rooms:
            try:
                await self.hs.event_sender.send(room_id, user_id, "m.room.member", {"membership": "leave"},
                                                state_key=user_id)
            except Exception:
                logger.warning("deactivating %s: could not leave %s", user_id, room_id, exc_info=True)
        if erase:
            # Synapse's erasure removes the profile too (after the leaves, so no membership event carries
            # the change; the events sent before keep the old values, as history does).
            for field in ("displayname", "avatar_url"):
                await self.hs.user_store.set_profile_field(user_id, field, None)
