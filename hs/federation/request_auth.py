"""Who sent an inbound server-server request: its `Authorization: X-Matrix` header(s), checked.

The origin signed the request's method, target (path and query exactly as sent), both server names
and the JSON body; the signature is checked with the origin's key as the KeyRing finds it (fetched on
first use), valid now. A request may carry several X-Matrix headers (one per key of the origin): one
that checks out is enough, but they must all name the same origin. A header naming another
destination is refused (spec: 401). Servers that `federation_domain_whitelist` leaves out get 403
before any of their keys is fetched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from hs.api.base import get_hs
from hs.errors import MatrixError, forbidden, not_json, unauthorized
from hs.events.signing import SignatureVerifyError
from hs.federation.xmatrix import SCHEME, XMatrixAuth, parse_x_matrix

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

def x_matrix_headers(values: list[str], our_server_name: str) -> list[XMatrixAuth]:
    """The parsed X-Matrix Authorization headers; 401 when there are none, one is malformed, one names
    another destination, or they name different origins."""
    found: list[XMatrixAuth] = []
    for value in values:
        if value.strip().partition(" ")[0].lower() != SCHEME.lower():
            continue
        try:
            auth = parse_x_matrix(value)
        except ValueError as e:
            raise unauthorized(f"Malformed Authorization header: {e}") from None
        if auth.destination is not None and auth.destination != our_server_name:
            raise unauthorized(f"Request is addressed to {auth.destination!r}, not to this server")
        found.append(auth)
    if not found:
        raise unauthorized("Missing X-Matrix Authorization header")
    if len({a.origin for a in found}) > 1:
        raise unauthorized("X-Matrix Authorization headers name different origins")
    return found


async def authenticate(hs: HomeServer, method: str, uri: str, authorization: list[str], content: Any | None) -> str:
    """The origin of a request with these Authorization header values and parsed JSON body (None
    without one); raises 401 M_UNAUTHORIZED or, for a server we do not federate with, 403 M_FORBIDDEN."""
    try:
        headers = x_matrix_headers(authorization, hs.server_name)
    except MatrixError as e:
        logger.info("refused %s %s: %s", method, uri, e.msg)
        raise
    origin = headers[0].origin
    if not hs.config.federation_allowed(origin):
        logger.info("refused %s %s from %s: not in federation_domain_whitelist", method, uri, origin)
        raise forbidden(f"Federation with {origin} is not allowed")
    now = hs.keyring.clock()
    problems = []
    for auth in headers:
        signed = auth.signed_json(method, uri, hs.server_name, content)
        try:
            await hs.keyring.verify_json(origin, signed, now)
        except SignatureVerifyError as e:
            problems.append(str(e))
            continue
        return origin
    logger.info("refused %s %s from %s: %s", method, uri, origin, "; ".join(problems))
    raise unauthorized(f"Invalid X-Matrix signature: {'; '.join(problems)}")


async def request_content(request: web.Request) -> Any | None:
    """The parsed JSON body the origin signed (None when there is no body); 400 M_NOT_JSON if not JSON."""
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise not_json("Content not JSON.") from None


async def authenticate_origin(request: web.Request) -> str:
    """For federation handlers: the authenticated origin server of `request` (401/403 otherwise).
    The handler can still read the body (`request.read()` returns it again)."""
    content = await request_content(request)
    return await authenticate(get_hs(request), request.method, request.raw_path,
                              request.headers.getall("Authorization", []), content)
