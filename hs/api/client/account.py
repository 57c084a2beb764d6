"""Accounts and sessions: register, login, logout, whoami, devices, password change, deactivation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from hs.api.base import (
    CLIENT_V1,
    CLIENT_V3,
    CLIENT_V3_V1,
    HandlerResult,
    JsonDict,
    Route,
    client_address,
    get_app_service,
    get_hs,
    get_requester,
    parse_json,
    uia_operation,
)
from hs.api.params import MAX_JSON_QUERY_LENGTH, body_bool, query_enum, query_str, require_str
from hs.errors import (
    MatrixError,
    bad_json,
    bad_request,
    forbidden,
    guest_access_forbidden,
    invalid_param,
    invalid_username,
    missing_param,
    not_found,
)
from hs.services.registration import (
    DUMMY,
    REGISTRATION_TOKEN,
    InteractiveAuthIncomplete,
    LoginResult,
    Registration,
    check_device_params,
)
from hs.services.registration_tokens import RegistrationTokens

if TYPE_CHECKING:
    from hs.server import HomeServer


MAX_DEVICE_DISPLAY_NAME_LEN = 100


def _reg(hs: HomeServer) -> Registration:
    reg: Registration = hs.registration
    return reg


def _login_response(hs: HomeServer, login: LoginResult) -> JsonDict:
    out: JsonDict = {
        "user_id": login.user_id,
        "access_token": login.access_token,
        "device_id": login.device_id,
        "home_server": hs.server_name,
    }
    if hs.config.public_baseurl:
        out["well_known"] = {"m.homeserver": {"base_url": hs.config.public_baseurl}}
    return out


def _opt_str(body: JsonDict, key: str) -> str | None:
    return require_str(body, key, optional=True)


def _username(body: JsonDict) -> str | None:
    value = body.get("username")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 512:
        raise invalid_username("Invalid username")
    return value.lower()


# -- registration -----------------------------------------------------------------------------------------
APPSERVICE_LOGIN = "m.login.application_service"


async def register(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    reg = _reg(hs)
    body = await parse_json(request)
    kind = query_enum(request, "kind", ("user", "guest"), "user")
    if kind == "guest":
        return await _register_guest(hs, reg, body, client_address(request))
    if body.get("type") == APPSERVICE_LOGIN:
        return await _register_appservice_user(request, hs, reg, body)
    cfg = hs.config
    if not cfg.enable_registration:
        raise forbidden("Registration has been disabled")
    if not cfg.enable_registration_without_verification:
        # Email/MSISDN/captcha verification is not supported, so no flow could be offered.
        raise forbidden("Registration has been disabled: verification is required but not supported")
    address = client_address(request)
    limiter = hs.ratelimiters["registration"]
    limiter.check(address, update=False)

    # Validate what this request carries before the UIA round, so a taken name fails early. With a
    # `guest_access_token`, the name is the guest's own (taken by the guest, and numeric).
    username = _username(body)
    if body.get("guest_access_token") is not None:
        await reg.guest_to_upgrade(body["guest_access_token"], username)
    elif username is not None and not reg.registered_by_session(body):
        await reg.check_username_available(username)
    for key in ("device_id", "initial_device_display_name"):
        _opt_str(body, key)
    body_bool(body, "inhibit_login", False)
    body_bool(body, "refresh_token", False)  # checked; no refresh tokens are issued
    password_hash: str | None = None
    if "password" in body and body["password"] is not None:
        password_hash = await reg.hash_password(reg.validate_password(body["password"]))
    # The plain password is never kept in the UIA session; its hash is.
    uia_body = {k: v for k, v in body.items() if k != "password"}

    try:
        result = await reg.check_ui_auth(uia_operation(request), uia_body, _registration_flows(cfg))
    except InteractiveAuthIncomplete as e:
        session = reg.get_session(e.body["session"])
        if session is not None and password_hash is not None:
            session.internal["password_hash"] = password_hash
        raise
    session = result.session
    params = result.clientdict
    if password_hash is None:
        password_hash = session.internal.get("password_hash")
    else:
        session.internal["password_hash"] = password_hash

    inhibit_login = body_bool(params, "inhibit_login", False)
    device_id, device_name = _opt_str(params, "device_id"), _opt_str(params, "initial_device_display_name")
    user_id: str | None = session.internal.get("registered_user_id")
    if user_id is None:
        # The account with its device and token, in one transaction (or the account alone).
        login = None
        guest_token = params.get("guest_access_token")
        if guest_token is not None:
            # Upgrading a guest: same user ID, then a new device and token below.
            user_id = await reg.guest_to_upgrade(guest_token, _username(params))
            await reg.upgrade_guest(user_id, password_hash)
        elif inhibit_login:
            user_id = await reg.register_user(_username(params), password_hash)
        else:
            login = await reg.register_and_login(_username(params), password_hash, device_id=device_id,
                                                 device_display_name=device_name)
            user_id = login.user_id
        session.internal["registered_user_id"] = user_id
        token = session.completed.get(REGISTRATION_TOKEN)
        if isinstance(token, str):
            await RegistrationTokens(hs).finish_use(token)
        try:
            limiter.check(address)
        except MatrixError:
            pass  # the account exists now; the limit applies to the next attempt
        if login is not None:
            return 200, _login_response(hs, login)

    if inhibit_login:
        return 200, {"user_id": user_id, "home_server": hs.server_name}
    return 200, _login_response(hs, await reg.create_device(user_id, device_id, device_name))


async def _register_appservice_user(request: web.Request, hs: HomeServer, reg: Registration,
                                    body: JsonDict) -> HandlerResult:
    """An application service registering a user of its namespace: no UIA, open or not (the spec's
    "Server admin style permissions"); only the service's as_token will do (401 otherwise). Its
    `user_id` parameter, naming the user not registered yet (mautrix sends it), plays no part."""
    service = get_app_service(request)
    inhibit_login = body_bool(body, "inhibit_login", False)
    body_bool(body, "refresh_token", False)  # checked; no refresh tokens are issued
    device_id, device_name = _opt_str(body, "device_id"), _opt_str(body, "initial_device_display_name")
    user_id, login = await reg.register_appservice_user(service, body.get("username"),
                                                        inhibit_login, device_id, device_name)
    if login is None:
        return 200, {"user_id": user_id, "home_server": hs.server_name}
    return 200, _login_response(hs, login)


async def _register_guest(hs: HomeServer, reg: Registration, body: JsonDict, address: str) -> HandlerResult:
    """POST /register?kind=guest: no UIA and no name, password or device ID (a guest chooses none, as
    on Synapse); refused with 403 M_GUEST_ACCESS_FORBIDDEN unless `allow_guest_access` is on, whether
    or not registration is open (as Synapse does)."""
    if not hs.config.allow_guest_access:
        raise guest_access_forbidden("Guest access is disabled")
    limiter = hs.ratelimiters["registration"]
    limiter.check(address, update=False)
    login = await reg.register_guest(_opt_str(body, "initial_device_display_name"))
    try:
        limiter.check(address)
    except MatrixError:
        pass  # the account exists now; the limit applies to the next attempt
    return 200, _login_response(hs, login)


def _registration_flows(cfg: Any) -> list[list[str]]:
    """With `registration_requires_token`, the token stage comes first in every flow (as Synapse)."""
    return [[REGISTRATION_TOKEN, DUMMY]] if cfg.registration_requires_token else [[DUMMY]]


async def registration_token_validity(request: web.Request) -> HandlerResult:
    """Whether an admin-made registration token can be used now (hs/services/registration_tokens.py)."""
    hs = get_hs(request)
    if not hs.config.enable_registration:
        raise forbidden("Registration has been disabled")
    token = query_str(request, "token", required=True)
    assert token is not None
    return 200, {"valid": await RegistrationTokens(hs).is_valid(token)}


async def register_available(request: web.Request) -> HandlerResult:
    reg = _reg(get_hs(request))
    username = query_str(request, "username", required=True, max_length=MAX_JSON_QUERY_LENGTH)
    assert username is not None
    await reg.check_username_available(username.lower())
    return 200, {"available": True}


# -- login and logout -------------------------------------------------------------------------------------
async def login_flows(request: web.Request) -> HandlerResult:
    return 200, {"flows": [{"type": "m.login.password"}, {"type": APPSERVICE_LOGIN}]}


async def login(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    reg = _reg(hs)
    body = await parse_json(request)
    body_bool(body, "refresh_token", False)  # checked; no refresh tokens are issued
    address = client_address(request)
    login_type = require_str(body, "type")
    if login_type == APPSERVICE_LOGIN:
        # An application service logging in as a user of its namespace (its as_token, no password).
        service = get_app_service(request)
        if service.rate_limited:
            hs.ratelimiters["login_address"].check(address)
        device_id = _opt_str(body, "device_id")
        display_name = _opt_str(body, "initial_device_display_name")
        user_id = await reg.appservice_login_user(service, body)
        return 200, _login_response(hs, await reg.create_device(user_id, device_id, display_name))
    hs.ratelimiters["login_address"].check(address)
    if login_type != "m.login.password":
        raise bad_request("Unknown login type")
    device_id = _opt_str(body, "device_id")
    display_name = _opt_str(body, "initial_device_display_name")
    user_id = await reg.login_password(body, address)
    result = await reg.create_device(user_id, device_id, display_name)
    return 200, _login_response(hs, result)


async def logout(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    await hs.accounts.logout(await get_requester(request))
    return 200, {}


async def logout_all(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    await hs.accounts.logout_all(requester.user_id)
    return 200, {}


async def whoami(request: web.Request) -> HandlerResult:
    requester = await get_requester(request)
    out: JsonDict = {"user_id": requester.user_id, "is_guest": requester.is_guest}
    if requester.device_id:  # an application service acting without a device has none (as Synapse)
        out["device_id"] = requester.device_id
    return 200, out


# -- devices ----------------------------------------------------------------------------------------------
# Always present, null when unknown, as Synapse sends them: the spec makes them optional, but
# matrix-nio's devices() validates all three as required keys and fails on a device without them.
DEVICE_FIELDS = ("display_name", "last_seen_ip", "last_seen_ts")


def _device_json(row: dict[str, Any]) -> JsonDict:
    """The spec's Device, with the fields clients rely on (`DEVICE_FIELDS`) always there."""
    out: JsonDict = {"device_id": row["device_id"]}
    for key in DEVICE_FIELDS:
        out[key] = row.get(key)
    return out


