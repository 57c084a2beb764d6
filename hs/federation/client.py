"""Outbound Server-Server API requests: find the destination, connect safely, sign, and read the answer.

One aiohttp session is shared by every request, so connections to a destination are kept alive and
reused. Every connection goes through a connector that checks each address the host resolved to
(or the IP literal) against `ip_range_blacklist` / `ip_range_whitelist` before any socket is
connected: a destination, its `.well-known` or its DNS can name any address, and must not get us to
call into our own network. TLS is verified against the system CAs plus `federation_custom_ca_list`,
for the name server discovery says the certificate must carry.

Retries and per-destination backoff are the callers' business (the federation sender's queues).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp.abc import ResolveResult
from yarl import URL

from hs.events.canonical_json import json_loads
from hs.events.signing import SigningKey
from hs.federation.discovery import (
    WELL_KNOWN_MAX_SIZE,
    DiscoveryError,
    ResolvedServer,
    ServerResolver,
    SrvLookup,
    WellKnownFetchError,
    WellKnownResponse,
    parse_server_name,
)
from hs.federation.ip_filter import IpRangeFilter
from hs.federation.xmatrix import sign_request
from hs.util import json_dumps

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

    from hs.config import HomeserverConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE = 10 * 1024 * 1024  # bytes; callers expecting more (e.g. send_join) pass their own
WELL_KNOWN_TIMEOUT = 30.0  # seconds for one .well-known hop (the request's own timeout bounds it too)
KEEPALIVE_TIMEOUT = 60.0  # seconds an idle connection to a destination is kept for reuse
CONNECTION_LIMIT = 200  # open connections over all destinations
ERROR_BODY_EXCERPT = 200  # characters of a non-Matrix error body quoted in the exception
STREAM_READ_TIMEOUT = 60.0  # seconds without a byte of a streamed body (media) before giving up

_TLS_VERSIONS = {
    "1": ssl.TLSVersion.TLSv1, "1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3,
}


def _user_agent() -> str:
    try:
        version = importlib.metadata.version("hs")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"hs/{version}"


USER_AGENT = _user_agent()


# -- errors -------------------------------------------------------------------------------------------
class FederationError(Exception):
    """A request to another server failed. ``status``/``errcode`` are set when the server answered;
    ``body`` is its parsed JSON answer, when it gave one."""

    def __init__(
        self,
        destination: str,
        error: str,
        *,
        status: int | None = None,
        errcode: str | None = None,
        body: Any = None,
    ) -> None:
        self.destination = destination
        self.error = error
        self.status = status
        self.errcode = errcode
        self.body = body
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [f"{self.destination}:"]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.errcode is not None:
            parts.append(self.errcode)
        return " ".join(parts) + f" {self.error}"


class FederationDenied(FederationError):
    """Our own policy forbids the request: the destination is not in `federation_domain_whitelist`, or
    it resolves to an address the IP range blacklist covers. Nothing was sent."""


class FederationUnreachable(FederationError):
    """The destination could not be reached: bad DNS, connection refused, TLS failure, or timeout."""


class _BlockedAddress(Exception):
    """Raised inside the connector (not an OSError, so aiohttp lets it through unwrapped)."""

    def __init__(self, host: str, addresses: Sequence[str]) -> None:
        super().__init__(f"{host} resolves to forbidden address(es) {', '.join(addresses)}")


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")


# -- transport pieces ---------------------------------------------------------------------------------
class FilteringConnector(aiohttp.TCPConnector):
    """A TCP connector that refuses to connect to addresses the IP range filter forbids.

    The check sits where aiohttp turns a host (name or IP literal) into the addresses it will
    connect to, so it also covers redirects and DNS answers. If any address of a name is forbidden
    the whole name is refused, as Synapse does (a name mixing public and private addresses is
    suspicious, and which one gets used is not ours to choose)."""

    def __init__(self, ip_filter: IpRangeFilter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ip_filter = ip_filter

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces=traces)
        forbidden = sorted({r["host"] for r in results if not self._ip_filter.allowed(r["host"])})
        if forbidden:
            raise _BlockedAddress(host, forbidden)
        return results


def build_ssl_context(config: HomeserverConfig) -> ssl.SSLContext:
    """System CAs plus `federation_custom_ca_list`; `federation_verify_certificates: false` turns
    checking off. `federation_client_minimum_tls_version` can raise the floor above Python's default
    (TLS 1.2), not lower it: older versions are refused by current OpenSSL builds anyway."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for path in config.federation_custom_ca_list:
        ctx.load_verify_locations(cafile=str(config.resolve_path(path)))
    if not config.federation_verify_certificates:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    minimum = _TLS_VERSIONS[config.federation_client_minimum_tls_version]
    if minimum > ctx.minimum_version:
        ctx.minimum_version = minimum
    return ctx


