"""Errors that reach clients as the spec's `{errcode, error}` bodies with the spec's status codes.

Code raises these through the helpers below, one per kind of error and named after what it means,
so that each kind has one status code and one errcode. `MatrixError(...)` itself is for errors whose
code and errcode are data (another server's or a writer's error relayed as it came);
tests/unit/test_errors.py fails if a hand-built `MatrixError(<status>, "M_...")` appears elsewhere.
"""

from __future__ import annotations

from typing import Any

# The spec's error codes this server sends (client-server API, "Standard error response").
UNKNOWN = "M_UNKNOWN"
FORBIDDEN = "M_FORBIDDEN"
NOT_FOUND = "M_NOT_FOUND"
BAD_JSON = "M_BAD_JSON"
NOT_JSON = "M_NOT_JSON"
UNRECOGNIZED = "M_UNRECOGNIZED"
INVALID_PARAM = "M_INVALID_PARAM"
MISSING_PARAM = "M_MISSING_PARAM"
MISSING_TOKEN = "M_MISSING_TOKEN"
UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
UNAUTHORIZED = "M_UNAUTHORIZED"
LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
TOO_LARGE = "M_TOO_LARGE"
INVALID_USERNAME = "M_INVALID_USERNAME"
USER_IN_USE = "M_USER_IN_USE"
USER_DEACTIVATED = "M_USER_DEACTIVATED"
USER_LOCKED = "M_USER_LOCKED"
GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
EXCLUSIVE = "M_EXCLUSIVE"
UNKNOWN_DEVICE = "M_UNKNOWN_DEVICE"
APPSERVICE_LOGIN_UNSUPPORTED = "M_APPSERVICE_LOGIN_UNSUPPORTED"
ROOM_IN_USE = "M_ROOM_IN_USE"
BAD_ALIAS = "M_BAD_ALIAS"
INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
INVALID_SIGNATURE = "M_INVALID_SIGNATURE"
WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
THREEPID_MEDIUM_NOT_SUPPORTED = "M_THREEPID_MEDIUM_NOT_SUPPORTED"
NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"
UNKNOWN_POS = "M_UNKNOWN_POS"
URL_NOT_SET = "M_URL_NOT_SET"
CONNECTION_FAILED = "M_CONNECTION_FAILED"
CONNECTION_TIMEOUT = "M_CONNECTION_TIMEOUT"
BAD_STATUS = "M_BAD_STATUS"

# The error code a persister answers a replicated creation with when the room ID is taken (between
# processes only: the creating process builds another create event).
ROOM_ID_TAKEN = "HS_ROOM_ID_TAKEN"


class MatrixError(Exception):
    def __init__(self, code: int, errcode: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.code = code
        self.errcode = errcode
        self.msg = msg
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.msg, **self.extra}


# --- the request is malformed -------------------------------------------------------------------

def not_json(msg: str) -> MatrixError:
    """400: the body (or a JSON-valued parameter) does not parse as JSON."""
    return MatrixError(400, NOT_JSON, msg)


def bad_json(msg: str, *, status: int = 400) -> MatrixError:
    """The JSON parses but is not what the endpoint takes (405 where the spec says so for a type
    the endpoint refuses to set)."""
    return MatrixError(status, BAD_JSON, msg)


def invalid_param(msg: str) -> MatrixError:
    return MatrixError(400, INVALID_PARAM, msg)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, MISSING_PARAM, msg)


def unrecognized(msg: str) -> MatrixError:
    """400: a kind, scope or login type this server does not know."""
    return MatrixError(400, UNRECOGNIZED, msg)


def bad_request(msg: str) -> MatrixError:
    """400 M_UNKNOWN: a request the server refuses for which the spec names no better errcode."""
    return MatrixError(400, UNKNOWN, msg)


def too_large(msg: str, *, status: int = 413) -> MatrixError:
    """413: an event (or request, or upload) over the size limits; 502 for another server's media too
    large to proxy (the spec's status for that case)."""
    return MatrixError(status, TOO_LARGE, msg)


def cannot_overwrite_media(msg: str = "Media already uploaded") -> MatrixError:
    """409: an upload to a reserved media ID that already has its content."""
    return MatrixError(409, CANNOT_OVERWRITE_MEDIA, msg)


def unknown_pos(msg: str = "Unknown or expired position") -> MatrixError:
    """400: a sliding sync `pos` this server does not know (or no longer keeps): the client starts over."""
    return MatrixError(400, UNKNOWN_POS, msg)


def not_yet_uploaded(msg: str = "Content has not yet been uploaded") -> MatrixError:
    """504: a download of a reserved media ID whose upload did not arrive within `timeout_ms`."""
    return MatrixError(504, NOT_YET_UPLOADED, msg)


# --- who is asking ------------------------------------------------------------------------------

def missing_token(msg: str) -> MatrixError:
    """401: no access token, or an Authorization header that does not carry one."""
    return MatrixError(401, MISSING_TOKEN, msg)


def unknown_token(msg: str = "Unrecognised access token", soft_logout: bool = False) -> MatrixError:
    return MatrixError(401, UNKNOWN_TOKEN, msg, soft_logout=soft_logout)


