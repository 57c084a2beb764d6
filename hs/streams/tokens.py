"""Sync and pagination tokens: opaque to clients, exact for the server.

A sync token carries a position for every stream, so any worker can answer a /sync from any token.
Format: `s<events>_<typing>_<receipts>_...` in the order of `SYNC_STREAMS`; streams added later are
appended, and a token missing them reads as position 0, so old tokens stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

SYNC_STREAMS = ("events", "typing", "receipts", "account_data", "presence", "to_device", "device_lists",
                "push_rules")


class InvalidToken(ValueError):
    pass


@dataclass(frozen=True)
class StreamToken:
    positions: dict[str, int] = field(default_factory=dict)

    def get(self, stream: str) -> int:
        return self.positions.get(stream, 0)

    def with_position(self, stream: str, pos: int) -> StreamToken:
        return replace(self, positions={**self.positions, stream: pos})

    def encode(self) -> str:
        return "s" + "_".join(str(self.get(s)) for s in SYNC_STREAMS)

    @classmethod
    def decode(cls, text: str) -> StreamToken:
        if not text.startswith("s"):
            raise InvalidToken(f"invalid stream token {text!r}")
        try:
            values = [int(p) for p in text[1:].split("_")]
        except ValueError:
            raise InvalidToken(f"invalid stream token {text!r}") from None
        if not values or len(values) > len(SYNC_STREAMS) or any(v < 0 for v in values):
            raise InvalidToken(f"invalid stream token {text!r}")
        return cls(dict(zip(SYNC_STREAMS, values, strict=False)))

    def is_after(self, other: StreamToken) -> bool:
        """True if any stream here is ahead of `other`."""
        return any(self.get(s) > other.get(s) for s in SYNC_STREAMS)

    def max(self, other: StreamToken) -> StreamToken:
        return StreamToken({s: max(self.get(s), other.get(s)) for s in SYNC_STREAMS})


@dataclass(frozen=True, order=True)
class TopologicalToken:
    """A point in a room's timeline for /messages: (depth, stream ordering), encoded `t<depth>-<stream>`.

    /messages also accepts sync tokens (`s...`), meaning "the live end at that stream position".
    """

    depth: int
    stream: int

    def encode(self) -> str:
        return f"t{self.depth}-{self.stream}"

    @classmethod
    def decode(cls, text: str) -> TopologicalToken:
        try:
            if text.startswith("t"):
                d, s = text[1:].split("-", 1)
                return cls(int(d), int(s))
        except ValueError:
            pass
        raise InvalidToken(f"invalid pagination token {text!r}")
