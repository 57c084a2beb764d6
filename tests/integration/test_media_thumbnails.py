"""Thumbnails over real HTTP: the configured sizes made at upload (dimensions and types), the choice
among them, dynamic thumbnails, images refused as too large (40 megapixels, a decompression bomb)
while the server stays healthy, animated WebP thumbnails, the legacy endpoint's rules, a restart, and
a worker process dying."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import zlib
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson
import pytest
from PIL import Image

from tests.harness import Client, TestHomeServer, user
from tests.media_http import media_request, upload_media

CONFIGURED = [(32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale")]


# -- images -----------------------------------------------------------------------------------------------
def _jpeg(width: int, height: int) -> bytes:
    img = Image.new("RGB", (width, height), (30, 120, 200))
    img.paste((250, 200, 0), (width // 4, height // 4, width // 2, height // 2))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def _png_alpha(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (255, 0, 0, 128)).save(out, "PNG")
    return out.getvalue()


def _gif(frames: int = 8) -> bytes:
    images = [Image.new("RGB", (120, 80), (i * 30 % 256, 40, 255 - i * 30 % 256)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _grey_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A single-colour 8-bit grey PNG made without holding its pixels; with `rows`, only that many
    rows of data follow the header (a decompression bomb declares a huge size in a few bytes)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))


# -- HTTP -------------------------------------------------------------------------------------------------
async def _upload(srv: TestHomeServer, client: Client, data: bytes, content_type: str) -> str:
    """Upload; the URI's `server/mediaId` part."""
    return (await upload_media(srv, client, data, content_type)).removeprefix("mxc://")


async def _thumb(srv: TestHomeServer, client: Client | None, media: str, width: int, height: int,
                 method: str | None = "scale", legacy: bool = False, **extra: str,
                 ) -> tuple[int, dict[str, str], bytes]:
    params = {"width": str(width), "height": str(height), **extra}
    if method is not None:
        params["method"] = method
    prefix = "/_matrix/media/v3" if legacy else "/_matrix/client/v1/media"
    return await media_request(srv, "GET", f"{prefix}/thumbnail/{media}", client.token if client else None, params=params)


async def _image(srv: TestHomeServer, client: Client, media: str, width: int, height: int, method: str = "scale",
                 **extra: str) -> tuple[str, Image.Image]:
    status, headers, body = await _thumb(srv, client, media, width, height, method, False, **extra)
    assert status == 200, body
    image = Image.open(io.BytesIO(body))
    return headers["Content-Type"], image


def _errcode(body: bytes) -> str:
    return str(orjson.loads(body)["errcode"])


async def _rows(srv: TestHomeServer) -> list[tuple[int, int, str, str]]:
    rows = await srv.hs.db.fetch("SELECT width, height, method, media_type FROM media_thumbnails")
    return sorted((r["width"], r["height"], r["method"], r["media_type"]) for r in rows)


# -- tests ------------------------------------------------------------------------------------------------
async def test_configured_sizes_survive_a_restart(make_server: Any, engine: str) -> None:
    srv = await make_server(engine)
    alice = await user(srv, "alice")
    media = await _upload(srv, alice, _jpeg(1600, 1200), "image/jpeg")
    # Made at upload, before the upload was answered.
    assert await _rows(srv) == sorted((w, h, m, "image/jpeg") for w, h, m in CONFIGURED)
    for width, height, method in CONFIGURED:
        status, headers, body = await _thumb(srv, alice, media, width, height, method)
        assert status == 200, body
        assert headers["Content-Type"] == "image/jpeg"
        assert headers["Content-Disposition"] == 'inline; filename="thumbnail.jpeg"'
        assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        assert Image.open(io.BytesIO(body)).size == (width, height)
    # Not dynamic: the smallest pre-made one at least as large, else the largest.
    assert (await _image(srv, alice, media, 100, 100))[1].size == (320, 240)
    assert (await _image(srv, alice, media, 2000, 2000))[1].size == (800, 600)
    assert (await _image(srv, alice, media, 50, 50, "crop"))[1].size == (96, 96)
    assert (await _image(srv, alice, media, 500, 500, "crop"))[1].size == (96, 96)
    # method defaults to scale
    status, _, body = await _thumb(srv, alice, media, 640, 480, None)
    assert status == 200 and Image.open(io.BytesIO(body)).size == (640, 480)

    await srv.restart()
    status, headers, body = await _thumb(srv, alice, media, 96, 96, "crop")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (96, 96)
    assert srv.hs.media_thumbnails._pool is None  # served from the rows and files: nothing was made


