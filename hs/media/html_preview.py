"""An HTML page -> its OpenGraph description, with the standard library's `html.parser` (no lxml).

What a preview shows, in order of preference:

- title: `og:title`, `twitter:title`, `<title>`, the first `<h1>`/`<h2>`/`<h3>`;
- description: `og:description`, `twitter:description`, `<meta name="description">`, else the page's
  text (its body, without scripts, styles, navigation, headers and footers) cut to ~500 characters
  at a word boundary;
- image: `og:image`, `twitter:image`, an `itemprop="image"` meta, the largest `<img>` with declared
  dimensions over 10x10, the first `<img>`, the page's icon. Relative URLs are made absolute
  against the page's URL; only http(s) images are kept (the caller fetches and stores them).

The page may also name an oEmbed document (`<link rel="alternate" type="application/json+oembed">`).

The work is bounded whatever the page: only the first `MAX_PARSE_CHARS` characters are parsed (fed so
that broken markup cannot make the tokenizer quadratic, see `_feed_bounded`), at most `MAX_OG_TAGS`
tags are kept and each value is cut to `MAX_VALUE_CHARS`.

Charsets follow the HTML standard's order (byte order mark, then the Content-Type header, then a
`<meta charset>` or `http-equiv` in the first 1024 bytes, then an XML declaration), with UTF-8 as
the default and windows-1252 for a body that is not valid UTF-8 and declares nothing.
"""

from __future__ import annotations

import codecs
import logging
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

logger = logging.getLogger(__name__)

MAX_PARSE_CHARS = 1024 * 1024
PARSE_CHUNK = 64 * 1024  # characters fed to the tokenizer at a time
PARSE_SECONDS = 1.0  # of tokenizing a page at most (a safety net: ordinary pages take milliseconds)
MAX_OG_TAGS = 50
MAX_VALUE_CHARS = 2000
MAX_IMAGES = 50
MAX_TEXT_CHARS = 4000  # of page text gathered for a description
DESCRIPTION_MAX = 500
DESCRIPTION_MIN_CUT = 200  # a description is not cut shorter than this at a word boundary

# Text inside these is never part of a description (nor a title fallback).
_SKIP_TEXT = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "video", "audio",
                        "canvas", "picture", "object", "head", "title", "header", "nav", "aside", "footer",
                        "form", "select", "button"})
_HEADINGS = ("h1", "h2", "h3")
# Elements whose end separates text (so "a</p><p>b" reads "a b", not "ab").
_BLOCKS = frozenset({"p", "div", "br", "li", "td", "th", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
                     "article", "blockquote", "pre", "dd", "dt", "main"})
_WHITESPACE = re.compile(r"\s+")
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-zA-Z0-9_:.+-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([a-zA-Z0-9_:.+-]+)["']""", re.I)
# WHATWG's encoding standard treats these labels as windows-1252 (a superset browsers decode them as).
_AS_CP1252 = frozenset({"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "ascii", "us-ascii",
                        "windows-1252", "cp1252", "iso_8859-1"})


