"""Writers' recorded positions (`stream_positions`): how far each writer of a multi-writer stream has
persisted, written in the same transaction as its rows, so the value is true exactly when it commits."""

from __future__ import annotations

from hs.db.pool import Connection, Database

_UPSERT = (
    "INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ($1, $2, $3)"
    " ON CONFLICT (stream_name, instance_name) DO UPDATE SET position = excluded.position"
    " WHERE stream_positions.position < excluded.position"
)


class StreamPositionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_positions(self, stream: str) -> dict[str, int]:
        """Each writer's recorded position."""
        rows = await self.db.fetch(
            "SELECT instance_name, position FROM stream_positions WHERE stream_name = $1", stream)
        return {r["instance_name"]: int(r["position"]) for r in rows}

    async def record_position(self, stream: str, instance: str, position: int) -> None:
        """Move a writer's position up (never down)."""
        await self.db.execute(_UPSERT, stream, instance, position)

    @staticmethod
    async def record_position_in(c: Connection, stream: str, instance: str, position: int) -> None:
        """`record_position` inside a transaction: true exactly when the transaction's rows commit."""
        await c.execute(_UPSERT, stream, instance, position)
