"""The media repository's background jobs, run by the instance named in
`media_instance_running_background_jobs` (main by default). (Being built: see issue 14.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hs.server import HomeServer


class MediaBackgroundJobs:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
