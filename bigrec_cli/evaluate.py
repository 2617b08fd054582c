"""`bigrec evaluate`: full-ranking test metrics of the promoted run beside Pop, ItemKNN and EASE."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bigrec_cli.annindex import ItemIndex
from bigrec_cli.artifacts import load_run, run_scorer
from bigrec_cli.baselines import EASE, ItemKNN, PersonalFrequency, interaction_matrix, make_baselines
from bigrec_cli.data import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID, event_policy, load_events
from bigrec_cli.errors import DataError
from bigrec_cli.events import token_items
from bigrec_cli.metrics import CUTOFFS, batch_rows, log_loss, ranking_report, ranks_of_targets, roc_auc
from bigrec_cli.project import RUN_HISTORY, ProjectDir, atomic_write_json, read_json, run_index_path
from bigrec_cli.protocol import PROTOCOL, HoldoutCases, holdout_cases, indexed_events, scorer_ranks
from bigrec_cli.recommend import sampled_recall
from bigrec_cli.scoring import Scorer

EVALUATIONS_DIR = "evaluations"


def sampled_classification(
    scorer: Scorer, cases: HoldoutCases, max_len: int, num_negatives: int, seed: int
) -> dict[str, float]:
    """AUC and log loss of the sigmoid: each held-out positive against `num_negatives` items the user never saw."""
    rng = np.random.default_rng(seed)
    labels, probabilities = [], []
    num_items = scorer.num_items
    size = batch_rows(num_items, 512)
    for start in range(0, len(cases.user_ids), size):
        histories = cases.histories[start : start + size]
        probs = scorer.probabilities(*cases.padded(start, start + size, max_len))
        for row, history in enumerate(histories):
            target = cases.targets[start + row] - 1
            forbidden = set((token_items(history) - 1).tolist()) | {int(target)}
            negatives = [
                column for column in rng.integers(0, num_items, size=num_negatives * 2) if column not in forbidden
            ]
            negatives = negatives[:num_negatives]
            labels.extend([1] + [0] * len(negatives))
            probabilities.extend([probs[row, target], *probs[row, negatives]])
    labels_array, probability_array = np.array(labels), np.array(probabilities)
    return {"auc": roc_auc(labels_array, probability_array), "log_loss": log_loss(labels_array, probability_array)}


EASE_L2_GRID = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 3000.0)
KNN_NEIGHBOURS_GRID = (10, 20, 50, 100, 200)


def baseline_ranks(
    events,
    cases: HoldoutCases,
    num_items: int,
    models: dict[str, object],
    history_splits: tuple[str, ...] = (SPLIT_TRAIN, SPLIT_VALID),
    exclude_history: bool = True,
) -> dict[str, np.ndarray]:
    """Fit each baseline on the events of `history_splits` and return its rank of every case's target."""
    history = events[events["split"].isin(history_splits)]
    users = sorted(set(history["user_id"]) | set(cases.user_ids))
    row_of = {user: row for row, user in enumerate(users)}
    user_rows, item_columns = history["user_id"].map(row_of).to_numpy(), history["index"].to_numpy() - 1
    matrix = interaction_matrix(user_rows, item_columns, len(users), num_items)
    counts = interaction_matrix(user_rows, item_columns, len(users), num_items, binary=False)
    case_rows = np.array([row_of[user] for user in cases.user_ids])
    reports = {}
    for name, baseline in models.items():
        baseline.fit(matrix)
        ranks, size = [], batch_rows(num_items, 1024)
        for start in range(0, len(case_rows), size):
            rows = case_rows[start : start + size]
            scores = baseline.score((counts if getattr(baseline, "uses_counts", False) else matrix)[rows])
            excluded = (
                [token_items(history_items) - 1 for history_items in cases.histories[start : start + size]]
                if exclude_history
                else None
            )
            ranks.append(ranks_of_targets(scores, cases.targets[start : start + size] - 1, excluded))
        reports[name] = np.concatenate(ranks) if ranks else np.zeros(0, dtype="int64")
    return reports


def choose_baselines(events, num_items: int, exclude_history: bool = True) -> dict[str, float]:
    """EASE's λ and ItemKNN's neighbours with the best validation NDCG@10 (fit on train, never on test)."""
    cases = holdout_cases(events, SPLIT_VALID)
    if not cases.user_ids:
        return {"ease_l2": 100.0, "knn_neighbours": 100}
    candidates = {f"ease:{l2}": EASE(l2) for l2 in EASE_L2_GRID}
    candidates |= {f"knn:{k}": ItemKNN(k) for k in KNN_NEIGHBOURS_GRID if k < num_items}
    ranks = baseline_ranks(
        events, cases, num_items, candidates, history_splits=(SPLIT_TRAIN,), exclude_history=exclude_history
    )
    scores = {name: ranking_report(values, (10,))["ndcg@10"] for name, values in ranks.items()}
    best_ease = max(EASE_L2_GRID, key=lambda l2: scores[f"ease:{l2}"])
    best_knn = max(
        (k for k in KNN_NEIGHBOURS_GRID if f"knn:{k}" in scores),
        key=lambda k: scores[f"knn:{k}"],
        default=min(100, num_items),
    )
    return {"ease_l2": best_ease, "knn_neighbours": best_knn}


