"""The event row format, its limits and its one timestamp parser: the rules files and feedback both obey.

`preprocess` reads whole files and fails on the first rule a row breaks (naming every line that breaks it);
`ingest-feedback` and `POST /feedback` validate row by row and reject each bad row with its reason. Both call
`validate_events`, so one corpus is accepted or rejected the same way at every door.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
ID_COLUMNS = ("user_id", "item_id")
TEXT_COLUMNS = ("event_id", "event", "title", "text", "description")
DEFAULT_EVENT = "interaction"
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 20_000
TIMESTAMP_HINT = "use Unix seconds or ISO-8601 such as 2024-05-01T12:00:00Z"
FUTURE_MARGIN_DAYS = 366.0  # events later than now + this are refused (BIGREC_FUTURE_MARGIN_DAYS overrides it)


# A behaviour sequence is one int64 array of tokens: item index + event type × TYPE_STRIDE. Type 0 (the data's most
# common positive type) leaves the token equal to the item index, so data with one event type reads as before.
TYPE_STRIDE = 1 << 32
LOW_RATING_EVENT = "dislike"  # what `--min-rating` makes of a lower rating: negative behaviour (a default negative)


def token_items(tokens: np.ndarray) -> np.ndarray:
    """The item index of each sequence token (0 is padding)."""
    return np.asarray(tokens, dtype="int64") % TYPE_STRIDE


def token_types(tokens: np.ndarray) -> np.ndarray:
    """The event type id of each sequence token."""
    return np.asarray(tokens, dtype="int64") // TYPE_STRIDE


def map_event_types(events: pd.DataFrame, event_map: dict[str, str], min_rating: float | None) -> pd.DataFrame:
    """Rename raw event values to types (`event_map`, e.g. view → click) and, with `min_rating`, make events rated
    below it negative behaviour (`dislike`). Both doors (preprocess, feedback) call this, so types agree."""
    if not event_map and min_rating is None:
        return events
    events = events.copy()
    if event_map:
        events["event"] = events["event"].map(lambda value: event_map.get(value, value))
    if min_rating is not None and "rating" in events.columns:
        events.loc[events["rating"].to_numpy() < min_rating, "event"] = LOW_RATING_EVENT
    return events


def latest_timestamp() -> float:
    """The latest timestamp an event may carry: now plus the future margin."""
    margin = float(os.environ.get("BIGREC_FUTURE_MARGIN_DAYS", FUTURE_MARGIN_DAYS))
    return time.time() + margin * 86400.0


def parse_timestamps(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Parse Unix seconds or ISO-8601 text into float seconds since the epoch (naive times are UTC).

    Returns:
        The seconds (NaN where unparseable) and a boolean mask of the rows that failed (also negative or infinite).
    """
    text = values.astype(str).str.strip()
    numeric = np.array(pd.to_numeric(text, errors="coerce"), dtype="float64", copy=True)
    needs_date = np.isnan(numeric) & (text != "").to_numpy()
    if needs_date.any():
        try:
            parsed = pd.to_datetime(text[needs_date], errors="coerce", utc=True, format="ISO8601")
            seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype="float64")
        except (pd.errors.OutOfBoundsDatetime, OverflowError):  # a date past 2262: read it value by value
            seconds = np.array([_iso_seconds(value) for value in text[needs_date]], dtype="float64")
        numeric[needs_date] = seconds
    bad = ~np.isfinite(numeric) | (numeric < 0)
    return numeric, bad


