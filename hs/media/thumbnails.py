"""Thumbnails of stored images. (Being built: see issue 14; until then no thumbnails are made.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hs.server import HomeServer


class Thumbnails:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def on_stored(self, sha256: str, media_type: str | None) -> None:
        """A file was stored: make the configured thumbnail sizes if it is an image."""
        return None

    async def close(self) -> None:
        return None
