"""Pushers: push notifications to a user's devices through their push gateways (HTTP pushers).

A client registers a pusher with POST /pushers/set (app ID, pushkey, gateway URL). The instance with
the `pusher` duty (`start_pushers` / `pusher_instances`, as in Synapse) follows the stored
notifications (`event_notifications`, written as events are persisted), and for each notified user
with pushers POSTs the notification to each pusher's gateway (`/_matrix/push/v1/notify`, the Push
Gateway API). Each pusher remembers the position of the last notification it delivered, so a restart
goes on from there; a failing gateway is retried with growing pauses, and after a day of failures its
oldest notification is given up. Pushkeys a gateway rejects lose their pusher.

With several `pusher_instances`, users are sharded across them by a hash of their user ID, as in
Synapse (`hs/roles/duties.py`, `pusher_instance_for`): every instance reads the same notifications,
and each delivers only to the pushers of its own users.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from hs.db.stores.pushers import PusherKey, PusherStore, pusher_key
from hs.errors import bad_json, invalid_param, missing_param
from hs.events.event import Event
from hs.metrics import track_pusher_pool
from hs.roles.duties import pusher_instance_for, pusher_instances
from hs.util import wait_set_or_timeout

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_PUSHKEY_BYTES = 512
MAX_APP_ID_LENGTH = 64
MAX_FIELD_LENGTH = 512
# Event types whose notifications wake a phone at once (as Synapse sends them: "high" priority).
HIGH_PRIORITY_TYPES = ("m.room.encrypted",)


# -- validation (POST /pushers/set) ----------------------------------------------------------------------
def parse_pusher_request(body: JsonDict) -> tuple[JsonDict | None, str, str, bool]:
    """(pusher to store, or None to delete; app_id; pushkey; append) from a /pushers/set body."""
    for key in ("app_id", "pushkey"):
        if key not in body:
            raise missing_param(f"Missing '{key}'")
        if not isinstance(body[key], str) or not body[key]:
            raise bad_json(f"'{key}' must be a non-empty string")
    if "kind" not in body:
        raise missing_param("Missing 'kind'")
    app_id, pushkey, kind = body["app_id"], body["pushkey"], body["kind"]
    if len(app_id) > MAX_APP_ID_LENGTH:
        raise invalid_param(f"'app_id' is longer than {MAX_APP_ID_LENGTH} characters")
    if len(pushkey.encode()) > MAX_PUSHKEY_BYTES:
        raise invalid_param(f"'pushkey' is longer than {MAX_PUSHKEY_BYTES} bytes")
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise bad_json("'append' must be a boolean")
    if kind is None:
        return None, app_id, pushkey, append
    if kind != "http":
        # Email pushers need an email sender, which this server does not have.
        raise invalid_param(f"Unsupported pusher kind {kind!r}: only 'http' is supported")
    pusher: JsonDict = {"kind": kind, "app_id": app_id, "pushkey": pushkey}
    for key in ("app_display_name", "device_display_name", "lang"):
        if key not in body:
            raise missing_param(f"Missing '{key}'")
        value = body[key]
        if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH:
            raise bad_json(f"'{key}' must be a string of at most {MAX_FIELD_LENGTH} characters")
        pusher[key] = value
    profile_tag = body.get("profile_tag")
    if profile_tag is not None and (not isinstance(profile_tag, str) or len(profile_tag) > MAX_FIELD_LENGTH):
        raise bad_json(f"'profile_tag' must be a string of at most {MAX_FIELD_LENGTH} characters")
    pusher["profile_tag"] = profile_tag
    data = body.get("data")
    if not isinstance(data, dict):
        raise missing_param("Missing 'data' (an object with the gateway's 'url')")
    url = data.get("url")
    if not isinstance(url, str):
        raise missing_param("Missing 'data.url'")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path != NOTIFY_PATH:
        raise invalid_param(f"'data.url' must be an http(s) URL with the path {NOTIFY_PATH}")
    # A format other than event_id_only is taken (as Synapse takes it) and means the full notification,
    # the spec's only other behaviour; a client may name a format of its gateway's.
    fmt = data.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise invalid_param("'data.format' must be a string")
    pusher["data"] = data
    return pusher, app_id, pushkey, append


def client_pusher(row: JsonDict) -> JsonDict:
    """A stored pusher as GET /pushers shows it."""
    out: JsonDict = {k: row[k] for k in ("pushkey", "kind", "app_id", "app_display_name", "device_display_name",
                                         "lang", "data")}
    if row.get("profile_tag") is not None:
        out["profile_tag"] = row["profile_tag"]
    return out


# -- the notification (Push Gateway API) --------------------------------------------------------------------
def tweaks_for_actions(actions: list[Any]) -> JsonDict:
    tweaks: JsonDict = {}
    for action in actions:
        if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            tweaks[action["set_tweak"]] = action.get("value", True if action["set_tweak"] == "highlight" else None)
    return {k: v for k, v in tweaks.items() if v is not None}


def build_notification(pusher: JsonDict, event: Event, user_id: str, actions: list[Any], unread_rooms: int,
                       room_name: str | None = None, room_alias: str | None = None,
                       sender_display_name: str | None = None) -> JsonDict:
    """The body POSTed to a pusher's gateway for one event."""
    tweaks = tweaks_for_actions(actions)
    data = {k: v for k, v in pusher["data"].items() if k != "url"}
    device = {"app_id": pusher["app_id"], "pushkey": pusher["pushkey"],
              "pushkey_ts": int(pusher["pushkey_ts"]) // 1000, "data": data, "tweaks": tweaks}
    high = event.type in HIGH_PRIORITY_TYPES or bool(tweaks.get("highlight")) or bool(tweaks.get("sound"))
    notification: JsonDict = {"event_id": event.event_id, "room_id": event.room_id,
                              "counts": {"unread": unread_rooms}, "prio": "high" if high else "low",
                              "devices": [device]}
    if data.get("format") != "event_id_only":
        # `id` repeats the event ID, as Synapse sends it (the Push Gateway API's older name for it,
        # which gateways and test suites still read).
        notification.update(id=event.event_id, type=event.type, sender=event.sender, content=event.content)
        if event.type == "m.room.member":
            notification["user_is_target"] = event.state_key == user_id
        if sender_display_name:
            notification["sender_display_name"] = sender_display_name
        if room_name:
            notification["room_name"] = room_name
        if room_alias:
            notification["room_alias"] = room_alias
    return {"notification": notification}


# -- delivery -----------------------------------------------------------------------------------------------
class PusherPool:
    """Follows stored notifications and hands each to the pushers of the users it notifies."""

    BATCH = 500
    POLL_S = 5.0  # also looks without being woken, at this interval
    RECHECK_S = 0.05  # notifications of persisted events not stored yet: look again this soon
    DELAY_S = 0.005  # how long after events are persisted the pool looks
    RETRY_INITIAL_S = 1.0
    RETRY_MAX_S = 3600.0
    GIVE_UP_AFTER_S = 86400.0
    MAX_QUEUE = 1000  # per pusher; the oldest are dropped beyond it

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store: PusherStore = hs.pushers_store
        self._cursor = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._workers: dict[PusherKey, _PusherWorker] = {}
        self._stopping = False
        self._any_pushers = False
        self._checked_at = 0.0
        self._wake_timer: asyncio.TimerHandle | None = None
        self._sharded = len(pusher_instances(hs.config)) > 1
        track_pusher_pool(self)  # hs_pushers and hs_pusher_queued_notifications

    def handles(self, user_id: str) -> bool:
        """Whether this instance delivers the user's notifications (their shard of the pusher
        instances)."""
        return not self._sharded or pusher_instance_for(self.hs.config, user_id) == self.hs.instance_name

    async def _lowest_position(self) -> int | None:
        """Where this instance's pushers stand: the lowest delivered position among them."""
        if not self._sharded:
            return await self.store.lowest_position()
        mine = [pos for user_id, pos in (await self.store.lowest_position_per_user()).items()
                if self.handles(user_id)]
        return min(mine) if mine else None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        upto = self._stored_upto()
        lowest = await self._lowest_position()
        # Undelivered notifications from before a restart are sent now.
        self._cursor = min(lowest, upto) if lowest is not None else upto
        self._any_pushers = lowest is not None
        self._checked_at = asyncio.get_running_loop().time()
        self.hs.replication.subscribe("events", lambda _msg: self._wake_soon())
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _wake_soon(self) -> None:
        """Events were persisted: look a moment later, out of the way of the woken /syncs and the
        sender's response (and taking whatever else arrives meanwhile in the same read)."""
        if self._wake_timer is None:
            self._wake_timer = asyncio.get_running_loop().call_later(self.DELAY_S, self._wake_now)

    def _wake_now(self) -> None:
        self._wake_timer = None
        self._wake.set()

    def poke(self) -> None:
        """Look for notifications now (a pusher was added in this process)."""
        self._checked_at = 0.0
        self._wake.set()

    async def _check_for_pushers(self) -> None:
        """Whether any pusher exists, looked up every POLL_S (or when poked): with none, new
        notifications are not even read. A pusher added meanwhile (by another process) starts at the
        position it was added at, so the cursor goes back to it."""
        now = asyncio.get_running_loop().time()
        if now - self._checked_at < self.POLL_S:
            return
        self._checked_at = now
        lowest = await self._lowest_position()
        if lowest is not None and not self._any_pushers:
            self._cursor = min(self._cursor, lowest)
        self._any_pushers = lowest is not None

    def _stored_upto(self) -> int:
        position = self.hs.events_stream.current_position()
        return int(self.hs.event_sender.notifications_stored_upto(position))

    async def _run(self) -> None:
        while not self._stopping:
            await wait_set_or_timeout(self._wake, self.POLL_S)
            self._wake.clear()
            try:
                await self._check_for_pushers()
                await self._process()
            except Exception:
                logger.exception("pushers: reading new notifications failed")
                await asyncio.sleep(1)

    async def _process(self) -> None:
        while True:
            upto = self._stored_upto()
            if not self._any_pushers:
                self._cursor = max(self._cursor, upto)
                return
            if upto < self.hs.events_stream.current_position() and not self._stopping:
                asyncio.get_running_loop().call_later(self.RECHECK_S, self._wake.set)
            if upto <= self._cursor:
                return
            rows = await self.store.notifications_between(self._cursor, upto, self.BATCH)
            if rows:
                pushers = await self.store.get_pushers_of(
                    [u for r in rows for u in r["notify_users"] if self.handles(u)])
                by_user: dict[str, list[JsonDict]] = {}
                for p in pushers:
                    by_user.setdefault(p["user_id"], []).append(p)
                for row in rows:
                    for user_id in row["notify_users"]:
                        for p in by_user.get(user_id, ()):
                            if row["stream_ordering"] > int(p["last_stream_ordering"]):
                                self._worker(p).enqueue(row["stream_ordering"], row["event_id"], user_id)
            if len(rows) < self.BATCH:
                self._cursor = upto
                return
            self._cursor = int(rows[-1]["stream_ordering"])

    def _worker(self, pusher: JsonDict) -> _PusherWorker:
        key = pusher_key(pusher)
        worker = self._workers.get(key)
        if worker is None:
            worker = self._workers[key] = _PusherWorker(self, key)
        return worker

    def _forget(self, key: PusherKey) -> None:
        self._workers.pop(key, None)

    async def deliver(self, key: PusherKey, event_id: str, user_id: str) -> bool | None:
        """Send one notification: True if done with it (sent, or nothing to send), False to retry
        later, None if the pusher is gone (deleted, or its pushkey rejected)."""
        pusher = await self.store.get_pusher(key)
        if pusher is None:
            return None
        event = await self.hs.event_store.get_event(event_id)
        if event is None:
            return True
        actions = await self.hs.push_evaluator.actions_for(event, user_id)
        if not actions or "notify" not in actions:
            return True  # the user's rules changed since: nothing to send
        name, alias, sender_name = await self._room_facts(event)
        body = build_notification(pusher, event, user_id, actions, await self.store.unread_room_count(user_id),
                                  name, alias, sender_name)
        assert self._session is not None
        try:
            async with self._session.post(pusher["data"]["url"], json=body) as resp:
                if resp.status >= 300:
                    logger.warning("push gateway %s answered %d for %s", pusher["data"]["url"], resp.status, key[2])
                    return False
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            logger.warning("push gateway %s failed for %s: %s", pusher["data"]["url"], key[2], e)
            return False
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        if isinstance(rejected, list) and pusher["pushkey"] in rejected:
            logger.info("push gateway rejected pushkey of %s (%s): removing the pusher", user_id, key[0])
            await self.store.delete_pusher(user_id, key[0], key[1])
            return None
        return True

    async def _room_facts(self, event: Event) -> tuple[str | None, str | None, str | None]:
        state = await self.hs.event_store.get_state_events_for_group(
            event.internal.state_group_after,
            [("m.room.name", ""), ("m.room.canonical_alias", ""), ("m.room.member", event.sender)])
        name_ev, alias_ev = state.get(("m.room.name", "")), state.get(("m.room.canonical_alias", ""))
        member = state.get(("m.room.member", event.sender))
        name = name_ev.content.get("name") if name_ev is not None else None
        alias = alias_ev.content.get("alias") if alias_ev is not None else None
        sender_name = member.content.get("displayname") if member is not None else None
        return (name if isinstance(name, str) else None, alias if isinstance(alias, str) else None,
                sender_name if isinstance(sender_name, str) else None)


class _PusherWorker:
    """One pusher's queue: notifications in order, each until delivered (or given up)."""

    def __init__(self, pool: PusherPool, key: PusherKey) -> None:
        self.pool = pool
        self.key = key
        self.queue: deque[tuple[int, str, str]] = deque()
        self.task: asyncio.Task[None] | None = None

    def enqueue(self, position: int, event_id: str, user_id: str) -> None:
        if self.queue and position <= self.queue[-1][0]:
            return
        if len(self.queue) >= self.pool.MAX_QUEUE:
            dropped = self.queue.popleft()
            logger.warning("pusher of %s (%s) is behind: dropped the notification of %s", self.key[2],
                           self.key[0], dropped[1])
        self.queue.append((position, event_id, user_id))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        pause = self.pool.RETRY_INITIAL_S
        failing_since: float | None = None
        while self.queue:
            position, event_id, user_id = self.queue[0]
            try:
                done = await self.pool.deliver(self.key, event_id, user_id)
            except Exception:
                logger.exception("pusher of %s (%s) failed on %s", user_id, self.key[0], event_id)
                done = False
            if done is None:
                self.queue.clear()
                self.pool._forget(self.key)
                return
            if not done:
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if now - failing_since < self.pool.GIVE_UP_AFTER_S:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, self.pool.RETRY_MAX_S)
                    continue
                logger.warning("pusher of %s (%s) gave up on %s after failing for a day", user_id, self.key[0],
                               event_id)
            self.queue.popleft()
            pause, failing_since = self.pool.RETRY_INITIAL_S, None
            await self.pool.store.set_position(self.key, position)
