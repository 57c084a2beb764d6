"""The Pillow side of thumbnails (hs/media/thumbnailer.py), called directly: sizes and methods, the
crop's centre, EXIF orientation, output types, refusals from the header alone (too many pixels, a
decompression bomb, not an image), animated WebP output and its bounds; and the choice among
pre-made thumbnails (hs/media/thumbnails.py's `closest`)."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from hs.db.stores.media_thumbnails import ThumbnailInfo
from hs.media import thumbnailer
from hs.media.thumbnailer import Refused, make_animated, make_thumbnails, probe, scale_size
from hs.media.thumbnails import closest

CONFIGURED = [(32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale")]
MAX_PIXELS = 32 * 1024 * 1024


def _save(img: Image.Image, path: Path, fmt: str, **params: object) -> str:
    img.save(path, fmt, **params)
    return str(path)


def _sizes(made: list[thumbnailer.Made]) -> dict[tuple[int, int, str], tuple[int, int]]:
    """Each thumbnail's (width, height, method) -> the size of the file actually written."""
    out = {}
    for m in made:
        with Image.open(m.path) as img:
            out[(m.width, m.height, m.method)] = img.size
        assert Path(m.path).stat().st_size == m.length
    return out


def _bomb_png(path: Path, width: int = 50000, height: int = 50000) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return str(path)


def test_sizes_and_methods(tmp_path: Path) -> None:
    source = _save(Image.new("RGB", (1000, 500), "white"), tmp_path / "wide.jpg", "JPEG")
    made = make_thumbnails(source, CONFIGURED, str(tmp_path / "out"), MAX_PIXELS)
    # crop: exactly the size asked; scale: within the box, the source's 2:1 aspect kept.
    assert _sizes(made) == {(32, 32, "crop"): (32, 32), (96, 96, "crop"): (96, 96),
                            (320, 160, "scale"): (320, 160), (640, 320, "scale"): (640, 320),
                            (800, 400, "scale"): (800, 400)}
    assert {m.media_type for m in made} == {"image/jpeg"}


def test_scale_never_enlarges_but_crop_does(tmp_path: Path) -> None:
    source = _save(Image.new("RGB", (50, 20), "white"), tmp_path / "small.png", "PNG")
    made = make_thumbnails(source, CONFIGURED, str(tmp_path / "out"), MAX_PIXELS)
    # The three scale boxes all give the image's own size: made once.
    assert _sizes(made) == {(32, 32, "crop"): (32, 32), (96, 96, "crop"): (96, 96), (50, 20, "scale"): (50, 20)}
    assert scale_size(50, 20, 800, 600) == (50, 20)
    assert scale_size(1000, 333, 500, 500) == (500, 166)
    assert scale_size(333, 1000, 500, 500) == (166, 500)


def test_crop_keeps_the_centre(tmp_path: Path) -> None:
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 255, 0), (100, 0, 200, 100))
    img.paste((0, 0, 255), (200, 0, 300, 100))
    source = _save(img, tmp_path / "stripes.png", "PNG")
    [made] = make_thumbnails(source, [(40, 40, "crop")], str(tmp_path / "out"), MAX_PIXELS)
    with Image.open(made.path) as thumb:
        assert thumb.size == (40, 40)
        rgb = thumb.convert("RGB")
        for x in (2, 20, 37):
            r, g, b = rgb.getpixel((x, 20))  # type: ignore[misc]
            assert g > 240 and r < 15 and b < 15


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 200x100 with the top half red; orientation 6 means "rotate 90 degrees clockwise to show".
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 200, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    source = _save(img, tmp_path / "rotated.jpg", "JPEG", exif=exif, quality=95)
    assert probe(source, MAX_PIXELS)[:2] == (100, 200)
    made = make_thumbnails(source, [(800, 600, "scale"), (50, 80, "scale")], str(tmp_path / "out"), MAX_PIXELS)
    assert _sizes(made) == {(100, 200, "scale"): (100, 200), (40, 80, "scale"): (40, 80)}
    with Image.open(made[0].path) as thumb:
        rgb = thumb.convert("RGB")
        # Shown upright, the red (stored top) half is on the right.
        red, blue = rgb.getpixel((90, 100)), rgb.getpixel((10, 100))
        assert isinstance(red, tuple) and isinstance(blue, tuple)
        assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60
        assert 0x0112 not in thumb.getexif()  # viewers must not rotate it again


def test_colour_profile_is_kept(tmp_path: Path) -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = _save(Image.new("RGB", (300, 200), "white"), tmp_path / "icc.jpg", "JPEG", icc_profile=profile)
    for made in make_thumbnails(source, CONFIGURED, str(tmp_path / "out"), MAX_PIXELS):
        with Image.open(made.path) as thumb:
            assert thumb.info.get("icc_profile") == profile


