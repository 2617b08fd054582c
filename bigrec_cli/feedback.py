"""The feedback store: new events in SQLite (WAL mode), validated row by row, idempotent by event id.

`ingest(project, rows)` is the one way in: the CLI and the server only decode their input into `Row`s.
`open_store(project)` opens the project's store: this SQLite file by default, or a PostgreSQL database shared by
many servers (`--store postgresql://…`, `bigrec_cli.pgstore`) with the same tables, SQL and guarantees.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from bigrec_cli.data import EventPolicy, catalog_item_ids, event_policy
from bigrec_cli.errors import ArtifactError, ConfigError, DataError, StoreBusyError
from bigrec_cli.events import cells_from_objects, validate_cells
from bigrec_cli.project import ProjectDir

STORE_ENV = "BIGREC_STORE"  # the store's URL when `--store` is not given: every command and server worker reads it
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# The most ids one `IN (…)` query names (SQLite before 3.32 allows 999 parameters a statement).
IDS_PER_QUERY = 500
# Page cache of each thread's read connection (SQLite's default is 2 MiB). A server keeps one per worker thread (up
# to 40) and each request reads one user's rows through an index, so a small cache bounds memory at no cost.
READER_CACHE_KIB = 256
MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "m001_events_items",
        """
        CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            timestamp REAL NOT NULL,
            event TEXT NOT NULL,
            weight REAL NOT NULL,
            source TEXT NOT NULL,
            ingested_at REAL NOT NULL
        );
        CREATE INDEX events_by_user ON events (user_id, timestamp);
        CREATE TABLE items (
            item_id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            text TEXT NOT NULL,
            ingested_at REAL NOT NULL
        );
        """,
    ),
    (
        # An event id names an event of one user: user A's "dup1" must not swallow user B's "dup1".
        "m002_event_ids_per_user",
        """
        UPDATE events SET event_id = user_id || char(31) || event_id WHERE event_id NOT LIKE 'h:%'
        """,
    ),
)


# The statements both back-ends run, in SQLite's dialect; PostgreSQL's store changes only the placeholders (its tables
# name their BIGSERIAL key `rowid`, so "the order events were stored in" reads the same in both).
ADD_ITEM = "INSERT INTO items (item_id, title, text, ingested_at) VALUES (?, ?, ?, ?)"
ADD_EVENT = (
    "INSERT INTO events (event_id, user_id, item_id, timestamp, event, weight, source, ingested_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


@dataclass
class IngestSummary:
    """What one ingestion did."""

    num_rows: int = 0
    num_accepted: int = 0
    num_duplicates: int = 0
    num_rejected: int = 0
    num_new_items: int = 0
    rejects_path: str | None = None
    rejections: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One decoded input row: its line (or position in an HTTP body), its values (None: undecodable) and raw text."""

    line: int
    values: dict[str, Any] | None
    raw: str


@dataclass(frozen=True)
class ParsedEvent:
    """One valid feedback row."""

    event_id: str
    user_id: str
    item_id: str
    timestamp: float
    event: str
    weight: float
    title: str
    text: str


class _Abort(Exception):
    """Unwinds an all-or-nothing ingestion after a rejected row."""


class RowError(ValueError):
    """A row that cannot be stored; the message is its rejection reason."""


