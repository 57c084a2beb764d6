"""Signing keys, JSON signatures and event signatures against the spec's cryptographic test vectors."""

from __future__ import annotations

import copy
import os
import re
import stat
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from unpaddedbase64 import decode_base64, encode_base64

from hs.events.canonical_json import json_loads
from hs.events.hashing import check_content_hash, compute_event_id
from hs.events.redaction import redact_pdu
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from hs.events.signing import (
    SignatureVerifyError,
    SigningKey,
    decode_verify_key_base64,
    parse_signing_keys,
    read_signing_key_file,
    sign_event,
    sign_json,
    verify_event_signature,
    verify_signed_json,
    write_signing_key_file,
)

SPEC_APPENDICES = Path(os.environ.get("MATRIX_SPEC_DIR", "/work/shared/spec")) / "text" / "appendices.md"

# appendices, "Cryptographic Test Vectors"
SPEC_SEED_B64 = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SPEC_PUBLIC_KEY_B64 = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
SERVER_NAME = "domain"
KEY_ID = "ed25519:1"

PRE_V11 = [KNOWN_ROOM_VERSIONS[str(n)] for n in range(1, 11)]
V10, V11, V12 = KNOWN_ROOM_VERSIONS["10"], KNOWN_ROOM_VERSIONS["11"], KNOWN_ROOM_VERSIONS["12"]


@pytest.fixture
def spec_key() -> SigningKey:
    return SigningKey.from_seed("1", decode_base64(SPEC_SEED_B64))


def _spec_minimal_event() -> dict[str, Any]:
    return {
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


SPEC_MINIMAL_SIGNED = {
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        }
    },
    "type": "X",
    "unsigned": {"age_ts": 1000000},
}


def _spec_message_event() -> dict[str, Any]:
    return {
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


SPEC_MESSAGE_SIGNED = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
        }
    },
    "unsigned": {"age_ts": 1000000},
}


# -- keys ---------------------------------------------------------------------------------------------
def test_spec_key(spec_key: SigningKey) -> None:
    assert spec_key.key_id == KEY_ID
    assert spec_key.alg == "ed25519"
    assert spec_key.verify_key_base64 == SPEC_PUBLIC_KEY_B64
    assert encode_base64(spec_key.verify_key.encode()) == SPEC_PUBLIC_KEY_B64
    # the spec's seed has non-zero trailing bits; the canonical re-encoding ends in '0'
    assert spec_key.seed_base64 == SPEC_SEED_B64[:-1] + "0"


def test_generate() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert re.fullmatch(r"a_[A-Za-z0-9]{4}", a.version)
    assert a.key_id == "ed25519:" + a.version
    assert a.verify_key_base64 != b.verify_key_base64
    assert SigningKey.generate("mykey").key_id == "ed25519:mykey"
    sig = a.sign(b"data")
    assert len(sig) == 64
    a.verify_key.verify(b"data", sig)


def test_repr_does_not_leak_seed(spec_key: SigningKey) -> None:
    assert spec_key.seed_base64 not in repr(spec_key)
    assert SPEC_SEED_B64[:20] not in repr(spec_key)


def test_decode_verify_key_base64() -> None:
    vk = decode_verify_key_base64(SPEC_PUBLIC_KEY_B64)
    assert isinstance(vk, nacl.signing.VerifyKey)
    assert encode_base64(vk.encode()) == SPEC_PUBLIC_KEY_B64
    for bad in ("", "abc", "!!!!", "é"):
        with pytest.raises(ValueError):
            decode_verify_key_base64(bad)


def test_key_file_round_trip(tmp_path: Path, spec_key: SigningKey) -> None:
    path = tmp_path / "signing.key"
    write_signing_key_file(path, spec_key)
    assert path.read_text() == f"ed25519 1 {SPEC_SEED_B64[:-1]}0\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = read_signing_key_file(path)
    assert loaded.version == "1"
    assert loaded.verify_key_base64 == SPEC_PUBLIC_KEY_B64
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind

    generated = SigningKey.generate()
    write_signing_key_file(str(path), generated)  # overwrite, str path
    again = read_signing_key_file(str(path))
    assert (again.version, again.seed_base64) == (generated.version, generated.seed_base64)


