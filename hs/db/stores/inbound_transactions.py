"""Answers to other servers' transactions, kept a day so that retries are answered, not re-processed."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Database
from hs.util import json_dumps, json_loads, now_ms

# Synapse keeps received transaction IDs for a day as well.
KEEP_MS = 24 * 3600 * 1000


class InboundTransactionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_prune = 0

    async def get_response(self, origin: str, txn_id: str) -> Any | None:
        raw = await self.db.fetchval(
            "SELECT response_json FROM federation_inbound_transactions WHERE origin = $1 AND txn_id = $2",
            origin, txn_id)
        return None if raw is None else json_loads(raw)

    async def set_response(self, origin: str, txn_id: str, response: Any) -> None:
        now = now_ms()
        await self.db.execute(
            "INSERT INTO federation_inbound_transactions (origin, txn_id, response_json, received_ts)"
            " VALUES ($1,$2,$3,$4) ON CONFLICT (origin, txn_id) DO NOTHING",
            origin, txn_id, json_dumps(response), now)
        if now - self._last_prune > 3600 * 1000:
            self._last_prune = now
            await self.db.execute("DELETE FROM federation_inbound_transactions WHERE received_ts < $1", now - KEEP_MS)
