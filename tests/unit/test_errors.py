"""Each error helper gives its kind's status code and errcode, and no code outside hs/errors.py builds
a `MatrixError(<status>, "M_...")` by hand (so a kind of error keeps one status and one errcode)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from hs import errors
from hs.errors import MatrixError

HELPERS: list[tuple[Callable[[], MatrixError], int, str]] = [
    (lambda: errors.not_json("x"), 400, "M_NOT_JSON"),
    (lambda: errors.url_not_set("x"), 400, "M_URL_NOT_SET"),
    (lambda: errors.connection_failed("x"), 502, "M_CONNECTION_FAILED"),
    (lambda: errors.connection_timeout("x"), 504, "M_CONNECTION_TIMEOUT"),
    (lambda: errors.bad_status(401, "{}"), 502, "M_BAD_STATUS"),
    (lambda: errors.bad_json("x"), 400, "M_BAD_JSON"),
    (lambda: errors.bad_json("x", status=405), 405, "M_BAD_JSON"),
    (lambda: errors.invalid_param("x"), 400, "M_INVALID_PARAM"),
    (lambda: errors.exclusive("x"), 400, "M_EXCLUSIVE"),
    (lambda: errors.unknown_device("x"), 400, "M_UNKNOWN_DEVICE"),
    (lambda: errors.appservice_login_unsupported("x"), 400, "M_APPSERVICE_LOGIN_UNSUPPORTED"),
    (lambda: errors.missing_param("x"), 400, "M_MISSING_PARAM"),
    (lambda: errors.unrecognized("x"), 400, "M_UNRECOGNIZED"),
    (lambda: errors.bad_request("x"), 400, "M_UNKNOWN"),
    (lambda: errors.too_large("x"), 413, "M_TOO_LARGE"),
    (lambda: errors.too_large("x", status=502), 502, "M_TOO_LARGE"),
    (lambda: errors.cannot_overwrite_media(), 409, "M_CANNOT_OVERWRITE_MEDIA"),
    (lambda: errors.not_yet_uploaded(), 504, "M_NOT_YET_UPLOADED"),
    (lambda: errors.unknown_pos("x"), 400, "M_UNKNOWN_POS"),
    (lambda: errors.missing_token("x"), 401, "M_MISSING_TOKEN"),
    (lambda: errors.unknown_token(), 401, "M_UNKNOWN_TOKEN"),
    (lambda: errors.unauthorized("x"), 401, "M_UNAUTHORIZED"),
    (lambda: errors.forbidden("x"), 403, "M_FORBIDDEN"),
    (lambda: errors.guest_access_forbidden("x"), 403, "M_GUEST_ACCESS_FORBIDDEN"),
    (lambda: errors.user_deactivated("x"), 403, "M_USER_DEACTIVATED"),
    (lambda: errors.user_locked(), 401, "M_USER_LOCKED"),
    (lambda: errors.limit_exceeded(5), 429, "M_LIMIT_EXCEEDED"),
    (lambda: errors.not_found(), 404, "M_NOT_FOUND"),
    (lambda: errors.invalid_username("x"), 400, "M_INVALID_USERNAME"),
    (lambda: errors.user_in_use(), 400, "M_USER_IN_USE"),
    (lambda: errors.room_in_use("x"), 400, "M_ROOM_IN_USE"),
    (lambda: errors.room_in_use("x", status=409), 409, "M_ROOM_IN_USE"),
    (lambda: errors.bad_alias("x"), 400, "M_BAD_ALIAS"),
    (lambda: errors.invalid_room_state("x"), 400, "M_INVALID_ROOM_STATE"),
    (lambda: errors.unsupported_room_version("x"), 400, "M_UNSUPPORTED_ROOM_VERSION"),
    (lambda: errors.incompatible_room_version("9"), 400, "M_INCOMPATIBLE_ROOM_VERSION"),
    (lambda: errors.invalid_signature("x"), 400, "M_INVALID_SIGNATURE"),
    (lambda: errors.wrong_room_keys_version("3"), 403, "M_WRONG_ROOM_KEYS_VERSION"),
    (lambda: errors.threepid_medium_not_supported("x"), 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
    (lambda: errors.internal_error("x"), 500, "M_UNKNOWN"),
    (lambda: errors.unreachable("x"), 502, "M_UNKNOWN"),
    (lambda: errors.unavailable("x"), 503, "M_UNKNOWN"),
    (lambda: errors.room_id_taken("x"), 409, "HS_ROOM_ID_TAKEN"),
]


@pytest.mark.parametrize(("make", "status", "errcode"), HELPERS)
def test_helper_gives_its_kinds_status_and_errcode(make: Callable[[], MatrixError], status: int,
                                                    errcode: str) -> None:
    err = make()
    assert (err.code, err.errcode) == (status, errcode)
    assert err.to_json()["errcode"] == errcode


def test_every_helper_is_tested() -> None:
    helpers = {name for name, value in vars(errors).items()
               if callable(value) and not isinstance(value, type) and value.__module__ == errors.__name__}
    tested = set(re.findall(r"^    \(lambda: errors\.(\w+)\(", Path(__file__).read_text(), re.M))
    assert helpers == tested


def test_extra_fields_reach_the_body() -> None:
    assert errors.wrong_room_keys_version("3").to_json() == {
        "errcode": "M_WRONG_ROOM_KEYS_VERSION", "error": "Wrong backup version.", "current_version": "3"}
    assert errors.limit_exceeded(1500).to_json()["retry_after_ms"] == 1500
    assert errors.unknown_token(soft_logout=True).to_json()["soft_logout"] is True


# A status code first, or a literal "M_..." errcode second: the error is built by hand.
HAND_BUILT = re.compile(r"""MatrixError\(\s*(\d|[^,()]*,\s*["']M_)""")


def test_no_hand_built_errors_outside_errors_py() -> None:
    root = Path(__file__).resolve().parents[2] / "hs"
    found = [f"{path.relative_to(root.parent)}:{text[:m.start()].count(chr(10)) + 1}"
             for path in sorted(root.rglob("*.py")) if path.name != "errors.py" or path.parent != root
             for text in [path.read_text()] for m in HAND_BUILT.finditer(text)]
    assert found == [], "raise the helper from hs/errors.py for this kind of error (or add one there)"


def test_the_guard_recognises_a_hand_built_error() -> None:
    assert HAND_BUILT.search('raise MatrixError(400, "M_UNKNOWN", "x")')
    assert HAND_BUILT.search('MatrixError(\n    403, "M_FORBIDDEN", "x")')
    assert not HAND_BUILT.search('raise MatrixError(r.status, data.get("errcode", "M_UNKNOWN"), "")')