# -- charsets -----------------------------------------------------------------------------------------
def _codec(label: str | None) -> str | None:
    """A Python codec for a charset label, or None when Python knows no such charset."""
    if not label:
        return None
    name = label.strip().strip("\"'").lower()
    if name in _AS_CP1252:
        return "cp1252"
    if name in ("utf-16", "utf-16le", "utf-16be"):
        return "utf-8"  # a page in UTF-16 starts with a BOM; a meta saying so is wrong (WHATWG)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def detect_charset(body: bytes, header_charset: str | None) -> str | None:
    """The codec the page declares (BOM, header, meta, XML declaration), or None if it declares none."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                      (codecs.BOM_UTF16_BE, "utf-16")):
        if body.startswith(bom):
            return name
    declared = _codec(header_charset)
    if declared:
        return declared
    head = body[:1024]
    for pattern in (_META_CHARSET, _XML_ENCODING):
        match = pattern.search(head)
        if match and (declared := _codec(match.group(1).decode("ascii", "replace"))):
            return declared
    return None


def decode_html(body: bytes, header_charset: str | None = None) -> str:
    """The page as text (undecodable bytes replaced), per the declared charset or the defaults."""
    declared = detect_charset(body, header_charset)
    if declared:
        return body.decode(declared, errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("cp1252", errors="replace")


# -- parsing ------------------------------------------------------------------------------------------
@dataclass
class HtmlPreview:
    """What a page says about itself: its OpenGraph dict and the oEmbed document it names, if any."""

    og: dict[str, str | int] = field(default_factory=dict)
    oembed_url: str | None = None


class _PageParser(HTMLParser):
    """Gathers, in one pass, what the fallbacks need; every collection is bounded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.twitter: dict[str, str] = {}
        self.meta_description: str | None = None
        self.itemprop_image: str | None = None
        self.title: str | None = None
        self.heading: str | None = None
        self.images: list[tuple[str, int, int]] = []
        self.icon: str | None = None
        self.oembed_url: str | None = None
        self.text: list[str] = []
        self._text_chars = 0
        self._skip_depth = 0
        self._capturing: str | None = None  # "title" or a heading tag, while its text is gathered
        self._captured: list[str] = []
        self.closing = False  # the final `>` is being fed (see _feed_bounded): not the page's text

    # The HTML tokenizer calls these.
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k.lower(): v for k, v in attrs if v is not None}
        if tag == "meta":
            self._meta(values)
        elif tag == "link":
            self._link(values)
        elif tag == "img":
            self._img(values)
        elif tag == "title" and self.title is None and self._capturing is None:
            self._start_capture("title")
        elif tag in _HEADINGS and self.heading is None and self._capturing is None and not self._skip_depth:
            self._start_capture(tag)
        if tag == "body":
            self._skip_depth = 0  # a <head> (or anything) left open does not hide the body's text
        elif tag in _SKIP_TEXT:
            self._skip_depth += 1
        elif tag in _BLOCKS:
            self._add_text(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._capturing:
            text = _clean(" ".join(self._captured))
            if tag == "title":
                self.title = text or None
            else:
                self.heading = text or None
            self._capturing = None
        if tag in _SKIP_TEXT and self._skip_depth:
            self._skip_depth -= 1
        elif tag in _BLOCKS:
            self._add_text(" ")

    def handle_data(self, data: str) -> None:
        if self.closing and data.endswith(">"):
            data = data[:-1]
        if self._capturing is not None:
            if sum(len(c) for c in self._captured) < MAX_VALUE_CHARS:
                self._captured.append(data)
        if not self._skip_depth:
            self._add_text(data)

    # What each tag contributes.
    def _meta(self, values: dict[str, str]) -> None:
        content = values.get("content")
        if content is None:
            return
        key = (values.get("property") or values.get("name") or "").strip()
        lower = key.lower()
        if lower.startswith("og:"):
            if key not in self.og and len(self.og) < MAX_OG_TAGS:
                self.og[key] = content[:MAX_VALUE_CHARS]
        elif lower.startswith("twitter:"):
            if lower not in self.twitter and len(self.twitter) < MAX_OG_TAGS:
                self.twitter[lower] = content[:MAX_VALUE_CHARS]
        elif lower == "description" and self.meta_description is None:
            self.meta_description = content[:MAX_VALUE_CHARS]
        if values.get("itemprop", "").lower() == "image" and self.itemprop_image is None:
            self.itemprop_image = content

    def _link(self, values: dict[str, str]) -> None:
        href = values.get("href")
        if not href:
            return
        rel = values.get("rel", "").lower().split()
        if ("alternate" in rel and values.get("type", "").lower() == "application/json+oembed"
                and self.oembed_url is None):
            self.oembed_url = href
        elif "icon" in rel and self.icon is None:
            self.icon = href

    def _img(self, values: dict[str, str]) -> None:
        src = values.get("src")
        if src and len(self.images) < MAX_IMAGES:
            self.images.append((src, _dimension(values.get("width")), _dimension(values.get("height"))))

    def _start_capture(self, tag: str) -> None:
        self._capturing = tag
        self._captured = []

    def _add_text(self, data: str) -> None:
        if self._text_chars < MAX_TEXT_CHARS:
            self.text.append(data)
            self._text_chars += len(data)


def _dimension(value: str | None) -> int:
    if value is None:
        return 0
    digits = value.strip().removesuffix("px")
    return int(digits) if digits.isdigit() and len(digits) < 6 else 0


def _clean(text: str) -> str:
    """Runs of whitespace as one space, trimmed."""
    return _WHITESPACE.sub(" ", text).strip()


def summarize(text: str, max_chars: int = DESCRIPTION_MAX) -> str:
    """``text`` cut to at most ``max_chars`` characters, at a word boundary when one falls late enough,
    with an ellipsis when cut."""
    text = _clean(text)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars - 1]
    space = cut.rfind(" ")
    if space >= DESCRIPTION_MIN_CUT:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def _absolute_http(base_url: str, ref: str | None) -> str | None:
    """``ref`` made absolute against the page; None unless it is an http(s) URL."""
    if not ref:
        return None
    try:
        url = urljoin(base_url, ref.strip())
        scheme = urlsplit(url).scheme
    except ValueError:
        return None
    return url if scheme in ("http", "https") else None


