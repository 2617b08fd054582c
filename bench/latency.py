"""Latency benchmark of real-time serving (`make bench-latency`).

Protocol: a synthetic catalog of 10,000 items with random unit text vectors (384-d) and 5,000 users with 20–60
events each; the model is trained for one epoch (timing only, quality is irrelevant here). Then, on this machine:
- serve: `bigrec serve` (1 worker) on 127.0.0.1, 8 concurrent closed-loop keep-alive connections for 30 s asking
  GET /recommend top-10 for random users; p50 / p99 / max latency and requests/s, each the median of 3 such
  runs against the same server (every run is listed too). The load comes from wrk (one thread) when it is
  installed (apt install wrk), else from 8 Python threads; the client shares the 2 cores.
- feedback-to-effect: POST /feedback of one event for a user, then GET /recommend for that user; the time from
  sending the POST to receiving a recommendation that reflects the event (the item now counts as seen), median
  over 30 trials.
- cli: wall time of `bigrec recommend --user U --k 10` in a fresh process, median of 7.
- batch: `Recommender.recommend_many` for all 5,000 users, top-10 over 10,000 items, median of 3 (model loaded,
  its cache of LSTM states emptied before each run).
The server keeps a cache of LSTM states keyed by the exact item sequence (a new event changes the key), and before
it serves a run it computes the states of the 20,000 most recently active users (`--warm-users`; all 5,000 here),
so the serve figures are for users without new feedback; feedback-to-effect times the other path (a new event,
so a new LSTM pass).
Writes bench/results/latency.json.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_io import protocol, write_result

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "latency"
RESULTS = ROOT / "bench" / "results" / "latency.json"
BIGREC = [sys.executable, "-m", "bigrec_cli"]
NUM_ITEMS, NUM_USERS, DIM = 10_000, 5_000, 384
CLIENTS = 8
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
DURATION_S = float(os.environ.get("BENCH_SECONDS", "30"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
SERVE_KEYS = ("serve_p50_ms", "serve_p99_ms", "serve_max_ms", "serve_rps")


def build_project(project: Path) -> None:
    from bigrec_cli.data import preprocess
    from bigrec_cli.project import ProjectDir, atomic_write_json
    from bigrec_cli.vectors import save_item_vectors

    rng = np.random.default_rng(0)
    raw = WORK / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(NUM_ITEMS)], "title": [f"Item {n}" for n in range(NUM_ITEMS)]}
    )
    items.to_csv(raw / "items.csv", index=False)
    rows = []
    for user in range(NUM_USERS):
        picks = rng.choice(NUM_ITEMS, size=rng.integers(20, 61), replace=False)
        start = 1_700_000_000 + user
        rows += [(f"u{user}", f"i{item}", start + 60 * step) for step, item in enumerate(picks)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(raw / "events.csv", index=False)
    root = ProjectDir(project)
    preprocess(root, events_path=raw / "events.csv", items_path=raw / "items.csv")
    vectors = rng.normal(size=(NUM_ITEMS, DIM)).astype("float32")
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


def load_test(port: int) -> dict:
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors = []
    deadline = time.perf_counter() + DURATION_S

    def client(slot: int) -> None:
        rng = random.Random(slot)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < deadline:
            user = f"u{rng.randrange(NUM_USERS)}"
            started = time.perf_counter()
            try:
                request(connection, "GET", f"/recommend?user={user}&k=10")
            except Exception as error:  # count, keep going
                errors.append(str(error))
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            latencies[slot].append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = np.array([value for values in latencies for value in values]) * 1000
    if not len(flat):
        raise SystemExit(f"every request failed, e.g. {errors[:1]}")
    return {
        "serve_p50_ms": float(np.percentile(flat, 50)),
        "serve_p99_ms": float(np.percentile(flat, 99)),
        "serve_max_ms": float(flat.max()),
        "serve_rps": len(flat) / elapsed,
        "serve_requests": int(len(flat)),
        "serve_errors": len(errors),
    }


WRK_SCRIPT = """
math.randomseed(1)
request = function()
  return wrk.format("GET", "/recommend?user=u" .. math.random(0, %d) .. "&k=10")
end
"""


def _milliseconds(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def load_test_wrk(port: int) -> dict:
    """The same closed loop with wrk (one C thread, 8 keep-alive connections): less client CPU on a 2-core box."""
    script = WORK / "recommend.lua"
    script.write_text(WRK_SCRIPT % (NUM_USERS - 1))
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CLIENTS}",
            f"-d{int(DURATION_S)}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, flags=re.M))
    latency_line = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, flags=re.M)
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "serve_p50_ms": _milliseconds(percentiles["50"]),
        "serve_p99_ms": _milliseconds(percentiles["99"]),
        "serve_max_ms": _milliseconds(latency_line.group(3)),
        "serve_rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1)),
        "serve_requests": requests,
        "serve_errors": int(errors.group(1)) if errors else 0,
        "load_generator": "wrk -t1 -c8",
    }


def feedback_to_effect(port: int, trials: int = 30) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    rng = random.Random(99)
    timings = []
    for trial in range(trials):
        user = f"u{rng.randrange(NUM_USERS)}"
        top = request(connection, "GET", f"/recommend?user={user}&k=10")["items"][0]["item_id"]
        event = json.dumps([{"user_id": user, "item_id": top, "timestamp": 1_900_000_000 + trial}]).encode()
        started = time.perf_counter()
        request(connection, "POST", "/feedback", event)
        answer = request(connection, "GET", f"/recommend?user={user}&k=10")
        elapsed = time.perf_counter() - started
        assert top not in {item["item_id"] for item in answer["items"]}, "feedback not reflected"
        timings.append(elapsed * 1000)
    return statistics.median(timings)


def main() -> None:
    project = WORK / "project"
    if not (project / "current").exists():
        print("building the synthetic project (10,000 items, 5,000 users) and training 1 epoch…", file=sys.stderr)
        build_project(project)
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

    port = free_port()
    server = subprocess.Popen(
        [*BIGREC, "serve", "--port", str(port), "--workers", str(WORKERS)], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit("bigrec serve exited before answering /health")
            try:
                request(http.client.HTTPConnection("127.0.0.1", port, timeout=1), "GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        runs = [
            load_test_wrk(port) if shutil.which("wrk") else {**load_test(port), "load_generator": "python threads"}
            for _ in range(REPEATS)
        ]
        serve = {key: statistics.median(run[key] for run in runs) for key in SERVE_KEYS}
        serve["serve_requests"] = sum(run["serve_requests"] for run in runs)
        serve["serve_errors"] = sum(run["serve_errors"] for run in runs)
        serve["load_generator"] = runs[0]["load_generator"]
        serve["serve_runs"] = [{key: round(run[key], 2) for key in SERVE_KEYS} for run in runs]
        effect_ms = feedback_to_effect(port)
    finally:
        server.terminate()
        server.wait(timeout=30)

    result = {
        **{key: round(value, 3) if isinstance(value, float) else value for key, value in serve.items()},
        "feedback_to_effect_ms": round(effect_ms, 3),
        "cli_recommend_wall_s": round(statistics.median(cli_walls), 3),
        "batch_users_per_s": round(NUM_USERS / statistics.median(batch_seconds), 1),
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
