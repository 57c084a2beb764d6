"""Receipts and read markers (client-server spec, "Receipts", "Read and unread markers").

* `send_receipt`: m.read / m.read.private, unthreaded or for a thread (`main` or a thread root). The
  user must be joined; the event must be in the room (404 otherwise, as Synapse's read markers do).
  Receipts only move forward: one for an earlier event than the stored one is accepted and ignored.
* `set_read_markers`: m.fully_read goes to room account data (only forward), m.read and
  m.read.private are receipts.
* `add_to_sync`: m.receipt in rooms.join[room].ephemeral (changes since the token, or all for an
  initial sync; private receipts only to their owner), and every joined room entry's
  unread_notifications (and unread_thread_notifications when the timeline filter asks for them).
* Federation: local m.read receipts go out as `m.receipt` EDUs; `receive_remote` takes other servers'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.db.stores.receipts import UNTHREADED
from hs.errors import forbidden, invalid_param, not_found
from hs.services.sync import empty_join_entry
from hs.util import now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.sync import SyncConfig
    from hs.streams.tokens import StreamToken

READ = "m.read"
READ_PRIVATE = "m.read.private"
FULLY_READ = "m.fully_read"
RECEIPT_TYPES = (READ, READ_PRIVATE, FULLY_READ)
MAIN_THREAD = "main"
RECEIPT_EDU = "m.receipt"


class ReceiptService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.receipts_stream.store

    async def _require_joined(self, user_id: str, room_id: str) -> None:
        membership = await self.hs.event_store.get_membership(room_id, user_id)
        if membership is None or membership[0] != "join":
            raise forbidden(f"User {user_id} not in room {room_id}")

    async def _event_position(self, room_id: str, event_id: str) -> int:
        ev = await self.hs.event_store.get_event(event_id)
        if ev is None or ev.room_id != room_id or ev.internal.stream_ordering is None:
            raise not_found(f"Could not find event {event_id}")
        return ev.internal.position()

    @staticmethod
    def check_ids(room_id: str, event_id: str) -> None:
        if not room_id.startswith("!") or not event_id.startswith("$"):
            raise invalid_param("A valid room ID and event ID must be specified")

    async def send_receipt(self, user_id: str, room_id: str, receipt_type: str, event_id: str,
                           thread_id: str | None) -> None:
        self.check_ids(room_id, event_id)
        if receipt_type not in RECEIPT_TYPES:
            raise invalid_param(f"Receipt type must be {', '.join(RECEIPT_TYPES)}")
        if thread_id is not None and receipt_type == FULLY_READ:
            raise invalid_param(f"thread_id is not compatible with {FULLY_READ} markers")
        await self._require_joined(user_id, room_id)
        if receipt_type == FULLY_READ:
            await self._set_fully_read(user_id, room_id, event_id)
            return
        position = await self._event_position(room_id, event_id)
        await self._write(room_id, receipt_type, user_id, thread_id, event_id, position)
        self.hs.presence.user_active(user_id)

    async def set_read_markers(self, user_id: str, room_id: str, body: dict[str, Any]) -> None:
        if not room_id.startswith("!"):
            raise invalid_param("A valid room ID must be specified")
        wanted: dict[str, str] = {}
        for key in RECEIPT_TYPES:
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value.startswith("$"):
                raise invalid_param(f"'{key}' must be an event ID")
            wanted[key] = value
        await self._require_joined(user_id, room_id)
        # Check every event first, so a bad one changes nothing.
        positions = {key: await self._event_position(room_id, eid) for key, eid in wanted.items()}
        if FULLY_READ in wanted:
            await self._set_fully_read(user_id, room_id, wanted[FULLY_READ], positions[FULLY_READ])
        for key in (READ, READ_PRIVATE):
            if key in wanted:
                await self._write(room_id, key, user_id, None, wanted[key], positions[key])

    async def _write(self, room_id: str, receipt_type: str, user_id: str, thread_id: str | None,
                     event_id: str, position: int) -> None:
        """Every local user's receipt is written here: a public one that moved also goes to the
        other servers in the room (private receipts never leave the server)."""
        ts = now_ms()
        stored = await self.hs.receipts_stream.write(room_id, receipt_type, user_id, thread_id or UNTHREADED,
                                                     event_id, position, ts)
        if stored and receipt_type == READ and self.hs.sends_federation:
            data: dict[str, Any] = {"ts": ts}
            if thread_id is not None:
                data["thread_id"] = thread_id
            content = {room_id: {READ: {user_id: {"event_ids": [event_id], "data": data}}}}
            await self.hs.federation_outbox.send_edu_to_room(room_id, RECEIPT_EDU, content)

    async def receive_remote(self, room_id: str, user_id: str, event_id: str, thread_id: str | None,
                             ts: int) -> bool:
        """A remote user's m.read from an `m.receipt` EDU (origin and membership checked by the caller).
        Kept only for an event known here in that room: receipts are ordered by the event's position.
        Returns whether it was stored."""
        ev = await self.hs.event_store.get_event(event_id)
        if ev is None or ev.room_id != room_id or ev.internal.stream_ordering is None:
            return False
        return await self.hs.receipts_stream.write(room_id, READ, user_id, thread_id or UNTHREADED, event_id,
                                                   ev.internal.position(), ts)

    async def _set_fully_read(self, user_id: str, room_id: str, event_id: str, position: int | None = None) -> None:
        """Move the m.fully_read marker (room account data) to the event, if that is forward."""
        if position is None:
            position = await self._event_position(room_id, event_id)
        stream = self.hs.account_data_stream
        current = await stream.store.get(user_id, room_id, FULLY_READ)
        current_id = (current or {}).get("event_id")
        if isinstance(current_id, str):
            if current_id == event_id:
                return
            old = await self.hs.event_store.get_event(current_id)
            old_pos = None if old is None else old.internal.stream_ordering
            if old_pos is not None and int(old_pos) >= position:
                return
        content = {"event_id": event_id}

        def change(now: dict[str, Any] | None) -> dict[str, Any] | None:
            # Another marker written meanwhile: the later request wins only if it read the same state.
            if (now or {}).get("event_id") != current_id:
                return None
            return content

        await stream.update(user_id, room_id, FULLY_READ, change)

    # -- /sync -----------------------------------------------------------------------------------------
    async def add_to_sync(self, config: SyncConfig, now: StreamToken, body: dict[str, Any],
                          joined: list[str]) -> bool:
        """Add receipts and unread counts to a /sync body; returns whether receipts were added."""
        user_id = config.user_id
        since = config.since
        rooms_join: dict[str, dict[str, Any]] = body["rooms"]["join"]
        allowed = {r for r in joined if config.filter.room_allowed(r)}
        ephemeral = config.filter.room.ephemeral
        upto = now.get("receipts")
        added = False
        if since is None:
            rows = await self.store.get_for_rooms(sorted(allowed), upto) if allowed else []
        else:
            after = min(since.get("receipts"), upto)
            rows = await self.store.get_between(after, upto) if after < upto else []
        by_room: dict[str, dict[str, Any]] = {}
        for r in rows:
            room_id = r["room_id"]
            if room_id not in allowed or (r["receipt_type"] == READ_PRIVATE and r["user_id"] != user_id):
                continue
            if not ephemeral.check("m.receipt", room_id=room_id):
                continue
            data: dict[str, Any] = {"ts": int(r["ts"])}
            if r["thread_id"] != UNTHREADED:
                data["thread_id"] = r["thread_id"]
            content = by_room.setdefault(room_id, {})
            content.setdefault(r["event_id"], {}).setdefault(r["receipt_type"], {})[r["user_id"]] = data
        for room_id, content in by_room.items():
            entry = rooms_join.get(room_id)
            if entry is None:
                entry = rooms_join[room_id] = empty_join_entry(body["next_batch"])
            entry.setdefault("ephemeral", {"events": []})["events"].append({"type": "m.receipt", "content": content})
            added = True
        if rooms_join:
            await self._add_unread_counts(config, now, rooms_join)
        return added

    async def _add_unread_counts(self, config: SyncConfig, now: StreamToken,
                                 rooms_join: dict[str, dict[str, Any]]) -> None:
        counts = await self.hs.push_store.get_unread_counts(
            config.user_id, list(rooms_join), now.get("events"))
        per_thread = config.filter.room.timeline.unread_thread_notifications
        for room_id, entry in rooms_join.items():
            threads = counts.get(room_id, {})
            if per_thread:
                main = threads.get(MAIN_THREAD, (0, 0))
                entry["unread_notifications"] = {"notification_count": main[0], "highlight_count": main[1]}
                entry["unread_thread_notifications"] = {
                    t: {"notification_count": n, "highlight_count": h}
                    for t, (n, h) in threads.items() if t != MAIN_THREAD and (n or h)}
            else:
                entry["unread_notifications"] = {
                    "notification_count": sum(n for n, _ in threads.values()),
                    "highlight_count": sum(h for _, h in threads.values())}
