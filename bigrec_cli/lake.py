"""The preprocessed events as shards by user, built with Polars' streaming engine in bounded memory.

Validated batches are spilled, as they are read, into hash buckets of the user id (Arrow IPC files). Each shard,
the buckets equal modulo the shard count, is then sorted, deduplicated and split on its own by Polars and
written as one Parquet file. A user lives in exactly one shard, so memory follows a batch and a shard, never
the whole input. Polars is imported inside the functions: `bigrec --help` never loads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = "train", "valid", "test"
SPLIT_NEGATIVE = "negative"  # negative behaviour (a cancellation, a dislike): never a training or held-out target
NUM_BUCKETS = 64  # shard counts are powers of two up to this, so a bucket belongs to exactly one shard
SHARD_EVENTS = 500_000  # about how many events a shard holds: what one shard's sort keeps in memory
SHARD_NAME = "part-{:05d}.parquet"
SHARD_HASH = "pandas.util.hash_pandas_object(user_id, index=False) % num_shards"
TIE_COLUMNS = ("user_id", "item_id", "timestamp", "event")
SPILL_COLUMNS = ("user_id", "item_id", "timestamp", "event", "weight", "rating", "item_index", "_tie", "_seq")


def tie_breaker(events: pd.DataFrame) -> np.ndarray:
    """A key that orders events of one user at one time by their content, never by their row in the input.

    Events with the same timestamp (a basket, a day) would otherwise keep the order in which someone typed them,
    which a sequence model can learn and which shuffling the file would change.
    """
    columns = [column for column in TIE_COLUMNS if column in events.columns]
    return pd.util.hash_pandas_object(events[columns], index=False).to_numpy()


def user_hash(user_ids: pd.Series) -> np.ndarray:
    """The stable hash that places a user in a shard (pandas' SipHash with its fixed key: the same every run)."""
    return pd.util.hash_pandas_object(pd.Series(user_ids, dtype=object), index=False).to_numpy()


def shard_count(num_events: int, shard_events: int = SHARD_EVENTS) -> int:
    """The number of shards for `num_events`: a power of two, about `shard_events` each, at most NUM_BUCKETS."""
    count = 1
    while count < NUM_BUCKETS and count * shard_events < num_events:
        count *= 2
    return count


def shard_files(folder: Path) -> list[Path]:
    """The shard files of an events folder, in shard order."""
    return sorted(folder.glob("part-*.parquet"))


class Spill:
    """Hash buckets of validated events on disk, filled batch by batch (Arrow IPC files, LZ4-compressed).

    Args:
        folder: An empty folder for the buckets (inside the staging folder of the new data version).
    """

    def __init__(self, folder: Path) -> None:
        import pyarrow as pa

        self.folder = folder
        self.schema = pa.schema(
            [
                ("user_id", pa.large_string()),
                ("item_id", pa.large_string()),
                ("timestamp", pa.float64()),
                ("event", pa.large_string()),
                ("weight", pa.float64()),
                ("rating", pa.float64()),
                ("item_index", pa.int64()),
                ("_tie", pa.uint64()),
                ("_seq", pa.int64()),
            ]
        )
        self.writers: dict[int, object] = {}
        self.num_events = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, events: pd.DataFrame) -> None:
        """Append validated events (`SPILL_COLUMNS` but `_seq`, the input order, which this numbers)."""
        import pyarrow as pa

        events = events.assign(_seq=np.arange(self.num_events, self.num_events + len(events), dtype="int64"))
        buckets = user_hash(events["user_id"]) % NUM_BUCKETS
        order = np.argsort(buckets, kind="stable")
        table = pa.Table.from_pandas(events[list(SPILL_COLUMNS)], schema=self.schema, preserve_index=False)
        table = table.take(pa.array(order))
        bounds = np.searchsorted(buckets[order], np.arange(NUM_BUCKETS + 1))
        for bucket in np.flatnonzero(np.diff(bounds)):
            self._writer(int(bucket)).write_table(table.slice(bounds[bucket], bounds[bucket + 1] - bounds[bucket]))
        self.num_events += len(events)

    def _writer(self, bucket: int):
        import pyarrow as pa

        if bucket not in self.writers:
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self.writers[bucket] = pa.ipc.new_file(self.bucket_path(bucket), self.schema, options=options)
        return self.writers[bucket]

    def bucket_path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket:03d}.arrow"

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def shard_buckets(self, shard: int, num_shards: int) -> list[Path]:
        """The bucket files of one shard (buckets equal to it modulo the shard count); an empty one if none."""
        buckets = [bucket for bucket in range(shard, NUM_BUCKETS, num_shards) if bucket in self.writers]
        if not buckets:  # a shard no user hashed to still gets its (empty) file
            buckets = [shard]
            self._writer(shard).close()
        return [self.bucket_path(bucket) for bucket in buckets]


