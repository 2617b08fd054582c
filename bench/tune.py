"""`bigrec tune` within a budget, then the tuned configuration retrained with 3 seeds (`make bench-tune`).

Protocol: the dataset is converted, preprocessed and extracted exactly as bench/quality.py does (same split, same
MiniLM vectors), into a fresh project of its own (no earlier study, no bigrec.toml). `bigrec tune --budget 30m
--seed 0` (TUNE_BUDGET) searches on the validation split only: Optuna TPE, median pruning on each epoch's
validation NDCG@10, the first trial being the default configuration; on data with more than 100,000 training
events each trial's LSTM trains on a seeded share of the users holding about 100,000 (tune's screening), while
validation and the item-to-item term see every user. Tune writes the best configuration into the
project's bigrec.toml; `bigrec train --seed S` (which reads it) and `bigrec evaluate --json` then run for seeds 0,
1, 2 (BENCH_SEEDS), and the test NDCG@10 is reported as mean ± population standard deviation beside EASE (λ chosen
on validation, refit on train + validation), against the bar of 1.25 × EASE. Datasets: ml-100k and online-retail
by default, or those named on the command line. Writes bench/results/tune-<dataset>.json. Reads ../shared/data;
when it is absent, says so and stops.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from quality import DATA, RESULTS, SEEDS, WORK, bigrec, dataset_fields, prepare, train_seeds
from results_io import protocol, write_result

BUDGET = os.environ.get("TUNE_BUDGET", "30m")
DATASETS = ("ml-100k", "online-retail")
BAR = 1.25


def run_dataset(name: str) -> dict:
    project = WORK / "tune" / name
    shutil.rmtree(project, ignore_errors=True)
    data, meta, options = prepare(name, project)
    started = time.perf_counter()
    tuned = json.loads(bigrec(project, "tune", "--budget", BUDGET, "--seed", "0", "--json"))
    tune_seconds = time.perf_counter() - started
    print(f"{name}: tune ran {len(tuned['trials'])} trials in {tune_seconds:.0f} s, best {tuned['best']}", flush=True)
    trained = train_seeds(name, project)
    models = trained["models"]
    ratio = models["bigrec"]["ndcg@10"]["mean"] / models["ease"]["ndcg@10"]["mean"]
    return {
        **dataset_fields(name, meta, data, options),
        "budget": BUDGET,
        "tune_wall_s": tune_seconds,
        "trials": tuned["trials"],
        "tuned": tuned["best"],
        "train_share": tuned.get("train_share", 1.0),
        "best_val_ndcg@10": tuned["best_value"],
        "seeds": list(SEEDS),
        "models": models,
        "baseline_settings": trained["settings"],
        "ratio_to_ease": ratio,
        "bar": BAR,
        "bar_met": ratio >= BAR,
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }


def main(names: list[str]) -> None:
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent: this benchmark measures the shared datasets and stops here")
    for name in names or DATASETS:
        result = run_dataset(name)
        write_result(RESULTS / f"tune-{name}.json", result, echo=False)
        bigrec_ndcg, ease = result["models"]["bigrec"]["ndcg@10"], result["models"]["ease"]["ndcg@10"]["mean"]
        print(
            f"{name}: tuned bigrec test NDCG@10 {bigrec_ndcg['mean']:.4f} ± {bigrec_ndcg['std']:.4f}, EASE {ease:.4f}, "
            f"{result['ratio_to_ease']:.2f} × EASE (bar {BAR} ×: {'met' if result['bar_met'] else 'not met'}), "
            f"{len(result['trials'])} trials in {result['tune_wall_s']:.0f} s (budget {BUDGET})",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