async def get_devices(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    await hs.auth.sightings_stored()  # this request's own sighting included
    rows = await hs.user_store.get_devices(requester.user_id)
    return 200, {"devices": [_device_json(r) for r in rows]}


async def get_device(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    await hs.auth.sightings_stored()
    row = await hs.user_store.get_device(requester.user_id, request.match_info["deviceId"])
    if row is None:
        raise not_found("No device found")
    return 200, _device_json(row)


async def put_device(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    device_id = request.match_info["deviceId"]
    name = _opt_str(body, "display_name") if "display_name" in body else None
    if name is not None and len(name) > MAX_DEVICE_DISPLAY_NAME_LEN:
        raise invalid_param(f"Device display name is too long (max {MAX_DEVICE_DISPLAY_NAME_LEN})")
    row = await hs.user_store.get_device(requester.user_id, device_id)
    if row is None:
        if requester.app_service is None:
            raise not_found("No device found")
        # An application service creates devices for its users this way (the spec's "Device
        # management", MSC4190): 201 for a new device, with no access token.
        check_device_params(device_id, name)
        if await hs.user_store.create_device(requester.user_id, device_id, name):
            await hs.e2ee.on_device_created(requester.user_id, device_id)
            return 201, {}
        row = await hs.user_store.get_device(requester.user_id, device_id)
        assert row is not None
    if "display_name" in body:
        await hs.user_store.update_device(requester.user_id, device_id, name)
        await hs.e2ee.on_device_changed(requester.user_id, device_id)  # the name is in its keys' unsigned
    return 200, {}


def _device_list(body: JsonDict) -> list[str]:
    devices = body.get("devices")
    if devices is None:
        raise missing_param("Missing 'devices'")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise bad_json("'devices' must be a list of strings")
    return devices


async def delete_device(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    device_id = request.match_info["deviceId"]
    if await hs.user_store.get_device(requester.user_id, device_id) is None:
        raise not_found("No device found")
    body = await parse_json(request, allow_empty=True)
    if requester.app_service is None:  # an application service deletes its users' devices without UIA
        await _reg(hs).validate_user_via_ui_auth(uia_operation(request), body, requester)
    await hs.accounts.delete_devices(requester.user_id, [device_id])
    return 200, {}


async def delete_devices(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    if "devices" in body:
        _device_list(body)
    if requester.app_service is not None:  # no UIA for an application service (the spec's Device management)
        params = body
    else:
        params = await _reg(hs).validate_user_via_ui_auth(uia_operation(request), body, requester)
    await hs.accounts.delete_devices(requester.user_id, _device_list(params))
    return 200, {}


# -- password and deactivation ----------------------------------------------------------------------------
async def change_password(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    reg = _reg(hs)
    requester = await get_requester(request)
    body = await parse_json(request)
    if body.get("new_password") is not None:
        reg.validate_password(body["new_password"])
    body_bool(body, "logout_devices", True)
    params = await reg.validate_user_via_ui_auth(uia_operation(request), body, requester)
    new_password = params.get("new_password")
    if new_password is None:
        raise missing_param("Missing 'new_password'")
    await reg.set_password(requester.user_id, reg.validate_password(new_password),
                           keep_token=requester.access_token,
                           logout_devices=body_bool(params, "logout_devices", True),
                           keep_device=requester.device_id)
    return 200, {}


async def deactivate(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    reg = _reg(hs)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    erase = body_bool(body, "erase", False)
    if requester.app_service is None:  # a service deactivates its users without UIA (as Synapse)
        await reg.validate_user_via_ui_auth(uia_operation(request), body, requester)
    await hs.accounts.deactivate(requester.user_id, erase=erase)
    return 200, {"id_server_unbind_result": "no-support"}


ROUTES: list[Route] = [
    Route("POST", "/register", register, "registration_login", prefixes=CLIENT_V3),
    Route("GET", "/register/available", register_available, "main", prefixes=CLIENT_V3),
    Route("GET", "/register/m.login.registration_token/validity", registration_token_validity, "main",
          prefixes=CLIENT_V1),
    Route("GET", "/login", login_flows, "registration_login", prefixes=CLIENT_V3_V1),
    Route("POST", "/login", login, "registration_login", prefixes=CLIENT_V3_V1),
    Route("POST", "/logout", logout, "main", prefixes=CLIENT_V3_V1),
    Route("POST", "/logout/all", logout_all, "main", prefixes=CLIENT_V3_V1),
    Route("GET", "/account/whoami", whoami, "client", prefixes=CLIENT_V3),
    Route("GET", "/devices", get_devices, "client", prefixes=CLIENT_V3),
    Route("GET", "/devices/{deviceId}", get_device, "main", prefixes=CLIENT_V3),
    Route("PUT", "/devices/{deviceId}", put_device, "main", prefixes=CLIENT_V3),
    Route("DELETE", "/devices/{deviceId}", delete_device, "main", prefixes=CLIENT_V3),
    Route("POST", "/delete_devices", delete_devices, "main", prefixes=CLIENT_V3),
    Route("POST", "/account/password", change_password, "main", prefixes=CLIENT_V3),
    Route("POST", "/account/deactivate", deactivate, "main", prefixes=CLIENT_V3),
]
