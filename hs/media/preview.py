"""URL previews (`GET .../preview_url`): a page's OpenGraph description, its image stored as local media.

How a preview is made (Synapse's order):

1. a URL an oEmbed provider covers (hs/media/oembed.py) is asked of the provider; if that fails, the
   page itself is fetched;
2. the URL is fetched through hs/media/safe_fetch.py (blacklists, every resolved address checked,
   redirects re-checked, `max_spider_size`); an image is stored as it is, an HTML page is parsed
   (hs/media/html_preview.py), and an oEmbed document the page names is asked too, its fields
   winning over the page's;
3. the preview's `og:image`, if any, is fetched the same way and stored as local media, so the
   answer names an `mxc://` URI (clients never fetch the page's hosts themselves); an image that
   cannot be fetched is left out of the answer.

Previews are kept in memory for an hour (at most `CACHE_ENTRIES` of them, `CACHE_CHARS` characters in
all) and a URL being previewed is fetched once however many clients ask meanwhile. At most
`CONCURRENT_PREVIEWS` previews are made at a time (each may hold a page of up to `MAX_HTML_READ` bytes
and its text in memory while it is parsed), so memory stays bounded whatever clients ask for. The cache is keyed by the URL alone: no history
of pages is kept, so the `ts` a client asks for is always answered with the newest preview (which the
spec allows), and keying on it would only fetch the same page again for each hour asked about.
Failures are not cached.

Errors (Synapse's answers): 403 for a URL in `url_preview_url_blacklist` or an IP literal in the
IP range blacklist; 502 M_UNKNOWN for a host name that does not resolve or resolves to a blocked
address, an upstream error, a timeout or a type that cannot be previewed; 502 M_TOO_LARGE for a body
over `max_spider_size`.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hs.errors import MatrixError, forbidden, too_large, unreachable
from hs.media.html_preview import decode_html, parse_html
from hs.media.oembed import OEmbedProviders, oembed_to_og
from hs.media.safe_fetch import (
    AddressBlocked,
    FetchError,
    SafeFetcher,
    TooLarge,
    UrlBlocked,
)

if TYPE_CHECKING:
    from hs.config import HomeserverConfig

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 1000
CACHE_CHARS = 4 * 1024 * 1024  # keys and values of all cached previews together (~ their memory / 2-4)
CACHE_SECONDS = 3600.0
CONCURRENT_PREVIEWS = 8
MAX_OEMBED_SIZE = 1024 * 1024  # bytes of an oEmbed JSON answer
MAX_HTML_READ = 2 * 1024 * 1024  # bytes of a fetched page read for parsing (the fetch itself is capped too)

JsonDict = dict[str, Any]
# MediaRepository.store_file: (user_id, path, media_type, upload_name) -> mxc URI.
StoreFile = Callable[[str | None, Path, str, str | None], Awaitable[str]]


def is_html(media_type: str) -> bool:
    return media_type in ("text/html", "application/xhtml+xml")


def is_image(media_type: str) -> bool:
    return media_type.startswith("image/")


def is_previewable(media_type: str) -> bool:
    return is_html(media_type) or is_image(media_type)


def is_json(media_type: str) -> bool:
    # Providers answer oEmbed as application/json, though some use text/javascript or text/plain.
    return media_type in ("application/json", "text/json", "text/javascript", "text/plain", "")


def fetch_error_to_matrix(e: FetchError) -> MatrixError:
    """The answer a client gets for a failed fetch of the URL it asked about."""
    if isinstance(e, UrlBlocked | AddressBlocked):
        return forbidden(str(e))
    if isinstance(e, TooLarge):
        return too_large(str(e), status=502)
    return unreachable(str(e))


def image_size(path: Path) -> tuple[int, int] | None:
    """An image's width and height from its header (Pillow reads no pixels here), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