def test_read_synapse_style_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(f"ed25519 a_AbCd {SPEC_SEED_B64}\ned25519 old {SPEC_SEED_B64[:-1]}0==\n")
    key = read_signing_key_file(path)
    assert key.key_id == "ed25519:a_AbCd"
    assert key.verify_key_base64 == SPEC_PUBLIC_KEY_B64
    keys = parse_signing_keys(path.read_text())
    assert [k.version for k in keys] == ["a_AbCd", "old"]  # padded base64 accepted too


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n# only a comment\n",
        "ed25519 a_AbCd",
        f"curve25519 a_AbCd {SPEC_SEED_B64}",
        "ed25519 a_AbCd c2hvcnQ",  # decodes to 5 bytes
        "ed25519 a_AbCd @@@@",
        f"ed25519 a_AbCd {SPEC_SEED_B64} extra",
    ],
)
def test_read_bad_key_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k"
    path.write_text(text)
    with pytest.raises(ValueError):
        read_signing_key_file(path)


# -- JSON signing -------------------------------------------------------------------------------------
def test_sign_empty_object_spec_vector(spec_key: SigningKey) -> None:
    signed = sign_json({}, SERVER_NAME, spec_key)
    assert signed == {
        "signatures": {
            "domain": {
                "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
            }
        }
    }


def test_sign_object_with_values_spec_vector(spec_key: SigningKey) -> None:
    obj = {"one": 1, "two": "Two"}
    signed = sign_json(obj, SERVER_NAME, spec_key)
    assert signed is obj  # in place, like the spec's example code
    assert signed == {
        "one": 1,
        "signatures": {
            "domain": {
                "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
            }
        },
        "two": "Two",
    }


def _spec_vector_pairs() -> list[tuple[str, str]]:
    text = SPEC_APPENDICES.read_text(encoding="utf-8")
    section = text.split("## Cryptographic Test Vectors", 1)[1].split("## Conventions for Matrix APIs", 1)[0]
    return re.findall(
        r"```json\n(.*?)```.*?should emit the following signed \w+:\s*```json\n(.*?)```", section, re.S
    )


@pytest.mark.skipif(not SPEC_APPENDICES.exists(), reason="Matrix spec checkout not available")
def test_every_signing_vector_in_spec_file(spec_key: SigningKey) -> None:
    """Read the JSON and event signing vectors straight from the spec; 2 JSON + 2 events."""
    pairs = _spec_vector_pairs()
    assert len(pairs) == 4
    for i, (source, expected) in enumerate(pairs):
        obj, want = json_loads(source), json_loads(expected)
        got = (
            sign_json(obj, SERVER_NAME, spec_key)
            if i < 2
            else sign_event(obj, SERVER_NAME, spec_key, PRE_V11[0])
        )
        assert got == want


def test_signature_ignores_unsigned_and_keeps_it(spec_key: SigningKey) -> None:
    obj: dict[str, Any] = {"one": 1, "two": "Two", "unsigned": {"age_ts": 922834800000}}
    sign_json(obj, SERVER_NAME, spec_key)
    assert obj["unsigned"] == {"age_ts": 922834800000}
    assert obj["signatures"]["domain"]["ed25519:1"].startswith("KqmLSbO39/")


def test_sign_json_keeps_other_signatures_without_mutating_them(spec_key: SigningKey) -> None:
    theirs = {"other.org": {"ed25519:x": "theirsig"}, "domain": {"ed25519:old": "oldsig"}}
    frozen = copy.deepcopy(theirs)
    obj: dict[str, Any] = {"one": 1, "two": "Two", "signatures": theirs}
    sign_json(obj, SERVER_NAME, spec_key)
    assert theirs == frozen  # a shared signatures block is not modified in place
    assert obj["signatures"]["other.org"] == {"ed25519:x": "theirsig"}
    assert obj["signatures"]["domain"] == {
        "ed25519:old": "oldsig",
        "ed25519:1": obj["signatures"]["domain"]["ed25519:1"],
    }
    # existing signatures are not covered: same signature as without them
    assert obj["signatures"]["domain"]["ed25519:1"].startswith("KqmLSbO39/")


