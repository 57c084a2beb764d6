"""Sync and pagination tokens: opaque to clients, exact for the server.

A sync token carries a position for every stream, so any worker can answer a /sync from any token.
Format: `s<events>_<typing>_<receipts>_...` in the order of the stream registry
(hs/streams/registry.py); streams added later are appended, and a token missing them reads as
position 0, so old tokens stay valid.

A stream with several writers (the events stream, sharded by room over its persisters) has a position
per writer: a writer's position says that every row *that writer* wrote at or below it is persisted,
whatever the other writers are doing, so the rooms of a live writer are served while another writer is
down or slow. Such a section is written `m<minimum>~<writer>.<position>~...`: the minimum over writers,
then each writer that is ahead of it (the writer as a short stable key derived from its instance name).
When every writer is at the minimum the section is the plain number, as in tokens from before
per-writer positions, which therefore still read: every writer at that number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

from hs.streams.registry import stream_names

# Positions are BIGINT columns.
MAX_POSITION = 2 ** 63 - 1
# A token names each writer ahead of the minimum; more than this is not a token we wrote.
MAX_WRITERS_IN_TOKEN = 64
MAX_TOKEN_LENGTH = 4096


class InvalidToken(ValueError):
    pass


@lru_cache(maxsize=1024)
def writer_key(instance_name: str) -> str:
    """A writer's short name in tokens: stable across processes and restarts, free of the token's
    separators whatever the instance is called."""
    return hashlib.sha256(instance_name.encode()).hexdigest()[:8]


def _parse_position(text: str, token: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise InvalidToken(f"invalid stream token {token!r}")
    value = int(text)
    if value > MAX_POSITION:
        raise InvalidToken(f"invalid stream token {token!r}")
    return value


@dataclass(frozen=True, eq=False)
class StreamToken:
    """`positions`: each stream's minimum over its writers. `ahead`: for multi-writer streams, the
    writers (by `writer_key`) whose position is above that minimum; a writer not named is at it.
    Two tokens are equal when they stand at the same positions (a stream not named is at 0)."""

    positions: dict[str, int] = field(default_factory=dict)
    ahead: dict[str, dict[str, int]] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StreamToken) and self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.encode())

    def get(self, stream: str) -> int:
        """The stream's minimum position: everything at or below it is persisted by every writer."""
        return self.positions.get(stream, 0)

    def writer_position(self, stream: str, writer: str) -> int:
        """Where `writer` (an instance name) is in `stream`: its rows at or below it are all persisted."""
        minimum = self.positions.get(stream, 0)
        ahead = self.ahead.get(stream)
        if not ahead:
            return minimum
        return ahead.get(writer_key(writer), minimum)

    def maximum(self, stream: str) -> int:
        """The highest position any writer of the stream has reached in this token."""
        ahead = self.ahead.get(stream)
        return max(ahead.values()) if ahead else self.positions.get(stream, 0)

    def with_position(self, stream: str, pos: int) -> StreamToken:
        """Every writer of `stream` at `pos` (or ahead of it, if it already was)."""
        ahead = {k: p for k, p in self.ahead.get(stream, {}).items() if p > pos}
        return self._with(stream, pos, ahead)

    def with_writer_positions(self, stream: str, positions: Mapping[str, int]) -> StreamToken:
        """`stream` at the given per-writer positions (instance name -> position)."""
        if not positions:
            return self
        minimum = min(positions.values())
        ahead = {writer_key(w): p for w, p in positions.items() if p > minimum}
        return self._with(stream, minimum, ahead)

    def _with(self, stream: str, minimum: int, ahead: dict[str, int]) -> StreamToken:
        new_ahead = dict(self.ahead)
        if ahead:
            new_ahead[stream] = ahead
        else:
            new_ahead.pop(stream, None)
        return replace(self, positions={**self.positions, stream: minimum}, ahead=new_ahead)

    def _combine(self, other: StreamToken, pick: Callable[[int, int], int]) -> StreamToken:
        positions: dict[str, int] = {}
        ahead: dict[str, dict[str, int]] = {}
        for s in stream_names():
            minimum = pick(self.get(s), other.get(s))
            positions[s] = minimum
            mine, theirs = self.ahead.get(s, {}), other.ahead.get(s, {})
            if mine or theirs:
                per_writer = {}
                for key in mine.keys() | theirs.keys():
                    value = pick(mine.get(key, self.get(s)), theirs.get(key, other.get(s)))
                    if value > minimum:
                        per_writer[key] = value
                if per_writer:
                    ahead[s] = per_writer
        return StreamToken(positions, ahead)

    def max(self, other: StreamToken) -> StreamToken:
        """Each stream, and each writer of it, at the later of the two tokens' positions."""
        return self._combine(other, max)

    def min(self, other: StreamToken) -> StreamToken:
        """Each stream, and each writer of it, at the earlier of the two tokens' positions."""
        return self._combine(other, min)

    def is_after(self, other: StreamToken) -> bool:
        """True if any stream, or any writer of one, is ahead of `other`."""
        return any(self.stream_is_after(other, s) for s in stream_names())

    def stream_is_after(self, other: StreamToken, stream: str) -> bool:
        """True if `stream`, or any writer of it, is ahead of `other`."""
        if self.get(stream) > other.get(stream):
            return True
        mine = self.ahead.get(stream)
        if not mine:
            return False
        theirs = other.ahead.get(stream, {})
        return any(p > theirs.get(k, other.get(stream)) for k, p in mine.items())

    def encode(self) -> str:
        parts = []
        for s in stream_names():
            ahead = self.ahead.get(s)
            if ahead:
                writers = "~".join(f"{k}.{p}" for k, p in sorted(ahead.items()))
                parts.append(f"m{self.get(s)}~{writers}")
            else:
                parts.append(str(self.get(s)))
        return "s" + "_".join(parts)

    @classmethod
    def decode(cls, text: str) -> StreamToken:
        if not text.startswith("s") or len(text) > MAX_TOKEN_LENGTH:
            raise InvalidToken(f"invalid stream token {text[:100]!r}")
        sections = text[1:].split("_")
        if len(sections) > len(stream_names()):
            raise InvalidToken(f"invalid stream token {text[:100]!r}")
        positions: dict[str, int] = {}
        ahead: dict[str, dict[str, int]] = {}
        for stream, section in zip(stream_names(), sections, strict=False):
            if not section.startswith("m"):
                positions[stream] = _parse_position(section, text)
                continue
            first, *writers = section[1:].split("~")
            minimum = _parse_position(first, text)
            if not writers or len(writers) > MAX_WRITERS_IN_TOKEN:
                raise InvalidToken(f"invalid stream token {text[:100]!r}")
            per_writer: dict[str, int] = {}
            for item in writers:
                key, dot, pos = item.partition(".")
                if not dot or not key or not key.isascii() or not key.isalnum() or len(key) > 16:
                    raise InvalidToken(f"invalid stream token {text[:100]!r}")
                value = _parse_position(pos, text)
                if value > minimum:
                    per_writer[key] = value
            positions[stream] = minimum
            if per_writer:
                ahead[stream] = per_writer
        return cls(positions, ahead)


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
        if text.startswith("t") and len(text) < 64:
            d, dash, s = text[1:].partition("-")
            # (Backfilled events have negative stream orderings: `t5--3`.)
            digits = s[1:] if s.startswith("-") else s
            if dash and d.isascii() and d.isdigit() and digits.isascii() and digits.isdigit():
                depth, stream = int(d), int(s)
                if depth <= MAX_POSITION and stream <= MAX_POSITION:
                    return cls(depth, stream)
        raise InvalidToken(f"invalid pagination token {text[:100]!r}")
