"""End-to-end encryption keys: /keys/upload, /keys/query, /keys/claim, /keys/changes, cross-signing
(/keys/device_signing/upload, /keys/signatures/upload) and server-side key backup (/room_keys/...)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V3, HandlerResult, Route, get_hs, get_requester, parse_json, uia_operation
from hs.api.params import body_int, query_str, query_stream_token
from hs.errors import bad_request

# Cross-signing uploads are served under /unstable too: clients from before cross-signing reached the
# spec (v1.1) still send them there, and Synapse keeps those paths.
WITH_UNSTABLE = (*CLIENT_V3, "/_matrix/client/unstable")
# The request's `timeout` is checked here; the service waits that long for other servers (e2ee._remote_timeout).
DEFAULT_TIMEOUT_MS = 10_000


async def upload_keys(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    if not requester.device_id:  # an application service acting as a user without device_id (as Synapse)
        raise bad_request("To upload keys, you must pass device_id when authenticating")
    body = await parse_json(request, allow_empty=True)
    return 200, await hs.e2ee.upload_keys(requester.user_id, requester.device_id, body)


async def query_keys(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    body_int(body, "timeout", DEFAULT_TIMEOUT_MS, clamp=True)
    return 200, await hs.e2ee.query_keys(requester.user_id, body)


async def claim_keys(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    await get_requester(request)
    body = await parse_json(request)
    body_int(body, "timeout", DEFAULT_TIMEOUT_MS, clamp=True)
    return 200, await hs.e2ee.claim_keys(body)


async def key_changes(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    since = query_stream_token(request, "from", required=True)
    upto = query_stream_token(request, "to", required=True)
    assert since is not None and upto is not None
    changed, left = await hs.e2ee.device_list_changes(requester.user_id, since, upto)
    return 200, {"changed": changed, "left": left}


# -- cross-signing ----------------------------------------------------------------------------------------
async def upload_cross_signing_keys(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    params = {k: v for k, v in body.items() if k != "auth"}
    auth = body.get("auth")
    # A UIA follow-up may carry only `auth`: the keys are in its session.
    follow_up = isinstance(auth, dict) and "session" in auth and not params
    # (An application service uploads its users' keys without UIA, as the spec says.)
    if requester.app_service is None and (follow_up or await hs.e2ee.cross_signing_needs_uia(requester.user_id,
                                                                                             params)):
        params = await hs.registration.validate_user_via_ui_auth(uia_operation(request), body, requester)
    await hs.e2ee.upload_cross_signing_keys(requester.user_id, params)
    return 200, {}


async def upload_signatures(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    return 200, await hs.e2ee.upload_signatures(requester.user_id, body)


# -- key backup -------------------------------------------------------------------------------------------
async def create_backup_version(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    return 200, await hs.e2ee.create_backup_version(requester.user_id, body)


async def get_current_backup_version(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    return 200, await hs.e2ee.get_backup_version(requester.user_id, None)


async def get_backup_version(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    version = hs.e2ee.parse_version(request.match_info["version"])
    return 200, await hs.e2ee.get_backup_version(requester.user_id, version)


async def put_backup_version(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    version = hs.e2ee.parse_version(request.match_info["version"])
    body = await parse_json(request)
    await hs.e2ee.update_backup_version(requester.user_id, version, body)
    return 200, {}


async def delete_backup_version(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    version = hs.e2ee.parse_version(request.match_info["version"])
    await hs.e2ee.delete_backup_version(requester.user_id, version)
    return 200, {}


def _backup_keys_at(request: web.Request) -> tuple[int, str | None, str | None]:
    """Which backup's keys: the `version` parameter, and the path's room and session (either absent)."""
    version = get_hs(request).e2ee.parse_version(query_str(request, "version", required=True))
    return version, request.match_info.get("roomId"), request.match_info.get("sessionId")


async def put_backup_keys(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    version, room_id, session_id = _backup_keys_at(request)
    body = await parse_json(request)
    keys = hs.e2ee.parse_backup_upload(body, room_id, session_id)
    return 200, await hs.e2ee.put_backup_keys(requester.user_id, version, keys)


async def get_backup_keys(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    version, room_id, session_id = _backup_keys_at(request)
    return 200, await hs.e2ee.get_backup_keys(requester.user_id, version, room_id, session_id)


async def delete_backup_keys(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    version, room_id, session_id = _backup_keys_at(request)
    return 200, await hs.e2ee.delete_backup_keys(requester.user_id, version, room_id, session_id)


ROUTES: list[Route] = [
    Route("POST", "/keys/upload", upload_keys, "main"),
    Route("POST", "/keys/upload/{deviceId}", upload_keys, "main"),
    Route("POST", "/keys/query", query_keys, "encryption"),
    Route("POST", "/keys/claim", claim_keys, "encryption"),
    Route("GET", "/keys/changes", key_changes, "encryption"),
    Route("POST", "/keys/device_signing/upload", upload_cross_signing_keys, "main", prefixes=WITH_UNSTABLE),
    Route("POST", "/keys/signatures/upload", upload_signatures, "main", prefixes=WITH_UNSTABLE),
    Route("POST", "/room_keys/version", create_backup_version, "encryption"),
    Route("GET", "/room_keys/version", get_current_backup_version, "encryption"),
    Route("GET", "/room_keys/version/{version}", get_backup_version, "encryption"),
    Route("PUT", "/room_keys/version/{version}", put_backup_version, "encryption"),
    Route("DELETE", "/room_keys/version/{version}", delete_backup_version, "encryption"),
    Route("GET", "/room_keys/keys", get_backup_keys, "encryption"),
    Route("PUT", "/room_keys/keys", put_backup_keys, "encryption"),
    Route("DELETE", "/room_keys/keys", delete_backup_keys, "encryption"),
    Route("GET", "/room_keys/keys/{roomId}", get_backup_keys, "encryption"),
    Route("PUT", "/room_keys/keys/{roomId}", put_backup_keys, "encryption"),
    Route("DELETE", "/room_keys/keys/{roomId}", delete_backup_keys, "encryption"),
    Route("GET", "/room_keys/keys/{roomId}/{sessionId}", get_backup_keys, "encryption"),
    Route("PUT", "/room_keys/keys/{roomId}/{sessionId}", put_backup_keys, "encryption"),
    Route("DELETE", "/room_keys/keys/{roomId}/{sessionId}", delete_backup_keys, "encryption"),
]
