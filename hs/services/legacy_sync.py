"""The deprecated v1 sync API still in the spec: GET /events (the event stream, also for peeking into a
world-readable room), GET /initialSync (a snapshot of every room) and GET /rooms/{roomId}/initialSync
(one room's snapshot, the spec's room preview for non-members).

They are built on what /sync uses, so the two can be mixed: tokens are /sync's stream tokens (an
/initialSync `end` or a /sync `next_batch` is a valid /events `from` and the other way round), ranges
are bounded by the notifier's position taken before anything is read, and long-polls wait on the
same notifier. Where the spec is silent these follow Synapse:

* /events `chunk`: the room events of the user's joined rooms (or of the one peeked room) plus the
  user's own membership changes, then presence, typing (`m.typing`) and receipts (`m.receipt`) of
  those rooms, then account data changes, each ephemeral event carrying its `room_id`. At most
  `limit` room events, the *oldest* of the range, so none is skipped: `end` then stops at the last
  one returned and the client asks again at once.
* A user always sees their own membership events; other events go through history visibility.
* /initialSync: rooms joined and invited (and left with `archived`), each with `membership`,
  `visibility`, and for joined and left rooms the newest `limit` messages, the state (current, or at
  the leave) and the room's account data; an invite carries `inviter` and the invite event.
* Room initialSync: members get the current snapshot with presence and receipts; departed members the
  room as they left it; anyone else a world-readable room without `membership` (a preview); else 403.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hs.db.stores.legacy_sync import LegacySyncStore
from hs.errors import forbidden
from hs.events.event import Event
from hs.services.presence import format_presence
from hs.services.room_ids import check_room_id
from hs.services.serialize import serialize_events
from hs.services.sync import SyncConfig
from hs.streams.registry import stream_names
from hs.streams.tokens import MAX_POSITION, StreamToken, TopologicalToken
from hs.util import now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

JsonDict = dict[str, Any]

MEMBER = "m.room.member"
PRESENCE = "m.presence"
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
# Synapse's floor for a non-zero long-poll, so clients asking for tiny timeouts do not spin.
MIN_TIMEOUT_MS = 500


class LegacySync:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.events_stream = hs.events_stream
        self.legacy_store = LegacySyncStore(hs.event_store.db)

    # -- GET /events ---------------------------------------------------------------------------------------
    async def events(self, requester: Requester, from_token: StreamToken | None, timeout_ms: int, limit: int,
                     room_id: str | None) -> JsonDict:
        """The events after `from_token` (now, when absent), waiting up to `timeout_ms` for some."""
        user_id = requester.user_id
        peeking = False
        if room_id is not None:
            peeking = await self._check_peek(user_id, room_id)
        notifier = self.hs.notifier
        start = from_token if from_token is not None else notifier.current
        typing = start.get("typing")
        clamped = self.hs.typing_stream.clamp(typing)
        if clamped != typing:  # typing positions restart with their writer, as /sync does
            start = start.with_position("typing", clamped)
        if timeout_ms:
            timeout_ms = max(timeout_ms, MIN_TIMEOUT_MS)
        await self.hs.presence.user_syncing(user_id, "online", timeout_ms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            now = notifier.current
            rooms = [room_id] if room_id is not None else list(
                await self.store.get_rooms_for_user(user_id, ("join",)))
            chunk, end, more = await self._collect(requester, start, now, rooms, room_id, peeking, limit)
            remaining = deadline - loop.time()
            if chunk or more or remaining <= 0:
                return {"chunk": chunk, "start": start.encode(), "end": end.encode()}
            if notifier.current.is_after(now):
                continue  # persisted while we read: its notification has already gone out
            await notifier.wait(user_id, rooms, remaining)

    async def _check_peek(self, user_id: str, room_id: str) -> bool:
        """Whether reading `room_id` is peeking (the user is not joined); 403 unless joined or the room
        is world readable now (as Synapse: a departed member peeks like anyone else)."""
        check_room_id(room_id)
        current = await self.store.get_membership(room_id, user_id)
        if current is not None and current[0] == "join":
            return False
        if await self._world_readable(room_id):
            return True
        raise forbidden("Non-joined access not allowed")

    async def _world_readable(self, room_id: str) -> bool:
        ev = await self.store.get_current_state_event(room_id, "m.room.history_visibility")
        return ev is not None and ev.content.get("history_visibility") == "world_readable"

    async def _collect(self, requester: Requester, start: StreamToken, now: StreamToken, rooms: list[str],
                       peeked: str | None, peeking: bool, limit: int) -> tuple[list[JsonDict], StreamToken, bool]:
        """(chunk, end, whether room events were left for the next request) for the range (start, now]."""
        user_id = requester.user_id
        after = start.min(now)
        events, last = await self._room_events(user_id, after, now, rooms, peeked, limit)
        end = now
        more = last is not None
        if last is not None:
            # Events stop at the last room event returned; every other stream is covered up to now.
            cap = {name: MAX_POSITION for name in stream_names()}
            cap["events"] = last
            end = now.min(StreamToken(cap))
        end = start.max(end)
        memberships: dict[str, str | None] = {r: "join" for r in rooms}
        if peeking and peeked is not None:
            current = await self.store.get_membership(peeked, user_id)
            memberships[peeked] = current[0] if current else None
        own = [e for e in events if e.type == MEMBER and e.state_key == user_id]
        others = await self.hs.visibility.filter_events_for_user(
            user_id, [e for e in events if not (e.type == MEMBER and e.state_key == user_id)], memberships)
        kept = {e.event_id for e in own} | {e.event_id for e in others}
        chunk = await serialize_events(self.hs, [e for e in events if e.event_id in kept], requester.device_id)

        config = SyncConfig(user_id=user_id, device_id=requester.device_id, since=after)
        chunk += await self._presence(config, now)
        typing_upto = now.get("typing")
        typing_after = min(after.get("typing"), typing_upto)
        if typing_after < typing_upto:
            for room_id, users in sorted(self.hs.typing_stream.changes(rooms, typing_after, typing_upto).items()):
                chunk.append({"type": "m.typing", "room_id": room_id, "content": {"user_ids": users}})
        chunk += await self._receipts(config, now, rooms)
        ad_upto = now.get("account_data")
        ad_after = min(after.get("account_data"), ad_upto)
        if ad_after < ad_upto:
            for row in await self.hs.account_data_stream.store.get_changed(user_id, ad_after, ad_upto):
                ev: JsonDict = {"type": row["type"], "content": row["content"]}
                if row["room_id"]:
                    ev["room_id"] = row["room_id"]
                chunk.append(ev)
        return chunk, end, more

    async def _room_events(self, user_id: str, after: StreamToken, now: StreamToken, rooms: list[str],
                           peeked: str | None, limit: int) -> tuple[list[Event], int | None]:
        """The oldest `limit` events of `rooms` and of the user's membership changes in (after, now], in
        stream order, and the position of the last one when more were left out (else None)."""
        if not now.stream_is_after(after, "events") or limit <= 0:
            return [], None
        found: dict[str, tuple[int, str]] = {}
        low, high = self.events_stream.bounds(after, now)
        for row in await self.store.get_membership_changes(user_id, low, high):
            room_id = row["room_id"]
            if (peeked is None or room_id == peeked) and self.events_stream.in_range(
                    room_id, int(row["stream_ordering"]), after, now):
                found[row["event_id"]] = (int(row["stream_ordering"]), row["event_id"])
        changed: set[str] = set()
        for writer, writer_rooms in self.events_stream.rooms_by_writer(rooms).items():
            changed |= await self.store.get_rooms_with_events_between(
                writer_rooms, after.writer_position("events", writer), now.writer_position("events", writer))
        room_position = self.events_stream.room_position
        for room_id in sorted(changed):
            # One more than the limit: a room cut short then shows in the merged list being over it.
            for pos, event_id in await self.legacy_store.get_event_ids_after(
                    room_id, room_position(after, room_id), room_position(now, room_id), limit + 1):
                found[event_id] = (pos, event_id)
        ordered = sorted(found.values())
        last: int | None = None
        if len(ordered) > limit:
            ordered = ordered[:limit]
            last = ordered[-1][0]
        loaded = await self.store.get_events([eid for _, eid in ordered])
        events = [loaded[eid] for _, eid in ordered if eid in loaded]
        return [e for e in events if not e.internal.rejected and not e.internal.soft_failed], last

    async def _presence(self, config: SyncConfig, now: StreamToken) -> list[JsonDict]:
        """The presence /sync would report for the range, as v1 events (`user_id` in the content)."""
        body: JsonDict = {"presence": {"events": []}}
        await self.hs.presence.add_to_sync(config, now, body)
        out = []
        for ev in body["presence"]["events"]:
            out.append({"type": PRESENCE, "sender": ev["sender"],
                        "content": {**ev["content"], "user_id": ev["sender"]}})
        return out

    async def _receipts(self, config: SyncConfig, now: StreamToken, rooms: list[str]) -> list[JsonDict]:
        """The receipts /sync would report for the range in `rooms` (others' private ones left out), as
        `m.receipt` events with their `room_id`."""
        if not rooms:
            return []
        body: JsonDict = {"rooms": {"join": {}}, "next_batch": now.encode()}
        await self.hs.receipts.add_to_sync(config, now, body, rooms)
        out = []
        for room_id, entry in sorted(body["rooms"]["join"].items()):
            for ev in entry.get("ephemeral", {}).get("events", []):
                if ev.get("type") == "m.receipt":
                    out.append({"type": "m.receipt", "room_id": room_id, "content": ev["content"]})
        return out

    # -- GET /initialSync ----------------------------------------------------------------------------------
    async def initial_sync(self, requester: Requester, limit: int, archived: bool) -> JsonDict:
        """Every room the user is joined to or invited to (and has left, with `archived`), presence,
        receipts and account data, as of one position: `end`, from which /events continues."""
        user_id = requester.user_id
        now = self.hs.notifier.current
        kinds = ("join", "invite", "leave") if archived else ("join", "invite")
        memberships = await self.store.get_rooms_for_user(user_id, kinds)
        public = set(await self.hs.room_store.get_public_room_ids())
        account_data = await self.hs.account_data_stream.store.get_changed(user_id, 0, now.get("account_data"))
        rooms_out: list[JsonDict] = []
        ignored = await self.hs.visibility.ignored_users(user_id)
        for room_id, membership in sorted(memberships.items()):
            if membership == "leave" and await self.store.is_forgotten(user_id, room_id):
                continue
            entry: JsonDict = {"room_id": room_id, "membership": membership,
                               "visibility": "public" if room_id in public else "private"}
            current = await self.store.get_membership(room_id, user_id)
            member_event = await self.store.get_event(current[1]) if current else None
            if membership == "invite":
                if member_event is not None and member_event.sender in ignored:
                    continue  # the spec: invites from ignored users are not sent to the client
                if member_event is not None:
                    entry["inviter"] = member_event.sender
                    entry["invite"] = (await serialize_events(self.hs, [member_event], requester.device_id))[0]
            elif membership == "join":
                entry.update(await self._snapshot(requester, room_id, now, None, limit, "join"))
            elif member_event is not None:
                entry.update(await self._snapshot(requester, room_id, now, member_event, limit, membership))
            if membership != "invite":
                entry["account_data"] = _room_account_data(account_data, room_id)
            rooms_out.append(entry)
        joined = [r for r, m in memberships.items() if m == "join"]
        config = SyncConfig(user_id=user_id, device_id=requester.device_id)
        return {
            "rooms": rooms_out,
            "presence": await self._presence(config, now),
            "account_data": [{"type": r["type"], "content": r["content"]} for r in account_data if not r["room_id"]],
            "receipts": await self._receipts(config, now, sorted(joined)),
            "end": now.encode(),
        }

    async def _snapshot(self, requester: Requester, room_id: str, now: StreamToken, left: Event | None,
                        limit: int, membership: str | None) -> JsonDict:
        """`messages` and `state` of a room as of `now`, or as of the user's departure `left`: the newest
        `limit` events the user may see, with `start` for /messages dir=b and `end` at that point."""
        user_id = requester.user_id
        if left is None:
            upto = self.events_stream.room_position(now, room_id)
            end = now
        else:
            upto = left.internal.position()
            cap = {name: MAX_POSITION for name in stream_names()}
            cap["events"] = upto
            end = now.min(StreamToken(cap))
        raw, _ = await self.store.get_room_events_stream(room_id, 0, upto, limit)
        visible = await self.hs.visibility.filter_events_for_user(user_id, raw, {room_id: membership})
        start = TopologicalToken(raw[0].depth, raw[0].internal.position() - 1).encode() if raw else end.encode()
        latest = left if left is not None else await self.store.get_latest_event_at(room_id, upto)
        state: list[Event] = []
        if latest is not None:
            ids = await self.store.get_state_group(latest.internal.state_group_after)
            found = await self.store.get_events(list(ids.values()))
            state = sorted(found.values(), key=lambda e: e.internal.stream_ordering or 0)
        device = requester.device_id
        return {
            "messages": {"chunk": await serialize_events(self.hs, visible, device), "start": start,
                         "end": end.encode()},
            "state": await serialize_events(self.hs, state, device),
        }

    # -- GET /rooms/{roomId}/initialSync -------------------------------------------------------------------
    async def room_initial_sync(self, requester: Requester, room_id: str, limit: int) -> JsonDict:
        """One room's snapshot: for a member now, for a departed member as they left it, for anyone else
        a world-readable room's preview (no `membership`); 403 otherwise."""
        user_id = requester.user_id
        access = await self.hs.room_history.check_read_access(user_id, room_id, allow_departed=True)
        now = self.hs.notifier.current
        result: JsonDict = {"room_id": room_id}
        if access.cap is not None:  # left or banned after having joined
            result["membership"] = access.membership
            result.update(await self._snapshot(requester, room_id, now, access.cap, limit, access.membership))
            result["presence"] = []
            result["receipts"] = []
        else:
            if access.membership == "join":
                result["membership"] = "join"
            result.update(await self._snapshot(requester, room_id, now, None, limit, access.membership))
            result["presence"] = await self._member_presence(result["state"])
            config = SyncConfig(user_id=user_id, device_id=requester.device_id)
            result["receipts"] = await self._receipts(config, now, [room_id])
        rows = await self.hs.account_data_stream.store.get_changed(user_id, 0, now.get("account_data"))
        result["account_data"] = _room_account_data(rows, room_id)
        return result

    async def _member_presence(self, state: list[JsonDict]) -> list[JsonDict]:
        """The presence of the room's joined members (offline for those never seen), as Synapse."""
        if not self.hs.presence.enabled:
            return []
        members = [e["state_key"] for e in state
                   if e.get("type") == MEMBER and e.get("content", {}).get("membership") == "join"]
        t = now_ms()
        out = []
        for member in members:
            stored = await self.hs.presence.store.get(member)
            content: JsonDict = {"presence": "offline"} if stored is None else format_presence(stored, t)
            out.append({"type": PRESENCE, "sender": member, "content": {**content, "user_id": member}})
        return out


def _room_account_data(rows: list[JsonDict], room_id: str) -> list[JsonDict]:
    return [{"type": r["type"], "content": r["content"]} for r in rows if r["room_id"] == room_id]