def test_verify_signed_json(spec_key: SigningKey) -> None:
    vk = decode_verify_key_base64(SPEC_PUBLIC_KEY_B64)
    signed = sign_json({"one": 1, "two": "Two"}, SERVER_NAME, spec_key)
    verify_signed_json(signed, SERVER_NAME, KEY_ID, vk)
    # unsigned data and other signatures may be added in transit
    signed["unsigned"] = {"age": 1}
    signed["signatures"]["other.org"] = {"ed25519:1": "zzz"}
    verify_signed_json(signed, SERVER_NAME, KEY_ID, vk)
    # key order of the received object is irrelevant
    verify_signed_json(dict(reversed(list(signed.items()))), SERVER_NAME, KEY_ID, vk)


def _good_signed(spec_key: SigningKey) -> dict[str, Any]:
    return sign_json({"one": 1, "two": "Two"}, SERVER_NAME, spec_key)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.__setitem__("one", 2),
        lambda o: o.__setitem__("three", 3),
        lambda o: o.pop("two"),
        lambda o: o.pop("signatures"),
        lambda o: o.__setitem__("signatures", {"other.org": o["signatures"]["domain"]}),
        lambda o: o.__setitem__("signatures", {"domain": "notadict"}),
        lambda o: o["signatures"]["domain"].__setitem__("ed25519:1", "!!!not base64"),
        lambda o: o["signatures"]["domain"].__setitem__(
            "ed25519:1", o["signatures"]["domain"]["ed25519:1"][:-4]
        ),
        lambda o: o["signatures"]["domain"].__setitem__("ed25519:1", 12),
        lambda o: o["signatures"]["domain"].__setitem__("ed25519:1", encode_base64(b"\x00" * 64)),
        lambda o: o["signatures"]["domain"].__setitem__(
            "ed25519:2", o["signatures"]["domain"].pop("ed25519:1")
        ),
    ],
)
def test_verify_signed_json_failures(spec_key: SigningKey, mutate: Any) -> None:
    obj = _good_signed(spec_key)
    mutate(obj)
    with pytest.raises(SignatureVerifyError):
        verify_signed_json(obj, SERVER_NAME, KEY_ID, spec_key.verify_key)


def test_verify_signed_json_wrong_key_or_algorithm(spec_key: SigningKey) -> None:
    obj = _good_signed(spec_key)
    with pytest.raises(SignatureVerifyError):
        verify_signed_json(obj, SERVER_NAME, KEY_ID, SigningKey.generate().verify_key)
    obj["signatures"]["domain"]["curve25519:1"] = obj["signatures"]["domain"]["ed25519:1"]
    with pytest.raises(SignatureVerifyError):
        verify_signed_json(obj, SERVER_NAME, "curve25519:1", spec_key.verify_key)
    with pytest.raises(SignatureVerifyError):
        verify_signed_json(obj, SERVER_NAME, "ed25519:nope", spec_key.verify_key)


# -- event signing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rv", PRE_V11, ids=lambda rv: "v" + rv.identifier)
def test_sign_minimal_event_spec_vector(spec_key: SigningKey, rv: RoomVersion) -> None:
    pdu = _spec_minimal_event()
    signed = sign_event(pdu, SERVER_NAME, spec_key, rv)
    assert signed is pdu
    assert signed == SPEC_MINIMAL_SIGNED


@pytest.mark.parametrize("rv", PRE_V11, ids=lambda rv: "v" + rv.identifier)
def test_sign_redactable_event_spec_vector(spec_key: SigningKey, rv: RoomVersion) -> None:
    assert sign_event(_spec_message_event(), SERVER_NAME, spec_key, rv) == SPEC_MESSAGE_SIGNED


