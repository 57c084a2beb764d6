"""Making thumbnails with Pillow: pure functions of a file on disk, run in the worker processes of
hs/media/thumbnails.py (never in the server's event loop: decoding is CPU-bound and a hostile file
could crash the decoder).

Bounded work, whatever the file:

- Only JPEG, PNG (APNG included), GIF and WebP are opened (`Image.open(..., formats=...)`): Pillow's
  other decoders are never reached, and SVG is not an image to Pillow at all.
- The header is read first (`Image.open` is lazy) and an image whose width x height is over
  `max_image_pixels` is refused before any pixel is decoded; Pillow's own decompression-bomb check is
  set to the same limit with its warning turned into an error, so a file declaring 50000x50000 in a
  few bytes is refused at `open` (`Refused("too_large")`).
- One decode per source: a JPEG is decoded at a reduced scale (`draft`, DCT scaling) just large
  enough for the largest thumbnail asked; every size is then made from that one decode, largest
  first, each smaller one from the previous full frame (`reducing_gap` makes the big steps cheap).
- EXIF orientation is applied as `ImageOps.exif_transpose` does (the same orientation -> transpose
  table), but on the reduced image rather than the full decode, which saves a full-size copy.
- Animated thumbnails decode at most `ANIMATED_DECODE_PIXELS` source pixels and keep at most
  `ANIMATED_MAX_FRAMES` frames and `ANIMATED_OUTPUT_PIXELS` output pixels (frames are dropped evenly,
  their durations added to the frames kept).

Methods, as Synapse's: `crop` covers w x h and cuts the centre to exactly w x h (a smaller image is
enlarged); `scale` fits within w x h keeping the aspect ratio and never enlarges.

Output types, as Synapse's: JPEG for JPEG sources (and WebP without alpha), PNG for PNG, GIF and
anything with transparency; animated thumbnails are WebP.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import warnings
from collections.abc import Sequence
from typing import NamedTuple

from PIL import ExifTags, Image, ImageFile

SOURCE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
JPEG_QUALITY = 80
WEBP_QUALITY = 75
# Animated thumbnails: how many source pixels may be decoded (all frames together), and how many
# frames and output pixels (all frames together) the thumbnail may hold.
ANIMATED_DECODE_PIXELS = 128 * 1024 * 1024
ANIMATED_MAX_FRAMES = 100
ANIMATED_OUTPUT_PIXELS = 8 * 1024 * 1024
DEFAULT_FRAME_MS = 100  # what browsers show for a GIF frame without a (usable) duration
ANIMATED_MEDIA_TYPE = "image/webp"
# Box-reduce large images to within this factor of the target before the final LANCZOS pass
# (Pillow's default `reducing_gap` for thumbnails); RGBA is box-reduced this many rows at a time.
REDUCING_GAP = 2.0
STRIP_ROWS = 512

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class Refused(Exception):
    """The image is not thumbnailed: `reason` is "too_large" (over `max_image_pixels`, or a
    decompression bomb) or "unsupported" (not an image of a supported format, or unreadable)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class Header(NamedTuple):
    """What the header says: size as displayed (EXIF orientation applied), format, animation."""

    width: int
    height: int
    format: str
    animated: bool


class Made(NamedTuple):
    """One thumbnail written to a temporary file: the parent moves it into the store."""

    width: int
    height: int
    method: str
    media_type: str
    path: str
    length: int


def init_worker() -> None:
    """Worker process set-up: ^C in the server's terminal is the server's to handle, not ours."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- geometry ---------------------------------------------------------------------------------------------
def scale_size(src_w: int, src_h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """`scale`: the largest size of the source's aspect within box_w x box_h, never larger than the
    source itself."""
    if src_w <= box_w and src_h <= box_h:
        return src_w, src_h
    if box_w * src_h < box_h * src_w:
        return box_w, max(1, round(box_w * src_h / src_w))
    return max(1, round(box_h * src_w / src_h)), box_h


def output_size(src_w: int, src_h: int, width: int, height: int, method: str) -> tuple[int, int]:
    """The size of the thumbnail `method` makes for a width x height request."""
    return (width, height) if method == "crop" else scale_size(src_w, src_h, width, height)


def _factor(src_w: int, src_h: int, width: int, height: int, method: str) -> float:
    """How much of the source's resolution the thumbnail needs (1.0: all of it)."""
    if method == "crop":
        return max(width / src_w, height / src_h)
    out_w, out_h = scale_size(src_w, src_h, width, height)
    return max(out_w / src_w, out_h / src_h)


