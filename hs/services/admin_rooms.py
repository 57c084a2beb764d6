"""Synapse's room admin API, the work behind hs/api/client/admin_rooms.py: listing rooms and their
details, members and state; blocking; deleting a room (its local members made to leave, its aliases
removed, then its rows purged); making a local user a room admin; and purging a room's history.

Deleting a room and purging history run as background tasks, their status kept in memory on the
process that runs them (as Synapse did before it stored them): `delete_id`s and `purge_id`s are
forgotten 24 hours after they end, or at a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hs.db.stores.admin_rooms import AdminRoomStore
from hs.errors import MatrixError, bad_request, forbidden, internal_error, not_found
from hs.events.auth import get_domain, get_room_creators, get_user_power_level
from hs.services.ratelimit import RATELIMIT_EXEMPT
from hs.util import now_ms, random_string

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

# order_by -> (the sort key's column in a listed room, ascending by default): Synapse's orders.
ROOM_ORDERS: dict[str, tuple[str, bool]] = {
    "name": ("name", True), "alphabetical": ("name", True), "size": ("joined_members", False),
    "canonical_alias": ("canonical_alias", True), "joined_members": ("joined_members", False),
    "joined_local_members": ("joined_local_members", False), "version": ("version", False),
    "creator": ("creator", True), "encryption": ("encryption", True), "federatable": ("federatable", True),
    "public": ("public", True), "join_rules": ("join_rules", True), "guest_access": ("guest_access", True),
    "history_visibility": ("history_visibility", True), "state_events": ("state_events", False),
}
JOB_RETENTION_MS = 24 * 3600 * 1000
# After a purge, the purged events are dropped from the event cache twice, this long apart.
FORGET_AGAIN_S = 0.2
# Synapse's defaults for the room a deleted room's members are moved to (`new_room_user_id`).
DEFAULT_NEW_ROOM_NAME = "Content Violation Notification"
DEFAULT_MESSAGE = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked."


@dataclass
class NewRoomSpec:
    """Where a deleted room's local members go: a room `creator` makes, named `name`, with `message`."""

    creator: str
    name: str | None = None
    message: str | None = None


@dataclass
class Job:
    """A room deletion or history purge in progress or done."""

    job_id: str
    room_id: str
    status: str
    error: str | None = None
    ended_ms: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


