"""Inbound EDUs (typing, receipts, presence, to-device, device list and signing key updates): one
handler per EDU type, registered on the transaction handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hs.federation.transactions import TransactionHandler
    from hs.server import HomeServer


def register_edu_handlers(hs: HomeServer, transactions: TransactionHandler) -> None:
    """Fill `transactions.edu_handlers` (EDU type -> async handler(origin, content))."""