def _crop_box(src_w: int, src_h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred region of the source with the aspect ratio of width x height, as large as fits."""
    if width * src_h > height * src_w:  # the target is wider: full width, cut top and bottom
        region_h = src_w * height / width
        top = (src_h - region_h) / 2
        return 0.0, top, float(src_w), top + region_h
    region_w = src_h * width / height
    left = (src_w - region_w) / 2
    return left, 0.0, left + region_w, float(src_h)


# -- opening ----------------------------------------------------------------------------------------------
def _open(path: str, max_pixels: int) -> Image.Image:
    """The image, header read and nothing decoded; Refused if it is not one or too large."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        img = Image.open(path, formats=SOURCE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Refused("too_large", str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise Refused("unsupported", str(e)) from None
    width, height = img.size
    if width < 1 or height < 1:
        img.close()
        raise Refused("unsupported", "empty image")
    if width * height > max_pixels:
        img.close()
        raise Refused("too_large", f"{width}x{height} is over {max_pixels} pixels")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a broken EXIF block is no reason to refuse the image
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _displayed_size(img: Image.Image, orientation: int) -> tuple[int, int]:
    width, height = img.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _format(img: Image.Image) -> str:
    """The source format; MPO (camera JPEGs carrying a second picture) is read as the JPEG it starts with."""
    return "JPEG" if img.format == "MPO" else str(img.format)


def _is_animated(img: Image.Image) -> bool:
    if _format(img) == "JPEG":  # an MPO's second frame is another picture, not an animation
        return False
    try:
        return bool(getattr(img, "is_animated", False))
    except (OSError, ValueError, EOFError):
        return False


def probe(path: str, max_pixels: int) -> Header:
    """The header of an image (no pixels decoded); Refused if it would not be thumbnailed."""
    with _open(path, max_pixels) as img:
        orientation = _orientation(img)
        width, height = _displayed_size(img, orientation)
        return Header(width, height, _format(img), _is_animated(img))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _normalised(img: Image.Image, alpha: bool) -> Image.Image:
    """A mode that resizes well and encodes to the output type: RGBA with transparency, else L or RGB."""
    if alpha:
        return img if img.mode == "RGBA" else img.convert("RGBA")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("L" if img.mode == "1" else "RGB")


def _output_type(fmt: str, alpha: bool) -> str:
    if fmt == "JPEG":
        return "image/jpeg"
    if fmt == "WEBP" and not alpha:
        return "image/jpeg"
    return "image/png"


def _write(img: Image.Image, tmp_dir: str, media_type: str, **params: object) -> tuple[str, int]:
    path = os.path.join(tmp_dir, f"{secrets.token_hex(12)}.thumb")
    fmt = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}[media_type]
    if fmt == "JPEG":
        params.setdefault("quality", JPEG_QUALITY)
    try:
        img.save(path, fmt, **params)
        return path, os.path.getsize(path)
    except BaseException:
        _unlink(path)
        raise


def _icc(img: Image.Image) -> dict[str, object]:
    """The source's colour profile, kept so wide-gamut photos keep their colours (a few KB at most;
    EXIF is not copied: orientation is applied and nothing else in it is the thumbnail's)."""
    profile = img.info.get("icc_profile")
    return {"icc_profile": profile} if isinstance(profile, bytes) and 0 < len(profile) <= 64 * 1024 else {}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- still thumbnails -----------------------------------------------------------------------------------
def make_thumbnails(path: str, sizes: Sequence[tuple[int, int, str]], tmp_dir: str, max_pixels: int) -> list[Made]:
    """Every (width, height, method) of `sizes` from one decode of the image at `path`, written to
    `tmp_dir`. Sizes that come out the same (scale boxes larger than a small image) are made once.
    Refused (nothing written) if the image is not thumbnailed."""
    os.makedirs(tmp_dir, exist_ok=True)
    with _open(path, max_pixels) as img:
        orientation = _orientation(img)
        src_w, src_h = _displayed_size(img, orientation)
        fmt = _format(img)
        # (factor, output size, method), largest first; duplicates dropped.
        targets: dict[tuple[int, int, str], float] = {}
        for width, height, method in sizes:
            out = output_size(src_w, src_h, width, height, method)
            targets[(out[0], out[1], method)] = _factor(src_w, src_h, width, height, method)
        if not targets:
            return []
        needed = min(1.0, max(targets.values()))
        if fmt == "JPEG" and needed < 0.5:
            # DCT scaling to at least twice what the largest thumbnail needs (Pillow's own
            # `thumbnail` keeps the same margin before its final resampling).
            raw_w, raw_h = img.size
            img.draft(None, (math.ceil(raw_w * needed * REDUCING_GAP), math.ceil(raw_h * needed * REDUCING_GAP)))
        try:
            alpha = _has_alpha(img)
            frame = _normalised(img, alpha)
            frame.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Refused("too_large", str(e)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise Refused("unsupported", str(e)) from None
        media_type = _output_type(fmt, alpha)
        colours = _icc(img)
        made: list[Made] = []
        try:
            frame = _reduce_and_orient(frame, orientation, src_w, src_h, needed)
            for (out_w, out_h, method), factor in sorted(targets.items(), key=lambda t: -t[1]):
                if method == "crop":
                    box = _crop_box(frame.width, frame.height, out_w, out_h)
                    thumb = frame.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box,
                                         reducing_gap=REDUCING_GAP)
                else:
                    thumb = frame if frame.size == (out_w, out_h) else _downscale(frame, out_w, out_h)
                    if factor <= 1.0:
                        frame = thumb  # the next (smaller) sizes start from this full frame
                temp, length = _write(thumb, tmp_dir, media_type, **colours)
                made.append(Made(out_w, out_h, method, media_type, temp, length))
        except BaseException:
            for m in made:
                _unlink(m.path)
            raise
    return made


