"""The feedback store in PostgreSQL (psycopg 3), for many servers and ingesters sharing one state.

Same tables, SQL and guarantees as the SQLite store of `bigrec_cli.feedback`, which it extends: an event id is
stored once (a unique constraint and `ON CONFLICT DO NOTHING`), a batch commits whole or not at all, and writers
take turns under an advisory lock, so the `rowid` (a BIGSERIAL) grows in commit order: a run that trained on events
up to a rowid never misses one committed later with a smaller id. The only module that imports psycopg.
"""

from __future__ import annotations

import atexit
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import errors as pg_errors

from bigrec_cli.errors import ArtifactError, ConfigError, StoreBusyError
from bigrec_cli.feedback import FeedbackStore

# pg_advisory_xact_lock(LOCK_SPACE, …): one key for migrations, one for writers ("brec" in ASCII).
LOCK_SPACE, MIGRATION_LOCK, WRITE_LOCK = 0x62726563, 1, 2
# Connections one process keeps to one database: a server's requests wait for one rather than open more.
MAX_CONNECTIONS = 8
CONNECT_TIMEOUT_S = 10
# The SQLite schema, with its implicit rowid made an explicit BIGSERIAL of the same name.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "m001_events_items",
        """
        CREATE TABLE events (
            rowid BIGSERIAL PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            timestamp DOUBLE PRECISION NOT NULL,
            event TEXT NOT NULL,
            weight DOUBLE PRECISION NOT NULL,
            source TEXT NOT NULL,
            ingested_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX events_by_user ON events (user_id, timestamp);
        CREATE TABLE items (
            rowid BIGSERIAL PRIMARY KEY,
            item_id TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL,
            text TEXT NOT NULL,
            ingested_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    (
        "m002_event_ids_per_user",
        """
        UPDATE events SET event_id = user_id || chr(31) || event_id WHERE event_id NOT LIKE 'h:%'
        """,
    ),
)


class CannotConnect(Exception):
    """A new connection failed (server down, wrong password, no such database); the message is libpq's."""


class NoConnectionFree(Exception):
    """Every connection of this process's pool stayed in use for longer than the caller waits."""


class ConnectionPool:
    """At most `MAX_CONNECTIONS` autocommit connections to one database, opened when needed, kept for the next.

    Args:
        url: The database's URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.migrated = False
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    @contextmanager
    def connection(self, timeout: float) -> Iterator[psycopg.Connection]:
        """Lend a connection for the block; a broken one is dropped, a healthy one goes back to the pool."""
        if not self._slots.acquire(timeout=timeout):
            raise NoConnectionFree
        connection = None
        try:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                try:
                    connection = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
                except psycopg.OperationalError as error:
                    raise CannotConnect(str(error)) from None
            yield connection
        finally:
            if connection is not None:
                if connection.broken or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    connection.close()
                else:
                    with self._lock:
                        self._idle.append(connection)
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


_pools: dict[tuple[int, str], ConnectionPool] = {}
_pools_lock = threading.Lock()


def pool_for(url: str) -> ConnectionPool:
    """This process's pool for a database (a forked or spawned worker gets its own)."""
    key = (os.getpid(), url)
    with _pools_lock:
        if key not in _pools:
            if not _pools:
                atexit.register(close_connections)
            _pools[key] = ConnectionPool(url)
        return _pools[key]


def close_connections() -> None:
    """Close every idle connection this process keeps (at exit; tests between databases)."""
    with _pools_lock:
        pools = [pool for (pid, _), pool in _pools.items() if pid == os.getpid()]
    for pool in pools:
        pool.close()


def describe(url: str) -> str:
    """The database a URL names, for messages: user, host, port and database, never the password."""
    parts = psycopg.conninfo.conninfo_to_dict(url)
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"PostgreSQL {user}{parts.get('host') or 'localhost'}{port}/{parts.get('dbname') or ''}"


