"""The published room directory: whether a room is listed (GET/PUT /directory/list/room/{roomId})
and the list itself (/publicRooms), each room described by its summary (`RoomSummaries.entry`).

Other servers may read the list (`/_matrix/federation/v1/publicRooms`) when
`allow_public_rooms_over_federation` is on; rooms created with `m.federate: false` are left out of
that answer. A client's `/publicRooms?server=<other>` is answered by asking that server.

Who may publish a room, or delete others' aliases, is Synapse's rule: a joined member allowed to send
`m.room.canonical_alias`, or a server admin.

Application services keep lists of their own, one per third-party network they bridge
(PUT/DELETE /directory/list/appservice/{networkId}/{roomId}, with the service's as_token only). A
/publicRooms request shows one of them with `third_party_instance_id` ("<service id>|<network id>",
Synapse's instance IDs), or the server's list together with all of them with `include_all_networks`;
without either, the server's list alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.db.stores.appservice_directory import AppserviceDirectoryStore
from hs.errors import MatrixError, bad_json, bad_request, forbidden, invalid_param, not_found, unreachable
from hs.events.auth import get_send_level, get_user_power_level
from hs.events.event import JsonDict
from hs.services.room_ids import check_room_id
from hs.services.room_membership import MEMBER

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester


class RoomDirectory:
    """Which rooms this server lists publicly, who may change that, and the list itself."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.rooms = hs.room_store
        self.appservice_lists = AppserviceDirectoryStore(hs.db)

    async def _is_server_admin(self, user_id: str) -> bool:
        user = await self.hs.user_store.get_user(user_id)
        return bool(user and user.get("admin"))

    async def can_change_room_list(self, room_id: str, user_id: str) -> bool:
        """Synapse's rule for publishing a room or deleting others' aliases: a joined member allowed to
        send m.room.canonical_alias (or a server admin)."""
        if await self._is_server_admin(user_id):
            return True
        state = await self.hs.event_store.get_current_state_events(room_id, [
            ("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""), (MEMBER, user_id)])
        member = state.get((MEMBER, user_id))
        if member is None or member.membership != "join":
            return False
        rv = await self.rooms.get_room_version(room_id)
        level = get_send_level(state, "m.room.canonical_alias", True, rv)
        return get_user_power_level(user_id, state, rv) >= level

    async def get_visibility(self, room_id: str) -> str:
        check_room_id(room_id)
        room = await self.rooms.get_room(room_id)
        if room is None:
            raise not_found("Room not found")
        return "public" if room["is_public"] else "private"

    async def set_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        check_room_id(room_id)
        if visibility not in ("public", "private"):
            raise invalid_param("Invalid visibility setting")
        if not await self.rooms.room_exists(room_id):
            raise not_found("Room not found")
        if not await self.can_change_room_list(room_id, requester.user_id):
            raise forbidden("This user is not permitted to publish rooms to the room list")
        await self.rooms.set_room_is_public(room_id, visibility == "public")

    async def set_appservice_visibility(self, requester: Requester, network_id: str, room_id: str,
                                        visibility: str) -> None:
        """Publish a room in (or take it out of) the requesting service's list for `network_id`."""
        service = requester.app_service
        if service is None:
            raise forbidden("Only appservices can edit the appservice published room list")
        check_room_id(room_id)
        if visibility not in ("public", "private"):
            raise invalid_param("Invalid visibility setting")
        if not network_id:
            raise invalid_param("Invalid network ID")
        if not await self.rooms.room_exists(room_id):
            raise not_found("Room not found")
        await self.appservice_lists.set_published(service.id, network_id, room_id, visibility == "public")

    async def _listed_room_ids(self, include_all_networks: bool, third_party_instance_id: str | None) -> list[str]:
        """The rooms of the list asked for: one service's network, or the server's (and every
        service's with `include_all_networks`)."""
        if third_party_instance_id and not include_all_networks:
            service_id, sep, network_id = third_party_instance_id.partition("|")
            if not sep or "|" in network_id:
                raise bad_request(f"Invalid ID {third_party_instance_id!r}")
            return await self.appservice_lists.get_room_ids(service_id, network_id)
        room_ids = await self.rooms.get_public_room_ids()
        if include_all_networks:
            listed = set(room_ids)
            room_ids += [r for r in await self.appservice_lists.get_all_room_ids() if r not in listed]
        return room_ids

    async def public_rooms(self, limit: int | None, since: str | None, search_term: str | None,
                           room_types: list[str | None] | None, *, federatable_only: bool = False,
                           include_all_networks: bool = False, third_party_instance_id: str | None = None,
                           ) -> JsonDict:
        """One page of the list (`limit` None: all of it). `federatable_only`: for other servers,
        without the rooms whose create event says `m.federate: false`. `include_all_networks` and
        `third_party_instance_id` choose the list (`_listed_room_ids`)."""
        offset = 0
        if since:
            if since[:1] not in ("n", "p") or not since[1:].isdigit():
                raise invalid_param("Invalid since token")
            offset = int(since[1:])
        entries = []
        for room_id in await self._listed_room_ids(include_all_networks, third_party_instance_id):
            entry = await self.hs.room_summaries.entry(room_id)
            if entry is None:
                continue
            if not matches(entry, search_term, room_types):
                continue
            if federatable_only and not await self._federatable(room_id):
                continue
            entries.append(entry)
        entries.sort(key=lambda e: (-e["num_joined_members"], e["room_id"]))
        total = len(entries)
        end = total if limit is None else offset + limit
        result: JsonDict = {"chunk": entries[offset:end], "total_room_count_estimate": total}
        if end < total:
            result["next_batch"] = f"n{end}"
        if offset > 0:
            result["prev_batch"] = f"p{max(0, offset - (limit or offset))}"
        return result

    async def public_rooms_for_server(self, limit: int | None, since: str | None, search_term: str | None,
                                      room_types: list[str | None] | None, include_all_networks: bool,
                                      third_party_instance_id: str | None) -> JsonDict:
        """The list as other servers see it (federatable rooms only), an application service's
        network list with `third_party_instance_id`, or all of them with `include_all_networks`."""
        return await self.public_rooms(limit, since, search_term, room_types, federatable_only=True,
                                       include_all_networks=include_all_networks,
                                       third_party_instance_id=third_party_instance_id)

    async def _federatable(self, room_id: str) -> bool:
        create = await self.hs.event_store.get_current_state_event(room_id, "m.room.create")
        return create is not None and create.content.get("m.federate", True) is not False

    async def remote_public_rooms(self, server: str, limit: int | None, since: str | None,
                                  search_term: str | None, room_types: list[str | None] | None,
                                  include_all_networks: bool = False,
                                  third_party_instance_id: str | None = None) -> JsonDict:
        """Another server's published rooms, asked of it. With a filter the filtered POST is tried
        first; a server that does not know it (404, 405, M_UNRECOGNIZED) is asked for its whole list,
        which is then filtered here (Synapse does the same). `since` is the other server's token.
        A refusal (the other server does not share its list) is 403, any other failure 502."""
        from hs.federation.client import FederationError

        path = "/_matrix/federation/v1/publicRooms"
        client = self.hs.federation_client
        try:
            if search_term is not None or room_types is not None:
                body: JsonDict = {"include_all_networks": include_all_networks}
                if limit:
                    body["limit"] = limit
                if since:
                    body["since"] = since
                if third_party_instance_id:
                    body["third_party_instance_id"] = third_party_instance_id
                filt: JsonDict = {}
                if search_term is not None:
                    filt["generic_search_term"] = search_term
                if room_types is not None:
                    filt["room_types"] = room_types
                body["filter"] = filt
                try:
                    return _room_list(server, await client.post_json(server, path, body))
                except FederationError as e:
                    if e.status not in (404, 405) and e.errcode not in ("M_UNRECOGNIZED", "M_NOT_FOUND"):
                        raise
                limit = since = None  # filtered here: the whole list, its pages would not match ours
            query: dict[str, str | list[str]] = {"include_all_networks": "true" if include_all_networks else "false"}
            if limit:
                query["limit"] = str(limit)
            if since:
                query["since"] = since
            if third_party_instance_id:
                query["third_party_instance_id"] = third_party_instance_id
            answer = _room_list(server, await client.get_json(server, path, query))
        except FederationError as e:
            raise _remote_error(server, e) from None
        if search_term is not None or room_types is not None:
            answer["chunk"] = [r for r in answer["chunk"] if matches(r, search_term, room_types)]
        return answer


def room_types_filter(filt: JsonDict) -> list[str | None] | None:
    """A /publicRooms filter's `room_types`: a list of strings and nulls (400 M_BAD_JSON otherwise)."""
    room_types = filt.get("room_types")
    if room_types is not None and (not isinstance(room_types, list)
                                   or not all(t is None or isinstance(t, str) for t in room_types)):
        raise bad_json("'room_types' must be a list of strings or nulls")
    return room_types


def matches(entry: JsonDict, search_term: str | None, room_types: list[str | None] | None) -> bool:
    """Whether a directory entry passes a /publicRooms filter: its type among `room_types` (None
    standing for rooms without a type), `search_term` in its name, topic or canonical alias."""
    if room_types is not None and entry.get("room_type") not in room_types:
        return False
    if search_term:
        term = search_term.casefold()
        haystack = [entry.get("name"), entry.get("topic"), entry.get("canonical_alias")]
        if not any(isinstance(h, str) and term in h.casefold() for h in haystack):
            return False
    return True


def _room_list(server: str, body: Any) -> JsonDict:
    """A remote /publicRooms answer, its chunk kept to the entries that are objects with a room ID."""
    chunk = body.get("chunk") if isinstance(body, dict) else None
    if not isinstance(chunk, list):
        raise unreachable(f"{server} answered /publicRooms without a list of rooms")
    out: JsonDict = {"chunk": [r for r in chunk if isinstance(r, dict) and isinstance(r.get("room_id"), str)]}
    for key in ("next_batch", "prev_batch"):
        if isinstance(body.get(key), str):
            out[key] = body[key]
    estimate = body.get("total_room_count_estimate")
    if isinstance(estimate, int) and not isinstance(estimate, bool):
        out["total_room_count_estimate"] = estimate
    return out


def _remote_error(server: str, e: Exception) -> MatrixError:
    from hs.federation.client import FederationDenied, FederationError

    if isinstance(e, FederationError) and not isinstance(e, FederationDenied) and e.status == 403:
        return forbidden(f"You are not allowed to view the public rooms list of {server}")
    return unreachable(f"Failed to fetch the room list of {server}: {e}")
