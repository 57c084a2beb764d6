"""Synapse's admin API on federation destinations (the servers this one sends to), for server admins:

- GET  /_synapse/admin/v1/federation/destinations: a page of them (`from`, `limit`, `order_by`, `dir`,
  `destination` as a substring filter), `next_token` while more remain;
- GET  /_synapse/admin/v1/federation/destinations/{destination}: one, with its backoff;
- GET  /_synapse/admin/v1/federation/destinations/{destination}/rooms: the rooms shared with it;
- POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection: forget its backoff
  and have its sender try at once.

The answers and errors are Synapse's (synapse/rest/admin/federation.py), so admin tools written for
Synapse work here: 401 without a token, 403 M_FORBIDDEN for a non-admin, 404 M_NOT_FOUND "Unknown
destination", 400 M_INVALID_PARAM for a malformed or negative `from`/`limit` and an unknown `order_by`
or `dir`. As everywhere in hs, a `limit` above the maximum is clamped to it (Synapse has none).

The rooms of a destination differ in their source: Synapse lists its `destination_rooms` table (each
room it has sent the destination an event for, with that event's stream ordering). hs has no such
table, so a destination's rooms are those where one of its users is joined in the room's current
state (`current_state_events`, an `m.room.member` with membership `join` whose state key ends with
`:` + the destination), and each room's `stream_ordering` is that of its latest event (`events`).

The destinations themselves are the `federation_destinations` rows the federation senders keep
(hs/federation/outbox.py, hs/db/stores/federation_sending.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester
from hs.api.params import MAX_OFFSET, query_enum, query_int, query_limit, query_str
from hs.db.stores.federation_admin import DESTINATION_ORDERS, FederationAdminStore
from hs.db.stores.federation_sending import DestinationRow
from hs.errors import bad_request, forbidden, not_found

if TYPE_CHECKING:
    from hs.server import HomeServer

ADMIN_DESTINATIONS = "/_synapse/admin/v1/federation/destinations"
MAX_LIMIT = 1000


async def _admin_hs(request: web.Request) -> HomeServer:
    """The HomeServer, once the requester is known to be a server admin (401 / 403 otherwise)."""
    hs = get_hs(request)
    requester = await get_requester(request)
    if not await hs.user_store.is_admin(requester.user_id):
        raise forbidden("You are not a server admin")
    return hs


async def _known_destination(hs: HomeServer, destination: str) -> DestinationRow:
    row = await hs.federation_outbox.store.get_destination(destination)
    if row is None:
        raise not_found("Unknown destination")
    return row


def _page(request: web.Request) -> tuple[int, int, bool]:
    """(`from`, `limit`, newest-first): Synapse's offset paging, `dir` f (the default) or b."""
    offset = query_int(request, "from", 0, maximum=MAX_OFFSET)
    limit = query_limit(request, 100, MAX_LIMIT, minimum=0)
    return offset, limit, query_enum(request, "dir", ("f", "b"), "f") == "b"


def _paged(key: str, items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    """Synapse's page: `next_token` (the next offset, as a string) only while more remain."""
    page: dict[str, Any] = {key: items, "total": total}
    if offset + limit < total:
        page["next_token"] = str(offset + len(items))
    return page


async def list_destinations(request: web.Request) -> HandlerResult:
    hs = await _admin_hs(request)
    offset, limit, descending = _page(request)
    order_by = query_enum(request, "order_by", DESTINATION_ORDERS, "destination") or "destination"
    contains = query_str(request, "destination")
    rows, total = await FederationAdminStore(hs.db).list_destinations(offset, limit, order_by, descending,
                                                                      contains)
    return 200, _paged("destinations", [r.to_admin_json() for r in rows], total, offset, limit)


async def get_destination(request: web.Request) -> HandlerResult:
    hs = await _admin_hs(request)
    row = await _known_destination(hs, request.match_info["destination"])
    answer = row.to_admin_json()
    if not row.retry_last_ts:
        # Synapse shows the backoff only while there is one (a retry_last_ts): else no failure either.
        answer.update(failure_ts=None, retry_last_ts=0, retry_interval=0)
    return 200, answer


async def destination_rooms(request: web.Request) -> HandlerResult:
    hs = await _admin_hs(request)
    destination = (await _known_destination(hs, request.match_info["destination"])).destination
    offset, limit, descending = _page(request)
    rooms, total = await FederationAdminStore(hs.db).destination_rooms(destination, offset, limit, descending)
    return 200, _paged("rooms", [{"room_id": room_id, "stream_ordering": stream_ordering}
                                 for room_id, stream_ordering in rooms], total, offset, limit)


async def reset_connection(request: web.Request) -> HandlerResult:
    """Synapse refuses (400 M_UNKNOWN) when the destination is not backing off: no retry_last_ts."""
    hs = await _admin_hs(request)
    destination = request.match_info["destination"]
    row = await _known_destination(hs, destination)
    if not row.retry_last_ts:
        raise bad_request("The retry timing does not need to be reset for this destination.")
    if not await hs.federation_outbox.reset_connection(destination):
        raise not_found("Unknown destination")
    return 200, {}


ROUTES: list[Route] = [
    Route("GET", ADMIN_DESTINATIONS, list_destinations, "main", prefixes=()),
    Route("GET", ADMIN_DESTINATIONS + "/{destination}", get_destination, "main", prefixes=()),
    Route("GET", ADMIN_DESTINATIONS + "/{destination}/rooms", destination_rooms, "main", prefixes=()),
    Route("POST", ADMIN_DESTINATIONS + "/{destination}/reset_connection", reset_connection, "main",
          prefixes=()),
]
