"""The stream registry: the one list of streams.

Everything per-stream is derived from it: which streams a process builds, subscribes to, sets up and
catches up (hs/server.py), the sections of a sync token and their order (hs/streams/tokens.py: a
stream added later is appended, so old tokens still read), which `stream_writers` keys a config may
name and which of them may have several writers (hs/config.py), and which route groups' writes go to
a stream's writer (hs/roles/routes.py). Adding a stream is writing its class and adding it here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hs.streams.account_data import AccountDataStream
from hs.streams.base import Stream
from hs.streams.device_lists import DeviceListsStream
from hs.streams.events import EventsStream
from hs.streams.presence import PresenceStream
from hs.streams.push_rules import PushRulesStream
from hs.streams.receipts import ReceiptsStream
from hs.streams.to_device import ToDeviceStream
from hs.streams.typing import TypingStream

# In sync token order: append new streams at the end.
_STREAMS: list[type[Stream]] = [
    EventsStream,
    TypingStream,
    ReceiptsStream,
    AccountDataStream,
    PresenceStream,
    ToDeviceStream,
    DeviceListsStream,
    PushRulesStream,
]
_names: tuple[str, ...] = tuple(cls.NAME for cls in _STREAMS)


def stream_classes() -> tuple[type[Stream], ...]:
    return tuple(_STREAMS)


def stream_names() -> tuple[str, ...]:
    """Every stream's name, in sync token order."""
    return _names


def is_multi_writer(name: str) -> bool:
    return any(cls.NAME == name and cls.MULTI_WRITER for cls in _STREAMS)


def write_groups() -> dict[str, str]:
    """Route group -> the stream whose writer handles that group's writes."""
    return {group: cls.NAME for cls in _STREAMS for group in cls.WRITE_GROUPS}


@contextmanager
def registered(cls: type[Stream]) -> Iterator[None]:
    """Add a stream for the duration of the block (tests: a stream known only to the registry)."""
    global _names
    _STREAMS.append(cls)
    _names = tuple(c.NAME for c in _STREAMS)
    try:
        yield
    finally:
        _STREAMS.remove(cls)
        _names = tuple(c.NAME for c in _STREAMS)
