"""Real client libraries against hs's media repository over real HTTP (issue 14).

matrix-nio 0.26 uploads at `/_matrix/media/v3/upload` and downloads, thumbnails and reads the config
on the authenticated `/_matrix/client/v1/media/...` paths (token as the `access_token` parameter).
mautrix-python 0.21 uses the authenticated paths (Authorization header) only when /versions lists
v1.11, and reads the config at the legacy `/_matrix/media/v3/config`. Media uploaded with
`enable_authenticated_media` on (the default) is not served by the legacy download path, so a
successful download here is also proof that the library took the authenticated one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import nio
import pytest
from mautrix.client import Client
from mautrix.types import ContentURI, SpecVersions, UserID

from tests.clients.media_fixtures import (
    DEFAULT_SIZES,
    check_thumbnail,
    events_of,
    make_image,
    mxc_parts,
    nio_login,
)
from tests.harness import TestHomeServer, user

SERVER = "test.local"


async def _raw_get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition on the server's state (never a fixed sleep standing in for an event)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --- matrix-nio -------------------------------------------------------------------------------------


async def test_nio_image_and_file_through_a_room(make_server: Any, engine: str, tmp_path: Any) -> None:
    """Alice uploads a picture and a file with nio and sends them as m.image / m.file; Bob syncs, sees
    both and downloads each with nio: the same bytes, content type and file name come back."""
    srv: TestHomeServer = await make_server(engine)
    alice = await nio_login(srv.base_url, SERVER, "alice", str(tmp_path))
    bob = await nio_login(srv.base_url, SERVER, "bob", str(tmp_path))
    try:
        png = make_image(1200, 900)
        up, keys = await alice.upload(_bytes_provider(png), content_type="image/png", filename="picture.png",
                                      filesize=len(png))
        assert isinstance(up, nio.UploadResponse), up
        assert keys is None and up.content_uri.startswith(f"mxc://{SERVER}/")
        image_uri = up.content_uri
        blob = os.urandom(300 * 1024)
        # No filesize: nio streams the body chunked, without a Content-Length. A non-ASCII name
        # exercises RFC 6266's filename* on the way back.
        up, _ = await alice.upload(_bytes_provider(blob), content_type="application/octet-stream",
                                   filename="données 2026.bin")
        assert isinstance(up, nio.UploadResponse), up
        file_uri = up.content_uri

        room_id = (await alice.room_create(name="Media")).room_id
        assert isinstance(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
        await bob.sync(timeout=0)
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await alice.sync(timeout=0)
        since = (await bob.sync(timeout=0)).next_batch
        sent = await alice.room_send(room_id, "m.room.message", {
            "msgtype": "m.image", "body": "picture.png", "url": image_uri,
            "info": {"mimetype": "image/png", "w": 1200, "h": 900, "size": len(png)}})
        assert isinstance(sent, nio.RoomSendResponse), sent
        sent = await alice.room_send(room_id, "m.room.message", {
            "msgtype": "m.file", "body": "données 2026.bin", "url": file_uri,
            "info": {"mimetype": "application/octet-stream", "size": len(blob)}})
        assert isinstance(sent, nio.RoomSendResponse), sent

        images: list[Any] = []
        files: list[Any] = []
        for _ in range(5):
            sync = await bob.sync(timeout=3000, since=since)
            assert isinstance(sync, nio.SyncResponse), sync
            since = sync.next_batch
            images += events_of(sync, room_id, nio.RoomMessageImage)
            files += events_of(sync, room_id, nio.RoomMessageFile)
            if images and files:
                break
        assert [e.url for e in images] == [image_uri] and [e.url for e in files] == [file_uri]

        got = await bob.download(mxc=images[0].url)
        assert isinstance(got, nio.MemoryDownloadResponse), got
        assert (got.body, got.content_type, got.filename) == (png, "image/png", "picture.png")
        got = await bob.download(mxc=files[0].url)
        assert isinstance(got, nio.MemoryDownloadResponse), got
        assert got.body == blob
        assert (got.content_type, got.filename) == ("application/octet-stream", "données 2026.bin")
        # A file name asked for in the path replaces the stored one.
        got = await bob.download(mxc=files[0].url, filename="renamed.bin")
        assert isinstance(got, nio.MemoryDownloadResponse), got
        assert (got.body == blob, got.filename) == (True, "renamed.bin")
        # Streamed to disk: nio names the file in a directory after the server's Content-Disposition.
        save_dir = tmp_path / "downloads"
        save_dir.mkdir()
        got = await bob.download(mxc=files[0].url, save_to=save_dir)
        assert isinstance(got, nio.DiskDownloadResponse), got
        assert got.body == save_dir / "données 2026.bin" and got.body.read_bytes() == blob

        # Uploaded with authenticated media on: the legacy unauthenticated path does not serve it.
        server_name, media_id = mxc_parts(image_uri)
        status, _, body = await _raw_get(f"{srv.base_url}/_matrix/media/v3/download/{server_name}/{media_id}")
        assert status == 404 and b"M_NOT_FOUND" in body
    finally:
        await alice.close()
        await bob.close()


async def test_nio_thumbnails_of_each_configured_size(make_server: Any, tmp_path: Any) -> None:
    """nio's thumbnail() for each of Synapse's default sizes of a 1200x900 PNG: crops exact, scales
    inside the box with the picture's 4:3 ratio (so exact here too), PNG kept as PNG; a file that is
    not an image has no thumbnail."""
    srv: TestHomeServer = await make_server("sqlite")
    alice = await nio_login(srv.base_url, SERVER, "tina", str(tmp_path))
    try:
        png = make_image(1200, 900)
        up, _ = await alice.upload(_bytes_provider(png), content_type="image/png", filename="p.png",
                                   filesize=len(png))
        assert isinstance(up, nio.UploadResponse), up
        server_name, media_id = mxc_parts(up.content_uri)
        for size in DEFAULT_SIZES:
            thumb = await alice.thumbnail(server_name, media_id, size.width, size.height,
                                          nio.ResizingMethod(size.method))
            assert isinstance(thumb, nio.ThumbnailResponse), (size, thumb)
            check_thumbnail(thumb.body, thumb.content_type, size, (1200, 900), "image/png")

        up, _ = await alice.upload(_bytes_provider(os.urandom(4096)), content_type="application/octet-stream",
                                   filename="x.bin")
        assert isinstance(up, nio.UploadResponse), up
        server_name, media_id = mxc_parts(up.content_uri)
        thumb = await alice.thumbnail(server_name, media_id, 96, 96, nio.ResizingMethod.crop)
        assert isinstance(thumb, nio.ThumbnailError), thumb
    finally:
        await alice.close()


def _bytes_provider(data: bytes) -> Callable[[int, int], AsyncIterator[bytes]]:
    """A nio data provider: called again (from the start) if nio retries the upload."""
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 64 * 1024):
            yield data[i:i + 64 * 1024]

    return lambda _got_429, _got_timeouts: chunks()


# --- mautrix-python ---------------------------------------------------------------------------------


async def _mautrix(srv: TestHomeServer, name: str) -> Client:
    """A user registered through hs's API, logged in with mautrix (which then holds the token)."""
    await user(srv, name)
    client = Client(base_url=srv.base_url)
    await client.login(identifier=UserID(name), password="password123", device_name="mautrix")
    assert client.mxid == f"@{name}:{SERVER}" and client.api.token
    return client


