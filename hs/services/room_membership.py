"""Membership as clients change it: join, knock, invite, leave, kick, ban, unban, forget, and the
list of joined rooms.

Every change is an `m.room.member` event sent through `EventSender.send`, which checks it against the
auth rules; this service adds what the client-server API puts on top: profile data on member events,
restricted joins (an authorising local member), the join rate limit and deduplication of no-op
changes (as Synapse does: the existing event is the answer).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hs.errors import (
    MatrixError,
    bad_json,
    bad_request,
    forbidden,
    guest_access_forbidden,
    invalid_param,
    missing_param,
    not_found,
)
from hs.events.auth import get_domain, get_join_rule, get_named_level, get_user_power_level, is_valid_user_id
from hs.events.event import Event, JsonDict, StateKey
from hs.events.room_versions import RoomVersion
from hs.services.admin_rooms import check_not_blocked
from hs.services.room_ids import check_room_id

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

MEMBER = "m.room.member"
MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")

logger = logging.getLogger(__name__)


def join_content(body: JsonDict) -> JsonDict:
    """The member event content a POST /join/{roomIdOrAlias} body asks for: the body is the event's
    content, as in Synapse (clients attach keys of their own to their join), less what is the server's
    to set (`membership`, the restricted-join authoriser) or an instruction rather than content
    (`third_party_signed`). `reason` is checked and passed on its own."""
    return {k: v for k, v in body.items()
            if k not in ("membership", "reason", "third_party_signed", "join_authorised_via_users_server")}


def require_membership_target(body: JsonDict) -> str:
    """The `user_id` of an invite/kick/ban/unban body: M_MISSING_PARAM if absent, M_BAD_JSON if not a
    string, M_INVALID_PARAM if not a user ID."""
    if "user_id" not in body:
        raise missing_param("Missing 'user_id'")
    target = body["user_id"]
    if not isinstance(target, str):
        raise bad_json("'user_id' must be a string")
    if not is_valid_user_id(target):
        raise invalid_param(f"{target!r} is not a valid user ID")
    return target


class RoomMembership:
    """Member events as clients ask for them (the auth rules have the last word)."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store

    async def profile_content(self, user_id: str) -> JsonDict:
        """The display name and avatar a user's member events carry: a local user's stored profile, a
        remote user's as their server tells it (none if it cannot be had: the invite goes ahead)."""
        if user_id.partition(":")[2] != self.hs.server_name:
            try:
                profile = await self.hs.profiles.get(user_id)
            except MatrixError:
                return {}
        else:
            profile = await self.hs.user_store.get_profile(user_id) or {}
        return {k: profile[k] for k in ("displayname", "avatar_url") if isinstance(profile.get(k), str)}

    async def update_membership(self, requester: Requester, room_id: str, target: str, action: str,
                                reason: str | None = None, content: JsonDict | None = None,
                                ratelimit: bool = True) -> Event:
        """Change `target`'s membership: action is join, invite, leave, kick, ban or unban."""
        check_room_id(room_id)
        user_id = requester.user_id
        membership = {"kick": "leave", "unban": "leave"}.get(action, action)
        if membership not in MEMBERSHIPS or membership == "knock":
            raise bad_json(f"Unknown membership {action!r}")
        if membership not in ("leave", "ban"):  # an admin-blocked room takes only leaves and bans
            await check_not_blocked(self.hs, room_id)
        rv = await self.hs.room_store.get_room_version(room_id)
        if rv is None:
            if membership in ("join", "leave") and target == user_id:
                raise not_found("No known servers" if membership == "join" else "Not a known room")
            raise forbidden("Unknown room")
        if membership == "leave" and target == user_id and await self._must_join_remotely(room_id):
            return await self._leave_remotely(room_id, user_id, reason)
        new_content: JsonDict = dict(content or {})
        new_content["membership"] = membership
        if requester.is_guest:
            new_content["kind"] = "guest"  # as Synapse marks a guest's member events
        if reason is not None:
            new_content["reason"] = reason
        if membership in ("join", "invite"):
            for k, v in (await self.profile_content(target)).items():
                new_content.setdefault(k, v)
        current = await self.store.get_membership(room_id, target)
        # Checked above the auth rules, before any event is built, as Synapse does: a banned user is
        # only banned again or unbanned (the auth rules would let a kick of a banned user through,
        # turning the ban into a leave), and a kick is of a member (joined, invited or knocking). A
        # kick repeated with the same reason is refused too, not answered as a no-op change below
        # (Synapse's no-op comparison leaves out the membership the action implies, so it never is).
        if current is not None and current[0] == "ban" and action not in ("ban", "unban", "leave"):
            raise forbidden(f"Cannot {action} user who was banned")
        if action == "kick" and (current is None or current[0] in ("leave", "ban")):
            raise forbidden("The target user is not in the room")
        if current is not None:
            old = await self.store.get_event(current[1])
            if (old is not None and old.membership == membership and old.sender == user_id
                    and old.content == new_content):
                return old  # a no-op change: Synapse returns the existing event
        if membership == "join":
            await self._prepare_join(requester, room_id, rv, new_content, current)
            if ratelimit and (current is None or current[0] != "join"):
                self.hs.ratelimiters["joins_local"].check(user_id)
        elif action == "unban" and (current is None or current[0] != "ban"):
            raise forbidden(f"{target} is not banned from the room")
        remote_invitee = membership == "invite" and get_domain(target) != self.hs.server_name
        return await self.hs.event_sender.send(
            room_id, user_id, MEMBER, new_content, state_key=target, room_version=rv,
            before_persist=self.hs.federation_membership.co_sign_invite if remote_invitee else None)

    async def _leave_remotely(self, room_id: str, user_id: str, reason: str | None) -> Event:
        """Leave a room no local user is joined to (reject an invite, rescind a knock): only a resident
        server can build the leave, so through the inviter's server (then the room ID's, then the room
        creator's as the invite's or knock's stripped state named it)."""
        current = await self.store.get_membership(room_id, user_id)
        if current is None or current[0] not in ("invite", "knock"):
            raise forbidden(f"{user_id} is not in room {room_id}")
        servers: list[str] = []
        invite = await self.store.get_event(current[1])
        if invite is not None:
            servers.append(get_domain(invite.sender))
        if ":" in room_id:
            servers.append(room_id.split(":", 1)[1])
        room = await self.hs.room_store.get_room(room_id)
        creator = room.get("creator") if room is not None else None
        if isinstance(creator, str) and ":" in creator:  # (a v12 room ID names no server: its creator's)
            servers.append(get_domain(creator))
        content: JsonDict = {"reason": reason} if reason is not None else {}
        return await self.hs.federation_membership.leave_remote_room(user_id, room_id, servers, content)

    async def _prepare_join(self, requester: Requester, room_id: str, rv: RoomVersion, content: JsonDict,
                            current: tuple[str, str] | None) -> None:
        user_id = requester.user_id
        if requester.is_guest:
            guest = await self.store.get_current_state_event(room_id, "m.room.guest_access")
            if guest is None or guest.content.get("guest_access") != "can_join":
                raise guest_access_forbidden("Guest access not allowed")
        if current is not None and current[0] in ("join", "invite"):
            return
        state = await self.store.get_current_state_events(room_id, [
            ("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""), (MEMBER, user_id)])
        rule = get_join_rule(state)
        if rule in ("restricted", "knock_restricted") and rv.restricted_join_rule:
            content.pop("join_authorised_via_users_server", None)
            authoriser = await self._restricted_join_authoriser(room_id, user_id, state)
            if authoriser is None:
                raise forbidden("You do not belong to any of the required rooms/spaces to join this room.")
            content["join_authorised_via_users_server"] = authoriser

    async def _restricted_join_authoriser(self, room_id: str, user_id: str,
                                          state: dict[StateKey, Event]) -> str | None:
        """A joined local user able to invite, if `user_id` is joined to a room the allow list names."""
        jr = state.get(("m.room.join_rules", ""))
        allow = jr.content.get("allow") if jr is not None else None
        allowed_rooms = [a.get("room_id") for a in allow or [] if isinstance(a, dict)
                         and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)]
        joined = await self.store.get_rooms_for_user(user_id, ("join",))
        if not any(r in joined for r in allowed_rooms):
            return None
        rv = await self.hs.room_store.get_room_version(room_id)
        pl_state = await self.store.get_current_state_events(room_id, [("m.room.create", ""), ("m.room.power_levels", "")])
        invite_level = get_named_level(pl_state, "invite", rv)
        for member in sorted(await self.store.get_joined_members(room_id)):
            if member.partition(":")[2] != self.hs.server_name:
                continue
            if get_user_power_level(member, pl_state, rv) >= invite_level:
                return member
        return None

    async def join(self, requester: Requester, room_id_or_alias: str, reason: str | None = None,
                   via: list[str] | None = None, content: JsonDict | None = None) -> str:
        """Join a room here, or (not known here, or we are not in it any more) through other servers:
        `via`, the alias's server and what it named, and the room ID's server (before room v12).
        `content`: other keys for the member event (POST /join's body, see `join_content`)."""
        room_id, servers = await self.hs.room_aliases.resolve_room_and_servers(room_id_or_alias)
        check_room_id(room_id)
        await check_not_blocked(self.hs, room_id)
        if await self._must_join_remotely(room_id):
            if requester.is_guest:  # whether the room lets guests in is not known here (nor on Synapse)
                raise guest_access_forbidden("Guest access not allowed")
            candidates = [*(via or []), *await self._inviting_servers(room_id, requester.user_id), *servers]
            if ":" in room_id:
                candidates.append(room_id.split(":", 1)[1])
            if not candidates:
                raise not_found("No known servers")
            self.hs.ratelimiters["joins_remote"].check(requester.user_id)
            remote_content: JsonDict = {**(content or {}), **await self.profile_content(requester.user_id)}
            if reason is not None:
                remote_content["reason"] = reason
            return await self.hs.federation_membership.join_remote_room(requester.user_id, room_id, candidates,
                                                                        remote_content)
        await self.update_membership(requester, room_id, requester.user_id, "join", reason, content)
        return room_id

    async def _inviting_servers(self, room_id: str, user_id: str) -> list[str]:
        """The inviter's server, when the user holds an invite to the room: it is in the room."""
        current = await self.store.get_membership(room_id, user_id)
        if current is None or current[0] != "invite":
            return []
        invite = await self.store.get_event(current[1])
        return [get_domain(invite.sender)] if invite is not None else []

    async def _must_join_remotely(self, room_id: str) -> bool:
        """The room is not here, or is a room joined over federation where no local user is left."""
        room = await self.hs.room_store.get_room(room_id)
        if room is None:
            return True
        if not room.get("remote"):
            return False
        members = await self.store.get_joined_members(room_id)
        return not any(m.partition(":")[2] == self.hs.server_name for m in members)

    async def knock(self, requester: Requester, room_id_or_alias: str, reason: str | None = None,
                    via: list[str] | None = None) -> str:
        """POST /knock: ask to join a room. The auth rules decide (join rule `knock`, or
        `knock_restricted` where the room version has it; not banned, invited or joined). Accepting is an
        invite, rejecting a kick, and the knocker rescinds with /leave (all through update_membership).
        A room no local user is in is knocked on through other servers: `via`, the alias's server and
        what it named, and the room ID's server (before room v12)."""
        user_id = requester.user_id
        if requester.is_guest:
            raise guest_access_forbidden("Guest access is not allowed")
        room_id, servers = await self.hs.room_aliases.resolve_room_and_servers(room_id_or_alias)
        check_room_id(room_id)
        await check_not_blocked(self.hs, room_id)
        if await self._must_join_remotely(room_id):
            return await self._knock_remotely(user_id, room_id, [*(via or []), *servers], reason)
        rv = await self.hs.room_store.get_room_version(room_id)
        if rv is None:
            raise not_found("No known servers")
        if not rv.knock_join_rule:
            raise forbidden(f"Room version {rv.identifier} does not support knocking")
        content: JsonDict = {"membership": "knock", **await self.profile_content(user_id)}
        if reason is not None:
            content["reason"] = reason
        current = await self.store.get_membership(room_id, user_id)
        if current is not None and current[0] == "knock":
            old = await self.store.get_event(current[1])
            if old is not None and old.sender == user_id and old.content == content:
                return room_id  # a no-op change, as update_membership treats one
        else:
            # Knocks count against the join rate limit (rc_joins), as in Synapse.
            self.hs.ratelimiters["joins_local"].check(user_id)
        await self.hs.event_sender.send(room_id, user_id, MEMBER, content, state_key=user_id, room_version=rv)
        return room_id

    async def _knock_remotely(self, user_id: str, room_id: str, servers: list[str], reason: str | None) -> str:
        candidates = list(servers)
        if ":" in room_id:
            candidates.append(room_id.split(":", 1)[1])
        if not candidates:
            raise not_found("No known servers")
        current = await self.store.get_membership(room_id, user_id)
        if current is None or current[0] != "knock":
            self.hs.ratelimiters["joins_remote"].check(user_id)
        content: JsonDict = await self.profile_content(user_id)
        if reason is not None:
            content["reason"] = reason
        await self.hs.federation_membership.knock_remote_room(user_id, room_id, candidates, content)
        return room_id

    async def forget(self, requester: Requester, room_id: str) -> None:
        check_room_id(room_id)
        current = await self.store.get_membership(room_id, requester.user_id)
        if current is None:
            if not await self.hs.room_store.room_exists(room_id):
                raise not_found("Room not found")
        elif current[0] == "join":
            raise bad_request(f"User {requester.user_id} is in room {room_id}")
        await self.store.forget(requester.user_id, room_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return sorted(await self.store.get_rooms_for_user(user_id, ("join",)))

    async def kick_guests(self, room_id: str) -> list[str]:
        """Our guests leave a room whose `m.room.guest_access` no longer says `can_join` (the spec's
        Guest Access module: the server MUST set their membership to leave). Each guest leaves by
        itself, as on Synapse, so no power level is needed; returns who left. To be called once the
        event changing guest access is in the room's current state."""
        from hs.services.auth import Requester

        guest_access = await self.store.get_current_state_event(room_id, "m.room.guest_access")
        if guest_access is not None and guest_access.content.get("guest_access") == "can_join":
            return []
        left: list[str] = []
        members = await self.store.get_current_state_events(room_id, [(MEMBER, None)])
        for (_, user_id), event in sorted(members.items()):
            if (event.membership not in ("join", "invite") or event.content.get("kind") != "guest"
                    or get_domain(user_id) != self.hs.server_name):
                continue
            row = await self.hs.user_store.get_user(user_id)
            if row is None or not row.get("is_guest"):
                continue  # upgraded since: a full account stays
            try:
                await self.update_membership(Requester(user_id, "", "", is_guest=True), room_id, user_id, "leave",
                                             ratelimit=False)
                left.append(user_id)
            except MatrixError as e:  # one guest that cannot leave does not keep the others in
                logger.warning("could not remove guest %s from %s: %s", user_id, room_id, e)
        return left
