"""Reading, validating and splitting behaviour data. pandas and numpy only, never TensorFlow."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from bigrec_cli.config import DEFAULT_NEGATIVE_EVENTS
from bigrec_cli.errors import DataError
from bigrec_cli.events import LOW_RATING_EVENT, MAX_ID_LENGTH, REQUIRED_EVENT_COLUMNS, map_event_types, validate_events
from bigrec_cli.project import (
    DATA_META_FILE,
    EVENTS_FILE,
    ITEMS_FILE,
    ProjectDir,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)

SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = "train", "valid", "test"
SPLIT_NEGATIVE = "negative"  # negative behaviour (a cancellation, a dislike): never a training or held-out target
DEDUPE_MODES = ("exact", "latest")
REPEAT_MODES = ("exclude", "allow")
RESERVED_ITEM_COLUMNS = ("item_id", "title", "text", "item_index")
MOVIELENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
MAX_SHOWN = 5


@contextmanager
def reading(path: Path | str, what: str = "") -> Iterator[None]:
    """Turn the errors of reading a user's file into one DataError that names the file and the fix."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory", hint=f"give a file{what}") from None
    except PermissionError:
        raise DataError(f"{path} cannot be read (permission denied)", hint="check the file's permissions") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text: {error}", hint="re-save the file as UTF-8") from None


def read_text(path: Path | str, what: str = "") -> str:
    """Read a user's text file (`-` is stdin), without a UTF-8 byte-order mark."""
    if str(path) == "-":
        return sys.stdin.read().removeprefix("\ufeff")
    with reading(path, what):
        return Path(path).read_text(encoding="utf-8-sig")


def write_text(path: Path, text: str) -> None:
    """Write a result file atomically into an existing folder, turning what the user can fix into a DataError."""
    if not path.parent.is_dir():
        raise DataError(f"cannot write {path}: the folder {path.parent} does not exist", hint="create it first")
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except (PermissionError, IsADirectoryError, OSError) as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}", hint="choose a writable file path") from None


def read_user_ids(path: Path) -> list[str]:
    """Read user ids: a CSV with a `user_id` column, or one id per line (`-` is stdin)."""
    rows = list(csv.reader(io.StringIO(read_text(path, " of user ids"))))
    if rows and "user_id" in rows[0]:
        column = rows[0].index("user_id")
        rows = rows[1:]
    else:
        column = 0
    users = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    if not users:
        raise DataError(f"{path} names no users", hint="one user_id per line, or a CSV with a user_id column")
    return users


def read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """Read a CSV, JSON lines or Parquet file with every column as text where the format allows.

    Args:
        path: The file; its suffix picks the format (`.csv`, `.tsv`, `.jsonl`/`.json`/`.ndjson`, `.parquet`).

    Returns:
        The frame and the offset that turns a row index into the file's line number (2 for CSV, 1 for JSON lines,
        0 for Parquet where rows have no line).
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt", ".jsonl", ".json", ".ndjson", ".parquet"):
        raise DataError(f"{path} has an unknown format {suffix!r}", hint="use .csv, .tsv, .jsonl or .parquet")
    try:
        with reading(path):
            if suffix == ".parquet":
                return pd.read_parquet(path), 0
            text = read_text(path)
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pd.read_json(io.StringIO(text), lines=True, dtype=False), 1
        separator = "\t" if suffix == ".tsv" else ","
        check_field_counts(text, path, separator)
        return pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False), 2
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="give a file with a header row and at least one row") from None
    except (ValueError, pd.errors.ParserError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path} cannot be read as {suffix[1:]}: {first}", hint="check the file's format") from None


def check_field_counts(text: str, path: Path, separator: str) -> None:
    """Refuse rows with more or fewer fields than the header: pandas would shift or drop them silently."""
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    header = next(reader, None)
    if header is None:
        return
    for row in reader:
        if row and len(row) != len(header):
            raise DataError(
                f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)}",
                hint="quote fields that contain the delimiter, or fix the row",
            )


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    """Raise DataError naming the missing columns and the ones that exist."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        delimiter = " (is the delimiter a comma?)" if len(frame.columns) == 1 else ""
        raise DataError(
            f"{path} has no column {', '.join(repr(name) for name in missing)}{delimiter}",
            hint=f"columns found: {found}; required: {', '.join(columns)}",
        )


