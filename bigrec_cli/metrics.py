"""Ranking and classification metrics: small pure functions over numpy arrays."""

from __future__ import annotations

import numpy as np

CUTOFFS = (5, 10, 20)
# Score matrices are built a batch of users at a time, each batch of about this many cells (users × items): 64 MiB
# of float32, whatever the catalog's size (a batch of 1,024 users × 100,000 items held 400 MiB per matrix).
BATCH_CELLS = 2**24


def batch_rows(num_items: int, most: int) -> int:
    """Users per batch of (users, items) score matrices.

    Args:
        num_items: Columns of each matrix.
        most: The batch size where memory is no concern.

    Returns:
        `most`, or fewer (at least 1) so that a batch holds at most BATCH_CELLS scores.
    """
    return max(1, min(most, BATCH_CELLS // max(num_items, 1)))


def ranks_of_targets(scores: np.ndarray, targets: np.ndarray, excluded: list[np.ndarray] | None = None) -> np.ndarray:
    """Return, per row, the number of items scored strictly higher than the target.

    Args:
        scores: (num_users, num_items) scores; higher is better.
        targets: (num_users,) column index of each user's held-out item.
        excluded: Per user, column indices removed from the ranking (the user's history). The target is never
            excluded even if listed.

    Returns:
        (num_users,) integer ranks; 0 means the target is first.
    """
    # a copy in the scores' own precision (float32 stays float32: every comparison below is the same in float64)
    scores = np.asarray(scores)
    scores = np.array(scores, dtype=np.result_type(scores.dtype, np.float32), copy=True)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    if excluded is not None:
        for row, columns in enumerate(excluded):
            scores[row, columns] = -np.inf
    scores[rows, targets] = target_scores
    return (scores > target_scores[:, None]).sum(axis=1)


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of targets ranked in the top k."""
    return float(np.mean(np.asarray(ranks) < k)) if len(ranks) else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item per user: 1 / log2(rank + 2) inside the top k, else 0."""
    ranks = np.asarray(ranks, dtype="float64")
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean()) if len(ranks) else 0.0


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank, counting 1 / (rank + 1) inside the top k, else 0."""
    ranks = np.asarray(ranks, dtype="float64")
    reciprocal = np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0)
    return float(reciprocal.mean()) if len(ranks) else 0.0


def ranking_report(ranks: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """Return `hr@K`, `ndcg@K` and `mrr@K` for every cutoff."""
    report: dict[str, float] = {}
    for k in cutoffs:
        report[f"hr@{k}"] = hit_rate_at_k(ranks, k)
        report[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
        report[f"mrr@{k}"] = mrr_at_k(ranks, k)
    return report


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; ties count one half (the Mann-Whitney statistic)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype="float64")
    num_positive, num_negative = int(labels.sum()), int((~labels).sum())
    if num_positive == 0 or num_negative == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype="float64")
    # Average ranks over ties so that equal scores count one half.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - num_positive * (num_positive + 1) / 2.0) / (num_positive * num_negative))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, epsilon: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities against 0/1 labels, clipped to [eps, 1 - eps]."""
    labels = np.asarray(labels, dtype="float64")
    probabilities = np.clip(np.asarray(probabilities, dtype="float64"), epsilon, 1.0 - epsilon)
    return float(-np.mean(labels * np.log(probabilities) + (1.0 - labels) * np.log(1.0 - probabilities)))
