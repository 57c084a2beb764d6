"""Who is making a request: access-token lookup (hashed, cached) and the resulting Requester, and
where each device was last seen (address, time, user agent), for GET /devices and admins' whois.

Reading the token, address and user agent from the HTTP request is the API layer's part
(`get_requester` in hs/api/base.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hs.errors import unknown_token
from hs.util import LruCache, now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

# As Synapse's LAST_SEEN_GRANULARITY: a device seen again from the same address and user agent is
# stored again only after this long, so a busy client costs a write every two minutes, not per request.
LAST_SEEN_GRANULARITY_MS = 120_000
MAX_USER_AGENT_LENGTH = 512
Sighting = tuple[str, str, int, str | None, str | None]  # user_id, device_id, ts, ip, user_agent


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str
    access_token: str
    is_guest: bool = False


class Auth:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._last_seen: LruCache[tuple[str, str], Sighting] = LruCache(100_000)
        self._unstored: dict[tuple[str, str], Sighting] = {}
        self._storing: asyncio.Task[None] | None = None

    async def authenticate(self, token: str) -> Requester:
        """The requester an access token belongs to, or 401 M_UNKNOWN_TOKEN."""
        info = await self.hs.user_store.get_token(token)
        if info is None:
            raise unknown_token()
        return Requester(info.user_id, info.device_id, token, info.is_guest)

    # -- where devices were last seen -------------------------------------------------------------------
    def saw(self, user_id: str, device_id: str, ip: str | None, user_agent: str | None) -> None:
        """Note the device's sighting; it is stored in the background (the request does not wait)."""
        agent = (user_agent or "")[:MAX_USER_AGENT_LENGTH] or None
        key = (user_id, device_id)
        now = now_ms()
        last = self._last_seen.get(key)
        if last is not None and last[3:] == (ip, agent) and now - last[2] < LAST_SEEN_GRANULARITY_MS:
            return
        sighting = (user_id, device_id, now, ip, agent)
        self._last_seen.set(key, sighting)
        self._unstored[key] = sighting
        if self._storing is None or self._storing.done():
            self._storing = asyncio.get_running_loop().create_task(self._store_sightings())

    async def _store_sightings(self) -> None:
        while self._unstored:
            batch = list(self._unstored.values())
            self._unstored = {}
            try:
                await self.hs.user_store.record_last_seen(batch)
            except Exception:  # a lost sighting is only a stale "last seen"
                logger.warning("could not store %d device sightings", len(batch), exc_info=True)

    async def sightings_stored(self) -> None:
        """Wait until this process's sightings so far are in the database (before devices are read)."""
        task = self._storing
        if task is not None and not task.done():
            await asyncio.shield(task)
