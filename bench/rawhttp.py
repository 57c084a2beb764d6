"""A minimal keep-alive HTTP/1.1 JSON client over asyncio streams, for latency measurements.

On a 2-core machine the load generator shares the cores with the server and its database, so the
client's own CPU time per request (about a millisecond for aiohttp's client here) lands inside every
latency it measures. This client does the least a request needs: one connection per caller, bytes
written by hand, the response read by Content-Length or chunked framing. It is used for the wake-up
measurement of every server alike (hs and Synapse).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode, urlsplit


class RawHttpClient:
    def __init__(self, base: str, token: str) -> None:
        url = urlsplit(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        target = "/_matrix/client/v3" + path + ("?" + urlencode(params) if params else "")
        payload = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Length: {len(payload)}\r\n")
        if payload:
            head += "Content-Type: application/json\r\n"
        self._writer.write(head.encode() + b"\r\n" + payload)
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            data = b""
            while (size := int((await self._reader.readline()).split(b";")[0], 16)) > 0:
                data += await self._reader.readexactly(size)
                await self._reader.readline()
            await self._reader.readline()
        elif length is not None:
            data = await self._reader.readexactly(length)
        else:
            data, close = await self._reader.read(), True
        if close:
            await self.close()
        result = json.loads(data) if data else None
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {result}")
        return result
