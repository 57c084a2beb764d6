"""Room IDs and aliases as clients write them: the checks every room endpoint makes before anything
else, answering 400 M_INVALID_PARAM."""

from __future__ import annotations

from hs.errors import invalid_param
from hs.events.auth import is_valid_server_name


def check_room_id(room_id: str) -> None:
    if not room_id.startswith("!") or len(room_id) < 2:
        raise invalid_param(f"'{room_id}' is not a valid room ID")


def parse_alias(alias: str) -> tuple[str, str]:
    """(localpart, server) of a room alias, or 400 M_INVALID_PARAM."""
    localpart, sep, server = alias[1:].partition(":")
    if (not alias.startswith("#") or not sep or not localpart or len(alias.encode()) > 255
            or not is_valid_server_name(server)):
        raise invalid_param("Room alias invalid")
    return localpart, server