@dataclass
class ShardTotals:
    """What the written shards hold, summed over shards; `digest` is the running events fingerprint."""

    num_events: int = 0
    num_users: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def add(self, path: Path, batch_rows: int = 500_000) -> None:
        """Count one shard file and fold it into the fingerprint, a batch at a time, as pandas reads it."""
        import pyarrow.parquet as parquet

        users = set()
        for batch in parquet.ParquetFile(path).iter_batches(batch_size=batch_rows):
            events = batch.to_pandas()
            self.num_events += len(events)
            users.update(events["user_id"].unique())  # a shard's users, never all users
            for split, count in events["split"].value_counts().items():
                self.splits[str(split)] = self.splits.get(str(split), 0) + int(count)
            self.digest.update(pd.util.hash_pandas_object(events, index=False).to_numpy().tobytes())
            self.columns = list(events.columns)
        self.num_users += len(users)


def fingerprint(totals: ShardTotals, *frames: pd.DataFrame) -> str:
    """Finish the fingerprint of events hashed shard by shard, then `frames` (the items): the same SHA-256 as
    `data.fingerprint_frames` over all the events at once, since row hashes do not depend on their neighbours."""
    digest = totals.digest.copy()
    digest.update(",".join(totals.columns).encode())
    for frame in frames:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


def write_shard(
    buckets: list[Path], path: Path, *, dedupe: str, negative_events: tuple[str, ...], keep_rating: bool
) -> None:
    """Sort, deduplicate and split one shard's events with Polars' streaming engine and write them to `path`.

    Sorts by user, time, `tie_breaker` and input order; `dedupe` `exact` keeps the last of rows equal in user,
    item, time and event type, `latest` the last row of each (user, item); then per user, of the positive events
    (types not in `negative_events`), the last is `test` and the one before `valid` when there are at least three,
    the rest `train`; negative events are `negative`. The semantics of `order_and_deduplicate` and `split_by_time`.
    """
    import polars as pl

    columns = ["user_id", "item_id", "timestamp", "event", "weight", *(["rating"] if keep_rating else [])]
    # After the sort a user's rows are neighbours: number users by run (an integer is cheaper to group by than text),
    # and item_index stands for item_id (one to one).
    user = pl.col("user_id").ne_missing(pl.col("user_id").shift(1)).cum_sum()
    if dedupe == "latest":
        last = pl.col("_position") == pl.col("_position").max().over("_user", "item_index")
    else:  # rows equal in user, item, time and type have equal ties, so the sort puts them side by side
        key = ("_user", "item_index", "timestamp", "event")
        last = pl.any_horizontal(pl.col(name).ne_missing(pl.col(name).shift(-1)) for name in key)
    positive = ~pl.col("event").is_in(pl.lit(list(negative_events), dtype=pl.List(pl.String)))
    num_positive = pl.col("_positive").sum().over("_user")
    rank_from_end = num_positive - pl.col("_positive").cum_sum().over("_user")
    eligible = num_positive >= 3
    split = (
        pl.when(pl.col("_positive") == 0)
        .then(pl.lit(SPLIT_NEGATIVE))
        .when(eligible & (rank_from_end == 0))
        .then(pl.lit(SPLIT_TEST))
        .when(eligible & (rank_from_end == 1))
        .then(pl.lit(SPLIT_VALID))
        .otherwise(pl.lit(SPLIT_TRAIN))
    )
    shard = (
        pl.scan_ipc(buckets)
        .with_columns(pl.col(name).cast(pl.String) for name in ("user_id", "item_id", "event"))
        .sort(["user_id", "timestamp", "_tie", "_seq"])
        .with_row_index("_position")
        .with_columns(_user=user)
        .filter(last)
        .with_columns(_positive=positive.cast(pl.Int32))
        .with_columns(split=split)
        .select(*columns, "split", "item_index")
    )
    shard.sink_parquet(path, engine="streaming")
