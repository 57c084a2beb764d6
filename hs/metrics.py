"""Process-wide Prometheus metrics that are not owned by one service: build info, LruCache
statistics, replication lag and event persistence lag.

Why here: the services import these (cheap module-level objects) without importing each other, and a
dashboard author finds every name in one place. Names follow Synapse where its dashboard looks for
them (`synapse_util_caches_*`), else `hs_*`.
"""

from __future__ import annotations

import platform
import weakref
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from prometheus_client import REGISTRY, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


def _version() -> str:
    try:
        return metadata.version("hs")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO = Gauge("hs_build_info", "Always 1: the labels say which build runs",
                   ["version", "python_version", "python_implementation"])
BUILD_INFO.labels(_version(), platform.python_version(), platform.python_implementation()).set(1)

# Per stream and writer: how far each writer's rows are held back in this process because the stream
# may only be served up to the minimum over its writers (a slow or stuck writer shows up as a growing
# lag on every other writer), and, on the writer itself, positions committed but not yet announced
# because an earlier position is still in flight.
REPLICATION_LAG = Gauge("hs_replication_stream_lag",
                        "Positions a writer has announced that this process cannot serve yet", ["stream", "writer"])

EVENT_PERSIST_LAG = Histogram(
    "hs_event_persistence_lag_seconds",
    "Time from an event's origin_server_ts to its persistence (local events: the send path)",
    ["origin"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


def observe_persisted(origin_server_ts_ms: int, now_ms: int, local: bool) -> None:
    """Record one event's creation-to-persisted lag (clock skew of remote servers can make it
    negative: clamped to 0)."""
    EVENT_PERSIST_LAG.labels("local" if local else "remote").observe(max(0, now_ms - origin_server_ts_ms) / 1000)


class _CacheCollector(Collector):
    """Reads the plain-int counters of every named LruCache at scrape time, so the hot path pays one
    integer increment and no prometheus_client call. Caches sharing a name (several servers in one
    test process, or one cache per instance of a class) are summed."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from hs.util import named_caches

        totals: dict[str, list[int]] = {}
        for cache in list(named_caches()):
            t = totals.setdefault(cache.name or "", [0, 0, 0, 0, 0])
            t[0] += cache.hits
            t[1] += cache.misses
            t[2] += len(cache)
            t[3] += cache.max_size
            t[4] += cache.evictions
        families = [
            GaugeMetricFamily("synapse_util_caches_cache_hits", "Cache lookups that found an entry", labels=["name"]),
            GaugeMetricFamily("synapse_util_caches_cache_misses", "Cache lookups that found nothing", labels=["name"]),
            GaugeMetricFamily("synapse_util_caches_cache_size", "Entries in the cache", labels=["name"]),
            GaugeMetricFamily("synapse_util_caches_cache_max_size", "The cache's capacity", labels=["name"]),
            GaugeMetricFamily("synapse_util_caches_cache_evicted_size", "Entries evicted for space", labels=["name"]),
        ]
        for name, values in sorted(totals.items()):
            for family, value in zip(families, values, strict=True):
                family.add_metric([name], value)
        yield from families

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_CACHE_COLLECTOR = _CacheCollector()
REGISTRY.register(_CACHE_COLLECTOR)


class _PusherCollector(Collector):
    """Pusher queues, read at scrape time from each PusherPool registered with `track_pusher_pool`
    (hs/services/pushers.py), so delivery pays nothing for them."""

    def __init__(self) -> None:
        self.pools: weakref.WeakSet[Any] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pushers = GaugeMetricFamily("hs_pushers", "Pushers with a delivery queue in this process")
        queued = GaugeMetricFamily("hs_pusher_queued_notifications", "Notifications waiting to be pushed")
        workers = [w for pool in list(self.pools) for w in getattr(pool, "_workers", {}).values()]
        pushers.add_metric([], len(workers))
        queued.add_metric([], sum(len(getattr(w, "queue", ())) for w in workers))
        yield pushers
        yield queued

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_PUSHER_COLLECTOR = _PusherCollector()
REGISTRY.register(_PUSHER_COLLECTOR)


def track_pusher_pool(pool: object) -> None:
    """Export this PusherPool's queues (call from its constructor)."""
    _PUSHER_COLLECTOR.pools.add(pool)
