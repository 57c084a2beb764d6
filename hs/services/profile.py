"""Profiles: a user's display name and avatar URL, and their propagation into the user's room
memberships (each joined room gets a new m.room.member event carrying them), as Synapse does."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hs.appservice.queries import appservice_queries
from hs.errors import forbidden, invalid_param, not_found
from hs.events.auth import get_domain, is_valid_user_id
from hs.util import LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

MAX_DISPLAYNAME_LEN = 256
MAX_AVATAR_URL_LEN = 1000
FIELDS = ("displayname", "avatar_url")
# Remote profiles: how long an answer (or a failure) is reused, and how many are kept.
REMOTE_CACHE_TTL_S = 60.0
REMOTE_MISS_TTL_S = 10.0
REMOTE_CACHE_SIZE = 10_000
# A profile is never worth a long wait (an invite asks for the invitee's before it is sent).
REMOTE_TIMEOUT_S = 10.0


def checked_value(field: str, value: Any) -> str | None:
    """The value to store (None clears the field), or M_INVALID_PARAM."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid_param(f"'{field}' must be a string")
    if field == "displayname":
        if len(value) > MAX_DISPLAYNAME_LEN:
            raise invalid_param(f"Displayname is too long (max {MAX_DISPLAYNAME_LEN})")
    else:
        if len(value) > MAX_AVATAR_URL_LEN:
            raise invalid_param(f"Avatar URL is too long (max {MAX_AVATAR_URL_LEN})")
        # Any string, not only an mxc:// URI: Synapse stores what it is given, and clients that set
        # other URLs (bridges, old clients) rely on it; clients show only what they can fetch.
    return value


class ProfileService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # Other servers' users' profiles: user ID -> (expiry, monotonic seconds; the profile or None).
        self._remote: LruCache[str, tuple[float, dict[str, Any] | None]] = LruCache(REMOTE_CACHE_SIZE, name="services.profile.self._remote")

    async def get(self, user_id: str) -> dict[str, Any]:
        """The stored profile of a local user, or a remote user's as their server tells it; or 404."""
        profile = None
        if user_id.startswith("@") and user_id.endswith(":" + self.hs.server_name):
            profile = await self.hs.user_store.get_profile(user_id)
            if profile is None and await appservice_queries(self.hs).query_user(user_id):
                profile = await self.hs.user_store.get_profile(user_id)  # the service has just made it
        elif is_valid_user_id(user_id):
            profile = await self._get_remote(user_id)
        if profile is None:
            raise not_found("Profile was not found")
        return profile

    async def _get_remote(self, user_id: str) -> dict[str, Any] | None:
        """Asked of the user's server (query/profile), kept briefly: a display name shown in a room list
        is asked for again and again, and may change. Any failure is "no profile" (M_NOT_FOUND)."""
        cached = self._remote.get(user_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        server = get_domain(user_id)
        profile: dict[str, Any] | None = None
        ttl = REMOTE_MISS_TTL_S
        if self.hs.config.federation_allowed(server):
            try:
                body = await self.hs.federation_client.get_json(
                    server, "/_matrix/federation/v1/query/profile", {"user_id": user_id},
                    timeout=REMOTE_TIMEOUT_S)
            except Exception as e:  # refused (404: no such user), unreachable, or not JSON
                logger.info("profile of %s from %s: %s", user_id, server, e)
            else:
                if isinstance(body, dict):
                    profile = {k: body[k] for k in FIELDS if isinstance(body.get(k), str)}
                    ttl = REMOTE_CACHE_TTL_S
        self._remote.set(user_id, (time.monotonic() + ttl, profile))
        return profile

    async def set_field(self, requester_id: str, user_id: str, field: str, value: Any) -> None:
        """Set (None: clear) one field of the requester's own profile and update their memberships."""
        if user_id != requester_id:
            raise forbidden(f"Cannot set another user's {field}")
        await self.get(user_id)
        await self.hs.user_store.set_profile_field(user_id, field, checked_value(field, value))
        await self.propagate(user_id)

    async def propagate(self, user_id: str) -> None:
        """Send an updated m.room.member join event into every room the user is joined to.

        A failure in one room (e.g. the user may not change their membership there) is logged and the
        other rooms are still updated, as Synapse does.
        """
        profile = await self.hs.user_store.get_profile(user_id) or {}
        rooms = await self.hs.event_store.get_rooms_for_user(user_id, ("join",))
        for room_id in rooms:
            try:
                current = await self.hs.event_store.get_current_state_event(room_id, "m.room.member", user_id)
                if current is None or current.content.get("membership") != "join":
                    continue
                content: dict[str, Any] = dict(current.content)
                for field in FIELDS:
                    if profile.get(field) is None:
                        content.pop(field, None)
                    else:
                        content[field] = profile[field]
                if content == current.content:
                    continue
                await self.hs.event_sender.send(room_id, user_id, "m.room.member", content, state_key=user_id)
            except Exception:
                logger.warning("could not update %s's membership in %s with new profile", user_id, room_id,
                               exc_info=True)
