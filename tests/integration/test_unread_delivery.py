"""The /sync response that delivers an event carries unread counts that include it (a client shows
the badge with the message, not one sync later: later syncs leave an unchanged room out), whether
the sync was long-polling when the event arrived or came just after, on both engines. The cluster
runs the same scenarios (tests/cluster/test_cluster_unread.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.harness import Client, ok, user

Json = dict[str, Any]
# Three messages in a DM, the last mentioning the receiver: (notification_count, highlight_count)
# after each.
EXPECTED = [(1, 0), (2, 0), (3, 1)]


async def a_direct_chat_between(alice: Client, bob: Client) -> str:
    room = await alice.create_room(preset="trusted_private_chat", is_direct=True, invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    # No read receipt: the invite notified Bob, but his join is where he has read up to (Synapse's
    # rule), so his counts start at 0.
    return room


async def send(client: Client, room: str, body: str, mentions: list[str] | None = None) -> str:
    content: Json = {"msgtype": "m.text", "body": body}
    if mentions is not None:
        content["m.mentions"] = {"user_ids": mentions}
    data = await ok(client, "PUT", f"/rooms/{room}/send/m.room.message/{uuid.uuid4().hex}", content)
    return str(data["event_id"])


def delivered(res: Json, room: str) -> list[str]:
    entry = res["rooms"]["join"].get(room)
    return [] if entry is None else [e["event_id"] for e in entry["timeline"]["events"]]


def counts(res: Json, room: str) -> tuple[int, int]:
    n = res["rooms"]["join"][room]["unread_notifications"]
    return n["notification_count"], n["highlight_count"]


async def sync_until_delivered(bob: Client, since: str, room: str, event_id: str, timeout: int) -> Json:
    """Bob's syncs from `since` until one delivers `event_id` (a long-poll may wake for something
    else first, and a cluster's sync worker may learn of the event a moment after the send
    returned); returns that one."""
    for _ in range(50):
        res = await bob.sync(since, timeout=timeout)
        if event_id in delivered(res, room):
            return res
        since = res["next_batch"]
        if not timeout:
            await asyncio.sleep(0.02)
    raise AssertionError(f"{event_id} never delivered")


async def start_counting(bob: Client, room: str) -> str:
    start = await bob.sync()
    assert counts(start, room) == (0, 0)
    return str(start["next_batch"])


async def each_delivering_sync_counts(alice: Client, bob: Client, room: str) -> None:
    """Bob syncs (without waiting) after each message."""
    since = await start_counting(bob, room)
    for i, want in enumerate(EXPECTED):
        mentions = [bob.user_id] if i == len(EXPECTED) - 1 else None
        event_id = await send(alice, room, f"message {i}", mentions)
        res = await sync_until_delivered(bob, since, room, event_id, 0)
        assert counts(res, room) == want, (i, res["rooms"]["join"][room])
        since = res["next_batch"]


async def each_woken_long_poll_counts(alice: Client, bob: Client, room: str) -> None:
    """Bob is long-polling when each message is sent."""
    since = await start_counting(bob, room)
    for i, want in enumerate(EXPECTED):
        mentions = [bob.user_id] if i == len(EXPECTED) - 1 else None
        polling = asyncio.create_task(bob.sync(since, timeout=10000))
        await asyncio.sleep(0.05)  # the long-poll is waiting when the event arrives
        event_id = await send(alice, room, f"message {i}", mentions)
        res = await polling
        if event_id not in delivered(res, room):
            res = await sync_until_delivered(bob, res["next_batch"], room, event_id, 10000)
        assert counts(res, room) == want, (i, res["rooms"]["join"][room])
        since = res["next_batch"]


async def a_direct_chat(server: Any) -> tuple[Client, Client, str]:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    return alice, bob, await a_direct_chat_between(alice, bob)


async def test_the_sync_delivering_an_event_counts_it(server: Any) -> None:
    alice, bob, room = await a_direct_chat(server)
    await each_delivering_sync_counts(alice, bob, room)


async def test_the_long_poll_woken_by_an_event_counts_it(server: Any) -> None:
    alice, bob, room = await a_direct_chat(server)
    await each_woken_long_poll_counts(alice, bob, room)
