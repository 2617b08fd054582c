"""What `train` learns from, read shard by shard: each user's sequences, the validation cases and the counts.

The preprocessed events are shards of whole users (`data/<version>/events/part-NNNNN.parquet`). Reading them one
at a time and keeping only each user's token arrays bounds the memory of the table to one shard, whatever the
number of events: the arrays take about 30 bytes per event, the pandas table of every event ten times that.
The result equals what the same functions give on all events at once: every step is per user, and the users are
put back in the order of their ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from bigrec_cli.data import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID, EventPolicy, event_files, fold_feedback
from bigrec_cli.project import ProjectDir
from bigrec_cli.protocol import (
    HoldoutCases,
    holdout_cases,
    indexed_events,
    loss_weights,
    user_sequences,
    vocabulary_of_counts,
)


@dataclass(frozen=True)
class TrainingData:
    """Attributes:
    event_types: The run's event types (id = position), from the events training may see.
    sequences: Each user's training tokens, oldest first, users in id order.
    weights: Each user's loss weight per training token.
    seen: Each user's training and validation tokens (the item-to-item term is kept fitted on both), or None.
    cases: The validation cases.
    train_counts: Positive training events of each item index (0…num_items; 0 is padding).
    """

    event_types: list[str]
    sequences: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    seen: dict[str, np.ndarray] | None
    cases: HoldoutCases
    train_counts: np.ndarray


def shard_frames(
    project: ProjectDir,
    policy: EventPolicy,
    feedback: pd.DataFrame | None = None,
    exclude_items: set[str] | None = None,
) -> Iterator[pd.DataFrame]:
    """The events shard by shard, with the feedback of each shard's users folded in and `exclude_items` left out;
    users whom only the feedback knows come last, as one more frame."""
    pending = feedback if feedback is not None and not feedback.empty else None
    for path in event_files(project):
        frame = pd.read_parquet(path)
        if pending is not None:
            mine = pending["user_id"].isin(frame["user_id"].unique()).to_numpy()
            if mine.any():
                frame = fold_feedback(frame, pending[mine], policy)
            pending = pending[~mine] if (~mine).any() else None
        yield frame if not exclude_items else frame[~frame["item_id"].isin(exclude_items)]
    if pending is not None:
        empty = pd.DataFrame({name: pd.Series(dtype=pending[name].dtype) for name in pending.columns})
        frame = fold_feedback(empty, pending, policy)
        yield frame if not exclude_items else frame[~frame["item_id"].isin(exclude_items)]


def read_training_data(
    project: ProjectDir,
    item_ids: list[str],
    policy: EventPolicy,
    *,
    event_weights: dict[str, float],
    weight_scale: str,
    feedback: pd.DataFrame | None = None,
    exclude_items: set[str] | None = None,
    with_seen: bool = True,
) -> TrainingData:
    """Read the shards twice: once to count the event types, once to build the sequences and cases."""
    counts = pd.Series(dtype="int64")
    for frame in shard_frames(project, policy, feedback, exclude_items):
        if "event" in frame.columns:
            counts = counts.add(frame.loc[frame["split"] != SPLIT_TEST, "event"].value_counts(), fill_value=0)
    # Event types come from the events training may see (never from the held-out ones).
    event_types = vocabulary_of_counts(counts, policy.negative_events) if len(counts) else []
    sequences: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    seen: dict[str, np.ndarray] = {}
    case_users: list[str] = []
    case_histories: list[np.ndarray] = []
    case_times: list[np.ndarray] = []
    case_targets: list[np.ndarray] = []
    train_counts = np.zeros(len(item_ids) + 1, dtype="int64")
    for frame in shard_frames(project, policy, feedback, exclude_items):
        events = indexed_events(frame, item_ids, event_types)
        events = events.assign(loss_weight=loss_weights(events, event_weights, weight_scale, policy.negative_events))
        sequences.update(user_sequences(events, (SPLIT_TRAIN,)))
        weights.update(user_sequences(events, (SPLIT_TRAIN,), column="loss_weight"))
        if with_seen:
            seen.update(user_sequences(events, (SPLIT_TRAIN, SPLIT_VALID)))
        cases = holdout_cases(events, SPLIT_VALID)
        case_users.extend(cases.user_ids)
        case_histories.extend(cases.histories)
        case_times.extend(cases.times)
        case_targets.append(cases.targets)
        trained = events.loc[events["split"] == SPLIT_TRAIN, "index"].to_numpy()
        train_counts += np.bincount(trained.astype("int64"), minlength=len(item_ids) + 1)
    order = sorted(range(len(case_users)), key=case_users.__getitem__)
    targets = np.concatenate(case_targets) if case_targets else np.zeros(0, dtype="int64")
    return TrainingData(
        event_types=event_types,
        sequences=dict(sorted(sequences.items())),
        weights=dict(sorted(weights.items())),
        seen=dict(sorted(seen.items())) if with_seen else None,
        cases=HoldoutCases(
            [case_users[i] for i in order],
            [case_histories[i] for i in order],
            targets[order],
            [case_times[i] for i in order],
        ),
        train_counts=train_counts,
    )