@pytest.mark.parametrize(("img", "fmt", "expected"), [
    (Image.new("RGB", (64, 64)), "JPEG", "image/jpeg"),
    (Image.new("L", (64, 64)), "JPEG", "image/jpeg"),
    (Image.new("RGB", (64, 64)), "PNG", "image/png"),
    (Image.new("RGBA", (64, 64), (1, 2, 3, 100)), "PNG", "image/png"),
    (Image.new("P", (64, 64)), "GIF", "image/png"),
    (Image.new("RGB", (64, 64)), "WEBP", "image/jpeg"),
    (Image.new("RGBA", (64, 64), (1, 2, 3, 100)), "WEBP", "image/png"),
])
def test_output_types(tmp_path: Path, img: Image.Image, fmt: str, expected: str) -> None:
    source = _save(img, tmp_path / f"src.{fmt.lower()}", fmt)
    made = make_thumbnails(source, [(32, 32, "crop")], str(tmp_path / "out"), MAX_PIXELS)
    assert [m.media_type for m in made] == [expected]
    with Image.open(made[0].path) as thumb:
        assert thumb.format == expected.split("/")[1].upper()
        if fmt != "JPEG" and img.mode == "RGBA":
            assert thumb.mode == "RGBA" and thumb.getpixel((5, 5))[3] == 100  # type: ignore[index]


def test_transparent_pixels_do_not_bleed(tmp_path: Path) -> None:
    # Left half opaque red, right half fully transparent green: reduced premultiplied (strip by strip
    # for a large RGBA image), no visible pixel of the thumbnail turns green at the edge.
    img = Image.new("RGBA", (3001, 1500), (0, 255, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 1507, 1500))
    source = _save(img, tmp_path / "half.png", "PNG")
    [made] = make_thumbnails(source, [(100, 100, "scale")], str(tmp_path / "out"), MAX_PIXELS)
    with Image.open(made.path) as thumb:
        assert thumb.size == (100, 50) and thumb.mode == "RGBA"
        pixels = [thumb.getpixel((x, y)) for x in range(100) for y in range(50)]
    assert thumb.getpixel((10, 25)) == (255, 0, 0, 255) and thumb.getpixel((90, 25))[3] == 0  # type: ignore[index]
    visible = [p for p in pixels if isinstance(p, tuple) and p[3] > 8]
    assert visible and all(p[1] < 40 for p in visible)


