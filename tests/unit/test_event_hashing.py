"""Content hashes, reference hashes, event IDs, and event size limits."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from hs.events.canonical_json import encode_canonical_json, json_loads
from hs.events.event import Event
from hs.events.hashing import (
    add_content_hash,
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
)
from hs.events.redaction import redact_pdu
from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from hs.events.validation import MAX_PDU_SIZE, EventTooLargeError, check_event_size

V1, V3, V4, V10, V11, V12 = (KNOWN_ROOM_VERSIONS[v] for v in ("1", "3", "4", "10", "11", "12"))

# The two events of the spec's "Event Signing" test vectors (appendices) and their content hashes.
SPEC_MINIMAL_EVENT: dict[str, Any] = {
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {"age_ts": 1000000},
}
SPEC_MINIMAL_HASH = "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"

SPEC_MESSAGE_EVENT: dict[str, Any] = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {"age_ts": 1000000},
}
SPEC_MESSAGE_HASH = "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"

# A real room-version-5 create event as it was federated (the same vector is in gomatrixserverlib's
# tests): its content hash, and its ID in room v3 (standard base64) and v4+ (URL-safe base64).
REAL_CREATE_EVENT_JSON = (
    '{"auth_events": [], "prev_events": [], "type": "m.room.create", "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re",'
    ' "sender": "@erikj:jki.re", "content": {"room_version": "5", "predecessor": {"room_id":'
    ' "!gdRMqOrTFdOCYHNwOo:half-shot.uk", "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI"},'
    ' "creator": "@erikj:jki.re"}, "depth": 1, "prev_state": [], "state_key": "", "origin": "jki.re",'
    ' "origin_server_ts": 1560284621137, "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"},'
    ' "signatures": {"jki.re": {"ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6'
    'N2QNN5NMRXZKmgPYDA"}}, "unsigned": {"age": 1321650}}'
)
REAL_CREATE_ID_V3 = "$RrGxF28UrHLmoASHndYb9Jb/1SFww2ptmtur9INS438"
REAL_CREATE_ID_V4 = "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438"


def _message(**extra: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "origin": "example.org",
        "content": {"msgtype": "m.text", "body": "hello"},
        "depth": 4,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "origin_server_ts": 1_700_000_000_000,
    }
    pdu.update(extra)
    return add_content_hash(pdu)


# -- content hash -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pdu", "expected"), [(SPEC_MINIMAL_EVENT, SPEC_MINIMAL_HASH), (SPEC_MESSAGE_EVENT, SPEC_MESSAGE_HASH)]
)
def test_content_hash_spec_vectors(pdu: dict[str, Any], expected: str) -> None:
    before = copy.deepcopy(pdu)
    assert compute_content_hash(pdu) == expected
    assert pdu == before  # computing does not touch the event


def test_content_hash_of_real_event() -> None:
    pdu = json_loads(REAL_CREATE_EVENT_JSON)
    assert compute_content_hash(pdu) == "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"
    assert check_content_hash(pdu)


def test_content_hash_is_sha256_of_canonical_json_without_excluded_keys() -> None:
    pdu = _message(unsigned={"age": 1}, signatures={"s": {"k": "v"}})
    body = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    digest = hashlib.sha256(encode_canonical_json(body)).digest()
    from unpaddedbase64 import encode_base64

    assert compute_content_hash(pdu) == encode_base64(digest)


def test_content_hash_ignores_transit_data_but_covers_everything_else() -> None:
    base = _message()
    h = compute_content_hash(base)
    assert compute_content_hash({**base, "unsigned": {"age": 99}}) == h
    assert compute_content_hash({**base, "signatures": {"x": {"ed25519:1": "sig"}}}) == h
    assert compute_content_hash({**base, "hashes": {"sha256": "other"}}) == h
    assert compute_content_hash({**base, "content": {"msgtype": "m.text", "body": "hellO"}}) != h
    assert compute_content_hash({**base, "depth": 5}) != h
    assert compute_content_hash({**base, "extra": None}) != h


def test_add_and_check_content_hash() -> None:
    pdu = {k: v for k, v in SPEC_MINIMAL_EVENT.items()}
    returned = add_content_hash(pdu)
    assert returned is pdu
    assert pdu["hashes"] == {"sha256": SPEC_MINIMAL_HASH}
    assert check_content_hash(pdu)
    # transit data may change freely
    pdu["unsigned"] = {"age": 1}
    pdu["signatures"] = {"domain": {"ed25519:1": "x"}}
    assert check_content_hash(pdu)
    # a content change (or a redaction) is detected
    tampered = {**pdu, "content": {"body": "evil"}}
    assert not check_content_hash(tampered)
    assert not check_content_hash(redact_pdu(_message(), V10))


def test_add_content_hash_keeps_other_algorithms() -> None:
    pdu = _message()
    pdu["hashes"] = {"sha512": "future", "sha256": "stale"}
    add_content_hash(pdu)
    assert pdu["hashes"]["sha512"] == "future"
    assert pdu["hashes"]["sha256"] == compute_content_hash(pdu)


@pytest.mark.parametrize(
    "hashes",
    [None, "string", {}, {"sha256": 5}, {"sha256": "!!!not base64!!!"}, {"sha256": "é"}, {"sha512": "x"}],
)
def test_check_content_hash_rejects_missing_or_malformed(hashes: Any) -> None:
    pdu = _message()
    if hashes is None:
        del pdu["hashes"]
    else:
        pdu["hashes"] = hashes
    assert not check_content_hash(pdu)


def test_check_content_hash_accepts_padded_base64() -> None:
    pdu = _message()
    pdu["hashes"] = {"sha256": pdu["hashes"]["sha256"] + "="}
    assert check_content_hash(pdu)


# -- reference hash and event IDs -----------------------------------------------------------------------
def test_event_id_of_real_event_v3_and_v4_plus() -> None:
    pdu = json_loads(REAL_CREATE_EVENT_JSON)
    assert compute_event_id(pdu, V3) == REAL_CREATE_ID_V3
    for n in range(4, 11):
        assert compute_event_id(pdu, KNOWN_ROOM_VERSIONS[str(n)]) == REAL_CREATE_ID_V4
    assert Event(pdu, KNOWN_ROOM_VERSIONS["5"]).event_id == REAL_CREATE_ID_V4


def test_reference_hash_is_sha256_of_redacted_event_without_signatures_and_unsigned() -> None:
    pdu = _message(unsigned={"age": 3}, signatures={"example.org": {"ed25519:1": "sig"}})
    redacted = redact_pdu(pdu, V10)
    del redacted["signatures"]
    assert compute_reference_hash(pdu, V10) == hashlib.sha256(encode_canonical_json(redacted)).digest()


@pytest.mark.parametrize("rv", [V3, V4, V10, V11, V12], ids=lambda rv: "v" + rv.identifier)
def test_event_id_is_stable_under_redaction_and_transit_changes(rv: Any) -> None:
    pdu = _message(unsigned={"age": 3}, signatures={"example.org": {"ed25519:1": "sig"}})
    event_id = compute_event_id(pdu, rv)
    assert compute_event_id(redact_pdu(pdu, rv), rv) == event_id
    assert compute_event_id({**pdu, "unsigned": {"age": 4000}}, rv) == event_id
    assert compute_event_id({**pdu, "signatures": {"other.org": {"ed25519:x": "y"}}}, rv) == event_id
    assert compute_event_id({**pdu, "age_ts": 5}, rv) == event_id
    # content is not in the redacted form, but the content hash is, so content still matters
    assert compute_event_id(add_content_hash({**pdu, "content": {"body": "other"}}), rv) != event_id
    assert compute_event_id({**pdu, "depth": 5}, rv) != event_id
    assert compute_event_id({**pdu, "prev_events": ["$q"]}, rv) != event_id


def test_event_id_alphabets() -> None:
    for i in range(50):  # enough IDs that '+'/'/' (v3) and '-'/'_' (v4+) appear
        pdu = _message(depth=i)
        v3_id, v4_id = compute_event_id(pdu, V3), compute_event_id(pdu, V4)
        assert v3_id.startswith("$") and len(v3_id) == 44 and "=" not in v3_id
        assert v4_id == v3_id.replace("+", "-").replace("/", "_")
        assert "+" not in v4_id and "/" not in v4_id


def test_v11_event_id_differs_from_v10_because_origin_is_no_longer_protected() -> None:
    pdu = _message()
    assert compute_event_id(pdu, V10) != compute_event_id(pdu, V11)
    assert compute_event_id(pdu, V11) == compute_event_id({**pdu, "origin": "elsewhere"}, V11)
    assert compute_event_id(pdu, V10) != compute_event_id({**pdu, "origin": "elsewhere"}, V10)
    assert compute_event_id(pdu, V11) == compute_event_id(pdu, V12)


def test_event_id_not_computed_for_v1_format() -> None:
    for rv in (V1, KNOWN_ROOM_VERSIONS["2"]):
        with pytest.raises(ValueError):
            compute_event_id(SPEC_MESSAGE_EVENT, rv)


def test_reference_hash_works_for_v1_events() -> None:
    """Room v1/v2 prev_events carry the reference hash; it covers the event_id kept by redaction."""
    pdu = add_content_hash(copy.deepcopy(SPEC_MESSAGE_EVENT))
    digest = compute_reference_hash(pdu, V1)
    assert len(digest) == 32
    assert compute_reference_hash({**pdu, "event_id": "$1:domain"}, V1) != digest


def test_event_class_uses_computed_id() -> None:
    pdu = _message()
    assert Event(pdu, V11).event_id == compute_event_id(pdu, V11)
    assert Event(SPEC_MESSAGE_EVENT, V1).event_id == "$0:domain"


# -- size limits ----------------------------------------------------------------------------------------
def _sized(total: int) -> dict[str, Any]:
    pdu = _message()
    pdu["content"]["body"] = ""
    pad = total - len(encode_canonical_json(pdu))
    pdu["content"]["body"] = "x" * pad
    assert len(encode_canonical_json(pdu)) == total
    return pdu


def test_event_size_limit_is_65536_bytes_of_canonical_json() -> None:
    assert MAX_PDU_SIZE == 65536
    check_event_size(_sized(65536))
    with pytest.raises(EventTooLargeError) as e:
        check_event_size(_sized(65537))
    assert e.value.field is None


def test_event_size_counts_signatures_but_not_unsigned() -> None:
    pdu = _sized(65536)
    check_event_size({**pdu, "unsigned": {"big": "y" * 100_000}})
    with pytest.raises(EventTooLargeError):
        check_event_size({**pdu, "signatures": {"a": {"ed25519:1": "s"}}})


def test_event_size_counts_utf8_bytes() -> None:
    pdu = _sized(65536)
    pdu["content"]["body"] = pdu["content"]["body"][:-1] + "é"  # same length in characters, +1 byte
    with pytest.raises(EventTooLargeError):
        check_event_size(pdu)


@pytest.mark.parametrize("key", ["sender", "room_id", "state_key", "type", "event_id"])
def test_per_key_limits_are_255_bytes(key: str) -> None:
    pdu = _message()
    pdu[key] = "a" * 255
    check_event_size(pdu)
    pdu[key] = "a" * 256
    with pytest.raises(EventTooLargeError) as e:
        check_event_size(pdu)
    assert e.value.field == key
    pdu[key] = "é" * 128  # 128 characters but 256 bytes
    with pytest.raises(EventTooLargeError):
        check_event_size(pdu)


def test_other_keys_have_no_own_limit() -> None:
    check_event_size(_message(origin="o" * 1000, content={"body": "b" * 1000}))


def test_size_check_needs_canonical_json() -> None:
    with pytest.raises(ValueError):
        check_event_size(_message(content={"n": 1.5}))
