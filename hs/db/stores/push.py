"""Push rules (users' own rules and their changes to server-default rules) and push actions.

Every push rule write also records the user's new push_rules stream position, in the same
transaction. Each event that notified someone has one `event_notifications` row naming the users it
notified (and highlighted); each user's unread counts per room and thread are kept in
`event_push_summary`, incremented as events are persisted and recounted from the notifications after
the user's read receipts (the later of m.read and m.read.private; an unthreaded receipt covers every
thread, a threaded one its thread) when a receipt or a redaction changes them. A user without an
unthreaded receipt has read up to their current membership event, as in Synapse: joining a room (a
DM one was invited to) starts its counts at 0, though the invite notified them (their summary is
recounted as the join is persisted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.unread_cache import UnreadCountsCache
from hs.events.event import Event
from hs.util import KeyedLocks, json_dumps, json_loads

JsonDict = dict[str, Any]
# The `stream_positions` row below which every event a writer persisted has its notifications (see
# hs/db/stores/event_batch.py).
NOTIFIED_UPTO = "event_notifications"
# The first key of the PostgreSQL advisory lock on a room's unread summaries (the second is a hash of
# the room ID), held by every transaction that writes them: see `lock_unread_counts`.
UNREAD_COUNTS_LOCK = 0x756E7264  # "unrd"
# The same lock taken inside one statement, for data-modifying CTEs ($1 the room ID).
UNREAD_COUNTS_LOCK_SQL = f"SELECT pg_advisory_xact_lock({UNREAD_COUNTS_LOCK}, hashtext($1))"
PushRow = tuple[str, str, int, str, str, bool]  # user, room, stream_ordering, thread, event_id, highlight
SummaryRow = tuple[str, str, str, int, int]  # room, user, thread, notification count, highlight count


class PendingBatches:
    """Rooms whose newest events committed before the rest of their batch: notifications, unread
    counts, transaction IDs, forward extremity (a monolith's writer stores those a moment later, see
    hs/db/stores/event_batch.py). Whoever reads or recounts a room's unread counts, or reads its
    stored extremity, waits for them first; the writer's memory already has them."""

    def __init__(self) -> None:
        self._rooms: dict[str, tuple[list[int], asyncio.Future[None]]] = {}

    def start(self, room_id: str) -> None:
        entry = self._rooms.get(room_id)
        if entry is None:
            entry = self._rooms[room_id] = ([0], asyncio.get_running_loop().create_future())
        entry[0][0] += 1

    def done(self, room_id: str) -> None:
        entry = self._rooms[room_id]
        entry[0][0] -= 1
        if entry[0][0] == 0:
            del self._rooms[room_id]
            entry[1].set_result(None)

    async def settled(self, room_id: str) -> None:
        entry = self._rooms.get(room_id)
        if entry is not None:
            await asyncio.shield(entry[1])


# One rule of a user's: (user_id, kind, rule_id) as $1, $2, $3.
RULE = "WHERE user_id = $1 AND kind = $2 AND rule_id = $3"


