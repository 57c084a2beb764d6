"""The one way handlers read integers, booleans, enums, strings and tokens from paths, query strings
and JSON bodies, with the spec's errors.

Query and path values are refused with 400 M_INVALID_PARAM, body values with 400 M_BAD_JSON (as
Synapse's `parse_integer` / `parse_boolean` / `parse_json_object_from_request` do). Integers are ASCII
digits only: `str.isdigit()` accepts `²` and `int()` accepts `١٢`, `" 12"` and `"1_2"`, none of which
a client means as a number. What reaches the database fits its columns: stream positions, timestamps
and counters are BIGINT (signed 64-bit), so anything outside that range is refused here rather than
failing in PostgreSQL (or sqlite3) as a 500. Limits are the exception: like Synapse, a limit above
the endpoint's maximum is clamped to it, not refused.

Tokens are decoded by whoever owns their format (`StreamToken.decode`, a service's decoder); `token`
wraps the decoder so a malformed token, or one carrying positions outside BIGINT, is 400
M_INVALID_PARAM, and a non-ASCII token never reaches the decoder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection
from typing import Any, TypeVar, overload

from aiohttp import web

from hs.errors import bad_json, invalid_param, missing_param
from hs.services.room_ids import check_room_id
from hs.streams.tokens import StreamToken, TopologicalToken

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1  # PostgreSQL BIGINT: positions, timestamps, counters
MAX_TOKEN_LENGTH = 512
MAX_JSON_QUERY_LENGTH = 8192  # a filter given inline as JSON
MAX_OFFSET = 2 ** 31 - 1  # offsets into lists computed per request
_ASCII_INT = re.compile(r"-?[0-9]+")
T = TypeVar("T")
JsonDict = dict[str, Any]


# -- plain values --------------------------------------------------------------------------------------------
def parse_int(raw: str, name: str, *, minimum: int = 0, maximum: int = INT64_MAX, clamp: bool = False,
              error: Callable[[str], Exception] = invalid_param) -> int:
    """`raw` as an integer in [minimum, maximum]: ASCII digits with an optional '-', nothing else.

    With `clamp`, values above `maximum` become `maximum` (limits and timeouts, as Synapse clamps
    them); otherwise they are refused like values below `minimum`.
    """
    if not _ASCII_INT.fullmatch(raw):
        raise error(f"'{name}' must be an integer")
    if len(raw.lstrip("-0")) > 19:  # beyond 64 bits whatever the sign; int() of huge strings is slow
        value = maximum + 1 if not raw.startswith("-") else minimum - 1
    else:
        value = int(raw)
    return check_int(value, name, minimum=minimum, maximum=maximum, clamp=clamp, error=error)


def check_int(value: int, name: str, *, minimum: int = 0, maximum: int = INT64_MAX, clamp: bool = False,
              error: Callable[[str], Exception] = invalid_param) -> int:
    if value < minimum:
        raise error(f"'{name}' must be at least {minimum}")
    if value > maximum:
        if clamp:
            return maximum
        raise error(f"'{name}' must be at most {maximum}")
    return value


def check_enum(value: Any, name: str, choices: Collection[str],
               error: Callable[[str], Exception] = invalid_param) -> str:
    if not isinstance(value, str) or value not in choices:
        raise error(f"'{name}' must be one of {', '.join(choices)}")
    return value


# -- query strings -------------------------------------------------------------------------------------------
def path_room_id(request: web.Request) -> str:
    """The path's `{roomId}`: a room ID in form ('!' and more), else 400 M_INVALID_PARAM."""
    room_id = request.match_info["roomId"]
    check_room_id(room_id)
    return room_id


