"""Reading, validating and splitting behaviour data. pandas and numpy only, never TensorFlow."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from bigrec_cli.config import DEFAULT_NEGATIVE_EVENTS
from bigrec_cli.errors import DataError
from bigrec_cli.events import (
    LOW_RATING_EVENT,
    MAX_ID_LENGTH,
    REQUIRED_EVENT_COLUMNS,
    Failure,
    map_event_types,
    validate_events,
)
from bigrec_cli.lake import (
    SHARD_EVENTS,
    SHARD_HASH,
    SHARD_NAME,
    SPLIT_NEGATIVE,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VALID,
    ShardTotals,
    Spill,
    fingerprint,
    shard_count,
    shard_files,
    tie_breaker,
    write_shard,
)
from bigrec_cli.project import (
    DATA_META_FILE,
    EVENTS_DIR,
    ITEMS_FILE,
    ProjectDir,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)

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
SPILL_DIR = "_spill"  # the hash buckets, inside the staging folder of the new version; gone once it is done
BATCH_ROWS = 500_000  # rows of an events file read and validated at once: what reading keeps in memory
LINE_OFFSETS = {".csv": 2, ".tsv": 2, ".txt": 2, ".jsonl": 1, ".json": 1, ".ndjson": 1, ".parquet": 0}


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


def table_format(path: Path) -> str:
    """The format a file's suffix names (`.csv`, `.tsv`, `.jsonl`, `.parquet`, …), refusing others."""
    suffix = path.suffix.lower()
    if suffix not in LINE_OFFSETS:
        raise DataError(f"{path} has an unknown format {suffix!r}", hint="use .csv, .tsv, .jsonl or .parquet")
    return suffix


@contextmanager
def reading_table(path: Path, suffix: str) -> Iterator[None]:
    """`reading`, plus parser errors turned into one DataError naming the file and its format."""
    try:
        with reading(path):
            yield
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty", hint="give a file with a header row and at least one row") from None
    except (ValueError, pd.errors.ParserError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path} cannot be read as {suffix[1:]}: {first}", hint="check the file's format") from None


def read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """Read a CSV, JSON lines or Parquet file with every column as text where the format allows.

    Args:
        path: The file; its suffix picks the format (`.csv`, `.tsv`, `.jsonl`/`.json`/`.ndjson`, `.parquet`).

    Returns:
        The frame and the offset that turns a row index into the file's line number (2 for CSV, 1 for JSON lines,
        0 for Parquet where rows have no line).
    """
    (frame,) = read_batches(path, batch_rows=None)
    return frame, LINE_OFFSETS[path.suffix.lower()]


