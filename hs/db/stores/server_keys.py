"""Other servers' signing keys as fetched (table `server_keys`): what the KeyRing reads back after a
restart or from another worker's fetch, and what the notary endpoints serve."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hs.db.pool import Database, Row


@dataclass(frozen=True)
class StoredServerKey:
    """One key of one server, and the signed response it came in."""

    server_name: str
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int  # the response's valid_until_ts
    expired_ts: int | None  # set for a key the response listed under old_verify_keys
    fetched_ts: int
    from_server: str
    key_json: str  # the response as signed by the server (canonical JSON)


def _row(r: Row) -> StoredServerKey:
    expired = r["expired_ts"]
    return StoredServerKey(str(r["server_name"]), str(r["key_id"]), str(r["verify_key"]), int(r["valid_until_ts"]),
                           None if expired is None else int(expired), int(r["fetched_ts"]), str(r["from_server"]),
                           str(r["key_json"]))


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_keys(self, server_name: str) -> list[StoredServerKey]:
        """Every stored key of `server_name`."""
        rows = await self.db.fetch("SELECT * FROM server_keys WHERE server_name = $1", server_name)
        return [_row(r) for r in rows]

    async def store_keys(self, keys: Iterable[StoredServerKey]) -> None:
        """Insert or refresh keys. A row is replaced only by a response at least as fresh (by its
        valid_until_ts), so a notary's stale cached copy never overwrites a newer direct fetch."""
        rows = [(k.server_name, k.key_id, k.verify_key, k.valid_until_ts, k.expired_ts, k.fetched_ts, k.from_server,
                 k.key_json) for k in keys]
        if not rows:
            return
        await self.db.run_transaction("store_server_keys", lambda conn: conn.executemany(
            "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts,"
            " from_server, key_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (server_name, key_id) DO UPDATE SET verify_key = excluded.verify_key,"
            " valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts,"
            " fetched_ts = excluded.fetched_ts, from_server = excluded.from_server, key_json = excluded.key_json"
            " WHERE excluded.valid_until_ts >= server_keys.valid_until_ts", rows))
