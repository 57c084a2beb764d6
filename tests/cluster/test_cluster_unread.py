"""Unread counts through the cluster: the /sync response (on a generic worker) that delivers an
event carries counts that include it, though the event's persister is another process."""

from __future__ import annotations

import uuid

import pytest

from hs.localcluster import LocalCluster
from tests.harness import Client
from tests.integration.test_unread_delivery import (
    a_direct_chat_between,
    each_delivering_sync_counts,
    each_woken_long_poll_counts,
)

pytestmark = pytest.mark.timeout(300)


async def _pair(cluster: LocalCluster) -> tuple[Client, Client]:
    alice, bob = Client(cluster.base_url), Client(cluster.base_url)
    suffix = uuid.uuid4().hex[:6]
    await alice.register("alice" + suffix)
    await bob.register("bob" + suffix)
    return alice, bob


async def test_the_sync_delivering_an_event_counts_it_in_the_cluster(cluster: LocalCluster) -> None:
    alice, bob = await _pair(cluster)
    try:
        room = await a_direct_chat_between(alice, bob)
        await each_delivering_sync_counts(alice, bob, room)
    finally:
        await alice.close()
        await bob.close()


async def test_the_long_poll_woken_by_an_event_counts_it_in_the_cluster(cluster: LocalCluster) -> None:
    alice, bob = await _pair(cluster)
    try:
        room = await a_direct_chat_between(alice, bob)
        await each_woken_long_poll_counts(alice, bob, room)
    finally:
        await alice.close()
        await bob.close()


async def test_a_room_rule_without_actions_silences_the_room_in_the_cluster(cluster: LocalCluster) -> None:
    """The rule is written by main, the message evaluated on the room's persister."""
    from tests.harness import ok
    from tests.integration.test_unread_delivery import counts, send

    alice, bob = await _pair(cluster)
    try:
        room = await a_direct_chat_between(alice, bob)
        await ok(bob, "PUT", f"/pushrules/global/room/{room}", {"actions": []})
        await send(alice, room, "quiet")
        assert counts(await bob.sync(), room) == (0, 0)
        await ok(bob, "PUT", f"/pushrules/global/room/{room}/actions", {"actions": ["notify"]})
        await send(alice, room, "loud")
        assert counts(await bob.sync(), room) == (1, 0)
    finally:
        await alice.close()
        await bob.close()
