"""Events are built on the room's head before it is persisted (group commit): an event waiting in the
room's queue must count for the events built after it, in the state they see and in their auth
events. A power levels change still queued (behind a batch being persisted) must already stop a
message its new levels forbid."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hs.errors import MatrixError
from tests.harness import ok, user


@pytest.mark.parametrize("room_version", ["1", "10", "12"])
async def test_a_queued_state_change_applies_to_the_next_event(make_server: Any, engine: str,
                                                               room_version: str) -> None:
    server = await make_server(engine)
    hs = server.hs
    owner = await user(server, "owner")
    guest = await user(server, "guest")
    room = (await ok(owner, "POST", "/createRoom", {"preset": "public_chat", "room_version": room_version}))["room_id"]
    await ok(guest, "POST", f"/join/{room}", {})
    assert owner.user_id is not None and guest.user_id is not None

    # Hold the room's next batch in the database so that what follows waits in the queue.
    sender = hs.event_sender
    real_persist = sender._persist_batch
    release = asyncio.Event()
    holding = asyncio.Event()

    async def slow_persist(room_id: str, batch: Any) -> None:
        if not holding.is_set():
            holding.set()
            await release.wait()
        await real_persist(room_id, batch)

    sender._persist_batch = slow_persist  # type: ignore[method-assign]
    first = asyncio.create_task(sender.send(room, owner.user_id, "m.room.message", {"msgtype": "m.text", "body": "1"}))
    await holding.wait()
    levels = (await ok(owner, "GET", f"/rooms/{room}/state/m.room.power_levels"))
    levels["events_default"] = 50
    raise_levels = asyncio.create_task(sender.send(room, owner.user_id, "m.room.power_levels", levels, state_key=""))
    await asyncio.sleep(0.05)  # the change is built and queued behind the held batch
    guest_send = asyncio.create_task(
        sender.send(room, guest.user_id, "m.room.message", {"msgtype": "m.text", "body": "not allowed now"}))
    done, _ = await asyncio.wait([guest_send], timeout=5)
    release.set()
    # Refused at once; had it been accepted it would be waiting in the queue behind the held batch.
    assert done, "the message was accepted: the queued power levels were not applied"
    with pytest.raises(MatrixError) as refused:
        await guest_send
    assert refused.value.code == 403
    await first
    await raise_levels
    # Once persisted, the same holds (and nothing half-built was left behind).
    status, _ = await guest.request("PUT", f"/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "x"})
    assert status == 403
    await ok(owner, "PUT", f"/rooms/{room}/send/m.room.message/t2", {"msgtype": "m.text", "body": "still fine"})
