"""Accounts: user ID rules, password hashing, login, devices and tokens, and user-interactive auth.

Password hashing is bcrypt run in a worker thread (`asyncio.to_thread`) so a login never blocks the
event loop for the tens of milliseconds a hash takes. Access tokens are random, prefixed ``hs_`` and
stored only as their SHA-256 (see UserStore); device IDs are ten upper-case letters as in Synapse.

User-interactive auth (UIA) sessions live in memory on the process that created them: a session ID
maps to the stages completed so far, the request body it protects, and an expiry.

Application services (application service API, "Server admin style permissions") register the users of
their namespaces without UIA (`m.login.application_service`), and an exclusive user namespace is closed
to everyone else: ordinary registration, generated IDs (guests), guest upgrades and another service
are answered 400 M_EXCLUSIVE, as on Synapse.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bcrypt

from hs.errors import (
    MatrixError,
    appservice_login_unsupported,
    bad_json,
    bad_request,
    exclusive,
    forbidden,
    guest_access_forbidden,
    internal_error,
    invalid_param,
    invalid_username,
    missing_param,
    unknown_token,
    unrecognized,
    user_deactivated,
    user_in_use,
    user_locked,
)
from hs.util import now_ms, random_string

if TYPE_CHECKING:
    from hs.appservice.registration import ApplicationService
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)

# Synapse's limits: the full user ID is at most 255 characters, passwords at most 512.
MAX_USERID_LENGTH = 255
MAX_PASSWORD_LENGTH = 512
MAX_DEVICE_ID_LENGTH = 512
LOCALPART_CHARS = frozenset(string.ascii_lowercase + string.digits + "._=-/+")
# What an application service may register (Synapse gives bridges "carte blanche" in their localparts):
# the historical user ID grammar, printable ASCII but ':' (the spec's "Historical user IDs").
HISTORICAL_LOCALPART_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {":"}
# bcrypt only looks at the first 72 bytes (bcrypt >= 5 refuses longer input instead of truncating).
BCRYPT_MAX_BYTES = 72

UIA_SESSION_LIFETIME_MS = 48 * 3600 * 1000
# Bounds on the in-memory state an unauthenticated client can make us hold.
MAX_UIA_SESSIONS = 100_000
MAX_NONCES = 10_000
DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
# The spec's registration token stage (with `registration_requires_token`; hs/services/registration_tokens.py).
REGISTRATION_TOKEN = "m.login.registration_token"


def generate_access_token() -> str:
    return "hs_" + secrets.token_urlsafe(32)


def generate_device_id() -> str:
    return random_string(10, string.ascii_uppercase)


def check_device_params(device_id: str | None, display_name: str | None) -> None:
    """A client-chosen device ID and display name, checked before anything is written."""
    if device_id is not None:
        if not isinstance(device_id, str) or not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH:
            raise invalid_param("Invalid device_id")
    if display_name is not None and not isinstance(display_name, str):
        raise bad_json("'initial_device_display_name' must be a string")


def _pw_bytes(password: str) -> bytes:
    return password.encode("utf-8")[:BCRYPT_MAX_BYTES]


class InteractiveAuthIncomplete(MatrixError):
    """A 401 carrying the UIA state (flows, params, session, completed), optionally with an error."""

    def __init__(self, body: dict[str, Any], errcode: str | None = None, error: str | None = None) -> None:
        super().__init__(401, errcode or "M_UNAUTHORIZED", error or "Additional authentication required")
        self.body = body
        self.has_error = errcode is not None

    def to_json(self) -> dict[str, Any]:
        if self.has_error:
            return {**self.body, "errcode": self.errcode, "error": self.msg}
        return dict(self.body)


@dataclass
class UiaSession:
    session_id: str
    method: str
    path: str
    created_ms: int
    clientdict: dict[str, Any] = field(default_factory=dict)
    completed: dict[str, Any] = field(default_factory=dict)
    # Server-side data tied to the session (a password hash, the user registered by it, ...).
    internal: dict[str, Any] = field(default_factory=dict)


@dataclass
class UiaResult:
    session: UiaSession
    clientdict: dict[str, Any]
    completed: dict[str, Any]


@dataclass
class LoginResult:
    user_id: str
    device_id: str
    access_token: str


class Registration:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.user_store
        self._sessions: dict[str, UiaSession] = {}
        # Shared-secret registration nonces: nonce -> creation time (monotonic seconds).
        self._nonces: dict[str, float] = {}
        self._token_tasks: set[asyncio.Task[None]] = set()

    # -- user IDs ------------------------------------------------------------------------------------
    def user_id_for(self, localpart: str) -> str:
        return f"@{localpart}:{self.hs.server_name}"

    def check_localpart(self, localpart: str) -> str:
        """The full user ID for a valid, non-reserved localpart, else M_INVALID_USERNAME."""
        if not localpart:
            raise invalid_username("User ID cannot be empty")
        if any(c not in LOCALPART_CHARS for c in localpart):
            raise invalid_username("User ID can only contain characters a-z, 0-9, or '=_-./+'")
        if localpart[0] == "_":
            raise invalid_username("User ID may not begin with _")
        if localpart.isdigit():
            raise invalid_username("Numeric user IDs are reserved for guest users.")
        user_id = self.user_id_for(localpart)
        if len(user_id) > MAX_USERID_LENGTH:
            raise invalid_username(f"User ID may not be longer than {MAX_USERID_LENGTH} characters")
        return user_id

    async def check_username_available(self, localpart: str) -> str:
        """Validate and check that nobody holds the ID (case-insensitively) nor claims it (an
        application service's exclusive namespace); returns the user ID."""
        user_id = self.check_localpart(localpart)
        self.check_not_appservice_exclusive(user_id)
        if await self.store.find_user_case_insensitive(user_id):
            raise user_in_use("User ID already taken.")
        return user_id

    def check_not_appservice_exclusive(self, user_id: str, allowed: ApplicationService | None = None) -> None:
        """400 M_EXCLUSIVE when a service other than `allowed` claims the user ID exclusively."""
        for service in self.hs.config.app_services:
            if service is not allowed and service.is_exclusive_user(user_id):
                raise exclusive("This user ID is reserved by an application service.")

    async def _generate_localpart(self) -> str:
        # Numeric, like Synapse's generated IDs; those are reserved, so a chosen name never collides
        # (but for an application service claiming them).
        for _ in range(20):
            candidate = str(10**11 + secrets.randbelow(9 * 10**11))
            user_id = self.user_id_for(candidate)
            if any(s.is_exclusive_user(user_id) for s in self.hs.config.app_services):
                continue
            if not await self.store.get_user(user_id):
                return candidate
        raise internal_error("Could not generate a user ID")

    # -- passwords -----------------------------------------------------------------------------------
    @staticmethod
    def validate_password(password: Any) -> str:
        if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
            raise invalid_param("Invalid password")
        if "\x00" in password:
            raise invalid_param("Invalid password")
        return password

    async def hash_password(self, password: str) -> str:
        rounds = self.hs.config.bcrypt_rounds

        def work() -> str:
            return bcrypt.hashpw(_pw_bytes(password), bcrypt.gensalt(rounds)).decode("ascii")

        return await asyncio.to_thread(work)

    async def check_password_hash(self, password: str, stored_hash: str | None) -> bool:
        if not stored_hash:
            return False

        def work() -> bool:
            try:
                return bcrypt.checkpw(_pw_bytes(password), stored_hash.encode("ascii"))
            except ValueError:
                return False

        return await asyncio.to_thread(work)

    async def set_password(self, user_id: str, new_password: str, keep_token: str | None,
                           logout_devices: bool, keep_device: str | None) -> None:
        password_hash = await self.hash_password(self.validate_password(new_password))
        await self.store.set_password_hash(user_id, password_hash)
        if logout_devices:
            devices = [d["device_id"] for d in await self.store.get_devices(user_id)]
            others = [d for d in devices if d != keep_device]
            if others:
                await self.hs.accounts.delete_devices(user_id, others)
            await self.store.delete_all_tokens(user_id, keep_token)

    # -- registering ---------------------------------------------------------------------------------
    async def _new_user_id(self, localpart: str | None) -> tuple[str, str]:
        if localpart is None:
            localpart = await self._generate_localpart()
            return localpart, self.user_id_for(localpart)
        return localpart, await self.check_username_available(localpart)

    async def register_user(self, localpart: str | None, password_hash: str | None, admin: bool = False,
                            user_type: str | None = None, displayname: str | None = None) -> str:
        """Create an account without a device (inhibit_login); the default display name is the
        localpart, as in Synapse."""
        localpart, user_id = await self._new_user_id(localpart)
        created = await self.store.create_user(user_id, password_hash, admin=admin, user_type=user_type,
                                               displayname=displayname if displayname is not None else localpart)
        if not created:
            raise user_in_use("User ID already taken.")
        logger.info("registered %s", user_id)
        return user_id

    async def register_and_login(self, localpart: str | None, password_hash: str | None, admin: bool = False,
                                 user_type: str | None = None, displayname: str | None = None,
                                 device_id: str | None = None, device_display_name: str | None = None,
                                 ) -> LoginResult:
        """Create an account with its first device and access token, all-or-nothing: everything is
        validated first and the user, profile, device and token rows are written in one transaction,
        so a failure leaves no account without a way to log in (whose name a retry would find taken)."""
        check_device_params(device_id, device_display_name)
        localpart, user_id = await self._new_user_id(localpart)
        device_id = device_id if device_id is not None else generate_device_id()
        token = generate_access_token()
        created = await self.store.create_user(user_id, password_hash, admin=admin, user_type=user_type,
                                               displayname=displayname if displayname is not None else localpart,
                                               device=(device_id, device_display_name, token))
        if not created:
            raise user_in_use("User ID already taken.")
        logger.info("registered %s", user_id)
        try:
            await self.hs.e2ee.on_device_created(user_id, device_id)
        except Exception:
            # The account is complete and nobody shares a room with it yet: the device list change
            # (which tells others to fetch its keys) has nobody to tell.
            logger.exception("recording the first device of %s failed", user_id)
        return LoginResult(user_id, device_id, token)

    # -- guests --------------------------------------------------------------------------------------
    async def register_guest(self, device_display_name: str | None) -> LoginResult:
        """A guest account (numeric generated ID, flagged guest) with its first device and token.

        The device ID is always generated: as on Synapse, a guest does not choose one."""
        if not self.hs.config.allow_guest_access:
            raise guest_access_forbidden("Guest access is disabled")
        check_device_params(None, device_display_name)
        localpart, user_id = await self._new_user_id(None)
        device_id, token = generate_device_id(), generate_access_token()
        if not await self.store.create_user(user_id, None, displayname=localpart,
                                            device=(device_id, device_display_name, token), is_guest=True):
            raise user_in_use("User ID already taken.")
        logger.info("registered guest %s", user_id)
        try:
            await self.hs.e2ee.on_device_created(user_id, device_id)
        except Exception:  # as for register_and_login: nobody shares a room with the new guest yet
            logger.exception("recording the first device of %s failed", user_id)
        return LoginResult(user_id, device_id, token)

    async def guest_to_upgrade(self, guest_access_token: Any, localpart: str | None) -> str:
        """The guest a registration with `guest_access_token` upgrades (the spec's Guest Access
        module): 401 M_UNKNOWN_TOKEN for a token that is no access token, 403 M_FORBIDDEN when it is
        not a guest's or `localpart` (required by the spec, defaulting here to the guest's own) names
        someone else, as Synapse answers."""
        if not isinstance(guest_access_token, str):
            raise bad_json("'guest_access_token' must be a string")
        info = await self.store.get_token(guest_access_token)
        if info is None:
            raise unknown_token()
        if not info.is_guest or (localpart is not None and self.user_id_for(localpart) != info.user_id):
            raise forbidden("Cannot register taken user ID without valid guest credentials for that user.")
        self.check_not_appservice_exclusive(info.user_id)
        return info.user_id

    async def upgrade_guest(self, user_id: str, password_hash: str | None) -> None:
        """Make the guest a full account, keeping its user ID, profile, rooms and devices; its guest
        tokens stop working (the registration's answer carries the new one)."""
        if not await self.store.upgrade_guest(user_id, password_hash):
            raise forbidden("Cannot register taken user ID without valid guest credentials for that user.")
        logger.info("upgraded guest %s to a full account", user_id)

    # -- application services ------------------------------------------------------------------------
    async def register_appservice_user(self, service: ApplicationService, localpart: Any, inhibit_login: bool,
                                       device_id: str | None, device_display_name: str | None,
                                       ) -> tuple[str, LoginResult | None]:
        """POST /register with `m.login.application_service`: a user of the service's namespace (the
        localpart as the service wrote it, not lower-cased: bridges rely on that, as on Synapse), with
        no password; with its first device and token unless `inhibit_login`. 400 M_EXCLUSIVE outside
        the namespace or inside another service's exclusive one. A service that manages its users'
        devices itself (MSC4190) must inhibit the login (400 M_APPSERVICE_LOGIN_UNSUPPORTED, Synapse)."""
        if not isinstance(localpart, str) or not localpart:
            raise bad_json("Desired Username is missing or not a string")
        if any(c not in HISTORICAL_LOCALPART_CHARS for c in localpart):
            raise invalid_username("User ID can only contain printable ASCII characters other than ':'")
        user_id = self.user_id_for(localpart)
        if len(user_id) > MAX_USERID_LENGTH:
            raise invalid_username(f"User ID may not be longer than {MAX_USERID_LENGTH} characters")
        if not service.is_interested_in_user(user_id):
            raise exclusive("Invalid user localpart for this application service.")
        self.check_not_appservice_exclusive(user_id, allowed=service)
        if service.msc4190 and not inhibit_login:
            raise appservice_login_unsupported(
                "This appservice has MSC4190 enabled, so the inhibit_login parameter must be set to true.")
        if inhibit_login:
            if not await self.store.create_user(user_id, None, displayname=localpart):
                raise user_in_use("User ID already taken.")
            logger.info("application service %s registered %s", service.id, user_id)
            return user_id, None
        check_device_params(device_id, device_display_name)
        device_id = device_id if device_id is not None else generate_device_id()
        token = generate_access_token()
        if not await self.store.create_user(user_id, None, displayname=localpart,
                                            device=(device_id, device_display_name, token)):
            raise user_in_use("User ID already taken.")
        logger.info("application service %s registered %s", service.id, user_id)
        await self.hs.e2ee.on_device_created(user_id, device_id)
        return user_id, LoginResult(user_id, device_id, token)

    async def appservice_login_user(self, service: ApplicationService, body: dict[str, Any]) -> str:
        """POST /login with `m.login.application_service`: the user of the service's namespace the
        body names (403 outside it, as Synapse). The service's sender gets its account here if the
        service never acted as it yet (see Auth._create_sender), so the new token works. Refused for a
        service that manages devices itself (MSC4190)."""
        if service.msc4190:
            raise appservice_login_unsupported(
                "This appservice has MSC4190 enabled, so appservice login cannot be used.")
        user_id = self.user_from_login_dict(body)
        if not service.is_interested_in_user(user_id):
            raise forbidden("Invalid access_token")
        row = await self.store.get_user(user_id)
        if row is None:
            if user_id != service.sender:
                raise forbidden(f"Application service has not registered this user ({user_id})")
            await self.store.create_user(user_id, None, displayname=user_id[1:].split(":", 1)[0])
        elif row.get("deactivated"):
            raise user_deactivated("This account has been deactivated")
        return user_id

    async def create_device(self, user_id: str, device_id: str | None = None,
                            display_name: str | None = None) -> LoginResult:
        """A new access token for the device (created if it is new; generated if not given)."""
        check_device_params(device_id, display_name)
        if device_id is None:
            for _ in range(10):
                device_id = generate_device_id()
                if await self.store.get_device(user_id, device_id) is None:
                    break
        assert device_id is not None
        token = generate_access_token()
        await self.store.create_device_and_token(user_id, device_id, display_name, token)
        await self.hs.e2ee.on_device_created(user_id, device_id)
        return LoginResult(user_id, device_id, token)

    # -- login ---------------------------------------------------------------------------------------
    def qualify(self, user: str) -> str:
        """A full user ID from a localpart or full ID (the localpart is lower-cased, as Synapse does)."""
        if user.startswith("@"):
            return user
        return self.user_id_for(user.lower())

    def user_from_login_dict(self, body: dict[str, Any]) -> str:
        """The user a login or m.login.password auth dict names, from `identifier` or legacy `user`."""
        identifier = body.get("identifier")
        if identifier is None:
            if "user" in body:
                identifier = {"type": "m.id.user", "user": body["user"]}
            elif "medium" in body and "address" in body:
                identifier = {"type": "m.id.thirdparty", "medium": body["medium"], "address": body["address"]}
            else:
                raise missing_param("Missing param: identifier")
        if not isinstance(identifier, dict):
            raise bad_json("'identifier' must be an object")
        itype = identifier.get("type")
        if itype == "m.id.user":
            user = identifier.get("user")
            if not isinstance(user, str) or not user:
                raise invalid_param("User identifier is missing 'user' key")
            return self.qualify(user)
        if itype in ("m.id.thirdparty", "m.id.phone"):
            # No third-party identifiers are bound on this server.
            raise forbidden("Invalid username or password")
        raise bad_request("Unknown login identifier type")

    async def resolve_user(self, user_id: str) -> tuple[str, dict[str, Any]] | None:
        """The canonical (stored) user ID and row for a case-insensitive match, as Synapse does."""
        row = await self.store.get_user(user_id)
        if row is not None:
            return user_id, row
        matches = await self.store.find_user_case_insensitive(user_id)
        if len(matches) != 1:
            if len(matches) > 1:
                logger.warning("login for %s matches several users case-insensitively", user_id)
            return None
        row = await self.store.get_user(matches[0])
        return None if row is None else (matches[0], row)

    async def check_password(self, user_id: str, password: str, address: str | None = None) -> str:
        """The canonical user ID if the password is right; 403 M_FORBIDDEN otherwise.

        Failed attempts are rate limited per user (rc_login.failed_attempts).
        """
        failed = self.hs.ratelimiters["login_failed"]
        key = user_id.lower()
        failed.check(key, update=False)
        resolved = await self.resolve_user(user_id)
        ok = False
        if resolved is not None:
            ok = await self.check_password_hash(password, resolved[1].get("password_hash"))
        if not ok or resolved is None:
            try:
                failed.check(key, update=True)
            except MatrixError:
                pass
            raise forbidden("Invalid username or password")
        canonical, row = resolved
        if row.get("deactivated"):
            raise user_deactivated("This account has been deactivated")
        if row.get("locked"):  # an admin locked it (Synapse refuses the login, not only its token)
            raise user_locked()
        return canonical

    async def login_password(self, body: dict[str, Any], address: str) -> str:
        """The user a m.login.password login body authenticates, applying the login rate limits."""
        user_id = self.user_from_login_dict(body)
        self.hs.ratelimiters["login_account"].check(user_id.lower())
        password = body.get("password")
        if password is None:
            raise missing_param("Missing 'password'")
        if not isinstance(password, str):
            raise invalid_param("Bad parameter: password")
        return await self.check_password(user_id, password, address)

    # -- user-interactive auth -----------------------------------------------------------------------
    def _prune_sessions(self) -> None:
        """Drop expired sessions, and the oldest beyond the cap (the dict is in creation order)."""
        cutoff = now_ms() - UIA_SESSION_LIFETIME_MS
        while self._sessions:
            sid, oldest = next(iter(self._sessions.items()))
            if oldest.created_ms >= cutoff and len(self._sessions) < MAX_UIA_SESSIONS:
                break
            del self._sessions[sid]
            self._release_token(oldest)

    def _release_token(self, session: UiaSession) -> None:
        """A session that passed the registration token stage and never registered gives the token's
        pending use back (in the background: pruning is synchronous)."""
        token = session.completed.get(REGISTRATION_TOKEN)
        if isinstance(token, str) and "registered_user_id" not in session.internal:
            from hs.services.registration_tokens import RegistrationTokens

            task = asyncio.get_running_loop().create_task(RegistrationTokens(self.hs).abandon_use(token))
            self._token_tasks.add(task)
            task.add_done_callback(self._token_tasks.discard)

    def get_session(self, session_id: str) -> UiaSession | None:
        self._prune_sessions()
        return self._sessions.get(session_id)

    def registered_by_session(self, body: dict[str, Any]) -> bool:
        """Whether the request's UIA session already registered its account: a retry (clients retry over
        bad networks) is answered with that account again, so its name is not "taken"."""
        auth = body.get("auth")
        sid = auth.get("session") if isinstance(auth, dict) else None
        session = self.get_session(sid) if isinstance(sid, str) else None
        return session is not None and "registered_user_id" in session.internal

    def drop_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _incomplete(self, session: UiaSession, flows: list[list[str]], params: dict[str, Any],
                    errcode: str | None = None, error: str | None = None) -> InteractiveAuthIncomplete:
        body: dict[str, Any] = {
            "flows": [{"stages": list(f)} for f in flows],
            "params": params,
            "session": session.session_id,
        }
        body["completed"] = list(session.completed)  # always there (empty too), as Synapse sends it
        return InteractiveAuthIncomplete(body, errcode, error)

    async def check_ui_auth(self, operation: tuple[str, str], body: dict[str, Any], flows: list[list[str]],
                            params: dict[str, Any] | None = None, requester: Requester | None = None,
                            ) -> UiaResult:
        """Run one round of UIA for `body` (of the request `operation`, its method and path); returns
        when a flow is complete, else raises the 401.

        The clientdict (body without `auth`) is remembered in the session, so a client may send it only
        with the first request. With a `requester`, a completed m.login.password stage must be theirs.
        """
        params = params or {}
        auth = body.get("auth")
        clientdict = {k: v for k, v in body.items() if k != "auth"}
        if auth is not None and not isinstance(auth, dict):
            raise bad_json("'auth' must be an object")
        sid = auth.get("session") if auth else None
        if sid is not None:
            if not isinstance(sid, str):
                raise bad_json("'session' must be a string")
            session = self.get_session(sid)
            if session is None:
                raise bad_request(f"Unknown session ID: {sid}")
            if (session.method, session.path) != operation:
                raise forbidden("Requested operation has changed during the UI authentication session.")
            if session.internal.get("requester") != (requester.user_id if requester is not None else None):
                raise forbidden("This UI authentication session belongs to another user")
            if clientdict:
                session.clientdict = clientdict
            else:
                clientdict = session.clientdict
        else:
            self._prune_sessions()
            session = UiaSession(random_string(24), *operation, now_ms(), clientdict)
            if requester is not None:
                session.internal["requester"] = requester.user_id
            self._sessions[session.session_id] = session

        allowed = {stage for flow in flows for stage in flow}
        stage = auth.get("type") if auth else None
        if stage is not None:
            if not isinstance(stage, str):
                raise bad_json("'auth.type' must be a string")
            if stage not in allowed:
                raise unrecognized(f"Unrecognised login type {stage!r}")
            if stage == DUMMY:
                session.completed[DUMMY] = True
            elif stage == REGISTRATION_TOKEN:
                assert auth is not None
                await self._check_token_stage(session, auth, flows, params)
            elif stage == PASSWORD:
                assert auth is not None
                try:
                    user_id = await self._check_password_stage(auth, requester)
                except InteractiveAuthIncomplete:
                    raise
                except MatrixError as e:
                    if e.code in (401, 403):
                        raise self._incomplete(session, flows, params, e.errcode, e.msg) from None
                    raise
                if requester is not None and user_id != requester.user_id:
                    # Another account's valid credentials: 403, not a UIA 401 (as Synapse).
                    raise forbidden("Invalid auth")
                session.completed[PASSWORD] = user_id
            else:  # pragma: no cover - only the stages above are ever offered
                raise unrecognized(f"Unrecognised login type {stage!r}")

        for flow in flows:
            if all(s in session.completed for s in flow):
                return UiaResult(session, clientdict, dict(session.completed))
        raise self._incomplete(session, flows, params)

    async def _check_token_stage(self, session: UiaSession, auth: dict[str, Any], flows: list[list[str]],
                                 params: dict[str, Any]) -> None:
        """m.login.registration_token: a valid token, counted as a pending use once per session."""
        from hs.services.registration_tokens import RegistrationTokens

        token = auth.get("token")
        if not isinstance(token, str):
            raise invalid_param("Registration token must be a string")
        if session.completed.get(REGISTRATION_TOKEN) == token:
            return
        if REGISTRATION_TOKEN in session.completed or not await RegistrationTokens(self.hs).start_use(token):
            raise self._incomplete(session, flows, params, "M_UNAUTHORIZED", "Invalid registration token")
        session.completed[REGISTRATION_TOKEN] = token

    async def _check_password_stage(self, auth: dict[str, Any], requester: Requester | None) -> str:
        if "identifier" not in auth and "user" not in auth and requester is not None:
            user_id = requester.user_id
        else:
            user_id = self.user_from_login_dict(auth)
        password = auth.get("password")
        if not isinstance(password, str):
            raise missing_param("Missing 'password'")
        return await self.check_password(user_id, password)

    async def validate_user_via_ui_auth(self, operation: tuple[str, str], body: dict[str, Any],
                                        requester: Requester) -> dict[str, Any]:
        """UIA with the user's password (the flows a logged-in user's sensitive operations need).

        Returns the clientdict to act on; the session is used up.
        """
        result = await self.check_ui_auth(operation, body, [[PASSWORD]], requester=requester)
        self.drop_session(result.session.session_id)
        return result.clientdict

    # -- shared-secret registration nonces -----------------------------------------------------------
    NONCE_LIFETIME_S = 60.0

    def new_nonce(self) -> str:
        now = time.monotonic()
        while self._nonces:
            oldest, created = next(iter(self._nonces.items()))
            if now - created <= self.NONCE_LIFETIME_S and len(self._nonces) < MAX_NONCES:
                break
            del self._nonces[oldest]
        nonce = secrets.token_hex(32)
        self._nonces[nonce] = now
        return nonce

    def use_nonce(self, nonce: str) -> bool:
        """True (once) for an issued, unexpired nonce."""
        created = self._nonces.pop(nonce, None)
        return created is not None and time.monotonic() - created <= self.NONCE_LIFETIME_S
