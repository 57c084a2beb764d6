"""Answering a download: the spec's headers for served media and HTTP Range requests, streamed from
whichever store holds the file.

A file in the local store is sent with aiohttp's FileResponse (the kernel's sendfile, Range and
conditional requests handled there); a file only a storage provider has is streamed from it here.

Headers (client-server API, "Content repository"): `Content-Security-Policy` (the spec's recommended
sandboxing policy), `Cross-Origin-Resource-Policy: cross-origin`, and `Content-Disposition` that is
`inline` only for the content types the spec lists as safe to render (everything else is an
`attachment`), with the file name encoded per RFC 6266 (`filename*=utf-8''...` when it is not plain
ASCII).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from hs.api.base import CORS_HEADERS
from hs.media.storage import LocalStorage, StorageBackend

# The spec's list of types safe to serve with `Content-Disposition: inline`.
INLINE_CONTENT_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json", "image/jpeg", "image/gif",
    "image/png", "image/apng", "image/webp", "image/avif", "video/mp4", "video/webm", "video/ogg",
    "video/quicktime", "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave",
    "audio/wav", "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})
CONTENT_SECURITY_POLICY = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf;"
                           " style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Media never changes under its ID: caches may keep it (Synapse's policy).
CACHE_CONTROL = "public,max-age=86400,s-maxage=86400"

FILE_CHUNK_SIZE = 64 * 1024

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Characters that may stand in a quoted `filename="..."` as they are.
_PLAIN_FILENAME = re.compile(r"^[\x20-\x7e]+$")


def base_type(media_type: str | None) -> str:
    return (media_type or DEFAULT_CONTENT_TYPE).split(";")[0].strip().lower()


def content_disposition(media_type: str | None, filename: str | None) -> str:
    disposition = "inline" if base_type(media_type) in INLINE_CONTENT_TYPES else "attachment"
    if not filename:
        return disposition
    if _PLAIN_FILENAME.match(filename) and '"' not in filename and "\\" not in filename:
        return f'{disposition}; filename="{filename}"'
    return f"{disposition}; filename*=utf-8''{quote(filename, safe='')}"


def content_type_header(media_type: str | None) -> str:
    """The stored type, with a charset for text (as Synapse serves it) so browsers do not sniff one."""
    value = media_type or DEFAULT_CONTENT_TYPE
    if value.lower().startswith("text/") and "charset" not in value.lower():
        value += "; charset=UTF-8"
    return value


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range [start, end) a `Range` header asks for; None for the whole file (no
    header, or one this server answers in full, like several ranges). Raises HTTPRequestRangeNotSatisfiable
    for a range outside the file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})


def media_headers(media_type: str | None, filename: str | None) -> dict[str, str]:
    return {
        "Content-Type": content_type_header(media_type),
        "Content-Disposition": content_disposition(media_type, filename),
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Security-Policy": "sandbox;",
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
    }


async def stream_file(request: web.Request, backend: StorageBackend, key: str, size: int,
                      media_type: str | None, filename: str | None) -> web.StreamResponse:
    """Send a stored file (or the byte range asked for)."""
    headers = media_headers(media_type, filename)
    if isinstance(backend, LocalStorage):
        # (Chunks, where the loop cannot sendfile (uvloop, TLS), of 64 KiB: 256 KiB ones cost ~0.9 MB of
        # memory per concurrent download against ~0.3 MB.)
        return web.FileResponse(backend.path(key), chunk_size=FILE_CHUNK_SIZE, headers=headers)
    try:
        byte_range = parse_range(request.headers.get("Range"), size)
    except web.HTTPRequestRangeNotSatisfiable as refusal:
        return web.Response(status=416, headers=refusal.headers)
    headers.update(CORS_HEADERS)  # (prepared here, so the app's middleware cannot add them)
    start, end = byte_range if byte_range is not None else (0, size)
    response = web.StreamResponse(status=206 if byte_range is not None else 200, headers=headers)
    if byte_range is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response.content_length = end - start
    await response.prepare(request)
    if request.method != "HEAD" and end > start:
        async for chunk in backend.read(key, start, end):
            await response.write(chunk)
    await response.write_eof()
    return response
