"""Application services' published room directories: which rooms each service lists for each of its
third-party networks (hs/services/room_directory.py reads them into /publicRooms)."""

from __future__ import annotations

from hs.db.pool import Database


class AppserviceDirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set_published(self, appservice_id: str, network_id: str, room_id: str, published: bool) -> None:
        """List the room in the service's network directory, or take it out (either is idempotent)."""
        if published:
            await self.db.execute(
                "INSERT INTO appservice_room_list (appservice_id, network_id, room_id) VALUES ($1,$2,$3)"
                " ON CONFLICT (appservice_id, network_id, room_id) DO NOTHING",
                appservice_id, network_id, room_id)
        else:
            await self.db.execute(
                "DELETE FROM appservice_room_list WHERE appservice_id = $1 AND network_id = $2 AND room_id = $3",
                appservice_id, network_id, room_id)

    async def get_room_ids(self, appservice_id: str, network_id: str) -> list[str]:
        """The rooms one service lists for one network."""
        rows = await self.db.fetch(
            "SELECT room_id FROM appservice_room_list WHERE appservice_id = $1 AND network_id = $2"
            " ORDER BY room_id", appservice_id, network_id)
        return [r["room_id"] for r in rows]

    async def get_all_room_ids(self) -> list[str]:
        """Every room some service lists for some network."""
        rows = await self.db.fetch("SELECT DISTINCT room_id FROM appservice_room_list ORDER BY room_id")
        return [r["room_id"] for r in rows]