def _rows(indices: np.ndarray, offset: int) -> str:
    shown = ", ".join(str(int(index) + offset) for index in indices[:MAX_SHOWN])
    more = f" and {len(indices) - MAX_SHOWN} more" if len(indices) > MAX_SHOWN else ""
    return f"{'line' if offset else 'row'} {shown}{more}"


def clean_events(frame: pd.DataFrame, path: Path, offset: int) -> pd.DataFrame:
    """Validate an events frame and return it with typed columns `user_id, item_id, timestamp, event, weight`.

    Fails on the first rule of `bigrec_cli.events` that any row breaks, naming the lines that break it.
    """
    require_columns(frame, REQUIRED_EVENT_COLUMNS, path)
    if frame.empty:
        raise DataError(f"{path} has a header but no events", hint="give at least one event row")
    check = validate_events(frame)
    if check.failures:
        failure = check.failures[0]
        raise DataError(f"{path}: {failure.summary} at {_rows(failure.rows, offset)}", hint=failure.hint)
    return check.events


EVENT_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json", ".ndjson", ".parquet")


def input_files(spec: Path) -> tuple[list[Path], Path]:
    """The files an `--events` argument names, sorted by path (the file system's order never matters).

    A file; a directory, searched recursively for .csv/.tsv/.jsonl/.parquet files (names starting with `.` or `_`,
    such as `_SUCCESS`, are skipped); or a glob pattern (`events/2024-*.parquet`, `lake/**/*.jsonl`). Returns the
    files and the folder that hive-style `key=value` folder names are read below.
    """
    text = str(spec)
    if not spec.exists() and any(character in text for character in "*?["):  # `ev[1].csv` may be a file name
        files = sorted(Path(name) for name in glob.glob(text, recursive=True) if Path(name).is_file())
        if not files:
            raise DataError(f"{spec} matches no file", hint="check the pattern (quote it so the shell keeps it)")
        base = Path(text.split("*")[0].split("?")[0].split("[")[0]).parent
        return files, base
    if spec.is_dir():
        files = sorted(
            path
            for path in spec.rglob("*")
            if path.is_file()
            and path.suffix.lower() in EVENT_FILE_SUFFIXES
            and not any(part.startswith((".", "_")) for part in path.relative_to(spec).parts)
        )
        if not files:
            raise DataError(f"{spec} holds no events file", hint="put .csv, .jsonl or .parquet files in it")
        return files, spec
    return [spec], spec.parent


def hive_values(path: Path, base: Path) -> dict[str, str]:
    """Column values from hive-style folder names below `base` (`…/event=purchase/day=2024-05-01/part-0.parquet`)."""
    try:
        parts = path.relative_to(base).parts[:-1]
    except ValueError:
        return {}
    return dict(part.split("=", 1) for part in parts if "=" in part and not part.startswith("="))


def read_events(spec: Path) -> tuple[pd.DataFrame, list[Path], list[int]]:
    """Read and validate every events file that `spec` names; each file is checked on its own, so an error names
    the file and its line. Hive folder values fill columns the files lack. Returns the events (with `_file`, the
    file's position, and `_row`, the row in it), the files and each file's row-to-line offset."""
    files, base = input_files(spec)
    frames, offsets = [], []
    for position, path in enumerate(files):
        frame, offset = read_table(path)
        offsets.append(offset)
        if frame.empty and len(files) > 1:  # an empty part of a data-lake folder (Spark writes them) holds no event
            continue
        for column, value in hive_values(path, base).items():
            if column not in frame.columns:
                frame[column] = value
        events = clean_events(frame, path, offset)
        frames.append(events.assign(_file=position, _row=np.arange(len(events))))
    if not frames:
        raise DataError(f"{spec}: every events file is empty", hint="give at least one event row")
    return (pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]), files, offsets


