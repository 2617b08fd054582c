"""The evaluation protocol shared by `train` (validation) and `evaluate` (test): numpy and pandas only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bigrec_cli.data import SPLIT_NEGATIVE, SPLIT_TRAIN, SPLIT_VALID
from bigrec_cli.events import TYPE_STRIDE, token_items
from bigrec_cli.metrics import CUTOFFS, batch_rows, ranking_report, ranks_of_targets
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
        times: The time stamp of each history step (what the item-to-item term's ages in time count).
    """

    user_ids: list[str]
    histories: list[np.ndarray]
    targets: np.ndarray
    times: list[np.ndarray]

    def padded(self, start: int, stop: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The cases start…stop as left-padded rows: (tokens, the steps' times)."""
        return left_pad(self.histories[start:stop], max_len), left_pad(self.times[start:stop], max_len, "float64")


def event_vocabulary(events: pd.DataFrame, negative_events: tuple[str, ...]) -> list[str]:
    """The event types a run reads, in the order of their ids: the most frequent positive type first (id 0, whose
    tokens are plain item indices), then the other positive types, then the negative ones, each by name."""
    if "event" not in events.columns or events.empty:
        return []
    return vocabulary_of_counts(events["event"].value_counts(), negative_events)


def vocabulary_of_counts(counts: pd.Series, negative_events: tuple[str, ...]) -> list[str]:
    """`event_vocabulary` from the number of events of each type (name → count), e.g. summed over shards."""
    counts = counts[counts > 0]
    positive = sorted((name for name in counts.index if name not in negative_events), key=lambda n: (-counts[n], n))
    negative = sorted(name for name in counts.index if name in negative_events)
    return [*positive, *negative]


def indexed_events(events: pd.DataFrame, item_ids: list[str], event_types: list[str] | None = None) -> pd.DataFrame:
    """Return events whose item is in `item_ids`, with `index` = position in item_ids + 1 and `token` = the index
    plus the event type's id × TYPE_STRIDE (what the LSTM reads).

    Args:
        events: Events sorted by user, then time.
        item_ids: The run's items.
        event_types: The run's event types (id = position). Positive types it does not know read as type 0;
            negative events (split `negative`) of a type it does not know are left out of the sequences (`readable`).
    """
    index_of = pd.Series(np.arange(1, len(item_ids) + 1), index=pd.Index(item_ids))
    known = events[events["item_id"].isin(index_of.index)]
    index = index_of.reindex(known["item_id"]).to_numpy()
    kinds = known["event"] if "event" in known.columns else pd.Series("", index=known.index)
    type_of = pd.Series(np.arange(len(event_types or ())), index=pd.Index(event_types or (), dtype=object))
    type_id = type_of.reindex(kinds).to_numpy()
    readable = ~np.isnan(type_id)
    token = index + np.nan_to_num(type_id, nan=0.0).astype("int64") * TYPE_STRIDE
    return known.assign(index=index, token=token, readable=readable)


def user_sequences(events: pd.DataFrame, splits: tuple[str, ...], column: str = "token") -> dict[str, np.ndarray]:
    """Return each user's sequence over the given splits, oldest first (events must be sorted by user, time).

    Negative events (split `negative`) the run can read join the sequence when they come before the user's first
    event of a later split (a cancellation after the held-out purchase is not history). `column`: `token` (what
    the LSTM reads), `index` (items) or any per-event column.
    """
    if "token" not in events.columns:
        events = events.assign(token=events["index"], readable=True)
    later = ~events["split"].isin((*splits, SPLIT_NEGATIVE)).to_numpy()
    position = np.arange(len(events))
    first_later = (
        pd.Series(np.where(later, position, len(events))).groupby(events["user_id"].to_numpy()).transform("min")
    )
    negative = (events["split"] == SPLIT_NEGATIVE).to_numpy() & events["readable"].to_numpy(dtype=bool)
    chosen = events[events["split"].isin(splits).to_numpy() | (negative & (position < first_later.to_numpy()))]
    return {user: group.to_numpy() for user, group in chosen.groupby("user_id", sort=True)[column]}


def holdout_cases(events: pd.DataFrame, target_split: str) -> HoldoutCases:
    """Return the validation (`valid`) or test (`test`) cases: history is everything before the target split."""
    history_splits = (SPLIT_TRAIN,) if target_split == SPLIT_VALID else (SPLIT_TRAIN, SPLIT_VALID)
    histories = user_sequences(events, history_splits)
    times = user_sequences(events, history_splits, column="timestamp")
    targets = events[events["split"] == target_split].sort_values("user_id")
    user_ids = targets["user_id"].tolist()
    empty, no_times = np.zeros(0, dtype="int64"), np.zeros(0, dtype="float64")
    return HoldoutCases(
        user_ids,
        [histories.get(user, empty) for user in user_ids],
        targets["index"].to_numpy(),
        [np.asarray(times.get(user, no_times), dtype="float64") for user in user_ids],
    )


def scaled_weights(weights: np.ndarray, scale: str) -> np.ndarray:
    """How much the `weight` column (e.g. a quantity) scales an event in the loss.

    `log` gives 1 + ln(weight) from weight 1 up (2 units count 1.69, 100 units 5.6: a bulk order does
    not drown everything else) and the weight itself below 1; `linear` the weight as it is; `ignore` 1. Weights
    below 0 count 0.
    """
    weights = np.clip(np.asarray(weights, dtype="float64"), 0.0, None)
    if scale == "ignore":
        return np.ones_like(weights)
    if scale == "linear":
        return weights
    return np.where(weights >= 1.0, 1.0 + np.log(np.maximum(weights, 1.0)), weights)


def loss_weights(events: pd.DataFrame, event_weights: dict[str, float], scale: str, negative_events: tuple[str, ...]):
    """Each event's weight as a training target: its type's weight × its scaled `weight` column; 0 if negative."""
    kinds = events["event"] if "event" in events.columns else pd.Series("", index=events.index)
    by_type = kinds.map(lambda kind: event_weights.get(kind, 1.0)).to_numpy(dtype="float64")
    column = events["weight"].to_numpy(dtype="float64") if "weight" in events.columns else np.ones(len(events))
    weights = by_type * scaled_weights(column, scale)
    weights[kinds.isin(negative_events).to_numpy()] = 0.0
    return weights


class Windows:
    """Every training window of every user, cut from the users' sequences only when a batch asks for it.

    A sequence of n events gives n − 1 training positions, in left-padded windows of `max_len` counted from its
    end; each window is (input tokens, next item, next item's loss weight), and a target whose weight is 0 (a
    negative event) is read as input but never predicted. Only the sequences and two integers per window are held,
    never every window of every user.
    """

    def __init__(
        self, sequences: dict[str, np.ndarray], max_len: int, weights: dict[str, np.ndarray] | None = None
    ) -> None:
        self.max_len = max_len
        self.tokens = list(sequences.values())
        self.weights = [
            np.asarray(weights[user], dtype="float32") if weights is not None else np.ones(len(tokens), "float32")
            for user, tokens in sequences.items()
        ]
        ends = [np.arange(len(tokens) - 1, 0, -max_len, dtype="int64") for tokens in self.tokens]
        self.slot = np.repeat(np.arange(len(ends), dtype="int64"), [len(end) for end in ends])
        self.end = np.concatenate(ends) if ends else np.zeros(0, dtype="int64")

    def __len__(self) -> int:
        return len(self.end)

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (inputs, targets, target weights) of the windows at `rows`, each (len(rows), max_len)."""
        max_len = self.max_len
        inputs = np.zeros((len(rows), max_len), dtype="int64")
        targets = np.zeros((len(rows), max_len), dtype="int64")
        weights = np.zeros((len(rows), max_len), dtype="float32")
        for row, window in enumerate(rows):
            tokens, weight, end = self.tokens[self.slot[window]], self.weights[self.slot[window]], self.end[window]
            start = max(0, end - max_len)
            inputs[row, max_len - (end - start) :] = tokens[start:end]
            targets[row, max_len - (end - start) :] = token_items(tokens[start + 1 : end + 1])
            weights[row, max_len - (end - start) :] = weight[start + 1 : end + 1]
        targets[weights == 0] = 0
        return inputs, targets, weights

    def target_counts(self, num_items: int) -> np.ndarray:
        """How often each item (index 0…num_items) is a training target (weight above 0)."""
        counts = np.zeros(num_items + 1, dtype="int64")
        for tokens, weight in zip(self.tokens, self.weights):
            counts += np.bincount(token_items(tokens[1:])[weight[1:] > 0], minlength=num_items + 1)
        counts[0] = 0
        return counts


def training_windows(
    sequences: dict[str, np.ndarray], max_len: int, weights: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window of `Windows` at once: (inputs, targets, target weights), in the order of the sequences."""
    windows = Windows(sequences, max_len, weights)
    return windows.rows(np.arange(len(windows)))


def sample_cases(cases: HoldoutCases, limit: int, seed: int) -> HoldoutCases:
    """At most `limit` of the cases, in their order: the users with the lowest hash of seed and user id, so the same
    users whatever the order of the data.

    Args:
        cases: Held-out cases, one per user.
        limit: The most cases kept.
        seed: Another seed, other users. The hash is BLAKE2b, not the CRC-32 of `train.users_share`: CRC is linear,
            so CRCs of the same ids under two salts are ordered alike (or reversed), and a share of users trained on
            and this sample would hold the same users (or none in common).

    Returns:
        `cases` itself when it holds no more than `limit` cases; otherwise a new HoldoutCases of `limit` cases.
    """
    if len(cases.user_ids) <= limit:
        return cases
    keys = np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{user}".encode("utf-8"), digest_size=8).digest(), "big")
            for user in cases.user_ids
        ],
        dtype="uint64",
    )
    kept = np.sort(np.argsort(keys, kind="stable")[:limit])
    return HoldoutCases(
        [cases.user_ids[row] for row in kept],
        [cases.histories[row] for row in kept],
        cases.targets[kept],
        [cases.times[row] for row in kept],
    )


def left_pad(histories: list[np.ndarray], max_len: int, dtype: str = "int64") -> np.ndarray:
    """Return (len(histories), max_len) rows holding the last max_len values (indices, or the steps' times) of
    each history, right-aligned."""
    rows = np.zeros((len(histories), max_len), dtype=dtype)
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
    ranks, batch_size = [], batch_rows(scorer.num_items, batch_size)
    for start in range(0, len(cases.user_ids), batch_size):
        stop = start + batch_size
        logits = scorer.logits(*cases.padded(start, stop, max_len))
        excluded = [token_items(history) - 1 for history in cases.histories[start:stop]] if exclude_history else None
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
    "event_vocabulary",
    "indexed_events",
    "loss_weights",
    "scaled_weights",
    "user_sequences",
    "holdout_cases",
    "training_windows",
    "sample_cases",
    "left_pad",
    "scorer_ranks",
    "scorer_report",
]