def unauthorized(msg: str) -> MatrixError:
    """401: a server-server request whose X-Matrix signature is missing or does not check out."""
    return MatrixError(401, UNAUTHORIZED, msg)


def forbidden(msg: str) -> MatrixError:
    return MatrixError(403, FORBIDDEN, msg)


def guest_access_forbidden(msg: str) -> MatrixError:
    """403: guests may not do this (or guest access is off)."""
    return MatrixError(403, GUEST_ACCESS_FORBIDDEN, msg)


def exclusive(msg: str) -> MatrixError:
    """400: a user ID or alias in an application service's exclusive namespace (or a service's own
    request outside its namespace)."""
    return MatrixError(400, EXCLUSIVE, msg)


def unknown_device(msg: str) -> MatrixError:
    """400: an application service's `device_id` that is not one of the user's devices."""
    return MatrixError(400, UNKNOWN_DEVICE, msg)


def appservice_login_unsupported(msg: str) -> MatrixError:
    """400: a login (or a registration with a device) for a service that manages devices itself (MSC4190)."""
    return MatrixError(400, APPSERVICE_LOGIN_UNSUPPORTED, msg)


def user_deactivated(msg: str) -> MatrixError:
    return MatrixError(403, USER_DEACTIVATED, msg)


def user_locked(msg: str = "User account has been locked") -> MatrixError:
    """401 with soft_logout: an admin locked the account (Synapse's admin API); its sessions stay, so
    the client keeps them until the account is unlocked."""
    return MatrixError(401, USER_LOCKED, msg, soft_logout=True)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(429, LIMIT_EXCEEDED, "Too many requests", retry_after_ms=retry_after_ms)


# --- what it is about ---------------------------------------------------------------------------

def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, NOT_FOUND, msg)


def invalid_username(msg: str) -> MatrixError:
    """400: a localpart (or user ID) that may not be registered."""
    return MatrixError(400, INVALID_USERNAME, msg)


def user_in_use(msg: str = "User ID already taken.") -> MatrixError:
    return MatrixError(400, USER_IN_USE, msg)


def room_in_use(msg: str, *, status: int = 400) -> MatrixError:
    """A room alias already taken: 400 from /createRoom, 409 from the directory."""
    return MatrixError(status, ROOM_IN_USE, msg)


def bad_alias(msg: str) -> MatrixError:
    """400: an alias in m.room.canonical_alias that does not point to the room."""
    return MatrixError(400, BAD_ALIAS, msg)


def invalid_room_state(msg: str) -> MatrixError:
    """400: /createRoom's initial_state (or the state it implies) is not acceptable."""
    return MatrixError(400, INVALID_ROOM_STATE, msg)


def unsupported_room_version(msg: str) -> MatrixError:
    return MatrixError(400, UNSUPPORTED_ROOM_VERSION, msg)


def incompatible_room_version(room_version: str) -> MatrixError:
    """make_join/make_knock: the joining server does not support the room's version (the spec names
    the version in the body)."""
    return MatrixError(400, INCOMPATIBLE_ROOM_VERSION,
                       f"Your homeserver does not support room version {room_version}", room_version=room_version)


def invalid_signature(msg: str) -> MatrixError:
    return MatrixError(400, INVALID_SIGNATURE, msg)


def wrong_room_keys_version(current_version: str) -> MatrixError:
    """403: a key backup write named a version that is not the current one."""
    return MatrixError(403, WRONG_ROOM_KEYS_VERSION, "Wrong backup version.",
                       current_version=current_version)


def threepid_medium_not_supported(msg: str) -> MatrixError:
    return MatrixError(400, THREEPID_MEDIUM_NOT_SUPPORTED, msg)


# --- the server's side --------------------------------------------------------------------------

def internal_error(msg: str) -> MatrixError:
    """500: something this server (or cluster) got wrong, not the request."""
    return MatrixError(500, UNKNOWN, msg)


def unreachable(msg: str) -> MatrixError:
    """502: another server or worker this request needed could not be asked."""
    return MatrixError(502, UNKNOWN, msg)


def room_id_taken(msg: str) -> MatrixError:
    """409, between processes only: the persister already has a room with the create event's ID."""
    return MatrixError(409, ROOM_ID_TAKEN, msg)


def unavailable(msg: str) -> MatrixError:
    """503: the server cannot do this now; trying again may work."""
    return MatrixError(503, UNKNOWN, msg)


# --- an application service's ping (client-server API, "Appservice ping") --------------------------

def url_not_set(msg: str) -> MatrixError:
    """400: the application service has no URL: the homeserver never calls it."""
    return MatrixError(400, URL_NOT_SET, msg)


def connection_failed(msg: str) -> MatrixError:
    """502: the application service could not be reached."""
    return MatrixError(502, CONNECTION_FAILED, msg)


def connection_timeout(msg: str) -> MatrixError:
    """504: the application service did not answer in time."""
    return MatrixError(504, CONNECTION_TIMEOUT, msg)


def bad_status(status: int, body: str | None) -> MatrixError:
    """502: the application service answered with an error; its status and body help its operator."""
    extra: dict[str, Any] = {"status": status}
    if body is not None:
        extra["body"] = body
    return MatrixError(502, BAD_STATUS, f"Ping returned status {status}", **extra)
