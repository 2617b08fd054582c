"""The feedback store: new events in SQLite (WAL mode), validated row by row, idempotent by event id."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from bigrec_cli.data import parse_timestamp_value
from bigrec_cli.errors import DataError

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 20_000
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


def _text_field(row: dict[str, Any], name: str, *, required: bool, limit: int = MAX_ID_LENGTH) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RowError(f"{name} must be text, got {type(value).__name__}")
    value = str(value).strip()
    if required and not value:
        raise RowError(f"{name} is empty")
    if len(value) > limit:
        raise RowError(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise RowError(f"{name} contains a NUL character")
    return value


def parse_event(row: dict[str, Any], now: float) -> ParsedEvent:
    """Validate one raw row and return it typed, or raise RowError with the reason.

    Args:
        row: Field name → raw value (text from CSV, JSON values from JSON lines).
        now: The timestamp given to rows without one.
    """
    user_id = _text_field(row, "user_id", required=True)
    item_id = _text_field(row, "item_id", required=True)
    raw_timestamp = row.get("timestamp")
    if raw_timestamp is None or (isinstance(raw_timestamp, str) and not raw_timestamp.strip()):
        timestamp = now
    elif isinstance(raw_timestamp, bool) or not isinstance(raw_timestamp, (int, float, str)):
        raise RowError(f"timestamp must be a number or ISO-8601 text, got {type(raw_timestamp).__name__}")
    else:
        parsed = parse_timestamp_value(str(raw_timestamp))
        if parsed is None:
            raise RowError(f"timestamp {str(raw_timestamp)[:40]!r} is not Unix seconds or ISO-8601 (or is negative)")
        timestamp = parsed
    event = _text_field(row, "event", required=False) or "interaction"
    raw_weight = row.get("weight")
    if raw_weight is None or (isinstance(raw_weight, str) and not raw_weight.strip()):
        weight = 1.0
    else:
        try:
            weight = float(raw_weight)
        except (TypeError, ValueError):
            raise RowError(f"weight {str(raw_weight)[:40]!r} is not a number") from None
        if not math.isfinite(weight):
            raise RowError("weight is not finite")
    title = _text_field(row, "title", required=False, limit=MAX_TEXT_LENGTH)
    text = _text_field(row, "text", required=False, limit=MAX_TEXT_LENGTH)
    description = _text_field(row, "description", required=False, limit=MAX_TEXT_LENGTH)
    if description and not text:
        text = " | ".join(part for part in (title, description) if part)
    elif title and not text:
        text = title
    event_id = _text_field(row, "event_id", required=False)
    if not event_id:
        content = "\x1f".join([user_id, item_id, str(raw_timestamp or ""), event, str(raw_weight or "")])
        event_id = "h:" + hashlib.sha256(content.encode("utf-8")).hexdigest()[:32]
    return ParsedEvent(event_id, user_id, item_id, timestamp, event, weight, title, text)


def read_rows(stream: io.TextIOBase, source: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (line number, row or None, raw line) from CSV or JSON lines text; None marks an unparseable line.

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
            except json.JSONDecodeError:
                yield number, None, line
                continue
            yield number, value if isinstance(value, dict) else None, line
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [name for name in ("user_id", "item_id") if name not in header]
    if missing:
        raise DataError(
            f"{source} has no column {', '.join(repr(name) for name in missing)}",
            hint=f"columns found: {', '.join(header) or 'none'}; required: user_id, item_id (timestamp, event, "
            "weight, event_id, title, text optional)",
        )
    for row in reader:
        extra = row.pop(None, None)
        raw = ",".join(str(value) for value in row.values())
        if extra:
            yield reader.line_num, None, raw
        else:
            yield reader.line_num, row, raw


class FeedbackStore:
    """Feedback events and new items in one SQLite file.

    Args:
        path: The database file; created with its schema on first write.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._readers = threading.local()

    def exists(self) -> bool:
        return self.path.exists()

    def connect(self) -> sqlite3.Connection:
        """Open the database in WAL mode, waiting for other writers instead of failing."""
        connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        connection.execute("PRAGMA busy_timeout = 60000")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    def migrate(self, connection: sqlite3.Connection) -> None:
        """Apply the migrations not yet recorded in `_migrations`, in order."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
            done = {name for (name,) in connection.execute("SELECT name FROM _migrations")}
            for name, script in MIGRATIONS:
                if name in done:
                    continue
                for statement in filter(str.strip, script.split(";")):
                    connection.execute(statement)
                connection.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def ingest(self, stream: io.TextIOBase, *, source: str, known_items: set[str],
               rejects_path: Path) -> IngestSummary:  # fmt: skip
        """Validate every row, store the new ones in one transaction and log the rejected ones.

        Args:
            stream: CSV or JSON lines text.
            source: The file name, for messages and the rejects log.
            known_items: Item ids in the catalog; other items need text in the row.
            rejects_path: JSON lines file that rejected rows are appended to.

        Returns:
            Counts of accepted, duplicate and rejected rows.
        """
        return self.ingest_rows(read_rows(stream, source), source=source, known_items=known_items,
                                rejects_path=rejects_path)  # fmt: skip

    def ingest_rows(self, rows: Iterable[tuple[int, dict[str, Any] | None, str]], *, source: str,
                    known_items: set[str], rejects_path: Path | None, all_or_nothing: bool = False) -> IngestSummary:  # fmt: skip
        """Store (line, row, raw) rows as `ingest` does; with `all_or_nothing`, one bad row stores nothing."""
        now = time.time()
        summary = IngestSummary()
        parsed: list[tuple[int, ParsedEvent]] = []
        for number, row, raw in rows:
            summary.num_rows += 1
            try:
                if row is None:
                    raise RowError("line cannot be parsed (wrong number of fields or invalid JSON)")
                parsed.append((number, parse_event(row, now)))
            except RowError as error:
                summary.rejections.append({"line": number, "reason": str(error), "row": raw[:2000]})
        if all_or_nothing and summary.rejections:
            summary.num_rejected = len(summary.rejections)
            return summary
        connection = self.connect()
        try:
            self.migrate(connection)
            connection.execute("BEGIN IMMEDIATE")
            try:
                stored_items = {item for (item,) in connection.execute("SELECT item_id FROM items")}
                for number, event in parsed:
                    is_new_item = event.item_id not in known_items and event.item_id not in stored_items
                    if is_new_item and not event.text:
                        summary.rejections.append({"line": number, "reason": f"unknown item_id {event.item_id!r} "
                                                   "without title or text", "row": event.item_id})  # fmt: skip
                        if all_or_nothing:
                            raise _Abort
                        continue
                    if is_new_item:
                        connection.execute("INSERT INTO items VALUES (?, ?, ?, ?)",
                                           (event.item_id, event.title or event.text, event.text, now))  # fmt: skip
                        stored_items.add(event.item_id)
                        summary.num_new_items += 1
                    cursor = connection.execute(
                        "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (event.event_id, event.user_id, event.item_id, event.timestamp, event.event, event.weight,
                         source, now),
                    )  # fmt: skip
                    if cursor.rowcount:
                        summary.num_accepted += 1
                    else:
                        summary.num_duplicates += 1
                connection.execute("COMMIT")
            except _Abort:
                connection.execute("ROLLBACK")
                summary.num_accepted = summary.num_duplicates = summary.num_new_items = 0
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        finally:
            connection.close()
        summary.num_rejected = len(summary.rejections)
        if summary.rejections and rejects_path is not None:
            rejects_path.parent.mkdir(parents=True, exist_ok=True)
            with open(rejects_path, "a", encoding="utf-8") as log:
                for rejection in sorted(summary.rejections, key=lambda entry: entry["line"]):
                    log.write(json.dumps({"source": source, "rejected_at": now, **rejection}) + "\n")
            summary.rejects_path = str(rejects_path)
        return summary

    def _read(self, query: str, parameters: tuple = ()) -> list[tuple]:
        if not self.exists():
            return []
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            # One read-only connection per thread, kept open: each query is its own read transaction, so under
            # WAL it sees every commit made before it, and a request pays no connect.
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60.0, check_same_thread=False)
            connection.execute("PRAGMA busy_timeout = 60000")
            self._readers.connection = connection
        try:
            return connection.execute(query, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise

    def user_events(self, user_id: str) -> list[tuple[str, float]]:
        """Return (item_id, timestamp) of one user's feedback events, oldest first."""
        return self._read("SELECT item_id, timestamp FROM events WHERE user_id = ? ORDER BY timestamp, rowid",
                          (user_id,))  # fmt: skip

    def events_frame(self, up_to_rowid: int | None = None) -> pd.DataFrame:
        """Return feedback events (all, or up to a rowid) with user_id, item_id, timestamp, event, weight, event_id."""
        limit = up_to_rowid if up_to_rowid is not None else 2**62
        rows = self._read("SELECT user_id, item_id, timestamp, event, weight, event_id FROM events WHERE rowid <= ? "
                          "ORDER BY rowid", (limit,))  # fmt: skip
        return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event", "weight", "event_id"])

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