def _iso_seconds(text: str) -> float:
    """One ISO-8601 value outside pandas' range (years 1677-2262), as seconds; NaN when it is not a date."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        return float("nan")
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


@dataclass(frozen=True)
class Failure:
    """Rows that break one rule.

    Attributes:
        summary: What is wrong, for a file (`empty user_id`), followed by the lines in a message.
        hint: How to fix it.
        rows: Positions of the rows that break the rule.
        reasons: The reason of each of those rows, for row-by-row rejection.
        rule: The rule's place in the order of checks (1 = checked first), so that failures of one file's
            batches can be ranked as a check of the whole file would rank them.
    """

    summary: str
    hint: str
    rows: np.ndarray
    reasons: list[str]
    rule: int = 0


@dataclass(frozen=True)
class EventCheck:
    """The typed events (every row, bad ones included) and the rules they break, in the order they are checked."""

    events: pd.DataFrame
    failures: list[Failure]

    def row_reasons(self) -> list[str]:
        """The first reason each row fails, or "" for a valid row."""
        reasons = [""] * len(self.events)
        for failure in self.failures:
            for row, reason in zip(failure.rows, failure.reasons):
                reasons[row] = reasons[row] or reason
        return reasons


def _text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series([""] * len(frame), index=frame.index, dtype=object)
    values = frame[column]
    return values.where(values.notna(), "").astype(str).str.strip()


def validate_events(frame: pd.DataFrame, *, default_timestamp: float | None = None) -> EventCheck:
    """Check every event row and return the typed columns `user_id, item_id, timestamp, event, weight[, rating]`.

    Args:
        frame: Raw rows (text or JSON values); `user_id`, `item_id` and, unless `default_timestamp`, `timestamp`.
        default_timestamp: The time given to rows whose timestamp is missing or empty (feedback: now).
    """
    frame = frame.reset_index(drop=True)
    events = pd.DataFrame({column: _text_column(frame, column) for column in ID_COLUMNS})
    failures: list[Failure] = []
    num_rules = 0

    def fail(mask: np.ndarray, summary: str, hint: str, reason: str | Callable[[int], str]) -> None:
        nonlocal num_rules
        num_rules += 1
        rows = np.flatnonzero(mask)
        if len(rows):
            reasons = [reason] * len(rows) if isinstance(reason, str) else [reason(row) for row in rows]
            failures.append(Failure(summary, hint, rows, reasons, num_rules))

    for column in ID_COLUMNS:
        values = events[column]
        fail((values == "").to_numpy(), f"empty {column}", f"every event needs a {column}", f"{column} is empty")
        fail(
            (values.str.len() > MAX_ID_LENGTH).to_numpy(),
            f"{column} longer than {MAX_ID_LENGTH} characters",
            "ids are short keys; put long text in the items file",
            f"{column} is longer than {MAX_ID_LENGTH} characters",
        )
        fail(
            values.str.contains("\x00", regex=False).to_numpy(),
            f"{column} contains a NUL character",
            "remove control characters from ids",
            f"{column} contains a NUL character",
        )
    raw_time = _text_column(frame, "timestamp")
    if default_timestamp is not None:
        raw_time = raw_time.where(raw_time != "", repr(default_timestamp))
    numbers = frame["timestamp"] if "timestamp" in frame.columns else None
    exact = numbers is not None and (pd.api.types.is_integer_dtype(numbers.dtype) or numbers.dtype == np.float64)
    if exact and default_timestamp is None:
        # Parquet and JSON give numbers: the same seconds as parsing their text (float32 text would round otherwise)
        seconds = numbers.to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isfinite(seconds) | (seconds < 0)
    else:
        seconds, bad = parse_timestamps(raw_time)
    example = raw_time.iloc[int(np.flatnonzero(bad)[0])] if bad.any() else ""
    fail(
        bad,
        f"unparseable timestamp {example!r}",
        TIMESTAMP_HINT,
        lambda row: f"timestamp {raw_time.iloc[row][:40]!r} is not Unix seconds or ISO-8601 (or is negative)",
    )
    latest = latest_timestamp()
    future = ~bad & (seconds > latest)
    fail(
        future,
        f"timestamp {raw_time.iloc[int(np.flatnonzero(future)[0])] if future.any() else ''!r} lies in the future",
        f"events may be at most {(latest - time.time()) / 86400:.0f} days ahead of now "
        "(BIGREC_FUTURE_MARGIN_DAYS); check the unit (seconds, not milliseconds)",
        lambda row: f"timestamp {raw_time.iloc[row][:40]!r} lies more than the allowed margin in the future",
    )
    events["timestamp"] = seconds
    events["event"] = _text_column(frame, "event").replace("", DEFAULT_EVENT)
    events["weight"] = np.ones(len(frame))
    for column in ("weight", "rating"):
        if column not in frame.columns:
            num_rules += 1  # the rule keeps its number in a batch that lacks the column (JSON lines may)
            continue
        raw = _text_column(frame, column)
        # Rows of feedback may leave the cell empty (a weight then counts 1, a rating stays unknown); files may not.
        missing = (raw == "").to_numpy() if default_timestamp is not None else False
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64")
        fail(
            ~np.isfinite(values) & ~missing,
            f"{column} is not a finite number",
            f"write {column} as a number or leave the column out",
            lambda row, raw=raw, column=column: (
                f"{column} is not finite ({raw.iloc[row][:40]!r})"
                if raw.iloc[row].lower().lstrip("+-") in ("nan", "inf", "infinity")
                else f"{column} {raw.iloc[row][:40]!r} is not a number"
            ),
        )
        events[column] = np.where(missing, 1.0 if column == "weight" else np.nan, values)
    return EventCheck(events, failures)


def frame_from_objects(objects: Iterable[dict[str, Any] | None]) -> tuple[pd.DataFrame, list[str]]:
    """Turn decoded rows (CSV text or JSON values) into a frame of text cells, and a type error per row ("" if none).

    JSON gives values that are not text: numbers become their text, while lists, objects and booleans are refused.
    """
    cells: list[dict[str, str]] = []
    errors: list[str] = []
    for values in objects:
        row: dict[str, str] = {}
        error = "" if values is not None else "line cannot be parsed (wrong number of fields or invalid JSON)"
        for name, value in (values or {}).items():
            if value is None or (isinstance(value, float) and np.isnan(value) and name != "weight"):
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                error = error or f"{name} must be text or a number, got {type(value).__name__}"
                continue
            try:
                text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
            except ValueError:  # an integer with more digits than Python will print
                error = error or f"{name} is a number too large to read"
                continue
            if name in TEXT_COLUMNS and len(text) > MAX_TEXT_LENGTH:
                error = error or f"{name} is longer than {MAX_TEXT_LENGTH} characters"
                continue
            if "\x00" in text:
                error = error or f"{name} contains a NUL character"
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                error = error or f"{name} is not valid Unicode (it holds a lone surrogate)"
                continue
            row[str(name)] = text
        cells.append(row)
        errors.append(error)
    frame = pd.DataFrame.from_records(cells) if cells else pd.DataFrame()
    return frame.reindex(range(len(cells))), errors
