"""Media of other servers, fetched over federation and cached in `remote_media_cache`.

A download of `mxc://other/id` is answered from the cache when the row exists. Otherwise the file
is fetched once, however many requests ask for it at the same time: the first starts a fetch task
and every request waits on that task (shielded, so a client going away does not cut the download
short for the others; a failed fetch is forgotten, so a later request tries again).

The fetch asks the authenticated endpoint, `GET /_matrix/federation/v1/media/download/{mediaId}`
(X-Matrix signed, spec v1.11), and reads its multipart/mixed answer as it arrives: the JSON part,
then the media part, whose bytes are streamed into a temporary file of the local store (capped at
`max_upload_size`: 502 M_TOO_LARGE beyond, as the spec has it for content too large to proxy), or
whose `Location` header names where the bytes are (followed with plain GETs through the same IP
filter as federation, at most `MAX_REDIRECTS` hops). A server that does not know the endpoint
(404/405 M_UNRECOGNIZED, or an older server's 400 M_UNRECOGNIZED: Synapse's test) is asked on the
legacy unauthenticated `/_matrix/media/v3/download/...`; its media is cached with
`authenticated = False`, media of the new endpoint with `enable_authenticated_media` (as Synapse).

Bytes fetched for a client address count against a token bucket (`remote_media_download_burst_count`
bytes, refilled at `remote_media_download_per_second`; `ByteRateLimiter`): a client without room
gets 429 M_LIMIT_EXCEEDED before anything is fetched. `prevent_media_downloads_from` servers' media
is 404 even when cached, and servers `federation_domain_whitelist` leaves out are 403 (as Synapse).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from hs.db.stores.media import MediaInfo
from hs.errors import (
    NOT_YET_UPLOADED,
    TOO_LARGE,
    UNRECOGNIZED,
    MatrixError,
    forbidden,
    limit_exceeded,
    not_found,
    not_yet_uploaded,
    too_large,
    unreachable,
)
from hs.federation.client import FederationError
from hs.media.multipart import (
    MultipartError,
    MultipartReader,
    disposition_filename,
    parse_boundary,
    read_metadata,
)
from hs.media.storage import content_key
from hs.util import LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# How long a request waits for the remote to start answering at least, and at most (its `timeout_ms`
# in between; the remote itself waits up to that long for media not uploaded yet).
MIN_WAIT_MS = 1_000
MAX_WAIT_MS = 120_000
ANSWER_GRACE_S = 10.0  # on top of timeout_ms, for the remote's answer to start (discovery, TLS...)
FETCH_DEADLINE_S = 600.0  # a whole fetch, redirects and body included
ERROR_BODY_LIMIT = 64 * 1024
HEADROOM = 1024 * 1024  # bytes of a client's bucket a download needs to start (Synapse's)
DEFAULT_MEDIA_TYPE = "application/octet-stream"


class _UnknownEndpoint(Exception):
    """The remote does not serve the federation media endpoint (an older server)."""


@dataclass
class _Fetch:
    """One fetch in progress, shared by the requests for the same media."""

    answered: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[MediaInfo] | None = None


@dataclass(frozen=True)
class _Received:
    temp: Path
    sha256: str
    length: int
    media_type: str
    filename: str | None


class ByteRateLimiter:
    """A token bucket per key, counted in bytes: `burst` of them, refilled at `per_second`.

    As Synapse's: a download starts only if the client has `HEADROOM` bytes of room (or the whole
    bucket, if smaller); a body whose length is announced is counted before it is read, and refused
    if it does not fit; one of unknown length (a multipart part) is counted as it arrives and not cut
    off, so it is the next download that is refused."""

    def __init__(self, burst: int, per_second: int) -> None:
        self.burst = burst
        self.per_second = per_second
        self._used: LruCache[str, tuple[float, float]] = LruCache(100_000, name="media.remote.self._used")  # key -> (bytes used, when)

    def _current(self, key: str) -> tuple[float, float]:
        now = time.monotonic()
        used, last = self._used.get(key) or (0.0, now)
        return max(0.0, used - (now - last) * self.per_second), now

    def _refuse(self, wanted: float) -> MatrixError:
        over = wanted - self.burst
        wait = over / self.per_second if self.per_second > 0 else 3600.0
        return limit_exceeded(max(1, int(math.ceil(wait * 1000))))

    def check(self, key: str | None) -> None:
        """429 M_LIMIT_EXCEEDED unless `key` has room to start a download."""
        if key is None:
            return
        used, _ = self._current(key)
        need = min(HEADROOM, self.burst)
        if used + need > self.burst:
            raise self._refuse(used + need)

    def take(self, key: str | None, n: int) -> None:
        """Count `n` bytes about to be fetched; 429 (and nothing counted) if they do not fit."""
        if key is None:
            return
        used, now = self._current(key)
        if used + n > self.burst:
            raise self._refuse(used + n)
        self._used.set(key, (used + n, now))

    def record(self, key: str | None, n: int) -> None:
        """Count `n` bytes fetched (never refused: they are here)."""
        if key is None:
            return
        used, now = self._current(key)
        self._used.set(key, (used + n, now))


class RemoteMedia:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.config = hs.config
        self._fetches: dict[tuple[str, str], _Fetch] = {}
        self.limiter = ByteRateLimiter(self.config.remote_media_download_burst_count,
                                       self.config.remote_media_download_per_second)

    async def get(self, server_name: str, media_id: str, *, legacy: bool, timeout_ms: int,
                  client_address: str | None) -> MediaInfo:
        """The cached copy of another server's media, fetched first if needed. A legacy
        (unauthenticated) request fetches nothing while `enable_authenticated_media` is on: what it
        would fetch is authenticated media, which the legacy endpoints do not serve."""
        if server_name in self.config.prevent_media_downloads_from:
            raise not_found("Not found")  # even when cached: Synapse's trust & safety switch
        if not self.config.federation_allowed(server_name):
            raise forbidden(f"Federation denied with {server_name}.")
        store = self.hs.media.store
        info = await store.get_remote(server_name, media_id)
        if info is not None and info.uploaded:
            return info
        if legacy and self.config.enable_authenticated_media:
            raise not_found("Not found")
        self.limiter.check(client_address)
        key = (server_name, media_id)
        fetch = self._fetches.get(key)
        if fetch is None:
            fetch = _Fetch()
            fetch.task = asyncio.get_running_loop().create_task(
                self._fetch(server_name, media_id, timeout_ms, client_address, fetch.answered),
                name=f"remote media {server_name}/{media_id}")
            self._fetches[key] = fetch
            fetch.task.add_done_callback(lambda task: self._done(key, fetch, task))
        return await self._wait(fetch, timeout_ms)

    def _done(self, key: tuple[str, str], fetch: _Fetch, task: asyncio.Task[MediaInfo]) -> None:
        if self._fetches.get(key) is fetch:
            del self._fetches[key]
        if not task.cancelled() and task.exception() is not None:
            # (Retrieved here so that a fetch every waiter gave up on is not reported as unretrieved.)
            logger.debug("remote media %s/%s: %s", key[0], key[1], task.exception())

    @staticmethod
    async def _wait(fetch: _Fetch, timeout_ms: int) -> MediaInfo:
        """The fetch's result; 504 M_NOT_YET_UPLOADED if the remote has not started to answer within
        `timeout_ms` (the fetch goes on, and a later request may find it done)."""
        assert fetch.task is not None
        wait_s = min(max(timeout_ms, MIN_WAIT_MS), MAX_WAIT_MS) / 1000
        answered = asyncio.ensure_future(fetch.answered.wait())
        try:
            await asyncio.wait([fetch.task, answered], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
        if not fetch.task.done() and not fetch.answered.is_set():
            raise not_yet_uploaded("The remote server did not start sending the media in time")
        return await asyncio.shield(fetch.task)

    # -- one fetch -----------------------------------------------------------------------------------
    async def _fetch(self, server_name: str, media_id: str, timeout_ms: int, client_address: str | None,
                     answered: asyncio.Event) -> MediaInfo:
        # A request that missed the cache just before the previous fetch of this media finished (and
        # left the table of fetches) starts a new one: the row is there by now.
        cached = await self.hs.media.store.get_remote(server_name, media_id)
        if cached is not None and cached.uploaded:
            return cached
        timeout_ms = min(max(timeout_ms, 0), MAX_WAIT_MS)
        try:
            async with asyncio.timeout(FETCH_DEADLINE_S):
                try:
                    got = await self._federation_download(server_name, media_id, timeout_ms, client_address,
                                                          answered)
                    authenticated = self.config.enable_authenticated_media
                except _UnknownEndpoint:
                    logger.info("%s has no federation media endpoint: fetching %s the legacy way", server_name,
                                media_id)
                    got = await self._legacy_download(server_name, media_id, timeout_ms, client_address,
                                                      answered)
                    authenticated = False
        except TimeoutError:
            raise unreachable(f"Timed out fetching media from {server_name}") from None
        return await self._keep(server_name, media_id, got, authenticated)

    async def _keep(self, server_name: str, media_id: str, got: _Received, authenticated: bool) -> MediaInfo:
        media = self.hs.media
        try:
            await media.files.adopt(content_key(got.sha256), got.temp, remote=True)
        finally:
            got.temp.unlink(missing_ok=True)
        await media.store.add_remote(server_name, media_id, got.media_type, got.filename, got.length, got.sha256,
                                     authenticated)
        await media.store.inherit_quarantine(got.sha256, media_id, server_name)
        try:
            await media.thumbnails.on_stored(got.sha256, got.media_type, remote=True)
        except Exception:
            # The media is served without thumbnails; a thumbnail request reports the problem.
            logger.exception("thumbnailing remote media %s/%s failed", server_name, media_id)
        info = await media.store.get_remote(server_name, media_id)  # (another process may have won)
        assert info is not None
        logger.info("fetched %s/%s: %d bytes of %s", server_name, media_id, got.length, got.media_type)
        return info

    @staticmethod
    def _answer_timeout(timeout_ms: int) -> float:
        return timeout_ms / 1000 + ANSWER_GRACE_S

    async def _federation_download(self, server_name: str, media_id: str, timeout_ms: int,
                                   client_address: str | None, answered: asyncio.Event) -> _Received:
        path = f"/_matrix/federation/v1/media/download/{quote(media_id, safe='')}"
        location: str | None = None
        try:
            async with self.hs.federation_client.stream_get(
                    server_name, path, {"timeout_ms": str(timeout_ms)},
                    timeout=self._answer_timeout(timeout_ms)) as response:
                if response.status != 200:
                    body = await _error_body(response)
                    if _unknown_endpoint(response.status, body):
                        raise _UnknownEndpoint()
                    raise _remote_error(server_name, response.status, body)
                answered.set()
                reader = MultipartReader(response.content.iter_chunked(CHUNK),
                                         parse_boundary(response.headers.get("Content-Type")))
                _, headers = await read_metadata(reader)
                location = headers.get("location")
                if not location:
                    got = await self._receive(reader.body(), client_address, headers.get("content-type"),
                                              headers.get("content-disposition"))
                    try:
                        if await reader.next_part() is not None:
                            raise MultipartError("more than two parts")
                    except BaseException:
                        got.temp.unlink(missing_ok=True)
                        raise
                    return got
        except MultipartError as e:
            logger.info("media %s/%s: bad multipart answer: %s", server_name, media_id, e)
            raise unreachable(f"{server_name} sent an invalid multipart answer: {e}") from None
        except FederationError as e:
            logger.info("media %s/%s: %s", server_name, media_id, e)
            raise unreachable(f"Failed to fetch remote media from {server_name}") from None
        except (aiohttp.ClientError, OSError) as e:
            logger.info("media %s/%s: reading the answer failed: %r", server_name, media_id, e)
            raise unreachable(f"Failed to fetch remote media from {server_name}") from None
        return await self._follow(server_name, str(response.url.join(URL(location))), client_address)

    async def _legacy_download(self, server_name: str, media_id: str, timeout_ms: int,
                               client_address: str | None, answered: asyncio.Event) -> _Received:
        path = f"/_matrix/media/v3/download/{quote(server_name, safe='')}/{quote(media_id, safe='')}"
        query = {"allow_remote": "false", "allow_redirect": "true", "timeout_ms": str(timeout_ms)}
        location: str | None = None
        try:
            async with self.hs.federation_client.stream_get(
                    server_name, path, query, signed=False, timeout=self._answer_timeout(timeout_ms)) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location:
                    location = str(response.url.join(URL(location)))
                else:
                    if response.status != 200:
                        raise _remote_error(server_name, response.status, await _error_body(response))
                    answered.set()
                    return await self._receive_response(response, client_address)
        except FederationError as e:
            logger.info("media %s/%s (legacy): %s", server_name, media_id, e)
            raise unreachable(f"Failed to fetch remote media from {server_name}") from None
        except (aiohttp.ClientError, OSError) as e:
            logger.info("media %s/%s (legacy): reading the answer failed: %r", server_name, media_id, e)
            raise unreachable(f"Failed to fetch remote media from {server_name}") from None
        return await self._follow(server_name, location, client_address)

    async def _follow(self, server_name: str, url: str, client_address: str | None) -> _Received:
        """The media at a `Location` the remote named: plain GETs, redirects followed a few times."""
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                async with self.hs.federation_client.stream_get_url(url) as response:
                    location = response.headers.get("Location")
                    if response.status in REDIRECT_STATUSES and location:
                        url = str(response.url.join(URL(location)))
                        continue
                    if response.status != 200:
                        raise _remote_error(server_name, response.status, await _error_body(response))
                    return await self._receive_response(response, client_address)
        except FederationError as e:
            logger.info("media of %s at %s: %s", server_name, url[:200], e)
            raise unreachable(f"Failed to fetch remote media from {server_name}") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            logger.info("media of %s at %s: %r", server_name, url[:200], e)
            raise unreachable(f"Failed to fetch remote media from {server_name}") from None
        raise unreachable(f"Too many redirects fetching media from {server_name}")

    async def _receive_response(self, response: aiohttp.ClientResponse, client_address: str | None) -> _Received:
        """A plain HTTP answer's body (the legacy endpoint, a redirect's target) as the media."""
        limit = self.config.max_upload_size
        announced = response.content_length
        if announced is not None and announced > limit:
            raise too_large(f"Remote media is larger than {limit} bytes", status=502)
        if announced is not None:
            self.limiter.take(client_address, announced)
        return await self._receive(response.content.iter_chunked(CHUNK), client_address if announced is None else None,
                                   response.headers.get("Content-Type"), response.headers.get("Content-Disposition"))

    async def _receive(self, chunks: AsyncIterator[bytes], client_address: str | None, content_type: str | None,
                       disposition: str | None) -> _Received:
        """The media's bytes into a temporary file of the local store, capped at `max_upload_size`
        (502 M_TOO_LARGE beyond), counted in the bucket of `client_address` (None: counted already)."""
        limit = self.config.max_upload_size
        try:
            temp, sha256, length = await self.hs.media.receive(
                _counted(chunks, lambda n: self.limiter.record(client_address, n)), limit)
        except MatrixError as e:
            if e.errcode == TOO_LARGE:
                raise too_large(f"Remote media is larger than {limit} bytes", status=502) from None
            raise
        return _Received(temp, sha256, length, _clean_type(content_type), disposition_filename(disposition))


async def _counted(chunks: AsyncIterator[bytes], charge: Callable[[int], None]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        charge(len(chunk))
        yield chunk


async def _error_body(response: aiohttp.ClientResponse) -> Any:
    """An error answer's JSON (None if it is not JSON or too long)."""
    try:
        raw = await response.content.read(ERROR_BODY_LIMIT + 1)
    except (aiohttp.ClientError, OSError):
        return None
    if len(raw) > ERROR_BODY_LIMIT:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _errcode(body: Any) -> str | None:
    return body.get("errcode") if isinstance(body, dict) and isinstance(body.get("errcode"), str) else None


