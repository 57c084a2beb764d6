"""Who is making a request: access-token lookup (hashed, cached) and the resulting Requester, which
endpoints a guest may call, and where each device was last seen (address, time, user agent), for
GET /devices and admins' whois.

An application service's `as_token` is a token too (application service API, "Identity assertion"):
its requests act as the service's sender, or as the user its `user_id` parameter names within the
service's user namespace (a user that exists, but for the sender), and with `device_id` as one of that
user's devices. The services are looked up in a dict built once, so a user's token costs nothing more.
What the request carries besides (no rate limits for a service with `rate_limited: false`, the `ts`
of timestamp massaging) is kept for the request's task in context variables (`enter_request`), read
where the limits are applied and where events are built: no service in between needs to pass it on.

Reading the token, address and user agent from the HTTP request is the API layer's part
(`get_requester` in hs/api/base.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hs.errors import forbidden, guest_access_forbidden, unknown_device, unknown_token
from hs.replication.http_client import REPLICATION_PREFIX
from hs.services.admin_users import admin_users
from hs.services.ratelimit import RATELIMIT_EXEMPT
from hs.util import LruCache, now_ms

if TYPE_CHECKING:
    from hs.appservice.registration import ApplicationService
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

# As Synapse's LAST_SEEN_GRANULARITY: a device seen again from the same address and user agent is
# stored again only after this long, so a busy client costs a write every two minutes, not per request.
LAST_SEEN_GRANULARITY_MS = 120_000
MAX_USER_AGENT_LENGTH = 512
Sighting = tuple[str, str, int, str | None, str | None]  # user_id, device_id, ts, ip, user_agent

# The endpoints a guest may call, by method and route template without its API prefix (the one list,
# checked where a request's access token is read, so no handler has to remember guests). The spec's
# Guest Access module lists the first group; the second is what Synapse also lets guests call (its
# `allow_guest=True` endpoints), read-only or needed by clients that use guest accounts (Element's
# room previews: versions, capabilities, joined rooms, public rooms, joining by alias, relations).
# Every other authenticated endpoint answers a guest 403 M_GUEST_ACCESS_FORBIDDEN, as on Synapse
# (which also refuses them account data, filters, typing, receipts, read markers, push rules,
# presence, logout and the room key backup).
GUEST_ROUTES: frozenset[tuple[str, str]] = frozenset({
    # The spec's list: reading a room (and media) ...
    ("GET", "/rooms/{roomId}/state"),
    ("GET", "/rooms/{roomId}/context/{eventId}"),
    ("GET", "/rooms/{roomId}/event/{eventId}"),
    ("GET", "/rooms/{roomId}/state/{eventType}"),
    ("GET", "/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("GET", "/rooms/{roomId}/messages"),
    ("GET", "/rooms/{roomId}/members"),
    ("GET", "/rooms/{roomId}/initialSync"),
    ("GET", "/sync"),
    ("GET", "/events"),
    ("GET", "/media/download/{serverName}/{mediaId}"),
    ("GET", "/media/download/{serverName}/{mediaId}/{fileName}"),
    ("GET", "/media/thumbnail/{serverName}/{mediaId}"),
    # ... sending to it (any event type since v1.2, state events too) and to devices ...
    ("POST", "/rooms/{roomId}/join"),
    ("POST", "/rooms/{roomId}/leave"),
    ("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "/sendToDevice/{eventType}/{txnId}"),
    # ... their own account (the display name only, of the profile) ...
    ("PUT", "/profile/{userId}/displayname"),
    ("DELETE", "/profile/{userId}/displayname"),
    ("GET", "/devices"),
    ("GET", "/devices/{deviceId}"),
    ("PUT", "/devices/{deviceId}"),
    ("GET", "/account/whoami"),
    # ... and end-to-end encryption.
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
    # Synapse's additions.
    ("POST", "/keys/upload/{deviceId}"),
    ("GET", "/keys/changes"),
    ("POST", "/keys/signatures/upload"),
    ("GET", "/_matrix/client/versions"),
    ("GET", "/capabilities"),
    ("GET", "/joined_rooms"),
    ("POST", "/join/{roomIdOrAlias}"),
    ("GET", "/publicRooms"),
    ("POST", "/publicRooms"),
    ("GET", "/profile/{userId}"),
    ("GET", "/profile/{userId}/displayname"),
    ("GET", "/profile/{userId}/avatar_url"),
    ("GET", "/rooms/{roomId}/relations/{eventId}"),
    ("GET", "/rooms/{roomId}/relations/{eventId}/{relType}"),
    ("GET", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"),
    ("GET", "/rooms/{roomId}/hierarchy"),
    ("GET", "/room_summary/{roomIdOrAlias}"),
    ("GET", "/thirdparty/protocols"),
    ("GET", "/thirdparty/protocol/{protocol}"),
    ("GET", "/thirdparty/location"),
    ("GET", "/thirdparty/location/{protocol}"),
    ("GET", "/thirdparty/user"),
    ("GET", "/thirdparty/user/{protocol}"),
    ("POST", "/sync"),  # sliding sync (/_matrix/client/v4/sync)
    ("POST", "/org.matrix.simplified_msc3575/sync"),
    # The unauthenticated media endpoints, should a guest's token come along.
    ("GET", "/download/{serverName}/{mediaId}"),
    ("GET", "/download/{serverName}/{mediaId}/{fileName}"),
    ("GET", "/thumbnail/{serverName}/{mediaId}"),
})
# Allowed to guests only while `turn_allow_guests` is on (Synapse's option; on by default).
GUEST_TURN_ROUTE = ("GET", "/voip/turnServer")
# The API prefix of a route template (`/_matrix/client/v3`, `/_matrix/media/r0`, ...), and the
# replication prefix a write forwarded to a stream writer carries in front of it.
_API_PREFIX = re.compile(
    rf"^(?:{re.escape(REPLICATION_PREFIX)}/client)?/_matrix/(?:client|media)/(?:api/v1|v\d+|r0|unstable)(?=/)")


def guest_route(method: str, route_template: str) -> tuple[str, str]:
    """The allowlist key of a request: its method and route template without the API prefix."""
    return method, _API_PREFIX.sub("", route_template, count=1)


# The routes where an application service's `ts` sets the new event's origin_server_ts (the spec's
# "Timestamp massaging": PUT /send and PUT /state only; other endpoints ignore it, as Synapse's do).
TS_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}"),
})
# The massaged origin_server_ts of the events this request builds (None: now), with the request's task.
# Set per request (each aiohttp request runs in a task of its own, whose context copy this is) and read
# by EventSender._build (`massaged_ts`) in that task only: a task the request starts inherits the
# context, and must not date what it builds later with the request's `ts`.
MASSAGED_TS: ContextVar[tuple[asyncio.Task[Any] | None, int] | None] = ContextVar("massaged_ts", default=None)


def massaged_ts() -> int | None:
    """The `ts` of the application service request this task is handling, if any."""
    value = MASSAGED_TS.get()
    if value is None or value[0] is not asyncio.current_task():
        return None
    return value[1]


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str  # "" for an application service acting without `device_id`
    access_token: str
    is_guest: bool = False
    # The application service whose as_token authenticated the request (acting as `user_id`).
    app_service: ApplicationService | None = field(default=None, compare=False)
    # An application service's `ts` on PUT /send or /state: the new event's origin_server_ts.
    origin_server_ts: int | None = None


def enter_request(requester: Requester) -> None:
    """Note for the rest of this request's task what its requester implies beyond its identity: no
    rate limits for a service registered with `rate_limited: false` (whoever it acts as, as Synapse),
    and a massaged timestamp."""
    service = requester.app_service
    RATELIMIT_EXEMPT.set(service is not None and not service.rate_limited)
    set_massaged_ts(requester.origin_server_ts)


def set_massaged_ts(ts: int | None) -> None:
    """The origin_server_ts of the events the current task builds from now on (None: now); also for
    a writer building an event a worker's request asked for (its `ts` carried over replication)."""
    MASSAGED_TS.set(None if ts is None else (asyncio.current_task(), ts))


