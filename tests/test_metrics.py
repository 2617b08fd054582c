import math

import numpy as np
import pytest

from bigrec_cli.metrics import (
    batch_rows,
    hit_rate_at_k,
    log_loss,
    mrr_at_k,
    ndcg_at_k,
    ranking_report,
    ranks_of_targets,
    roc_auc,
)


def test_rank_counts_items_scored_strictly_higher_and_skips_history():
    scores = np.array([[0.9, 0.5, 0.7, 0.5, 0.1]])
    # Target column 1 (0.5): 0.9 and 0.7 are higher, the tie at column 3 is not counted.
    assert ranks_of_targets(scores, np.array([1])).tolist() == [2]
    # Excluding column 0 (history) lifts the target by one.
    assert ranks_of_targets(scores, np.array([1]), [np.array([0])]).tolist() == [1]
    # The target is never excluded even if listed in the history.
    assert ranks_of_targets(scores, np.array([1]), [np.array([0, 1])]).tolist() == [1]


def test_ranking_metrics_by_hand():
    ranks = np.array([0, 1, 4, 30])
    assert hit_rate_at_k(ranks, 5) == pytest.approx(3 / 4)
    assert hit_rate_at_k(ranks, 1) == pytest.approx(1 / 4)
    # NDCG@5: 1/log2(2) + 1/log2(3) + 1/log2(6), over 4 users.
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    # MRR@5: 1 + 1/2 + 1/5 over 4.
    assert mrr_at_k(ranks, 5) == pytest.approx((1 + 0.5 + 0.2) / 4)
    assert mrr_at_k(ranks, 2) == pytest.approx((1 + 0.5) / 4)
    report = ranking_report(ranks, (5, 10))
    assert set(report) == {"hr@5", "ndcg@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10"}


def test_auc_by_hand_with_ties():
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.8, 0.3, 0.3, 0.1, 0.9])
    # Pairs (pos, neg): 0.8 beats 0.3, 0.1, loses to 0.9 -> 2; 0.3 ties 0.3 (0.5), beats 0.1, loses 0.9 -> 1.5.
    assert roc_auc(labels, scores) == pytest.approx(3.5 / 6)
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_log_loss_by_hand():
    assert log_loss(np.array([1, 0]), np.array([1.0, 0.3])) == pytest.approx(-(math.log(1 - 1e-7) + math.log(0.7)) / 2)


def test_ranks_of_float32_scores_equal_those_computed_in_float64():
    rng = np.random.default_rng(0)
    # few distinct values, so that ties with the target are frequent
    scores = rng.integers(0, 8, size=(200, 50)).astype("float32") / 7
    targets = rng.integers(0, 50, size=200)
    excluded = [rng.choice(50, size=5, replace=False) for _ in range(200)]
    original = scores.copy()
    for history in (None, excluded):
        expected = ranks_of_targets(scores.astype("float64"), targets, history)
        assert ranks_of_targets(scores, targets, history).tolist() == expected.tolist()
    assert scores.dtype == np.float32 and np.array_equal(scores, original), "the caller's scores are left as they were"


def test_batches_of_score_rows_stay_within_a_number_of_cells():
    assert batch_rows(1_682, 1024) == 1024  # 2^24 cells hold 9,974 rows of 1,682 items: the usual batch
    assert batch_rows(100_000, 1024) == 167  # 2^24 // 100,000
    assert batch_rows(50_000_000, 512) == 1  # never empty
    assert batch_rows(0, 512) == 512
