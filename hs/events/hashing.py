"""Content hashes, reference hashes and event IDs (server-server API, "Signing Events").

The content hash covers the full, unredacted event so that a receiver can tell whether it was given a
redacted copy; the reference hash covers only the redacted form and, from room v3, *is* the event ID.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from typing import Any

from unpaddedbase64 import decode_base64, encode_base64

from hs.events.canonical_json import encode_canonical_json
from hs.events.redaction import redact_shallow
from hs.events.room_versions import EventFormat, RoomVersion

JsonDict = dict[str, Any]

_NOT_IN_CONTENT_HASH = ("unsigned", "signatures", "hashes")
# "age_ts" is a legacy top-level field that redaction removes anyway; listed so the intent is explicit.
_NOT_IN_REFERENCE_HASH = ("signatures", "unsigned", "age_ts")


def content_hash_body(pdu: JsonDict) -> JsonDict:
    """What the content hash covers: the event without ``unsigned``/``signatures``/``hashes``."""
    return {k: v for k, v in pdu.items() if k not in _NOT_IN_CONTENT_HASH}


def _content_hash_bytes(pdu: JsonDict) -> bytes:
    return hashlib.sha256(encode_canonical_json(content_hash_body(pdu))).digest()


def compute_content_hash(pdu: JsonDict) -> str:
    """SHA-256 of the event without ``unsigned``/``signatures``/``hashes``, as unpadded base64."""
    return encode_base64(_content_hash_bytes(pdu))


def add_content_hash(pdu: JsonDict) -> JsonDict:
    """Set ``hashes.sha256`` on ``pdu`` (in place, also returned) from its current content."""
    hashes = pdu.get("hashes")
    new_hashes = dict(hashes) if isinstance(hashes, dict) else {}
    new_hashes["sha256"] = compute_content_hash(pdu)
    pdu["hashes"] = new_hashes
    return pdu


def check_content_hash(pdu: JsonDict) -> bool:
    """True if ``hashes.sha256`` matches the event.

    False means the event was redacted (or tampered with) on the way; the receiver must then keep only
    the redacted form.
    """
    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    try:
        expected = decode_base64(claimed)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(expected, _content_hash_bytes(pdu))


def compute_reference_hash(pdu: JsonDict, room_version: RoomVersion) -> bytes:
    """SHA-256 digest of the redacted event without ``signatures``/``unsigned``.

    Only essential keys (and the content hash) are covered, so a redacted copy has the same reference
    hash, and hence the same event ID, as the original.
    """
    redacted = redact_shallow(pdu, room_version)
    for key in _NOT_IN_REFERENCE_HASH:
        redacted.pop(key, None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


def compute_event_id(pdu: JsonDict, room_version: RoomVersion) -> str:
    """The event ID derived from the reference hash (room v3+).

    Room v3 uses standard unpadded base64; v4+ use the URL-safe alphabet so IDs fit in URL paths.
    Rooms v1/v2 carry a server-chosen ``event_id`` in the PDU, so there is nothing to compute.
    """
    fmt = room_version.event_format
    if fmt == EventFormat.V1:
        raise ValueError(
            f"room version {room_version.identifier} events carry their own event_id; it is not computed"
        )
    return event_id_from_reference_hash(compute_reference_hash(pdu, room_version), room_version)


def event_id_from_reference_hash(digest: bytes, room_version: RoomVersion) -> str:
    """Room v3 uses standard unpadded base64; v4+ the URL-safe alphabet."""
    if room_version.event_format == EventFormat.V2:
        return "$" + encode_base64(digest)
    return "$" + encode_base64(digest, urlsafe=True)
