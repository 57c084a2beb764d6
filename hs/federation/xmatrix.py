"""The ``Authorization: X-Matrix ...`` header that authenticates server-to-server requests.

The sender signs a JSON object made of the request's method, target (path and query as sent), both
server names and the parsed JSON body; the header carries the signature. The receiver rebuilds the
same object from what it received (`signed_request_json`) and checks the signature against the
origin's key with `hs.events.signing.verify_signed_json`. Server names are the ones before any
delegation: the destination is the name the request was addressed to, not the host connected to.

The header grammar is RFC 9110's auth-param list: parameter names are case-insensitive, values are
tokens or quoted strings with backslash escapes, and (for older servers) unquoted values may hold
colons and base64. Unknown parameters are ignored.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from hs.events.signing import JsonDict, SigningKey, sign_json

SCHEME = "X-Matrix"

# An unquoted value ends at whitespace or a comma. RFC 9110 tokens are narrower, but older servers
# send colons (server names, key IDs) and base64 ('/', '+') unquoted, and Synapse accepts them.
_NOT_IN_UNQUOTED = frozenset(' \t,"\\')
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_OWS = " \t"


@dataclass(frozen=True)
class XMatrixAuth:
    """The parameters of one X-Matrix header. ``destination`` is None when an older server left it out."""

    origin: str
    destination: str | None
    key_id: str
    sig: str

    def signed_json(self, method: str, uri: str, our_server_name: str, content: Any | None = None) -> JsonDict:
        """The object the origin should have signed for a request received by ``our_server_name``.

        A request without ``destination`` is checked as if addressed to us (the signature then only
        holds if the sender signed our name, as every current server does)."""
        return signed_request_json(method, uri, self.origin, self.destination or our_server_name, content,
                                   signatures={self.origin: {self.key_id: self.sig}})


def signed_request_json(
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: Any | None = None,
    signatures: dict[str, dict[str, str]] | None = None,
) -> JsonDict:
    """The JSON object a request's signature covers (with ``signatures`` attached when given).

    ``content`` is the parsed JSON body, or None for a request without a body (then ``content`` is
    absent from the object, not null)."""
    obj: JsonDict = {"method": method.upper(), "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    if signatures is not None:
        obj["signatures"] = {name: dict(sigs) for name, sigs in signatures.items()}
    return obj


def sign_request(
    origin: str, destination: str, key: SigningKey, method: str, uri: str, content: Any | None = None
) -> str:
    """The value of the ``Authorization`` header for a request ``origin`` sends to ``destination``."""
    signed = sign_json(signed_request_json(method, uri, origin, destination, content), origin, key)
    sig = signed["signatures"][origin][key.key_id]
    return format_x_matrix(XMatrixAuth(origin, destination, key.key_id, sig))


def format_x_matrix(auth: XMatrixAuth) -> str:
    """Render the header value the way older servers expect: one space, lower-case names, no spaces
    around commas, every value quoted."""
    params = [("origin", auth.origin)]
    if auth.destination is not None:
        params.append(("destination", auth.destination))
    params += [("key", auth.key_id), ("sig", auth.sig)]
    return f"{SCHEME} " + ",".join(f'{name}="{_quote(value)}"' for name, value in params)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def parse_x_matrix(header: str) -> XMatrixAuth:
    """Parse an ``Authorization`` header value; raises ValueError saying what is wrong with it."""
    scheme, sep, rest = header.strip(_OWS).partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise ValueError(f"authorization scheme is {scheme!r}, expected {SCHEME!r}")
    if not sep:
        raise ValueError("X-Matrix header has no parameters")
    params = _parse_params(rest)
    missing = [name for name in ("origin", "key", "sig") if not params.get(name)]
    if missing:
        raise ValueError(f"X-Matrix header lacks {', '.join(missing)}")
    destination = params.get("destination")
    if destination == "":
        raise ValueError("X-Matrix header has an empty destination")
    return XMatrixAuth(params["origin"], destination, params["key"], params["sig"])


def _parse_params(text: str) -> dict[str, str]:
    """Parse ``name=value, name="quoted \\"value\\""`` into a dict with lower-case names."""
    params: dict[str, str] = {}
    i, n = 0, len(text)

    def skip_ows(j: int) -> int:
        while j < n and text[j] in _OWS:
            j += 1
        return j

    i = skip_ows(i)
    if i == n:
        raise ValueError("X-Matrix header has no parameters")
    while True:
        start = i
        while i < n and text[i] in _NAME_CHARS:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise ValueError(f"X-Matrix header: expected a parameter name at position {start} of {text!r}")
        i = skip_ows(i)
        if i >= n or text[i] != "=":
            raise ValueError(f"X-Matrix header: parameter {name!r} has no '=value'")
        i = skip_ows(i + 1)
        if i < n and text[i] == '"':
            value, i = _parse_quoted(text, i, name)
        else:
            start = i
            while i < n and text[i] not in _NOT_IN_UNQUOTED:
                i += 1
            value = text[start:i]
            if not value:
                raise ValueError(f"X-Matrix header: parameter {name!r} has an empty or invalid value")
        if name in params:
            raise ValueError(f"X-Matrix header: parameter {name!r} is given twice")
        params[name] = value
        i = skip_ows(i)
        if i == n:
            return params
        if text[i] != ",":
            raise ValueError(f"X-Matrix header: unexpected {text[i]!r} after parameter {name!r}")
        i = skip_ows(i + 1)
        if i == n:
            raise ValueError("X-Matrix header ends with a comma")


def _parse_quoted(text: str, i: int, name: str) -> tuple[str, int]:
    """Read a quoted string starting at the opening quote ``text[i]``; returns (value, index after)."""
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 == len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    raise ValueError(f"X-Matrix header: unterminated quoted value for {name!r}")
