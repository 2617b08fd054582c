"""The event row format, its limits and its one timestamp parser: the rules files and feedback both obey.

`preprocess` reads whole files and fails on the first rule a row breaks (naming every line that breaks it);
`ingest-feedback` and `POST /feedback` validate row by row and reject each bad row with its reason. Both call
`validate_events`, so one corpus is accepted or rejected the same way at every door.
"""

from __future__ import annotations

import math
import os
import re
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


def _to_numbers(values: pd.Series) -> np.ndarray:
    """Text cells as floats the way pandas reads them (NaN where it cannot)."""
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")


# The values the fast path reads without pandas, chosen so that its reading provably equals pandas' (see
# tests/test_events_fast.py); anything else in a small batch is handed to `_to_numbers` or `parse_timestamps`.
# ASCII digits only (pandas refuses the other Unicode digits that float() reads), at most 18 of them in a part (a
# column of integers is read as int64), and no leading "+" (pandas then reads some long or scaled decimals one unit
# in the last place away from float()).
_PLAIN_NUMBER = re.compile(r"-?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})(?:[eE][+-]?[0-9]{1,3})?")
_NON_FINITE = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_PLAIN_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))?)?"
)
# Years whose dates, with any offset, lie inside pandas' nanosecond range (1677-09-21 to 2262-04-11): a date outside
# it changes how pandas reads every other date of its batch (see `parse_timestamps`).
_PLAIN_YEARS = range(1678, 2262)
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


def _plain_number(text: str) -> float | None:
    """A stripped text cell as `_to_numbers` reads it, or None where only pandas can tell."""
    if text == "":
        return float("nan")
    if _PLAIN_NUMBER.fullmatch(text):
        number = float(text)
        # pandas reads a column of integers as int64, which has no -0: "-0" is 0.0 or -0.0 by its neighbours
        return None if number == 0 and text[0] == "-" else number
    if _NON_FINITE.fullmatch(text):
        return float(text)
    return None


