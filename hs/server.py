"""The HomeServer: one process's wiring of config, database, streams, replication and services.

Every role builds the same object; what differs is which streams this instance writes (from
`stream_writers`) and which resources its listeners mount (from the route table in hs/roles/).
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from hs.config import HomeserverConfig
from hs.db.migrations import apply_migrations
from hs.db.pool import Database, make_database
from hs.db.stores.events import EventStore
from hs.db.stores.rooms import RoomStore
from hs.db.stores.users import UserStore
from hs.events.signing import SigningKey, read_signing_key_file
from hs.replication.transport import InProcessTransport, ReplicationTransport
from hs.streams.events import EventsStream
from hs.streams.notifier import Notifier
from hs.streams.positions import PositionSource, make_position_source

logger = logging.getLogger(__name__)


class HomeServer:
    def __init__(self, config: HomeserverConfig, instance_name: str = "main",
                 signing_key: SigningKey | None = None) -> None:
        self.config = config
        self.instance_name = instance_name
        self.server_name = config.server_name
        self.app_name = config.app_for(instance_name)
        self._signing_key = signing_key
        self.db: Database = make_database(config.database)
        self.notifier = Notifier()
        self.replication: ReplicationTransport
        if config.redis.enabled:
            from hs.replication.redis import RedisTransport

            redis_transport = RedisTransport(config.redis.connection_url, config.server_name)
            redis_transport.on_reconnect(self._catch_up)
            self.replication = redis_transport
        else:
            self.replication = InProcessTransport()
        self.state_group_ids: PositionSource
        self.events_stream = EventsStream(self)
        self._started = False

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
        return UserStore(self.db, self.config.access_token_cache_size)

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
    def rooms(self) -> Any:
        from hs.services.rooms import RoomService

        return RoomService(self)

    @cached_property
    def sync(self) -> Any:
        from hs.services.sync import SyncService

        return SyncService(self)

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
        self.replication.subscribe("events", self._on_events_message)
        await self.replication.start()
        self.state_group_ids = await make_position_source(self.db, "state_group_id", "state_groups", "id")
        await self.events_stream.setup()
        self._started = True

    async def _catch_up(self) -> None:
        """After a replication outage: re-read persisted positions and wake every waiter to re-check."""
        await self.events_stream.catch_up()

    def _on_events_message(self, msg: dict[str, Any]) -> None:
        redacts = msg.get("redacts") or []
        for event_id in [redacts] if isinstance(redacts, str) else redacts:
            self.event_store.invalidate_event(event_id)
        self.events_stream.handle_message(msg)

    async def stop(self) -> None:
        await self.replication.stop()
        await self.db.close()
