"""Fetching a URL a user named, without letting them reach into our own network (SSRF).

URL previews make this server fetch whatever URL a user pastes, so every fetch is checked:

- the URL against `url_preview_url_blacklist` (Synapse's shape: a list of dicts whose keys are URL
  components, `scheme`, `netloc`, `hostname`, `path`, `username`, ..., and whose values are glob
  patterns, or regular expressions when they start with `^`; an entry blocks a URL when all its
  components match);
- an IP literal in the URL against `url_preview_ip_range_blacklist` minus
  `url_preview_ip_range_whitelist`;
- a host name: every address it resolves to, and the name is refused if ANY of them is blocked (as
  Synapse does). The connection then goes to the addresses that were checked and no others: the
  check sits in the connector, where aiohttp turns a name into the addresses it connects to, so a
  DNS answer that changes between a check and the connection (DNS rebinding) cannot slip past it.

Redirects are followed here, not by aiohttp, at most `MAX_REDIRECTS` of them, and each new URL goes
through all of the checks again. Bodies are streamed to a file and capped at `max_spider_size`; each
fetch has a deadline. Errors are `FetchError`s whose kind tells the API what to answer (Synapse's
answers: 403 for a blacklisted URL or IP literal; 502 for a name that does not resolve or resolves to
a blocked address, which are not told apart so that previews cannot map the internal network; 502
for an upstream error, a body over the limit or a type that cannot be previewed).
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from hs.federation.ip_filter import IpRangeFilter, parse_ip

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

    from hs.config import HomeserverConfig

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 10.0  # seconds to set up a connection (DNS included)
READ_TIMEOUT = 20.0  # seconds without a byte from the server
FETCH_DEADLINE = 60.0  # seconds for a whole fetch, redirects included (a server trickling bytes)
CHUNK = 64 * 1024
# Previews are made for robots' eyes; no version, so as not to tell the world which build we run.
USER_AGENT = "hs (bot; URL previews)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The components `url_preview_url_blacklist` entries may name (those of urllib.parse.urlsplit).
URL_COMPONENTS = frozenset({"scheme", "netloc", "path", "query", "fragment", "username", "password",
                            "hostname", "port"})


# -- errors -------------------------------------------------------------------------------------------
class FetchError(Exception):
    """A fetch that failed or was refused; the subclass says which kind (the API's answer)."""


class UrlBlocked(FetchError):
    """A URL of the chain matches `url_preview_url_blacklist` (403)."""


class AddressBlocked(FetchError):
    """A URL names an IP literal that the IP range blacklist covers (403)."""


class ResolveFailed(FetchError):
    """A host name did not resolve, or resolved to a blocked address (502: deliberately the same
    answer for both)."""


class TooLarge(FetchError):
    """The body is larger than `max_spider_size` (502 M_TOO_LARGE)."""


class UpstreamError(FetchError):
    """The server could not be fetched, or answered with an error, a type we do not preview, or too
    many redirects (502)."""


# -- the URL blacklist --------------------------------------------------------------------------------
class UrlBlacklist:
    """`url_preview_url_blacklist`: an entry blocks a URL when each component it names matches."""

    def __init__(self, entries: Sequence[Mapping[str, str]]) -> None:
        self._entries: list[list[tuple[str, Callable[[str], bool]]]] = []
        for entry in entries:
            rules: list[tuple[str, Callable[[str], bool]]] = []
            for component, pattern in entry.items():
                if component not in URL_COMPONENTS:
                    raise ValueError(f"url_preview_url_blacklist: {component!r} is not a URL component "
                                     f"(known: {', '.join(sorted(URL_COMPONENTS))})")
                rules.append((component, _matcher(str(pattern))))
            self._entries.append(rules)

    def blocked(self, url: str) -> bool:
        """Whether any entry matches ``url`` (an entry with no components matches nothing)."""
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            return True  # not a URL we could check: not one to fetch either
        return any(rules and all(_matches(parts, name, match) for name, match in rules)
                   for rules in self._entries)


def _matcher(pattern: str) -> Callable[[str], bool]:
    """A regular expression when it starts with `^` (matched from the start, as Synapse's re.match),
    else a glob (case-sensitive, whatever the platform)."""
    if pattern.startswith("^"):
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"url_preview_url_blacklist: {pattern!r} is not a regular expression: {e}") from None
        return lambda value: regex.match(value) is not None
    return lambda value: fnmatchcase(value, pattern)