def parse_rows(
    rows: list[Row], now: float, policy: EventPolicy | None = None
) -> tuple[list[tuple[Row, ParsedEvent]], list[dict[str, Any]]]:
    """Validate rows with the event rules of `bigrec_cli.events`; return the valid ones and a rejection per bad one.

    Args:
        rows: Decoded rows.
        now: The timestamp given to rows without one.
        policy: The project's event policy: its event map and rating threshold turn raw values into types, as
            `preprocess` did.
    """
    cells, type_errors = cells_from_objects(row.values for row in rows)
    check = validate_cells(cells, default_timestamp=now)
    reasons = check.row_reasons()
    typed = ("user_id", "item_id", "event", "timestamp", "weight")
    if policy is not None and (policy.event_map or policy.min_rating is not None):
        events = policy.map_events(check.events)
        columns = {name: events[name].tolist() for name in typed}
    else:  # nothing to map: the plain values, without a frame (a POST of one event pays no pandas)
        columns = {name: check.values(name) for name in typed}
    texts = {
        name: [row.get(name, "").strip() for row in cells]
        for name in ("event_id", "timestamp", "weight", "title", "text", "description")
    }
    accepted, rejections = [], []
    for position, row in enumerate(rows):
        reason = type_errors[position] or reasons[position]
        if reason:
            rejections.append({"line": row.line, "reason": reason, "row": row.raw[:2000]})
            continue
        user_id, item_id, event = (columns[name][position] for name in ("user_id", "item_id", "event"))
        title, text, description = (texts[name][position] for name in ("title", "text", "description"))
        if description and not text:
            text = " | ".join(part for part in (title, description) if part)
        elif title and not text:
            text = title
        event_id = texts["event_id"][position]
        if event_id:
            event_id = f"{user_id}\x1f{event_id}"  # ids are scoped per user (migration m002)
        else:
            content = "\x1f".join([user_id, item_id, texts["timestamp"][position], event, texts["weight"][position]])
            event_id = "h:" + hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]
        parsed = ParsedEvent(
            event_id,
            user_id,
            item_id,
            float(columns["timestamp"][position]),
            event,
            float(columns["weight"][position]),
            title,
            text,
        )
        accepted.append((row, parsed))
    return accepted, rejections


def parse_event(values: dict[str, Any], now: float) -> ParsedEvent:
    """Validate one row and return it typed, or raise RowError with the reason (see `parse_rows`)."""
    accepted, rejections = parse_rows([Row(1, values, "")], now)
    if rejections:
        raise RowError(rejections[0]["reason"])
    return accepted[0][1]


def rows_from_objects(objects: list[Any]) -> list[Row]:
    """Rows from decoded JSON values (an HTTP body's list of events), numbered from 1."""
    return [
        Row(number, value if isinstance(value, dict) else None, _raw_json(value))
        for number, value in enumerate(objects, start=1)
    ]


def _raw_json(value: Any) -> str:
    try:
        return json.dumps(value)[:2000]
    except (TypeError, ValueError):
        return repr(value)[:2000]


def read_rows(stream: io.TextIOBase, source: str) -> Iterator[Row]:
    """Yield rows from CSV or JSON lines text; a row whose values are None could not be decoded.

    The format is JSON lines when the first non-blank character is `{`, CSV otherwise.
    """
    text = stream.read()
    if not text.strip():
        raise DataError(f"{source} is empty", hint="give a CSV with a header row, or JSON lines")
    if text.lstrip().startswith("{"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):
                yield Row(number, None, line)
                continue
            yield Row(number, value if isinstance(value, dict) else None, line)
        return
    first_line = text.lstrip().split("\n", 1)[0]
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [name for name in ("user_id", "item_id") if name not in header]
    if missing:
        hint = " (is the delimiter a comma or a tab?)" if len(header) == 1 else ""
        raise DataError(
            f"{source} has no column {', '.join(repr(name) for name in missing)}{hint}",
            hint=f"columns found: {', '.join(header) or 'none'}; required: user_id, item_id (timestamp, event, "
            "weight, event_id, title, text optional)",
        )
    for row in reader:
        extra = row.pop(None, None)
        raw = ",".join(str(value) for value in row.values())
        yield Row(reader.line_num, None if extra else row, raw)