def _unknown_endpoint(status: int, body: Any) -> bool:
    """Synapse's test for a server without an endpoint: 404 or 405 with M_UNRECOGNIZED or no Matrix
    error at all, or (older Synapses) 400 M_UNRECOGNIZED."""
    errcode = _errcode(body)
    if status in (404, 405):
        return errcode is None or errcode == UNRECOGNIZED
    return status == 400 and errcode == UNRECOGNIZED


def _remote_error(server_name: str, status: int, body: Any) -> MatrixError:
    """What to answer for the remote's error: not found and not yet uploaded pass through, too large
    is 502 M_TOO_LARGE, anything else 502."""
    errcode = _errcode(body)
    if status == 404:
        return not_found("Not found")
    if status == 504 and errcode == NOT_YET_UPLOADED:
        return not_yet_uploaded()
    if errcode == TOO_LARGE:
        return too_large("Remote media is too large", status=502)
    logger.info("media from %s: HTTP %d %s", server_name, status, errcode or "")
    return unreachable(f"Failed to fetch remote media from {server_name}: HTTP {status}")


def _clean_type(header: str | None) -> str:
    value = (header or "").strip()
    if not value or len(value) > 255 or any(ord(c) < 0x20 for c in value):
        return DEFAULT_MEDIA_TYPE
    return value