def clean_items(
    frame: pd.DataFrame, path: Path, offset: int, text_columns: list[str] | None, title_column: str | None
) -> tuple[pd.DataFrame, list[str], str]:
    """Validate an items frame and return `item_id, title, text` plus the columns used for each."""
    require_columns(frame, ("item_id",), path)
    if frame.empty:
        raise DataError(f"{path} has a header but no items", hint="give at least one item row")
    if text_columns:
        require_columns(frame, tuple(text_columns), path)
    else:
        preferred = [name for name in ("title", "description", "text") if name in frame.columns]
        text_columns = preferred or [name for name in frame.columns if name != "item_id"]
        if not text_columns:
            raise DataError(f"{path} has no text column", hint="add a title or description column, or --text-columns")
    if title_column is None:
        title_column = "title" if "title" in frame.columns else text_columns[0]
    require_columns(frame, (title_column,), path)
    item_ids = frame["item_id"].astype(str).str.strip()
    too_long = np.flatnonzero((item_ids.str.len() > MAX_ID_LENGTH).to_numpy())
    if len(too_long):
        raise DataError(
            f"{path}: item_id longer than {MAX_ID_LENGTH} characters at {_rows(too_long, offset)}",
            hint="ids are short keys; put long text in a text column",
        )
    empty = np.flatnonzero(item_ids == "")
    if len(empty):
        raise DataError(f"{path}: empty item_id at {_rows(empty, offset)}", hint="every item needs an item_id")
    duplicated = np.flatnonzero(item_ids.duplicated().to_numpy())
    if len(duplicated):
        raise DataError(
            f"{path}: item_id {item_ids.iloc[int(duplicated[0])]!r} repeats at {_rows(duplicated, offset)}",
            hint="give each item one row",
        )
    parts = [frame[name].fillna("").astype(str).str.strip() for name in text_columns]
    text = parts[0]
    for part in parts[1:]:
        text = text.str.cat(part, sep=" | ").str.strip(" |")
    items = pd.DataFrame({"item_id": item_ids, "title": frame[title_column].fillna("").astype(str), "text": text})
    for column in frame.columns:  # every other column is kept as an attribute that `--where` can filter on
        if str(column) not in RESERVED_ITEM_COLUMNS:
            items[str(column)] = frame[column].fillna("").astype(str).to_numpy()
    return items, text_columns, title_column


