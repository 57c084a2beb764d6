"""Inbound EDUs (typing, receipts, presence, to-device, device list and signing key updates): one
handler per EDU type, registered on the transaction handler."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hs.events.event import JsonDict

if TYPE_CHECKING:
    from hs.federation.transactions import TransactionHandler
    from hs.server import HomeServer


def register_edu_handlers(hs: HomeServer, transactions: TransactionHandler) -> None:
    """Fill `transactions.edu_handlers` (EDU type -> async handler(origin, content))."""
    _register_e2ee(hs, transactions)


_logger = logging.getLogger(__name__)


# -- m.direct_to_device, m.device_list_update, m.signing_key_update --------------------------------------
def _register_e2ee(hs: HomeServer, transactions: TransactionHandler) -> None:
    """To-device messages and device-list / cross-signing changes: checked and applied by the E2EE
    service (hs/services/e2ee.py), which drops what is not about a user of the origin."""

    async def on_direct_to_device(origin: str, content: JsonDict) -> None:
        if not hs.to_device_stream.is_writer:
            # In a cluster the inbound worker would forward to the to-device writer (not wired yet).
            _logger.warning("m.direct_to_device from %s dropped: this process is not the to-device writer",
                            origin)
            return
        await hs.e2ee.on_direct_to_device(origin, content)

    transactions.edu_handlers["m.direct_to_device"] = on_direct_to_device
    transactions.edu_handlers["m.device_list_update"] = hs.e2ee.on_remote_device_list_update
    transactions.edu_handlers["m.signing_key_update"] = hs.e2ee.on_remote_device_list_update
