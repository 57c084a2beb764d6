"""The metrics an operator's dashboard reads, scraped over HTTP from a running server's metrics
resource: build info, cache statistics, event persistence lag, parked /sync long-polls and replication
lag; and every metric deploy/grafana/hs-dashboard.json charts exists.

Why: a renamed or never-registered metric turns a dashboard panel silently empty."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from hs.metrics import REPLICATION_LAG
from hs.streams.notifier import Notifier
from tests.harness import TestHomeServer

SQLITE_ONLY = pytest.mark.parametrize("engine", ["sqlite"])
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "hs-dashboard.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: TestHomeServer) -> tuple[set[str], Samples]:
    """(family names, {(sample name, labels): value}) of one scrape."""
    async with aiohttp.ClientSession() as s, s.get(server.base_url + "/_synapse/metrics") as r:
        assert r.status == 200
        text = await r.text()
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@SQLITE_ONLY
async def test_new_metrics_exist_and_move(server: TestHomeServer) -> None:
    c = server.client()
    await c.register("metrics_alice")
    room = await c.create_room()
    families, before = await scrape(server)
    for name in ("hs_build_info", "synapse_util_caches_cache_hits", "synapse_util_caches_cache_misses",
                 "synapse_util_caches_cache_size", "synapse_util_caches_cache_max_size",
                 "synapse_util_caches_cache_evicted_size", "hs_event_persistence_lag_seconds",
                 "hs_sync_waiters", "hs_replication_stream_lag", "hs_pusher_queued_notifications"):
        assert name in families, name
    assert total(before, "hs_build_info") >= 1
    for i in range(3):
        await c.send_message(room, f"hello {i}")
        await c.sync(None, 0)
    _, after = await scrape(server)
    lag = "hs_event_persistence_lag_seconds_count"
    assert total(after, lag, origin="local") >= total(before, lag, origin="local") + 3
    assert total(after, "synapse_util_caches_cache_hits") > total(before, "synapse_util_caches_cache_hits")
    assert total(after, "synapse_util_caches_cache_size") > 0
    await c.close()


@SQLITE_ONLY
async def test_sync_waiters_counts_parked_long_polls(server: TestHomeServer) -> None:
    c = server.client()
    await c.register("metrics_bob")
    await c.create_room()
    first = await c.sync(None, 0)
    _, idle = await scrape(server)
    poll = asyncio.create_task(c.sync(first["next_batch"], 30_000))
    parked = idle
    for _ in range(100):
        await asyncio.sleep(0.05)
        _, parked = await scrape(server)
        if total(parked, "hs_sync_waiters") > total(idle, "hs_sync_waiters"):
            break
    assert total(parked, "hs_sync_waiters") == total(idle, "hs_sync_waiters") + 1
    await c.create_room()  # wakes the long-poll
    await asyncio.wait_for(poll, 10)
    await c.close()


async def test_replication_lag_is_each_writer_ahead_of_the_slowest() -> None:
    notifier = Notifier()
    notifier.advance("lagtest", 5, {"w1": 5, "w2": 12})
    assert REPLICATION_LAG.labels("lagtest", "w2")._value.get() == 7
    assert REPLICATION_LAG.labels("lagtest", "w1")._value.get() == 0


def dashboard_metrics() -> set[str]:
    """Metric names the dashboard's queries read, with the _bucket/_total/... sample suffixes off."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    names = set()
    for expr in exprs:
        for name in re.findall(r"\b((?:hs|synapse|process)_[a-z0-9_]+)", expr):
            names.add(re.sub(r"_(bucket|count|sum|total)$", "", name))
    return names


def registered_metrics() -> set[str]:
    """Every family registered in this process, including those only a worker exports (a federation
    sender's queues): importing the server imports their modules."""
    import hs.appservice.api
    import hs.federation.event_handler
    import hs.federation.sender
    import hs.server  # noqa: F401

    return {family.name for family in REGISTRY.collect()}


@SQLITE_ONLY
async def test_every_dashboard_metric_exists(server: TestHomeServer) -> None:
    c = server.client()
    await c.register("metrics_carol")
    await c.send_message(await c.create_room(), "hi")
    families, _ = await scrape(server)
    wanted = dashboard_metrics()
    assert {"hs_build_info", "synapse_util_caches_cache_hits", "hs_replication_stream_lag"} <= wanted
    missing = wanted - families - registered_metrics()
    assert not missing, f"the dashboard charts metrics nothing exports: {sorted(missing)}"
    # The main process's own scrape has the bulk of them (not only the registry).
    assert len(wanted & families) >= len(wanted) - 8
    await c.close()