def _matches(parts: urllib.parse.SplitResult, name: str, match: Callable[[str], bool]) -> bool:
    value = _component(parts, name)
    return value is not None and match(value)


def _component(parts: urllib.parse.SplitResult, name: str) -> str | None:
    """One component as text; None when the URL has none (such an entry does not match). Host names
    are compared in lower case, so `EVIL.example` cannot dodge a `*.evil.example` entry."""
    try:
        value = getattr(parts, name)
    except ValueError:  # a port that is not a number
        return None
    if value is None:
        return None
    text = str(value)
    return text.lower() if name in ("netloc", "hostname") else text


# -- the transport ------------------------------------------------------------------------------------
class CheckingConnector(aiohttp.TCPConnector):
    """Connects only to addresses the filter allows: every address a name resolves to is checked, and
    the connection is made to those checked addresses (aiohttp connects to what `_resolve_host`
    returns), so a second, different DNS answer is never asked for."""

    def __init__(self, ip_filter: IpRangeFilter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ip_filter = ip_filter

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        if parse_ip(host) is not None:
            if not self._ip_filter.allowed(host):
                raise AddressBlocked("IP address blocked by IP blacklist entry")
            return await super()._resolve_host(host, port, traces=traces)
        try:
            results = await super()._resolve_host(host, port, traces=traces)
        except OSError as e:
            logger.info("URL preview: cannot resolve %s: %s", host, e)
            raise ResolveFailed("DNS resolution failure during URL preview generation") from None
        blocked = sorted({r["host"] for r in results if not self._ip_filter.allowed(r["host"])})
        if blocked or not results:
            logger.warning("URL preview: %s resolves to blocked address(es) %s", host, ", ".join(blocked))
            raise ResolveFailed("DNS resolution failure during URL preview generation")
        return results


@dataclass(frozen=True)
class Fetched:
    """A fetched body, written to `path`."""

    url: str  # the final URL, after redirects
    media_type: str  # lower case, without parameters ("" when the server named none)
    charset: str | None  # the Content-Type header's charset parameter
    length: int
    path: Path
    filename: str | None  # Content-Disposition's filename, if any


def parse_content_type(header: str | None) -> tuple[str, str | None]:
    """("text/html", "utf-8") from "text/html; charset=UTF-8"."""
    if not header:
        return "", None
    media_type, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'").lower()
    return media_type.strip().lower(), charset


def _filename(header: str | None) -> str | None:
    """Content-Disposition's filename (RFC 6266: `filename*=UTF-8''...` preferred)."""
    if not header:
        return None
    plain = None
    for param in header.split(";")[1:]:
        key, _, value = param.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "filename*" and "''" in value:
            charset, _, encoded = value.partition("''")
            try:
                return urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict") or None
            except (LookupError, UnicodeDecodeError):
                continue
        if key == "filename":
            plain = value.strip('"') or None
    return plain


class SafeFetcher:
    """Fetches http(s) URLs under the checks above. Each fetch uses its own short-lived session: there
    is nothing to close at shutdown, and no connection outlives the check that allowed it."""

    def __init__(self, *, ip_filter: IpRangeFilter, url_blacklist: UrlBlacklist, max_size: int,
                 accept_language: Sequence[str] = ("en",), resolver: AbstractResolver | None = None) -> None:
        self.ip_filter = ip_filter
        self.url_blacklist = url_blacklist
        self.max_size = max_size
        self.accept_language = ", ".join(accept_language)
        # Tests put a resolver of their own here (a name answering with a chosen address).
        self.resolver = resolver

    @classmethod
    def from_config(cls, config: HomeserverConfig) -> SafeFetcher:
        return cls(ip_filter=IpRangeFilter(config.url_preview_ip_range_blacklist or (),
                                           config.url_preview_ip_range_whitelist),
                   url_blacklist=UrlBlacklist(config.url_preview_url_blacklist),
                   max_size=config.max_spider_size, accept_language=config.url_preview_accept_language)

    def check_url(self, url: str) -> URL:
        """The URL parsed, if it may be fetched as far as can be told without DNS; else a FetchError."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            raise UpstreamError(f"Invalid URL: {url[:200]}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UpstreamError(f"Only http and https URLs can be previewed: {url[:200]}")
        if self.url_blacklist.blocked(url) or self.url_blacklist.blocked(str(parsed)):
            logger.info("URL preview: %s blocked by url_preview_url_blacklist", url)
            raise UrlBlocked("URL blocked by url pattern blacklist entry")
        if parse_ip(parsed.host) is not None and not self.ip_filter.allowed(parsed.host):
            logger.info("URL preview: %s blocked by url_preview_ip_range_blacklist", url)
            raise AddressBlocked("IP address blocked by IP blacklist entry")
        return parsed

    async def fetch(self, url: str, dest: Path, *, accept: Callable[[str], bool],
                    max_size: int | None = None) -> Fetched:
        """Fetch ``url`` into the file ``dest``, following redirects; ``accept(media_type)`` decides
        whether the final answer's type is wanted (checked before its body is read)."""
        limit = self.max_size if max_size is None else min(max_size, self.max_size)
        try:
            async with asyncio.timeout(FETCH_DEADLINE):
                return await self._fetch(url, dest, accept, limit)
        except TimeoutError:
            raise UpstreamError(f"Timed out fetching {url[:200]}") from None

    async def _fetch(self, url: str, dest: Path, accept: Callable[[str], bool], limit: int) -> Fetched:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        connector = CheckingConnector(self.ip_filter, resolver=self.resolver, limit=4, force_close=True)
        headers = {"User-Agent": USER_AGENT, "Accept-Language": self.accept_language,
                   # Asked plain: the cap counts the bytes read after decoding either way (aiohttp
                   # inflates in bounded steps), but a plain body costs no inflating at all.
                   "Accept-Encoding": "identity"}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                         headers=headers) as session:
            current = url
            for _hop in range(MAX_REDIRECTS + 1):
                target = self.check_url(current)
                try:
                    async with session.get(target, allow_redirects=False) as resp:
                        location = resp.headers.get("Location")
                        if resp.status in REDIRECT_STATUSES and location:
                            current = str(resp.url.join(URL(location)))
                            continue
                        return await self._read(resp, str(resp.url), dest, accept, limit)
                except FetchError:
                    raise
                except aiohttp.ClientConnectorDNSError:
                    raise ResolveFailed("DNS resolution failure during URL preview generation") from None
                except (aiohttp.ClientError, OSError, ValueError) as e:
                    logger.info("URL preview: fetching %s failed: %r", current, e)
                    raise UpstreamError(f"Failed to download content: {type(e).__name__}") from None
            raise UpstreamError(f"Too many redirects (more than {MAX_REDIRECTS})")

    async def _read(self, resp: aiohttp.ClientResponse, url: str, dest: Path, accept: Callable[[str], bool],
                    limit: int) -> Fetched:
        if resp.status < 200 or resp.status > 299:
            raise UpstreamError(f"Got error {resp.status}")
        media_type, charset = parse_content_type(resp.headers.get("Content-Type"))
        if not accept(media_type):
            raise UpstreamError(f"Requested file's content type not allowed for this operation: "
                                f"{media_type[:100] or '(none)'}")
        if resp.content_length is not None and resp.content_length > limit:
            raise TooLarge(f"Requested file is too large > {limit} bytes")
        length = 0
        with dest.open("wb") as out:
            async for chunk in resp.content.iter_chunked(CHUNK):
                length += len(chunk)
                if length > limit:
                    raise TooLarge(f"Requested file is too large > {limit} bytes")
                out.write(chunk)
        return Fetched(url=url, media_type=media_type, charset=charset, length=length, path=dest,
                       filename=_filename(resp.headers.get("Content-Disposition")))