def _reduce_and_orient(frame: Image.Image, orientation: int, src_w: int, src_h: int, factor: float) -> Image.Image:
    """The decoded frame at `factor` of the displayed source size (never enlarged), EXIF orientation
    applied after the reduction (cheaper than transposing the full decode)."""
    want_w, want_h = max(1, round(src_w * factor)), max(1, round(src_h * factor))
    if orientation in (5, 6, 7, 8):
        want_w, want_h = want_h, want_w
    if want_w < frame.width and want_h < frame.height:
        frame = _downscale(frame, want_w, want_h)
    method = _TRANSPOSE.get(orientation)
    return frame.transpose(method) if method is not None else frame


def _downscale(frame: Image.Image, width: int, height: int) -> Image.Image:
    """The whole frame at width x height: first box-reduced by an integer factor to within
    `REDUCING_GAP` times the target (fast, and what Pillow's `reducing_gap` does), then LANCZOS.

    Pillow resamples RGBA premultiplied (so transparent pixels' colours do not bleed), converting
    the whole image to do so, and then skips `reducing_gap`: for a large decode that is a second
    full-size copy and a full-size LANCZOS pass. RGBA is therefore box-reduced here a strip at a
    time, each strip premultiplied on its own."""
    factor = int(min(frame.width / width, frame.height / height) / REDUCING_GAP)
    if factor > 1:
        frame = _box_reduce(frame, factor)
    if frame.size == (width, height):
        return frame
    return frame.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def _box_reduce(frame: Image.Image, factor: int) -> Image.Image:
    if frame.mode != "RGBA":
        return frame.reduce(factor)
    width, height = frame.size
    out = Image.new("RGBa", (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, STRIP_ROWS // factor)
    for top in range(0, height, rows):
        strip = frame.crop((0, top, width, min(height, top + rows))).convert("RGBa")
        out.paste(strip.reduce(factor), (0, top // factor))
    return out.convert("RGBA")


# -- animated thumbnails --------------------------------------------------------------------------------
def make_animated(path: str, width: int, height: int, method: str, tmp_dir: str, max_pixels: int) -> Made | None:
    """An animated WebP thumbnail of an animated image (None if the image is not animated), bounded
    in frames decoded and kept. Refused if the image is not thumbnailed."""
    os.makedirs(tmp_dir, exist_ok=True)
    with _open(path, max_pixels) as img:
        if not _is_animated(img):
            return None
        orientation = _orientation(img)
        src_w, src_h = _displayed_size(img, orientation)
        out_w, out_h = output_size(src_w, src_h, width, height, method)
        try:
            n_frames = int(getattr(img, "n_frames", 1))
            decoded = max(1, min(n_frames, ANIMATED_DECODE_PIXELS // (src_w * src_h)))
            kept = max(1, min(decoded, ANIMATED_MAX_FRAMES, ANIMATED_OUTPUT_PIXELS // (out_w * out_h)))
            step = math.ceil(decoded / kept)
            frames: list[Image.Image] = []
            durations: list[int] = []
            for index in range(decoded):
                img.seek(index)
                duration = img.info.get("duration")
                ms = int(duration) if isinstance(duration, (int, float)) and duration > 10 else DEFAULT_FRAME_MS
                if index % step:
                    durations[-1] += ms
                    continue
                frames.append(_animated_frame(img, orientation, out_w, out_h, method))
                durations.append(ms)
            loop = img.info.get("loop", 0)
            colours = _icc(img)
        except (OSError, ValueError, SyntaxError) as e:
            raise Refused("unsupported", str(e)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Refused("too_large", str(e)) from None
    if len(frames) < 2:
        return None
    temp, length = _write(frames[0], tmp_dir, ANIMATED_MEDIA_TYPE, save_all=True, append_images=frames[1:],
                          duration=durations, loop=loop if isinstance(loop, int) else 0, quality=WEBP_QUALITY,
                          method=4, **colours)
    return Made(out_w, out_h, method, ANIMATED_MEDIA_TYPE, temp, length)


def _animated_frame(img: Image.Image, orientation: int, out_w: int, out_h: int, method: str) -> Image.Image:
    """One frame of an animated thumbnail: reduced as a whole first (to the cover size for crop),
    then oriented, then cut and resampled to its exact size."""
    frame = img.convert("RGBA")
    src_w, src_h = _displayed_size(frame, orientation)
    factor = min(1.0, _factor(src_w, src_h, out_w, out_h, method))
    frame = _reduce_and_orient(frame, orientation, src_w, src_h, factor)
    if method == "crop":
        box = _crop_box(frame.width, frame.height, out_w, out_h)
        return frame.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)
    return frame if frame.size == (out_w, out_h) else frame.resize((out_w, out_h), Image.Resampling.LANCZOS)