class _Jobs:
    def __init__(self) -> None:
        self.deletes: dict[str, Job] = {}
        self.purges: dict[str, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def prune(self) -> None:
        cutoff = now_ms() - JOB_RETENTION_MS
        for jobs in (self.deletes, self.purges):
            for job_id in [j for j, job in jobs.items() if job.ended_ms is not None and job.ended_ms < cutoff]:
                del jobs[job_id]


_JOBS: weakref.WeakKeyDictionary[HomeServer, _Jobs] = weakref.WeakKeyDictionary()


def _summary(room: dict[str, Any]) -> dict[str, Any]:
    """A listed room as Synapse shows it."""
    state: dict[str, dict[str, Any]] = room["state"]

    def text(etype: str, key: str) -> Any:
        value = state.get(etype, {}).get(key)
        return value if isinstance(value, str) else None

    create = state.get("m.room.create", {})
    return {
        "room_id": room["room_id"], "name": text("m.room.name", "name"),
        "canonical_alias": text("m.room.canonical_alias", "alias"),
        "joined_members": room["joined"], "joined_local_members": room["local"],
        "version": room["room_version"], "creator": room["creator"],
        "encryption": text("m.room.encryption", "algorithm"),
        "federatable": create.get("m.federate", True) is not False, "public": bool(room["is_public"]),
        "join_rules": text("m.room.join_rules", "join_rule"), "guest_access": text("m.room.guest_access", "guest_access"),
        "history_visibility": text("m.room.history_visibility", "history_visibility"),
        "state_events": room["state_events"], "room_type": create.get("type") if isinstance(create.get("type"), str) else None,
    }


async def check_not_blocked(hs: HomeServer, room_id: str) -> None:
    """403 for a room an admin blocked: for joins, invites and knocks (local or received over
    federation), as Synapse refuses every membership but leave and ban there."""
    if await AdminRoomStore(hs.db).blocked_by(room_id) is not None:
        raise forbidden("This room has been blocked on this server")


class AdminRooms:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = AdminRoomStore(hs.db)
        self.jobs = _JOBS.setdefault(hs, _Jobs())

    # -- reading ---------------------------------------------------------------------------------------------
    async def list_rooms(self, offset: int, limit: int, order_by: str, backwards: bool, search_term: str | None,
                         public: bool | None, empty: bool | None) -> tuple[list[dict[str, Any]], int]:
        """(one page of rooms, how many match): search_term matches the name or canonical alias (case
        insensitive substrings) or the room ID exactly, as Synapse's."""
        rooms = [_summary(r) for r in await self.store.rooms(self.hs.server_name)]
        if search_term is not None:
            term = search_term.lower()
            rooms = [r for r in rooms if term in (r["name"] or "").lower()
                     or term in (r["canonical_alias"] or "").lower() or r["room_id"] == search_term]
        if public is not None:
            rooms = [r for r in rooms if r["public"] == public]
        if empty is not None:
            rooms = [r for r in rooms if (r["joined_members"] == 0) == empty]
        column, ascending = ROOM_ORDERS[order_by]
        if backwards:
            ascending = not ascending
        # Missing values sort last going up and first going down (PostgreSQL's NULL order, as Synapse).
        rooms.sort(key=lambda r: (r[column] is None, r[column] if r[column] is not None else 0, r["room_id"]),
                   reverse=not ascending)
        return rooms[offset:offset + limit], len(rooms)

    async def room_details(self, room_id: str) -> dict[str, Any]:
        found = await self.store.rooms(self.hs.server_name, room_id)
        if not found:
            raise not_found("Room not found")
        room = _summary(found[0])
        state = found[0]["state"]
        avatar, topic = state.get("m.room.avatar", {}).get("url"), state.get("m.room.topic", {}).get("topic")
        room["avatar"] = avatar if isinstance(avatar, str) else None
        room["topic"] = topic if isinstance(topic, str) else None
        local = [u for u in await self.members(room_id) if get_domain(u) == self.hs.server_name]
        room["joined_local_devices"] = await self.store.local_devices(local)
        forgotten = await self.store.forgotten_by(room_id)
        locals_ever = await self._local_users_ever(room_id)
        room["forgotten"] = bool(locals_ever) and all(u in forgotten for u in locals_ever)
        return room

    async def _local_users_ever(self, room_id: str) -> list[str]:
        members = await self.hs.event_store.get_current_state_ids(room_id)
        return [k for (t, k) in members if t == "m.room.member" and get_domain(k) == self.hs.server_name]

    async def require_room(self, room_id: str) -> None:
        if not await self.hs.room_store.room_exists(room_id):
            raise not_found("Room not found")

    async def members(self, room_id: str) -> list[str]:
        """The room's joined members (local and remote), sorted."""
        members = await self.hs.event_store.get_current_state_events(room_id, [("m.room.member", None)])
        return sorted(k for (_, k), e in members.items() if e.membership == "join")

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        from hs.services.serialize import serialize_events

        events = await self.hs.event_store.get_current_state_events(room_id)
        ordered = [events[k] for k in sorted(events)]
        return await serialize_events(self.hs, ordered)

    # -- blocking --------------------------------------------------------------------------------------------
    async def block_status(self, room_id: str) -> dict[str, Any]:
        by = await self.store.blocked_by(room_id)
        return {"block": True, "user_id": by} if by is not None else {"block": False}

    async def set_blocked(self, room_id: str, block: bool, by: str) -> None:
        if block:
            await self.store.block(room_id, by)
        else:
            await self.store.unblock(room_id)

    async def is_blocked(self, room_id: str) -> bool:
        return await self.store.blocked_by(room_id) is not None

    # -- deleting --------------------------------------------------------------------------------------------
    def delete_jobs(self, room_id: str) -> list[Job]:
        self.jobs.prune()
        return [j for j in self.jobs.deletes.values() if j.room_id == room_id]

    def delete_job(self, delete_id: str) -> Job | None:
        self.jobs.prune()
        return self.jobs.deletes.get(delete_id)

    async def _new_delete(self, room_id: str, new_room: NewRoomSpec | None, block: bool) -> Job:
        if new_room is not None:
            if get_domain(new_room.creator) != self.hs.server_name:
                raise bad_request(f"User must be our own: {new_room.creator}")
            if await self.hs.user_store.get_user(new_room.creator) is None:
                raise not_found(f"User not found: {new_room.creator}")
        if any(j.status in ("shutting_down", "purging") for j in self.delete_jobs(room_id)):
            raise bad_request(f"History purge already in progress for {room_id}")
        if not block and not await self.hs.room_store.room_exists(room_id):
            raise not_found(f"Unknown room id {room_id}")
        job = Job(random_string(16), room_id, "shutting_down",
                  result={"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [], "new_room_id": None})
        self.jobs.deletes[job.job_id] = job
        return job

    async def start_delete(self, room_id: str, by: str, block: bool, purge: bool,
                           new_room: NewRoomSpec | None = None, force: bool = False) -> str:
        """Begin deleting a room in the background (v2); its `delete_id`."""
        job = await self._new_delete(room_id, new_room, block)
        self._spawn(self._delete(job, by, block, purge, new_room, force))
        return job.job_id

    async def delete_now(self, room_id: str, by: str, block: bool, purge: bool,
                         new_room: NewRoomSpec | None = None, force: bool = False) -> dict[str, Any]:
        """Delete a room and answer when done (v1): the shutdown's result."""
        job = await self._new_delete(room_id, new_room, block)
        await self._delete(job, by, block, purge, new_room, force)
        if job.status == "failed":
            raise internal_error(f"Deleting the room failed: {job.error}")
        return dict(job.result)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.jobs.tasks.add(task)
        task.add_done_callback(self.jobs.tasks.discard)

    async def _delete(self, job: Job, by: str, block: bool, purge: bool, new_room: NewRoomSpec | None,
                      force: bool) -> None:
        """Shut the room down, then purge it: unless `force`, only once no local user is still joined
        (one who could not be removed), as Synapse's force_purge."""
        room_id = job.room_id
        try:
            if block:
                await self.store.block(room_id, by)
            if await self.hs.room_store.room_exists(room_id):
                await self._shut_down(job, new_room)
            if purge and await self.hs.room_store.room_exists(room_id):
                if not force and any(get_domain(u) == self.hs.server_name for u in await self.members(room_id)):
                    raise bad_request("Users are still joined to this room")
                job.status = "purging"
                purged = await self.store.purge_room(room_id)
                self._forget(purged, room_id)
                await asyncio.sleep(FORGET_AGAIN_S)
                self._forget(purged, room_id)
            job.status = "complete"
            logger.info("admin %s deleted room %s (block %s, purge %s): %s", by, room_id, block, purge, job.result)
        except Exception as e:
            logger.exception("deleting room %s failed", room_id)
            job.status, job.error = "failed", e.msg if isinstance(e, MatrixError) else str(e)
        finally:
            job.ended_ms = now_ms()

    async def _shut_down(self, job: Job, new_room: NewRoomSpec | None) -> None:
        """Local members (joined, invited, knocking) leave and forget the room, the room leaves the
        directory; with `new_room`, the joined ones join a new room made by its creator, where it says
        why, and the local aliases move there (Synapse's room shutdown)."""
        from hs.services.auth import Requester

        room_id = job.room_id
        reset = RATELIMIT_EXEMPT.set(True)
        try:
            new_room_id = None
            if new_room is not None:
                new_room_id = await self.hs.room_creator.create_room(Requester(new_room.creator, "", ""), {
                    "preset": "public_chat", "name": new_room.name or DEFAULT_NEW_ROOM_NAME,
                    "power_level_content_override": {"users_default": -10}})
                job.result["new_room_id"] = new_room_id
            members = await self.hs.event_store.get_current_state_events(room_id, [("m.room.member", None)])
            for (_, user_id), event in sorted(members.items()):
                if get_domain(user_id) != self.hs.server_name or event.membership not in ("join", "invite", "knock"):
                    continue
                try:
                    requester = Requester(user_id, "", "")
                    await self.hs.room_membership.update_membership(requester, room_id, user_id, "leave",
                                                                    ratelimit=False)
                    await self.hs.room_membership.forget(requester, room_id)
                    if new_room_id is not None and event.membership == "join":
                        await self.hs.room_membership.update_membership(requester, new_room_id, user_id, "join",
                                                                        ratelimit=False)
                    job.result["kicked_users"].append(user_id)
                except MatrixError as e:
                    logger.warning("could not remove %s from %s: %s", user_id, room_id, e)
                    job.result["failed_to_kick_users"].append(user_id)
            if new_room is not None and new_room_id is not None:
                await self.hs.event_sender.send(new_room_id, new_room.creator, "m.room.message",
                                                {"msgtype": "m.text", "body": new_room.message or DEFAULT_MESSAGE})
                for alias in await self.hs.room_store.get_aliases_for_room(room_id):
                    await self.hs.room_store.delete_alias(alias)
                    await self.hs.room_store.create_alias(alias, new_room_id, new_room.creator)
                    job.result["local_aliases"].append(alias)
        finally:
            RATELIMIT_EXEMPT.reset(reset)
        await self.hs.room_store.set_room_is_public(room_id, False)

    def _forget(self, event_ids: list[str], room_id: str | None = None) -> None:
        """Rows went behind the caches' back: this process's copies of the events (and of a deleted
        room's version) go. Other processes keep theirs until evicted: the event store's cache is not
        one the cache invalidation stream reaches (hs/streams/caches.py)."""
        for event_id in event_ids:
            self.hs.event_store.invalidate_event(event_id)
        if room_id is not None:
            self.hs.room_store._versions.pop(room_id, None)  # RoomStore has no method to forget a room
        self.hs.caches.flush_all()

    # -- make room admin -------------------------------------------------------------------------------------
    async def make_room_admin(self, room_id: str, target: str) -> None:
        """Give `target` (a local user) the highest power in the room a local member has, joining them
        first (invited by that member unless the room is public), as Synapse's make_room_admin."""
        from hs.services.auth import Requester

        state = await self.hs.event_store.get_current_state_events(room_id)
        rv = await self.hs.room_store.get_room_version(room_id)
        if rv is None or not state:
            raise not_found("Room not found")
        local = [k for (t, k), e in state.items()
                 if t == "m.room.member" and e.membership == "join" and get_domain(k) == self.hs.server_name]
        creators = get_room_creators(state, rv)
        ranked = sorted(local, key=lambda u: (u not in creators, -get_user_power_level(u, state, rv), u))
        admin = next((u for u in ranked if get_user_power_level(u, state, rv) > 0 or u in creators), None)
        if admin is None:
            raise bad_request("No local admin user in room")
        reset = RATELIMIT_EXEMPT.set(True)
        try:
            membership = await self.hs.event_store.get_membership(room_id, target)
            if membership is None or membership[0] != "join":
                join_rule = state.get(("m.room.join_rules", ""))
                if join_rule is None or join_rule.content.get("join_rule") != "public":
                    if membership is None or membership[0] != "invite":
                        await self.hs.room_membership.update_membership(Requester(admin, "", ""), room_id, target,
                                                                        "invite", ratelimit=False)
                await self.hs.room_membership.update_membership(Requester(target, "", ""), room_id, target, "join",
                                                                ratelimit=False)
            power = await self.hs.event_store.get_current_state_event(room_id, "m.room.power_levels")
            content: dict[str, Any] = dict(power.content) if power is not None else {}
            users = dict(content.get("users") or {})
            level = get_user_power_level(admin, state, rv)
            if math.isinf(level):  # a v12 creator: the most power a user can be given
                level = max([100, *[v for v in users.values() if isinstance(v, int)]])
            users[target] = int(level)
            content["users"] = users
            await self.hs.event_sender.send(room_id, admin, "m.room.power_levels", content, state_key="",
                                            room_version=rv)
        finally:
            RATELIMIT_EXEMPT.reset(reset)

    # -- purging history -------------------------------------------------------------------------------------
    def purge_job(self, purge_id: str) -> Job | None:
        self.jobs.prune()
        return self.jobs.purges.get(purge_id)

    async def start_purge_history(self, room_id: str, event_id: str | None, before_ts: int | None,
                                  delete_local_events: bool) -> str:
        """Begin deleting the room's events before `event_id` (or the last event before `before_ts`); the
        `purge_id`. The room's current state and latest event stay, as in Synapse."""
        if event_id is not None:
            position = await self.store.event_position(room_id, event_id)
            if position is None:
                if await self.hs.event_store.get_event(event_id) is not None:
                    raise bad_request("Event is for wrong room.")
                raise not_found(f"Event {event_id} not found")
        else:
            assert before_ts is not None
            position = await self.store.last_event_before(room_id, before_ts)
            if position is None:
                raise not_found("there is no event to be purged")
        if any(j.status == "active" for j in self.jobs.purges.values() if j.room_id == room_id):
            raise bad_request(f"History purge already in progress for {room_id}")
        job = Job(random_string(16), room_id, "active")
        self.jobs.purges[job.job_id] = job
        self._spawn(self._purge(job, position[0], delete_local_events))
        return job.job_id

    async def _purge(self, job: Job, depth: int, delete_local_events: bool) -> None:
        try:
            keep_local = None if delete_local_events else ":" + self.hs.server_name
            purged = await self.store.purge_history(job.room_id, depth, keep_local)
            self._forget(purged)
            # A read that fetched a purged row before it went may cache it just after: forget again.
            await asyncio.sleep(FORGET_AGAIN_S)
            self._forget(purged)
            job.status = "complete"
            logger.info("purged %d events of %s before depth %d", len(purged), job.room_id, depth)
        except Exception as e:
            logger.exception("purging history of %s failed", job.room_id)
            job.status, job.error = "failed", str(e)
        finally:
            job.ended_ms = now_ms()
