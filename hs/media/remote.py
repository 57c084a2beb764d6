"""Media of other servers, fetched over federation and cached. (Being built: see issue 14.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.db.stores.media import MediaInfo
from hs.errors import not_found

if TYPE_CHECKING:
    from hs.server import HomeServer


class RemoteMedia:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def get(self, server_name: str, media_id: str, *, legacy: bool, timeout_ms: int,
                  client_address: str | None) -> MediaInfo:
        """The cached copy of another server's media, fetched first if needed."""
        raise not_found("Remote media is not available yet")
