"""The media repository over real HTTP on both engines: uploads (direct and to reserved IDs), the
authenticated and legacy downloads with the spec's headers, Range requests, and the upload limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from tests.harness import user
from tests.media_http import media_request, upload_media


def _path(uri: str) -> str:
    return uri.removeprefix("mxc://")


async def test_upload_and_authenticated_download(make_server: Any, engine: str) -> None:
    srv = await make_server(engine)
    alice = await user(srv, "alice")
    uri = await upload_media(srv, alice, b"hello media", "text/plain", "greeting.txt")
    status, headers, body = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{_path(uri)}", alice.token)
    assert status == 200 and body == b"hello media"
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert headers["Content-Disposition"] == 'inline; filename="greeting.txt"'
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert headers["Access-Control-Allow-Origin"] == "*"  # web clients on other origins show media
    # The authenticated endpoint needs a token.
    status, _, body = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{_path(uri)}")
    assert status == 401 and b"M_MISSING_TOKEN" in body
    # A file name in the path overrides the stored one; unsafe types are attachments.
    uri2 = await upload_media(srv, alice, b"<script>alert(1)</script>", "text/html", "page.html")
    status, headers, _ = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{_path(uri2)}/b\u00e9.html",
                                    alice.token)
    assert status == 200
    assert headers["Content-Disposition"] == "attachment; filename*=utf-8''b%C3%A9.html"


async def test_legacy_download_only_serves_unauthenticated_media(make_server: Any, tmp_path: Path) -> None:
    srv = await make_server("sqlite", enable_authenticated_media=False)
    alice = await user(srv, "alice")
    old = await upload_media(srv, alice, b"old")
    status, _, body = await media_request(srv, "GET", f"/_matrix/media/v3/download/{_path(old)}")
    assert (status, body) == (200, b"old")
    srv.hs.config.enable_authenticated_media = True
    new = await upload_media(srv, alice, b"new")
    status, _, body = await media_request(srv, "GET", f"/_matrix/media/r0/download/{_path(new)}")
    assert status == 404 and b"M_NOT_FOUND" in body
    status, _, body = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{_path(new)}", alice.token)
    assert (status, body) == (200, b"new")


async def test_range_requests(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    data = os.urandom(1_000_000)
    uri = await upload_media(srv, alice, data, "application/octet-stream")
    url = f"/_matrix/client/v1/media/download/{_path(uri)}"
    status, headers, body = await media_request(srv, "GET", url, alice.token, headers={"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, _, body = await media_request(srv, "GET", url, alice.token, headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, body = await media_request(srv, "GET", url, alice.token, headers={"Range": "bytes=999990-"})
    assert status == 206 and body == data[999990:]
    status, headers, _ = await media_request(srv, "GET", url, alice.token, headers={"Range": "bytes=2000000-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = await media_request(srv, "GET", url, alice.token)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert headers["Accept-Ranges"] == "bytes"


async def test_same_bytes_stored_once(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    a = await upload_media(srv, alice, b"same bytes")
    b = await upload_media(srv, alice, b"same bytes")
    assert a != b
    root = srv.hs.config.resolve_path(srv.hs.config.media_store_path) / "content"
    assert len([p for p in root.rglob("*") if p.is_file()]) == 1
    assert not any((root.parent / "tmp").iterdir())


async def test_upload_too_large_stores_nothing(make_server: Any, engine: str) -> None:
    srv = await make_server(engine, max_upload_size="64K")
    alice = await user(srv, "alice")
    status, _, body = await media_request(srv, "GET", "/_matrix/client/v1/media/config", alice.token)
    assert status == 200 and b'"m.upload.size":65536' in body
    status, _, body = await media_request(srv, "POST", "/_matrix/media/v3/upload", alice.token, os.urandom(70_000))
    assert status == 413 and b"M_TOO_LARGE" in body

    async def chunks() -> Any:  # no Content-Length: cut off while streaming
        for _ in range(10):
            yield os.urandom(10_000)

    status, _, body = await media_request(srv, "POST", "/_matrix/media/v3/upload", alice.token, chunks())
    assert status == 413 and b"M_TOO_LARGE" in body
    store = srv.hs.config.resolve_path(srv.hs.config.media_store_path)
    assert not [p for p in store.rglob("*") if p.is_file()]
    assert await srv.hs.db.fetchval("SELECT COUNT(*) FROM local_media") == 0


async def test_upload_quota(make_server: Any) -> None:
    srv = await make_server("sqlite", media_upload_limits=[{"time_period": "1h", "max_size": "10K"}])
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    await upload_media(srv, alice, b"x" * 6000)
    status, _, body = await media_request(srv, "POST", "/_matrix/media/v3/upload", alice.token, b"y" * 6000)
    assert status == 403 and b"M_FORBIDDEN" in body
    await upload_media(srv, bob, b"y" * 6000)  # quotas are per user


async def test_asyncupload_media(make_server: Any, engine: str) -> None:
    srv = await make_server(engine, max_pending_media_uploads=2)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    status, _, body = await media_request(srv, "POST", "/_matrix/media/v1/create", alice.token)
    assert status == 200, body
    created = orjson.loads(body)
    uri = created["content_uri"]
    assert created["unused_expires_at"] > 0
    url = f"/_matrix/client/v1/media/download/{_path(uri)}"
    # Not uploaded yet: a short wait ends in 504 M_NOT_YET_UPLOADED.
    status, _, body = await media_request(srv, "GET", url, alice.token, params={"timeout_ms": "100"})
    assert status == 504 and b"M_NOT_YET_UPLOADED" in body
    # A download waiting meanwhile gets the content once it is uploaded.
    waiting = asyncio.ensure_future(media_request(srv, "GET", url, bob.token, params={"timeout_ms": "10000"}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    status, _, body = await media_request(srv, "PUT", f"/_matrix/media/v3/upload/{_path(uri)}", bob.token, b"later")
    assert status == 403 and b"M_FORBIDDEN" in body
    status, _, body = await media_request(srv, "PUT", f"/_matrix/media/v3/upload/{_path(uri)}", alice.token, b"later",
                                 {"Content-Type": "text/plain"})
    assert status == 200, body
    status, _, body = await asyncio.wait_for(waiting, 5)
    assert (status, body) == (200, b"later")
    status, _, body = await media_request(srv, "PUT", f"/_matrix/media/v3/upload/{_path(uri)}", alice.token, b"again")
    assert status == 409 and b"M_CANNOT_OVERWRITE_MEDIA" in body
    status, _, body = await media_request(srv, "PUT", f"/_matrix/media/v3/upload/{srv.config.server_name}/nope",
                                 alice.token, b"x")
    assert status == 404 and b"M_NOT_FOUND" in body
    # At most max_pending_media_uploads reservations wait at once.
    for _ in range(2):
        status, _, _ = await media_request(srv, "POST", "/_matrix/media/v1/create", alice.token)
        assert status == 200
    status, _, body = await media_request(srv, "POST", "/_matrix/media/v1/create", alice.token)
    assert status == 429 and b"M_LIMIT_EXCEEDED" in body and b"retry_after_ms" in body


async def test_unknown_media(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    status, _, body = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{srv.config.server_name}/nope",
                                 alice.token)
    assert status == 404 and b"M_NOT_FOUND" in body
    status, _, body = await media_request(srv, "GET", "/_matrix/client/v1/media/download/other.example/x", alice.token,
                                 params={"allow_remote": "false"})
    assert status == 404


async def test_quarantined_bytes_uploaded_again_stay_quarantined(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    first = await upload_media(srv, alice, b"bad bytes")
    await srv.hs.db.execute("UPDATE local_media SET quarantined_by = '@admin:test.local' WHERE media_id = $1",
                            first.rpartition("/")[2])
    again = await upload_media(srv, alice, b"bad bytes")
    status, _, _ = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{_path(again)}", alice.token)
    assert status == 404
    other = await upload_media(srv, alice, b"good bytes")
    status, _, _ = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{_path(other)}", alice.token)
    assert status == 200
