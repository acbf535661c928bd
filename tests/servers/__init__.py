"""Throwaway PostgreSQL, Redis and NATS servers that the test session starts itself.

Tests never use a service that happens to run on the machine (nothing in tests/ names 5432, 6379 or 4222): the
session fixtures in tests/conftest.py (`postgres_server`, `redis_server`, `nats_server`, and the URLs built on
them, `pg_url`, `db_url`, `redis_url`, `nats_url`) each start one server on first use, from the installed server
binaries (Debian's `postgresql`, `redis-server`, `nats-server`), on a free 127.0.0.1 port with a data dir of its
own under the system temp dir, and stop it by PID when the session ends, whether it passed or not. PostgreSQL runs
`initdb` (trust auth, C locale, no fsync) as the `postgres` OS user when the suite runs as root, since it refuses
root; Redis keeps nothing on disk; NATS runs with JetStream. A server is ready when it answers its own protocol
(PostgreSQL's startup handshake, Redis's PING, NATS's INFO with JetStream on), polled within a bound; a server that
exits or never answers fails the tests that need it with the tail of its log. Each server dies with the pytest
process (PR_SET_PDEATHSIG), and a data dir left by a killed session is swept by the next one. A missing binary
fails every test that needs it, naming the package to install: the suite never skips for want of a service.
Isolation between tests stays where it was: a fresh database per test, a key prefix per Redis test, a stream name
per NATS test.
"""

from __future__ import annotations

from tests.servers.nats import NatsServer
from tests.servers.postgres import PostgresServer
from tests.servers.process import MissingBinary, ServerProcess
from tests.servers.redis import RedisServer

__all__ = ["MissingBinary", "NatsServer", "PostgresServer", "RedisServer", "ServerProcess"]