def ingest(
    project: ProjectDir,
    rows: Iterable[Row],
    *,
    source: str,
    all_or_nothing: bool = False,
    busy_timeout: float = 60.0,
    store: "FeedbackStore | None" = None,
) -> IngestSummary:
    """Validate rows, store the valid ones in one transaction, and log the rejected ones.

    Items outside the project's catalog (and not stored by earlier feedback) need a title or text in the row.

    Args:
        project: The project (`preprocess` must have run).
        rows: Decoded rows (`read_rows` for files, `rows_from_objects` for HTTP bodies).
        source: Where the rows come from, for the store and the rejects log.
        all_or_nothing: One bad row stores nothing (HTTP); otherwise rejected rows go to `feedback.rejects.jsonl`.
        busy_timeout: Seconds to wait for another writer before raising StoreBusyError.
        store: The project's store, kept open by a caller that writes often (the server; its own busy timeout
            applies); default: opened for this call and closed after it.
    """
    project.require_data()
    opened = store is None
    store = open_store(project, busy_timeout=busy_timeout) if store is None else store
    try:
        return store.ingest_rows(
            list(rows),
            source=source,
            known_items=catalog_item_ids(project),
            rejects_path=None if all_or_nothing else project.rejects_path,
            all_or_nothing=all_or_nothing,
            policy=event_policy(project),
        )
    finally:
        if opened:
            store.close()


def store_url(project: ProjectDir) -> str | None:
    """The PostgreSQL URL of the project's store (`--store`, else `BIGREC_STORE`), or None for its SQLite file."""
    url = (project.store_url or os.environ.get(STORE_ENV, "")).strip()
    if url in ("", "sqlite"):
        return None
    if not url.startswith(POSTGRES_SCHEMES):
        shown = url.split("://", 1)[0] + "://…" if "://" in url else url[:40]
        raise ConfigError(
            f"--store {shown!r} is not a store bigrec knows",
            hint="give postgresql://USER@HOST:PORT/DATABASE, or leave --store and BIGREC_STORE unset for the "
            "project's feedback.sqlite3",
        )
    return url


def open_store(project: ProjectDir, busy_timeout: float = 60.0) -> "FeedbackStore":
    """The project's feedback store: its `feedback.sqlite3`, or the PostgreSQL database `store_url` names.

    Args:
        project: The project (its `store_url`, or the environment's `BIGREC_STORE`, chooses the back-end).
        busy_timeout: Seconds a write waits for another writer before raising StoreBusyError.
    """
    url = store_url(project)
    if url is None:
        return FeedbackStore(project.feedback_db, busy_timeout=busy_timeout)
    from bigrec_cli.pgstore import PostgresStore  # psycopg is loaded only by projects that use it

    return PostgresStore(url, busy_timeout=busy_timeout)


def nobody_writes(path: Path) -> bool:
    """True when no process can change the file: its file system is mounted read-only, or no one has write
    permission on it and on its folder (root aside)."""
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return True
        return not (path.stat().st_mode & 0o222) and not (path.parent.stat().st_mode & 0o222)
    except OSError:
        return False


_write_locks: dict[tuple[int, str], threading.Lock] = {}
_write_locks_guard = threading.Lock()


def write_lock(path: str) -> threading.Lock:
    """The lock this process's writers of one SQLite file (its real path) take turns on; a forked child gets its own.

    A writer that finds SQLite's write lock taken sleeps in SQLite's busy handler, 1, 2, 5, 10, 15, 20, 25 ms and on
    between tries, however soon the lock is free: with two threads posting one event at a time, a writer's BEGIN
    waited up to 55 ms behind transactions of about 1 ms. Waiting here instead, it starts the moment the other
    commits. Writers in other processes still meet SQLite's lock and its busy timeout.
    """
    key = (os.getpid(), path)
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.Lock())


