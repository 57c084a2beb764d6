"""`multipart/mixed` as the federation media endpoints use it (server-server API, "Content repository",
RFC 2046 section 5.1): exactly two parts, a JSON metadata object and then the media, either its
bytes or a `Location` header naming where to fetch them.

Both directions stream. Serving writes a fixed head (delimiter, the JSON part, the media part's
headers), the file chunk by chunk, and the closing delimiter, so the response has a known length and
the file is never held in memory. Reading (`MultipartReader`) works over an async iterator of chunks
of any size: a delimiter split across chunks is found because the last `len(delimiter) - 1` bytes
of a chunk are held back until the next one shows whether they start a delimiter. A body that ends
before the closing delimiter is an error, so a cut-off download is never taken for a whole file.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Mapping

import orjson
from aiohttp import web

from hs.media.serving import content_disposition, content_type_header
from hs.media.storage import StorageBackend

# RFC 2046: 1-70 characters from this set, not ending in a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
MAX_HEADERS_SIZE = 16 * 1024  # bytes of one part's header block
MAX_PREAMBLE_SIZE = 16 * 1024  # bytes before the first delimiter
MAX_PADDING = 256  # bytes of transport padding after a delimiter
MAX_METADATA_SIZE = 64 * 1024  # bytes of the JSON part


class MultipartError(ValueError):
    """The body is not the multipart/mixed it claims to be (or is cut off)."""


# -- serving ------------------------------------------------------------------------------------------
def new_boundary() -> str:
    return secrets.token_hex(16)


def content_type(boundary: str) -> str:
    return f"multipart/mixed; boundary={boundary}"


def _part(boundary: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"--{boundary}"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def head(boundary: str, part_headers: Mapping[str, str], metadata: Mapping[str, object] | None = None) -> bytes:
    """Everything before the media's bytes: the JSON part, then the media part's headers."""
    return (_part(boundary, {"Content-Type": "application/json"}) + orjson.dumps(dict(metadata or {}))
            + b"\r\n" + _part(boundary, part_headers))


def tail(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def media_part_headers(media_type: str | None, filename: str | None) -> dict[str, str]:
    """The media part's headers: the type it is served with, and the same Content-Disposition rules
    (inline only for safe types) as a client download."""
    return {"Content-Type": content_type_header(media_type),
            "Content-Disposition": content_disposition(media_type, filename)}


async def stream_multipart(request: web.Request, backend: StorageBackend, key: str, size: int,
                           media_type: str | None, filename: str | None) -> web.StreamResponse:
    """Answer a federation media request with a stored file, streamed, as multipart/mixed."""
    boundary = new_boundary()
    first = head(boundary, media_part_headers(media_type, filename))
    last = tail(boundary)
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type(boundary)})
    response.content_length = len(first) + size + len(last)
    await response.prepare(request)
    await response.write(first)
    async for chunk in backend.read(key):
        await response.write(chunk)
    await response.write(last)
    await response.write_eof()
    return response


# -- reading ------------------------------------------------------------------------------------------
def parse_boundary(header: str | None) -> str:
    """The boundary of a `multipart/mixed` Content-Type header; MultipartError for anything else."""
    media_type, params = parse_header(header or "")
    if media_type != "multipart/mixed":
        raise MultipartError(f"expected multipart/mixed, got {media_type[:100] or 'no type'}")
    boundary = params.get("boundary")
    if boundary is None or not _BOUNDARY.match(boundary):
        raise MultipartError("missing or invalid multipart boundary")
    return boundary


def parse_header(value: str) -> tuple[str, dict[str, str]]:
    """("multipart/mixed", {"boundary": "x"}) from a header with parameters; quoted values may hold
    `;` and backslash escapes. The first token is lower-cased, as are parameter names."""
    first, rest = _token(value, 0)
    params: dict[str, str] = {}
    pos = rest
    while pos < len(value):
        if value[pos] != ";":
            pos += 1
            continue
        pos += 1
        eq = value.find("=", pos)
        if eq < 0:
            break
        name = value[pos:eq].strip().lower()
        pos = eq + 1
        while pos < len(value) and value[pos] in " \t":
            pos += 1
        if pos < len(value) and value[pos] == '"':
            chars: list[str] = []
            pos += 1
            while pos < len(value) and value[pos] != '"':
                if value[pos] == "\\" and pos + 1 < len(value):
                    pos += 1
                chars.append(value[pos])
                pos += 1
            pos += 1
            param = "".join(chars)
        else:
            end = value.find(";", pos)
            end = len(value) if end < 0 else end
            param, pos = value[pos:end].strip(), end
        if name and name not in params:
            params[name] = param
    return first.lower(), params


def _token(value: str, pos: int) -> tuple[str, int]:
    end = value.find(";", pos)
    end = len(value) if end < 0 else end
    return value[pos:end].strip(), end


def disposition_filename(header: str | None) -> str | None:
    """Content-Disposition's file name (RFC 6266: `filename*` with its charset preferred)."""
    if not header:
        return None
    _, params = parse_header(header)
    extended = params.get("filename*")
    if extended and "'" in extended:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            name = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
            if name:
                return name
        except (LookupError, UnicodeDecodeError):
            pass
    return params.get("filename") or None


