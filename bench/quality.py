"""Recommendation quality on MovieLens 100K (`make bench-quality`).

Protocol: all 100,000 ratings of ../shared/data/ml-100k as implicit interactions; per user by time, last event =
test, second-to-last = validation, rest = train; full ranking over all 1,682 items with the user's history
excluded; rank = number of items scored strictly higher. Items are encoded with all-MiniLM-L6-v2 (mean pooling).
bigrec's default model (MiniLM vectors + learned ID vectors → LSTM(128) → Dense(1) → sigmoid, sampled-negative
BCE) is trained with its default hyper-parameters for seeds 0, 1, 2 (at most 30 epochs, early stopping on
validation NDCG@10 with patience 5) and evaluated once on test. Pop, ItemKNN and EASE (λ = 100) are computed by
`bigrec evaluate` on the same split (they are deterministic: std 0). Writes bench/results/quality-ml100k.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ml-100k"
WORK = ROOT / "bench" / ".work" / "quality"
RESULTS = ROOT / "bench" / "results" / "quality-ml100k.json"
SEEDS = tuple(int(seed) for seed in os.environ.get("BENCH_SEEDS", "0,1,2").split(","))
METRICS = ("ndcg@10", "hr@10", "mrr@10")


def bigrec(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "bigrec_cli", *args, "--project-dir", str(WORK)], cwd=ROOT, check=True,
                          stdout=subprocess.PIPE, text=True).stdout  # fmt: skip


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark measures MovieLens 100K and stops here")
    bigrec("preprocess", "--format", "movielens-100k", "--source", str(DATA))
    bigrec("extract", "--bert", "minilm")
    reports, seconds = [], []
    for seed in SEEDS:
        started = time.perf_counter()
        trained = json.loads(bigrec("train", "--seed", str(seed), "--json"))
        seconds.append(time.perf_counter() - started)
        report = json.loads(bigrec("evaluate", "--json"))
        report["best_epoch"] = trained["best_epoch"]
        reports.append(report)
        print(f"seed {seed}: test ndcg@10 {report['ndcg@10']:.4f} (ease {report['baselines']['ease']['ndcg@10']:.4f}),"
              f" train {seconds[-1]:.0f} s", file=sys.stderr)  # fmt: skip
    models = {"bigrec": {metric: summary([report[metric] for report in reports]) for metric in METRICS}}
    models["bigrec"]["train_wall_s"] = summary(seconds)
    models["bigrec"]["best_epoch"] = [report["best_epoch"] for report in reports]
    for name in ("pop", "itemknn", "ease"):
        models[name] = {metric: summary([report["baselines"][name][metric] for report in reports]) for metric in METRICS}
    result = {"dataset": "MovieLens 100K (943 users, 1,682 items, 100,000 interactions)", "seeds": list(SEEDS),
              "models": models, "cpu_count": os.cpu_count(), "protocol": __doc__.strip().split("\n", 2)[2]}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| model | NDCG@10 | HR@10 | MRR@10 |\n|---|---|---|---|")
    for name, values in models.items():
        cells = [f"{values[m]['mean']:.4f} ± {values[m]['std']:.4f}" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
