"""Synthetic data at scale, and how `preprocess` (and optionally `extract` and one training epoch) cope with it.

Usage: `python bench/scale.py [--events 10_000_000] [--stages preprocess,extract,extract-2,train,train-2] [--out DIR]`
(`make bench-scale` runs SCALE_EVENTS, 10M by default, through SCALE_STAGES, preprocess by default). `extract-2` and
`train-2` run the same command with `--workers 2` (a local Ray started for the run).

Protocol: a generator writes `events/part-XXXX.parquet` (1M rows each, written one part at a time so its own
memory stays bounded) and `items.csv`. Users and items are drawn with Zipf-like skew (rank^-1.1), one user and one
item per 100 events (at least 1,000 of each), timestamps rise over a year with
uniform jitter, event types are 80% view, 15% cart, 5% purchase, and each item's text is 8 words from a
1,000-word vocabulary plus its category. numpy default_rng(seed 0) throughout. Each stage runs as its own
`bigrec` process (the generic CLI, as a user would run it) and is timed by wall clock; its peak resident memory
comes from the kernel's accounting of that process alone (`ru_maxrss` of RUSAGE_CHILDREN in a fresh wrapper).
That covers the processes the command waited for; Ray's workers and actors are not among them, so every stage also
samples, every 0.5 s (psutil), the resident memory of each process the command started, at any depth (a process
that detaches from its parent would be missed; Ray's local workers stay below it): the largest
single process seen (`largest_process_rss_gib`, Ray's workers included) and the largest sum over all of them at
one moment (`process_tree_rss_gib`; a sum of RSS counts memory the processes share, such as Ray's object store,
once per process, so it overstates). After preprocess, the result also records the shard count and the size of
the written events; after extract, the items encoded per second (the vector cache is removed first, so every
item is encoded); after train, the one epoch's seconds of training steps and of validation scoring (the run's
history.json) and the training events per second (train split events / seconds of steps). The stage's stderr is
passed through and read: each epoch line and each line train writes as a step after the epochs starts (choosing
the item-to-item term, the cold boost, …) opens a phase that lasts until the next such line, and `phases` lists
each with the second it started and the largest single-process RSS sampled in it (None: shorter than one sample),
which shows where the peak was reached. "start" covers loading and the first epoch; an epoch's line (written when
it ends) opens the next epoch, or the steps after the last. A stage's entry
replaces the one of the same name in the results file; the others stay.
Absolute times on 2 shared cores are noisy: run it more than once before comparing. Writes
bench/results/scale-<events>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_io import commit, protocol, write_result

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "scale"
RESULTS = ROOT / "bench" / "results"
PART_ROWS = 1_000_000
TYPES = np.array(["view", "cart", "purchase"])
TYPE_SHARES = np.array([0.80, 0.15, 0.05])
SAMPLE_SECONDS = 0.5  # how often the RSS of every process of a stage is read
# stderr lines that open a phase: `epoch N: …`, and train's steps after the epochs, which end in "(N s)"
PHASE = re.compile(r"^(epoch \d+:.*|.*\(\d+ s\))$")


def zipf_draw(rng: np.random.Generator, size: int, population: int, exponent: float = 1.1) -> np.ndarray:
    """Ranks 0…population-1 drawn ∝ (rank + 1)^-exponent (a Zipf law truncated at the population)."""
    weights = np.arange(1, population + 1, dtype="float64") ** -exponent
    cumulative = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cumulative, rng.random(size), side="right"), population - 1)


def generate(folder: Path, num_events: int, seed: int = 0) -> dict:
    """Write the synthetic events (Parquet parts) and items (CSV) into `folder`; return their counts."""
    rng = np.random.default_rng(seed)
    num_users = max(1_000, num_events // 100)
    num_items = max(1_000, num_events // 100)
    events_dir = folder / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    user_ids = rng.permutation(num_users)  # the most active user is not user 0
    item_ids = rng.permutation(num_items)
    start, year = 1_700_000_000.0, 365 * 86_400.0
    for part, first in enumerate(range(0, num_events, PART_ROWS)):
        size = min(PART_ROWS, num_events - first)
        times = start + year * (first + np.arange(size)) / num_events + rng.uniform(0, 3_600, size)
        frame = pd.DataFrame(
            {
                "user_id": np.char.add("u", user_ids[zipf_draw(rng, size, num_users)].astype(str)),
                "item_id": np.char.add("i", item_ids[zipf_draw(rng, size, num_items)].astype(str)),
                "timestamp": times.round(0).astype("int64"),
                "event": TYPES[np.searchsorted(np.cumsum(TYPE_SHARES), rng.random(size), side="right").clip(0, 2)],
            }
        )
        frame.to_parquet(events_dir / f"part-{part:04d}.parquet", index=False)
    vocabulary = np.array([f"w{index}" for index in range(1_000)])
    words = vocabulary[rng.integers(0, len(vocabulary), size=(num_items, 8))]
    categories = rng.integers(0, 50, size=num_items)
    pd.DataFrame(
        {
            "item_id": [f"i{index}" for index in range(num_items)],
            "title": [" ".join(row) for row in words],
            "category": [f"category {category}" for category in categories],
        }
    ).to_csv(folder / "items.csv", index=False)
    return {"events": num_events, "users": num_users, "items": num_items}


# Runs one command and prints the peak RSS (KiB) of that command alone: RUSAGE_CHILDREN of a fresh process.
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def stage(name: str, args: list[str], project: Path) -> dict:
    """Run one `bigrec` stage as its own process; its wall time, its peak RSS, and the sampled RSS of every process
    it started (Ray's workers and actors included)."""
    import psutil

    env = {**os.environ, "BIGREC_PROJECT_DIR": str(project)}
    peak_file = project.parent / f".peak-{name}"
    started = time.perf_counter()
    command = [sys.executable, "-m", "bigrec_cli", *args]
    wrapper = subprocess.Popen(
        [sys.executable, "-c", MEASURE, str(peak_file), *command],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    marks: list[tuple[float, str]] = [(0.0, "start")]

    def pass_through() -> None:
        for line in wrapper.stderr:
            sys.stderr.write(line)
            if PHASE.match(line.strip()):
                marks.append((time.perf_counter() - started, line.strip()))

    reader = threading.Thread(target=pass_through, daemon=True)
    reader.start()
    tree, largest, processes, samples = 0, 0, set(), []
    root = psutil.Process(wrapper.pid)
    try:
        while wrapper.poll() is None:
            total = now_largest = 0
            with contextlib.suppress(psutil.Error):
                for process in root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss = process.memory_info().rss
                        total += rss
                        now_largest = max(now_largest, rss)
                        processes.add(process.pid)
            tree, largest = max(tree, total), max(largest, now_largest)
            samples.append((time.perf_counter() - started, now_largest))
            time.sleep(SAMPLE_SECONDS)
    finally:
        if wrapper.poll() is None:  # interrupted: the stage does not outlive the benchmark
            wrapper.kill()
            wrapper.wait()
    reader.join(timeout=10)
    if wrapper.returncode:
        raise subprocess.CalledProcessError(wrapper.returncode, command)
    seconds = time.perf_counter() - started
    peak_kib = int(peak_file.read_text())  # KiB on Linux
    return {
        "stage": name,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "largest_process_rss_gib": round(largest / 2**30, 3),
        "process_tree_rss_gib": round(tree / 2**30, 3),
        "processes": len(processes),
        "phases": phase_peaks(marks, samples),
    }


def gib(size: int | None) -> float | None:
    return None if size is None else round(size / 2**30, 3)


def phase_peaks(marks: list[tuple[float, str]], samples: list[tuple[float, int]]) -> list[dict]:
    """Each phase (the second its line came, its text) with the largest single-process RSS sampled before the next
    phase's line."""
    bounds = [at for at, _ in marks[1:]] + [float("inf")]
    return [
        {
            "phase": text,
            "at_s": round(at, 1),
            "largest_process_rss_gib": gib(max((rss for when, rss in samples if at <= when < end), default=None)),
        }
        for (at, text), end in zip(marks, bounds)
    ]


def written(project: Path) -> dict:
    """The shard count and the size of the preprocessed events of the project's current data version."""
    version = project / "data" / (project / "data" / "CURRENT").read_text().strip()
    meta = json.loads((version / "data.json").read_text())
    size = sum(path.stat().st_size for path in (version / "events").glob("*.parquet"))
    return {"num_shards": meta["num_shards"], "events_mb": round(size / 1e6, 1), "num_events_out": meta["num_events"]}


def epoch_figures(project: Path) -> dict:
    """The promoted run's one epoch: seconds of training steps, of validation scoring, and events per second."""
    run = project / "runs" / (project / "current").read_text().strip()
    epoch = json.loads((run / "history.json").read_text())[0]
    manifest = json.loads((run / "manifest.json").read_text())
    events = json.loads(
        (project / "data" / (project / "data" / "CURRENT").read_text().strip() / "data.json").read_text()
    )
    train_events = events["num_train"]
    return {
        "workers": manifest.get("workers", 1),
        "epoch_train_seconds": epoch["train_seconds"],
        "epoch_validation_seconds": epoch["validation_seconds"],
        "train_events_per_second": round(train_events / epoch["train_seconds"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=lambda text: int(text.replace("_", "")), default=10_000_000)
    parser.add_argument("--stages", default="preprocess")
    parser.add_argument("--out", type=Path, default=WORK)
    options = parser.parse_args()
    folder = options.out / f"data-{options.events}"
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        started = time.perf_counter()
        meta = generate(folder, options.events)
        meta["generate_seconds"] = round(time.perf_counter() - started, 1)
        meta_path.write_text(json.dumps(meta))
    meta = json.loads(meta_path.read_text())
    project = options.out / f"project-{options.events}"
    commands = {
        "preprocess": ["preprocess", "--events", str(folder / "events"), "--items", str(folder / "items.csv")],
        "extract": ["extract", "--bert", "minilm"],
        "extract-2": ["extract", "--bert", "minilm", "--workers", "2"],
        "train": ["train", "--epochs", "1"],
        "train-2": ["train", "--epochs", "1", "--workers", "2"],
    }
    stages = options.stages.split(",")
    results = []
    for name in stages:
        if name.startswith("extract"):
            shutil.rmtree(project / "features", ignore_errors=True)  # encode every item again, not from the cache
        result = {**stage(name, commands[name], project), "commit": commit()}
        if name == "preprocess":
            result.update(written(project))
        elif name.startswith("extract"):
            result["items_per_second"] = round(meta["items"] / result["seconds"], 1)
        elif name.startswith("train"):
            result.update(epoch_figures(project))
        results.append(result)
    for result in results:
        extra = {key: value for key, value in result.items() if key not in ("stage", "seconds", "peak_rss_gib")}
        print(
            f"{options.events:,} events, {result['stage']}: {result['seconds']} s, {result['peak_rss_gib']} GiB"
            + (f", {extra}" if extra else "")
        )
    path = RESULTS / f"scale-{options.events}.json"
    previous = json.loads(path.read_text()) if path.exists() else {"stages": []}
    kept = [{"commit": previous.get("commit"), **entry} for entry in previous["stages"]]  # each stage names its commit
    merged = [entry for entry in kept if entry["stage"] not in stages] + results
    write_result(path, {"data": meta, "stages": merged, "cpu_count": os.cpu_count(), "protocol": protocol(__doc__)})


if __name__ == "__main__":
    main()
