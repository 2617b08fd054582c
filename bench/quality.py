"""Recommendation quality on MovieLens 100K (`make bench-quality`).

Protocol: all 100,000 ratings of ../shared/data/ml-100k as implicit interactions; per user by time, last event =
test, second-to-last = validation, rest = train; full ranking over all 1,682 items with the user's history
excluded; rank = number of items scored strictly higher. Items are encoded with all-MiniLM-L6-v2 (mean pooling).
bigrec's default model (MiniLM vectors + learned ID vectors → LSTM(128) → Dense(1) → sigmoid, sampled-negative
BCE) is trained with its default hyper-parameters for seeds 0, 1, 2 (at most 30 epochs; validation NDCG@10 of the
moving average of the weights, decay 0.99, after each epoch; early stopping with patience 5) and evaluated once
on test. Pop, ItemKNN and EASE (λ = 100) are computed by
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

from results_io import protocol, write_result

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ml-100k"
WORK = ROOT / "bench" / ".work" / "quality"
RESULTS = ROOT / "bench" / "results" / "quality-ml100k.json"
SEEDS = tuple(int(seed) for seed in os.environ.get("BENCH_SEEDS", "0,1,2").split(","))
METRICS = ("ndcg@10", "hr@10", "mrr@10")


def bigrec(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "bigrec_cli", *args, "--project-dir", str(WORK)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout


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
        print(
            f"seed {seed}: test ndcg@10 {report['ndcg@10']:.4f} (ease {report['baselines']['ease']['ndcg@10']:.4f}),"
            f" train {seconds[-1]:.0f} s",
            file=sys.stderr,
        )
    models = {"bigrec": {metric: summary([report[metric] for report in reports]) for metric in METRICS}}
    models["bigrec"]["train_wall_s"] = summary(seconds)
    models["bigrec"]["best_epoch"] = [report["best_epoch"] for report in reports]
    for name in ("pop", "itemknn", "ease"):
        models[name] = {
            metric: summary([report["baselines"][name][metric] for report in reports]) for metric in METRICS
        }
    result = {
        "dataset": "MovieLens 100K (943 users, 1,682 items, 100,000 interactions)",
        "seeds": list(SEEDS),
        "models": models,
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }
    write_result(RESULTS, result, echo=False)
    update_readme(result)
    print(results_table(result))


NAMES = {
    "bigrec": "bigrec (MiniLM → LSTM → sigmoid)",
    "ease": "EASE (λ = 100)",
    "itemknn": "ItemKNN",
    "pop": "Pop",
}
README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- quality-table: written by bench/quality.py -->", "<!-- /quality-table -->"


def results_table(result: dict) -> str:
    """The README's results table, from quality-ml100k.json."""
    models = result["models"]
    seconds = models["bigrec"]["train_wall_s"]
    lines = [
        f"Seeds {', '.join(map(str, result['seeds']))}; mean ± standard deviation over seeds; bigrec trained in "
        f"{seconds['mean']:.0f} ± {seconds['std']:.0f} s per seed on {result['cpu_count']} cores "
        f"(best epochs {', '.join(map(str, models['bigrec']['best_epoch']))}).",
        "",
        "| model | NDCG@10 | HR@10 | MRR@10 |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("bigrec", "ease", "itemknn", "pop"):
        cells = [f"{models[name][m]['mean']:.4f} ± {models[name][m]['std']:.4f}" for m in METRICS]
        lines.append(f"| {NAMES[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(result: dict) -> None:
    """Replace the table between the README's markers with one generated from the result."""
    text = README.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    README.write_text(text[:start] + "\n" + results_table(result) + "\n" + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:  # rewrite the README table from the stored result, without re-running
        update_readme(json.loads(RESULTS.read_text()))
    else:
        main()
