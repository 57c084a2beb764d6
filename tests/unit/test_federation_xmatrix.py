"""The X-Matrix Authorization header: what we send verifies, and the parser accepts RFC 9110's
auth-param forms (quoted or token values, escapes, any-case names, spaces around commas, colons in
unquoted values for older servers) and rejects malformed headers with a message."""

from __future__ import annotations

import pytest

from hs.events.signing import SignatureVerifyError, SigningKey, verify_signed_json
from hs.federation.xmatrix import (
    XMatrixAuth,
    format_x_matrix,
    parse_x_matrix,
    sign_request,
    signed_request_json,
)

KEY = SigningKey.from_seed("k1", bytes(range(32)))


def test_signed_header_parses_and_verifies() -> None:
    body = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"x": 1}}]}
    uri = "/_matrix/federation/v1/send/txn1?a=b%20c"
    header = sign_request("origin.example", "dest.example:8448", KEY, "put", uri, body)
    assert header.startswith('X-Matrix origin="origin.example",destination="dest.example:8448",key="ed25519:k1",sig="')
    auth = parse_x_matrix(header)
    assert auth.origin == "origin.example"
    assert auth.destination == "dest.example:8448"
    assert auth.key_id == "ed25519:k1"
    signed = auth.signed_json("PUT", uri, "dest.example:8448", body)
    verify_signed_json(signed, "origin.example", auth.key_id, KEY.verify_key)

    # Any change to what was signed breaks the signature.
    for changed in (
        auth.signed_json("POST", uri, "dest.example:8448", body),
        auth.signed_json("PUT", uri + "&x=1", "dest.example:8448", body),
        auth.signed_json("PUT", uri, "dest.example:8448", {**body, "pdus": [{}]}),
        auth.signed_json("PUT", uri, "dest.example:8448", None),
        signed_request_json("PUT", uri, "origin.example", "other.example", body,
                            signatures={"origin.example": {auth.key_id: auth.sig}}),
    ):
        with pytest.raises(SignatureVerifyError):
            verify_signed_json(changed, "origin.example", auth.key_id, KEY.verify_key)


def test_request_without_body_omits_content() -> None:
    header = sign_request("a.example", "b.example", KEY, "GET", "/_matrix/key/v2/server")
    auth = parse_x_matrix(header)
    signed = auth.signed_json("GET", "/_matrix/key/v2/server", "b.example")
    assert "content" not in signed
    verify_signed_json(signed, "a.example", auth.key_id, KEY.verify_key)
    # An empty JSON object is a body, and is signed as one.
    header = sign_request("a.example", "b.example", KEY, "POST", "/x", {})
    auth = parse_x_matrix(header)
    verify_signed_json(auth.signed_json("POST", "/x", "b.example", {}), "a.example", auth.key_id, KEY.verify_key)
    with pytest.raises(SignatureVerifyError):
        verify_signed_json(auth.signed_json("POST", "/x", "b.example"), "a.example", auth.key_id, KEY.verify_key)


def test_missing_destination_is_checked_as_addressed_to_us() -> None:
    header = sign_request("a.example", "b.example", KEY, "GET", "/p")
    auth = parse_x_matrix(header)
    legacy = parse_x_matrix(f'X-Matrix origin=a.example,key="{auth.key_id}",sig="{auth.sig}"')
    assert legacy.destination is None
    verify_signed_json(legacy.signed_json("GET", "/p", "b.example"), "a.example", auth.key_id, KEY.verify_key)


@pytest.mark.parametrize(
    "header, expected",
    [
        ('X-Matrix origin="o.example",destination="d.example",key="ed25519:1",sig="ABC+/"',
         XMatrixAuth("o.example", "d.example", "ed25519:1", "ABC+/")),
        # unquoted values, colons allowed for older servers
        ("X-Matrix origin=o.example:8448,destination=d.example,key=ed25519:1,sig=ABC+/",
         XMatrixAuth("o.example:8448", "d.example", "ed25519:1", "ABC+/")),
        # any-case scheme and names, several spaces after the scheme, OWS around commas, any order
        ('x-matrix   SIG="s" ,\tKey="ed25519:a_b" , Origin="o" ,DESTINATION=d',
         XMatrixAuth("o", "d", "ed25519:a_b", "s")),
        # commas and escapes inside quotes; unknown parameters ignored
        (r'X-Matrix origin="o\"x\\y,z",key="ed25519:1",sig="s",extra="a,b=c",more=tok',
         XMatrixAuth('o"x\\y,z', None, "ed25519:1", "s")),
        # IPv6 literal server name, quoted
        ('X-Matrix origin="[::1]:8448",key="ed25519:1",sig="s"',
         XMatrixAuth("[::1]:8448", None, "ed25519:1", "s")),
    ],
)
def test_parse_forms(header: str, expected: XMatrixAuth) -> None:
    assert parse_x_matrix(header) == expected


@pytest.mark.parametrize(
    "header, message",
    [
        ('Bearer origin="o",key="k",sig="s"', "scheme"),
        ("X-Matrix", "no parameters"),
        ("X-Matrix   ", "no parameters"),
        ('X-Matrix key="ed25519:1",sig="s"', "lacks origin"),
        ('X-Matrix origin="o",sig="s"', "lacks key"),
        ('X-Matrix origin="o",key="ed25519:1"', "lacks sig"),
        ('X-Matrix origin="",key="ed25519:1",sig="s"', "lacks origin"),
        ('X-Matrix origin="o",destination="",key="ed25519:1",sig="s"', "empty destination"),
        ('X-Matrix origin="o,key="ed25519:1",sig="s"', "unexpected"),
        ('X-Matrix origin="o",key="ed25519:1",sig="s', "unterminated"),
        ('X-Matrix origin="o",key="ed25519:1",sig="s\\', "unterminated"),
        ('X-Matrix origin="o" key="ed25519:1",sig="s"', "unexpected"),
        ('X-Matrix origin,key="ed25519:1",sig="s"', "no '=value'"),
        ('X-Matrix origin=,key="ed25519:1",sig="s"', "empty or invalid value"),
        ('X-Matrix origin=o"x",key="ed25519:1",sig="s"', "unexpected"),
        ('X-Matrix origin=o\\x,key="ed25519:1",sig="s"', "unexpected"),
        ('X-Matrix origin="o",key="ed25519:1",sig="s",', "ends with a comma"),
        ('X-Matrix ="o",key="ed25519:1",sig="s"', "parameter name"),
        ('X-Matrix origin="o",origin="p",key="ed25519:1",sig="s"', "twice"),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(header: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_x_matrix(header)


def test_format_escapes_what_needs_it() -> None:
    auth = XMatrixAuth('we"ird\\', "d", "ed25519:1", "s")
    assert parse_x_matrix(format_x_matrix(auth)) == auth
    assert format_x_matrix(XMatrixAuth("o", None, "ed25519:1", "s")) == 'X-Matrix origin="o",key="ed25519:1",sig="s"'
