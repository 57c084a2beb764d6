"""Rows of `media_thumbnails`: which thumbnails exist of a file. Keyed by the SOURCE file's SHA-256,
so every media ID naming the same bytes (local uploads, cached remote copies) shares them. The files
live in the media store under `thumbnail_key(...)` of the same columns."""

from __future__ import annotations

from dataclasses import dataclass

from hs.db.pool import Database


@dataclass(frozen=True)
class ThumbnailInfo:
    """One stored thumbnail: its real size (a `scale` thumbnail of a small image is smaller than the
    box asked for), the method that made it, its type (`image/webp` ones are animated)."""

    width: int
    height: int
    method: str
    media_type: str
    length: int


class MediaThumbnailStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, sha256: str) -> list[ThumbnailInfo]:
        rows = await self.db.fetch(
            "SELECT width, height, method, media_type, media_length FROM media_thumbnails WHERE sha256 = $1",
            sha256)
        return [ThumbnailInfo(int(r["width"]), int(r["height"]), r["method"], r["media_type"],
                              int(r["media_length"])) for r in rows]

    async def add(self, sha256: str, info: ThumbnailInfo) -> None:
        """Record a thumbnail (its file is already in the store); a row made meanwhile by another
        process for the same bytes stands."""
        await self.db.execute(
            "INSERT INTO media_thumbnails (sha256, width, height, method, media_type, media_length)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (sha256, width, height, method, media_type) DO NOTHING",
            sha256, info.width, info.height, info.method, info.media_type, info.length)

    async def delete(self, sha256: str, info: ThumbnailInfo) -> None:
        """Forget one thumbnail (its file is gone from every store)."""
        await self.db.execute(
            "DELETE FROM media_thumbnails WHERE sha256 = $1 AND width = $2 AND height = $3 AND method = $4"
            " AND media_type = $5", sha256, info.width, info.height, info.method, info.media_type)