def _best_image(parser: _PageParser) -> str | None:
    """The largest declared image over 10x10, else the first image, else the icon."""
    sized = [(w * h, src) for src, w, h in parser.images if w > 10 and h > 10]
    if sized:
        return max(sized, key=lambda item: item[0])[1]
    if parser.images:
        return parser.images[0][0]
    return parser.icon


def _feed_bounded(parser: _PageParser, text: str) -> None:
    """Feed the page in chunks, within `PARSE_SECONDS`, then end it with a `>`.

    The standard library's tokenizer is quadratic on some broken markup: at the end of the input it
    scans an unclosed tag (`<a<a<a...`, `</a</a...`) to the end again for every `<` in it (250 KB took
    ~50 s, 500 KB ~5 min). A final `>` closes whatever is open, so that scan succeeds at once and
    the whole rest is consumed in one step. While the chunks are fed an incomplete construct is only
    rescanned once per chunk, and the time budget stops the feeding of a page that is slow anyway.
    """
    deadline = time.monotonic() + PARSE_SECONDS
    try:
        for start in range(0, len(text), PARSE_CHUNK):
            parser.feed(text[start:start + PARSE_CHUNK])
            if time.monotonic() > deadline:
                logger.info("URL preview: parsing a page stopped after %d characters (time budget)",
                            start + PARSE_CHUNK)
                break
        parser.closing = True
        parser.feed(">")
        parser.close()
    except (AssertionError, ValueError):  # the tokenizer gives up on some broken markup; keep what it saw
        pass


def parse_html(text: str, base_url: str) -> HtmlPreview:
    """The OpenGraph dict of a page (already decoded) found at ``base_url``."""
    parser = _PageParser()
    _feed_bounded(parser, text[:MAX_PARSE_CHARS])
    og: dict[str, str | int] = dict(parser.og)
    title = og.get("og:title") or parser.twitter.get("twitter:title") or parser.title or parser.heading
    if title:
        og["og:title"] = _clean(str(title))[:MAX_VALUE_CHARS]
    description = (og.get("og:description") or parser.twitter.get("twitter:description")
                   or parser.meta_description)
    if description:
        og["og:description"] = _clean(str(description))[:MAX_VALUE_CHARS]
    else:
        body_text = summarize("".join(parser.text))
        if body_text:
            og["og:description"] = body_text
    image_ref = (str(og["og:image"]) if og.get("og:image") else None) or parser.twitter.get("twitter:image") \
        or parser.itemprop_image or _best_image(parser)
    image = _absolute_http(base_url, image_ref)
    if image:
        og["og:image"] = image
    else:
        for key in ("og:image", "og:image:width", "og:image:height", "og:image:type"):
            og.pop(key, None)
    return HtmlPreview(og=og, oembed_url=_absolute_http(base_url, parser.oembed_url))
