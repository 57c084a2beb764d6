"""Real PostgreSQL and Redis for tests: the machine's own when they answer, else throwaway servers
started from the installed binaries (a fresh machine or CI may have the packages but no service).
They live in hs.testing (the pytest plugin ships them); the project's tests import them from here."""

from hs.testing.services import (  # noqa: F401
    ThrowawayPostgres,
    ThrowawayRedis,
    create_database,
    drop_database,
    free_port,
    port_open,
)
