"""Typing notifications of local and remote users, and their `m.typing` EDUs to the other servers.

The typing stream (hs/streams/typing.py) holds who types where; this service is the way in for both
sources and tells other servers about local users:

* a local user's start, stop and expiry go to every other server in the room as `m.typing`; a user
  who keeps typing (the client refreshes) is re-announced at most every `FEDERATION_PING_INTERVAL_MS`
  so that the other servers, which time remote typing out by themselves, keep showing them;
* a remote user's `m.typing` (checked by hs/federation/edus.py) counts for `REMOTE_TIMEOUT_MS`, since
  the EDU carries no timeout: Synapse's values, so the two sides agree.

Runs on the typing stream's writer (the client route and inbound EDUs are served there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from hs.events.auth import get_domain

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

TYPING_EDU = "m.typing"
# A remote user typing counts this long unless their server says they stopped (Synapse: 60 s).
REMOTE_TIMEOUT_MS = 60_000
# A local user still typing is re-sent to other servers this often at most (Synapse: 40 s).
FEDERATION_PING_INTERVAL_MS = 40_000


class TypingService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.stream = hs.typing_stream
        self.server_name = hs.server_name
        # (room, user) -> when we last told other servers the user was typing (monotonic seconds).
        self._announced: dict[tuple[str, str], float] = {}
        # EDUs leave in the order the changes happened (asyncio locks are fair).
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        if self.stream.is_writer:
            self.stream.on_user_typing = self._on_user_typing

    async def set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        """A local user's PUT /typing (membership checked by the caller)."""
        await self.stream.set_typing(room_id, user_id, typing, timeout_ms)

    async def receive_remote(self, room_id: str, user_id: str, typing: bool) -> None:
        """A remote user's `m.typing`, its origin and membership already checked."""
        await self.stream.set_typing(room_id, user_id, typing, REMOTE_TIMEOUT_MS)

    def _on_user_typing(self, room_id: str, user_id: str, typing: bool, changed: bool) -> None:
        if get_domain(user_id) != self.server_name or not self.hs.sends_federation:
            return
        key = (room_id, user_id)
        now = time.monotonic()
        if not typing:
            self._announced.pop(key, None)
        else:
            last = self._announced.get(key)
            if not changed and last is not None and (now - last) * 1000 < FEDERATION_PING_INTERVAL_MS:
                return
            self._announced[key] = now
        task = asyncio.get_running_loop().create_task(self._send(room_id, user_id, typing))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, room_id: str, user_id: str, typing: bool) -> None:
        async with self._send_lock:
            try:
                await self.hs.federation_outbox.send_edu_to_room(
                    room_id, TYPING_EDU, {"room_id": room_id, "user_id": user_id, "typing": typing})
            except Exception:
                logger.exception("could not queue typing of %s in %s for other servers", user_id, room_id)
