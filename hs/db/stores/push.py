"""Push rules (users' own rules and their changes to server-default rules) and push actions.

Every push rule write also records the user's new push_rules stream position, in the same
transaction. Push actions are one row per (user, event) that notified the user; unread counts are
the rows after the user's read receipts (the later of m.read and m.read.private; an unthreaded
receipt covers every thread, a threaded one its thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hs.db.pool import Connection, Database
from hs.util import json_dumps, json_loads

JsonDict = dict[str, Any]


class PushStore:
    def __init__(self, db: Database) -> None:
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
            found = await c.fetchval(
                "SELECT 1 FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3",
                user_id, kind, rule_id)
            if not found:
                return False
            await c.execute("DELETE FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3",
                            user_id, kind, rule_id)
            await self._bump(c, user_id, stream_id)
            return True

        return await self.db.run_transaction("delete_push_rule", txn)

    async def set_user_rule_attr(self, user_id: str, kind: str, rule_id: str, enabled: bool | None,
                                 actions: list[Any] | None, stream_id: int) -> bool:
        async def txn(c: Connection) -> bool:
            found = await c.fetchval(
                "SELECT 1 FROM push_rules WHERE user_id = $1 AND kind = $2 AND rule_id = $3",
                user_id, kind, rule_id)
            if not found:
                return False
            if enabled is not None:
                await c.execute("UPDATE push_rules SET enabled = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, 1 if enabled else 0)
            if actions is not None:
                await c.execute("UPDATE push_rules SET actions = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, json_dumps(actions))
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
            if enabled is not None:
                await c.execute("UPDATE push_rules_defaults SET enabled = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, 1 if enabled else 0)
            if actions is not None:
                await c.execute("UPDATE push_rules_defaults SET actions = $4 WHERE user_id = $1 AND kind = $2"
                                " AND rule_id = $3", user_id, kind, rule_id, json_dumps(actions))
            await self._bump(c, user_id, stream_id)

        await self.db.run_transaction("set_default_push_rule_attr", txn)

    async def get_user_stream_id(self, user_id: str) -> int:
        return int(await self.db.fetchval(
            "SELECT stream_id FROM push_rules_stream WHERE user_id = $1", user_id) or 0)

    async def max_stream_id(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM push_rules_stream") or 0)

    # -- push actions --------------------------------------------------------------------------------
    async def add_push_actions(self, rows: Sequence[tuple[str, str, int, str, str, bool]],
                               redacted: Sequence[str] = ()) -> None:
        """Rows (user_id, room_id, stream_ordering, thread_id, event_id, highlight); drop redacted events'.

        The per-thread summary is incremented for the rows actually inserted (a re-run inserts none)
        that are not already covered by the user's read receipt."""
        if not rows and not redacted:
            return

        async def txn(c: Connection) -> None:
            await self.write_push_actions(c, rows, redacted)

        await self.db.run_transaction("add_push_actions", txn)

    async def write_push_actions(self, c: Connection, rows: Sequence[tuple[str, str, int, str, str, bool]],
                                 redacted: Sequence[str] = ()) -> None:
        """`add_push_actions` inside the caller's transaction."""
        inserted: list[dict[str, Any]] = []
        for i in range(0, len(rows), 500):
            chunk = rows[i:i + 500]
            values = ",".join(f"(${n * 6 + 1},${n * 6 + 2},${n * 6 + 3},${n * 6 + 4},${n * 6 + 5},${n * 6 + 6})"
                              for n in range(len(chunk)))
            args = [v for u, r, so, t, e, h in chunk for v in (u, r, so, t, e, 1 if h else 0)]
            inserted += await c.fetch(
                "INSERT INTO event_push_actions (user_id, room_id, stream_ordering, thread_id, event_id,"
                f" highlight) VALUES {values} ON CONFLICT (user_id, room_id, stream_ordering) DO NOTHING"
                " RETURNING user_id, room_id, stream_ordering, thread_id, highlight", *args)
        if inserted:
            await self._increment_summary(c, inserted)
        affected: set[tuple[str, str]] = set()
        for event_id in redacted:
            for r in await c.fetch("SELECT user_id, room_id FROM event_push_actions WHERE event_id = $1",
                                   event_id):
                affected.add((r["user_id"], r["room_id"]))
            await c.execute("DELETE FROM event_push_actions WHERE event_id = $1", event_id)
        for user_id, room_id in affected:
            await recompute_push_summary(c, user_id, room_id)

    @staticmethod
    async def _increment_summary(c: Connection, inserted: list[dict[str, Any]]) -> None:
        receipts: dict[tuple[str, str], dict[str, int]] = {}
        for room_id in {r["room_id"] for r in inserted}:
            users = sorted({r["user_id"] for r in inserted if r["room_id"] == room_id})
            placeholders = ",".join(f"${n + 2}" for n in range(len(users)))
            for rec in await c.fetch(
                    "SELECT user_id, thread_id, MAX(event_stream_ordering) AS pos FROM receipts"
                    f" WHERE room_id = $1 AND user_id IN ({placeholders})"
                    " AND receipt_type IN ('m.read', 'm.read.private') GROUP BY user_id, thread_id",
                    room_id, *users):
                receipts.setdefault((rec["user_id"], room_id), {})[rec["thread_id"]] = int(rec["pos"])
        deltas: dict[tuple[str, str, str], list[int]] = {}
        for r in inserted:
            read = receipts.get((r["user_id"], r["room_id"]), {})
            if r["stream_ordering"] <= max(read.get("", 0), read.get(r["thread_id"], 0)):
                continue  # already read (a receipt raced this evaluation)
            d = deltas.setdefault((r["user_id"], r["room_id"], r["thread_id"]), [0, 0])
            d[0] += 1
            d[1] += int(r["highlight"])
        await c.executemany(
            "INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count, highlight_count)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET"
            " notif_count = event_push_summary.notif_count + excluded.notif_count,"
            " highlight_count = event_push_summary.highlight_count + excluded.highlight_count",
            [(u, r, t, n, h) for (u, r, t), (n, h) in deltas.items()])

    async def get_unread_counts(self, user_id: str, room_ids: list[str], upto: int,
                                ) -> dict[str, dict[str, tuple[int, int]]]:
        """room -> thread -> (notification_count, highlight_count), from the summary.

        `upto` is accepted for the caller's range but not applied: the summary may include a
        notification for an event persisted a moment ago that this sync's timeline does not show yet."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for i in range(0, len(room_ids), 500):
            chunk = room_ids[i:i + 500]
            placeholders = ",".join(f"${n + 2}" for n in range(len(chunk)))
            rows = await self.db.fetch(
                "SELECT room_id, thread_id, notif_count, highlight_count FROM event_push_summary"
                f" WHERE user_id = $1 AND room_id IN ({placeholders})", user_id, *chunk)
            for r in rows:
                if r["notif_count"] or r["highlight_count"]:
                    out.setdefault(r["room_id"], {})[r["thread_id"]] = (int(r["notif_count"]),
                                                                         int(r["highlight_count"]))
        return out


async def recompute_push_summary(c: Connection, user_id: str, room_id: str) -> None:
    """Count a user's unread notifications in a room afresh (after a receipt or a redaction)."""
    await c.execute("DELETE FROM event_push_summary WHERE user_id = $1 AND room_id = $2", user_id, room_id)
    await c.execute(
        "INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count, highlight_count)"
        " SELECT a.user_id, a.room_id, a.thread_id, COUNT(*), SUM(a.highlight) FROM event_push_actions a"
        " WHERE a.user_id = $1 AND a.room_id = $2"
        " AND a.stream_ordering > COALESCE((SELECT MAX(r.event_stream_ordering) FROM receipts r"
        "   WHERE r.user_id = a.user_id AND r.room_id = a.room_id"
        "   AND r.receipt_type IN ('m.read', 'm.read.private')"
        "   AND (r.thread_id = '' OR r.thread_id = a.thread_id)), 0)"
        " GROUP BY a.user_id, a.room_id, a.thread_id", user_id, room_id)
