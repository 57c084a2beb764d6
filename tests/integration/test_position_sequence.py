"""The shared PostgreSQL sequence behind multi-writer streams: `last()` is the highest position handed
out, so an idle writer never claims one still to come (a new cluster's first event was skipped by
/sync tokens that had already claimed its position)."""

from __future__ import annotations

from hs.db.pool import PostgresDatabase
from hs.streams.positions import PositionTracker, make_position_source
from tests.services import create_database, drop_database


async def test_a_fresh_sequence_claims_nothing_before_its_first_position(pg_base_dsn: str) -> None:
    dsn = await create_database(pg_base_dsn)
    db = PostgresDatabase(dsn)
    try:
        await db.open()
        await db.execute("CREATE TABLE t (pos BIGINT)")
        source = await make_position_source(db, "test_stream", "t", "pos", writers=2)
        tracker = PositionTracker(source, 0)
        await tracker.advance_idle()  # an idle writer claims what was handed out so far...
        first = await source.next()
        assert tracker.persisted_upto < first  # ...which never includes the first position to come
        assert await source.last() == first
        # A second source on the same database (another writer) agrees and continues the sequence.
        other = await make_position_source(db, "test_stream", "t", "pos", writers=2)
        assert await other.last() == first and await other.next() == first + 1
        # Rows already stored above the sequence move it on at start-up.
        await db.execute("INSERT INTO t (pos) VALUES (10)")
        moved = await make_position_source(db, "test_stream", "t", "pos", writers=2)
        assert await moved.last() == 10 and await moved.next() == 11
    finally:
        await db.close()
        await drop_database(dsn)