def evaluate(
    project: ProjectDir,
    *,
    run_dir: Path | None = None,
    cutoffs: tuple[int, ...] = CUTOFFS,
    num_negatives: int = 100,
    seed: int = 0,
    ease_l2: float | None = None,
    knn_neighbours: int | None = None,
    baselines: bool = True,
    report_dir: Path | None = None,
) -> dict:
    """Evaluate a run (the promoted one by default) on the test split and save the report.

    Args:
        project: The project directory.
        run_dir: A run other than the promoted one.
        cutoffs: The K of HR@K, NDCG@K and MRR@K.
        num_negatives: Sampled negatives per positive for AUC and log loss.
        seed: Seed of that sampling.
        ease_l2: EASE's λ; None chooses it on the validation split.
        knn_neighbours: ItemKNN's neighbours; None chooses them on the validation split.
        baselines: Also compute Pop, ItemKNN and EASE.
        report_dir: Also write PNG plots and an HTML page there.

    Returns:
        `{"run_id", "num_users", "ndcg@10", …, "auc", "log_loss", "baselines": {"pop": {…}, …}, "protocol"}`.
    """
    started = time.perf_counter()
    project = project.pinned()
    run = load_run(run_dir or project.current_run_dir())
    scorer = run_scorer(run)
    max_len = run.config.max_len
    policy = event_policy(project)
    events = indexed_events(load_events(project), run.item_ids, run.event_types)
    exclude = policy.exclude_history
    cases = holdout_cases(events, SPLIT_TEST)
    if not cases.user_ids:
        raise DataError("the test split is empty", hint="users need at least 3 events to be held out")
    report: dict = {"run_id": run.run_id, "num_users": len(cases.user_ids), "num_items": scorer.num_items}
    ranks = {"bigrec": scorer_ranks(scorer, cases, max_len, exclude_history=exclude)}
    report.update(ranking_report(ranks["bigrec"], cutoffs))
    report.update(sampled_classification(scorer, cases, max_len, num_negatives, seed))
    index_path = run_index_path(run.directory)
    if index_path.exists():
        # Ranking above stays exact; this is how often the index's answers (what recommend and serve give) agree.
        index = ItemIndex.load(index_path)
        report["index"] = sampled_recall(scorer, index, cases, max_len, exclude, seed)
    report["protocol"] = {
        "split": PROTOCOL if exclude else PROTOCOL.replace("with the user's history excluded", "history items allowed"),
        "repeats": policy.repeats,
        "dedupe": policy.dedupe,
        "negative_events": list(policy.negative_events),
        "cutoffs": list(cutoffs),
        "auc_log_loss": f"each test positive vs {num_negatives} sampled unseen items (seed {seed})",
    }
    if baselines:
        chosen = (
            choose_baselines(events, scorer.num_items, exclude) if ease_l2 is None or knn_neighbours is None else {}
        )
        ease_l2 = ease_l2 if ease_l2 is not None else chosen["ease_l2"]
        knn_neighbours = knn_neighbours if knn_neighbours is not None else chosen["knn_neighbours"]
        models = make_baselines(ease_l2=ease_l2, knn_neighbours=knn_neighbours)
        if not exclude:
            models["personal_frequency"] = PersonalFrequency()
        ranks.update(baseline_ranks(events, cases, scorer.num_items, models, exclude_history=exclude))
        report["baselines"] = {
            name: ranking_report(values, cutoffs) for name, values in ranks.items() if name != "bigrec"
        }
        report["baseline_settings"] = {"ease_l2": ease_l2, "knn_neighbours": knn_neighbours}
        report["protocol"]["baselines"] = (
            f"fit on train + validation events; EASE lambda = {ease_l2:g}, ItemKNN cosine with {knn_neighbours} "
            "neighbours" + (" (chosen by validation NDCG@10, fit on train)" if chosen else "")
        )
    if report_dir is not None:
        from bigrec_cli.report import write_report

        report["report"] = str(write_report(report_dir, report, ranks, read_json(run.directory / RUN_HISTORY)))
    report["seconds"] = round(time.perf_counter() - started, 3)
    record = project.root / EVALUATIONS_DIR / f"{run.run_id}.json"
    try:
        atomic_write_json(record, report)
    except OSError as error:  # a read-only project can still be evaluated; only the record is not kept
        report["record_not_written"] = f"{record.name}: {error.strerror or error}"
    return report
