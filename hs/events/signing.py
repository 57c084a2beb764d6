"""Ed25519 server signing keys and JSON/event signatures (spec appendices, "Signing JSON").

Signatures cover the canonical JSON of an object without ``signatures`` and ``unsigned``, so that other
servers can add their own signatures and transit data. Events are signed in their *redacted* form so a
signature still verifies after the event has been redacted.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import secrets
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import nacl.exceptions
import nacl.signing
from unpaddedbase64 import decode_base64, encode_base64

from hs.events.canonical_json import CanonicalJsonError, contains_float, encode_canonical_json
from hs.events.hashing import add_content_hash, content_hash_body, event_id_from_reference_hash
from hs.events.redaction import redact_shallow
from hs.events.room_versions import EventFormat, RoomVersion

JsonDict = dict[str, Any]

ED25519 = "ed25519"
_NOT_SIGNED = ("signatures", "unsigned")
_VERSION_ALPHABET = string.ascii_letters + string.digits


class SignatureVerifyError(Exception):
    """A signature is missing, malformed, from an unsupported algorithm, or does not verify."""


@dataclass(frozen=True)
class SigningKey:
    """One ed25519 signing key of this server, identified to others as ``ed25519:<version>``."""

    version: str
    key: nacl.signing.SigningKey = field(repr=False)
    alg: ClassVar[str] = ED25519

    @classmethod
    def generate(cls, version: str | None = None) -> SigningKey:
        """A fresh random key; the default version ``a_XXXX`` follows the common Synapse convention."""
        if version is None:
            version = "a_" + "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(4))
        return cls(version, nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, version: str, seed: bytes) -> SigningKey:
        """Build a key from its 32-byte ed25519 seed (what key files store)."""
        return cls(version, nacl.signing.SigningKey(seed))

    @property
    def key_id(self) -> str:
        return f"{self.alg}:{self.version}"

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return self.key.verify_key

    @property
    def verify_key_base64(self) -> str:
        """The public key as published in ``/_matrix/key/v2/server``."""
        return encode_base64(self.key.verify_key.encode())

    @property
    def seed_base64(self) -> str:
        return encode_base64(self.key.encode())

    def sign(self, data: bytes) -> bytes:
        """The detached 64-byte signature of ``data``."""
        return self.key.sign(data).signature


def decode_verify_key_base64(key_b64: str) -> nacl.signing.VerifyKey:
    """Parse a published (unpadded base64) ed25519 public key."""
    try:
        return nacl.signing.VerifyKey(decode_base64(key_b64))
    except (binascii.Error, ValueError, nacl.exceptions.CryptoError) as e:
        raise ValueError(f"invalid ed25519 verify key: {e}") from e


# -- key files ----------------------------------------------------------------------------------------
def parse_signing_keys(text: str) -> list[SigningKey]:
    """Parse Synapse-format key file text: one ``ed25519 <version> <base64 seed>`` per line."""
    keys: list[SigningKey] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] != ED25519:
            raise ValueError(f"line {lineno}: expected 'ed25519 <version> <base64 seed>'")
        try:
            seed = decode_base64(parts[2])
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"line {lineno}: bad base64 seed") from e
        if len(seed) != 32:
            raise ValueError(f"line {lineno}: ed25519 seed must be 32 bytes, got {len(seed)}")
        keys.append(SigningKey.from_seed(parts[1], seed))
    return keys


def format_signing_key(key: SigningKey) -> str:
    return f"{key.alg} {key.version} {key.seed_base64}\n"


def read_signing_key_file(path: str | os.PathLike[str]) -> SigningKey:
    """Read the server's signing key (the first one in the file)."""
    keys = parse_signing_keys(Path(path).read_text(encoding="utf-8"))
    if not keys:
        raise ValueError(f"{path}: no signing key found")
    return keys[0]


