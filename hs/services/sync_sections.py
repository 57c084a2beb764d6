"""The sections of a /sync response, one per stream, behind one small protocol.

A section answers one question: what changed for this user (and device, through this filter) in its
stream between the request's `since` and `upto` tokens. It writes that into the response body and
says whether it added anything, and how far it got when it could not cover the whole range (a capped
batch: the next sync continues from there). `SyncService.sync` asks every section in `SECTIONS`, then
builds `next_batch` from `upto` and the positions the sections reached.

Every stream in the registry (hs/streams/registry.py) either has a section here or only contributes
its position to the token (`TOKEN_ONLY`); `check_sections` says so at start-up, so a new stream cannot
silently go missing from /sync. The same sections are what sliding sync's extensions (to_device, e2ee,
account_data, receipts, typing) will ask with a narrower request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.sync import SyncConfig
    from hs.streams.tokens import StreamToken

JsonDict = dict[str, Any]


@dataclass
class SyncRequest:
    """What every section is asked about: `config` (user, device, filter, `since`, full_state) and the
    upper bound `upto`, taken before anything was read. `joined` is filled in by the rooms section:
    the rooms the user is joined to at `upto`, which the ephemeral sections report on."""

    config: SyncConfig
    upto: StreamToken
    joined: list[str] = field(default_factory=list)
    # Where the response leaves the client: `upto`, and never behind `since` on any stream.
    next_token: StreamToken = field(init=False)

    def __post_init__(self) -> None:
        since = self.config.since
        self.next_token = self.upto if since is None else since.max(self.upto)


@dataclass(frozen=True)
class SectionResult:
    updated: bool
    # The stream position the response covers when it is below `upto` (a capped batch).
    reached: int | None = None


class SyncSection:
    """One stream's part of /sync."""

    STREAM: ClassVar[str]

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        raise NotImplementedError


class RoomsSection(SyncSection):
    """The events stream: joined, invited, knocked and left rooms with their timelines and state."""

    STREAM = "events"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        updated, joined = await self.hs.sync.add_rooms(request.config, request.upto, request.next_token, body)
        request.joined = joined
        return SectionResult(updated)


class AccountDataSection(SyncSection):
    """Global and per-room account data (joined rooms only)."""

    STREAM = "account_data"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        return SectionResult(await self.hs.sync.add_account_data(request.config, request.upto, body,
                                                                 request.joined))


class TypingSection(SyncSection):
    STREAM = "typing"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        return SectionResult(await self.hs.sync.add_typing(request.config, request.upto, body, request.joined))


class PresenceSection(SyncSection):
    STREAM = "presence"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        return SectionResult(await self.hs.presence.add_to_sync(request.config, request.upto, body))


class PushRulesSection(SyncSection):
    STREAM = "push_rules"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        return SectionResult(await self.hs.push_rules.add_to_sync(request.config, request.upto, body))


class ToDeviceSection(SyncSection):
    """The device's to-device messages, at most a batch per response: `reached` is the last one sent."""

    STREAM = "to_device"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        updated, reached = await self.hs.e2ee.add_to_device(request.config, request.upto, body)
        return SectionResult(updated, reached)


class DeviceListsSection(SyncSection):
    """Device-list changes of users the user shares rooms with, and the device's one-time and
    fallback key counts."""

    STREAM = "device_lists"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        return SectionResult(await self.hs.e2ee.add_device_lists(request.config, request.next_token, body))


class ReceiptsSection(SyncSection):
    """Read receipts of joined rooms, and the unread counts of every room entry in the response (so it
    runs after every section that adds room entries)."""

    STREAM = "receipts"

    async def add(self, request: SyncRequest, body: JsonDict) -> SectionResult:
        return SectionResult(await self.hs.receipts.add_to_sync(request.config, request.upto, body,
                                                                request.joined))


# In the order they run: rooms first (they tell the others the joined rooms), receipts after every
# section that adds room entries (they add the unread counts to each).
SECTIONS: tuple[type[SyncSection], ...] = (
    RoomsSection, PresenceSection, AccountDataSection, TypingSection, ReceiptsSection, PushRulesSection,
    ToDeviceSection, DeviceListsSection,
)
# Streams whose position is in sync tokens but whose changes /sync does not report.
TOKEN_ONLY: frozenset[str] = frozenset()


def check_sections(stream_names: tuple[str, ...]) -> list[str]:
    """Problems: registered streams with neither a section nor a place in `TOKEN_ONLY`."""
    covered = {section.STREAM for section in SECTIONS} | TOKEN_ONLY
    return [f"stream {name!r} has no /sync section (hs/services/sync_sections.py)"
            for name in stream_names if name not in covered]
