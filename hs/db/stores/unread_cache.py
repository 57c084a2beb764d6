"""Users' unread notification counts per room, cached so that a /sync needs no query for them.

Every joined room in a /sync carries its unread counts (`event_push_summary`). The counts change in
three ways, and the cache follows each:
* an events writer increments them as it persists events: it reads the new values back in the same
  transaction and sets them here (`set_counts`), so on the writer, the process a monolith's /sync runs
  in, the entries stay current and a /sync woken by a new message needs no query;
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
        self._entries: LruCache[tuple[str, str], Threads] = LruCache(max_entries)
        self._users_by_room: dict[str, set[str]] = {}
        self._room_generation: dict[str, int] = {}
        self._epoch = 0  # bumped by `clear`

    def get(self, user_id: str, room_id: str) -> Threads | None:
        return self._entries.get((user_id, room_id))

    def generation(self, room_id: str) -> tuple[int, int]:
        return self._epoch, self._room_generation.get(room_id, 0)

    def fill(self, user_id: str, room_id: str, threads: Threads, generation: tuple[int, int]) -> None:
        """Store what was read from the database, unless the room changed while it was read."""
        if self.generation(room_id) != generation:
            return
        self._entries.set((user_id, room_id), dict(threads))
        self._users_by_room.setdefault(room_id, set()).add(user_id)

    def set_counts(self, room_id: str, counts: list[tuple[str, str, int, int]]) -> None:
        """The writer's committed values (user, thread, notifications, highlights) for this room."""
        self._bump(room_id)
        for user_id, thread_id, notifs, highlights in counts:
            threads = self._entries.get((user_id, room_id))
            if threads is not None:
                threads[thread_id] = (notifs, highlights)

    def invalidate_room(self, room_id: str) -> None:
        self._bump(room_id)
        for user_id in self._users_by_room.pop(room_id, ()):
            self._entries.pop((user_id, room_id))

    def invalidate(self, user_id: str, room_id: str) -> None:
        self._bump(room_id)
        self._entries.pop((user_id, room_id))

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._users_by_room.clear()

    def _bump(self, room_id: str) -> None:
        self._room_generation[room_id] = self._room_generation.get(room_id, 0) + 1
