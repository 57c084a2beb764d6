"""The HomeServer: one process's wiring of config, database, streams, replication and services.

Every role builds the same object; what differs is which streams this instance writes (from
`stream_writers`) and which resources its listeners mount (from the route table in hs/roles/).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

from hs.config import HomeserverConfig
from hs.db.migrations import apply_migrations, wait_for_migrations
from hs.db.pool import Database, make_database
from hs.db.stores.events import EventStore
from hs.db.stores.push import PushStore
from hs.db.stores.rooms import RoomStore
from hs.db.stores.users import UserStore
from hs.events.signing import SigningKey, read_signing_key_file
from hs.replication.transport import InProcessTransport, ReplicationTransport
from hs.roles.duties import (
    APPSERVICE_NOTIFIER,
    BACKGROUND_TASKS,
    FEDERATION_SENDER,
    MEDIA_BACKGROUND,
    PUSHER,
    duties_for,
)
from hs.streams import registry
from hs.streams.account_data import AccountDataStream
from hs.streams.base import Stream, StreamContext
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

if TYPE_CHECKING:
    from hs.appservice.queries import AppServiceQueries
    from hs.appservice.sender import AppServiceSender
    from hs.db.stores.pushers import PusherStore
    from hs.federation.backfill import Backfiller
    from hs.federation.client import FederationClient
    from hs.federation.event_handler import FederationEventHandler
    from hs.federation.keys import KeyRing
    from hs.federation.membership import FederationMembership
    from hs.federation.outbox import FederationOutbox
    from hs.federation.room_reads import FederationRoomReads
    from hs.federation.sender import FederationSender
    from hs.federation.transactions import TransactionHandler
    from hs.media.background import MediaBackgroundJobs
    from hs.media.preview import UrlPreviewer
    from hs.media.remote import RemoteMedia
    from hs.media.repository import MediaRepository
    from hs.media.storage import MediaFiles
    from hs.media.thumbnails import Thumbnails
    from hs.replication.http_client import ReplicationClient
    from hs.services.accounts import AccountService
    from hs.services.auth import Auth
    from hs.services.background import BackgroundTasks
    from hs.services.e2ee import E2eeService
    from hs.services.events import EventSender
    from hs.services.notifications import NotificationsService
    from hs.services.presence import PresenceService
    from hs.services.profile import ProfileService
    from hs.services.push_rules import BulkPushEvaluator, PushRulesService
    from hs.services.pushers import PusherPool
    from hs.services.ratelimit import Ratelimiter
    from hs.services.receipts import ReceiptService
    from hs.services.registration import Registration
    from hs.services.relations import RelationsService
    from hs.services.reports import ReportService
    from hs.services.room_aliases import RoomAliases
    from hs.services.room_creation import RoomCreator
    from hs.services.room_directory import RoomDirectory
    from hs.services.room_history import RoomHistory
    from hs.services.room_membership import RoomMembership
    from hs.services.room_sending import ClientEventSender
    from hs.services.room_state import RoomStateReader
    from hs.services.room_summaries import RoomSummaries
    from hs.services.search import SearchService
    from hs.services.sliding_sync.service import SlidingSyncService
    from hs.services.spaces import SpaceHierarchy
    from hs.services.sync import SyncService
    from hs.services.typing import TypingService
    from hs.services.upgrade import RoomUpgrader
    from hs.services.user_directory import UserDirectory
    from hs.services.visibility import Visibility

S = TypeVar("S", bound=Stream)

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
        context = StreamContext(instance_name, config, self.db, self.replication, self.notifier, self.event_store,
                                self.push_store, lambda: self.replication_client)
        # Every registered stream (hs/streams/registry.py), by name, in sync token order.
        self.streams: dict[str, Stream] = {cls.NAME: cls(context) for cls in registry.stream_classes()}
        self.events_stream = self._stream(EventsStream)
        self.receipts_stream = self._stream(ReceiptsStream)
        self.push_rules_stream = self._stream(PushRulesStream)
        self.to_device_stream = self._stream(ToDeviceStream)
        self.device_lists_stream = self._stream(DeviceListsStream)
        self.presence_stream = self._stream(PresenceStream)
        self.account_data_stream = self._stream(AccountDataStream)
        self.typing_stream = self._stream(TypingStream)
        self._started = False
        self._teardown = AsyncExitStack()
        self._background: set[asyncio.Task[None]] = set()
        # Catch-ups in progress: of every stream (None) or of one, shared by whoever asks meanwhile.
        self._catching_up: dict[str | None, asyncio.Task[None]] = {}

    def _stream(self, cls: type[S]) -> S:
        stream = self.streams[cls.NAME]
        assert isinstance(stream, cls)
        return stream

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
    def push_store(self) -> PushStore:
        """Push actions, notifications and unread counts (and their cache), shared by the events,
        receipts and push rules streams and the push services."""
        return PushStore(self.db)

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
    def background(self) -> BackgroundTasks:
        from hs.services.background import BackgroundTasks

        return BackgroundTasks(self)

    @cached_property
    def caches(self) -> CacheInvalidator:
        return CacheInvalidator(self)

    @cached_property
    def event_sender(self) -> EventSender:
        from hs.services.events import EventSender

        return EventSender(self)

    @cached_property
    def replication_client(self) -> ReplicationClient:
        from hs.replication.http_client import ReplicationClient

        return ReplicationClient(self)

    @cached_property
    def auth(self) -> Auth:
        from hs.services.auth import Auth

        return Auth(self)

    @cached_property
    def registration(self) -> Registration:
        from hs.services.registration import Registration

        return Registration(self)

    @cached_property
    def pushers_store(self) -> PusherStore:
        from hs.db.stores.pushers import PusherStore

        return PusherStore(self.db)

    @cached_property
    def accounts(self) -> AccountService:
        from hs.services.accounts import AccountService

        return AccountService(self)

    @cached_property
    def profiles(self) -> ProfileService:
        from hs.services.profile import ProfileService

        return ProfileService(self)

    @cached_property
    def pushers(self) -> PusherPool:
        from hs.services.pushers import PusherPool

        return PusherPool(self)

    @cached_property
    def notifications(self) -> NotificationsService:
        from hs.services.notifications import NotificationsService

        return NotificationsService(self)

    @cached_property
    def reports(self) -> ReportService:
        from hs.services.reports import ReportService

        return ReportService(self)

    @cached_property
    def relations(self) -> RelationsService:
        from hs.services.relations import RelationsService

        return RelationsService(self)

    @cached_property
    def room_upgrader(self) -> RoomUpgrader:
        from hs.services.upgrade import RoomUpgrader

        return RoomUpgrader(self)

    @cached_property
    def search(self) -> SearchService:
        from hs.services.search import SearchService

        return SearchService(self)

    @cached_property
    def room_summaries(self) -> RoomSummaries:
        from hs.services.room_summaries import RoomSummaries

        return RoomSummaries(self)

    @cached_property
    def spaces(self) -> SpaceHierarchy:
        from hs.services.spaces import SpaceHierarchy

        return SpaceHierarchy(self)

    @cached_property
    def user_directory(self) -> UserDirectory:
        from hs.services.user_directory import UserDirectory

        return UserDirectory(self)

    @cached_property
    def room_creator(self) -> RoomCreator:
        from hs.services.room_creation import RoomCreator

        return RoomCreator(self)

    @cached_property
    def room_membership(self) -> RoomMembership:
        from hs.services.room_membership import RoomMembership

        return RoomMembership(self)

    @cached_property
    def client_event_sender(self) -> ClientEventSender:
        from hs.services.room_sending import ClientEventSender

        return ClientEventSender(self)

    @cached_property
    def room_history(self) -> RoomHistory:
        from hs.services.room_history import RoomHistory

        return RoomHistory(self)

    @cached_property
    def room_state(self) -> RoomStateReader:
        from hs.services.room_state import RoomStateReader

        return RoomStateReader(self)

    @cached_property
    def room_aliases(self) -> RoomAliases:
        from hs.services.room_aliases import RoomAliases

        return RoomAliases(self)

    @cached_property
    def room_directory(self) -> RoomDirectory:
        from hs.services.room_directory import RoomDirectory

        return RoomDirectory(self)

    @cached_property
    def e2ee(self) -> E2eeService:
        from hs.services.e2ee import E2eeService

        return E2eeService(self)

    @cached_property
    def receipts(self) -> ReceiptService:
        from hs.services.receipts import ReceiptService

        return ReceiptService(self)

    @cached_property
    def push_rules(self) -> PushRulesService:
        from hs.services.push_rules import PushRulesService

        return PushRulesService(self)

    @cached_property
    def push_evaluator(self) -> BulkPushEvaluator:
        from hs.services.push_rules import BulkPushEvaluator

        return BulkPushEvaluator(self)

    @cached_property
    def sync(self) -> SyncService:
        from hs.services.sync import SyncService

        return SyncService(self)

    @cached_property
    def sliding_sync(self) -> SlidingSyncService:
        from hs.services.sliding_sync.service import SlidingSyncService

        return SlidingSyncService(self)

    @cached_property
    def presence(self) -> PresenceService:
        from hs.services.presence import PresenceService

        return PresenceService(self)

    @cached_property
    def typing(self) -> TypingService:
        """Typing of local and remote users (on the typing writer); tells other servers."""
        from hs.services.typing import TypingService

        return TypingService(self)

    @cached_property
    def visibility(self) -> Visibility:
        from hs.services.visibility import Visibility

        return Visibility(self)

    @cached_property
    def ratelimiters(self) -> dict[str, Ratelimiter]:
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
            "joins_remote": Ratelimiter(c.rc_joins["remote"].per_second, c.rc_joins["remote"].burst_count)
            if "remote" in c.rc_joins else Ratelimiter(0.01, 10),
        }

    # -- federation ------------------------------------------------------------------------------------
    @cached_property
    def federation_client(self) -> FederationClient:
        """Signed requests to other homeservers, over one shared connection pool (closed at stop)."""
        from hs.federation.client import FederationClient

        return FederationClient(self.config, lambda: self.signing_key)

    @cached_property
    def keyring(self) -> KeyRing:
        """This server's published keys, and other servers' keys fetched, cached and checked."""
        from hs.federation.keys import KeyRing

        return KeyRing(self)

    @cached_property
    def federation_event_handler(self) -> FederationEventHandler:
        """Checks events from other servers and takes them into the room DAG."""
        from hs.federation.event_handler import FederationEventHandler

        return FederationEventHandler(self)

    @cached_property
    def federation_membership(self) -> FederationMembership:
        """Joins, leaves and invites across servers (both sides of each handshake)."""
        from hs.federation.membership import FederationMembership
        return FederationMembership(self)

    @cached_property
    def backfiller(self) -> Backfiller:
        """Older events of rooms joined over federation, asked of other servers when /messages
        reaches the oldest one held here."""
        from hs.federation.backfill import Backfiller

        return Backfiller(self)

    @cached_property
    def federation_transactions(self) -> TransactionHandler:
        """Inbound /send: one transaction per origin at a time, answered once per transaction ID."""
        from hs.federation.transactions import TransactionHandler

        return TransactionHandler(self)

    @cached_property
    def federation_room_reads(self) -> FederationRoomReads:
        """What other servers may read of our rooms (events, state, auth chains, backfill)."""
        from hs.federation.room_reads import FederationRoomReads

        return FederationRoomReads(self)

    @cached_property
    def federation_outbox(self) -> FederationOutbox:
        """EDUs, relays and wake-ups for the federation senders (every process has one)."""
        from hs.federation.outbox import FederationOutbox
        return FederationOutbox(self)

    @cached_property
    def federation_sender(self) -> FederationSender:
        """Queues of events and EDUs for other servers (closed at stop)."""
        from hs.federation.sender import FederationSender

        return FederationSender(self)

    @property
    def sends_federation(self) -> bool:
        """Whether this deployment sends to other servers at all (`send_federation`, or
        `federation_sender_instances`): EDUs are then handed to the senders (hs/federation/outbox.py).
        Which process sends is the `federation_sender` duty."""
        return self.federation_outbox.enabled

    # -- application services ------------------------------------------------------------------------------
    @cached_property
    def appservice_queries(self) -> AppServiceQueries:
        """User and alias queries, third-party lookups and pings to the application services (closed at
        stop)."""
        from hs.appservice.queries import AppServiceQueries

        return AppServiceQueries(self)

    @cached_property
    def appservice_sender(self) -> AppServiceSender:
        """Transactions to the application services (the `appservice_notifier` duty; stopped at stop)."""
        from hs.appservice.sender import AppServiceSender

        return AppServiceSender(self)

    # -- media ---------------------------------------------------------------------------------------------
    @cached_property
    def media(self) -> MediaRepository:
        """Uploads, downloads and their limits (hs/media/)."""
        from hs.media.repository import MediaRepository

        return MediaRepository(self)

    @cached_property
    def media_files(self) -> MediaFiles:
        """The media store: `media_store_path` plus the configured storage providers (closed at stop)."""
        from hs.media.storage import MediaFiles

        return MediaFiles.from_config(self.config)

    @cached_property
    def media_thumbnails(self) -> Thumbnails:
        """Thumbnails of stored images, made in a bounded pool of processes (closed at stop)."""
        from hs.media.thumbnails import Thumbnails

        return Thumbnails(self)

    @cached_property
    def media_remote(self) -> RemoteMedia:
        """Other servers' media, fetched over federation and cached."""
        from hs.media.remote import RemoteMedia

        return RemoteMedia(self)

    @cached_property
    def url_previewer(self) -> UrlPreviewer:
        """URL previews (`url_preview_enabled`), with their in-memory cache."""
        from hs.media.preview import UrlPreviewer

        return UrlPreviewer(self.config, self.media.store_file)

    @cached_property
    def media_background(self) -> MediaBackgroundJobs:
        """Media retention, lapsed reservations and unused files (the `media_background_jobs` duty)."""
        from hs.media.background import MediaBackgroundJobs

        return MediaBackgroundJobs(self)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start step by step, each step's teardown registered as soon as it has run: a failure half
        way undoes what had started, in reverse (and `stop` is the same unwinding)."""
        if self._started:
            return
        exits = self._teardown
        try:
            await self.db.open()
            exits.push_async_callback(self.db.close)
            if self.instance_name == "main" or self.config.database.engine == "sqlite":
                await apply_migrations(self.db)
            else:
                await wait_for_migrations(self.db)
            self.caches.subscribe()
            _ = self.user_store  # registers its cache with the invalidator
            for stream in self.streams.values():
                stream.subscribe()
            self.federation_outbox  # noqa: B018 - subscribes to room membership changes
            if FEDERATION_SENDER in self.duties:
                self.federation_sender.subscribe()
            if APPSERVICE_NOTIFIER in self.duties and self.config.app_services:
                self.appservice_sender.subscribe()
            await self.replication.start()
            exits.push_async_callback(self._close_replication)
            exits.push_async_callback(self._close_federation_client)
            exits.push_async_callback(self._close_media)
            exits.push_async_callback(self._close_appservice_queries)
            self.state_group_ids = await make_position_source(self.db, "state_group_id", "state_groups", "id")
            for stream in self.streams.values():
                await stream.setup()
                exits.push_async_callback(stream.close)
            self.push_rules  # noqa: B018 - subscribes its cache to push rule changes
            if self.events_stream.is_writer:
                self.event_sender.push_evaluator = self.push_evaluator
                # Batches cut off by the last stop are completed before anything new is persisted.
                await self.event_sender.restore_batches()
                exits.push_async_callback(self.event_sender.flush_rests)
            await self.presence.start()
            exits.push_async_callback(self.presence.stop)
            if BACKGROUND_TASKS in self.duties:
                self.background.start()
                exits.push_async_callback(self.background.stop)
            if MEDIA_BACKGROUND in self.duties:
                await self.media_background.start()
                exits.push_async_callback(self.media_background.stop)
            if PUSHER in self.duties:
                await self.pushers.start()
                exits.push_async_callback(self.pushers.stop)
            if FEDERATION_SENDER in self.duties:
                exits.push_async_callback(self.federation_sender.close)
                await self.federation_sender.start()
            if APPSERVICE_NOTIFIER in self.duties and self.config.app_services:
                exits.push_async_callback(self.appservice_sender.stop)
                await self.appservice_sender.start()
        except BaseException:
            await self._unwind()
            raise
        self._started = True

    async def stop(self) -> None:
        """Undo the start-up, last step first: pushers and background tasks stop, event batches being
        persisted are completed, then the streams, replication and the database close."""
        await self._unwind()
        self._started = False

    async def _unwind(self) -> None:
        exits, self._teardown = self._teardown, AsyncExitStack()
        await exits.aclose()

    async def _close_replication(self) -> None:
        await self.replication.stop()
        if "replication_client" in self.__dict__:  # else its session is reported unclosed at exit
            await self.replication_client.close()

    async def _close_federation_client(self) -> None:
        if "federation_transactions" in self.__dict__:  # its pool for per-origin locks
            await self.federation_transactions.store.close()
        if "federation_client" in self.__dict__:  # created on first use
            await self.federation_client.close()

    async def _close_appservice_queries(self) -> None:
        if "appservice_queries" in self.__dict__:  # its HTTP session, made on first use
            await self.appservice_queries.close()

    async def _close_media(self) -> None:
        if "media_thumbnails" in self.__dict__:  # its process pool
            await self.media_thumbnails.close()
        if "media_files" in self.__dict__:  # background copies to storage providers, their clients
            await self.media_files.close()

    async def catch_up(self, stream: str | None = None) -> None:
        """After a replication outage (every stream, and the invalidation-driven caches), or while one
        stream's messages are not arriving (that stream alone): re-read persisted positions, drop what
        the messages kept in memory, and wake every waiter to re-check. Callers arriving while the same
        catch-up runs share it."""
        task = self._catching_up.get(stream)
        if task is None or task.done():
            task = self._catching_up[stream] = asyncio.get_running_loop().create_task(self._catch_up(stream))
        await asyncio.shield(task)

    async def _catch_up(self, name: str | None) -> None:
        if name is not None:
            await self.streams[name].catch_up()
            return
        self.caches.flush_all()
        for stream in self.streams.values():
            await stream.catch_up()