async def test_mautrix_upload_and_download(make_server: Any, engine: str) -> None:
    srv: TestHomeServer = await make_server(engine)
    alice = await _mautrix(srv, "alice")
    bob = await _mautrix(srv, "bob")
    try:
        # hs lists v1.11, so mautrix takes the authenticated download path.
        assert (await bob.versions(no_cache=True)).supports(SpecVersions.V111)
        jpeg = make_image(500, 300, "JPEG")
        image_uri = await alice.upload_media(jpeg, mime_type="image/jpeg", filename="photo.jpg")
        blob = os.urandom(200 * 1024)
        file_uri = await alice.upload_media(blob, mime_type="application/pdf", filename="report.pdf")
        assert image_uri.startswith(f"mxc://{SERVER}/") and file_uri.startswith(f"mxc://{SERVER}/")
        assert await bob.download_media(image_uri) == jpeg
        assert await bob.download_media(file_uri) == blob
        # What mautrix fetched is what the authenticated URL serves, with the uploaded metadata.
        url = str(bob.api.get_download_url(file_uri, authenticated=True))
        status, headers, body = await _raw_get(url, bob.api.token)
        assert (status, body == blob) == (200, True)
        assert headers["Content-Type"] == "application/pdf"
        assert headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
        # An unknown ID is a 404 through mautrix as well.
        with pytest.raises(aiohttp.ClientResponseError) as err:
            await bob.download_media(ContentURI(f"mxc://{SERVER}/doesnotexist"))
        assert err.value.status == 404
    finally:
        await alice.api.session.close()
        await bob.api.session.close()


