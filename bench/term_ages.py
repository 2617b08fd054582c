"""The item-to-item term alone, its ages counted in steps or in distinct times (`make bench-term-ages`).

Protocol: each dataset is converted by bench/datasets.py and preprocessed by `bigrec preprocess` exactly as
bench/quality.py does (same split; no BERT, no LSTM: this measures the term alone, so nothing is trained). For each
EASE fit of `itemitem.EASE_GRID` (plain EASE and EDLAE, fitted on the training split, each item's
`itemitem.NEIGHBOURS` strongest neighbours kept) and each decay of the step grid (`DECAY_GRID`) and of the time grid
(`TIME_DECAY_GRID`), the term `Σ_{i in history} d^age(i) S[i, ·]` of bigrec's own `ItemItem` ranks the whole catalog
for every validation case (history excluded, rank = items scored strictly higher than the target), over the last 100
steps (the default max_len). Ages in steps: how many steps ago the user last had the item; ages in time: how many
distinct time stamps ago (the steps at one time stamp, a basket, share an age). Reported: validation NDCG@10 of the
best (fit, decay) of each unit; the test split is never read. Datasets: ml-100k, online-retail, online-retail-25 by
default, or those named on the command line. Writes bench/results/term-ages.json. Reads ../shared/data; when it is
absent, says so and stops.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from quality import DATA, RESULTS, WORK, bigrec, converted
from results_io import protocol, write_result

DATASETS = ("ml-100k", "online-retail", "online-retail-25")
MAX_LEN = 100


def run_dataset(name: str) -> dict:
    from bigrec_cli.baselines import EASE
    from bigrec_cli.data import SPLIT_TRAIN, SPLIT_VALID, load_events, load_items
    from bigrec_cli.itemitem import (
        DECAY_GRID,
        EASE_GRID,
        NEIGHBOURS,
        TIME_DECAY_GRID,
        ItemItem,
        ease_method,
        history_matrix,
        top_neighbours,
    )
    from bigrec_cli.metrics import ranking_report, ranks_of_targets
    from bigrec_cli.project import ProjectDir
    from bigrec_cli.protocol import holdout_cases, indexed_events, user_sequences

    folder, options = converted(name)
    project = WORK / "term-ages" / name
    if not (project / "data").exists():
        events, items = str(folder / "events.csv"), str(folder / "items.csv")
        bigrec(project, "preprocess", "--events", events, "--items", items, *options)
    started = time.perf_counter()
    item_ids = load_items(ProjectDir(project))["item_id"].tolist()
    events = indexed_events(load_events(ProjectDir(project)), item_ids)
    cases = holdout_cases(events, SPLIT_VALID)
    train = history_matrix(user_sequences(events, (SPLIT_TRAIN,)), len(item_ids))
    sequences, times = cases.padded(0, len(cases.user_ids), MAX_LEN)
    excluded = [history - 1 for history in cases.histories]
    tried = []
    for l2, dropout in EASE_GRID:
        matrix = top_neighbours(EASE(l2, dropout).fit(train).weights_, NEIGHBOURS)
        for unit, grid in (("step", DECAY_GRID), ("time", TIME_DECAY_GRID)):
            for decay in grid:
                term = ItemItem(matrix, 1.0, ease_method(l2, dropout), decay, age_unit=unit)
                ranks = [
                    ranks_of_targets(
                        term.scores(sequences[start : start + 1024], times[start : start + 1024]),
                        cases.targets[start : start + 1024] - 1,
                        excluded[start : start + 1024],
                    )
                    for start in range(0, len(cases.user_ids), 1024)
                ]
                ndcg = ranking_report(np.concatenate(ranks), (10,))["ndcg@10"]
                tried.append({"method": term.method, "age_unit": unit, "decay": decay, "val_ndcg@10": ndcg})
    best = {
        unit: max((row for row in tried if row["age_unit"] == unit), key=lambda row: row["val_ndcg@10"])
        for unit in ("step", "time")
    }
    return {
        "dataset": name,
        "validation_cases": len(cases.user_ids),
        "items": len(item_ids),
        "best": best,
        "time_over_step": best["time"]["val_ndcg@10"] / best["step"]["val_ndcg@10"],
        "tried": tried,
        "seconds": time.perf_counter() - started,
    }


def main(names: list[str]) -> None:
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent: this benchmark measures the shared datasets and stops here")
    results = {}
    for name in names or DATASETS:
        results[name] = run_dataset(name)
        best = results[name]["best"]
        print(
            f"{name}: the term alone, validation NDCG@10, ages in steps {best['step']['val_ndcg@10']:.4f} "
            f"({best['step']['method']}, d {best['step']['decay']}), in time {best['time']['val_ndcg@10']:.4f} "
            f"({best['time']['method']}, d {best['time']['decay']}): {results[name]['time_over_step']:.3f} ×",
            flush=True,
        )
    write_result(RESULTS / "term-ages.json", {"datasets": results, "protocol": protocol(__doc__)}, echo=False)


if __name__ == "__main__":
    main(sys.argv[1:])
