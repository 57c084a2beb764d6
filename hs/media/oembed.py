"""oEmbed (https://oembed.com): asking a site's own API how to preview one of its pages.

Some sites (YouTube, X) serve little OpenGraph to robots but answer oEmbed requests well. Providers
come from a small built-in table (unless `oembed.disable_default_providers`) and from the files named
in `oembed.additional_providers`, in the format of oembed.com's providers.json. A page may also name
its oEmbed document itself (`<link rel="alternate" type="application/json+oembed">`, see
hs/media/html_preview.py).

An oEmbed answer becomes OpenGraph fields: `title` -> og:title (else `author_name`),
`provider_name` -> og:site_name, `thumbnail_url` -> og:image (a photo's `url` when it has no
thumbnail), the text of a rich or video type's `html` -> og:description, and og:url is the URL
previewed. The fetching itself is the caller's (through the SSRF-safe fetcher).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from hs.media.html_preview import MAX_VALUE_CHARS, parse_html

logger = logging.getLogger(__name__)

MAX_EMBED_HTML = 64 * 1024  # characters of a rich or video answer's `html` read for its text

# Built-in providers, in providers.json's shape (a small table, as Synapse ships one).
DEFAULT_PROVIDERS: list[dict[str, Any]] = [
    {
        "provider_name": "YouTube",
        "provider_url": "https://www.youtube.com/",
        "endpoints": [{
            "schemes": ["https://*.youtube.com/watch*", "https://*.youtube.com/v/*", "https://*.youtube.com/shorts/*",
                        "https://youtube.com/watch*", "https://youtube.com/shorts/*", "https://youtu.be/*"],
            "url": "https://www.youtube.com/oembed",
        }],
    },
    {
        "provider_name": "Twitter",
        "provider_url": "https://twitter.com/",
        "endpoints": [{
            "schemes": ["https://twitter.com/*/status/*", "https://*.twitter.com/*/status/*",
                        "https://x.com/*/status/*", "https://*.x.com/*/status/*"],
            "url": "https://publish.twitter.com/oembed",
        }],
    },
]


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """An oEmbed URL scheme (`https://*.youtube.com/watch*`) as a regular expression matched against
    a whole URL. In the host a `*` is one or more name characters (no dots, slashes or `@`, so it
    cannot stretch over another host); elsewhere it is anything."""
    parts = urlsplit(glob)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"oEmbed scheme {glob!r} is not an http(s) URL pattern")
    host = re.escape(parts.netloc).replace(r"\*", "[A-Za-z0-9_-]+")
    rest = glob[len(parts.scheme) + 3 + len(parts.netloc):]
    return re.compile(re.escape(parts.scheme) + "://" + host + re.escape(rest).replace(r"\*", ".*"))


@dataclass(frozen=True)
class Endpoint:
    """One provider endpoint: the URLs it previews and where to ask."""

    patterns: tuple[re.Pattern[str], ...]
    url: str


def load_providers(data: Any) -> list[Endpoint]:
    """Endpoints from providers.json data; an endpoint without schemes (discovery-only) is skipped."""
    if not isinstance(data, list):
        raise ValueError("an oEmbed providers file must hold a JSON list of providers")
    endpoints: list[Endpoint] = []
    for provider in data:
        for endpoint in provider.get("endpoints", []) if isinstance(provider, dict) else []:
            schemes = endpoint.get("schemes") if isinstance(endpoint, dict) else None
            url = endpoint.get("url") if isinstance(endpoint, dict) else None
            if not schemes or not isinstance(url, str):
                continue
            endpoints.append(Endpoint(tuple(glob_to_regex(s) for s in schemes if isinstance(s, str)),
                                      url.replace("{format}", "json")))
    return endpoints


class OEmbedProviders:
    """Which oEmbed endpoint, if any, previews a URL."""

    def __init__(self, *, use_defaults: bool = True, provider_files: Iterable[Path] = ()) -> None:
        self.endpoints: list[Endpoint] = load_providers(DEFAULT_PROVIDERS) if use_defaults else []
        for path in provider_files:
            try:
                self.endpoints.extend(load_providers(json.loads(path.read_text())))
            except (OSError, ValueError) as e:
                raise ValueError(f"oembed.additional_providers: cannot load {path}: {e}") from e

    def request_url(self, url: str) -> str | None:
        """The oEmbed request for ``url`` (its endpoint asked for JSON), or None if no provider has it."""
        for endpoint in self.endpoints:
            if any(p.fullmatch(url) for p in endpoint.patterns):
                return str(URL(endpoint.url).update_query(url=url, format="json"))
        return None


def _text(value: Any) -> str | None:
    return value[:MAX_VALUE_CHARS] if isinstance(value, str) and value.strip() else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and 0 < value < 100_000:
        return int(value)
    if isinstance(value, str) and value.isdigit() and len(value) < 6:
        return int(value)
    return None


def oembed_to_og(body: bytes, url: str) -> dict[str, str | int]:
    """An oEmbed JSON answer about ``url`` as OpenGraph fields; ValueError if it is not oEmbed."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"oEmbed answer is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("oEmbed answer is not a JSON object")
    if data.get("version") not in ("1.0", "1", 1, 1.0):
        raise ValueError(f"unknown oEmbed version {str(data.get('version'))[:20]!r}")
    og: dict[str, str | int] = {"og:url": url}
    title = _text(data.get("title")) or _text(data.get("author_name"))
    if title:
        og["og:title"] = title
    if site := _text(data.get("provider_name")):
        og["og:site_name"] = site
    kind = data.get("type")
    image = _text(data.get("thumbnail_url"))
    width, height = data.get("thumbnail_width"), data.get("thumbnail_height")
    if image is None and kind == "photo":
        image, width, height = _text(data.get("url")), data.get("width"), data.get("height")
    if image:
        og["og:image"] = image
        for key, value in (("og:image:width", _int(width)), ("og:image:height", _int(height))):
            if value is not None:
                og[key] = value
    html = data.get("html") if isinstance(data.get("html"), str) else None
    if kind in ("rich", "video") and html:
        from_html = parse_html(html[:MAX_EMBED_HTML], url).og
        if description := from_html.get("og:description"):
            og["og:description"] = description
        if "og:image" not in og and from_html.get("og:image"):
            og["og:image"] = from_html["og:image"]
    if kind == "video":
        og["og:type"] = "video.other"
    return og