def encode_query(query: Mapping[str, str | list[str]]) -> str:
    """``a=1&b=x%20y``; a list value repeats its key. Everything but unreserved characters is escaped,
    so the string signed is exactly the one sent."""
    pairs: list[str] = []
    for key, value in query.items():
        for item in [value] if isinstance(value, str) else value:
            pairs.append(f"{quote(key, safe='')}={quote(item, safe='')}")
    return "&".join(pairs)


async def read_body_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or `_BodyTooLarge` as soon as it is known to exceed ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise _BodyTooLarge(limit)
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge(limit)
    return bytes(body)


def _describe(e: BaseException) -> str:
    """A readable reason; aiohttp's connector errors otherwise say e.g. "ssl:default [None]"."""
    if isinstance(e, aiohttp.ClientConnectorError):
        cause = e.os_error
        reason = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        return f"cannot connect to {e.host}:{e.port}: {reason}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the client ---------------------------------------------------------------------------------------
class FederationClient:
    """Sends requests to other homeservers as ``config.server_name``.

    ``signing_key`` is called per request, so a key loaded after construction is picked up. The
    session is made on first use (inside the running loop) and closed by `close`."""

    def __init__(
        self,
        config: HomeserverConfig,
        signing_key: Callable[[], SigningKey],
        *,
        srv_lookup: SrvLookup | None = None,
    ) -> None:
        self._config = config
        self._signing_key = signing_key
        self._ip_filter = IpRangeFilter(config.outbound_ip_blacklist, config.ip_range_whitelist)
        self.resolver = ServerResolver(self.fetch_well_known_hop, srv_lookup)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _request_uri(self, destination: str, path: str, query: Mapping[str, str | list[str]] | None) -> str:
        """The request's path and query, once the destination is one this server may ask."""
        if not path.startswith("/"):
            raise ValueError(f"federation path must start with '/': {path!r}")
        try:
            parse_server_name(destination)
        except DiscoveryError as e:
            raise FederationError(destination, str(e)) from None
        if not self._config.federation_allowed(destination):
            raise FederationDenied(destination, "not in federation_domain_whitelist")
        return f"{path}?{encode_query(query)}" if query else path

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self, destination: str) -> aiohttp.ClientSession:
        if self._closed:
            raise FederationUnreachable(destination, "the federation client is closed")
        if self._session is None:
            try:
                tls = build_ssl_context(self._config)
            except OSError as e:  # ssl.SSLError is one too: a CA file missing or not PEM
                raise FederationError(destination, f"federation_custom_ca_list unusable: {e}") from None
            connector = FilteringConnector(
                self._ip_filter,
                ssl=tls,
                limit=CONNECTION_LIMIT,
                keepalive_timeout=KEEPALIVE_TIMEOUT,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    # -- public requests ------------------------------------------------------------------------------
    async def get_json(
        self,
        destination: str,
        path: str,
        query: Mapping[str, str | list[str]] | None = None,
        *,
        timeout: float = 60.0,
        signed: bool = True,
        max_size: int = DEFAULT_MAX_RESPONSE,
    ) -> Any:
        """GET ``path`` (already percent-encoded) from ``destination``; returns the parsed JSON."""
        return await self._request("GET", destination, path, query, None, timeout=timeout, signed=signed,
                                   max_size=max_size)

    async def put_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Mapping[str, str | list[str]] | None = None,
        *,
        timeout: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
    ) -> Any:
        """PUT a JSON body (signed, as every request with a body must be); returns the parsed JSON."""
        return await self._request("PUT", destination, path, query, body, timeout=timeout, signed=True,
                                   max_size=max_size)

    async def post_json(
        self,
        destination: str,
        path: str,
        body: Any,
        query: Mapping[str, str | list[str]] | None = None,
        *,
        timeout: float = 60.0,
        max_size: int = DEFAULT_MAX_RESPONSE,
    ) -> Any:
        """POST a JSON body (signed); returns the parsed JSON."""
        return await self._request("POST", destination, path, query, body, timeout=timeout, signed=True,
                                   max_size=max_size)

    @asynccontextmanager
    async def stream_get(
        self,
        destination: str,
        path: str,
        query: Mapping[str, str | list[str]] | None = None,
        *,
        timeout: float = 60.0,
        signed: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET ``path`` from ``destination`` and hand over the response as soon as its headers are in
        (within ``timeout``), whatever its status, for a body too large to hold (media). The caller
        reads the body: a stall of `STREAM_READ_TIMEOUT` raises there, as aiohttp errors do. Without
        ``signed`` no X-Matrix header is sent (the legacy media download)."""
        uri = self._request_uri(destination, path, query)
        headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
        if signed:
            headers["Authorization"] = sign_request(
                self._config.server_name, destination, self._signing_key(), "GET", uri, None)
        what = f"GET {path}"
        try:
            async with asyncio.timeout(timeout):
                try:
                    resolved = await self.resolver.resolve(destination)
                except DiscoveryError as e:
                    raise FederationUnreachable(destination, str(e)) from None
                url = URL(f"https://{_url_host(resolved.host_to_connect)}:{resolved.port}{uri}", encoded=True)
                response = await self._open_stream(
                    destination, what, url, {**headers, "Host": resolved.host_header}, resolved.tls_server_name)
        except TimeoutError:
            raise FederationUnreachable(destination, f"{what} timed out after {timeout:g} s") from None
        try:
            yield response
        finally:
            response.close()

    @asynccontextmanager
    async def stream_get_url(self, url: str, *, timeout: float = 60.0) -> AsyncIterator[aiohttp.ClientResponse]:
        """A plain GET (no X-Matrix, no server discovery) of a URL another server named, such as the
        `Location` of a federation media answer, through the same IP filter and TLS settings as
        federation; redirects are not followed (the caller decides). Otherwise as `stream_get`."""
        parsed = URL(url)
        host = parsed.host or url
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise FederationError(host, f"not an http(s) URL: {url[:200]}")
        what = f"GET {parsed.scheme}://{parsed.raw_authority}{parsed.raw_path}"[:200]
        try:
            async with asyncio.timeout(timeout):
                response = await self._open_stream(host, what, parsed, {"Accept": "*/*",
                                                                        "Accept-Encoding": "identity"}, None)
        except TimeoutError:
            raise FederationUnreachable(host, f"{what} timed out after {timeout:g} s") from None
        try:
            yield response
        finally:
            response.close()

    async def _open_stream(self, destination: str, what: str, url: URL, headers: dict[str, str],
                           server_hostname: str | None) -> aiohttp.ClientResponse:
        session = self._get_session(destination)
        extra: dict[str, Any] = {} if server_hostname is None else {"server_hostname": server_hostname}
        try:
            return await session.get(
                url, headers=headers, allow_redirects=False, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=STREAM_READ_TIMEOUT), **extra)
        except _BlockedAddress as e:
            raise FederationDenied(destination, str(e)) from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as e:
            raise FederationUnreachable(destination, f"{what}: TLS failure: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            if isinstance(e, TimeoutError):
                raise
            raise FederationUnreachable(destination, f"{what}: {_describe(e)}") from None

    # -- internals ------------------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        destination: str,
        path: str,
        query: Mapping[str, str | list[str]] | None,
        body: Any,
        *,
        timeout: float,
        signed: bool,
        max_size: int,
    ) -> Any:
        uri = self._request_uri(destination, path, query)
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json_dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if signed:
            headers["Authorization"] = sign_request(
                self._config.server_name, destination, self._signing_key(), method, uri, body)
        try:
            async with asyncio.timeout(timeout):
                try:
                    resolved = await self.resolver.resolve(destination)
                except DiscoveryError as e:
                    raise FederationUnreachable(destination, str(e)) from None
                return await self._send(method, destination, resolved, uri, headers, data, max_size)
        except TimeoutError:
            raise FederationUnreachable(destination, f"{method} {path} timed out after {timeout:g} s") from None

    async def _send(
        self,
        method: str,
        destination: str,
        resolved: ResolvedServer,
        uri: str,
        headers: dict[str, str],
        data: bytes | None,
        max_size: int,
    ) -> Any:
        session = self._get_session(destination)
        url = URL(f"https://{_url_host(resolved.host_to_connect)}:{resolved.port}{uri}", encoded=True)
        what = f"{method} {uri.split('?', 1)[0]}"
        try:
            async with session.request(
                method, url, headers={**headers, "Host": resolved.host_header}, data=data,
                server_hostname=resolved.tls_server_name, allow_redirects=False,
            ) as response:
                try:
                    raw = await read_body_capped(response, max_size)
                except _BodyTooLarge as e:
                    response.close()
                    raise FederationError(destination, f"{what}: {e}", status=response.status) from None
                status, reason = response.status, response.reason or ""
        except _BlockedAddress as e:
            raise FederationDenied(destination, str(e)) from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as e:
            raise FederationUnreachable(destination, f"{what}: TLS failure: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            if isinstance(e, TimeoutError):
                raise
            raise FederationUnreachable(destination, f"{what}: {_describe(e)}") from None
        return self._parse_response(destination, what, status, reason, raw)

    @staticmethod
    def _parse_response(destination: str, what: str, status: int, reason: str, raw: bytes) -> Any:
        try:
            parsed: Any = json_loads(raw)
            is_json = True
        except ValueError:
            parsed, is_json = None, False
        if 200 <= status < 300:
            if not is_json:
                raise FederationError(destination, f"{what}: the response is not JSON", status=status)
            return parsed
        errcode: str | None = None
        error = f"{what}: {reason}".rstrip(": ")
        if isinstance(parsed, dict):
            if isinstance(parsed.get("errcode"), str):
                errcode = parsed["errcode"]
            if isinstance(parsed.get("error"), str):
                error = f"{what}: {parsed['error']}"
        elif not is_json and raw:
            error += f": {raw[:ERROR_BODY_EXCERPT].decode('utf-8', 'replace')!r}"
        raise FederationError(destination, error, status=status, errcode=errcode, body=parsed)

    async def fetch_well_known_hop(self, url: str) -> WellKnownResponse:
        """One hop of a `.well-known` lookup (discovery follows redirects), through the same
        connector, TLS settings and IP filter as federation requests."""
        host = URL(url).host or url
        try:
            session = self._get_session(host)
        except FederationError as e:
            raise WellKnownFetchError(str(e)) from None
        try:
            async with asyncio.timeout(WELL_KNOWN_TIMEOUT):
                async with session.get(url, allow_redirects=False,
                                       headers={"Accept": "application/json"}) as response:
                    body = await read_body_capped(response, WELL_KNOWN_MAX_SIZE)
                    return WellKnownResponse(response.status, dict(response.headers), body)
        except _BodyTooLarge as e:
            raise WellKnownFetchError(str(e), temporary=False) from None
        except _BlockedAddress as e:
            raise WellKnownFetchError(str(e), temporary=False) from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise WellKnownFetchError(f"{type(e).__name__}: {e}") from None