async def test_mautrix_thumbnails_never_upscaled(make_server: Any) -> None:
    """download_thumbnail() of a 500x300 JPEG at each default size: crops exact; 320x240 scales to
    320x192; 640x480 and 800x600 stay at the source's 500x300 (never upscaled); JPEG stays JPEG."""
    srv: TestHomeServer = await make_server("sqlite")
    alice = await _mautrix(srv, "alice")
    try:
        jpeg = make_image(500, 300, "JPEG")
        uri = await alice.upload_media(jpeg, mime_type="image/jpeg", filename="photo.jpg")
        for size in DEFAULT_SIZES:
            url = alice.api.get_download_url(uri, download_type="thumbnail", authenticated=True)
            data = await alice.download_thumbnail(uri, size.width, size.height, size.method)  # type: ignore[arg-type]
            # mautrix returns only the bytes: the Content-Type is read from the same URL directly.
            status, headers, raw = await _raw_get(
                f"{url}?width={size.width}&height={size.height}&method={size.method}", alice.api.token)
            assert status == 200 and raw == data, (size, status)
            check_thumbnail(data, headers["Content-Type"], size, (500, 300), "image/jpeg")
    finally:
        await alice.api.session.close()


async def test_mautrix_async_upload_with_a_waiting_download(make_server: Any, engine: str) -> None:
    """create_mxc(), then a download of the new URI waits on the server while upload_media(mxc=...)
    fills it; the waiting download receives the bytes. mautrix's own async_upload=True also works."""
    srv: TestHomeServer = await make_server(engine)
    alice = await _mautrix(srv, "alice")
    bob = await _mautrix(srv, "bob")
    try:
        created = await alice.create_mxc()
        # (mautrix 0.21 names the expiry field `unused_expired_at`, so it never reads the spec's
        # `unused_expires_at` that hs sends: tests/integration/test_media.py checks that one.)
        assert created.content_uri.startswith(f"mxc://{SERVER}/")
        _, media_id = mxc_parts(created.content_uri)
        # Not uploaded yet: a short wait ends in 504 (M_NOT_YET_UPLOADED).
        with pytest.raises(aiohttp.ClientResponseError) as err:
            await bob.download_media(created.content_uri, timeout_ms=50)
        assert err.value.status == 504

        waiting = asyncio.ensure_future(bob.download_media(created.content_uri, timeout_ms=15_000))
        # The download is parked on the server (hs's media repository waits per media ID).
        await _until(lambda: media_id in srv.hs.media._upload_events)
        assert not waiting.done()
        data = make_image(640, 480, "JPEG")
        # (mautrix reads content_uri from this PUT's answer: hs adds it to the spec's `{}`.)
        returned = await alice.upload_media(data, mime_type="image/jpeg", filename="late.jpg",
                                            mxc=created.content_uri)
        assert returned == created.content_uri
        assert await asyncio.wait_for(waiting, 10) == data

        # mautrix's own asynchronous upload: create, upload in a background task, return at once.
        blob = os.urandom(150 * 1024)
        uri = await alice.upload_media(blob, mime_type="application/octet-stream", async_upload=True)
        assert await bob.download_media(uri, timeout_ms=15_000) == blob
    finally:
        await alice.api.session.close()
        await bob.api.session.close()


# --- both: the media config -------------------------------------------------------------------------


async def test_media_config_through_both_libraries(make_server: Any, tmp_path: Any) -> None:
    srv: TestHomeServer = await make_server("sqlite", max_upload_size="7M")
    assert srv.config.max_upload_size == 7 * 1024 * 1024
    nio_client = await nio_login(srv.base_url, SERVER, "carol", str(tmp_path))
    mau = await _mautrix(srv, "dave")
    try:
        cfg = await nio_client.content_repository_config()
        assert isinstance(cfg, nio.ContentRepositoryConfigResponse), cfg
        assert cfg.upload_size == srv.config.max_upload_size
        # mautrix asks the legacy /_matrix/media/v3/config.
        assert (await mau.get_media_repo_config()).upload_size == srv.config.max_upload_size
    finally:
        await nio_client.close()
        await mau.api.session.close()
