"""What the bridge tests (mautrix-python bridges against hs) share: waiting for a condition, a short
appservice backoff, and a nio user's wait for a decrypted message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nio
import pytest

from hs.appservice.sender import AppServiceSender


async def until(check: Any, what: str = "the condition", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused transaction retried within tenths of a second (the real backoff starts at 1 s)."""
    monkeypatch.setattr(AppServiceSender, "BACKOFF_BASE_S", 0.05)
    monkeypatch.setattr(AppServiceSender, "MAX_BACKOFF_S", 0.4)


async def nio_receive(client: nio.AsyncClient, room_id: str, body: str, attempts: int = 6) -> nio.RoomMessageText:
    """Sync until the decrypted message arrives; fail on one nio could not decrypt."""
    for _ in range(attempts):
        res = await client.sync(timeout=2000)
        assert isinstance(res, nio.SyncResponse), res
        room = res.rooms.join.get(room_id)
        for ev in room.timeline.events if room else []:
            if isinstance(ev, nio.RoomMessageText) and ev.body == body:
                return ev
            if isinstance(ev, nio.MegolmEvent):
                pytest.fail(f"nio could not decrypt {ev.event_id} (session {ev.session_id})")
    pytest.fail(f"{client.user_id} never received {body!r}")
