"""The evaluation protocol shared by `train` (validation) and `evaluate` (test): numpy and pandas only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bigrec_cli.data import SPLIT_TRAIN, SPLIT_VALID
from bigrec_cli.metrics import CUTOFFS, ranking_report, ranks_of_targets
from bigrec_cli.scoring import Scorer

PROTOCOL = (
    "per user by time: last event = test, second-to-last = validation, rest = train; full ranking over the whole "
    "catalog with the user's history excluded; rank = number of items scored strictly higher than the target"
)


@dataclass(frozen=True)
class HoldoutCases:
    """One held-out event per user and the history before it.

    Attributes:
        user_ids: The users, one per case.
        histories: Item indices (1-based) the user interacted with before the target, oldest first.
        targets: Item index of the held-out event.
    """

    user_ids: list[str]
    histories: list[np.ndarray]
    targets: np.ndarray


def indexed_events(events: pd.DataFrame, item_ids: list[str]) -> pd.DataFrame:
    """Return events whose item is in `item_ids`, with `index` = position in item_ids + 1."""
    index_of = pd.Series(np.arange(1, len(item_ids) + 1), index=pd.Index(item_ids))
    known = events[events["item_id"].isin(index_of.index)]
    return known.assign(index=index_of.reindex(known["item_id"]).to_numpy())


def user_sequences(events: pd.DataFrame, splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Return each user's item indices in the given splits, oldest first (events must be sorted by user, time)."""
    chosen = events[events["split"].isin(splits)]
    return {user: group.to_numpy() for user, group in chosen.groupby("user_id", sort=True)["index"]}


def holdout_cases(events: pd.DataFrame, target_split: str) -> HoldoutCases:
    """Return the validation (`valid`) or test (`test`) cases: history is everything before the target split."""
    history_splits = (SPLIT_TRAIN,) if target_split == SPLIT_VALID else (SPLIT_TRAIN, SPLIT_VALID)
    histories = user_sequences(events, history_splits)
    targets = events[events["split"] == target_split].sort_values("user_id")
    user_ids = targets["user_id"].tolist()
    empty = np.zeros(0, dtype="int64")
    return HoldoutCases(user_ids, [histories.get(user, empty) for user in user_ids], targets["index"].to_numpy())


def training_windows(sequences: dict[str, np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut sequences into left-padded (input, next-item target) windows that cover every position once.

    A sequence of n items gives n − 1 training positions, in windows of `max_len` counted from its end.
    """
    inputs, targets = [], []
    for sequence in sequences.values():
        for end in range(len(sequence) - 1, 0, -max_len):
            start = max(0, end - max_len)
            window_input = np.zeros(max_len, dtype="int64")
            window_target = np.zeros(max_len, dtype="int64")
            window_input[max_len - (end - start) :] = sequence[start:end]
            window_target[max_len - (end - start) :] = sequence[start + 1 : end + 1]
            inputs.append(window_input)
            targets.append(window_target)
    if not inputs:
        return np.zeros((0, max_len), "int64"), np.zeros((0, max_len), "int64")
    return np.stack(inputs), np.stack(targets)


def left_pad(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    """Return (len(histories), max_len) rows holding the last max_len indices of each history, right-aligned."""
    rows = np.zeros((len(histories), max_len), dtype="int64")
    for row, history in enumerate(histories):
        tail = history[-max_len:]
        if len(tail):
            rows[row, max_len - len(tail) :] = tail
    return rows


def scorer_ranks(
    scorer: Scorer, cases: HoldoutCases, max_len: int, batch_size: int = 512, exclude_history: bool = True
) -> np.ndarray:
    """Rank each case's target among all items with the scorer, excluding the user's history unless repeats are
    allowed (`exclude_history=False`)."""
    ranks = []
    for start in range(0, len(cases.user_ids), batch_size):
        stop = start + batch_size
        logits = scorer.logits(left_pad(cases.histories[start:stop], max_len))
        excluded = [history - 1 for history in cases.histories[start:stop]] if exclude_history else None
        ranks.append(ranks_of_targets(logits, cases.targets[start:stop] - 1, excluded))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype="int64")


def scorer_report(
    scorer: Scorer,
    cases: HoldoutCases,
    max_len: int,
    cutoffs: tuple[int, ...] = CUTOFFS,
    exclude_history: bool = True,
) -> dict[str, float]:
    """Return HR/NDCG/MRR at each cutoff for the scorer on the cases."""
    return ranking_report(scorer_ranks(scorer, cases, max_len, exclude_history=exclude_history), cutoffs)


__all__ = [
    "PROTOCOL",
    "HoldoutCases",
    "indexed_events",
    "user_sequences",
    "holdout_cases",
    "training_windows",
    "left_pad",
    "scorer_ranks",
    "scorer_report",
]