def query_str(request: web.Request, name: str, *, required: bool = False,
              max_length: int = MAX_TOKEN_LENGTH) -> str | None:
    """A query parameter's text; absent or empty is None (or 400 M_MISSING_PARAM when required)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        if required:
            raise missing_param(f"Missing '{name}'")
        return None
    if len(raw) > max_length:
        raise invalid_param(f"'{name}' is longer than {max_length} characters")
    return raw


def query_list(request: web.Request, *names: str, max_items: int = 20,
               max_length: int = MAX_TOKEN_LENGTH) -> list[str]:
    """Every value of repeated query parameters (`via=a&via=b`), of all `names` in turn, empty ones
    left out; more than `max_items` or an over-long value is 400 M_INVALID_PARAM."""
    values = [v for name in names for v in request.query.getall(name, []) if v]
    if len(values) > max_items:
        raise invalid_param(f"At most {max_items} values of {'/'.join(names)} are accepted")
    for v in values:
        if len(v) > max_length:
            raise invalid_param(f"A value of {'/'.join(names)} is longer than {max_length} characters")
    return values


def query_fields(request: web.Request, *, exclude: Collection[str] = ("access_token",), max_items: int = 20,
                 max_length: int = 1000) -> list[tuple[str, str]]:
    """Every query parameter as (name, value) pairs, in order, less `exclude`: for endpoints that pass
    the client's fields on (third-party lookups); more than `max_items` or an over-long name or value is
    400 M_INVALID_PARAM."""
    fields = [(k, v) for k, v in request.query.items() if k not in exclude]
    if len(fields) > max_items:
        raise invalid_param(f"At most {max_items} query parameters are accepted")
    if any(len(k) > max_length or len(v) > max_length for k, v in fields):
        raise invalid_param(f"A query parameter is longer than {max_length} characters")
    return fields


@overload
def query_int(request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int = INT64_MAX,
              clamp: bool = False) -> int: ...


@overload
def query_int(request: web.Request, name: str, default: None, *, minimum: int = 0, maximum: int = INT64_MAX,
              clamp: bool = False) -> int | None: ...


def query_int(request: web.Request, name: str, default: int | None, *, minimum: int = 0,
              maximum: int = INT64_MAX, clamp: bool = False) -> int | None:
    """An integer query parameter (`default` when absent); out of range is 400 M_INVALID_PARAM, or
    clamped to `maximum` with `clamp`."""
    raw = request.query.get(name)
    if raw is None:
        return default
    return parse_int(raw, name, minimum=minimum, maximum=maximum, clamp=clamp)


def query_required_int(request: web.Request, name: str, *, minimum: int = INT64_MIN,
                       maximum: int = INT64_MAX) -> int:
    raw = request.query.get(name)
    if raw is None:
        raise missing_param(f"Missing '{name}'")
    return parse_int(raw, name, minimum=minimum, maximum=maximum)


def query_limit(request: web.Request, default: int, maximum: int, *, name: str = "limit", minimum: int = 1,
                ) -> int:
    """A page size: below `minimum` refused, above `maximum` clamped (as Synapse does)."""
    return query_int(request, name, default, minimum=minimum, maximum=maximum, clamp=True)


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """'true' or 'false' (Synapse's `parse_boolean`); anything else is 400 M_INVALID_PARAM."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise invalid_param(f"'{name}' must be 'true' or 'false'")


def query_enum(request: web.Request, name: str, choices: Collection[str], default: str | None = None,
               ) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    return check_enum(raw, name, choices)


def query_token(request: web.Request, name: str, decode: Callable[[str], T], *, required: bool = False,
                ) -> T | None:
    """A pagination or sync token, decoded by `decode` (its format's owner); an empty value is absent."""
    raw = query_str(request, name, required=required)
    return None if raw is None else token(raw, name, decode)


def pagination_token(raw: str) -> StreamToken | TopologicalToken:
    """A /messages `from`/`to` or /members `at`: a pagination token, or a sync token's live end."""
    return TopologicalToken.decode(raw) if raw.startswith("t") else StreamToken.decode(raw)


def query_pagination_token(request: web.Request, name: str) -> str | None:
    """A pagination token checked here (format and range), as text: the room service decodes it."""
    raw = query_str(request, name)
    if raw is not None:
        token(raw, name, pagination_token)
    return raw


def relations_token(raw: str) -> int | StreamToken | TopologicalToken:
    """A /relations or /threads `from`/`to`: `r<position>`, or a /messages or /sync token."""
    if raw.startswith("r"):
        return parse_int(raw[1:], "from", error=ValueError)
    return pagination_token(raw)


def query_stream_token(request: web.Request, name: str, *, required: bool = False) -> StreamToken | None:
    return query_token(request, name, StreamToken.decode, required=required)


def token(raw: str, name: str, decode: Callable[[str], T]) -> T:
    """`decode(raw)`, with malformed tokens and positions outside BIGINT as 400 M_INVALID_PARAM."""
    if not raw.isascii() or len(raw) > MAX_TOKEN_LENGTH:
        raise invalid_param(f"Invalid '{name}' token")
    try:
        value = decode(raw)
    except ValueError:  # InvalidToken is a ValueError
        raise invalid_param(f"Invalid '{name}' token") from None
    if not _ints_fit(value):
        raise invalid_param(f"Invalid '{name}' token: position out of range")
    return value


def _ints_fit(value: Any) -> bool:
    """Every integer in a decoded token (plain, in a dataclass, dict, tuple or list) fits BIGINT, with
    room for a service to step one past it (`position + 1`)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return INT64_MIN < value < INT64_MAX
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(_ints_fit(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return all(_ints_fit(v) for v in value.values())
    if isinstance(value, tuple | list):
        return all(_ints_fit(v) for v in value)
    return True


def offset_token(raw: str) -> int:
    """Decoder for the plain offset tokens of endpoints that page through a computed list."""
    return parse_int(raw, "token", maximum=MAX_OFFSET, error=ValueError)


# -- JSON bodies ---------------------------------------------------------------------------------------------
def require_str(body: JsonDict, key: str, optional: bool = False) -> str | None:
    if key not in body or body[key] is None:
        if optional:
            return None
        raise missing_param(f"Missing '{key}'")
    value = body[key]
    if not isinstance(value, str):
        raise bad_json(f"'{key}' must be a string")
    return value


def _body_field(body: JsonDict, key: str, where: str, required: bool) -> tuple[str, Any]:
    """(the field's name in errors, its value; None when absent or null), or M_MISSING_PARAM if required."""
    name = f"{where}.{key}" if where else key
    value = body.get(key)
    if value is None and required:
        raise missing_param(f"Missing '{name}'")
    return name, value


def body_int(body: JsonDict, key: str, default: int | None = None, *, required: bool = False, minimum: int = 0,
             maximum: int = INT64_MAX, clamp: bool = False, where: str = "",
             range_error: Callable[[str], Exception] = bad_json) -> int | None:
    """An integer field of a JSON body: not a boolean, not a float (M_BAD_JSON), within [minimum,
    maximum] (`range_error`, M_BAD_JSON unless the endpoint has always answered another code)."""
    name, value = _body_field(body, key, where, required)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json(f"'{name}' must be an integer")
    return check_int(value, name, minimum=minimum, maximum=maximum, clamp=clamp, error=range_error)


def body_bool(body: JsonDict, key: str, default: bool, *, where: str = "") -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise bad_json(f"'{f'{where}.{key}' if where else key}' must be a boolean")
    return value


def body_enum(body: JsonDict, key: str, choices: Collection[str], default: str | None = None, *,
              required: bool = False, where: str = "", error: Callable[[str], Exception] = bad_json,
              ) -> str | None:
    """One of `choices`; `error` for anything else (M_BAD_JSON unless the endpoint's is another)."""
    name, value = _body_field(body, key, where, required)
    if value is None:
        return default
    return check_enum(value, name, choices, error=error)


def body_object(body: JsonDict, key: str, *, required: bool = False) -> JsonDict | None:
    value = body.get(key)
    if value is None:
        if required:
            raise missing_param(f"Missing '{key}'")
        return None
    if not isinstance(value, dict):
        raise bad_json(f"'{key}' must be an object")
    return value
