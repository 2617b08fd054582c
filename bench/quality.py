"""Recommendation quality on every dataset of the suite (`make bench-quality`).

Protocol: each dataset is converted by bench/datasets.py into the generic events/items CSV files and fed to bigrec
exactly as a user would: `bigrec preprocess --events --items`, `bigrec extract --bert minilm`, `bigrec train` with
its default settings (no options but the seed), `bigrec evaluate --json`. Per user by time (ties in time ordered by
a hash of user, item and time, never by row order): last event = test, second-to-last = validation, rest = train;
full ranking over the whole catalog with the user's history excluded; rank = number of items scored strictly
higher than the target. Pop, ItemKNN and EASE are ranked by `bigrec evaluate` on the same split, EASE's λ and
ItemKNN's neighbours chosen by validation NDCG@10 (fit on train, then refit on train + validation for test).
Seeds 0, 1, 2 (BENCH_SEEDS); mean ± population standard deviation over seeds. Suite: ml-100k (all 100,000
MovieLens ratings as implicit events), online-retail (UCI Online Retail, novel-item protocol of its SOURCE.md),
their 25% user subsamples (ml-100k-25, online-retail-25), and online-retail-repeat (the repeat-aware protocol:
every purchase line kept, one per customer, item and invoice, quantity as weight, cancellations as `cancel`
events; preprocessed with `--repeats allow`, so history items are ranked too, and the personal-frequency baseline
joins). Also available, not in the default suite: ml-100k-min-rating-4 (`--min-rating 4`: ratings below 4 are
negative behaviour; the test events are the users' last positive ones). Writes bench/results/quality-<dataset>.json
and the README table of each dataset. Reads ../shared/data; when it is absent, says so and stops.
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
DATA = Path(os.environ.get("BIGREC_DATA_DIR") or ROOT.parent / "shared" / "data")
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"
SUITE = ("ml-100k", "online-retail", "ml-100k-25", "online-retail-25", "online-retail-repeat")
# What a user of each dataset passes to `bigrec preprocess` (and which converted data it reads, when not its own).
PREPROCESS = {
    "online-retail-repeat": ("online-retail-repeat", ["--repeats", "allow"]),  # consumables: repeats allowed
    "ml-100k-min-rating-4": ("ml-100k", ["--min-rating", "4"]),  # ratings below 4 are negative behaviour
}
SEEDS = tuple(int(seed) for seed in os.environ.get("BENCH_SEEDS", "0,1,2").split(","))
METRICS = ("ndcg@10", "hr@10", "mrr@10")
MODELS = ("bigrec", "ease", "itemknn", "pop", "personal_frequency")
README = ROOT / "README.md"


def bigrec(project: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "bigrec_cli", *args, "--project-dir", str(project)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def converted(name: str) -> tuple[Path, list[str]]:
    """The dataset's generic events/items CSV files (converted by bench/datasets.py once) and the options a user of
    it passes to `bigrec preprocess`."""
    source, options = PREPROCESS.get(name, (name, []))
    folder = WORK / "datasets" / source
    if not (folder / "events.csv").exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "datasets.py"), source], cwd=ROOT, check=True)
    return folder, options


def prepare(name: str, project: Path) -> tuple[dict, dict, list[str]]:
    """Convert the dataset (once), then `preprocess` and `extract` it into the project: (preprocess report, meta,
    preprocess options)."""
    folder, options = converted(name)
    meta = json.loads((folder / "meta.json").read_text())
    events, items = str(folder / "events.csv"), str(folder / "items.csv")
    data = json.loads(bigrec(project, "preprocess", "--events", events, "--items", items, "--json", *options))
    bigrec(project, "extract", "--bert", "minilm")
    return data, meta, options


def train_seeds(name: str, project: Path) -> dict:
    """Train (options from the project's bigrec.toml, if any) and evaluate once per seed: every model's summary."""
    reports, seconds = [], []
    for seed in SEEDS:
        started = time.perf_counter()
        trained = json.loads(bigrec(project, "train", "--seed", str(seed), "--json"))
        seconds.append(time.perf_counter() - started)
        report = json.loads(bigrec(project, "evaluate", "--json"))
        report["best_epoch"], report["epochs_run"] = trained["best_epoch"], trained["epochs_run"]
        reports.append(report)
        print(
            f"{name} seed {seed}: test ndcg@10 {report['ndcg@10']:.4f} "
            f"(ease {report['baselines']['ease']['ndcg@10']:.4f}), val {trained['val_ndcg@10']:.4f}, "
            f"best epoch {trained['best_epoch']}, train {seconds[-1]:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    models = {"bigrec": {metric: summary([report[metric] for report in reports]) for metric in METRICS}}
    models["bigrec"]["train_wall_s"] = summary(seconds)
    models["bigrec"]["best_epoch"] = [report["best_epoch"] for report in reports]
    models["bigrec"]["epochs_run"] = [report["epochs_run"] for report in reports]
    for baseline in [name for name in MODELS[1:] if name in reports[0]["baselines"]]:
        models[baseline] = {
            metric: summary([report["baselines"][baseline][metric] for report in reports]) for metric in METRICS
        }
    return {
        "models": models,
        "repeats": reports[0]["protocol"]["repeats"],
        "settings": reports[0].get("baseline_settings"),
    }


def dataset_fields(name: str, meta: dict, data: dict, options: list[str]) -> dict:
    """What every result says of its dataset: its size, the preprocess options and the split."""
    return {
        "dataset": name,
        "data": {key: meta[key] for key in ("events", "users", "items") if key in meta},
        "preprocess_options": options,
        "split": {key: data[key] for key in ("num_train", "num_valid", "num_test")},
    }


def run_dataset(name: str) -> dict:
    project = WORK / "quality" / name
    data, meta, options = prepare(name, project)
    trained = train_seeds(name, project)
    models = trained["models"]
    return {
        **dataset_fields(name, meta, data, options),
        "repeats": trained["repeats"],
        "seeds": list(SEEDS),
        "models": models,
        "baseline_settings": trained["settings"],
        "ratio_to_ease": models["bigrec"]["ndcg@10"]["mean"] / models["ease"]["ndcg@10"]["mean"],
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }


def results_table(result: dict) -> str:
    """The README's results table of one dataset, from its quality-<dataset>.json."""
    models, data = result["models"], result.get("data", {})
    seconds = models["bigrec"]["train_wall_s"]
    settings = result.get("baseline_settings") or {}
    lines = [
        f"**{result['dataset']}** ({data.get('users', 0):,} users, {data.get('items', 0):,} items, "
        f"{data.get('events', 0):,} events). Seeds {', '.join(map(str, result['seeds']))}; mean ± standard "
        f"deviation over seeds; bigrec trained in {seconds['mean']:.0f} ± {seconds['std']:.0f} s per seed on "
        f"{result['cpu_count']} cores (best epochs {', '.join(map(str, models['bigrec']['best_epoch']))}); "
        f"NDCG@10 {result['ratio_to_ease']:.2f} × EASE.",
        "",
        "| model | NDCG@10 | HR@10 | MRR@10 |",
        "| --- | --- | --- | --- |",
    ]
    names = {
        "bigrec": "bigrec (MiniLM → LSTM → sigmoid, defaults)",
        "ease": f"EASE (λ = {settings.get('ease_l2', 100):g})",
        "itemknn": f"ItemKNN ({settings.get('knn_neighbours', 100)} neighbours)",
        "pop": "Pop",
        "personal_frequency": "Personal frequency (the user's own most bought items)",
    }
    for name in [name for name in MODELS if name in models]:
        cells = [f"{models[name][m]['mean']:.4f} ± {models[name][m]['std']:.4f}" for m in METRICS]
        lines.append(f"| {names[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(result: dict) -> None:
    """Replace the dataset's table between its README markers (added before the first table if missing)."""
    start_mark = f"<!-- quality-table {result['dataset']}: written by bench/quality.py -->"
    end_mark = f"<!-- /quality-table {result['dataset']} -->"
    text = README.read_text()
    if start_mark not in text:
        anchor = text.index("<!-- quality-tables")
        text = text[:anchor] + f"{start_mark}\n{end_mark}\n\n" + text[anchor:]
    start, end = text.index(start_mark) + len(start_mark), text.index(end_mark)
    README.write_text(text[:start] + "\n" + results_table(result) + "\n" + text[end:])


def main(names: list[str]) -> None:
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent: this benchmark measures the shared datasets and stops here")
    for name in names or SUITE:
        result = run_dataset(name)
        write_result(RESULTS / f"quality-{name}.json", result, echo=False)
        update_readme(result)
        print(results_table(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--readme"]:  # rewrite the README tables from the stored results, without re-running
        for path in sorted(RESULTS.glob("quality-*.json")):
            update_readme(json.loads(path.read_text()))
    else:
        main(sys.argv[1:])
