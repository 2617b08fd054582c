"""Soak and lock benchmark of `bigrec serve` (`make bench-soak`).

Protocol: the sample data with the tiny BERT, two runs trained for one epoch each; one `bigrec serve` process (1
worker, 127.0.0.1, `--warm-users 0`). Load from Python client threads on the same 2 cores (http.client,
keep-alive), named in the result.
- lock: another process holds the feedback store's write lock (`BEGIN IMMEDIATE`) for LOCK_SECONDS (10) while one
  client asks GET /health back to back and a second one POSTs a feedback event every 0.5 s; /health latency
  p50 / p99 / max, and the status codes the POSTs got (503 with Retry-After expected while locked).
- soak: SOAK_SECONDS (600) of mixed traffic from 4 threads (90% GET /recommend for a random user, 10% POST
  /feedback of one event with a unique event id; SOAK_POST_SHARE sets the share, 0 keeps the data's size fixed)
  while a swapper promotes the two runs in turn SWAPS (200) times, evenly spread; the server's resident memory and
  open file handles (from /proc) sampled every second: start, end and maximum. Afterwards every accepted event id is
  counted in the store: each must be there exactly once.
  Also: resident memory at each 1,000 stored events, which tells growth with the data from growth with time.
Writes bench/results/soak.json (soak-posts-<share>.json for another SOAK_POST_SHARE).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from results_io import protocol, write_result

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "soak"
RESULTS = ROOT / "bench" / "results" / "soak.json"
BIGREC = [sys.executable, "-m", "bigrec_cli"]
LOCK_SECONDS = float(os.environ.get("LOCK_SECONDS", "10"))
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SWAPS = int(os.environ.get("SWAPS", "200"))
CLIENTS = 4
POST_SHARE = float(os.environ.get("SOAK_POST_SHARE", "0.1"))  # 0: reads only, the stored data stays the same size


def bigrec(*args: str) -> str:
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(WORK / "project"), "BIGREC_BERT": "tiny"}
    return subprocess.run([*BIGREC, *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


def process_sample(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and open file handles of a process."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def lock_phase(port: int, database: Path) -> dict:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys, time\n"
                f"c = sqlite3.connect({str(database)!r}, isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
                f"time.sleep({LOCK_SECONDS}); c.execute('ROLLBACK')\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    latencies, statuses = [], []
    stop = threading.Event()

    def poster() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        number = 0
        while not stop.is_set():
            body = json.dumps([{"user_id": "lock-test", "item_id": "i0001", "event_id": f"lock-{number}"}]).encode()
            statuses.append(request(connection, "POST", "/feedback", body))
            number += 1
            time.sleep(0.5)

    thread = threading.Thread(target=poster)
    thread.start()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while holder.poll() is None:
        started = time.perf_counter()
        request(connection, "GET", "/health")
        latencies.append((time.perf_counter() - started) * 1000)
    stop.set()
    thread.join()
    latencies.sort()
    return {
        "health_requests": len(latencies),
        "health_p50_ms": statistics.median(latencies),
        "health_p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
        "health_max_ms": latencies[-1],
        "feedback_statuses": {str(code): statuses.count(code) for code in sorted(set(statuses))},
    }


def soak_phase(port: int, pid: int, runs: list[str], users: list[str]) -> dict:
    stop = threading.Event()
    failures, counts, accepted = [], {"get": 0, "post": 0}, []
    samples: list[tuple[float, float, int, int]] = []  # seconds, resident MiB, open handles, events accepted
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        number = 0
        while not stop.is_set():
            if rng.random() < POST_SHARE:
                event_id = f"soak-{seed}-{number}"
                number += 1
                body = json.dumps(
                    [{"user_id": rng.choice(users), "item_id": f"i{rng.randrange(400):04d}", "event_id": event_id}]
                ).encode()
                status = request(connection, "POST", "/feedback", body)
                with lock:
                    counts["post"] += 1
                    if status == 200:
                        accepted.append(event_id)
            else:
                status = request(connection, "GET", f"/recommend?user={rng.choice(users)}&k=10")
                with lock:
                    counts["get"] += 1
            if status not in (200, 503):
                failures.append(status)

    def swapper() -> None:
        for swap in range(SWAPS):
            if stop.wait(SOAK_SECONDS / SWAPS):
                return
            bigrec("runs", "promote", runs[swap % 2])

    def sampler() -> None:
        started = time.time()
        while not stop.wait(1.0):
            samples.append((time.time() - started, *process_sample(pid), len(accepted)))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    threads += [threading.Thread(target=swapper), threading.Thread(target=sampler)]
    samples.append((0.0, *process_sample(pid), 0))
    for thread in threads:
        thread.start()
    time.sleep(SOAK_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    samples.append((SOAK_SECONDS, *process_sample(pid), len(accepted)))
    with sqlite3.connect(WORK / "project" / "feedback.sqlite3") as connection:
        stored = dict(
            connection.execute("SELECT event_id, COUNT(*) FROM events WHERE event_id LIKE '%soak-%' GROUP BY event_id")
        )
    stored_ids = {key.split("\x1f", 1)[-1]: value for key, value in stored.items()}
    rss, handles = [sample[1] for sample in samples], [sample[2] for sample in samples]
    return {
        "seconds": SOAK_SECONDS,
        "swaps": SWAPS,
        "requests_get": counts["get"],
        "requests_post": counts["post"],
        "failed_requests": len(failures),
        "rss_mib": {"start": rss[0], "end": rss[-1], "max": max(rss)},
        "rss_mib_each_minute": [round(sample[1], 1) for sample in samples if int(sample[0]) % 60 == 0],
        "open_handles": {"start": handles[0], "end": handles[-1], "max": max(handles)},
        "open_handles_each_minute": [sample[2] for sample in samples if int(sample[0]) % 60 == 0],
        "rss_mib_each_1000_events": {
            str(stored): round(next(sample[1] for sample in samples if sample[3] >= stored), 1)
            for stored in range(0, len(accepted) + 1, 1000)
        },
        "events_accepted": len(accepted),
        "events_stored_once": sum(stored_ids.get(event_id) == 1 for event_id in accepted),
        "events_missing_or_doubled": sum(stored_ids.get(event_id) != 1 for event_id in accepted),
    }


def main() -> None:
    if not Path("/proc/self/status").exists():
        raise SystemExit("this benchmark samples /proc: Linux only")
    project = WORK / "project"
    if WORK.exists():
        subprocess.run(["rm", "-rf", str(WORK)], check=True)
    bigrec(
        "preprocess",
        "--events",
        str(ROOT / "sample_data" / "events.csv"),
        "--items",
        str(ROOT / "sample_data" / "items.csv"),
    )
    bigrec("extract")
    runs = [json.loads(bigrec("train", "--epochs", "1", "--seed", str(seed), "--json"))["run_id"] for seed in (0, 1)]
    users = sorted({line.split(",")[0] for line in (ROOT / "sample_data" / "events.csv").read_text().splitlines()[1:]})
    port = free_port()
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(project)}
    server = subprocess.Popen(
        [*BIGREC, "serve", "--port", str(port), "--warm-users", "0"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):
            try:
                if request(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "GET", "/health") == 200:
                    break
            except OSError:
                time.sleep(0.1)
        request(
            http.client.HTTPConnection("127.0.0.1", port),
            "POST",
            "/feedback",
            json.dumps([{"user_id": "warm", "item_id": "i0001"}]).encode(),
        )
        lock = lock_phase(port, project / "feedback.sqlite3")
        print(
            f"lock: /health p99 {lock['health_p99_ms']:.1f} ms, POST statuses {lock['feedback_statuses']}",
            file=sys.stderr,
            flush=True,
        )
        soak = soak_phase(port, server.pid, runs, users)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "load_generator": f"{CLIENTS} Python threads (http.client, keep-alive)",
        "post_share": POST_SHARE,
        "lock": lock,
        "soak": soak,
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }
    write_result(RESULTS if POST_SHARE == 0.1 else RESULTS.with_name(f"soak-posts-{POST_SHARE:g}.json"), result)


if __name__ == "__main__":
    main()
