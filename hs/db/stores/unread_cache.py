"""Users' unread notification counts per room, cached so that a /sync needs no query for them.

Every joined room in a /sync carries its unread counts (`event_push_summary`). The counts change in
three ways, and the cache follows each:
* an events writer increments them as it persists events: it reads the new values back in the same
  transaction and sets them here (`set_counts`), so on the writer, the process a monolith's /sync runs
  in, the entries stay current and a /sync woken by a new message needs no query (a monolith's writer
  commits notifications just after the events: it adds them here first, `add_counts`, and sets the
  committed values when they commit);
* other processes only learn that a writer persisted events in a room, and drop the room's entries;
* a read receipt or a redaction recounts them: the affected entries are dropped.
A read that raced a change to its room is not stored (a per-room generation tells), so a value read
before a commit can never overwrite the newer one.
"""

from __future__ import annotations

from hs.util import LruCache

Threads = dict[str, tuple[int, int]]  # thread -> (notification count, highlight count)


class UnreadCountsCache:
    def __init__(self, max_entries: int = 100000) -> None:
        # (user, room) -> (the room's epoch when stored, counts); an entry from an older epoch is stale.
        self._entries: LruCache[tuple[str, str], tuple[int, Threads]] = LruCache(max_entries, name="db.stores.unread_cache.self._entries")
        # room -> [epoch, writes]: `epoch` moves when all the room's entries become stale, `writes`
        # on any change at all (a read that saw `writes` move may be older than the change).
        self._rooms: dict[str, list[int]] = {}
        self._clears = 0  # bumped by `clear`

    def get(self, user_id: str, room_id: str) -> Threads | None:
        entry = self._entries.get((user_id, room_id))
        if entry is None or entry[0] != self._room(room_id)[0]:
            return None
        return entry[1]

    def generation(self, room_id: str) -> tuple[int, int, int]:
        room = self._room(room_id)
        return self._clears, room[0], room[1]

    def fill(self, user_id: str, room_id: str, threads: Threads, generation: tuple[int, int, int]) -> None:
        """Store what was read from the database, unless the room changed while it was read."""
        if self.generation(room_id) != generation:
            return
        self._entries.set((user_id, room_id), (generation[1], dict(threads)))

    def set_counts(self, room_id: str, counts: list[tuple[str, str, int, int]]) -> None:
        """The writer's committed values (user, thread, notifications, highlights) for this room."""
        room = self._room(room_id)
        room[1] += 1
        for user_id, thread_id, notifs, highlights in counts:
            entry = self._entries.get((user_id, room_id))
            if entry is not None and entry[0] == room[0]:
                entry[1][thread_id] = (notifs, highlights)

    def add_counts(self, room_id: str, deltas: dict[tuple[str, str], tuple[int, int]]) -> None:
        """Increments (user, thread) -> (notifications, highlights) from events whose notifications
        are not committed yet (see `PushStore.counts_pending`); cached entries move at once."""
        room = self._room(room_id)
        room[1] += 1
        for (user_id, thread_id), (notifs, highlights) in deltas.items():
            entry = self._entries.get((user_id, room_id))
            if entry is not None and entry[0] == room[0]:
                n, h = entry[1].get(thread_id, (0, 0))
                entry[1][thread_id] = (n + notifs, h + highlights)

    def invalidate_room(self, room_id: str) -> None:
        room = self._room(room_id)
        room[0] += 1
        room[1] += 1

    def invalidate(self, user_id: str, room_id: str) -> None:
        self._room(room_id)[1] += 1
        self._entries.pop((user_id, room_id))

    def clear(self) -> None:
        self._clears += 1
        self._entries.clear()

    def _room(self, room_id: str) -> list[int]:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = [0, 0]
        return room
