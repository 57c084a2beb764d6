"""User directory search (client-server spec, "User directory").

The spec asks for at least the users the searcher can see through rooms: those sharing a room with
them, and those joined to rooms with a public join rule or world-readable history. This server
searches exactly those (as Synapse does by default, `search_all_users: false`), matching every word
of the search term against user IDs and global display names, case-insensitively. Searchers find
themselves only as others would (through a public room), not through a private room they are in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.db.stores.user_directory import UserDirectoryStore

if TYPE_CHECKING:
    from hs.server import HomeServer

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_TERM_LENGTH = 256


class UserDirectory:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = UserDirectoryStore(hs.db)

    async def search(self, searcher: str, term: str, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        """{results, limited}: ranked by how well they match, then users sharing a room with the
        searcher, then those with a display name."""
        words = term.lower().split()
        limit = min(max(limit, 0), MAX_LIMIT)
        if not words:
            return {"results": [], "limited": False}
        shared = set(await self.hs.event_store.get_rooms_for_user(searcher, ("join",)))
        open_rooms = await self.store.open_rooms()
        rooms = shared | open_rooms
        # The longest word narrows the query most; the others are checked here.
        rows = await self.store.matching_members(sorted(rooms), max(words, key=len))
        users: dict[str, dict[str, Any]] = {}
        shares: set[str] = set()
        for r in rows:
            if r["user_id"] == searcher and r["room_id"] not in open_rooms:
                # Sharing a private room with oneself makes no one visible: the searcher is found
                # only as anyone else would find them (in a public room), as on Synapse.
                continue
            users[r["user_id"]] = r
            if r["room_id"] in shared:
                shares.add(r["user_id"])
        ranked: list[tuple[tuple[int, int, int, str], dict[str, Any]]] = []
        for user_id, r in users.items():
            name = (r["displayname"] or "").lower()
            haystacks = (user_id.lower(), name)
            if not all(any(w in h for h in haystacks) for w in words):
                continue
            ranked.append(((_match_rank(user_id, name, words), 0 if user_id in shares else 1,
                            0 if r["displayname"] else 1, name or user_id.lower()), r))
        ranked.sort(key=lambda kv: kv[0])
        results = []
        for _, r in ranked[:limit]:
            entry: dict[str, Any] = {"user_id": r["user_id"]}
            if r["displayname"]:
                entry["display_name"] = r["displayname"]
            if r["avatar_url"]:
                entry["avatar_url"] = r["avatar_url"]
            results.append(entry)
        return {"results": results, "limited": len(ranked) > limit}


def _match_rank(user_id: str, name: str, words: list[str]) -> int:
    """0: the term is the whole localpart or name; 1: every word starts a word of either; 2: inside."""
    localpart = user_id[1:].split(":", 1)[0].lower()
    term = " ".join(words)
    if term in (localpart, name):
        return 0
    starts = [localpart, *name.split()]
    if all(any(s.startswith(w) for s in starts) for w in words):
        return 1
    return 2
