"""Persisting a batch of plain room events on PostgreSQL in one statement: one round trip, one commit.

A message send's transaction used to be BEGIN, an INSERT per event, one per transaction ID, the
forward-extremity UPDATE, the notifications INSERT, a receipts read, the unread-summary upsert and
COMMIT: about nine round trips, most of a send's latency on a database a network hop away. For a
batch without state events or redactions (nearly every batch) the same writes fit in one statement
of data-modifying CTEs, which PostgreSQL runs atomically in its own transaction. Batches with state
events or redactions, and SQLite (in-process, one hop per transaction anyway), use the general path
in `hs/services/events.py`.

When every reader of the events stream is in the writer's own process (a monolith), the batch's
notifications and unread counts are not needed in that statement: the writer keeps the counts its
/sync reads in memory. The events then commit on their own (`EVENTS_ONLY_SQL`) while push rules are
evaluated, and the notifications follow in a second statement (`NOTIFICATIONS_SQL`) after the
readers were woken, taking push evaluation and the count upserts off a message's way to its
recipients. The second statement also moves the writer's NOTIFIED_UPTO mark; at start-up the writer
evaluates again whatever it persisted above the mark (a crash between the two statements).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hs.db.pool import Database
from hs.db.stores.push import NOTIFIED_UPTO, PushRow, SummaryRow, notification_rows
from hs.events.event import Event
from hs.util import json_dumps, now_ms

_EVENTS = """
new_events AS (
  INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts,
                      instance_name, state_group_before, state_group_after, txn_device_id, txn_id, json)
  SELECT e.so, e.eid, $1, e.typ, e.snd, e.dep, e.ts, $2, e.sg, e.sg, e.tdev, e.tid, e.js
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[],
              $10::text[], $11::text[], $12::text[]) AS e(so, eid, typ, snd, dep, ts, sg, tdev, tid, js)
), new_txns AS (
  INSERT INTO event_txn_ids (user_id, device_id, room_id, txn_id, event_id, inserted_ts)
  SELECT t.usr, t.dev, $1, t.tid, t.eid, $13
  FROM unnest($14::text[], $15::text[], $16::text[], $17::text[]) AS t(usr, dev, tid, eid)
), extremity AS (
  UPDATE event_forward_extremities SET event_id = $18 WHERE room_id = $1 RETURNING 1
)"""
# Notifications and unread counts; parameters from ${N} on (room ID is $1).
_COUNTS = """
new_notifications AS (
  INSERT INTO event_notifications (room_id, stream_ordering, event_id, thread_id, notify_users, highlight_users)
  SELECT $1, n.so, n.eid, n.thr, n.users, n.high
  FROM unnest(${N}::bigint[], ${N1}::text[], ${N2}::text[], ${N3}::text[], ${N4}::text[])
    AS n(so, eid, thr, users, high)
), unread AS (
  -- Count only what the user's read receipt (main timeline, or this thread) does not already cover.
  SELECT a.usr AS user_id, a.thr AS thread_id, COUNT(*) AS notifs, SUM(a.hl) AS highlights
  FROM unnest(${N5}::text[], ${N6}::bigint[], ${N7}::text[], ${N8}::int[]) AS a(usr, so, thr, hl)
  WHERE a.so > COALESCE((SELECT MAX(r.event_stream_ordering) FROM receipts r
      WHERE r.room_id = $1 AND r.user_id = a.usr AND r.receipt_type IN ('m.read', 'm.read.private')
      AND (r.thread_id = '' OR r.thread_id = a.thr)), 0)
  GROUP BY a.usr, a.thr
), summary AS (
  INSERT INTO event_push_summary (user_id, room_id, thread_id, notif_count, highlight_count)
  SELECT u.user_id, $1, u.thread_id, u.notifs, u.highlights FROM unread u ORDER BY u.user_id, u.thread_id
  ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET
    notif_count = event_push_summary.notif_count + excluded.notif_count,
    highlight_count = event_push_summary.highlight_count + excluded.highlight_count
  RETURNING user_id, thread_id, notif_count, highlight_count
)"""
# A stream position row (stream $S, instance $I, position $P), never moved backwards.
_POSITION = """
{NAME} AS (
  INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ('{STREAM}', ${I}, ${P})
  ON CONFLICT (stream_name, instance_name) DO UPDATE SET position = excluded.position
  WHERE stream_positions.position < excluded.position
)"""
# One row at least (for the extremity count), plus the new value of every unread summary row touched.
_RESULT = """
SELECT x.extremities, s.user_id, s.thread_id, s.notif_count, s.highlight_count
FROM (SELECT COUNT(*) AS extremities FROM extremity) x LEFT JOIN summary s ON TRUE"""
_EVENTS_ONLY_RESULT = """
SELECT COUNT(*) AS extremities FROM extremity"""
_COUNTS_ONLY_RESULT = """
SELECT user_id, thread_id, notif_count, highlight_count FROM summary"""


def _counts(first: int) -> str:
    sql = _COUNTS
    for k in range(8, 0, -1):
        sql = sql.replace(f"{{N{k}}}", str(first + k))
    return sql.replace("{N}", str(first))


def _position(name: str, stream: str, instance_param: int, position_param: int) -> str:
    return (_POSITION.replace("{NAME}", name).replace("{STREAM}", stream)
            .replace("{I}", str(instance_param)).replace("{P}", str(position_param)))


# Events with their notifications (parameters $19-$27), in one statement; with several writers,
# this writer's position too ($28).
PERSIST_SQL = "WITH" + _EVENTS + "," + _counts(19) + _RESULT
PERSIST_WITH_POSITION_SQL = ("WITH" + _EVENTS + "," + _counts(19) + "," + _position("own_position", "events", 2, 28)
                             + _RESULT)
# The events alone; their notifications follow in NOTIFICATIONS_SQL (see `persist_plain_events`).
EVENTS_ONLY_SQL = "WITH" + _EVENTS + _EVENTS_ONLY_RESULT
# A batch's notifications and unread counts once its events committed ($1 room, $2-$10 as in
# `_COUNTS`), and the writer's NOTIFIED_UPTO mark ($11 instance, $12 position).
NOTIFICATIONS_SQL = ("WITH" + _counts(2) + "," + _position("mark", NOTIFIED_UPTO, 11, 12) + _COUNTS_ONLY_RESULT)


def fits_one_statement(events: Sequence[Event]) -> bool:
    """Plain events only: no state (current state, memberships, state groups) and no redactions."""
    return all(ev.state_key is None and ev.type != "m.room.redaction" for ev in events)


async def persist_plain_events(db: Database, room_id: str, instance: str,
                               events: Sequence[tuple[Event, int, tuple[str, str, str] | None]],
                               push_rows: Sequence[PushRow] | None, own_position: int | None) -> list[SummaryRow]:
    """Store (event, stream position, transaction) rows, their push actions and unread counts, the
    room's new forward extremity and (with several writers) this writer's position, atomically.
    Returns the new values of the unread summary rows it incremented.

    With `push_rows` None the events are stored alone: `persist_notifications` must follow."""
    assert db.engine == "postgres" and fits_one_statement([ev for ev, _, _ in events])
    with_txn = [(ev, txn) for ev, _, txn in events if txn is not None]
    args: list[Any] = [
        room_id, instance,
        [pos for _, pos, _ in events], [ev.event_id for ev, _, _ in events], [ev.type for ev, _, _ in events],
        [ev.sender for ev, _, _ in events], [ev.depth for ev, _, _ in events],
        [ev.origin_server_ts for ev, _, _ in events],
        [ev.internal["state_group_after"] for ev, _, _ in events],
        [txn[1] if txn else None for _, _, txn in events], [txn[2] if txn else None for _, _, txn in events],
        [json_dumps(ev.pdu) for ev, _, _ in events],
        now_ms(),
        [txn[0] for _, txn in with_txn], [txn[1] for _, txn in with_txn], [txn[2] for _, txn in with_txn],
        [ev.event_id for ev, _ in with_txn],
        events[-1][0].event_id,
    ]
    if push_rows is None:
        assert own_position is None, "only a single writer defers notifications"
        sql = EVENTS_ONLY_SQL
    else:
        args += _counts_args(push_rows)
        sql = PERSIST_SQL
        if own_position is not None:
            sql = PERSIST_WITH_POSITION_SQL
            args.append(own_position)
    rows = await db.run_statement("persist_events", sql, *args)
    if rows[0]["extremities"] != 1:
        # Not a linear local room (no extremity row, or several): make the last event the only one.
        async def reset_extremity(c: Any) -> None:
            await c.execute("DELETE FROM event_forward_extremities WHERE room_id = $1", room_id)
            await c.execute("INSERT INTO event_forward_extremities (room_id, event_id) VALUES ($1, $2)",
                            room_id, events[-1][0].event_id)

        await db.run_transaction("reset_extremity", reset_extremity)
    for ev, pos, txn in events:
        if txn is not None:
            ev.internal["txn"] = (txn[1], txn[2])
        ev.internal.update(stream_ordering=pos, instance_name=instance)
    return _summary_rows(room_id, rows)


async def persist_notifications(db: Database, room_id: str, instance: str, push_rows: Sequence[PushRow],
                                notified_upto: int) -> list[SummaryRow]:
    """The notifications and unread-count increments of events `persist_plain_events` stored without
    them, and the writer's NOTIFIED_UPTO mark; returns the incremented summary rows' new values."""
    rows = await db.run_statement("persist_notifications", NOTIFICATIONS_SQL, room_id,
                                  *_counts_args(push_rows), instance, notified_upto)
    return _summary_rows(room_id, rows)


def _counts_args(push_rows: Sequence[PushRow]) -> list[Any]:
    notifications = notification_rows(push_rows)
    return [
        [n[1] for n in notifications], [n[2] for n in notifications], [n[3] for n in notifications],
        [n[4] for n in notifications], [n[5] for n in notifications],
        [r[0] for r in push_rows], [r[2] for r in push_rows], [r[3] for r in push_rows],
        [1 if r[5] else 0 for r in push_rows],
    ]


def _summary_rows(room_id: str, rows: list[Any]) -> list[SummaryRow]:
    return [(room_id, r["user_id"], r["thread_id"], int(r["notif_count"]), int(r["highlight_count"]))
            for r in rows if r.get("user_id") is not None]