async def test_scale_never_enlarges_and_alpha_is_png(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    media = await _upload(srv, alice, _png_alpha(200, 100), "image/png")
    # The three scale boxes all hold 200x100 whole: one thumbnail, the image's own size.
    assert await _rows(srv) == [(32, 32, "crop", "image/png"), (96, 96, "crop", "image/png"),
                                (200, 100, "scale", "image/png")]
    content_type, image = await _image(srv, alice, media, 800, 600)
    assert content_type == "image/png" and image.size == (200, 100) and image.mode == "RGBA"
    assert image.getpixel((10, 10))[3] == 128  # type: ignore[index]
    content_type, image = await _image(srv, alice, media, 96, 96, "crop")
    assert content_type == "image/png" and image.size == (96, 96)


async def test_dynamic_thumbnails(make_server: Any, engine: str) -> None:
    srv = await make_server(engine, dynamic_thumbnails=True)
    alice = await user(srv, "alice")
    media = await _upload(srv, alice, _jpeg(1200, 900), "image/jpeg")
    assert (await _image(srv, alice, media, 100, 100))[1].size == (100, 75)
    assert (await _image(srv, alice, media, 50, 40, "crop"))[1].size == (50, 40)
    # Asking the size of a pre-made one makes nothing new.
    before = len(await _rows(srv))
    assert (await _image(srv, alice, media, 320, 240))[1].size == (320, 240)
    assert len(await _rows(srv)) == before
    # Concurrent requests for one new size: made once.
    results = await asyncio.gather(*(_image(srv, alice, media, 123, 77, "crop") for _ in range(6)))
    assert {image.size for _, image in results} == {(123, 77)}
    assert [r for r in await _rows(srv) if r[:2] == (123, 77)] == [(123, 77, "crop", "image/jpeg")]
    # Beyond the size cap: the closest pre-made one.
    assert (await _image(srv, alice, media, 3000, 3000))[1].size == (800, 600)
    # At most 20 dynamic ones per file; then the closest pre-made one.
    made = len(await _rows(srv)) - len(CONFIGURED)
    for i in range(20 - made):
        assert (await _image(srv, alice, media, 33 + i, 33 + i, "crop"))[1].size == (33 + i, 33 + i)
    assert len(await _rows(srv)) == len(CONFIGURED) + 20
    assert (await _image(srv, alice, media, 60, 60, "crop"))[1].size == (96, 96)


async def test_too_large_images_and_bombs(make_server: Any, engine: str) -> None:
    srv = await make_server(engine, dynamic_thumbnails=True)
    alice = await user(srv, "alice")
    big = _grey_png(8000, 5000)  # 40 megapixels over the default max_image_pixels (32M)
    assert len(big) < 200_000
    bomb = _grey_png(50000, 50000, rows=4)
    for data in (big, bomb):
        media = await _upload(srv, alice, data, "image/png")  # the upload itself stands
        status, _, body = await media_request(srv, "GET", f"/_matrix/client/v1/media/download/{media}", alice.token)
        assert status == 200 and body == data
        for width, height, method in ((96, 96, "crop"), (320, 240, "scale"), (123, 45, "scale")):
            status, _, body = await _thumb(srv, alice, media, width, height, method)
            assert status == 413 and _errcode(body) == "M_TOO_LARGE", body
        status, _, body = await _thumb(srv, alice, media, 96, 96, "crop", animated="true")
        assert status == 413
    assert await _rows(srv) == []
    # The server (and its workers) still thumbnail other images.
    media = await _upload(srv, alice, _jpeg(400, 300), "image/jpeg")
    assert (await _image(srv, alice, media, 96, 96, "crop"))[1].size == (96, 96)


async def test_max_image_pixels_is_configurable(make_server: Any) -> None:
    srv = await make_server("sqlite", max_image_pixels=100 * 100)
    alice = await user(srv, "alice")
    small = await _upload(srv, alice, _jpeg(100, 100), "image/jpeg")
    large = await _upload(srv, alice, _jpeg(101, 100), "image/jpeg")
    assert (await _image(srv, alice, small, 32, 32, "crop"))[1].size == (32, 32)
    status, _, body = await _thumb(srv, alice, large, 32, 32, "crop")
    assert status == 413 and _errcode(body) == "M_TOO_LARGE"


async def test_not_an_image(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    text = await _upload(srv, alice, b"hello", "text/plain")
    fake = await _upload(srv, alice, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/png")
    svg = await _upload(srv, alice, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")
    for media in (text, fake, svg):
        status, _, body = await _thumb(srv, alice, media, 96, 96, "crop")
        assert status == 400 and _errcode(body) == "M_UNKNOWN", body
    status, _, body = await _thumb(srv, alice, f"{srv.config.server_name}/nope", 96, 96, "crop")
    assert status == 404 and _errcode(body) == "M_NOT_FOUND"


async def test_parameters(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    media = await _upload(srv, alice, _jpeg(300, 200), "image/jpeg")
    url = f"/_matrix/client/v1/media/thumbnail/{media}"
    for params, errcode in (({"height": "32"}, "M_MISSING_PARAM"), ({"width": "32"}, "M_MISSING_PARAM"),
                            ({"width": "0", "height": "32"}, "M_INVALID_PARAM"),
                            ({"width": "-5", "height": "32"}, "M_INVALID_PARAM"),
                            ({"width": "abc", "height": "32"}, "M_INVALID_PARAM"),
                            ({"width": "32", "height": "32", "method": "stretch"}, "M_INVALID_PARAM"),
                            ({"width": "32", "height": "32", "animated": "maybe"}, "M_INVALID_PARAM")):
        status, _, body = await media_request(srv, "GET", url, alice.token, params=params)
        assert status == 400 and _errcode(body) == errcode, (params, body)
    # Huge sizes are taken as the largest there is.
    status, _, body = await media_request(srv, "GET", url, alice.token, params={"width": "99999999999", "height": "9"})
    assert status == 200 and Image.open(io.BytesIO(body)).size == (300, 200)


async def test_animated_thumbnails(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    media = await _upload(srv, alice, _gif(8), "image/gif")
    content_type, image = await _image(srv, alice, media, 96, 96, "crop", animated="true")
    assert content_type == "image/webp" and image.size == (96, 96)
    assert getattr(image, "n_frames", 1) == 8
    content_type, image = await _image(srv, alice, media, 320, 240, animated="true")
    assert content_type == "image/webp" and image.size == (120, 80) and getattr(image, "n_frames", 1) == 8
    assert [r for r in await _rows(srv) if r[3] == "image/webp"] == [(96, 96, "crop", "image/webp"),
                                                                     (120, 80, "scale", "image/webp")]
    # Served from the stored one the second time.
    content_type, image = await _image(srv, alice, media, 96, 96, "crop", animated="true")
    assert content_type == "image/webp" and getattr(image, "n_frames", 1) == 8
    assert len(await _rows(srv)) == 5
    # Without animated=true (or with false): the still PNG.
    for extra in ({}, {"animated": "false"}):
        content_type, image = await _image(srv, alice, media, 96, 96, "crop", **extra)
        assert content_type == "image/png" and getattr(image, "n_frames", 1) == 1
    # A still image asked for animated: the still thumbnail.
    still = await _upload(srv, alice, _jpeg(300, 200), "image/jpeg")
    content_type, _ = await _image(srv, alice, still, 96, 96, "crop", animated="true")
    assert content_type == "image/jpeg"


async def test_legacy_endpoint(make_server: Any) -> None:
    srv = await make_server("sqlite", enable_authenticated_media=False)
    alice = await user(srv, "alice")
    old = await _upload(srv, alice, _jpeg(300, 200), "image/jpeg")
    status, headers, body = await _thumb(srv, None, old, 96, 96, "crop", legacy=True)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (96, 96)
    srv.hs.config.enable_authenticated_media = True
    new = await _upload(srv, alice, _jpeg(301, 200), "image/jpeg")
    status, _, body = await _thumb(srv, None, new, 96, 96, "crop", legacy=True)
    assert status == 404 and _errcode(body) == "M_NOT_FOUND"
    # The authenticated endpoint needs a token, and serves both.
    status, _, body = await _thumb(srv, None, new, 96, 96, "crop")
    assert status == 401 and _errcode(body) == "M_MISSING_TOKEN"
    for media in (old, new):
        assert (await _image(srv, alice, media, 96, 96, "crop"))[1].size == (96, 96)


async def test_a_dead_worker_does_not_break_later_uploads(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    thumbnails = srv.hs.media_thumbnails
    with pytest.raises(BrokenProcessPool):
        await thumbnails._run(os._exit, 3)  # kills a worker on each of its two tries
    media = await _upload(srv, alice, _jpeg(300, 200), "image/jpeg")
    assert len(await _rows(srv)) == 3  # 32, 96 crops; the scale boxes all give 300x200
    assert (await _image(srv, alice, media, 96, 96, "crop"))[1].size == (96, 96)


async def test_missing_thumbnails_are_made_again(make_server: Any) -> None:
    srv = await make_server("sqlite")
    alice = await user(srv, "alice")
    media = await _upload(srv, alice, _jpeg(640, 480), "image/jpeg")
    root = srv.hs.config.resolve_path(srv.hs.config.media_store_path) / "thumbnails"
    for path in [p for p in root.rglob("*") if p.is_file()]:
        path.unlink()
    await srv.hs.db.execute("DELETE FROM media_thumbnails WHERE width = 96")
    # A row without its file is forgotten; a file without rows gets its sizes made again.
    assert (await _image(srv, alice, media, 96, 96, "crop"))[1].size == (96, 96)
    assert (await _image(srv, alice, media, 320, 240))[1].size == (320, 240)