class UrlPreviewer:
    """Makes, caches and shares previews; one per process."""

    def __init__(self, config: HomeserverConfig, store_file: StoreFile | None,
                 fetcher: SafeFetcher | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetcher = fetcher or SafeFetcher.from_config(config)
        self.oembed = OEmbedProviders(
            use_defaults=not config.oembed.disable_default_providers,
            provider_files=[config.resolve_path(p) for p in config.oembed.additional_providers])
        self._store_file = store_file
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, int, JsonDict]] = OrderedDict()  # expiry, size, preview
        self._cache_chars = 0
        self._slots = asyncio.Semaphore(CONCURRENT_PREVIEWS)
        self._in_flight: dict[str, asyncio.Task[JsonDict]] = {}

    async def preview(self, url: str) -> JsonDict:
        """The preview of ``url``: cached, or shared with a fetch already under way, or made now. A
        client that goes away does not cancel a fetch others may be waiting for."""
        now = self._clock()
        cached = self._cache.get(url)
        if cached is not None:
            if cached[0] > now:
                self._cache.move_to_end(url)
                return dict(cached[2])
            self._forget(url)
        task = self._in_flight.get(url)
        if task is None:
            task = asyncio.create_task(self._make(url), name=f"url-preview {url[:100]}")
            self._in_flight[url] = task
            task.add_done_callback(lambda t: self._finished(url, t))
        return dict(await asyncio.shield(task))

    def _finished(self, url: str, task: asyncio.Task[JsonDict]) -> None:
        if self._in_flight.get(url) is task:
            del self._in_flight[url]
        if task.cancelled() or task.exception() is not None:
            return  # (the exception reached the waiters)
        result = task.result()
        size = len(url) + sum(len(k) + len(str(v)) for k, v in result.items())
        if size > CACHE_CHARS // 16:
            return  # (cannot happen with html_preview's bounds; a guard, not a policy)
        self._forget(url)
        self._cache[url] = (self._clock() + CACHE_SECONDS, size, result)
        self._cache_chars += size
        while len(self._cache) > CACHE_ENTRIES or self._cache_chars > CACHE_CHARS:
            self._forget(next(iter(self._cache)))

    def _forget(self, url: str) -> None:
        entry = self._cache.pop(url, None)
        if entry is not None:
            self._cache_chars -= entry[1]

    async def _make(self, url: str) -> JsonDict:
        async with self._slots:
            return await self._make_now(url)

    async def _make_now(self, url: str) -> JsonDict:
        with tempfile.TemporaryDirectory(prefix="hs-preview-") as tmp:
            workdir = Path(tmp)
            try:
                og = await self._from_oembed_provider(url, workdir)
                if og is None:
                    og = await self._from_page(url, workdir)
                await self._store_image(og, workdir)
            except FetchError as e:
                raise fetch_error_to_matrix(e) from None
        return {k: v for k, v in og.items() if v is not None}

    async def _from_oembed_provider(self, url: str, workdir: Path) -> JsonDict | None:
        request = self.oembed.request_url(url)
        if request is None:
            return None
        try:
            return await self._oembed(request, url, workdir)
        except (FetchError, ValueError) as e:
            logger.info("URL preview: oEmbed for %s failed (%s); fetching the page", url, e)
            return None

    async def _oembed(self, request: str, url: str, workdir: Path) -> JsonDict:
        fetched = await self.fetcher.fetch(request, workdir / "oembed", accept=is_json, max_size=MAX_OEMBED_SIZE)
        return dict(oembed_to_og(await asyncio.to_thread(fetched.path.read_bytes), url))

    async def _from_page(self, url: str, workdir: Path) -> JsonDict:
        fetched = await self.fetcher.fetch(url, workdir / "page", accept=is_previewable)
        if is_image(fetched.media_type):
            og: JsonDict = {"og:description": fetched.filename}
            await self._store_fetched_image(og, fetched.path, fetched.media_type, fetched.filename)
            return og
        html = await asyncio.to_thread(_read_html, fetched.path, fetched.charset)
        page = await asyncio.to_thread(parse_html, html, fetched.url)
        og = dict(page.og)
        if page.oembed_url:
            try:
                og.update(await self._oembed(page.oembed_url, url, workdir))
            except (FetchError, ValueError) as e:
                logger.info("URL preview: the oEmbed document %s names failed: %s", url, e)
        return og

    async def _store_image(self, og: JsonDict, workdir: Path) -> None:
        """Replace the preview's http(s) `og:image` by the image stored as local media (or drop it)."""
        image_url = og.get("og:image")
        if not isinstance(image_url, str) or image_url.startswith("mxc://"):
            return
        try:
            fetched = await self.fetcher.fetch(image_url, workdir / "image", accept=is_image)
        except FetchError as e:
            logger.info("URL preview: its image %s cannot be fetched: %s", image_url, e)
            _drop_image(og)
            return
        await self._store_fetched_image(og, fetched.path, fetched.media_type, fetched.filename)

    async def _store_fetched_image(self, og: JsonDict, path: Path, media_type: str, filename: str | None) -> None:
        """Store the image and name it in `og`. Stored on the server's behalf (no user's quota), as
        every user asking for this preview gets the same image."""
        if self._store_file is None:
            _drop_image(og)
            return
        try:
            mxc = await self._store_file(None, path, media_type, filename)
        except Exception:
            logger.exception("URL preview: storing an image failed")
            _drop_image(og)
            return
        _drop_image(og)  # the page's own claims about the image (its size, type) give way to the image's
        og["og:image"] = mxc
        og["og:image:type"] = media_type
        og["matrix:image:size"] = path.stat().st_size
        size = await asyncio.to_thread(image_size, path)
        if size is not None:
            og["og:image:width"], og["og:image:height"] = size


def _drop_image(og: JsonDict) -> None:
    for key in ("og:image", "og:image:width", "og:image:height", "og:image:type", "og:image:secure_url",
                "matrix:image:size"):
        og.pop(key, None)


def _read_html(path: Path, header_charset: str | None) -> str:
    with path.open("rb") as f:
        return decode_html(f.read(MAX_HTML_READ), header_charset)