def rollback_quietly(connection: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open, without hiding the error that caused it."""
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class FeedbackStore:
    """Feedback events and new items in one SQLite file.

    The write connection is opened (and the schema migrated) at the first write and kept for the next ones, until
    `close`, an SQLite error, or the file being replaced.

    Args:
        path: The database file; created with its schema on first write.
        busy_timeout: Seconds a write waits for another writer before raising StoreBusyError: for one of this
            process (see `write_lock`), then for one of another process.
    """

    def __init__(self, path: Path, busy_timeout: float = 60.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._readers = threading.local()
        self._open: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._real_path = os.path.realpath(path)
        self._writer: sqlite3.Connection | None = None
        self._writer_file: tuple[int, int, int] | None = None  # process id, device and inode it was opened on

    def close(self) -> None:
        """Close every connection this store opened (a swapped-out server model calls it)."""
        with self._lock:
            connections, self._open = self._open, []
        for _, connection in connections:
            connection.close()
        self._readers = threading.local()
        if self._writer is not None:
            with write_lock(self._real_path):
                self._close_writer()

    def busy_error(self) -> StoreBusyError:
        """The error of a write that waited `busy_timeout` for another writer."""
        return StoreBusyError(
            f"{self.path} is locked by another writer (waited {self.busy_timeout:g} s)",
            hint="retry shortly; a long-running ingest-feedback or retrain may hold it",
        )

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn SQLite's failures that a user can act on into one-line errors with the fix."""
        try:
            yield
        except sqlite3.OperationalError as error:
            text = str(error)
            if "locked" in text or "busy" in text:
                raise self.busy_error() from None
            if "readonly" in text or "read-only" in text:
                raise ArtifactError(
                    f"{self.path} cannot be written: {text}", hint="check the project's permissions"
                ) from None
            if "disk" in text and "full" in text:
                raise ArtifactError(
                    f"{self.path}: the disk is full ({text})", hint="free some space and retry"
                ) from None
            if "unable to open" in text:
                raise ArtifactError(
                    f"{self.path} cannot be opened: {text}", hint="check the project's permissions"
                ) from None
            raise
        except sqlite3.DatabaseError as error:
            raise ArtifactError(
                f"{self.path} is damaged: {error}",
                hint=f"restore it from a backup (`sqlite3 {self.path.name} 'PRAGMA integrity_check'` says more)",
            ) from None

    def exists(self) -> bool:
        return self.path.exists()

    def connect(self) -> sqlite3.Connection:
        """Open the database in WAL mode, waiting for other writers instead of failing."""
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    def migrate(self, connection: sqlite3.Connection) -> None:
        """Apply the migrations not yet recorded in `_migrations`, in order."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            self.apply_migrations(connection, MIGRATIONS)
            connection.execute("COMMIT")
        except BaseException:
            rollback_quietly(connection)
            raise

    def apply_migrations(self, connection: Any, migrations: tuple[tuple[str, str], ...]) -> None:
        """Run the migrations not yet recorded in `_migrations`, in order, inside the caller's transaction."""
        connection.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)"
        )
        done = {name for (name,) in connection.execute("SELECT name FROM _migrations")}
        for name, script in migrations:
            if name in done:
                continue
            for statement in filter(str.strip, script.split(";")):
                connection.execute(statement)
            connection.execute(self.sql("INSERT INTO _migrations VALUES (?, ?)"), (name, time.time()))

    def ingest_rows(
        self,
        rows: list[Row],
        *,
        source: str,
        known_items: frozenset[str] | set[str],
        rejects_path: Path | None,
        all_or_nothing: bool = False,
        policy: EventPolicy | None = None,
    ) -> IngestSummary:
        """Store valid rows in one transaction; with `all_or_nothing`, one bad row stores nothing."""
        now = time.time()
        summary = IngestSummary(num_rows=len(rows))
        parsed, rejections = parse_rows(rows, now, policy)
        summary.rejections = rejections
        if not (all_or_nothing and rejections):
            with self.errors():
                self._write(parsed, summary, known_items, source, now, all_or_nothing)
        summary.rejections.sort(key=lambda entry: entry["line"])
        summary.num_rejected = len(summary.rejections)
        if summary.rejections and rejects_path is not None:
            rejects_path.parent.mkdir(parents=True, exist_ok=True)
            with open(rejects_path, "a", encoding="utf-8") as log:
                for rejection in summary.rejections:
                    log.write(json.dumps({"source": source, "rejected_at": now, **rejection}) + "\n")
            summary.rejects_path = str(rejects_path)
        return summary

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield a connection inside a write transaction, the only writer until it ends; commit when the block
        succeeds, roll back when it raises."""
        lock = write_lock(self._real_path)
        if not lock.acquire(timeout=self.busy_timeout):
            raise self.busy_error()
        try:
            connection = self._writing_connection()
            try:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except BaseException as error:
                rollback_quietly(connection)  # SQLite may have rolled back already (disk full): keep the real error
                if isinstance(error, sqlite3.Error) or connection.in_transaction:
                    self._close_writer()  # the next write starts from a fresh connection
                raise
        finally:
            lock.release()

    def _writing_connection(self) -> sqlite3.Connection:
        """The kept write connection (under the write lock): opened and migrated when there is none, or when the
        file it was opened on has been deleted or replaced since. A forked child never uses its parent's."""
        identity = self._file_identity()
        if self._writer is not None and identity != self._writer_file:
            self._close_writer()
        if self._writer is None:
            connection = self.connect()
            try:
                self.migrate(connection)
            except BaseException:
                connection.close()
                raise
            self._writer, self._writer_file = connection, self._file_identity()
        return self._writer

    def _file_identity(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return os.getpid(), stat.st_dev, stat.st_ino

    def _close_writer(self) -> None:
        writer, opened_on = self._writer, self._writer_file
        self._writer = self._writer_file = None
        if writer is not None and opened_on is not None and opened_on[0] == os.getpid():
            writer.close()  # a connection opened before a fork is only dropped: SQLite forbids closing it after

    def sql(self, statement: str) -> str:
        """A statement written in SQLite's dialect, in this store's."""
        return statement

    def _write(
        self,
        parsed: list[tuple[Row, ParsedEvent]],
        summary: IngestSummary,
        known_items: frozenset[str] | set[str],
        source: str,
        now: float,
        all_or_nothing: bool,
    ) -> None:
        try:
            with self.transaction() as connection:
                unknown = sorted({event.item_id for _, event in parsed if event.item_id not in known_items})
                stored_items = self._stored_items(connection, unknown)
                for row, event in parsed:
                    is_new_item = event.item_id not in known_items and event.item_id not in stored_items
                    if is_new_item and not event.text:
                        reason = f"unknown item_id {event.item_id!r} without title or text"
                        summary.rejections.append({"line": row.line, "reason": reason, "row": row.raw[:2000]})
                        if all_or_nothing:
                            raise _Abort
                        continue
                    if is_new_item:
                        connection.execute(
                            self.sql(ADD_ITEM), (event.item_id, event.title or event.text, event.text, now)
                        )
                        stored_items.add(event.item_id)
                        summary.num_new_items += 1
                    values = (event.event_id, event.user_id, event.item_id, event.timestamp, event.event)
                    cursor = connection.execute(self.sql(ADD_EVENT), (*values, event.weight, source, now))
                    if cursor.rowcount > 0:
                        summary.num_accepted += 1
                    else:
                        summary.num_duplicates += 1
        except _Abort:
            summary.num_accepted = summary.num_duplicates = summary.num_new_items = 0

    def _stored_items(self, connection: Any, item_ids: list[str]) -> set[str]:
        """Which of these items earlier feedback stored (the question costs nothing when all are in the catalog)."""
        stored: set[str] = set()
        for start in range(0, len(item_ids), IDS_PER_QUERY):
            chunk = item_ids[start : start + IDS_PER_QUERY]
            query = f"SELECT item_id FROM items WHERE item_id IN ({', '.join('?' * len(chunk))})"
            stored.update(item for (item,) in connection.execute(self.sql(query), chunk))
        return stored

    def _read(self, query: str, parameters: tuple = ()) -> list[tuple]:
        if not self.exists():
            return []
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            # One read-only connection per thread, kept open: each query is its own read transaction, so under
            # WAL it sees every commit made before it, and a request pays no connect.
            with self.errors():
                connection = self._reader()
            self._readers.connection = connection
            # A server's worker threads come and go (anyio retires a thread idle for 10 s): close the connections of
            # threads that have ended, or a long-lived store would keep one open per thread it ever served.
            with self._lock:
                ended = [opened for thread, opened in self._open if not thread.is_alive()]
                self._open = [(thread, opened) for thread, opened in self._open if thread.is_alive()]
                self._open.append((threading.current_thread(), connection))
            for opened in ended:
                opened.close()
        try:
            with self.errors():
                return connection.execute(query, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise

    def _reader(self) -> sqlite3.Connection:
        """A read-only connection. Under WAL, SQLite needs to create `-shm` beside the file even to read; when
        nobody can write the store (a read-only mount, or a file without write permission for anyone), it is
        opened immutable instead: nothing can change it there. A store that only this user cannot write (another
        account ingests into it) gets the clear error instead, never a stale immutable view."""
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout = 60000")
            connection.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
            connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.OperationalError as error:
            connection.close()
            if "unable to open" not in str(error) or not nobody_writes(self.path):
                raise
            connection = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return connection

    def delete_user(self, user_id: str) -> int:
        """Delete every feedback event of one user; return how many."""
        if not self.exists():
            return 0
        with self.errors(), self.transaction() as connection:
            return connection.execute(self.sql("DELETE FROM events WHERE user_id = ?"), (user_id,)).rowcount

    def check(self) -> None:
        """Raise ArtifactError when the store exists but cannot be read (damaged, unreadable)."""
        self._read("SELECT COUNT(*) FROM sqlite_master")

    def user_events(self, user_id: str) -> list[tuple[str, float, str]]:
        """Return (item_id, timestamp, event) of one user's feedback events, oldest first."""
        return self._read(
            "SELECT item_id, timestamp, event FROM events WHERE user_id = ? ORDER BY timestamp, rowid", (user_id,)
        )

    def user_version(self, user_id: str) -> tuple[int, int, float]:
        """What identifies one user's feedback events as stored now: (how many, the highest rowid, the sum of their
        times), read from the user's index entries alone. Any event added or deleted changes it (a rowid reused
        after a deletion would need the same count and the same times too)."""
        rows = self._read(
            "SELECT COUNT(*), COALESCE(MAX(rowid), 0), COALESCE(SUM(timestamp), 0) FROM events WHERE user_id = ?",
            (user_id,),
        )
        count, last, times = rows[0] if rows else (0, 0, 0.0)
        return int(count), int(last), float(times)

    def events_frame(self, up_to_rowid: int | None = None) -> pd.DataFrame:
        """Return feedback events (all, or up to a rowid) with user_id, item_id, timestamp, event, weight, event_id."""
        limit = up_to_rowid if up_to_rowid is not None else 2**62
        rows = self._read(
            "SELECT user_id, item_id, timestamp, event, weight, event_id FROM events WHERE rowid <= ? ORDER BY rowid",
            (limit,),
        )
        return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event", "weight", "event_id"])

    def item_counts(self) -> pd.Series:
        """Feedback events per item (memory grows with the items, not with the events)."""
        rows = self._read("SELECT item_id, COUNT(*) FROM events GROUP BY item_id")
        return pd.Series(dict(rows), dtype="int64")

    def new_items(self, exclude: set[str] | None = None) -> pd.DataFrame:
        """Return items first named by feedback (item_id, title, text), minus `exclude`."""
        rows = self._read("SELECT item_id, title, text FROM items ORDER BY rowid")
        frame = pd.DataFrame(rows, columns=["item_id", "title", "text"])
        return frame[~frame["item_id"].isin(exclude or set())].reset_index(drop=True)

    def max_rowid(self) -> int:
        """Return the newest event's rowid (0 when empty): a run records it to know what it trained on."""
        rows = self._read("SELECT COALESCE(MAX(rowid), 0) FROM events")
        return int(rows[0][0]) if rows else 0

    def count_events_after(self, rowid: int) -> int:
        """Return how many events were stored after `rowid`."""
        rows = self._read("SELECT COUNT(*) FROM events WHERE rowid > ?", (rowid,))
        return int(rows[0][0]) if rows else 0

    def count_events(self) -> int:
        """Return how many feedback events are stored."""
        rows = self._read("SELECT COUNT(*) FROM events")
        return int(rows[0][0]) if rows else 0
