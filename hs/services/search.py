"""Server-side search (POST /search, the `room_events` category) over the rooms the user is joined to.

Matching: every word of the search term must begin a word of the searched key (`content.body` of
messages, `content.name` / `content.topic` of room names and topics), case-insensitively. Ranking:
how many times the term's words occur, then newest first (`order_by: rank`, the default), or newest
first (`recent`). Encrypted rooms cannot be searched by a server; their messages are ciphertext.

There is no full-text index: candidates are the rooms' events of the searched types whose stored JSON
contains every word (a database LIKE), newest first, at most SCAN_LIMIT of them per request, then
matched exactly here. That keeps the send path free of index upkeep and suits a small server; a large
one would want PostgreSQL's full-text search behind the same interface.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from hs.api.params import body_bool, body_enum, body_int, body_object
from hs.db.stores.search import SearchStore
from hs.errors import bad_json
from hs.events.event import Event
from hs.services.room_history import EventFilter
from hs.services.serialize import serialize_events

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

KEYS = {"content.body": "m.room.message", "content.name": "m.room.name", "content.topic": "m.room.topic"}
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_TERM_LENGTH = 1000
SCAN_LIMIT = 2000
MAX_CONTEXT = 20
_WORD = re.compile(r"\w+", re.UNICODE)


def term_words(term: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(term)]


def match_rank(value: Any, words: list[str]) -> int:
    """How many words of `value` the term's words begin (0 unless every term word begins one)."""
    if not isinstance(value, str) or not words:
        return 0
    found = [w.lower() for w in _WORD.findall(value)]
    hits = [sum(1 for f in found if f.startswith(w)) for w in words]
    return sum(hits) if all(hits) else 0


def searched_value(ev: Event) -> Any:
    key = {"m.room.message": "body", "m.room.name": "name", "m.room.topic": "topic"}.get(ev.type)
    return ev.content.get(key) if key is not None else None


class SearchService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = SearchStore(hs.db)

    async def search(self, requester: Requester, body: dict[str, Any], offset: int) -> dict[str, Any]:
        """`offset`: how many results earlier pages gave (the `next_batch` token)."""
        categories = body_object(body, "search_categories")
        if categories is None:
            raise bad_json("Missing 'search_categories'")
        criteria = body_object(categories, "room_events")
        if criteria is None:
            return {"search_categories": {}}
        return {"search_categories": {"room_events": await self._room_events(requester, criteria, offset)}}

    async def _room_events(self, requester: Requester, criteria: dict[str, Any], offset: int) -> dict[str, Any]:
        term = criteria.get("search_term")
        if not isinstance(term, str) or not term.strip():
            raise bad_json("'search_term' must be a non-empty string")
        if len(term) > MAX_TERM_LENGTH:
            raise bad_json(f"'search_term' is longer than {MAX_TERM_LENGTH} characters")
        keys = criteria.get("keys", list(KEYS))
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k in KEYS for k in keys):
            raise bad_json(f"'keys' must be a list of {', '.join(KEYS)}")
        order_by = body_enum(criteria, "order_by", ("rank", "recent"), "rank", where="room_events")
        filt = EventFilter.parse(criteria.get("filter"))
        limit = min(filt.limit or DEFAULT_LIMIT, MAX_LIMIT)
        context = body_object(criteria, "event_context")
        if context is not None:
            context = self._context_spec(context)
        include_state = body_bool(criteria, "include_state", False, where="room_events")
        groupings = body_object(criteria, "groupings")

        user_id = requester.user_id
        joined = await self.hs.event_store.get_rooms_for_user(user_id, ("join",))
        rooms = sorted(r for r in joined if filt.allows_room(r))
        words = term_words(term)
        matches = await self._matches(user_id, rooms, [KEYS[k] for k in keys], words, filt)
        if order_by == "rank":
            matches.sort(key=lambda m: (-m[0], -(m[1].internal.stream_ordering or 0)))
        page = matches[offset:offset + limit]
        device = requester.device_id
        results = []
        for (rank, ev), serialized in zip(page, await serialize_events(self.hs, [ev for _, ev in page], device),
                                          strict=True):
            result: dict[str, Any] = {"rank": float(rank), "result": serialized}
            if context is not None:
                result["context"] = await self._context(requester, ev, context)
            results.append(result)
        out: dict[str, Any] = {"count": len(matches), "highlights": words, "results": results}
        if offset + limit < len(matches):
            out["next_batch"] = str(offset + limit)
        if include_state:
            out["state"] = {}
            for room_id in sorted({ev.room_id for _, ev in page}):
                found = await self.hs.event_store.get_current_state_events(room_id)
                out["state"][room_id] = await serialize_events(self.hs, list(found.values()))
        if groupings is not None and isinstance(groupings.get("group_by"), list):
            out["groups"] = self._groups(groupings["group_by"], page)
        return out

    async def _matches(self, user_id: str, rooms: list[str], types: list[str], words: list[str],
                       filt: EventFilter) -> list[tuple[int, Event]]:
        if not rooms or not words:
            return []
        event_ids = await self.store.candidate_event_ids(rooms, types, words, SCAN_LIMIT)
        found = await self.hs.event_store.get_events(event_ids)
        candidates = [found[e] for e in event_ids if e in found]
        candidates = [ev for ev in candidates if filt.matches(ev) and match_rank(searched_value(ev), words)]
        visible = await self.hs.visibility.filter_events_for_user(user_id, candidates)
        return [(match_rank(searched_value(ev), words), ev) for ev in visible]

    @staticmethod
    def _context_spec(spec: dict[str, Any]) -> dict[str, Any]:
        """`event_context` checked, its limits clamped to MAX_CONTEXT."""
        return {name: body_int(spec, name, 5, maximum=MAX_CONTEXT, clamp=True, where="event_context")
                for name in ("before_limit", "after_limit")} | {
            "include_profile": body_bool(spec, "include_profile", False, where="event_context")}

    async def _context(self, requester: Requester, ev: Event, spec: dict[str, Any]) -> dict[str, Any]:
        context = await self.hs.room_history.context_around(requester, ev, spec["before_limit"], spec["after_limit"])
        if spec["include_profile"]:
            profiles: dict[str, Any] = {}
            state = await self.hs.event_store.get_state_events_for_group(
                ev.internal.state_group_after, [("m.room.member", None)])
            senders = {ev.sender, *(e["sender"] for e in context["events_before"] + context["events_after"])}
            for sender in senders:
                member = state.get(("m.room.member", sender))
                if member is not None:
                    profiles[sender] = {k: member.content[k] for k in ("displayname", "avatar_url")
                                        if isinstance(member.content.get(k), str)}
            context["profile_info"] = profiles
        return context

    @staticmethod
    def _groups(group_by: list[Any], page: list[tuple[int, Event]]) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        for entry in group_by:
            key = entry.get("key") if isinstance(entry, dict) else None
            if key not in ("room_id", "sender"):
                continue
            buckets: dict[str, dict[str, Any]] = {}
            for _, ev in page:
                value = ev.room_id if key == "room_id" else ev.sender
                bucket = buckets.setdefault(value, {"results": [], "order": len(buckets) + 1})
                bucket["results"].append(ev.event_id)
            groups[key] = buckets
        return groups
