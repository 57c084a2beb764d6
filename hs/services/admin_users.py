"""Synapse's users admin API, the work behind hs/api/client/admin_users.py: listing and describing
users in Synapse's shapes, creating and modifying them (password, profile, admin flag, deactivation,
lock, user type), a password reset, whois, joined rooms, devices, shadow-bans and logging in as a user.

Two flags reach every request, so they are cached per process (one query per user, dropped in every
process through hs.caches when an admin changes them):

- `locked`: the user's tokens answer 401 M_USER_LOCKED (soft logout) until an admin unlocks the
  account; nothing else changes (Synapse's `locked`), so its sessions work again afterwards.
- `shadow_banned`: the user's sends are answered with a made-up event ID and nothing is stored, as
  Synapse does (hs/services/room_sending.py asks `is_shadow_banned`).

A token an admin made with `valid_until_ms` stops working then (401 M_UNKNOWN_TOKEN, soft logout). Only
users who have such a token pay a lookup per new token for it.

The service is built once per HomeServer on first use (`admin_users(hs)`), so a process that never
serves these endpoints and never authenticates a locked user holds nothing.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from hs.db.stores.admin_users import AdminUserStore, UserFilter, UserFlags
from hs.db.stores.users import hash_token
from hs.errors import bad_json, bad_request, forbidden, invalid_param, not_found, unknown_token, user_locked
from hs.util import LruCache, now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

CACHE = "admin_user_flags"
# Synapse's known user types (UserTypes.ALL_BUILTIN_USER_TYPES); anything else is "Invalid user type".
USER_TYPES = ("support", "bot")
_services: weakref.WeakKeyDictionary[HomeServer, AdminUsers] = weakref.WeakKeyDictionary()


def admin_users(hs: HomeServer) -> AdminUsers:
    service = _services.get(hs)
    if service is None:
        service = _services[hs] = AdminUsers(hs)
    return service


class AdminUsers:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.server_name = hs.server_name
        self.store = AdminUserStore(hs.db)
        self._flags: LruCache[str, UserFlags] = LruCache(100_000, name="services.admin_users.self._flags")
        self._expiry: LruCache[str, int] = LruCache(10_000, name="services.admin_users.self._expiry")  # token hash -> valid until (0: never)
        hs.caches.register(CACHE, self._drop)

    # -- per request ----------------------------------------------------------------------------------
    def _drop(self, user_id: Any) -> None:
        if user_id is None:
            self._flags.clear()
            self._expiry.clear()
        else:
            self._flags.pop(str(user_id))

    async def _invalidate(self, user_id: str) -> None:
        await self.hs.caches.invalidate(CACHE, user_id)

    async def flags(self, user_id: str) -> UserFlags | None:
        cached = self._flags.get(user_id)
        if cached is not None:
            return cached
        found = await self.store.flags(user_id)
        if found is not None:
            self._flags.set(user_id, found)
        return found

    async def check_token(self, user_id: str, token: str) -> None:
        """401 M_USER_LOCKED for a locked account, 401 M_UNKNOWN_TOKEN for an expired admin-made token."""
        flags = await self.flags(user_id)
        if flags is None:
            return
        if flags.locked:
            raise user_locked()
        if flags.has_expiring_tokens:
            key = hash_token(token)
            until = self._expiry.get(key)
            if until is None:
                until = await self.store.token_valid_until(key) or 0
                self._expiry.set(key, until)
            if until and now_ms() >= until:
                raise unknown_token("Access token has expired", soft_logout=True)

    async def is_shadow_banned(self, user_id: str) -> bool:
        flags = await self.flags(user_id)
        return flags is not None and flags.shadow_banned

    # -- checks ---------------------------------------------------------------------------------------
    async def require_admin(self, user_id: str) -> None:
        if not await self.hs.user_store.is_admin(user_id):
            raise forbidden("You are not a server admin")

    def is_local(self, user_id: str) -> bool:
        localpart, sep, domain = user_id.partition(":")
        if not user_id.startswith("@") or not sep or len(localpart) < 2:
            raise invalid_param("Invalid user ID")
        return domain == self.server_name

    def require_local(self, user_id: str, msg: str) -> None:
        if not self.is_local(user_id):
            raise bad_request(msg)

    async def require_user(self, user_id: str, msg: str = "User not found") -> None:
        if await self.hs.user_store.get_user(user_id) is None:
            raise not_found(msg)

    # -- reading --------------------------------------------------------------------------------------
    async def list_users(self, f: UserFilter, offset: int, limit: int, order_by: str,
                         descending: bool) -> dict[str, Any]:
        users, total = await self.store.list_users(f, offset, limit, order_by, descending)
        page: dict[str, Any] = {"users": users, "total": total}
        if offset + limit < total:
            page["next_token"] = str(offset + len(users))
        return page

    async def details(self, user_id: str) -> dict[str, Any] | None:
        """Synapse's user details: the list's fields and what hs has no notion of (consent, application
        service registration, third-party and external IDs, suspension) at their empty values."""
        row = await self.store.get_user(user_id)
        if row is None:
            return None
        return {**row, "appservice_id": None, "consent_server_notice_sent": None, "consent_version": None,
                "consent_ts": None, "suspended": False, "threepids": [], "external_ids": []}

    async def whois(self, user_id: str) -> dict[str, Any]:
        """Synapse's whois shape: each device's sessions and where it was last seen."""
        await self.hs.auth.sightings_stored()
        devices: dict[str, Any] = {}
        for d in await self.hs.user_store.get_device_sessions(user_id):
            connection = {k: v for k, v in (("ip", d.get("last_seen_ip")), ("last_seen", d.get("last_seen_ts")),
                                            ("user_agent", d.get("last_seen_user_agent"))) if v is not None}
            devices[d["device_id"]] = {"sessions": [{"connections": [connection] if connection else []}]}
        return {"user_id": user_id, "devices": devices}

    async def joined_rooms(self, user_id: str) -> list[str]:
        return sorted(await self.hs.event_store.get_rooms_for_user(user_id))

    async def memberships(self, user_id: str) -> dict[str, str]:
        """room ID -> the user's current membership, of every kind (leave and ban included), as Synapse's."""
        return await self.hs.event_store.get_rooms_for_user(user_id, ("join", "invite", "knock", "leave", "ban"))

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        await self.hs.auth.sightings_stored()
        return await self.store.devices(user_id)

    async def media_statistics(self, offset: int, limit: int, from_ts: int, until_ts: int | None, order_by: str,
                               descending: bool, search_term: str | None) -> dict[str, Any]:
        users, total = await self.store.media_statistics(offset, limit, from_ts, until_ts, order_by, descending,
                                                         search_term)
        page: dict[str, Any] = {"users": users, "total": total}
        if offset + limit < total:
            page["next_token"] = offset + len(users)  # a number here, as Synapse's
        return page

    # -- writing --------------------------------------------------------------------------------------
    async def create_user(self, user_id: str, body: dict[str, Any]) -> None:
        """PUT for a user that does not exist: the account (with the localpart as default display
        name, as registration), then its avatar. `locked` and `deactivated` are not applied here
        (Synapse ignores them on creation)."""
        reg = self.hs.registration
        localpart = user_id[1:].split(":", 1)[0]  # checked by register_user (M_INVALID_USERNAME)
        password = body.get("password")
        password_hash = await reg.hash_password(reg.validate_password(password)) if password is not None else None
        displayname = body.get("displayname")
        if displayname is not None and not isinstance(displayname, str):
            raise bad_json("Invalid displayname")
        await reg.register_user(localpart, password_hash, admin=body.get("admin", False),
                                user_type=body.get("user_type"), displayname=displayname)
        if isinstance(body.get("avatar_url"), str):
            await self.hs.profiles.set_field(user_id, user_id, "avatar_url", body["avatar_url"])

    async def modify_user(self, by: str, user_id: str, current: dict[str, Any], body: dict[str, Any]) -> None:
        """PUT for an existing user: only the fields the body names change, in Synapse's order."""
        for field in ("displayname", "avatar_url"):
            if field in body:
                await self.hs.profiles.set_field(user_id, user_id, field, body[field])
        if "admin" in body and body["admin"] != current["admin"]:
            if user_id == by and not body["admin"]:
                raise bad_request("You may not demote yourself.")
            await self.store.set_flag(user_id, "admin", body["admin"])
        deactivate = body.get("deactivated")
        if deactivate is False and current["deactivated"]:
            password = body.get("password")
            if password is None:
                raise bad_request("Must provide a password to re-activate an account.")
            await self.store.set_flag(user_id, "deactivated", False)
            self.hs.user_store.invalidate_token_cache(user_id)
        if body.get("password") is not None:
            await self.hs.registration.set_password(user_id, body["password"], None,
                                                    body.get("logout_devices", True), None)
        if deactivate is True and not current["deactivated"]:
            await self.hs.accounts.deactivate(user_id)
        if "locked" in body and body["locked"] != current["locked"]:
            await self.set_locked(user_id, body["locked"])
        if "user_type" in body:
            await self.store.set_user_type(user_id, body["user_type"])

    async def set_locked(self, user_id: str, locked: bool) -> None:
        await self.store.set_flag(user_id, "locked", locked)
        await self._invalidate(user_id)

    async def set_shadow_banned(self, user_id: str, banned: bool) -> None:
        await self.store.set_flag(user_id, "shadow_banned", banned)
        await self._invalidate(user_id)

    async def reset_password(self, user_id: str, new_password: Any, logout_devices: bool) -> None:
        await self.require_user(user_id)
        await self.hs.registration.set_password(user_id, new_password, None, logout_devices, None)

    async def deactivate(self, user_id: str, erase: bool) -> None:
        """Deactivate as the user would (hs.accounts; with `erase`, the profile goes too)."""
        await self.hs.accounts.deactivate(user_id, erase=erase)

    async def device(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        await self.hs.auth.sightings_stored()
        return next((d for d in await self.store.devices(user_id) if d["device_id"] == device_id), None)

    async def rename_device(self, user_id: str, device_id: str, display_name: str | None) -> None:
        """As the device's owner would with PUT /devices/{deviceId} (its keys' unsigned name changes too)."""
        if not await self.hs.user_store.update_device(user_id, device_id, display_name):
            raise not_found()
        await self.hs.e2ee.on_device_changed(user_id, device_id)

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        await self.hs.accounts.delete_devices(user_id, device_ids)

    async def login_as(self, user_id: str, valid_until_ms: int | None) -> str:
        """A new access token for the user, on a device of its own (named so the user can tell it
        apart and log it out; Synapse's puppet token has no device), expiring at `valid_until_ms`."""
        login = await self.hs.registration.create_device(user_id, None, "Admin API login")
        if valid_until_ms is not None:
            await self.store.add_token_expiry(hash_token(login.access_token), user_id, valid_until_ms)
            await self._invalidate(user_id)
        return login.access_token

    async def check_put_body(self, body: dict[str, Any]) -> None:
        """Synapse's checks of a PUT body, before anything changes."""
        user_type = body.get("user_type")
        if user_type is not None and user_type not in USER_TYPES:
            raise bad_request("Invalid user type")
        if not isinstance(body.get("admin", False), bool):
            raise bad_json("Param 'admin' must be a boolean, if given")
        password = body.get("password")
        if password is not None and (not isinstance(password, str) or len(password) > 512):
            raise bad_request("Invalid password")
        for key in ("logout_devices", "deactivated", "locked"):
            if not isinstance(body.get(key, False), bool):
                raise bad_request(f"'{key}' parameter is not of type boolean")
        if body.get("deactivated") and body.get("locked"):
            raise bad_request("An user can't be deactivated and locked")
