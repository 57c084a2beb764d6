"""Room aliases: resolving one (joins by alias), creating and deleting local aliases
(PUT/GET/DELETE /directory/room/{alias}), a room's local aliases (GET /rooms/{roomId}/aliases), and
the check that aliases in `m.room.canonical_alias` point at the room.

As in Synapse, an alias may be deleted by its creator or by whoever may change the room list
(`RoomDirectory.can_change_room_list`); a deleted alias is dropped from the room's canonical alias
event when the user may send one.

Application services own their alias namespaces (the spec's "Server admin style permissions"): a
service (its as_token, whoever it acts as) creates and deletes the aliases of its namespaces and no
others; nobody else may create or delete an alias that a service claims exclusively. Both refusals are
400 M_EXCLUSIVE, as on Synapse.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hs.appservice.queries import appservice_queries
from hs.errors import MatrixError, bad_alias, exclusive, forbidden, invalid_param, not_found, room_in_use
from hs.events.event import JsonDict
from hs.services.room_ids import check_room_id, parse_alias

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)


class RoomAliases:
    """Local room aliases: what they point at, who made them, and who may remove them."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.rooms = hs.room_store

    async def resolve_room(self, room_id_or_alias: str) -> str:
        """The room a /join or /knock path names: a room ID as it is, a local alias looked up."""
        return (await self.resolve_room_and_servers(room_id_or_alias))[0]

    async def resolve_room_and_servers(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """The room a path names, and servers in it to join through: a remote alias is asked of its
        server (federation's query/directory)."""
        if room_id_or_alias.startswith("!"):
            return room_id_or_alias, []
        if room_id_or_alias.startswith("#"):
            _local, server = parse_alias(room_id_or_alias)
            if server != self.hs.server_name:
                return await self._remote_alias(room_id_or_alias, server)
            row = await self.rooms.get_alias(room_id_or_alias)
            if row is None and await appservice_queries(self.hs).query_alias(room_id_or_alias):
                row = await self.rooms.get_alias(room_id_or_alias)  # the service has just made it
            if row is None:
                raise not_found(f"Room alias {room_id_or_alias} not found")
            return str(row["room_id"]), []
        raise invalid_param(f"{room_id_or_alias!r} is not a legal room ID or room alias")

    async def _remote_alias(self, alias: str, server: str) -> tuple[str, list[str]]:
        from hs.federation.client import FederationError

        if not self.hs.config.federation_allowed(server):
            raise not_found(f"Room alias {alias} not found (federation with {server} is not allowed)")
        try:
            body = await self.hs.federation_client.get_json(server, "/_matrix/federation/v1/query/directory",
                                                            {"room_alias": alias})
        except FederationError as e:
            if e.status == 404:
                raise not_found(f"Room alias {alias} not found") from None
            raise not_found(f"Room alias {alias} could not be resolved: {e}") from None
        room_id = body.get("room_id") if isinstance(body, dict) else None
        servers = body.get("servers") if isinstance(body, dict) else None
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise not_found(f"Room alias {alias} could not be resolved: {server} answered without a room ID")
        via = [s for s in servers if isinstance(s, str)][:20] if isinstance(servers, list) else []
        return room_id, [server, *via]

    async def check_canonical_alias(self, room_id: str, content: JsonDict) -> None:
        """Before an m.room.canonical_alias is sent: its local aliases must exist and point at the room
        (M_BAD_ALIAS otherwise); other servers' aliases are not checked."""
        aliases: list[Any] = []
        if content.get("alias") is not None:
            aliases.append(content["alias"])
        alt = content.get("alt_aliases")
        if alt is not None:
            if not isinstance(alt, list):
                raise invalid_param("alt_aliases must be a list")
            aliases += alt
        for alias in aliases:
            if not isinstance(alias, str):
                raise invalid_param("Aliases must be strings")
            _local, server = parse_alias(alias)
            if server != self.hs.server_name:
                continue
            row = await self.rooms.get_alias(alias)
            if row is None or row["room_id"] != room_id:
                raise bad_alias(f"Room alias {alias} does not point to the room")

    def _local_alias(self, alias: str) -> None:
        _localpart, server = parse_alias(alias)
        if server != self.hs.server_name:
            raise invalid_param("Room alias must be local")

    def _check_namespace(self, requester: Requester, alias: str) -> None:
        """An application service stays within its alias namespaces; others keep out of exclusive ones
        (but a service's own sender, whichever way it authenticated, as Synapse's can_modify_alias)."""
        service = requester.app_service
        if service is not None:
            if not service.is_interested_in_alias(alias):
                raise exclusive("This application service has not reserved this kind of alias.")
            return
        for other in self.hs.config.app_services:
            if other.is_interested_in_alias(alias):
                if requester.user_id == other.sender:
                    return
                if other.is_exclusive_alias(alias):
                    raise exclusive("This alias is reserved by an application service.")

    async def create_alias(self, requester: Requester, alias: str, room_id: str) -> None:
        self._local_alias(alias)
        self._check_namespace(requester, alias)
        check_room_id(room_id)
        if not await self.rooms.room_exists(room_id):
            raise not_found("Room not found")
        if not await self.rooms.create_alias(alias, room_id, requester.user_id):
            raise room_in_use(f"Room alias {alias} already exists", status=409)

    async def get_alias(self, alias: str) -> JsonDict:
        parse_alias(alias)
        row = await self.rooms.get_alias(alias)
        if row is None and await appservice_queries(self.hs).query_alias(alias):
            row = await self.rooms.get_alias(alias)  # the service has just made it
        if row is None:
            raise not_found(f"Room alias {alias} not found")
        return {"room_id": row["room_id"], "servers": [self.hs.server_name]}

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        self._local_alias(alias)
        row = await self.rooms.get_alias(alias)
        if row is None:
            raise not_found(f"Room alias {alias} not found")
        room_id = str(row["room_id"])
        user_id = requester.user_id
        if requester.app_service is not None:
            self._check_namespace(requester, alias)  # a service deletes its namespace's aliases, no others
            await self.rooms.delete_alias(alias)
            return
        if row["creator"] != user_id and not await self.hs.room_directory.can_change_room_list(room_id, user_id):
            raise forbidden("You don't have permission to delete the alias.")
        self._check_namespace(requester, alias)
        await self.rooms.delete_alias(alias)
        await self._remove_from_canonical_alias(requester, room_id, alias)

    async def _remove_from_canonical_alias(self, requester: Requester, room_id: str, alias: str) -> None:
        """Drop a deleted alias from m.room.canonical_alias, if the user may; never fails the delete."""
        current = await self.hs.event_store.get_current_state_event(room_id, "m.room.canonical_alias", "")
        if current is None:
            return
        content = dict(current.content)
        changed = False
        if content.get("alias") == alias:
            del content["alias"]
            changed = True
        alt = content.get("alt_aliases")
        if isinstance(alt, list) and alias in alt:
            content["alt_aliases"] = [a for a in alt if a != alias]
            changed = True
        if not changed:
            return
        try:
            await self.hs.event_sender.send(room_id, requester.user_id, "m.room.canonical_alias", content,
                                            state_key="")
        except MatrixError as e:
            logger.info("not updating canonical alias of %s after deleting %s: %s", room_id, alias, e.msg)

    async def get_room_aliases(self, requester: Requester, room_id: str) -> list[str]:
        await self.hs.room_history.check_read_access(requester.user_id, room_id, allow_departed=False)
        return await self.rooms.get_aliases_for_room(room_id)

