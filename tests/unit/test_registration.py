"""Registration service pieces that need no database: user ID rules, hashing, IDs, nonces, UIA."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from hs.errors import MatrixError
from hs.services.registration import (
    DUMMY,
    PASSWORD,
    InteractiveAuthIncomplete,
    Registration,
    generate_access_token,
    generate_device_id,
)


def _reg(bcrypt_rounds: int = 4) -> Registration:
    hs: Any = SimpleNamespace(server_name="example.org", config=SimpleNamespace(bcrypt_rounds=bcrypt_rounds),
                              user_store=None)
    return Registration(hs)


def _operation(method: str = "POST", path: str = "/_matrix/client/v3/register") -> tuple[str, str]:
    return method, path


@pytest.mark.parametrize("localpart", ["alice", "a.b_c=d-e/f+g", "x1", "0day", "a" * 200])
def test_valid_localparts(localpart: str) -> None:
    assert _reg().check_localpart(localpart) == f"@{localpart}:example.org"


@pytest.mark.parametrize("localpart", ["", "Alice", "with space", "caf\u00e9", "a:b", "@a", "_appservice",
                                       "12345", "a" * 250, "tab\t", "quote'"])
def test_invalid_localparts(localpart: str) -> None:
    with pytest.raises(MatrixError) as exc:
        _reg().check_localpart(localpart)
    assert exc.value.code == 400 and exc.value.errcode == "M_INVALID_USERNAME"


def test_qualify_and_identifiers() -> None:
    reg = _reg()
    assert reg.qualify("Bob") == "@bob:example.org"
    assert reg.qualify("@Bob:other.org") == "@Bob:other.org"
    assert reg.user_from_login_dict({"identifier": {"type": "m.id.user", "user": "bob"}}) == "@bob:example.org"
    assert reg.user_from_login_dict({"user": "@bob:example.org"}) == "@bob:example.org"
    with pytest.raises(MatrixError) as exc:
        reg.user_from_login_dict({"password": "x"})
    assert exc.value.errcode == "M_MISSING_PARAM"
    with pytest.raises(MatrixError) as exc:
        reg.user_from_login_dict({"identifier": {"type": "m.id.unknown"}})
    assert exc.value.errcode == "M_UNKNOWN"
    with pytest.raises(MatrixError) as exc:
        reg.user_from_login_dict({"identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b"}})
    assert exc.value.code == 403


def test_token_and_device_id_format() -> None:
    tokens = {generate_access_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("hs_") and len(t) > 40 for t in tokens)
    ids = {generate_device_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(d) == 10 and d.isalpha() and d.isupper() for d in ids)


async def test_password_hashing() -> None:
    reg = _reg()
    h = await reg.hash_password("hunter2")
    assert h.startswith("$2") and "hunter2" not in h
    assert await reg.check_password_hash("hunter2", h)
    assert not await reg.check_password_hash("hunter3", h)
    assert not await reg.check_password_hash("hunter2", None)
    assert not await reg.check_password_hash("hunter2", "not-a-bcrypt-hash")
    # Long passwords hash (bcrypt uses the first 72 bytes) and verify.
    long_pw = "\u00e9" * 200
    assert await reg.check_password_hash(long_pw, await reg.hash_password(long_pw))
    with pytest.raises(MatrixError):
        reg.validate_password("x" * 513)
    with pytest.raises(MatrixError):
        reg.validate_password(123)


async def test_hashing_does_not_block_the_loop() -> None:
    reg = _reg(bcrypt_rounds=12)
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    await reg.hash_password("slow")
    elapsed = time.monotonic() - start
    stop = True
    await task
    # bcrypt at cost 12 takes a noticeable time; the loop kept ticking meanwhile.
    assert elapsed > 0.05
    assert ticks >= 5


def test_nonces_single_use_and_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = _reg()
    n1, n2 = reg.new_nonce(), reg.new_nonce()
    assert n1 != n2
    assert reg.use_nonce(n1)
    assert not reg.use_nonce(n1)
    assert not reg.use_nonce("never-issued")
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 61)
    assert not reg.use_nonce(n2)


async def test_uia_dummy_flow() -> None:
    reg = _reg()
    req = _operation()
    with pytest.raises(InteractiveAuthIncomplete) as exc:
        await reg.check_ui_auth(req, {"username": "a"}, [[DUMMY]])
    body = exc.value.to_json()
    assert exc.value.code == 401
    assert body["flows"] == [{"stages": [DUMMY]}] and body["params"] == {} and "errcode" not in body
    sid = body["session"]

    result = await reg.check_ui_auth(req, {"auth": {"type": DUMMY, "session": sid}}, [[DUMMY]])
    assert result.clientdict == {"username": "a"}  # remembered from the first round
    assert result.session.session_id == sid

    # Auth without a session completes in one round.
    result = await reg.check_ui_auth(req, {"username": "b", "auth": {"type": DUMMY}}, [[DUMMY]])
    assert result.clientdict == {"username": "b"}

    # A stage that is not offered.
    with pytest.raises(MatrixError) as err:
        await reg.check_ui_auth(req, {"auth": {"type": PASSWORD, "session": sid}}, [[DUMMY]])
    assert err.value.errcode == "M_UNRECOGNIZED"

    # The session is bound to the endpoint it was created for.
    with pytest.raises(MatrixError) as err:
        await reg.check_ui_auth(_operation("DELETE", "/_matrix/client/v3/devices/X"),
                                {"auth": {"type": DUMMY, "session": sid}}, [[DUMMY]])
    assert err.value.code == 403


async def test_uia_multi_stage_reports_completed() -> None:
    reg = _reg()
    req = _operation()
    flows = [[DUMMY, "m.login.other"]]
    with pytest.raises(InteractiveAuthIncomplete) as exc:
        await reg.check_ui_auth(req, {"auth": {"type": DUMMY}}, flows)
    body = exc.value.to_json()
    assert body["completed"] == [DUMMY]


async def test_uia_session_bound_to_requester() -> None:
    reg = _reg()
    req = _operation("POST", "/_matrix/client/v3/delete_devices")
    alice: Any = SimpleNamespace(user_id="@alice:example.org")
    bob: Any = SimpleNamespace(user_id="@bob:example.org")
    with pytest.raises(InteractiveAuthIncomplete) as exc:
        await reg.check_ui_auth(req, {"devices": ["A"]}, [[DUMMY]], requester=alice)
    sid = exc.value.to_json()["session"]
    with pytest.raises(MatrixError) as err:
        await reg.check_ui_auth(req, {"devices": ["B"], "auth": {"type": DUMMY, "session": sid}}, [[DUMMY]],
                                requester=bob)
    assert err.value.code == 403
    # Bob's attempt did not change what the session protects.
    result = await reg.check_ui_auth(req, {"auth": {"type": DUMMY, "session": sid}}, [[DUMMY]], requester=alice)
    assert result.clientdict == {"devices": ["A"]}


def test_nonce_store_is_bounded() -> None:
    from hs.services.registration import MAX_NONCES

    reg = _reg()
    first = reg.new_nonce()
    for _ in range(MAX_NONCES + 5):
        reg.new_nonce()
    assert len(reg._nonces) <= MAX_NONCES
    assert not reg.use_nonce(first)