@pytest.mark.parametrize("rv", PRE_V11, ids=lambda rv: "v" + rv.identifier)
def test_verify_spec_signed_events(rv: RoomVersion) -> None:
    vk = decode_verify_key_base64(SPEC_PUBLIC_KEY_B64)
    for signed in (SPEC_MINIMAL_SIGNED, SPEC_MESSAGE_SIGNED):
        verify_event_signature(copy.deepcopy(signed), rv, SERVER_NAME, KEY_ID, vk)
        assert check_content_hash(signed)


def test_event_signature_covers_redacted_form_only(spec_key: SigningKey) -> None:
    signed = copy.deepcopy(SPEC_MESSAGE_SIGNED)
    rv = PRE_V11[0]
    # A redacted copy still verifies, but its content hash no longer matches.
    redacted = redact_pdu(signed, rv)
    verify_event_signature(redacted, rv, SERVER_NAME, KEY_ID, spec_key.verify_key)
    assert not check_content_hash(redacted)
    # Changing content (not in the redacted form) keeps the signature valid: the hash catches it.
    edited = {**signed, "content": {"body": "forged"}}
    verify_event_signature(edited, rv, SERVER_NAME, KEY_ID, spec_key.verify_key)
    assert not check_content_hash(edited)
    # Changing the hash or an essential key breaks the signature.
    for key, value in [("hashes", {"sha256": "AAAA"}), ("sender", "@evil:domain"), ("origin_server_ts", 1)]:
        with pytest.raises(SignatureVerifyError):
            verify_event_signature({**signed, key: value}, rv, SERVER_NAME, KEY_ID, spec_key.verify_key)


def test_v11_signs_a_different_redacted_form(spec_key: SigningKey) -> None:
    """v11 drops top-level "origin" from the redacted form, so the spec vector's signature differs."""
    for rv in (V11, V12):
        signed = sign_event(_spec_minimal_event(), SERVER_NAME, spec_key, rv)
        assert signed["hashes"] == SPEC_MINIMAL_SIGNED["hashes"]  # the content hash does not depend on it
        assert signed["signatures"] != SPEC_MINIMAL_SIGNED["signatures"]
        verify_event_signature(signed, rv, SERVER_NAME, KEY_ID, spec_key.verify_key)
        # "origin" is not covered in v11, so it can change without breaking the signature
        verify_event_signature({**signed, "origin": "x"}, rv, SERVER_NAME, KEY_ID, spec_key.verify_key)
        with pytest.raises(SignatureVerifyError):
            verify_event_signature(signed, V10, SERVER_NAME, KEY_ID, spec_key.verify_key)
    with pytest.raises(SignatureVerifyError):
        verify_event_signature(SPEC_MINIMAL_SIGNED, V11, SERVER_NAME, KEY_ID, spec_key.verify_key)


@pytest.mark.parametrize("rv", [V10, V11], ids=lambda rv: "v" + rv.identifier)
def test_member_event_signature_depends_on_version_rules(spec_key: SigningKey, rv: RoomVersion) -> None:
    pdu: dict[str, Any] = {
        "type": "m.room.member",
        "state_key": "@a:domain",
        "sender": "@a:domain",
        "room_id": "!r:domain",
        "content": {"membership": "join", "join_authorised_via_users_server": "@b:other", "displayname": "A"},
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 1,
    }
    sign_event(pdu, SERVER_NAME, spec_key, rv)
    verify_event_signature(pdu, rv, SERVER_NAME, KEY_ID, spec_key.verify_key)
    # join_authorised_via_users_server is protected since v9, displayname never is
    verify_event_signature(
        {**pdu, "content": {**pdu["content"], "displayname": "B"}},
        rv,
        SERVER_NAME,
        KEY_ID,
        spec_key.verify_key,
    )
    with pytest.raises(SignatureVerifyError):
        verify_event_signature(
            {**pdu, "content": {**pdu["content"], "join_authorised_via_users_server": "@c:other"}},
            rv,
            SERVER_NAME,
            KEY_ID,
            spec_key.verify_key,
        )
    # under v8 rules the key is not part of the signed form, so the signature does not hold
    with pytest.raises(SignatureVerifyError):
        verify_event_signature(pdu, KNOWN_ROOM_VERSIONS["8"], SERVER_NAME, KEY_ID, spec_key.verify_key)