def read_movielens_100k(source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the unzipped MovieLens 100K folder (`u.data`, `u.item` in latin-1) as events and items frames."""
    data_path, item_path = source / "u.data", source / "u.item"
    for path in (data_path, item_path):
        if not path.exists():
            raise DataError(
                f"{path} does not exist",
                hint="pass the unzipped ml-100k folder from files.grouplens.org/datasets/movielens/ml-100k.zip",
            )
    ratings = pd.read_csv(
        data_path, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"], dtype=str
    )
    raw_items = pd.read_csv(item_path, sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    if raw_items.shape[1] != 5 + len(MOVIELENS_GENRES):
        raise DataError(f"{item_path} has {raw_items.shape[1]} fields, expected 24", hint="use the original u.item")
    flags = raw_items.iloc[:, 5:].to_numpy() == "1"
    genres = [", ".join(name for name, on in zip(MOVIELENS_GENRES, row) if on) for row in flags]
    release = raw_items[2].str.slice(-4)
    items = pd.DataFrame(
        {
            "item_id": raw_items[0],
            "title": raw_items[1],
            "description": [
                f"{year}. Genres: {names}" if year else f"Genres: {names}" for year, names in zip(release, genres)
            ],
        }
    )
    return ratings, items


@dataclass(frozen=True)
class PreprocessSummary:
    """What `preprocess` wrote."""

    num_events: int
    num_users: int
    num_items: int
    num_duplicates: int
    num_dropped_unknown_items: int
    num_train: int
    num_valid: int
    num_test: int
    fingerprint: str


@dataclass(frozen=True)
class EventPolicy:
    """How a project treats behaviour, chosen at `preprocess` and stored in `data.json`.

    Attributes:
        dedupe: `exact` drops only exact duplicates (same user, item, time and event type); `latest` keeps one
            event per (user, item), its latest (films watched once).
        repeats: `exclude` never recommends what the user already had (films); `allow` lets history items back in
            (groceries, consumables), in `recommend`, `serve`, `evaluate` and the retrain gate alike.
        negative_events: Event types that are negative behaviour: in the sequence the LSTM reads (as their type),
            never a target, and their items are not recommended right back.
        event_map: Raw event values renamed to types (`view=click,basket=cart`), at every door.
        min_rating: Events rated below it become `dislike` (negative behaviour); needs a `rating` column.
    """

    dedupe: str = "exact"
    repeats: str = "exclude"
    negative_events: tuple[str, ...] = DEFAULT_NEGATIVE_EVENTS
    event_map: tuple[tuple[str, str], ...] = ()
    min_rating: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.event_map, dict):
            object.__setattr__(self, "event_map", tuple(self.event_map.items()))
        object.__setattr__(self, "event_map", tuple(tuple(pair) for pair in self.event_map))
        if self.min_rating is not None and LOW_RATING_EVENT not in self.negative_events:
            object.__setattr__(self, "negative_events", (*self.negative_events, LOW_RATING_EVENT))
        if self.dedupe not in DEDUPE_MODES:
            raise DataError(f"unknown --dedupe {self.dedupe!r}", hint=f"use one of {', '.join(DEDUPE_MODES)}")
        if self.repeats not in REPEAT_MODES:
            raise DataError(f"unknown --repeats {self.repeats!r}", hint=f"use one of {', '.join(REPEAT_MODES)}")
        object.__setattr__(self, "negative_events", tuple(self.negative_events))

    @property
    def exclude_history(self) -> bool:
        return self.repeats == "exclude"

    def to_dict(self) -> dict:
        return {
            "dedupe": self.dedupe,
            "repeats": self.repeats,
            "negative_events": list(self.negative_events),
            "event_map": dict(self.event_map),
            "min_rating": self.min_rating,
        }

    def map_events(self, events: pd.DataFrame) -> pd.DataFrame:
        """Apply the event map and the rating threshold to validated events (both doors call this)."""
        return map_event_types(events, dict(self.event_map), self.min_rating)

    @classmethod
    def from_meta(cls, meta: dict) -> "EventPolicy":
        """The policy a `data.json` records (projects written before it existed get the defaults of that time)."""
        return cls(
            dedupe=meta.get("dedupe", "latest"),
            repeats=meta.get("repeats", "exclude"),
            negative_events=tuple(meta.get("negative_events", ())),
            event_map=tuple(meta.get("event_map", {}).items()),
            min_rating=meta.get("min_rating"),
        )


def event_policy(project: ProjectDir) -> EventPolicy:
    """The project's event policy, from `data.json`."""
    project.require_data()
    return EventPolicy.from_meta(read_json(project.data_meta_path))


def split_by_time(events: pd.DataFrame, negative_events: tuple[str, ...] = ()) -> np.ndarray:
    """Label each event train/valid/test: per user by time, last = test, second-to-last = valid.

    Only positive events are split; negative ones (`negative_events` types) are labelled `negative`. Users with
    fewer than three positive events keep all of theirs in train. `events` must be sorted by user, then time.
    """
    negative = (
        events["event"].isin(negative_events).to_numpy() if "event" in events.columns else np.zeros(len(events), bool)
    )
    split = np.full(len(events), SPLIT_NEGATIVE, dtype=object)
    positive = events[~negative]
    position_from_end = positive.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    user_sizes = positive.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    labels = np.full(len(positive), SPLIT_TRAIN, dtype=object)
    eligible = user_sizes >= 3
    labels[eligible & (position_from_end == 0)] = SPLIT_TEST
    labels[eligible & (position_from_end == 1)] = SPLIT_VALID
    split[~negative] = labels
    return split


def tie_breaker(events: pd.DataFrame) -> np.ndarray:
    """A key that orders events of one user at one time by their content, never by their row in the input.

    Events with the same timestamp (a basket, a day) would otherwise keep the order in which someone typed them,
    which a sequence model can learn and which shuffling the file would change.
    """
    columns = [column for column in ("user_id", "item_id", "timestamp", "event") if column in events.columns]
    return pd.util.hash_pandas_object(events[columns], index=False).to_numpy()


def order_and_deduplicate(events: pd.DataFrame, dedupe: str = "exact") -> tuple[pd.DataFrame, int]:
    """Sort events by user and time (ties by `tie_breaker`) and drop duplicates.

    Args:
        events: Events with user_id, item_id, timestamp (and event).
        dedupe: `exact` drops rows equal in user, item, time and event type (every real event is kept, repeat
            purchases included); `latest` keeps one row per (user, item), its latest.

    Returns:
        The cleaned frame and how many rows were dropped as duplicates.
    """
    events = events.assign(_tie=tie_breaker(events))
    events = events.sort_values(["user_id", "timestamp", "_tie"], kind="stable")
    if dedupe == "latest":
        kept = events.drop_duplicates(["user_id", "item_id"], keep="last")
    else:
        key = [column for column in ("user_id", "item_id", "timestamp", "event") if column in events.columns]
        kept = events.drop_duplicates(key, keep="last")
    return kept.drop(columns="_tie").reset_index(drop=True), len(events) - len(kept)


def fingerprint_frames(*frames: pd.DataFrame) -> str:
    """Return a SHA-256 over the frames' contents, stable across runs."""
    digest = hashlib.sha256()
    for frame in frames:
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        digest.update(hashed.tobytes())
        digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a Parquet file atomically."""
    with atomic_file(path) as temporary:
        frame.to_parquet(temporary, index=False)


def preprocess(
    project: ProjectDir,
    *,
    events_path: Path | None = None,
    items_path: Path | None = None,
    movielens_source: Path | None = None,
    text_columns: list[str] | None = None,
    title_column: str | None = None,
    drop_unknown_items: bool = False,
    policy: EventPolicy | None = None,
) -> PreprocessSummary:
    """Validate raw events and items, split them by time and write them under the project directory.

    Args:
        project: Where to write `data/`.
        events_path: Events file (CSV, JSON lines or Parquet) with user_id, item_id, timestamp.
        items_path: Items file with item_id and text columns.
        movielens_source: An unzipped MovieLens 100K folder, instead of the two files.
        text_columns: Item columns joined to form the text BERT reads.
        title_column: Item column shown as the title.
        drop_unknown_items: Drop events whose item has no catalog entry instead of failing.
        policy: Duplicates, repeats and negative event types (stored in `data.json` for every later step).

    Returns:
        Counts of what was written.
    """
    if movielens_source is not None:
        raw_events, raw_items = read_movielens_100k(movielens_source)
        events_path, items_path = movielens_source / "u.data", movielens_source / "u.item"
        item_offset = 1
        events = clean_events(raw_events, events_path, 1).assign(_file=0, _row=np.arange(len(raw_events)))
        files, offsets = [events_path], [1]
    elif events_path is not None and items_path is not None:
        events, files, offsets = read_events(events_path)
        raw_items, item_offset = read_table(items_path)
    else:
        raise DataError(
            "no input given", hint="pass --events FILE --items FILE, or --format movielens-100k --source DIR"
        )
    items, used_text_columns, used_title = clean_items(raw_items, items_path, item_offset, text_columns, title_column)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)  # the catalog's order: not the file's
    policy = policy or EventPolicy()
    if policy.min_rating is not None and "rating" not in events.columns:
        raise DataError(
            f"--min-rating needs ratings, and {events_path} has no rating column",
            hint="add a numeric rating column, or leave --min-rating out",
        )
    events = policy.map_events(events)
    known = events["item_id"].isin(set(items["item_id"])).to_numpy()
    num_dropped = 0
    if not known.all():
        unknown_rows = np.flatnonzero(~known)
        if not drop_unknown_items:
            first = events.iloc[int(unknown_rows[0])]
            in_file = unknown_rows[events["_file"].to_numpy()[unknown_rows] == first["_file"]]
            file = int(first["_file"])
            raise DataError(
                f"{files[file]}: item_id {first['item_id']!r} has no entry in {items_path} "
                f"at {_rows(events['_row'].to_numpy()[in_file], offsets[file])}",
                hint="add the items to the items file, or pass --drop-unknown-items",
            )
        events = events[known]
        num_dropped = int((~known).sum())
        if events.empty:
            raise DataError(f"{events_path}: no event names a catalog item", hint="check that the item ids match")
    events, num_duplicates = order_and_deduplicate(events.drop(columns=["_file", "_row"]), policy.dedupe)
    events["split"] = split_by_time(events, policy.negative_events)
    item_index = {item_id: index + 1 for index, item_id in enumerate(items["item_id"])}
    items["item_index"] = np.arange(1, len(items) + 1, dtype="int64")
    events["item_index"] = events["item_id"].map(item_index).astype("int64")
    fingerprint = fingerprint_frames(events, items)
    counts = events["split"].value_counts()
    summary = PreprocessSummary(
        num_events=len(events),
        num_users=int(events["user_id"].nunique()),
        num_items=len(items),
        num_duplicates=num_duplicates,
        num_dropped_unknown_items=num_dropped,
        num_train=int(counts.get(SPLIT_TRAIN, 0)),
        num_valid=int(counts.get(SPLIT_VALID, 0)),
        num_test=int(counts.get(SPLIT_TEST, 0)),
        fingerprint=fingerprint,
    )
    meta = {
        **summary.__dict__,
        "events_source": str(events_path),
        "items_source": str(items_path),
        "text_columns": used_text_columns,
        "title_column": used_title,
        "split": "per user by time: last positive event = test, second-to-last = valid, rest = train",
        **policy.to_dict(),
    }
    with project.new_data_version() as folder:
        write_parquet(events, folder / EVENTS_FILE)
        write_parquet(items, folder / ITEMS_FILE)
        atomic_write_json(folder / DATA_META_FILE, meta)
    return summary


def load_events(project: ProjectDir) -> pd.DataFrame:
    """Read the preprocessed events (sorted by user, then time)."""
    project.require_data()
    return pd.read_parquet(project.events_path)


def fold_feedback(events: pd.DataFrame, feedback: pd.DataFrame, policy: EventPolicy) -> pd.DataFrame:
    """Return preprocessed events plus feedback events, deduplicated, ordered and split again by time.

    Args:
        events: The preprocessed events (`user_id, item_id, timestamp, event, weight`, …).
        feedback: Feedback events from the store (`user_id, item_id, timestamp, event, weight`).
        policy: The project's event policy (duplicates, negative types).
    """
    columns = ["user_id", "item_id", "timestamp", "event", "weight"]
    if feedback.empty:
        return events
    merged = pd.concat([events[columns], feedback[columns]], ignore_index=True)
    merged, _ = order_and_deduplicate(merged, policy.dedupe)
    merged["split"] = split_by_time(merged, policy.negative_events)
    return merged


def load_items(project: ProjectDir) -> pd.DataFrame:
    """Read the preprocessed catalog (`item_id`, `title`, `text`, `item_index`)."""
    project.require_data()
    return pd.read_parquet(project.items_path)


_catalog_cache: dict[tuple[str, int, int], frozenset[str]] = {}


def catalog_item_ids(project: ProjectDir) -> frozenset[str]:
    """Return the preprocessed catalog's item ids, read once per version of the items file."""
    project.require_data()
    stat = project.items_path.stat()
    key = (str(project.items_path), stat.st_mtime_ns, stat.st_size)
    if key not in _catalog_cache:
        _catalog_cache.clear()
        _catalog_cache[key] = frozenset(pd.read_parquet(project.items_path, columns=["item_id"])["item_id"])
    return _catalog_cache[key]