def without_password(text: str, url: str) -> str:
    """`text` with the URL's password (as written and decoded) replaced by ***."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")
    return text


class PostgresStore(FeedbackStore):
    """Feedback events and new items in a PostgreSQL database that many processes and machines share.

    Args:
        url: `postgresql://USER@HOST:PORT/DATABASE`; the password comes from PGPASSWORD, ~/.pgpass or the URL.
            One database (or schema, `?options=-csearch_path%3DNAME`) per project: the tables are `events`,
            `items` and `_migrations`, as in SQLite.
        busy_timeout: Seconds a write waits for another writer (and a caller for a free connection).
    """

    def __init__(self, url: str, busy_timeout: float = 60.0) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        try:
            self.where = describe(url)
        except psycopg.ProgrammingError as error:
            raise ConfigError(
                f"--store is not a PostgreSQL URL bigrec can use: {without_password(str(error), url)}",
                hint="write it as postgresql://USER@HOST:PORT/DATABASE (the password in PGPASSWORD or ~/.pgpass)",
            ) from None
        self._pool = pool_for(url)

    def close(self) -> None:
        """Nothing to release: the connections belong to the process's pool, shared by every store on this URL."""

    def exists(self) -> bool:
        return True

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn the failures a user can act on (server down, wrong password, locked, no rights) into one line."""
        try:
            yield
        except NoConnectionFree:
            raise StoreBusyError(
                f"{self.where}: all {MAX_CONNECTIONS} connections of this process stayed busy "
                f"for {self.busy_timeout:g} s",
                hint="retry shortly",
            ) from None
        except CannotConnect as error:
            raise self._connect_error(str(error)) from None
        except pg_errors.LockNotAvailable:
            raise StoreBusyError(
                f"{self.where} is locked by another writer (waited {self.busy_timeout:g} s)",
                hint="retry shortly; a long-running ingest-feedback or retrain may hold it",
            ) from None
        except psycopg.OperationalError as error:
            raise StoreBusyError(
                f"{self.where} failed mid-way: {self._first_line(error)}",
                hint="check that PostgreSQL is running, then retry",
            ) from None
        except psycopg.DatabaseError as error:
            if isinstance(error, pg_errors.InsufficientPrivilege):
                hint = "grant this user the rights to create and write tables in the database, or use its owner"
            else:
                hint = "give each project a database of its own (its tables are events, items and _migrations)"
            raise ArtifactError(f"{self.where}: {self._first_line(error)}", hint=hint) from None

    def _first_line(self, error: BaseException) -> str:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return without_password(text, self.url)

    def _connect_error(self, text: str) -> ConfigError | StoreBusyError:
        reason = without_password(text.strip().splitlines()[0] if text.strip() else "no reason given", self.url)
        reason = reason.split(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
        message = f"cannot connect to {self.where}: {reason}"
        if "password" in reason:
            return ConfigError(
                message, hint="set the password in PGPASSWORD or ~/.pgpass (never in the project), or fix the user"
            )
        if "does not exist" in reason:
            return ConfigError(message, hint="create it (`createdb NAME`), or fix the URL given to --store")
        return StoreBusyError(message, hint="start PostgreSQL there, or fix the host and port given to --store")

    def migrate(self, connection: Any) -> None:
        """Apply the migrations not yet recorded in `_migrations`, in order, under an advisory lock: the first
        process to open a new database creates the tables, the others wait for it and find them."""
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, MIGRATION_LOCK))
            self.apply_migrations(connection, MIGRATIONS)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield a connection inside a transaction that holds the writers' lock until it commits or rolls back."""
        with self._pool.connection(self.busy_timeout) as connection:
            if not self._pool.migrated:
                self.migrate(connection)
                self._pool.migrated = True
            with connection.transaction():
                connection.execute(f"SET LOCAL lock_timeout = {int(self.busy_timeout * 1000)}")
                connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, WRITE_LOCK))
                yield connection

    def _read(self, query: str, parameters: tuple = ()) -> list[tuple]:
        # Each query runs in its own snapshot (autocommit): it sees every commit made before it.
        with self.errors():
            for attempt in range(2):
                try:
                    with self._pool.connection(self.busy_timeout) as connection:
                        return connection.execute(self.sql(query), parameters).fetchall()
                except pg_errors.UndefinedTable:
                    return []  # nothing written yet: the first writer creates the tables
                except psycopg.OperationalError:
                    if attempt:  # an idle connection may have died with a server restart: one fresh try
                        raise
        return []

    def check(self) -> None:
        """Raise a one-line error when the database cannot be reached or read."""
        self._read("SELECT COUNT(*) FROM _migrations")