def test_large_jpeg_is_decoded_reduced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _save(Image.new("RGB", (6000, 4000), "gray"), tmp_path / "big.jpg", "JPEG")
    decoded: list[tuple[int, int]] = []
    reduce = thumbnailer._reduce_and_orient

    def spy(frame: Image.Image, *args: object) -> Image.Image:
        decoded.append(frame.size)
        return reduce(frame, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(thumbnailer, "_reduce_and_orient", spy)
    made = make_thumbnails(source, CONFIGURED, str(tmp_path / "out"), MAX_PIXELS)
    assert _sizes(made)[(800, 533, "scale")] == (800, 533)
    # One decode, at half scale: the smallest DCT scale still twice the 800 px the largest size needs.
    assert decoded == [(3000, 2000)]


def test_too_many_pixels_is_refused_from_the_header(tmp_path: Path) -> None:
    source = _save(Image.new("L", (2000, 1000)), tmp_path / "large.png", "PNG")
    for call in (lambda: probe(source, 1_000_000),
                 lambda: make_thumbnails(source, CONFIGURED, str(tmp_path / "out"), 1_000_000),
                 lambda: make_animated(source, 96, 96, "crop", str(tmp_path / "out"), 1_000_000)):
        with pytest.raises(Refused) as refused:
            call()
        assert refused.value.reason == "too_large"
    assert probe(source, 2_000_000)[:2] == (2000, 1000)


def test_decompression_bomb_is_refused_without_decoding(tmp_path: Path) -> None:
    source = _bomb_png(tmp_path / "bomb.png")
    started = time.monotonic()
    with pytest.raises(Refused) as refused:
        make_thumbnails(source, CONFIGURED, str(tmp_path / "out"), MAX_PIXELS)
    assert refused.value.reason == "too_large"
    with pytest.raises(Refused):
        probe(source, MAX_PIXELS)
    # 2.5 gigapixels decoded would take seconds and gigabytes; the header alone takes milliseconds.
    assert time.monotonic() - started < 1.0
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("max_pixels", [4_000_000, 8_000_000])
def test_pillow_bomb_error_and_warning_are_refusals(tmp_path: Path, max_pixels: int) -> None:
    # Pillow's own check at open (Image.MAX_IMAGE_PIXELS is set to max_image_pixels): an error over
    # twice the limit, a warning (made an error) over it.
    source = _bomb_png(tmp_path / "bomb.png", 3000, 3000)
    with pytest.raises(Refused) as refused:
        probe(source, max_pixels)
    assert refused.value.reason == "too_large"


@pytest.mark.parametrize("content", [b"just text", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"\x89PNG\r\n\x1a\nxx",
                                     b"%PDF-1.4\n"])
def test_not_an_image_is_refused(tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "file"
    source.write_bytes(content)
    with pytest.raises(Refused) as refused:
        make_thumbnails(str(source), CONFIGURED, str(tmp_path / "out"), MAX_PIXELS)
    assert refused.value.reason == "unsupported"


def test_other_formats_are_not_opened(tmp_path: Path) -> None:
    source = _save(Image.new("RGB", (64, 64)), tmp_path / "image.bmp", "BMP")
    with pytest.raises(Refused) as refused:
        make_thumbnails(source, CONFIGURED, str(tmp_path / "out"), MAX_PIXELS)
    assert refused.value.reason == "unsupported"


def test_truncated_image_is_refused(tmp_path: Path) -> None:
    full = _save(Image.effect_noise((400, 300), 50).convert("RGB"), tmp_path / "full.png", "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(full).read_bytes()[:5000])
    with pytest.raises(Refused) as refused:
        make_thumbnails(str(truncated), CONFIGURED, str(tmp_path / "out"), MAX_PIXELS)
    assert refused.value.reason == "unsupported"
    assert not list((tmp_path / "out").iterdir())


def _animated(path: Path, fmt: str, frames: int, size: tuple[int, int] = (120, 80), duration: int = 40) -> str:
    images = [Image.new("RGB", size, (i * 37 % 256, 255 - i * 37 % 256, i * 11 % 256)) for i in range(frames)]
    return _save(images[0], path, fmt, save_all=True, append_images=images[1:], duration=duration, loop=0)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_webp_output(tmp_path: Path, fmt: str) -> None:
    source = _animated(tmp_path / f"anim.{fmt.lower()}", fmt, 6)
    assert probe(source, MAX_PIXELS).animated
    made = make_animated(source, 96, 96, "crop", str(tmp_path / "out"), MAX_PIXELS)
    assert made is not None and made.media_type == "image/webp" and (made.width, made.height) == (96, 96)
    with Image.open(made.path) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (96, 96)
        assert getattr(thumb, "n_frames", 1) == 6
    made = make_animated(source, 320, 240, "scale", str(tmp_path / "out"), MAX_PIXELS)
    assert made is not None and (made.width, made.height) == (120, 80)  # never enlarged


def test_animated_frames_are_bounded(tmp_path: Path) -> None:
    source = _animated(tmp_path / "long.gif", "GIF", 250, (40, 30), duration=20)
    made = make_animated(source, 40, 30, "scale", str(tmp_path / "out"), MAX_PIXELS)
    assert made is not None
    with Image.open(made.path) as thumb:
        frames = getattr(thumb, "n_frames", 1)
        assert 1 < frames <= thumbnailer.ANIMATED_MAX_FRAMES
        total = 0
        for i in range(frames):
            thumb.seek(i)
            thumb.load()
            total += int(thumb.info["duration"])
    assert total == 250 * 20  # frames dropped evenly, their time given to the ones kept


def test_still_images_have_no_animated_thumbnail(tmp_path: Path) -> None:
    source = _save(Image.new("RGB", (100, 100)), tmp_path / "still.gif", "GIF")
    assert not probe(source, MAX_PIXELS).animated
    assert make_animated(source, 32, 32, "crop", str(tmp_path / "out"), MAX_PIXELS) is None
    # A still thumbnail of an animated image is its first frame.
    source = _animated(tmp_path / "anim.gif", "GIF", 3)
    [made] = make_thumbnails(source, [(20, 20, "crop")], str(tmp_path / "out"), MAX_PIXELS)
    with Image.open(made.path) as thumb:
        assert getattr(thumb, "n_frames", 1) == 1 and thumb.format == "PNG"


def _info(width: int, height: int, method: str, length: int = 100) -> ThumbnailInfo:
    return ThumbnailInfo(width, height, method, "image/jpeg", length)


def test_closest_thumbnail() -> None:
    made = [_info(32, 32, "crop"), _info(96, 96, "crop"), _info(320, 160, "scale"), _info(640, 320, "scale"),
            _info(800, 400, "scale")]

    def size(width: int, height: int, method: str) -> tuple[int, int, str] | None:
        found = closest(made, width, height, method)
        return None if found is None else (found.width, found.height, found.method)

    assert size(32, 32, "crop") == (32, 32, "crop")
    assert size(40, 40, "crop") == (96, 96, "crop")
    assert size(200, 200, "crop") == (96, 96, "crop")  # none large enough: the largest
    assert size(320, 240, "scale") == (320, 160, "scale")  # fills the box's width: large enough
    assert size(100, 100, "scale") == (320, 160, "scale")
    assert size(700, 700, "scale") == (800, 400, "scale")
    assert size(2000, 2000, "scale") == (800, 400, "scale")
    # No thumbnail of the asked method: the same choice among the others.
    assert closest(made[2:], 50, 50, "crop") == made[2]
    assert closest([], 50, 50, "crop") is None
