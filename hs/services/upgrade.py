"""Room upgrades (POST /rooms/{roomId}/upgrade): a new room of another version replaces an old one.

As the spec describes (and Synapse does): the upgrader needs the power to send `m.room.tombstone` in
the old room. The new room's create event names its predecessor and keeps the room type; the state
users expect to keep is copied (join rules, history visibility, guest access, name, topic, avatar,
encryption, server ACLs, pinned events, space children and parents, bans, canonical alias, power
levels: with the upgrader raised while copying and the copied levels restored last; in a version where
creators are privileged, creators are left out of the copied `users`). Local aliases move to the new
room, and so does a room directory listing; local members' tags of the room, m.direct entries and push
rules naming it are copied for the new room (`_transfer_user_state`). The old room gets a tombstone
pointing at the new one, and its power levels are raised so that ordinary members can no longer talk
or invite there.

An upgrade is all-or-nothing up to the new room, and resumable after it:
- everything the new room gets is computed first (power levels made integral in a way that cannot
  fail), then the room is created with its copied state, moved aliases and listing in one transaction
  (`hs/services/new_room.py`): a failure leaves no new room and the old one untouched;
- the old room's changes (canonical alias cleared, tombstone, raised levels) are events in another room
  (in a cluster, maybe on another persister), so they cannot share that transaction. Should they fail,
  the new room is recorded as the old one's successor (`rooms.predecessor_room_id`), and the upgrader's
  next request finishes the upgrade with it instead of creating another room: a successor the old
  room's tombstone does not name yet, of the requested version and creators, the upgrader still in it.
Upgrades of one room run one at a time in this process (upgrades are served by the main process).

The new room's `predecessor` names the old room and, as Synapse does, the old room's tombstone event
(room versions 1-11): there the new room ID is chosen first and the new room created while the
tombstone naming it waits to be persisted (`_upgrade_tombstone_first`: still all-or-nothing up to the
new room, since a tombstone refused or not persisted leaves the upgrade resumable as above). A v12 room
ID is its create event's hash, so that create event cannot name a tombstone naming the room: `event_id`
is left out, as the spec allows (v1.16) and Synapse does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hs.db.stores.rooms import NewRoom, RoomIdTaken
from hs.errors import bad_json, forbidden, not_found, unavailable, unsupported_room_version
from hs.events.auth import (
    get_room_creators,
    get_send_level,
    get_user_power_level,
    is_valid_user_id,
    parse_power_level,
)
from hs.events.canonical_json import CANONICALJSON_MAX_INT, CANONICALJSON_MIN_INT
from hs.events.event import Event, JsonDict, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from hs.services.new_room import InitialEvent, create_room, new_room_id
from hs.services.room_ids import check_room_id
from hs.services.room_membership import MEMBER
from hs.util import KeyedLocks

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)

# Copied in this order (single state events), then the keyed ones below, then the power levels.
COPIED_STATE = ("m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.name",
                "m.room.topic", "m.room.avatar", "m.room.encryption", "m.room.server_acl", "m.room.pinned_events")
COPIED_KEYED = ("m.space.child", "m.space.parent")
MAX_COPIED_BANS = 10_000


class RoomUpgrader:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self._locks = KeyedLocks()  # per old room

    async def upgrade(self, requester: Requester, old_room_id: str, new_version: Any,
                      additional_creators: Any = None) -> str:
        user_id = requester.user_id
        check_room_id(old_room_id)
        if not isinstance(new_version, str):
            raise bad_json("'new_version' must be a string")
        rv = KNOWN_ROOM_VERSIONS.get(new_version)
        if rv is None:
            raise unsupported_room_version(f"Unsupported room version {new_version!r}")
        creators_extra: list[str] = []
        if additional_creators is not None:
            if not rv.privileged_creators:
                raise bad_json("'additional_creators' needs a room version with privileged creators")
            if not isinstance(additional_creators, list) or not all(
                    isinstance(u, str) and is_valid_user_id(u) for u in additional_creators):
                raise bad_json("'additional_creators' must be a list of user IDs")
            creators_extra = list(dict.fromkeys(u for u in additional_creators if u != user_id))

        # An unknown room is 404 (Synapse checks this before the auth check, which would say 403).
        if await self.hs.room_store.get_room_version_id(old_room_id) is None:
            raise not_found(f"Unknown room {old_room_id}")
        async with self._locks.lock(old_room_id):
            state = await self.store.get_current_state_events(old_room_id)
            old_create = state.get(("m.room.create", ""))
            member = state.get((MEMBER, user_id))
            if old_create is None or member is None or member.membership != "join":
                raise forbidden("You are not in the room")
            old_rv = old_create.room_version
            if get_user_power_level(user_id, state, old_rv) < get_send_level(state, "m.room.tombstone", True,
                                                                              old_rv):
                raise forbidden("You don't have permission to upgrade the room")

            new_room_id = await self._unfinished_successor(old_room_id, user_id, rv, creators_extra, state)
            if new_room_id is not None:
                logger.info("upgrade of %s: finishing the earlier upgrade to %s", old_room_id, new_room_id)
                await self._retire_old_room(old_room_id, new_room_id, user_id, state)
                await self._transfer_user_state(old_room_id, new_room_id)
                return new_room_id
            profile = await self.hs.room_membership.profile_content(user_id)
            initial = self._initial_events(rv, user_id, profile, state, {user_id, *creators_extra})
            content = self._create_content(rv, user_id, old_create, creators_extra)
            room = NewRoom(creator=user_id, upgrade_of=old_room_id)
            if not rv.room_id_from_create_event and self.hs.events_stream.is_writer_for_room(old_room_id):
                new_room_id = await self._upgrade_tombstone_first(old_room_id, user_id, rv, content, initial, room,
                                                                  state)
                await self._transfer_user_state(old_room_id, new_room_id)
                return new_room_id
            if not rv.room_id_from_create_event:
                # The old room is written elsewhere (a cluster), so its tombstone cannot be built
                # here ahead of the new room: the predecessor names the last event known in it.
                last = await self.store.get_forward_extremities(old_room_id)
                if last:
                    content["predecessor"]["event_id"] = sorted(last)[0]
            new_room_id = await create_room(self.hs, rv, user_id, content, initial, room)
            await self._retire_old_room(old_room_id, new_room_id, user_id, state)
            await self._transfer_user_state(old_room_id, new_room_id)
        return new_room_id

    async def _transfer_user_state(self, old_room_id: str, new_room_id: str) -> None:
        """What local members of the old room set up for it, carried to the new room as Synapse does:
        their tags of the room, its place in their `m.direct` lists, and their push rules naming it
        (a room rule, or conditions on its room ID). Best effort after the upgrade stands: failures are
        logged, and a process that does not write those streams (a cluster's) leaves it out."""
        if self.hs.account_data_stream.tracker is None or self.hs.push_rules_stream.tracker is None:
            logger.info("upgrade of %s: account data or push rules written elsewhere; not copied", old_room_id)
            return
        for member in sorted(await self.store.get_joined_members(old_room_id)):
            if member.partition(":")[2] != self.hs.server_name:
                continue
            try:
                await self._copy_account_data(member, old_room_id, new_room_id)
                await self._copy_push_rules(member, old_room_id, new_room_id)
            except Exception:
                logger.exception("upgrade of %s: could not copy %s's tags and push rules", old_room_id, member)

    async def _copy_account_data(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        stream = self.hs.account_data_stream

        def add_tags(current: JsonDict | None) -> JsonDict | None:
            if not old_tags:
                return None
            tags = current.get("tags") if current is not None else None
            merged = {**old_tags, **(tags if isinstance(tags, dict) else {})}
            return {**(current or {}), "tags": merged}

        old = await stream.store.get(user_id, old_room_id, "m.tag")
        old_tags = old.get("tags") if isinstance(old, dict) and isinstance(old.get("tags"), dict) else {}
        await stream.update(user_id, new_room_id, "m.tag", add_tags)

        def add_direct(current: JsonDict | None) -> JsonDict | None:
            if not isinstance(current, dict):
                return None
            for key, rooms in current.items():
                if isinstance(rooms, list) and old_room_id in rooms and new_room_id not in rooms:
                    return {**current, key: [*rooms, new_room_id]}
            return None

        await stream.update(user_id, "", "m.direct", add_direct)

    async def _copy_push_rules(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        rules = await self.hs.push_rules.ruleset(user_id)
        for kind in ("override", "room", "underride"):
            for rule in rules.get(kind, []):
                if rule.get("default") or not rule.get("enabled", True):
                    continue
                conditions = rule.get("conditions") or []
                names_room = any(isinstance(c, dict) and c.get("key") == "room_id" and c.get("pattern") == old_room_id
                                 for c in conditions)
                if not names_room and not (kind == "room" and rule["rule_id"] == old_room_id):
                    continue
                body: JsonDict = {"actions": rule["actions"]}
                if kind != "room":
                    body["conditions"] = [
                        {**c, "pattern": new_room_id} if isinstance(c, dict) and c.get("key") == "room_id"
                        and c.get("pattern") == old_room_id else c for c in conditions]
                # The copy is named after the new room, as Synapse names it (its rule IDs end in it).
                await self.hs.push_rules.put_rule(user_id, kind, new_room_id, body, None, None)

    async def _upgrade_tombstone_first(self, old_room_id: str, user_id: str, rv: RoomVersion, content: JsonDict,
                                       initial: list[InitialEvent], room: NewRoom,
                                       state: dict[StateKey, Event]) -> str:
        """An upgrade to a version whose room IDs are chosen (not hashes: v1-v11), by the old room's
        writer. As Synapse does, the new room's create event names the tombstone in `predecessor`
        (clients follow it back): the new room ID is chosen first, the tombstone naming it is built
        (and authorised) in the old room, and while it waits to be persisted the new room is created
        naming it. A refused tombstone creates nothing; a new room that cannot be created leaves no
        tombstone. Should persisting the tombstone fail after that, the new room is the old one's
        unfinished successor, and the next request finishes the upgrade (with another tombstone)."""
        new_room = new_room_id(self.hs)

        async def create_new_room(tombstone: Event) -> None:
            content["predecessor"]["event_id"] = tombstone.event_id
            create = self.hs.event_sender.build_create_event(rv, user_id, content, new_room)
            try:
                if self.hs.events_stream.is_writer_for_room(new_room):
                    await self.hs.event_sender.persist_new_room(create, initial, room)
                else:
                    await self.hs.replication_client.create_room(create, initial, room)
            except RoomIdTaken:  # a random 18-character room ID already taken: in theory only
                raise unavailable("Could not find a free room ID; please try again") from None

        await self.hs.event_sender.send(old_room_id, user_id, "m.room.tombstone", {
            "body": "This room has been replaced", "replacement_room": new_room}, state_key="",
            before_persist=create_new_room)
        await self._tidy_old_room(old_room_id, user_id, state)
        return new_room

    async def _unfinished_successor(self, old_room_id: str, user_id: str, rv: RoomVersion, creators_extra: list[str],
                                    state: dict[StateKey, Event]) -> str | None:
        """A room this user created to replace the old one in an upgrade that stopped before the old room
        was tombstoned, if it is what this request would create."""
        candidate = await self.hs.room_store.get_latest_successor(old_room_id, user_id)
        if candidate is None:
            return None
        tombstone = state.get(("m.room.tombstone", ""))
        if tombstone is not None and tombstone.content.get("replacement_room") == candidate:
            return None  # that upgrade finished: this is a new one
        found = await self.store.get_current_state_events(candidate, [("m.room.create", ""), (MEMBER, user_id)])
        create, member = found.get(("m.room.create", "")), found.get((MEMBER, user_id))
        if create is None or create.room_version is not rv or member is None or member.membership != "join":
            return None
        extra = create.content.get("additional_creators")
        if sorted(extra if isinstance(extra, list) else []) != sorted(creators_extra):
            return None
        return candidate

    @staticmethod
    def _create_content(rv: RoomVersion, user_id: str, old_create: Event, creators_extra: list[str]) -> JsonDict:
        content: JsonDict = {"room_version": rv.identifier, "predecessor": {"room_id": old_create.room_id}}
        if not rv.implicit_room_creator:
            content["creator"] = user_id
        room_type = old_create.content.get("type")
        if isinstance(room_type, str):
            content["type"] = room_type
        if old_create.content.get("m.federate") is False:
            content["m.federate"] = False  # a local-only room stays local-only (as Synapse)
        if creators_extra:
            content["additional_creators"] = creators_extra
        return content

    @staticmethod
    def _initial_events(rv: RoomVersion, user_id: str, profile: JsonDict, state: dict[StateKey, Event],
                        creators: set[str]) -> list[InitialEvent]:
        """The new room's events after its create event: the upgrader's join, then the copied state.
        Copies the new version's rules refuse are left out (`optional`)."""
        def copy(etype: str, content: JsonDict, state_key: str = "") -> InitialEvent:
            return InitialEvent(user_id, etype, dict(content), state_key, optional=True)

        old_create = state[("m.room.create", "")]
        old_pl = state.get(("m.room.power_levels", ""))
        levels = integer_levels(old_pl.content, old_create.room_version) if old_pl is not None else {}
        users: dict[str, int] = levels.get("users") or {}
        if rv.privileged_creators:
            users = {u: lvl for u, lvl in users.items() if u not in creators}
        elif old_create.room_version.privileged_creators or old_pl is None:
            # The old room's creators outranked every level (or had 100 by default): 100 here.
            for creator in get_room_creators(state, old_create.room_version) | {user_id}:
                users[creator] = max(users.get(creator, 0), 100)
        levels["users"] = users

        events = [InitialEvent(user_id, MEMBER, {"membership": "join", **profile}, user_id)]
        if rv.privileged_creators:
            events.append(InitialEvent(user_id, "m.room.power_levels", levels))
        else:
            # While copying, the upgrader (at 100 until the first power levels) may send anything up to
            # 100; the copied levels are restored last.
            events.append(InitialEvent(user_id, "m.room.power_levels", {**levels, "users": {**users, user_id: 100}}))
        for etype in COPIED_STATE:
            ev = state.get((etype, ""))
            if ev is not None and ev.content:
                events.append(copy(etype, ev.content))
        for (etype, state_key), ev in sorted(state.items()):
            if etype in COPIED_KEYED and ev.content:
                events.append(copy(etype, ev.content, state_key))
        bans = [k[1] for k, ev in sorted(state.items()) if k[0] == MEMBER and ev.membership == "ban"]
        for banned in bans[:MAX_COPIED_BANS]:
            events.append(copy(MEMBER, {"membership": "ban"}, banned))
        canonical = state.get(("m.room.canonical_alias", ""))
        if canonical is not None and canonical.content:
            events.append(copy("m.room.canonical_alias", canonical.content))
        if not rv.privileged_creators:
            events.append(InitialEvent(user_id, "m.room.power_levels", levels))
        return events

    async def _retire_old_room(self, old_room_id: str, new_room_id: str, user_id: str,
                               state: dict[StateKey, Event]) -> None:
        """The old room's part, once the new room exists: its canonical alias cleared (the aliases moved),
        the tombstone, raised levels. Only the tombstone is required (a failure there is resumed by the
        next request, see the module docstring); the other two are logged if they fail."""
        await self._clear_canonical_alias(old_room_id, user_id, state)
        await self.hs.event_sender.send(old_room_id, user_id, "m.room.tombstone", {
            "body": "This room has been replaced", "replacement_room": new_room_id}, state_key="")
        await self._restrict_old_room(old_room_id, user_id, state)

    async def _tidy_old_room(self, old_room_id: str, user_id: str, state: dict[StateKey, Event]) -> None:
        """After a tombstone sent first (`_upgrade_tombstone_first`): the old canonical alias cleared
        (the aliases moved with the new room) and the old room restricted; failures are logged."""
        await self._clear_canonical_alias(old_room_id, user_id, state)
        await self._restrict_old_room(old_room_id, user_id, state)

    async def _clear_canonical_alias(self, old_room_id: str, user_id: str, state: dict[StateKey, Event]) -> None:
        canonical = state.get(("m.room.canonical_alias", ""))
        if canonical is not None and canonical.content:
            try:
                await self.hs.event_sender.send(old_room_id, user_id, "m.room.canonical_alias", {}, state_key="")
            except Exception:  # the aliases moved already: this only tidies the old room's state
                logger.exception("upgrade of %s: could not clear the old canonical alias", old_room_id)

    async def _restrict_old_room(self, room_id: str, user_id: str, state: dict[StateKey, Event]) -> None:
        old_pl = state.get(("m.room.power_levels", ""))
        content: dict[str, Any] = dict(old_pl.content) if old_pl is not None else {}
        users_default = content.get("users_default", 0)
        restricted = max(50, (users_default if isinstance(users_default, int) else 0) + 1)
        content["events_default"] = max(restricted, content.get("events_default", 0)
                                         if isinstance(content.get("events_default"), int) else 0)
        content["invite"] = max(restricted, content.get("invite", 0) if isinstance(content.get("invite"), int) else 0)
        try:
            await self.hs.event_sender.send(room_id, user_id, "m.room.power_levels", content, state_key="")
        except Exception:  # after the tombstone the upgrade stands; this only quietens the old room
            logger.exception("upgrade of %s: could not restrict the old room", room_id)


def integer_levels(content: JsonDict, room_version: RoomVersion) -> JsonDict:
    """Power levels as v10+ requires them, from a room of `room_version`: levels as that version reads
    them (integer strings and floats before v10) made integers; values that are no level there, are
    outside canonical JSON's integer range, or name no valid user are dropped. Never fails, so an
    upgrade can compute its new room entirely before creating it."""
    def level(value: Any) -> int | None:
        lv = parse_power_level(value, room_version)
        return lv if lv is not None and CANONICALJSON_MIN_INT <= lv <= CANONICALJSON_MAX_INT else None

    out: JsonDict = {}
    for key, value in content.items():
        if key in ("users", "events", "notifications"):
            if isinstance(value, dict):
                out[key] = {k: lv for k, v in value.items()
                            if (key != "users" or is_valid_user_id(k)) and (lv := level(v)) is not None}
        elif (lv := level(value)) is not None:
            out[key] = lv
    return out