def test_co_signing_keeps_hash_and_signatures(spec_key: SigningKey) -> None:
    """A second server (e.g. the invitee's) signs an event it did not create."""
    other = SigningKey.generate("b")
    pdu = sign_event(_spec_minimal_event(), SERVER_NAME, spec_key, V10)
    hashes, first_sig = dict(pdu["hashes"]), pdu["signatures"]["domain"]["ed25519:1"]
    event_id = compute_event_id(pdu, V10)
    sign_event(pdu, "other.org", other, V10)
    assert pdu["hashes"] == hashes
    assert pdu["signatures"]["domain"]["ed25519:1"] == first_sig
    assert compute_event_id(pdu, V10) == event_id  # signatures are not part of the event ID
    verify_event_signature(pdu, V10, SERVER_NAME, KEY_ID, spec_key.verify_key)
    verify_event_signature(pdu, V10, "other.org", "ed25519:b", other.verify_key)


def test_sign_event_adds_hash_when_missing(spec_key: SigningKey) -> None:
    pdu = _spec_minimal_event()
    del pdu["hashes"]
    sign_event(pdu, SERVER_NAME, spec_key, V10)
    assert pdu == SPEC_MINIMAL_SIGNED


def test_sign_event_keeps_an_existing_content_hash(spec_key: SigningKey) -> None:
    """Co-signing a copy whose content was redacted on the way must not replace the creator's hash."""
    original = sign_event(_spec_message_event(), SERVER_NAME, spec_key, V10)
    redacted = redact_pdu(original, V10)
    other = SigningKey.generate("b")
    sign_event(redacted, "other.org", other, V10)
    assert redacted["hashes"] == SPEC_MESSAGE_SIGNED["hashes"]
    verify_event_signature(redacted, V10, SERVER_NAME, KEY_ID, spec_key.verify_key)
    verify_event_signature(redacted, V10, "other.org", "ed25519:b", other.verify_key)


@pytest.mark.parametrize("version", ["1", "3", "4", "10", "11", "12"])
def test_finishing_a_local_event_in_one_pass_matches_hash_sign_and_id_in_turn(version: str) -> None:
    """`finish_local_event` shares one float check and one redacted encoding between the signature
    and the event ID; the result must be byte for byte what the separate steps give."""
    from hs.events.hashing import add_content_hash
    from hs.events.signing import finish_local_event, sign_event

    rv = KNOWN_ROOM_VERSIONS[version]
    key = SigningKey.from_seed("1", decode_base64(SPEC_SEED_B64))
    pdu: dict[str, Any] = {
        "room_id": "!r:example.org", "sender": "@a:example.org", "type": "m.room.message", "depth": 7,
        "content": {"msgtype": "m.text", "body": "héllo \u2603", "n": 3, "nested": {"list": [1, "two", None]}},
        "prev_events": ["$p"], "auth_events": ["$a1", "$a2"], "origin_server_ts": 1700000000000,
    }
    if rv.event_format.name == "V1":
        pdu["event_id"] = "$local:example.org"
    expected = sign_event(add_content_hash(copy.deepcopy(pdu)), "example.org", key, rv)
    finished = copy.deepcopy(pdu)
    event_id = finish_local_event(finished, "example.org", key, rv)
    assert finished == expected
    if rv.event_format.name == "V1":
        assert event_id is None
    else:
        assert event_id == compute_event_id(expected, rv)


def test_a_float_in_a_local_event_is_refused_before_anything_is_signed() -> None:
    from hs.events.canonical_json import CanonicalJsonError
    from hs.events.signing import finish_local_event

    pdu: dict[str, Any] = {"room_id": "!r:x", "sender": "@a:x", "type": "m.room.message", "depth": 1,
                           "content": {"body": "x", "n": 1.5}, "prev_events": [], "auth_events": [],
                           "origin_server_ts": 1}
    with pytest.raises(CanonicalJsonError):
        finish_local_event(pdu, "x", SigningKey.generate(), KNOWN_ROOM_VERSIONS["12"])
    assert "signatures" not in pdu
