"""The HomeServer: one process's wiring of config, database, streams, replication and services.

Every role builds the same object; what differs is which streams this instance writes (from
`stream_writers`) and which resources its listeners mount (from the route table in hs/roles/).
"""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property
from typing import Any

from hs.config import HomeserverConfig
from hs.db.migrations import apply_migrations, wait_for_migrations
from hs.db.pool import Database, make_database
from hs.db.stores.events import EventStore
from hs.db.stores.rooms import RoomStore
from hs.db.stores.users import UserStore
from hs.events.signing import SigningKey, read_signing_key_file
from hs.replication.transport import InProcessTransport, ReplicationTransport
from hs.roles.duties import BACKGROUND_TASKS, PUSHER, duties_for
from hs.streams.account_data import AccountDataStream
from hs.streams.caches import CacheInvalidator
from hs.streams.device_lists import DeviceListsStream
from hs.streams.events import EventsStream
from hs.streams.notifier import Notifier
from hs.streams.positions import PositionSource, make_position_source
from hs.streams.presence import PresenceStream
from hs.streams.push_rules import PushRulesStream
from hs.streams.receipts import ReceiptsStream
from hs.streams.to_device import ToDeviceStream
from hs.streams.typing import TypingStream

logger = logging.getLogger(__name__)


class HomeServer:
    def __init__(self, config: HomeserverConfig, instance_name: str = "main",
                 signing_key: SigningKey | None = None) -> None:
        self.config = config
        self.instance_name = instance_name
        self.server_name = config.server_name
        self.app_name = config.app_for(instance_name)
        self.duties = duties_for(config, instance_name)
        self._signing_key = signing_key
        self.db: Database = make_database(config.database)
        self.notifier = Notifier()
        self.replication: ReplicationTransport
        if config.redis.enabled:
            from hs.replication.redis import RedisTransport

            redis_transport = RedisTransport(config.redis.connection_url, config.server_name)
            redis_transport.on_reconnect(self.catch_up)
            self.replication = redis_transport
        else:
            self.replication = InProcessTransport()
        self.state_group_ids: PositionSource
        self.events_stream = EventsStream(self)
        self.receipts_stream = ReceiptsStream(self)
        self.push_rules_stream = PushRulesStream(self)
        self.to_device_stream = ToDeviceStream(self)
        self.device_lists_stream = DeviceListsStream(self)
        self.presence_stream = PresenceStream(self)
        self.account_data_stream = AccountDataStream(self)
        self.typing_stream = TypingStream(self)
        self._started = False
        self._background: set[asyncio.Task[None]] = set()
        self._catching_up: asyncio.Task[None] | None = None

    @property
    def streams(self) -> dict[str, Any]:
        """Every stream this process tracks, by name (any attribute that is a Stream)."""
        from hs.streams.base import Stream

        return {v.NAME: v for v in vars(self).values() if isinstance(v, Stream)}

    @property
    def signing_key(self) -> SigningKey:
        if self._signing_key is None:
            self._signing_key = read_signing_key_file(self.config.resolve_path(self.config.signing_key_path))
        return self._signing_key

    # -- stores and services (built on first use) ------------------------------------------------------
    @cached_property
    def room_store(self) -> RoomStore:
        return RoomStore(self.db)

    @cached_property
    def event_store(self) -> EventStore:
        return EventStore(self.db, self.room_store)

    @cached_property
    def user_store(self) -> UserStore:
        store = UserStore(self.db, self.config.access_token_cache_size)
        self.caches.register("access_tokens", store.drop_cached_tokens)

        def publish(user_id: str | None) -> None:
            task = asyncio.get_running_loop().create_task(self.caches.publish_only("access_tokens", user_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        store.on_invalidate = publish
        return store

    @cached_property
    def background(self) -> Any:
        from hs.services.background import BackgroundTasks

        return BackgroundTasks(self)

    @cached_property
    def caches(self) -> CacheInvalidator:
        return CacheInvalidator(self)

    @cached_property
    def event_sender(self) -> Any:
        from hs.services.events import EventSender

        return EventSender(self)

    @cached_property
    def replication_client(self) -> Any:
        from hs.replication.http_client import ReplicationClient

        return ReplicationClient(self)

    @cached_property
    def auth(self) -> Any:
        from hs.services.auth import Auth

        return Auth(self)

    @cached_property
    def registration(self) -> Any:
        from hs.services.registration import Registration

        return Registration(self)

    @cached_property
    def pushers_store(self) -> Any:
        from hs.db.stores.pushers import PusherStore

        return PusherStore(self.db)

    @cached_property
    def accounts(self) -> Any:
        from hs.services.accounts import AccountService

        return AccountService(self)

    @cached_property
    def profiles(self) -> Any:
        from hs.services.profile import ProfileService

        return ProfileService(self)

    @cached_property
    def pushers(self) -> Any:
        from hs.services.pushers import PusherPool

        return PusherPool(self)

    @cached_property
    def notifications(self) -> Any:
        from hs.services.notifications import NotificationsService

        return NotificationsService(self)

    @cached_property
    def reports(self) -> Any:
        from hs.services.reports import ReportService

        return ReportService(self)

    @cached_property
    def relations(self) -> Any:
        from hs.services.relations import RelationsService

        return RelationsService(self)

    @cached_property
    def room_upgrader(self) -> Any:
        from hs.services.upgrade import RoomUpgrader

        return RoomUpgrader(self)

    @cached_property
    def search(self) -> Any:
        from hs.services.search import SearchService

        return SearchService(self)

    @cached_property
    def room_summaries(self) -> Any:
        from hs.services.spaces import RoomSummaries

        return RoomSummaries(self)

    @cached_property
    def spaces(self) -> Any:
        from hs.services.spaces import SpaceHierarchy

        return SpaceHierarchy(self)

    @cached_property
    def user_directory(self) -> Any:
        from hs.services.user_directory import UserDirectory

        return UserDirectory(self)

    @cached_property
    def rooms(self) -> Any:
        from hs.services.rooms import RoomService

        return RoomService(self)

    @cached_property
    def e2ee(self) -> Any:
        from hs.services.e2ee import E2eeService

        return E2eeService(self)

    @cached_property
    def receipts(self) -> Any:
        from hs.services.receipts import ReceiptService

        return ReceiptService(self)

    @cached_property
    def push_rules(self) -> Any:
        from hs.services.push_rules import PushRulesService

        return PushRulesService(self)

    @cached_property
    def push_evaluator(self) -> Any:
        from hs.services.push_rules import BulkPushEvaluator

        return BulkPushEvaluator(self)

    @cached_property
    def sync(self) -> Any:
        from hs.services.sync import SyncService

        return SyncService(self)

    @cached_property
    def presence(self) -> Any:
        from hs.services.presence import PresenceService

        return PresenceService(self)

    @cached_property
    def visibility(self) -> Any:
        from hs.services.visibility import Visibility

        return Visibility(self)

    @cached_property
    def ratelimiters(self) -> Any:
        from hs.services.ratelimit import Ratelimiter

        c = self.config
        return {
            "message": Ratelimiter(c.rc_message.per_second, c.rc_message.burst_count),
            "registration": Ratelimiter(c.rc_registration.per_second, c.rc_registration.burst_count),
            "login_address": Ratelimiter(c.rc_login.address.per_second, c.rc_login.address.burst_count),
            "login_account": Ratelimiter(c.rc_login.account.per_second, c.rc_login.account.burst_count),
            "login_failed": Ratelimiter(c.rc_login.failed_attempts.per_second,
                                        c.rc_login.failed_attempts.burst_count),
            "joins_local": Ratelimiter(c.rc_joins["local"].per_second, c.rc_joins["local"].burst_count)
            if "local" in c.rc_joins else Ratelimiter(0, 0),
        }

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        await self.db.open()
        if self.instance_name == "main" or self.config.database.engine == "sqlite":
            await apply_migrations(self.db)
        else:
            await wait_for_migrations(self.db)
        self.replication.subscribe("events", self._on_events_message)
        self.caches.subscribe()
        _ = self.user_store  # registers its cache with the invalidator
        self.replication.subscribe("receipts", self.receipts_stream.handle_message)
        self.replication.subscribe("receipts", self._on_receipts_message)
        self.replication.subscribe("push_rules", self.push_rules_stream.handle_message)
        self.replication.subscribe("to_device", self.to_device_stream.handle_message)
        self.replication.subscribe("device_lists", self.device_lists_stream.handle_message)
        self.replication.subscribe("account_data", self.account_data_stream.handle_message)
        self.replication.subscribe("typing", self.typing_stream.handle_message)
        self.replication.subscribe("events", self.typing_stream.on_events_message)
        self.presence_stream.subscribe()
        await self.replication.start()
        self.state_group_ids = await make_position_source(self.db, "state_group_id", "state_groups", "id")
        await self.events_stream.setup()
        self.event_store.writes_room = self.events_stream.is_writer_for_room
        self.event_store.reset_membership_tracking(self.events_stream.current_position())
        await self.receipts_stream.setup()
        await self.push_rules_stream.setup()
        self.push_rules  # noqa: B018 - subscribes its cache to push rule changes
        if self.events_stream.is_writer:
            self.event_sender.push_evaluator = self.push_evaluator
            await self.event_sender.restore_batches()
        await self.to_device_stream.setup()
        await self.device_lists_stream.setup()
        await self.presence_stream.setup()
        await self.presence.start()
        if BACKGROUND_TASKS in self.duties:
            self.background.start()
        await self.account_data_stream.setup()
        await self.typing_stream.setup()
        if PUSHER in self.duties:
            await self.pushers.start()
        self._started = True

    async def catch_up(self) -> None:
        """After a replication outage, or while replication messages are not arriving: re-read
        persisted positions and wake every waiter to re-check. Callers arriving while a catch-up runs
        share it."""
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up())
        await asyncio.shield(self._catching_up)

    async def _catch_up(self) -> None:
        self.caches.flush_all()
        self.push_rules_stream.store.unread.clear()
        self.event_store.reset_membership_tracking(await self.event_store.get_max_stream_ordering())
        await self.events_stream.catch_up()
        await self.receipts_stream.catch_up()
        await self.push_rules_stream.catch_up()
        await self.to_device_stream.catch_up()
        await self.device_lists_stream.catch_up()
        await self.presence_stream.catch_up()
        await self.account_data_stream.catch_up()
        await self.typing_stream.catch_up()

    def _on_events_message(self, msg: dict[str, Any]) -> None:
        redacts = msg.get("redacts") or []
        for event_id in [redacts] if isinstance(redacts, str) else redacts:
            self.event_store.invalidate_event(event_id)
        if msg.get("gap"):
            self.event_store.reset_membership_tracking(int(msg["position"]))
        last = int(msg.get("row_position") or msg["position"])
        events = msg.get("events")
        if msg.get("instance") != self.instance_name:  # our own writes set the counts they change
            for room_id in msg.get("rooms") or ():
                self.push_rules_stream.store.unread.invalidate_room(room_id)
        for room_id in msg.get("rooms") or ():
            self.event_store.on_room_events(room_id, int(msg.get("first_position") or last), last,
                                            [(int(pos), str(eid)) for pos, eid in events] if events else None)
        users = msg.get("users")
        if users:
            self.event_store.on_membership_change(list(users), int(msg.get("row_position") or msg["position"]))
        self.events_stream.handle_message(msg)
        if self.events_stream.tracker is not None and msg.get("instance") != self.instance_name:
            task = asyncio.get_running_loop().create_task(self.events_stream.on_other_writer(msg["instance"]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _on_receipts_message(self, msg: dict[str, Any]) -> None:
        room_id, users = msg.get("counts_room"), msg.get("users") or ()
        if isinstance(room_id, str):  # a read receipt recounted these users' unread notifications
            for user_id in users:
                self.push_rules_stream.store.unread.invalidate(user_id, room_id)

    async def stop(self) -> None:
        if "event_sender" in self.__dict__:
            await self.event_sender.flush_rests()
        if "background" in self.__dict__:
            await self.background.stop()
        if "pushers" in self.__dict__:
            await self.pushers.stop()
        if "presence" in self.__dict__:
            await self.presence.stop()
        self.typing_stream.close()
        self.events_stream.close()
        await self.replication.stop()
        if "replication_client" in self.__dict__:  # else its session is reported unclosed at exit
            await self.replication_client.close()
        await self.db.close()
