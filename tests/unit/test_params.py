"""hs/api/params.py: integers are ASCII digits within BIGINT; tokens keep their positions within it."""

from __future__ import annotations

import pytest

from hs.api.params import INT64_MAX, offset_token, parse_int, relations_token, token
from hs.errors import MatrixError
from hs.streams.tokens import StreamToken


@pytest.mark.parametrize("raw", ["²", "١٢", " 1", "1 ", "+1", "1_0", "0x10", "1.0", "", "-", "1e3"])
def test_only_ascii_digits_are_integers(raw: str) -> None:
    with pytest.raises(MatrixError) as e:
        parse_int(raw, "n", minimum=-10)
    assert (e.value.code, e.value.errcode) == (400, "M_INVALID_PARAM")


def test_bounds_refuse_or_clamp() -> None:
    assert parse_int(str(INT64_MAX), "n") == INT64_MAX
    assert parse_int("007", "n") == 7
    for raw in (str(INT64_MAX + 1), "9" * 5000, "-1"):
        with pytest.raises(MatrixError):
            parse_int(raw, "n")
    assert parse_int("9" * 5000, "limit", maximum=100, clamp=True) == 100
    with pytest.raises(MatrixError):
        parse_int("-" + "9" * 30, "n", minimum=-5, maximum=5, clamp=True)


def test_tokens_are_ascii_and_within_bigint() -> None:
    assert token("s5", "since", StreamToken.decode).get("events") == 5
    assert token("r12", "from", relations_token) == 12
    assert token("41", "from", offset_token) == 41
    for raw, decode in (("s²", StreamToken.decode), ("r١", relations_token), ("r" + "9" * 19, relations_token),
                        ("t1-" + "9" * 19, relations_token), ("x", offset_token), ("-1", offset_token)):
        with pytest.raises(MatrixError) as e:
            token(raw, "from", decode)  # type: ignore[arg-type]
        assert e.value.errcode == "M_INVALID_PARAM", raw
