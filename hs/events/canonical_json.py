"""Canonical JSON (spec appendices, "Canonical JSON"): the one byte form that is hashed and signed.

Every hash, signature and event ID in Matrix is computed over these bytes, so the encoder must agree
byte for byte with every other implementation: keys sorted by code point, no whitespace, UTF-8 left
unescaped, only the mandatory escapes, and no floats.

orjson does the heavy lifting because it already produces exactly this form for the values it accepts
(sorted keys by code point, minimal escapes with lower-case ``\\u00xx``, raw UTF-8). It does *not*
refuse floats (it even writes NaN as ``null``) and cannot write integers beyond 64 bits, so those two
cases are handled around it; a pure-Python encoder is the fallback for anything orjson rejects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

CANONICALJSON_MIN_INT = -(2**53) + 1
CANONICALJSON_MAX_INT = 2**53 - 1


class CanonicalJsonError(ValueError):
    """A value cannot be represented in (or parsed as) canonical JSON."""


_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME

# orjson.loads turns integers that do not fit in 64 bits into floats, silently losing precision.
_LONG_DIGIT_RUN = re.compile(rb"\d{19,}")
_SCALAR_TYPES = frozenset({str, int, bool, type(None)})


def _orjson_default(obj: Any) -> Any:
    """Let read-only mappings (e.g. frozen event content) encode as objects; refuse everything else."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not a JSON type")


def encode_canonical_json(obj: Any, *, floats_checked: bool = False) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    Integers outside the canonical range are *accepted* here: events in room versions 1-5 may carry
    them and must still be hashed and signed exactly. Rooms with strict canonical JSON (v6+) call
    `validate_canonical_int_range` on incoming data instead. Floats are always refused;
    `floats_checked` says the caller already checked a value containing ``obj`` (`contains_float`),
    so the walk is not repeated for each of an event's several encodings.
    """
    try:
        out = orjson.dumps(obj, default=_orjson_default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: >64-bit ints, deep nesting, non-str keys, bad types
        return _encode_slow(obj)
    # orjson happily writes floats (NaN even as "null"); a type walk is cheaper than parsing the
    # output back. It runs after orjson so cyclic input has already been refused.
    if not floats_checked and contains_float(obj):
        raise CanonicalJsonError("floats are not allowed in canonical JSON")
    return out


def contains_float(obj: Any) -> bool:
    """True if any value in the JSON-like ``obj`` is a float. Iterative: no recursion limit."""
    if isinstance(obj, float):
        return True
    stack = [obj]
    while stack:
        value = stack.pop()
        items: Iterable[Any]
        if type(value) is dict or isinstance(value, Mapping):
            items = value.values()
        elif isinstance(value, list | tuple):
            items = value
        else:
            continue
        for item in items:
            kind = type(item)
            if kind in _SCALAR_TYPES:
                continue
            if kind is dict or kind is list:
                stack.append(item)
            elif isinstance(item, float):
                return True
            elif isinstance(item, Mapping | list | tuple):
                stack.append(item)
    return False


def _normalise_for_stdlib(obj: Any) -> Any:
    """Check types strictly and turn mappings/tuples into dicts/lists for the stdlib encoder."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        raise CanonicalJsonError("floats are not allowed in canonical JSON")
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CanonicalJsonError(f"object keys must be strings, not {type(k).__name__}")
            out[k] = _normalise_for_stdlib(v)
        return out
    if isinstance(obj, list | tuple):
        return [_normalise_for_stdlib(v) for v in obj]
    raise CanonicalJsonError(f"{type(obj).__name__} is not a JSON type")


def _encode_slow(obj: Any) -> bytes:
    """Pure-Python canonical encoder for values orjson cannot handle (e.g. integers beyond 64 bits).

    The stdlib with ``ensure_ascii=False`` emits exactly the spec's escapes (``\\uXXXX`` lower-case for
    the other control characters) and sorts keys by code point like orjson.
    """
    try:
        value = _normalise_for_stdlib(obj)
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
        return text.encode("utf-8")
    except CanonicalJsonError:
        raise
    except (ValueError, TypeError, RecursionError) as e:  # UnicodeEncodeError: lone surrogates
        raise CanonicalJsonError(f"cannot encode as canonical JSON: {e}") from e


def validate_canonical_int_range(obj: Any) -> None:
    """Raise `CanonicalJsonError` unless every number in ``obj`` is an integer in the canonical range.

    Room versions with ``strict_canonicaljson`` (v6+) must reject events that break this rule instead
    of accepting them, so it is checked explicitly on input. Floats are refused too: canonical JSON
    has no representation for them.
    """
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if not CANONICALJSON_MIN_INT <= value <= CANONICALJSON_MAX_INT:
                raise CanonicalJsonError(f"integer {value} is outside the canonical JSON range")
        elif isinstance(value, float):
            raise CanonicalJsonError("floats are not allowed in canonical JSON")
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


def _reject_constant(name: str) -> Any:
    raise CanonicalJsonError(f"{name} is not valid JSON")


def _integral_floats_to_int(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer() and CANONICALJSON_MIN_INT <= value <= CANONICALJSON_MAX_INT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _integral_floats_to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(v) for v in value]
    return value


def json_loads(data: bytes | bytearray | memoryview | str, *, integral_floats_to_int: bool = False) -> Any:
    """Parse JSON from the network, refusing NaN/Infinity and keeping big integers exact.

    orjson is used for speed, but it would turn integers beyond 64 bits into floats (changing the
    event's hash), so input that may contain such a number falls back to the stdlib parser.

    ``integral_floats_to_int`` maps numbers such as ``1e10`` or ``-0.0`` to the integer they denote,
    which is how the spec's canonical JSON examples treat them; other floats are left as floats (and
    will later be refused by the encoder).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        if _LONG_DIGIT_RUN.search(raw):
            value = json.loads(raw, parse_constant=_reject_constant)
        else:
            value = orjson.loads(raw)
    except CanonicalJsonError:
        raise
    except (ValueError, RecursionError) as e:  # orjson.JSONDecodeError / json.JSONDecodeError
        raise CanonicalJsonError(f"invalid JSON: {e}") from e
    if integral_floats_to_int:
        value = _integral_floats_to_int(value)
    return value
