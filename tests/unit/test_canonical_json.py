"""Canonical JSON: the spec's examples, its string grammar, key order, and number rules."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import MappingProxyType

import pytest

from hs.events.canonical_json import (
    CANONICALJSON_MAX_INT,
    CANONICALJSON_MIN_INT,
    CanonicalJsonError,
    encode_canonical_json,
    json_loads,
    validate_canonical_int_range,
)

SPEC_APPENDICES = Path(os.environ.get("MATRIX_SPEC_DIR", "/work/shared/spec")) / "text" / "appendices.md"

# Every example of the "Canonical JSON / Examples" section of the spec appendices: (input, output).
SPEC_EXAMPLES = [
    ("{}", b"{}"),
    ('{\n    "one": 1,\n    "two": "Two"\n}', b'{"one":1,"two":"Two"}'),
    ('{\n    "b": "2",\n    "a": "1"\n}', b'{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', b'{"a":"1","b":"2"}'),
    (
        """{
            "auth": {
                "success": true,
                "mxid": "@john.doe:example.com",
                "profile": {
                    "display_name": "John Doe",
                    "three_pids": [
                        {"medium": "email", "address": "john.doe@example.org"},
                        {"medium": "msisdn", "address": "123456789"}
                    ]
                }
            }
        }""",
        b'{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":'
        b'[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},'
        b'"success":true}}',
    ),
    ('{\n    "a": "日本語"\n}', '{"a":"日本語"}'.encode()),
    ('{\n    "本": 2,\n    "日": 1\n}', '{"日":1,"本":2}'.encode()),
    ('{\n    "a": "\\u65E5"\n}', '{"a":"日"}'.encode()),
    ('{\n    "a": null\n}', b'{"a":null}'),
    ('{\n    "a": -0,\n    "b": 1e10\n}', b'{"a":0,"b":10000000000}'),
]


@pytest.mark.parametrize(("source", "expected"), SPEC_EXAMPLES)
def test_spec_examples(source: str, expected: bytes) -> None:
    assert encode_canonical_json(json_loads(source, integral_floats_to_int=True)) == expected


def _spec_example_pairs() -> list[tuple[str, str]]:
    text = SPEC_APPENDICES.read_text(encoding="utf-8")
    section = text.split("#### Examples", 1)[1].split("### Signing Details", 1)[0]
    return re.findall(
        r"Given the following JSON object:\s*```json\n(.*?)```\s*"
        r"The following canonical JSON should be produced:\s*```json\n(.*?)```",
        section,
        flags=re.S,
    )


@pytest.mark.skipif(not SPEC_APPENDICES.exists(), reason="Matrix spec checkout not available")
def test_every_example_in_spec_file() -> None:
    """Read the examples straight from the spec so none can be missed or mistyped."""
    pairs = _spec_example_pairs()
    assert len(pairs) == len(SPEC_EXAMPLES) == 10
    for source, expected in pairs:
        assert (
            encode_canonical_json(json_loads(source, integral_floats_to_int=True))
            == expected.strip().encode()
        )


def test_dict_order_of_input_is_irrelevant() -> None:
    a = {"z": 1, "a": {"y": [3, {"q": None, "b": False}], "c": "x"}}
    b = {"a": {"c": "x", "y": [3, {"b": False, "q": None}]}, "z": 1}
    assert (
        encode_canonical_json(a)
        == encode_canonical_json(b)
        == b'{"a":{"c":"x","y":[3,{"b":false,"q":null}]},"z":1}'
    )


def test_keys_sorted_by_code_point_not_utf16() -> None:
    # U+FF01 < U+1F600 by code point; UTF-16 code units would order the surrogate pair (D83D) first.
    # Upper-case ASCII sorts before lower-case.
    value = {"\U0001f600": 1, "\uff01": 2, "b": 3, "B": 4, "a": 5, "é": 6}
    assert encode_canonical_json(value) == '{"B":4,"a":5,"b":3,"é":6,"！":2,"😀":1}'.encode()


# The grammar: \b \t \n \f \r have short escapes, the other ASCII controls \u00xx in lower-case hex.
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


@pytest.mark.parametrize("code", range(0x20))
def test_control_character_escapes(code: int) -> None:
    expected = _SHORT_ESCAPES.get(code, f"\\u{code:04x}")
    assert encode_canonical_json(chr(code)) == ('"' + expected + '"').encode()
    assert encode_canonical_json({chr(code): 1}) == ('{"' + expected + '":1}').encode()


def test_only_quote_and_backslash_are_escaped_otherwise() -> None:
    value = '"\\/\x7f\u2028\u2029<>&\U0001f600é'
    assert encode_canonical_json(value) == ('"\\"\\\\/\x7f\u2028\u2029<>&\U0001f600é"').encode()


def test_utf8_is_not_escaped() -> None:
    assert encode_canonical_json({"a": "日本語\U0001f600"}) == '{"a":"日本語😀"}'.encode()


def test_literals_and_containers() -> None:
    assert encode_canonical_json([True, False, None, 0, -1, "", [], {}]) == b'[true,false,null,0,-1,"",[],{}]'
    assert encode_canonical_json((1, 2)) == b"[1,2]"
    assert encode_canonical_json({"m": MappingProxyType({"b": 1, "a": 2})}) == b'{"m":{"a":2,"b":1}}'


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        1.0,
        -0.0,
        float("nan"),
        float("inf"),
        float("-inf"),
        {"a": [1, {"b": 2.5}]},
        {"a": None, "b": float("nan")},  # orjson would print NaN as null: must still be caught
        [None, float("inf")],
        {"a": 1e16},
    ],
)
def test_floats_are_refused(value: object) -> None:
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(value)


def test_canonical_json_error_is_a_value_error() -> None:
    assert issubclass(CanonicalJsonError, ValueError)


def test_float_like_strings_are_fine() -> None:
    value = {"a": "1.5", "b": "1e10", "n": None, "t": "NaN null 2.0"}
    assert encode_canonical_json(value) == b'{"a":"1.5","b":"1e10","n":null,"t":"NaN null 2.0"}'


@pytest.mark.parametrize(
    "value", [{1: "a"}, {None: 1}, {1, 2}, b"bytes", object(), {"a": {("t",): 1}}, "\ud800", {"\udfff": 1}]
)
def test_non_json_values_are_refused(value: object) -> None:
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json(value)


def test_integers_beyond_canonical_range_still_encode_exactly() -> None:
    """Room v1-v5 events may contain them and must still hash to the same bytes as everywhere else."""
    assert encode_canonical_json({"a": 2**53}) == b'{"a":9007199254740992}'
    assert encode_canonical_json({"a": 2**64 - 1}) == b'{"a":18446744073709551615}'
    # Beyond 64 bits orjson gives up; the fallback must keep the same canonical form.
    value = {"z": 2**70, "a": -(2**70), "s": "\x01é\n", "l": [True, None, {"y": 1, "x": 2}]}
    assert (
        encode_canonical_json(value)
        == (
            '{"a":-1180591620717411303424,"l":[true,null,{"x":2,"y":1}],"s":"\\u0001é\\n","z":1180591620717411303424}'
        ).encode()
    )
    with pytest.raises(CanonicalJsonError):
        encode_canonical_json({"big": 2**70, "f": 1.5})


def test_deep_nesting_falls_back_without_changing_output() -> None:
    value: object = "x"
    for i in range(300):  # deeper than orjson's recursion limit
        value = {"k": value, "i": i} if i % 2 else [value]
    out = encode_canonical_json(value)
    assert out.count(b"[") == 150 and out.count(b"{") == 150
    assert out.startswith(b'{"i":299,"k":[{"i":297,')


def test_validate_canonical_int_range() -> None:
    validate_canonical_int_range(
        {"a": [CANONICALJSON_MIN_INT, CANONICALJSON_MAX_INT, 0, True, None, "9" * 30]}
    )
    for bad in (2**53, -(2**53), {"a": [1, {"b": 2**60}]}, {"a": 1.0}, [float("nan")]):
        with pytest.raises(CanonicalJsonError):
            validate_canonical_int_range(bad)
    assert CANONICALJSON_MAX_INT == 9007199254740991 and CANONICALJSON_MIN_INT == -9007199254740991


@pytest.mark.parametrize(
    "text", ["NaN", '{"a": NaN}', "[Infinity]", '{"a":-Infinity}', "{", '{"a":1,}', "", "\xff"]
)
def test_json_loads_refuses_invalid_json_and_constants(text: str) -> None:
    with pytest.raises(CanonicalJsonError):
        json_loads(text)


def test_json_loads_refuses_constants_on_the_big_int_path() -> None:
    with pytest.raises(CanonicalJsonError):
        json_loads('{"big": 123456789012345678901234, "x": NaN}')


def test_json_loads_keeps_big_integers_exact() -> None:
    assert json_loads(b'{"a": 18446744073709551616, "b": -1180591620717411303424}') == {
        "a": 2**64,
        "b": -(2**70),
    }
    assert type(json_loads(b"[99999999999999999999999]")[0]) is int
    # long digit runs inside strings take the slow path but parse the same
    assert json_loads(b'{"token": "12345678901234567890123", "n": 1}') == {
        "token": "12345678901234567890123",
        "n": 1,
    }


def test_json_loads_input_types_and_floats() -> None:
    assert json_loads('{"a": [1, "é"]}') == json_loads(b'{"a": [1, "\\u00e9"]}') == {"a": [1, "é"]}
    assert json_loads(bytearray(b"[1]")) == json_loads(memoryview(b"[1]")) == [1]
    assert json_loads("[1.5]") == [1.5]
    converted = json_loads(
        '{"a": 1e10, "b": -0.0, "c": 1.5, "d": [2.0], "e": 1e300}', integral_floats_to_int=True
    )
    assert converted == {"a": 10_000_000_000, "b": 0, "c": 1.5, "d": [2], "e": 1e300}
    assert type(converted["a"]) is int and type(converted["e"]) is float and type(converted["c"]) is float


def test_round_trip() -> None:
    value = {"content": {"body": "héllo\n\u0000", "n": [1, -2, 2**53 - 1]}, "type": "m.room.message"}
    assert json_loads(encode_canonical_json(value)) == value