class PushStore:
    def __init__(self, db: Database) -> None:
        self.unread = UnreadCountsCache()
        self.pending = PendingBatches()
        # Held around every write to a room's unread summaries in this process (increments with
        # persisted events, recounts after a read receipt): a recount that reads the notifications
        # while an increment commits would otherwise overwrite the increment. Across processes (a
        # cluster) the transactions also take `lock_unread_counts`.
        self.count_locks = KeyedLocks()
        self.db = db

    # -- rules ---------------------------------------------------------------------------------------
    async def get_user_rules(self, user_id: str) -> list[JsonDict]:
        """The user's own rules: kind, rule_id, conditions, pattern, actions, enabled; by priority."""
        rows = await self.db.fetch(
            "SELECT kind, rule_id, priority, conditions, pattern, actions, enabled FROM push_rules"
            " WHERE user_id = $1 ORDER BY kind, priority DESC", user_id)
        return [{
            "kind": r["kind"], "rule_id": r["rule_id"],
            "conditions": None if r["conditions"] is None else json_loads(r["conditions"]),
            "pattern": r["pattern"], "actions": json_loads(r["actions"]), "enabled": bool(r["enabled"]),
        } for r in rows]

    async def get_default_changes(self, user_id: str) -> dict[tuple[str, str], JsonDict]:
        """(kind, rule_id) -> {"enabled": bool | None, "actions": list | None} for default rules."""
        rows = await self.db.fetch(
            "SELECT kind, rule_id, enabled, actions FROM push_rules_defaults WHERE user_id = $1", user_id)
        return {(r["kind"], r["rule_id"]): {
            "enabled": None if r["enabled"] is None else bool(r["enabled"]),
            "actions": None if r["actions"] is None else json_loads(r["actions"]),
        } for r in rows}

    @staticmethod
    async def _bump(c: Connection, user_id: str, stream_id: int) -> None:
        await c.execute(
            "INSERT INTO push_rules_stream (user_id, stream_id) VALUES ($1, $2)"
            " ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id", user_id, stream_id)

    @staticmethod
    async def _set_attrs(c: Connection, table: str, rule: tuple[str, str, str], enabled: bool | None,
                         actions: list[Any] | None) -> None:
        """Set a rule's `enabled` and/or `actions` (None: leave it) in `table` (the user's own rules or
        their changes to the defaults); `rule` is (user_id, kind, rule_id)."""
        assert table in ("push_rules", "push_rules_defaults")
        if enabled is not None:
            await c.execute(f"UPDATE {table} SET enabled = $4 {RULE}", *rule, 1 if enabled else 0)
        if actions is not None:
            await c.execute(f"UPDATE {table} SET actions = $4 {RULE}", *rule, json_dumps(actions))

    async def replace_kind(self, user_id: str, kind: str, rules: Sequence[JsonDict], stream_id: int) -> None:
        """Rewrite the user's rules of one kind, most important first."""

        async def txn(c: Connection) -> None:
            await c.execute("DELETE FROM push_rules WHERE user_id = $1 AND kind = $2", user_id, kind)
            n = len(rules)
            await c.executemany(
                "INSERT INTO push_rules (user_id, kind, rule_id, priority, conditions, pattern, actions, enabled)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [(user_id, kind, r["rule_id"], n - i,
                  None if r.get("conditions") is None else json_dumps(r["conditions"]),
                  r.get("pattern"), json_dumps(r["actions"]), 1 if r.get("enabled", True) else 0)
                 for i, r in enumerate(rules)])
            await self._bump(c, user_id, stream_id)

        await self.db.run_transaction("replace_push_rules", txn)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str, stream_id: int) -> bool:
        async def txn(c: Connection) -> bool:
            if not await c.fetchval(f"SELECT 1 FROM push_rules {RULE}", user_id, kind, rule_id):
                return False
            await c.execute(f"DELETE FROM push_rules {RULE}", user_id, kind, rule_id)
            await self._bump(c, user_id, stream_id)
            return True

        return await self.db.run_transaction("delete_push_rule", txn)

    async def set_user_rule_attr(self, user_id: str, kind: str, rule_id: str, enabled: bool | None,
                                 actions: list[Any] | None, stream_id: int) -> bool:
        async def txn(c: Connection) -> bool:
            if not await c.fetchval(f"SELECT 1 FROM push_rules {RULE}", user_id, kind, rule_id):
                return False
            await self._set_attrs(c, "push_rules", (user_id, kind, rule_id), enabled, actions)
            await self._bump(c, user_id, stream_id)
            return True

        return await self.db.run_transaction("set_push_rule_attr", txn)

    async def set_default_rule_attr(self, user_id: str, kind: str, rule_id: str, enabled: bool | None,
                                    actions: list[Any] | None, stream_id: int) -> None:
        async def txn(c: Connection) -> None:
            await c.execute(
                "INSERT INTO push_rules_defaults (user_id, kind, rule_id, enabled, actions)"
                " VALUES ($1, $2, $3, NULL, NULL) ON CONFLICT (user_id, kind, rule_id) DO NOTHING",
                user_id, kind, rule_id)
            await self._set_attrs(c, "push_rules_defaults", (user_id, kind, rule_id), enabled, actions)
            await self._bump(c, user_id, stream_id)

        await self.db.run_transaction("set_default_push_rule_attr", txn)

    async def get_user_stream_id(self, user_id: str) -> int:
        return int(await self.db.fetchval(
            "SELECT stream_id FROM push_rules_stream WHERE user_id = $1", user_id) or 0)

    async def max_stream_id(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM push_rules_stream") or 0)

    # -- notifications -------------------------------------------------------------------------------
    async def write_push_actions(self, c: Connection, rows: Sequence[PushRow], redacted: Sequence[str] = (),
                                 joined: Sequence[tuple[str, str]] = ()) -> list[SummaryRow]:
        """Inside the events' transaction: rows (user_id, room_id, stream_ordering, thread_id, event_id,
        highlight) become one notification row per event and increments of each user's unread summary
        (except for what the user's read receipt already covers); redacted events' notifications are
        dropped and their users recounted, and so are the (user, room) pairs that just `joined` (their
        join is where they read from, see `recompute_push_summary`: the caller drops their cached
        counts). Returns the incremented summary rows' new values, for `UnreadCountsCache.set_counts`
        once the transaction commits."""
        updated: list[SummaryRow] = []
        if rows:
            await c.executemany(
                "INSERT INTO event_notifications (room_id, stream_ordering, event_id, thread_id, notify_users,"
                " highlight_users) VALUES ($1, $2, $3, $4, $5, $6)", notification_rows(rows))
            updated = await self._increment_summary(c, rows)
        affected: set[tuple[str, str]] = set(joined)
        for event_id in redacted:
            for r in await c.fetch(
                    "SELECT n.room_id, n.stream_ordering, n.notify_users FROM event_notifications n"
                    " JOIN events e ON e.room_id = n.room_id AND e.stream_ordering = n.stream_ordering"
                    " WHERE e.event_id = $1", event_id):
                affected.update((u, r["room_id"]) for u in json_loads(r["notify_users"]))
                await c.execute("DELETE FROM event_notifications WHERE room_id = $1 AND stream_ordering = $2",
                                r["room_id"], r["stream_ordering"])
        for user_id, room_id in sorted(affected):
            await recompute_push_summary(c, user_id, room_id)
        return updated

    async def get_notified_upto(self, instance: str) -> int | None:
        """The writer's mark below which every event it persisted has its notifications stored."""
        value = await self.db.fetchval(
            "SELECT position FROM stream_positions WHERE stream_name = $1 AND instance_name = $2",
            NOTIFIED_UPTO, instance)
        return None if value is None else int(value)

    async def forget_notified_upto(self, instance: str) -> None:
        await self.db.execute("DELETE FROM stream_positions WHERE stream_name = $1 AND instance_name = $2",
                              NOTIFIED_UPTO, instance)

    @staticmethod
    async def _increment_summary(c: Connection, rows: Sequence[PushRow]) -> list[SummaryRow]:
        receipts: dict[tuple[str, str], dict[str, int]] = {}
        for room_id in sorted({r[1] for r in rows}):
            await lock_unread_counts(c, room_id)
            users = sorted({r[0] for r in rows if r[1] == room_id})
            placeholders = ",".join(f"${n + 2}" for n in range(len(users)))
            for rec in await c.fetch(
                    "SELECT user_id, thread_id, MAX(event_stream_ordering) AS pos FROM receipts"
                    f" WHERE room_id = $1 AND user_id IN ({placeholders})"
                    " AND receipt_type IN ('m.read', 'm.read.private') GROUP BY user_id, thread_id",
                    room_id, *users):
                receipts.setdefault((rec["user_id"], room_id), {})[rec["thread_id"]] = int(rec["pos"])
        deltas: dict[tuple[str, str, str], list[int]] = {}
        for user_id, room_id, position, thread_id, _, highlight in rows:
            read = receipts.get((user_id, room_id), {})
            if position <= max(read.get("", 0), read.get(thread_id, 0)):
                continue  # already read (a receipt raced this evaluation)
            d = deltas.setdefault((user_id, room_id, thread_id), [0, 0])
            d[0] += 1
            d[1] += int(highlight)
        await c.executemany(
            "INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count, highlight_count)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET"
            " notif_count = event_push_summary.notif_count + excluded.notif_count,"
            " highlight_count = event_push_summary.highlight_count + excluded.highlight_count",
            [(u, r, t, n, h) for (u, r, t), (n, h) in sorted(deltas.items())])
        updated: list[SummaryRow] = []
        for room_id in sorted({r for _, r, _ in deltas}):
            users = sorted({u for u, r, _ in deltas if r == room_id})
            placeholders = ",".join(f"${n + 2}" for n in range(len(users)))
            updated += [(room_id, r["user_id"], r["thread_id"], int(r["notif_count"]), int(r["highlight_count"]))
                        for r in await c.fetch(
                            "SELECT user_id, thread_id, notif_count, highlight_count FROM event_push_summary"
                            f" WHERE room_id = $1 AND user_id IN ({placeholders})", room_id, *users)]
        return updated

    async def get_unread_counts(self, user_id: str, room_ids: list[str], upto: int,
                                ) -> dict[str, dict[str, tuple[int, int]]]:
        """room -> thread -> (notification_count, highlight_count), from the summary (via the cache).

        `upto` is accepted for the caller's range but not applied: the summary may include a
        notification for an event persisted a moment ago that this sync's timeline does not show yet."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        missing = []
        for room_id in room_ids:
            cached = self.unread.get(user_id, room_id)
            if cached is None:
                missing.append(room_id)
            elif any(n or h for n, h in cached.values()):
                out[room_id] = {t: c for t, c in cached.items() if c[0] or c[1]}
        # Taken before waiting: while this waits for one room's pending notifications, another
        # room's events may commit with theirs still to come (their counts in the cache only), and
        # what is then read of that room must not be cached (its generation moved).
        generations = {room_id: self.unread.generation(room_id) for room_id in missing}
        for room_id in missing:
            await self.pending.settled(room_id)
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            placeholders = ",".join(f"${n + 2}" for n in range(len(chunk)))
            rows = await self.db.fetch(
                "SELECT room_id, thread_id, notif_count, highlight_count FROM event_push_summary"
                f" WHERE user_id = $1 AND room_id IN ({placeholders})", user_id, *chunk)
            read: dict[str, dict[str, tuple[int, int]]] = {room_id: {} for room_id in chunk}
            for r in rows:
                read[r["room_id"]][r["thread_id"]] = (int(r["notif_count"]), int(r["highlight_count"]))
            for room_id, threads in read.items():
                self.unread.fill(user_id, room_id, threads, generations[room_id])
                if any(n or h for n, h in threads.values()):
                    out[room_id] = {t: c for t, c in threads.items() if c[0] or c[1]}
        return out


def notification_rows(rows: Sequence[PushRow]) -> list[tuple[str, int, str, str, str, str]]:
    """Per-user push rows grouped into one (room, position, event, thread, notify JSON, highlight JSON)
    row per event."""
    events: dict[tuple[str, int], tuple[str, str, list[str], list[str]]] = {}
    for user_id, room_id, position, thread_id, event_id, highlight in rows:
        entry = events.setdefault((room_id, position), (event_id, thread_id, [], []))
        entry[2].append(user_id)
        if highlight:
            entry[3].append(user_id)
    return [(room_id, position, event_id, thread_id, json_dumps(sorted(notify)), json_dumps(sorted(high)))
            for (room_id, position), (event_id, thread_id, notify, high) in events.items()]


async def read_positions(c: Connection | Database, user_id: str, room_id: str) -> dict[str, int]:
    """The position the user has read up to in a room, per thread ("" for the unthreaded receipt,
    which covers every thread): the later of m.read and m.read.private."""
    read: dict[str, int] = {}
    for rec in await c.fetch(
            "SELECT thread_id, MAX(event_stream_ordering) AS pos FROM receipts WHERE user_id = $1"
            " AND room_id = $2 AND receipt_type IN ('m.read', 'm.read.private') GROUP BY thread_id",
            user_id, room_id):
        read[rec["thread_id"]] = int(rec["pos"])
    return read


async def membership_position(c: Connection | Database, user_id: str, room_id: str) -> int:
    """The position of the user's current membership event in the room (0 when they have none)."""
    value = await c.fetchval(
        "SELECT e.stream_ordering FROM current_state_events s JOIN events e ON e.event_id = s.event_id"
        " WHERE s.room_id = $1 AND s.type = 'm.room.member' AND s.state_key = $2", room_id, user_id)
    return 0 if value is None else int(value)


def local_joins(events: Sequence[Event], server_name: str) -> list[str]:
    """The local users these events join to their room (their unread counts are recounted)."""
    suffix = ":" + server_name
    return [ev.state_key for ev in events
            if ev.membership == "join" and ev.state_key and ev.state_key.endswith(suffix)]


async def lock_unread_counts(c: Connection, room_id: str) -> None:
    """On PostgreSQL, hold the room's unread-summary lock until the transaction ends.

    Processes of a cluster write the same summaries: event persisters increment them, the receipts
    writer recounts them. A recount that read the notifications just before an increment committed
    would overwrite it; with the lock, a recount waits for the increment and then (each statement
    taking a fresh snapshot) counts its notifications, or the increment waits for the recount and
    adds to it. SQLite serves one process, whose `PushStore.count_locks` suffice.
    """
    if c.engine == "postgres":
        await c.execute(UNREAD_COUNTS_LOCK_SQL, room_id)


async def recompute_push_summary(c: Connection, user_id: str, room_id: str) -> None:
    """Count a user's unread notifications in a room afresh (after a receipt, a redaction or their
    join): the notifications after the later of m.read / m.read.private, unthreaded or for the same
    thread; with no unthreaded receipt, after the user's current membership event (Synapse's rule)."""
    await lock_unread_counts(c, room_id)
    read = await read_positions(c, user_id, room_id)
    if "" not in read:
        read[""] = await membership_position(c, user_id, room_id)
    counts: dict[str, list[int]] = {}
    for r in await c.fetch(
            "SELECT stream_ordering, thread_id, notify_users, highlight_users FROM event_notifications"
            " WHERE room_id = $1 AND stream_ordering > $2", room_id, read.get("", 0)):
        thread_id = r["thread_id"]
        if r["stream_ordering"] <= read.get(thread_id, 0) or user_id not in json_loads(r["notify_users"]):
            continue
        count = counts.setdefault(thread_id, [0, 0])
        count[0] += 1
        count[1] += user_id in json_loads(r["highlight_users"])
    await c.execute("DELETE FROM event_push_summary WHERE user_id = $1 AND room_id = $2", user_id, room_id)
    await c.executemany(
        "INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count, highlight_count)"
        " VALUES ($1, $2, $3, $4, $5)", [(user_id, room_id, t, n, h) for t, (n, h) in sorted(counts.items())])