class Auth:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._last_seen: LruCache[tuple[str, str], Sighting] = LruCache(100_000, name="services.auth.self._last_seen")
        self._unstored: dict[tuple[str, str], Sighting] = {}
        self._storing: asyncio.Task[None] | None = None
        self._services_by_token: dict[str, ApplicationService] = {s.as_token: s for s in hs.config.app_services}
        # Users an application service was seen to act as that exist (accounts are never removed).
        self._known_users: LruCache[str, bool] = LruCache(100_000, name="services.auth.self._known_users")

    def app_service_for_token(self, token: str | None, address: str | None = None) -> ApplicationService | None:
        """The application service whose as_token this is (from an address its whitelist allows)."""
        service = self._services_by_token.get(token) if token is not None else None
        return service if service is not None and self._address_allowed(service, address) else None

    async def authenticate(self, token: str, *, user_id: str | None = None, device_id: str | None = None,
                           ts: int | None = None, address: str | None = None) -> Requester:
        """The requester an access token belongs to, or 401 M_UNKNOWN_TOKEN.

        For an application service's as_token, `user_id` and `device_id` (the query parameters) name
        whom it acts as, and `ts` the timestamp of the event it sends; a user's token ignores them.
        A service with an `ip_range_whitelist` is recognised only from those addresses (Synapse)."""
        service = self._services_by_token.get(token)
        if service is not None and self._address_allowed(service, address):
            return await self._app_service_requester(service, token, user_id, device_id, ts)
        info = await self.hs.user_store.get_token(token)
        if info is None:
            raise unknown_token()
        # A locked account (401 M_USER_LOCKED) or an expired admin-made token (Synapse's admin API).
        await admin_users(self.hs).check_token(info.user_id, token)
        return Requester(info.user_id, info.device_id, token, info.is_guest)

    @staticmethod
    def _address_allowed(service: ApplicationService, address: str | None) -> bool:
        if not service.ip_range_whitelist:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(cidr, strict=False) for cidr in service.ip_range_whitelist)

    async def _create_sender(self, service: ApplicationService) -> None:
        """The service's own user gets an account (and profile) when the service first acts as it, so
        that what needs one (its profile, which bridges set at start-up; a login as it) works. Synapse
        keeps no account for it, but upserts the profile rows the same calls need."""
        localpart = service.sender[1:].split(":", 1)[0]
        try:
            if await self.hs.user_store.create_user(service.sender, None, displayname=localpart):
                logger.info("created the account of application service %s's sender %s", service.id,
                            service.sender)
        except Exception:  # another process created it at the same moment: it exists, as wanted
            if await self.hs.user_store.get_user(service.sender) is None:
                raise

    async def _app_service_requester(self, service: ApplicationService, token: str, user_id: str | None,
                                     device_id: str | None, ts: int | None) -> Requester:
        """The service acting as its sender, or as `user_id`: a user of its namespace that is registered
        (403 otherwise, as Synapse), and with `device_id` one of that user's devices (400
        M_UNKNOWN_DEVICE otherwise, as the spec says)."""
        effective = user_id or service.sender
        if effective != service.sender and not service.is_interested_in_user(effective):
            raise forbidden(f"Application service cannot masquerade as this user ({effective}).")
        if self._known_users.get(effective) is None:
            if await self.hs.user_store.get_user(effective) is None:
                if effective != service.sender:
                    raise forbidden(f"Application service has not registered this user ({effective})")
                await self._create_sender(service)
            self._known_users.set(effective, True)
        if device_id is not None and await self.hs.user_store.get_device(effective, device_id) is None:
            raise unknown_device(
                f"Application service trying to use a device that doesn't exist ('{device_id}' for {effective})")
        return Requester(effective, device_id or "", token, app_service=service, origin_server_ts=ts)

    def check_guest_access(self, requester: Requester, method: str, route_template: str) -> None:
        """403 M_GUEST_ACCESS_FORBIDDEN when a guest calls an endpoint not in GUEST_ROUTES.

        `route_template` is the matched route's path pattern with its variables unfilled
        (`/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`), so a room ID or event type in
        the path can never make a forbidden endpoint look like an allowed one."""
        if not requester.is_guest:
            return
        key = guest_route(method, route_template)
        if key in GUEST_ROUTES or (key == GUEST_TURN_ROUTE and self.hs.config.turn_allow_guests):
            return
        raise guest_access_forbidden("Guest access not allowed")

    # -- where devices were last seen -------------------------------------------------------------------
    def saw(self, user_id: str, device_id: str, ip: str | None, user_agent: str | None) -> None:
        """Note the device's sighting; it is stored in the background (the request does not wait)."""
        agent = (user_agent or "")[:MAX_USER_AGENT_LENGTH] or None
        key = (user_id, device_id)
        now = now_ms()
        last = self._last_seen.get(key)
        if last is not None and last[3:] == (ip, agent) and now - last[2] < LAST_SEEN_GRANULARITY_MS:
            return
        sighting = (user_id, device_id, now, ip, agent)
        self._last_seen.set(key, sighting)
        self._unstored[key] = sighting
        if self._storing is None or self._storing.done():
            self._storing = asyncio.get_running_loop().create_task(self._store_sightings())

    async def _store_sightings(self) -> None:
        while self._unstored:
            batch = list(self._unstored.values())
            self._unstored = {}
            try:
                await self.hs.user_store.record_last_seen(batch)
            except Exception:  # a lost sighting is only a stale "last seen"
                logger.warning("could not store %d device sightings", len(batch), exc_info=True)

    async def sightings_stored(self) -> None:
        """Wait until this process's sightings so far are in the database (before devices are read)."""
        task = self._storing
        if task is not None and not task.done():
            await asyncio.shield(task)
