"""`bigrec forget-user`: remove one user's behaviour from everything a future run or answer reads.

The user's rows leave the preprocessed events (rewritten atomically, with new counts and fingerprint, so the next
`retrain` sees changed data), the feedback store and the rejected-rows log. A serving process notices the new
data and reloads, dropping the user's cached state. What was removed is logged in `forget.log.jsonl` under a
SHA-256 of the user id, never the id itself. Running it again removes nothing and logs that.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass

import pandas as pd

from bigrec_cli.data import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID, event_files, load_items, write_parquet
from bigrec_cli.feedback import open_store
from bigrec_cli.lake import SHARD_NAME, ShardTotals, fingerprint
from bigrec_cli.project import (
    DATA_META_FILE,
    EVENTS_DIR,
    ITEMS_FILE,
    ProjectDir,
    append_json_line,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)

FORGET_LOG = "forget.log.jsonl"


@dataclass(frozen=True)
class ForgetSummary:
    """What forgetting one user removed."""

    user_sha256: str
    preprocessed_events: int
    feedback_events: int
    rejected_rows: int


def forget_user(project: ProjectDir, user_id: str) -> ForgetSummary:
    """Remove every event of `user_id` from the project's data, feedback store and rejects log."""
    project.require_data()
    project = project.pinned()
    shards = event_files(project)
    mine = [int((pd.read_parquet(path, columns=["user_id"])["user_id"] == user_id).sum()) for path in shards]
    if any(mine):  # rewrite the user's shard; the others are copied, and every shard is counted and hashed
        items = load_items(project)
        meta = read_json(project.data_meta_path)
        totals = ShardTotals()
        with project.new_data_version(keep=1) as folder:  # no earlier version keeps the user's events
            (folder / EVENTS_DIR).mkdir()
            for index, (path, num_mine) in enumerate(zip(shards, mine)):
                target = folder / EVENTS_DIR / SHARD_NAME.format(index)
                if num_mine:
                    events = pd.read_parquet(path)
                    write_parquet(events[(events["user_id"] != user_id).to_numpy()], target)
                else:
                    shutil.copyfile(path, target)
                totals.add(target)
            meta.update(
                num_events=totals.num_events,
                num_users=totals.num_users,
                num_train=totals.splits.get(SPLIT_TRAIN, 0),
                num_valid=totals.splits.get(SPLIT_VALID, 0),
                num_test=totals.splits.get(SPLIT_TEST, 0),
                num_shards=len(shards),
                fingerprint=fingerprint(totals, items),
            )
            write_parquet(items, folder / ITEMS_FILE)
            atomic_write_json(folder / DATA_META_FILE, meta)
    feedback_events = open_store(project).delete_user(user_id)
    rejected = forget_rejections(project, user_id)
    summary = ForgetSummary(
        user_sha256=hashlib.sha256(user_id.encode("utf-8")).hexdigest(),
        preprocessed_events=sum(mine),
        feedback_events=feedback_events,
        rejected_rows=rejected,
    )
    append_json_line(project.root / FORGET_LOG, {"at": time.time(), **asdict(summary)})
    return summary


def forget_rejections(project: ProjectDir, user_id: str) -> int:
    """Drop rejected rows that name the user from `feedback.rejects.jsonl`; return how many."""
    try:
        lines = project.rejects_path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    kept = [line for line in lines if not names_user(line, user_id)]
    if len(kept) != len(lines):
        atomic_write_bytes(project.rejects_path, "".join(kept).encode("utf-8"))
    return len(lines) - len(kept)


def names_user(line: str, user_id: str) -> bool:
    """Whether a rejects-log line holds a row of the user (JSON, CSV or raw text)."""
    try:
        row = json.loads(line).get("row", "")
    except (ValueError, AttributeError):
        return user_id in line
    try:
        return json.loads(row).get("user_id") == user_id
    except (ValueError, AttributeError, TypeError):
        return user_id in str(row).split(",")