def _plain_seconds(text: str) -> float | None:
    """A stripped timestamp as `parse_timestamps` reads it (NaN: unparseable), or None where only pandas can tell."""
    number = _plain_number(text)
    if number is not None and not (text and math.isnan(number)):
        return number  # pandas gives the NaN words ("nan") to its date parser: let it
    match = _PLAIN_ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, *clock, fraction, _, sign, zone_hour, zone_minute = match.groups()
    hour, minute, second, zone_hours, zone_minutes = (int(part or 0) for part in (*clock, zone_hour, zone_minute))
    if int(year) not in _PLAIN_YEARS or max(hour, zone_hours) > 23 or max(minute, second, zone_minutes) > 59:
        return None  # a date near pandas' range, a leap second or 24:00: pandas decides
    try:
        days = datetime(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # not a calendar date
        return None
    offset = (zone_hours * 3600 + zone_minutes * 60) * (-1 if sign == "-" else 1)
    whole = days * 86400 + hour * 3600 + minute * 60 + second - offset
    # pandas' total_seconds: whole seconds plus the remainder in nanoseconds / 1e9 (its nudge off whole seconds
    # only matters below microseconds or past 2^52 seconds, neither of which a plain date reaches)
    return whole + int((fraction or "").ljust(6, "0")) * 1000 / 1_000_000_000


def _plain_numbers(texts: list[str]) -> list[float]:
    """Stripped text cells as `_to_numbers` reads them."""
    numbers = [number for number in map(_plain_number, texts) if number is not None]
    if len(numbers) < len(texts):
        return _to_numbers(pd.Series(texts, dtype=str)).tolist()
    return numbers


def _plain_timestamps(texts: list[str]) -> tuple[list[float], list[bool]]:
    """Stripped timestamps as `parse_timestamps` reads them: the seconds and whether each failed."""
    seconds = [value for value in map(_plain_seconds, texts) if value is not None]
    if len(seconds) < len(texts):  # pandas reads each value in the light of the whole batch: give it the batch
        numbers, bad = parse_timestamps(pd.Series(texts, dtype=str))
        return numbers.tolist(), bad.tolist()
    return seconds, [not (math.isfinite(value) and value >= 0) for value in seconds]


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
class TypedValues:
    """The typed events of a batch checked value by value, as lists by column (see `EventCheck.values`).

    Attributes:
        columns: `user_id, item_id, timestamp, event, weight[, rating]`, one list each.
        text_columns: The text columns that came from the input; the frame types them `str`, the others (all
            defaults) `object`, as pandas' path does.
    """

    columns: dict[str, list[Any]]
    text_columns: frozenset[str]

    def frame(self) -> pd.DataFrame:
        """The values as the frame the vectorised path would have built."""
        return pd.DataFrame({name: self._array(name, values) for name, values in self.columns.items()}, copy=False)

    def _array(self, column: str, values: list[Any]) -> Any:
        if column not in (*ID_COLUMNS, "event"):
            return np.array(values, dtype="float64")
        if column in self.text_columns:
            return pd.array(values, dtype=str)
        return pd.Series(values, dtype=object)  # a default-filled column, which pandas leaves as objects


class EventCheck:
    """The typed events (every row, bad ones included) and the rules they break, in the order they are checked.

    Args:
        events: The typed columns `user_id, item_id, timestamp, event, weight[, rating]`: a frame, or for a small
            batch the plain values, made into a frame only when `events` is first read.
        failures: The rules broken.
    """

    def __init__(self, events: pd.DataFrame | TypedValues, failures: list[Failure]) -> None:
        self.failures = failures
        self._frame = events if isinstance(events, pd.DataFrame) else None
        self._values = events if isinstance(events, TypedValues) else None

    @property
    def events(self) -> pd.DataFrame:
        """The typed events as a frame."""
        if self._frame is None:
            assert self._values is not None
            self._frame = self._values.frame()
        return self._frame

    def values(self, column: str) -> list[Any]:
        """One typed column as plain Python values: `events[column].tolist()`, without a frame for a small batch."""
        if self._values is not None:
            return list(self._values.columns[column])
        return self.events[column].tolist()

    def row_reasons(self) -> list[str]:
        """The first reason each row fails, or "" for a valid row."""
        num_rows = len(self._values.columns["user_id"]) if self._values is not None else len(self.events)
        reasons = [""] * num_rows
        for failure in self.failures:
            for row, reason in zip(failure.rows, failure.reasons):
                reasons[row] = reasons[row] or reason
        return reasons


class _Rules:
    """The failures of one batch, each numbered by its rule's place in the order of checks (both paths use it)."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.num_rules = 0

    def check(self, rows: np.ndarray | list[int], summary: str, hint: str, reason: str | Callable[[int], str]) -> None:
        """Count one rule, and record a failure when `rows` (the positions of the rows that break it) is not empty."""
        self.num_rules += 1
        if len(rows):
            reasons = [reason] * len(rows) if isinstance(reason, str) else [reason(row) for row in rows]
            self.failures.append(Failure(summary, hint, np.asarray(rows, dtype=np.intp), reasons, self.num_rules))

    def skip(self) -> None:
        """Count a rule that a batch cannot break, so the next ones keep their numbers (JSON lines may lack
        a column that other batches of the file have)."""
        self.num_rules += 1


# What each rule says (summary, hint, row reason, or the functions that make them), written once for both paths.
# The id rules also carry their test, of one value and of a column side by side.
_IdRule = tuple[Callable[[str], bool], Callable[[pd.Series], pd.Series], str, str, str]


def _id_rules(column: str) -> tuple[_IdRule, ...]:
    """The id rules in their order (empty, too long, NUL character): value test, column test, messages."""
    return (
        (
            lambda text: text == "",
            lambda values: values == "",
            f"empty {column}",
            f"every event needs a {column}",
            f"{column} is empty",
        ),
        (
            lambda text: len(text) > MAX_ID_LENGTH,
            lambda values: values.str.len() > MAX_ID_LENGTH,
            f"{column} longer than {MAX_ID_LENGTH} characters",
            "ids are short keys; put long text in the items file",
            f"{column} is longer than {MAX_ID_LENGTH} characters",
        ),
        (
            lambda text: "\x00" in text,
            lambda values: values.str.contains("\x00", regex=False),
            f"{column} contains a NUL character",
            "remove control characters from ids",
            f"{column} contains a NUL character",
        ),
    )


def _unparseable_reason(raw: str) -> str:
    return f"timestamp {raw[:40]!r} is not Unix seconds or ISO-8601 (or is negative)"


def _future_hint(latest: float) -> str:
    return (
        f"events may be at most {(latest - time.time()) / 86400:.0f} days ahead of now "
        "(BIGREC_FUTURE_MARGIN_DAYS); check the unit (seconds, not milliseconds)"
    )


def _future_reason(raw: str) -> str:
    return f"timestamp {raw[:40]!r} lies more than the allowed margin in the future"


def _number_messages(column: str) -> tuple[str, str]:
    return f"{column} is not a finite number", f"write {column} as a number or leave the column out"


def _number_reason(column: str, raw: str) -> str:
    if raw.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return f"{column} is not finite ({raw[:40]!r})"
    return f"{column} {raw[:40]!r} is not a number"


def _text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series([""] * len(frame), index=frame.index, dtype=object)
    values = frame[column]
    return values.where(values.notna(), "").astype(str).str.strip()


# Below this many rows a batch is checked value by value. On a busy 2-core machine pandas' ~40 operations cost about
# 4 ms whatever the size of the batch; plain Python about 0.1 ms plus 4-5 µs a row, 0.2 ms more to build the frame
# when `events` is read, and up to 2 ms more when odd values send the timestamp, weight and rating columns to pandas.
# At 256 rows even that worst case is a third cheaper than pandas; the two cross near 500.
FAST_PATH_MAX_ROWS = 256
_READ_COLUMNS = (*ID_COLUMNS, "timestamp", "event", "weight", "rating")


def validate_events(frame: pd.DataFrame, *, default_timestamp: float | None = None) -> EventCheck:
    """Check every event row and return the typed columns `user_id, item_id, timestamp, event, weight[, rating]`.

    A batch of fewer than `FAST_PATH_MAX_ROWS` rows of text cells (a `POST /feedback` of a few events, the tail of
    a file) is checked value by value in plain Python, which costs a small batch about 0.1 ms where pandas costs
    3-4 ms; a larger batch, or one with typed columns (Parquet's, JSON lines' numbers), is checked with pandas.
    Both give the same typed values, failures, row numbers and messages (tests/test_events_fast.py).

    Args:
        frame: Raw rows (text or JSON values); `user_id`, `item_id` and, unless `default_timestamp`, `timestamp`.
        default_timestamp: The time given to rows whose timestamp is missing or empty (feedback: now).
    """
    if len(frame) < FAST_PATH_MAX_ROWS:
        texts = _plain_texts(frame)
        if texts is not None:
            return _validate_values(texts, len(frame), default_timestamp)
    return _validate_frame(frame, default_timestamp)


def _plain_texts(frame: pd.DataFrame) -> dict[str, list[str]] | None:
    """The stripped text of each column the rules read ("" where missing), or None when a column holds anything
    else (numbers from Parquet or JSON lines, which pandas turns into text by rules of its own)."""
    if not frame.columns.is_unique:
        return None
    texts: dict[str, list[str]] = {}
    for column in _READ_COLUMNS:
        if column not in frame.columns:
            continue
        values = frame[column]
        if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
            return None
        cells: list[str] = []
        for value in values.tolist():
            if isinstance(value, str):
                if not value.isascii():
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError:  # pandas raises on a lone surrogate: let it
                        return None
                cells.append(value.strip())
            elif value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                cells.append("")
            else:
                return None
        texts[column] = cells
    return texts


def _validate_values(texts: dict[str, list[str]], num_rows: int, default_timestamp: float | None) -> EventCheck:
    """`validate_events` on plain values: the rules of `_validate_frame`, in its order, value by value."""
    rules = _Rules()
    empty = [""] * num_rows
    ids = {column: texts.get(column, empty) for column in ID_COLUMNS}
    for column in ID_COLUMNS:
        for breaks, _, *messages in _id_rules(column):
            rules.check([row for row, text in enumerate(ids[column]) if breaks(text)], *messages)
    raw_time = texts.get("timestamp", empty)
    if default_timestamp is not None:
        raw_time = [text or repr(default_timestamp) for text in raw_time]
    seconds, bad = _plain_timestamps(raw_time)
    bad_rows = [row for row in range(num_rows) if bad[row]]
    example = raw_time[bad_rows[0]] if bad_rows else ""
    rules.check(
        bad_rows, f"unparseable timestamp {example!r}", TIMESTAMP_HINT, lambda row: _unparseable_reason(raw_time[row])
    )
    latest = latest_timestamp()
    future_rows = [row for row in range(num_rows) if not bad[row] and seconds[row] > latest]
    example = raw_time[future_rows[0]] if future_rows else ""
    rules.check(
        future_rows,
        f"timestamp {example!r} lies in the future",
        _future_hint(latest),
        lambda row: _future_reason(raw_time[row]),
    )
    columns: dict[str, list[Any]] = {**ids, "timestamp": seconds}
    columns["event"] = [text or DEFAULT_EVENT for text in texts.get("event", empty)]
    columns["weight"] = [1.0] * num_rows
    for column in ("weight", "rating"):
        if column not in texts:
            rules.skip()
            continue
        raw = texts[column]
        missing = [default_timestamp is not None and text == "" for text in raw]
        numbers = _plain_numbers(raw)
        rules.check(
            [row for row in range(num_rows) if not math.isfinite(numbers[row]) and not missing[row]],
            *_number_messages(column),
            lambda row, raw=raw, column=column: _number_reason(column, raw[row]),
        )
        fill = 1.0 if column == "weight" else float("nan")
        columns[column] = [fill if missing[row] else numbers[row] for row in range(num_rows)]
    return EventCheck(TypedValues(columns, frozenset(texts) & {*ID_COLUMNS, "event"}), rules.failures)


def _validate_frame(frame: pd.DataFrame, default_timestamp: float | None) -> EventCheck:
    """`validate_events` with pandas, column by column: the reference the value-by-value path is tested against."""
    frame = frame.reset_index(drop=True)
    events = pd.DataFrame({column: _text_column(frame, column) for column in ID_COLUMNS})
    rules = _Rules()
    for column in ID_COLUMNS:
        for _, break_mask, *messages in _id_rules(column):
            rules.check(np.flatnonzero(break_mask(events[column]).to_numpy()), *messages)
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
    rules.check(
        np.flatnonzero(bad),
        f"unparseable timestamp {example!r}",
        TIMESTAMP_HINT,
        lambda row: _unparseable_reason(raw_time.iloc[row]),
    )
    latest = latest_timestamp()
    future = ~bad & (seconds > latest)
    rules.check(
        np.flatnonzero(future),
        f"timestamp {raw_time.iloc[int(np.flatnonzero(future)[0])] if future.any() else ''!r} lies in the future",
        _future_hint(latest),
        lambda row: _future_reason(raw_time.iloc[row]),
    )
    events["timestamp"] = seconds
    events["event"] = _text_column(frame, "event").replace("", DEFAULT_EVENT)
    events["weight"] = np.ones(len(frame))
    for column in ("weight", "rating"):
        if column not in frame.columns:
            rules.skip()
            continue
        raw = _text_column(frame, column)
        # Rows of feedback may leave the cell empty (a weight then counts 1, a rating stays unknown); files may not.
        missing = (raw == "").to_numpy() if default_timestamp is not None else False
        values = _to_numbers(raw)
        rules.check(
            np.flatnonzero(~np.isfinite(values) & ~missing),
            *_number_messages(column),
            lambda row, raw=raw, column=column: _number_reason(column, raw.iloc[row]),
        )
        events[column] = np.where(missing, 1.0 if column == "weight" else np.nan, values)
    return EventCheck(events, rules.failures)


def frame_from_objects(objects: Iterable[dict[str, Any] | None]) -> tuple[pd.DataFrame, list[str]]:
    """Turn decoded rows (CSV text or JSON values) into a frame of text cells, and a type error per row ("" if none).

    JSON gives values that are not text: numbers become their text, while lists, objects and booleans are refused.
    """
    cells, errors = cells_from_objects(objects)
    return frame_of_cells(cells), errors


def frame_of_cells(cells: list[dict[str, str]]) -> pd.DataFrame:
    """The frame of `cells_from_objects`' rows: a column per name, NaN where a row has no cell."""
    frame = pd.DataFrame.from_records(cells) if cells else pd.DataFrame()
    return frame.reindex(range(len(cells)))


def validate_cells(cells: list[dict[str, str]], *, default_timestamp: float | None = None) -> EventCheck:
    """`validate_events` of `frame_of_cells(cells)`: a small batch (a `POST /feedback`) is checked from the cells
    themselves, without building the frame."""
    if len(cells) >= FAST_PATH_MAX_ROWS:
        return validate_events(frame_of_cells(cells), default_timestamp=default_timestamp)
    present = {name for row in cells for name in row}
    texts = {name: [row.get(name, "").strip() for row in cells] for name in _READ_COLUMNS if name in present}
    return _validate_values(texts, len(cells), default_timestamp)


def cells_from_objects(objects: Iterable[dict[str, Any] | None]) -> tuple[list[dict[str, str]], list[str]]:
    """`frame_from_objects`' rows as plain dicts of text cells (valid Unicode, no NUL), and a type error per row."""
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
    return cells, errors
