"""The unread-counts cache: writer updates in place, invalidations, and reads racing a change."""

from __future__ import annotations

from hs.db.stores.unread_cache import UnreadCountsCache


def test_a_writer_update_changes_cached_entries_only() -> None:
    cache = UnreadCountsCache()
    cache.fill("@a", "!r", {"main": (1, 0)}, cache.generation("!r"))
    cache.set_counts("!r", [("@a", "main", 2, 1), ("@b", "main", 5, 0)])
    assert cache.get("@a", "!r") == {"main": (2, 1)}
    assert cache.get("@b", "!r") is None  # not cached: read from the database when asked


def test_a_read_that_raced_a_change_is_not_stored() -> None:
    cache = UnreadCountsCache()
    before = cache.generation("!r")
    cache.set_counts("!r", [("@a", "main", 3, 0)])  # committed while the read was in flight
    cache.fill("@a", "!r", {"main": (2, 0)}, before)
    assert cache.get("@a", "!r") is None
    before = cache.generation("!r")
    cache.clear()
    cache.fill("@a", "!r", {"main": (2, 0)}, before)
    assert cache.get("@a", "!r") is None


def test_invalidations() -> None:
    cache = UnreadCountsCache()
    for user in ("@a", "@b"):
        cache.fill(user, "!r", {"main": (1, 0)}, cache.generation("!r"))
    cache.fill("@a", "!other", {}, cache.generation("!other"))
    cache.invalidate("@a", "!r")
    assert cache.get("@a", "!r") is None and cache.get("@b", "!r") == {"main": (1, 0)}
    cache.invalidate_room("!r")
    assert cache.get("@b", "!r") is None and cache.get("@a", "!other") == {}


def test_a_room_invalidation_makes_every_entry_of_the_room_stale_without_tracking_its_users() -> None:
    cache = UnreadCountsCache()
    for user in ("@a", "@b"):
        cache.fill(user, "!r", {"main": (1, 0)}, cache.generation("!r"))
    cache.invalidate_room("!r")
    assert cache.get("@a", "!r") is None and cache.get("@b", "!r") is None
    # A writer update after the invalidation does not revive a stale entry.
    cache.set_counts("!r", [("@a", "main", 9, 0)])
    assert cache.get("@a", "!r") is None
    cache.fill("@a", "!r", {"main": (9, 0)}, cache.generation("!r"))
    assert cache.get("@a", "!r") == {"main": (9, 0)}
