"""Raw HTTP for the media tests: bytes in and out, with the response headers (tests/harness.py's
Client speaks JSON)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from tests.harness import Client, TestHomeServer


async def media_request(srv: TestHomeServer, method: str, path: str, token: str | None = None, data: Any = None,
                        headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
                        ) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, with `token` as the bearer token."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.request(
            method, srv.base_url + path, data=data, headers=h, params=params) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def upload_media(srv: TestHomeServer, client: Client, data: bytes, content_type: str = "text/plain",
                       filename: str | None = None) -> str:
    """Upload through POST /_matrix/media/v3/upload, which must succeed; the `mxc://` URI."""
    params = {"filename": filename} if filename else None
    status, _, body = await media_request(srv, "POST", "/_matrix/media/v3/upload", client.token, data,
                                          {"Content-Type": content_type}, params)
    assert status == 200, body
    uri = str(orjson.loads(body)["content_uri"])
    assert uri.startswith(f"mxc://{srv.config.server_name}/")
    return uri
