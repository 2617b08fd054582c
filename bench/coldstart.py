"""Cold-start items on MovieLens 100K (`make bench-coldstart`).

Protocol: the split of bench/quality.py (per user by time; last = test, second-to-last = validation). For each
seed s (0, 1 and 2; BENCH_SEEDS names others), 10% of the 1,682 items (numpy default_rng(s)) are removed from
training entirely: their events are hidden from the training sequences and from validation, so the model never
sees an interaction with them (they keep their MiniLM text vector).
Evaluated: the test events whose target is one of those items.
Each is ranked among all 1,682 items with the user's other history excluded (the cold items are removed from the
history as well); rank = number of items scored strictly higher. bigrec is the **default model** (MiniLM, seed s,
`bigrec train` with no options): the cold items have no learned ID vector, bias or item-to-item neighbours of their
own, and borrow those of their 10 nearest warm items by MiniLM text cosine, plus the cold boost that train chose on
the validation split (known items posing as new ones; the largest boost costing the other validation events at most
5% of their NDCG@10, the default --cold-boost-cost). The LSTM reads each history with its event types, as trained.
(BENCH_ID_DROPOUT and BENCH_NEGATIVE_SAMPLING select the older cold-start settings, e.g. 0.5 and popularity;
BENCH_COLD_BOOST_COST another --cold-boost-cost, written to coldstart-ml100k-cost-<value>.json.) It is
compared with the expected HR@10 / NDCG@10 of a uniformly random ranking over the same candidates and with EASE
fitted on the same training data (which has no signal for those items). Also reported: the median rank (0 = top) of
those targets, and bigrec's HR@10 / NDCG@10 on the other test events (targets that are not cold), ranked the same
way, which the default model must keep at 0.110 or more. Each seed's figures are kept; the summary gives the mean
and population standard deviation over seeds, and the hits counted over every seed's hidden-item events. Writes
bench/results/coldstart-ml100k.json.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from results_io import protocol, write_result

from bigrec_cli.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ml-100k"
WORK = ROOT / "bench" / ".work" / "coldstart"
RESULTS = ROOT / "bench" / "results" / "coldstart-ml100k.json"
if os.environ.get("BENCH_COLD_BOOST_COST"):  # another trade-off than the default: its own result file
    RESULTS = RESULTS.with_name(f"coldstart-ml100k-cost-{os.environ['BENCH_COLD_BOOST_COST']}.json")
COLD_SHARE = 0.10
SEEDS = tuple(int(seed) for seed in os.environ.get("BENCH_SEEDS", "0,1,2").split(","))
ID_DROPOUT = float(os.environ.get("BENCH_ID_DROPOUT", "0"))
NEGATIVE_SAMPLING = os.environ.get("BENCH_NEGATIVE_SAMPLING", "uniform")
COLD_BOOST_COST = float(os.environ.get("BENCH_COLD_BOOST_COST", TrainConfig.cold_boost_cost))


def main() -> None:
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark measures MovieLens 100K and stops here")
    from bigrec_cli import data as data_module
    from bigrec_cli.checkpoints import named_checkpoint
    from bigrec_cli.features import extract
    from bigrec_cli.project import ProjectDir

    project = ProjectDir(WORK)
    data_module.preprocess(project, movielens_source=DATA)
    extract(project, named_checkpoint("minilm"))
    per_seed = [one_seed(project, seed) for seed in SEEDS]
    for entry in per_seed:
        print(
            f"seed {entry['seed']}: hidden HR@10 {entry['bigrec']['hr@10']:.4f} "
            f"({entry['bigrec_over_random_hr@10']:.1f} x random), other events NDCG@10 "
            f"{entry['bigrec_warm_test_events']['ndcg@10']:.4f}",
            file=sys.stderr,
        )
    output = {
        "seeds": list(SEEDS),
        "summary": {
            "bigrec_over_random_hr@10": summary([entry["bigrec_over_random_hr@10"] for entry in per_seed]),
            "bigrec_over_random_ndcg@10": summary([entry["bigrec_over_random_ndcg@10"] for entry in per_seed]),
            "bigrec_hr@10": summary([entry["bigrec"]["hr@10"] for entry in per_seed]),
            "other_test_events_ndcg@10": summary([entry["bigrec_warm_test_events"]["ndcg@10"] for entry in per_seed]),
            "cold_test_events": sum(entry["num_cold_test_events"] for entry in per_seed),
            "cold_hits@10": sum(entry["cold_hits@10"] for entry in per_seed),
        },
        "per_seed": per_seed,
        "id_dropout": ID_DROPOUT,
        "negative_sampling": NEGATIVE_SAMPLING,
        "cold_boost_cost": COLD_BOOST_COST,
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }
    write_result(RESULTS, output)


def summary(values: list[float]) -> dict[str, float]:
    """Mean and population standard deviation over seeds."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def one_seed(project, seed: int) -> dict:
    """Hide a seeded 10% of the items, train the default model with that seed, and rank the hidden items' test
    events (and the others)."""
    from bigrec_cli import data as data_module
    from bigrec_cli.artifacts import load_run, run_scorer
    from bigrec_cli.baselines import EASE, interaction_matrix
    from bigrec_cli.data import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID
    from bigrec_cli.metrics import ranking_report, ranks_of_targets
    from bigrec_cli.protocol import indexed_events, left_pad
    from bigrec_cli.train import train

    items = data_module.load_items(project)["item_id"].tolist()
    rng = np.random.default_rng(seed)
    cold = set(rng.choice(items, size=int(round(COLD_SHARE * len(items))), replace=False).tolist())
    config = TrainConfig(
        seed=seed, id_dropout=ID_DROPOUT, negative_sampling=NEGATIVE_SAMPLING, cold_boost_cost=COLD_BOOST_COST
    )
    started = time.perf_counter()
    result = train(
        project,
        config,
        exclude_items=cold,
        promote=False,
        on_epoch=lambda e: print(
            f"seed {seed} epoch {e['epoch']}: val ndcg@10 {e['val_ndcg@10']:.4f}", file=sys.stderr
        ),
    )
    train_seconds = time.perf_counter() - started
    run = load_run(result.run_dir)
    scorer = run_scorer(run)
    events = indexed_events(data_module.load_events(project), run.item_ids, run.event_types)
    warm_events = events[~events["item_id"].isin(cold)]
    tests = events[(events["split"] == SPLIT_TEST) & events["item_id"].isin(cold)]
    seen = warm_events[warm_events["split"].isin((SPLIT_TRAIN, SPLIT_VALID))]
    # what the LSTM reads (item and event type) and which items are left out of the ranking
    tokens = {user: group.to_numpy() for user, group in seen.groupby("user_id")["token"]}
    histories = {user: group.to_numpy() for user, group in seen.groupby("user_id")["index"]}
    stamps = {user: group.to_numpy(dtype="float64") for user, group in seen.groupby("user_id")["timestamp"]}
    users = tests["user_id"].tolist()
    user_histories = [histories.get(user, np.zeros(0, "int64")) for user in users]
    targets = tests["index"].to_numpy() - 1
    excluded = [history - 1 for history in user_histories]
    user_tokens = [tokens.get(user, np.zeros(0, "int64")) for user in users]
    user_times = [stamps.get(user, np.zeros(0)) for user in users]
    logits = scorer.logits(left_pad(user_tokens, config.max_len), left_pad(user_times, config.max_len, "float64"))
    model_ranks = ranks_of_targets(logits, targets, excluded)
    model_report = ranking_report(model_ranks, (10,))

    warm_tests = events[(events["split"] == SPLIT_TEST) & ~events["item_id"].isin(cold)]
    warm_histories = [histories.get(user, np.zeros(0, "int64")) for user in warm_tests["user_id"]]
    warm_tokens = [tokens.get(user, np.zeros(0, "int64")) for user in warm_tests["user_id"]]
    warm_times = [stamps.get(user, np.zeros(0)) for user in warm_tests["user_id"]]
    warm_ranks = ranks_of_targets(
        scorer.logits(left_pad(warm_tokens, config.max_len), left_pad(warm_times, config.max_len, "float64")),
        warm_tests["index"].to_numpy() - 1,
        [h - 1 for h in warm_histories],
    )
    warm_report = ranking_report(warm_ranks, (10,))

    train_part = warm_events[warm_events["split"] == SPLIT_TRAIN]
    all_users = sorted(set(train_part["user_id"]) | set(users))
    row_of = {user: row for row, user in enumerate(all_users)}
    matrix = interaction_matrix(
        train_part["user_id"].map(row_of).to_numpy(),
        train_part["index"].to_numpy() - 1,
        len(all_users),
        scorer.num_items,
    )
    history_matrix = interaction_matrix(
        np.concatenate([[row] * len(h) for row, h in enumerate(user_histories)]).astype(int),
        np.concatenate(user_histories) - 1,
        len(users),
        scorer.num_items,
    )
    ease_scores = EASE(100.0).fit(matrix).score(history_matrix)
    ease_ranks = ranks_of_targets(ease_scores, targets, excluded)
    ease_report = ranking_report(ease_ranks, (10,))

    candidates = np.array([scorer.num_items - len(history) for history in user_histories], dtype="float64")
    random_hr = float(np.mean(np.minimum(10.0 / candidates, 1.0)))
    random_ndcg = float(np.mean([sum(1.0 / np.log2(rank + 2) for rank in range(10)) / n for n in candidates]))
    return {
        "seed": seed,
        "num_cold_items": len(cold),
        "num_cold_test_events": len(users),
        "cold_hits@10": int((model_ranks < 10).sum()),
        "bigrec": {
            "hr@10": model_report["hr@10"],
            "ndcg@10": model_report["ndcg@10"],
            "median_rank": float(np.median(model_ranks)),
        },
        "ease": {
            "hr@10": ease_report["hr@10"],
            "ndcg@10": ease_report["ndcg@10"],
            "median_rank": float(np.median(ease_ranks)),
        },
        "random": {"hr@10": random_hr, "ndcg@10": random_ndcg, "median_rank": float(np.median((candidates - 1) / 2))},
        "bigrec_over_random_hr@10": model_report["hr@10"] / random_hr,
        "bigrec_over_random_ndcg@10": model_report["ndcg@10"] / random_ndcg,
        "bigrec_warm_test_events": {
            "count": len(warm_tests),
            "hr@10": warm_report["hr@10"],
            "ndcg@10": warm_report["ndcg@10"],
        },
        "cold_boost": run.metrics.get("cold_boost"),
        "best_epoch": result.best_epoch,
        "train_wall_s": train_seconds,
    }


if __name__ == "__main__":
    main()