class MultipartReader:
    """Reads a multipart body part by part: `next_part()` gives a part's headers (names lower-cased)
    or None after the closing delimiter; then `body()` streams that part, or `read(limit)` returns it.
    """

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str) -> None:
        self._chunks = chunks
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        # The first delimiter may open the body with no CRLF before it: one is supplied.
        self._buf = bytearray(b"\r\n")
        self._state = "preamble"  # preamble | body | after_delimiter | done

    async def _fill(self) -> bool:
        """One more chunk into the buffer; False at the end of the body."""
        while (chunk := await anext(self._chunks, None)) is not None:
            if chunk:
                self._buf += chunk
                return True
        return False

    async def _skip_to_delimiter(self, cap: int | None) -> AsyncIterator[bytes]:
        """The bytes before the next delimiter (which is consumed); MultipartError if the body ends
        first, or if more than `cap` bytes come before it."""
        d = self._delimiter
        keep = len(d) - 1
        seen = 0
        while True:
            i = self._buf.find(d)
            if i >= 0:
                if cap is not None and seen + i > cap:
                    raise MultipartError("part too large")
                if i:
                    yield bytes(self._buf[:i])
                del self._buf[:i + len(d)]
                self._state = "after_delimiter"
                return
            if len(self._buf) > keep:
                out = bytes(self._buf[:-keep])
                del self._buf[:-keep]
                seen += len(out)
                if cap is not None and seen > cap:
                    raise MultipartError("part too large")
                yield out
            if not await self._fill():
                self._state = "done"
                raise MultipartError("the body ended before the closing delimiter")

    async def next_part(self) -> dict[str, str] | None:
        """Move to the next part and return its headers; None once the closing delimiter is read."""
        if self._state == "done":
            return None
        if self._state in ("preamble", "body"):
            cap = MAX_PREAMBLE_SIZE if self._state == "preamble" else None
            async for _ in self._skip_to_delimiter(cap):
                pass
        # After a delimiter: "--" closes the body; else optional padding, then CRLF and headers.
        while len(self._buf) < 2:
            if not await self._fill():
                raise MultipartError("the body ended after a delimiter")
        if self._buf.startswith(b"--"):
            self._state = "done"
            return None
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > MAX_PADDING or not await self._fill():
                raise MultipartError("malformed delimiter line")
        if self._buf[:end].strip(b" \t"):
            raise MultipartError("malformed delimiter line")
        del self._buf[:end + 2]
        headers = await self._headers()
        self._state = "body"
        return headers

    async def _headers(self) -> dict[str, str]:
        while True:
            if self._buf.startswith(b"\r\n"):
                del self._buf[:2]
                return {}
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEADERS_SIZE or not await self._fill():
                raise MultipartError("malformed or oversized part headers")
        if end > MAX_HEADERS_SIZE:
            raise MultipartError("oversized part headers")
        block = bytes(self._buf[:end]).decode("utf-8", "replace")
        del self._buf[:end + 4]
        headers: dict[str, str] = {}
        last: str | None = None
        for line in block.split("\r\n"):
            if line[:1] in (" ", "\t") and last is not None:  # an obsolete folded line
                headers[last] += " " + line.strip()
                continue
            name, sep, value = line.partition(":")
            name = name.strip().lower()
            if not sep or not name or " " in name:
                raise MultipartError("malformed part header")
            headers[name] = value.strip()
            last = name
        return headers

    def body(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as they arrive."""
        if self._state != "body":
            raise MultipartError("no part is open")
        return self._skip_to_delimiter(None)

    async def read(self, limit: int) -> bytes:
        """The current part whole, at most `limit` bytes (MultipartError beyond)."""
        if self._state != "body":
            raise MultipartError("no part is open")
        out = bytearray()
        async for chunk in self._skip_to_delimiter(limit):
            out += chunk
        return bytes(out)


async def read_metadata(reader: MultipartReader) -> tuple[dict[str, object], dict[str, str]]:
    """The first part (the JSON metadata object) and the second part's headers, leaving the reader
    at the second part's body."""
    first = await reader.next_part()
    if first is None:
        raise MultipartError("no metadata part")
    if parse_header(first.get("content-type", ""))[0] != "application/json":
        raise MultipartError("the first part is not application/json")
    try:
        metadata = orjson.loads(await reader.read(MAX_METADATA_SIZE))
    except orjson.JSONDecodeError:
        raise MultipartError("the metadata part is not JSON") from None
    if not isinstance(metadata, dict):
        raise MultipartError("the metadata part is not a JSON object")
    second = await reader.next_part()
    if second is None:
        raise MultipartError("no media part")
    return metadata, second