def write_signing_key_file(path: str | os.PathLike[str], key: SigningKey) -> None:
    """Write ``key`` atomically with mode 0600: it is the server's identity and must not leak or tear."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(format_signing_key(key))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# -- JSON signing -------------------------------------------------------------------------------------
def _signable_bytes(obj: JsonDict) -> bytes:
    return encode_canonical_json({k: v for k, v in obj.items() if k not in _NOT_SIGNED})


def _with_signature(signatures: Any, server_name: str, key_id: str, signature: bytes) -> JsonDict:
    """A copy of a ``signatures`` block with one signature added; never mutates shared nested dicts."""
    out: JsonDict = {}
    if isinstance(signatures, dict):
        out = {name: dict(sigs) if isinstance(sigs, dict) else sigs for name, sigs in signatures.items()}
    entity = out.get(server_name)
    if not isinstance(entity, dict):
        entity = out[server_name] = {}
    entity[key_id] = encode_base64(signature)
    return out


def sign_json(obj: JsonDict, server_name: str, key: SigningKey) -> JsonDict:
    """Sign ``obj`` as ``server_name``, adding to ``obj["signatures"]`` in place; returns ``obj``.

    Existing signatures (from other servers or keys) are kept, and ``unsigned`` is left untouched.
    """
    signature = key.sign(_signable_bytes(obj))
    obj["signatures"] = _with_signature(obj.get("signatures"), server_name, key.key_id, signature)
    return obj


def verify_signed_json(
    obj: JsonDict, server_name: str, key_id: str, verify_key: nacl.signing.VerifyKey
) -> None:
    """Check ``server_name``'s signature with ``key_id`` on ``obj``; raise `SignatureVerifyError` if bad."""
    if not key_id.startswith(ED25519 + ":"):
        raise SignatureVerifyError(f"unsupported signing algorithm in key id {key_id!r}")
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict) or not isinstance(signatures.get(server_name), dict):
        raise SignatureVerifyError(f"no signatures from {server_name}")
    sig_b64 = signatures[server_name].get(key_id)
    if not isinstance(sig_b64, str):
        raise SignatureVerifyError(f"no signature from {server_name} with key {key_id}")
    try:
        signature = decode_base64(sig_b64)
    except (binascii.Error, ValueError) as e:
        raise SignatureVerifyError(f"signature from {server_name} {key_id} is not valid base64") from e
    try:
        verify_key.verify(_signable_bytes(obj), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as e:
        raise SignatureVerifyError(f"bad signature from {server_name} with key {key_id}") from e


# -- event signing ------------------------------------------------------------------------------------
def sign_event(pdu: JsonDict, server_name: str, key: SigningKey, room_version: RoomVersion) -> JsonDict:
    """Hash (if not yet hashed) and sign an event in place; returns ``pdu``.

    The signature is over the redacted event, which keeps ``hashes``: it then holds after redaction,
    while the content hash still protects the full content. An existing ``hashes.sha256`` is kept so
    servers can co-sign events they did not create (e.g. invites) without touching the hash.
    """
    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict) or "sha256" not in hashes:
        add_content_hash(pdu)
    redacted = redact_shallow(pdu, room_version)
    signature = key.sign(_signable_bytes(redacted))
    pdu["signatures"] = _with_signature(pdu.get("signatures"), server_name, key.key_id, signature)
    return pdu


def finish_local_event(pdu: JsonDict, server_name: str, key: SigningKey, room_version: RoomVersion) -> str | None:
    """For an event this server builds: add the content hash and our signature in place and return
    the event ID (None for room v1/v2 events, which carry their own). The same bytes as
    `add_content_hash`, `sign_event` and `compute_event_id` in turn, with the float check made once
    and the redacted form encoded once: the signature and the reference hash both cover the redacted
    event without ``signatures``/``unsigned`` (and a freshly built event has no ``age_ts``)."""
    if contains_float(pdu):
        raise CanonicalJsonError("floats are not allowed in canonical JSON")
    digest = hashlib.sha256(encode_canonical_json(content_hash_body(pdu), floats_checked=True)).digest()
    hashes = pdu.get("hashes")
    pdu["hashes"] = {**(hashes if isinstance(hashes, dict) else {}), "sha256": encode_base64(digest)}
    redacted = redact_shallow(pdu, room_version)
    signable = encode_canonical_json({k: v for k, v in redacted.items() if k not in _NOT_SIGNED},
                                     floats_checked=True)
    pdu["signatures"] = _with_signature(pdu.get("signatures"), server_name, key.key_id, key.sign(signable))
    if room_version.event_format == EventFormat.V1:
        return None
    if "age_ts" in redacted:  # not in a reference hash; never in an event built here, but be exact
        return None
    return event_id_from_reference_hash(hashlib.sha256(signable).digest(), room_version)


def verify_event_signature(
    pdu: JsonDict,
    room_version: RoomVersion,
    server_name: str,
    key_id: str,
    verify_key: nacl.signing.VerifyKey,
) -> None:
    """Check ``server_name``'s signature on the redacted form of ``pdu``; raises `SignatureVerifyError`.

    Works on a full event and on a redacted copy alike. Content-hash checking is separate
    (`hs.events.hashing.check_content_hash`): a failing hash means "keep only the redacted form".
    """
    verify_signed_json(redact_shallow(pdu, room_version), server_name, key_id, verify_key)
