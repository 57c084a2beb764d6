"""Helpers for the client-library media tests: test images made with Pillow, the thumbnail sizes hs
makes by default, and the checks a returned thumbnail must pass (Synapse's semantics: crop sizes are
exact, scale sizes fit inside the box keeping the aspect ratio and are never larger than the source)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import nio
from PIL import Image

FORMAT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


@dataclass(frozen=True)
class Size:
    width: int
    height: int
    method: str  # "crop" | "scale"


# Synapse's default `thumbnail_sizes`, which hs copies (hs/config.py DEFAULT_THUMBNAIL_SIZES).
DEFAULT_SIZES = [Size(32, 32, "crop"), Size(96, 96, "crop"), Size(320, 240, "scale"),
                 Size(640, 480, "scale"), Size(800, 600, "scale")]


def make_image(width: int, height: int, fmt: str = "PNG") -> bytes:
    """A deterministic picture (two gradients and a flat channel): not noise, so PNGs stay small."""
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.linear_gradient("L").rotate(90).resize((width, height))
    blue = Image.new("L", (width, height), 128)
    out = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(out, fmt)
    return out.getvalue()


def expected_scale(box: Size, source: tuple[int, int]) -> tuple[int, int]:
    """The largest size inside `box` with the source's aspect ratio, no larger than the source."""
    src_w, src_h = source
    if box.width * src_h < box.height * src_w:
        w, h = box.width, max(box.width * src_h // src_w, 1)
    else:
        w, h = max(box.height * src_w // src_h, 1), box.height
    return min(w, src_w), min(h, src_h)


def check_thumbnail(data: bytes, content_type: str, box: Size, source: tuple[int, int],
                    source_type: str) -> None:
    """Assert `data` is a thumbnail of a `source`-sized image of `source_type` for the `box` request."""
    with Image.open(io.BytesIO(data)) as img:
        fmt, (w, h) = img.format or "", img.size
    assert FORMAT_TYPES.get(fmt) == content_type, (fmt, content_type)
    # Synapse keeps PNG (and GIF) sources' thumbnails as PNG and makes JPEG ones for JPEG sources.
    assert content_type == ("image/jpeg" if source_type == "image/jpeg" else "image/png"), content_type
    if box.method == "crop":
        assert (w, h) == (box.width, box.height), (box, (w, h))
        return
    src_w, src_h = source
    assert w <= box.width and h <= box.height, (box, (w, h))
    assert w <= src_w and h <= src_h, ("upscaled", box, (w, h), source)
    # Same aspect ratio to within a pixel's rounding, and as large as the box (or source) allows.
    assert abs(w * src_h - h * src_w) <= max(src_w, src_h), ("aspect", box, (w, h), source)
    ew, eh = expected_scale(box, source)
    assert abs(w - ew) <= 1 and abs(h - eh) <= 1, ("not the best fit", box, (w, h), (ew, eh))


async def nio_login(base_url: str, server_name: str, name: str, store_path: str) -> nio.AsyncClient:
    """Register `name` through nio, then log in a fresh nio client as that user."""
    reg = nio.AsyncClient(base_url, name, store_path=store_path)
    resp = await reg.register(name, "secret-password", device_name="reg-device")
    assert isinstance(resp, nio.RegisterResponse), resp
    await reg.close()
    client = nio.AsyncClient(base_url, f"@{name}:{server_name}", store_path=store_path)
    login = await client.login("secret-password", device_name="nio")
    assert isinstance(login, nio.LoginResponse), login
    return client


def mxc_parts(uri: str) -> tuple[str, str]:
    """(server name, media ID) of an mxc:// URI."""
    server_name, _, media_id = uri.removeprefix("mxc://").partition("/")
    return server_name, media_id


def events_of(sync: Any, room_id: str, kind: type) -> list[Any]:
    """The timeline events of one nio class in a nio SyncResponse's joined room."""
    room = sync.rooms.join.get(room_id)
    return [e for e in room.timeline.events if isinstance(e, kind)] if room else []