def read_batches(path: Path, batch_rows: int | None = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """Read a CSV, JSON lines or Parquet file in frames of at most `batch_rows` rows (None: one frame), in the
    file's order, every column as text where the format allows. At least one frame comes, empty for a file
    without rows (with the header's columns)."""
    suffix = table_format(path)
    with reading_table(path, suffix):
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as parquet

            if batch_rows is None:
                yield pd.read_parquet(path)
                return
            source = parquet.ParquetFile(path)
            empty = True
            for batch in source.iter_batches(batch_size=batch_rows):
                empty = False
                yield pa.Table.from_batches([batch]).to_pandas()
            if empty:
                yield source.schema_arrow.empty_table().to_pandas()
        elif suffix in (".jsonl", ".json", ".ndjson"):
            if batch_rows is None:
                yield pd.read_json(io.StringIO(read_text(path)), lines=True, dtype=False)
                return
            empty = True
            with pd.read_json(path, lines=True, dtype=False, chunksize=batch_rows, encoding="utf-8-sig") as reader:
                for frame in reader:
                    empty = False
                    yield frame
            if empty:
                yield pd.DataFrame()
        else:
            separator = "\t" if suffix == ".tsv" else ","
            with open(path, encoding="utf-8-sig", newline="") as stream:
                check_field_counts(stream, path, separator)
            options = dict(sep=separator, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            if batch_rows is None:
                yield pd.read_csv(path, **options)
                return
            with pd.read_csv(path, chunksize=batch_rows, **options) as reader:
                yield from reader


def check_field_counts(lines: Iterable[str], path: Path, separator: str) -> None:
    """Refuse rows with more or fewer fields than the header: pandas would shift or drop them silently."""
    csv.field_size_limit(1 << 30)
    reader = csv.reader(lines, delimiter=separator)
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


def validated_batches(
    path: Path, base: Path, *, only_file: bool, batch_rows: int
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Read one events file batch by batch and yield each batch's validated events with its first row's index.

    Every batch meets the rules of `bigrec_cli.events`. Once a row breaks one, the rest of the file is still
    checked (and nothing more is yielded), so the error names the rule a check of the whole file would name first
    and every line that breaks it. Hive folder values fill the columns the file lacks.

    Args:
        path: The file.
        base: The folder below which hive-style `key=value` folder names are read.
        only_file: Whether this is the only file given (then an empty file is an error, not a part to skip).
        batch_rows: Rows read at once.
    """
    offset = LINE_OFFSETS[table_format(path)]
    hive = hive_values(path, base)
    failures: dict[int, list[tuple[Failure, int]]] = {}
    first_row, last = 0, pd.DataFrame()
    for frame in read_batches(path, batch_rows):
        last = frame
        if frame.empty:  # an empty part of a data-lake folder (Spark writes them) holds no event
            continue
        for column, value in hive.items():
            if column not in frame.columns:
                frame[column] = value
        require_columns(frame, REQUIRED_EVENT_COLUMNS, path)
        check = validate_events(frame)
        for failure in check.failures:
            failures.setdefault(failure.rule, []).append((failure, first_row))
        if not failures:
            yield check.events, first_row
        first_row += len(frame)
    if failures:
        found = failures[min(failures)]
        rows = np.concatenate([failure.rows + start for failure, start in found])
        raise DataError(f"{path}: {found[0][0].summary} at {_rows(rows, offset)}", hint=found[0][0].hint)
    if first_row == 0 and only_file:
        clean_events(last.assign(**{column: value for column, value in hive.items() if column not in last}), path, 0)


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


@dataclass
class UnknownItems:
    """Events whose item the catalog lacks, in the first file that has them (the error names that file)."""

    position: int
    item_id: str
    rows: list[np.ndarray] = field(default_factory=list)


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
    batch_rows: int = BATCH_ROWS,
    shard_events: int = SHARD_EVENTS,
) -> PreprocessSummary:
    """Validate raw events and items, split them by time and write them under the project directory.

    The events stream through in batches: each is validated, then spilled into hash buckets of the user id; each
    shard of users is then sorted, deduplicated and split by Polars (`lake.write_shard`) and written as
    `events/part-NNNNN.parquet`. Memory follows `batch_rows` and `shard_events`, not the input's size.

    Args:
        project: Where to write `data/`.
        events_path: Events (CSV, JSON lines or Parquet): a file, a folder of them (hive partitions too) or a glob.
        items_path: Items file with item_id and text columns.
        movielens_source: An unzipped MovieLens 100K folder, instead of the two files.
        text_columns: Item columns joined to form the text BERT reads.
        title_column: Item column shown as the title.
        drop_unknown_items: Drop events whose item has no catalog entry instead of failing.
        policy: Duplicates, repeats and negative event types (stored in `data.json` for every later step).
        batch_rows: Rows of an events file read and validated at once.
        shard_events: About how many events one shard holds (the shard count is a power of two, at most 64).

    Returns:
        Counts of what was written.
    """
    policy = policy or EventPolicy()
    raw_items = None
    if movielens_source is not None:
        raw_events, raw_items = read_movielens_100k(movielens_source)
        events_path, items_path = movielens_source / "u.data", movielens_source / "u.item"
        files, offsets, item_offset = [events_path], [1], 1

        def batches_of(path: Path) -> Iterator[tuple[pd.DataFrame, int]]:
            yield clean_events(raw_events, path, 1), 0

    elif events_path is not None and items_path is not None:
        files, base = input_files(events_path)
        offsets = [LINE_OFFSETS.get(path.suffix.lower(), 0) for path in files]

        def batches_of(path: Path) -> Iterator[tuple[pd.DataFrame, int]]:
            return validated_batches(path, base, only_file=len(files) == 1, batch_rows=batch_rows)

    else:
        raise DataError(
            "no input given", hint="pass --events FILE --items FILE, or --format movielens-100k --source DIR"
        )
    items_error, catalog = None, None
    try:
        if raw_items is None:
            raw_items, item_offset = read_table(items_path)
        items, used_text_columns, used_title = clean_items(
            raw_items, items_path, item_offset, text_columns, title_column
        )
        items = items.sort_values("item_id", kind="stable").reset_index(drop=True)  # the catalog's order
        catalog = pd.Index(items["item_id"])
    except DataError as error:  # reported after the events' own errors, which a user fixes first
        items_error = error
    with project.new_data_version() as folder:
        spill = Spill(folder / SPILL_DIR)
        try:
            num_read, num_dropped, has_rating, unknown = spill_events(
                files, batches_of, spill, catalog, policy, drop_unknown_items
            )
        finally:
            spill.close()
        if num_read == 0:
            raise DataError(f"{events_path}: every events file is empty", hint="give at least one event row")
        if items_error is not None:
            raise items_error
        if policy.min_rating is not None and not has_rating:
            raise DataError(
                f"--min-rating needs ratings, and {events_path} has no rating column",
                hint="add a numeric rating column, or leave --min-rating out",
            )
        if unknown is not None:
            raise DataError(
                f"{files[unknown.position]}: item_id {unknown.item_id!r} has no entry in {items_path} "
                f"at {_rows(np.concatenate(unknown.rows), offsets[unknown.position])}",
                hint="add the items to the items file, or pass --drop-unknown-items",
            )
        if spill.num_events == 0:
            raise DataError(f"{events_path}: no event names a catalog item", hint="check that the item ids match")
        num_shards = shard_count(spill.num_events, shard_events)
        (folder / EVENTS_DIR).mkdir()
        totals = ShardTotals()
        for shard in range(num_shards):
            path = folder / EVENTS_DIR / SHARD_NAME.format(shard)
            write_shard(
                spill.shard_buckets(shard, num_shards),
                path,
                dedupe=policy.dedupe,
                negative_events=policy.negative_events,
                keep_rating=has_rating,
            )
            totals.add(path)
        shutil.rmtree(spill.folder)
        items["item_index"] = np.arange(1, len(items) + 1, dtype="int64")
        summary = PreprocessSummary(
            num_events=totals.num_events,
            num_users=totals.num_users,
            num_items=len(items),
            num_duplicates=spill.num_events - totals.num_events,
            num_dropped_unknown_items=num_dropped,
            num_train=totals.splits.get(SPLIT_TRAIN, 0),
            num_valid=totals.splits.get(SPLIT_VALID, 0),
            num_test=totals.splits.get(SPLIT_TEST, 0),
            fingerprint=fingerprint(totals, items),
        )
        meta = {
            **summary.__dict__,
            "events_source": str(events_path),
            "items_source": str(items_path),
            "text_columns": used_text_columns,
            "title_column": used_title,
            "split": "per user by time: last positive event = test, second-to-last = valid, rest = train",
            "num_shards": num_shards,
            "shard_hash": SHARD_HASH,
            **policy.to_dict(),
        }
        write_parquet(items, folder / ITEMS_FILE)
        atomic_write_json(folder / DATA_META_FILE, meta)
    return summary


def spill_events(
    files: list[Path],
    batches_of: Callable[[Path], Iterator[tuple[pd.DataFrame, int]]],
    spill: Spill,
    catalog: pd.Index | None,
    policy: EventPolicy,
    drop_unknown_items: bool,
) -> tuple[int, int, bool, UnknownItems | None]:
    """Validate every file's batches, map their event types and spill those of known items, with `item_index`.

    Every file is validated even after an unknown item turns up, since a file's own errors are reported first.

    Returns:
        The rows read, the rows dropped as unknown items, whether any file has a rating column, and the unknown
        items that fail the run (None when there are none or they are dropped).
    """
    num_read, num_dropped, has_rating, unknown = 0, 0, False, None
    for position, path in enumerate(files):
        for events, first_row in batches_of(path):
            num_read += len(events)
            has_rating = has_rating or "rating" in events.columns
            if catalog is None:
                continue
            events = policy.map_events(events)
            index = catalog.get_indexer(events["item_id"])
            missing = index < 0
            if missing.any() and not drop_unknown_items:
                if unknown is None:
                    unknown = UnknownItems(position, events["item_id"].iloc[int(np.argmax(missing))])
                if unknown.position == position:
                    unknown.rows.append(np.flatnonzero(missing) + first_row)
            if unknown is not None:
                continue  # the run fails: read on to validate, write nothing
            if missing.any():
                num_dropped += int(missing.sum())
                events, index = events[~missing], index[~missing]
            spill.add(
                events.assign(
                    rating=events["rating"] if "rating" in events.columns else np.nan,
                    item_index=index + 1,
                    _tie=tie_breaker(events),
                )
            )
    return num_read, num_dropped, has_rating, unknown


def event_files(project: ProjectDir) -> list[Path]:
    """The files of the preprocessed events in order: the shards, or the one file of projects from before them."""
    project.require_data()
    path = project.events_path
    return shard_files(path) if path.is_dir() else [path]


def load_events(project: ProjectDir, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the preprocessed events: each user's events together and by time, the shards one after the other.

    Args:
        project: The project.
        columns: The columns to read (all when None).
    """
    frames = [pd.read_parquet(path, columns=columns) for path in event_files(project)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


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
