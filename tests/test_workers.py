"""`train` on several workers: MultiWorkerMirroredStrategy through a hand-written TF_CONFIG and through Ray.

Real processes on loopback: the workers are `bigrec train` subprocesses (or Ray's actors), the reference is the
session's one-worker run of the same command (`--epochs 4 --seed 1`, global batch the default)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigrec_cli.cluster import Cluster, cluster_from_env
from bigrec_cli.errors import DataError
from bigrec_cli.project import ProjectDir, read_json
from tests.conftest import REPO

TRAIN = ["train", "--epochs", "4", "--seed", "1"]  # what the session's trained project ran with one worker


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps(
        {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
    )


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start(project: Path, args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bigrec_cli", *args, "--project-dir", str(project)],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def runs(project: Path) -> set[str]:
    return {path.name for path in (project / "runs").iterdir() if not path.name.startswith(".")}


def reference(project: Path) -> tuple[str, float]:
    current = ProjectDir(project).current_run_dir()
    return current.name, read_json(current / "metrics.json")["val_ndcg@10"]


def assert_one_new_run_like_one_worker(project: Path, before: set[str], one_worker_ndcg: float) -> dict:
    new = runs(project) - before
    assert len(new) == 1, new  # written once, by the chief
    run = project / "runs" / new.pop()
    assert ProjectDir(project).current_run_dir() == run
    metrics = read_json(run / "metrics.json")
    assert abs(metrics["val_ndcg@10"] - one_worker_ndcg) <= 0.005, (metrics["val_ndcg@10"], one_worker_ndcg)
    assert read_json(run / "manifest.json")["workers"] == 2
    assert not list(project.glob(".ray-*"))  # Ray's scratch folder is removed
    return metrics


def test_cluster_from_tf_config():
    assert cluster_from_env({}) == Cluster()
    assert cluster_from_env({}).is_chief and not cluster_from_env({}).distributed
    worker1 = cluster_from_env({"TF_CONFIG": tf_config([1, 2, 3], 1)})
    assert (worker1.num_workers, worker1.index, worker1.distributed, worker1.is_chief) == (3, 1, True, False)
    assert cluster_from_env({"TF_CONFIG": tf_config([1, 2], 0)}).is_chief
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}}
    chief = cluster_from_env({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})})
    worker0 = cluster_from_env({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})})
    assert chief.is_chief and chief.num_workers == 3 and not worker0.is_chief
    bad_configs = (
        "{",
        '{"cluster": {}}',
        json.dumps({**with_chief, "task": {"type": "ps", "index": 0}}),
        json.dumps({"cluster": [], "task": {"type": "worker", "index": 0}}),
        json.dumps({"cluster": {"worker": "ab"}, "task": {"type": "worker", "index": 0}}),
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": True}}),
        json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1.5}}),
    )
    for bad in bad_configs:
        with pytest.raises(DataError, match="TF_CONFIG"):
            cluster_from_env({"TF_CONFIG": bad})


def test_two_workers_through_tf_config_match_one(trained_copy):
    reference_run, one_worker = reference(trained_copy)
    before = runs(trained_copy)
    ports = free_ports(2)
    workers = [start(trained_copy, [*TRAIN, "--json"], TF_CONFIG=tf_config(ports, index)) for index in (1, 0)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    (other_out, other_err), (chief_out, _) = outputs
    assert json.loads(other_out)["chief"] is False and "the chief writes" in other_err
    metrics = assert_one_new_run_like_one_worker(trained_copy, before, one_worker)
    assert json.loads(chief_out)["run_id"] == ProjectDir(trained_copy).current_run_dir().name
    assert metrics["best_epoch"] >= 1 and reference_run in runs(trained_copy)


def test_two_workers_through_ray_match_one(trained_copy):
    _, one_worker = reference(trained_copy)
    before = runs(trained_copy)
    process = start(trained_copy, [*TRAIN, "--workers", "2", "--json"])
    stdout, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr[-3000:]
    assert "epoch 4:" in stderr  # the chief's progress reaches the driver
    assert_one_new_run_like_one_worker(trained_copy, before, one_worker)
    assert json.loads(stdout)["run_id"] == ProjectDir(trained_copy).current_run_dir().name


def kill_mid_run(processes_to_watch: subprocess.Popen, victim_pids) -> tuple[int, str]:
    """Wait for the chief's second epoch, SIGKILL the victim workers, return the watched process's status and
    the error lines it printed."""
    lines = []
    deadline = time.time() + 300
    for line in processes_to_watch.stderr:
        lines.append(line)
        if line.startswith("epoch 2:") or time.time() > deadline:
            break
    pids = victim_pids()
    assert pids, "no worker to kill"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    rest = processes_to_watch.stderr.read()
    processes_to_watch.wait(timeout=300)
    return processes_to_watch.returncode, "".join(lines) + rest


def test_a_worker_killed_mid_run_leaves_current(trained_copy):
    current, _ = reference(trained_copy)
    before = runs(trained_copy)
    ports = free_ports(2)
    long = ["train", "--epochs", "40", "--patience", "40", "--seed", "1"]
    other = start(trained_copy, long, TF_CONFIG=tf_config(ports, 1))
    chief = start(trained_copy, long, TF_CONFIG=tf_config(ports, 0))
    status, stderr = kill_mid_run(chief, lambda: [other.pid])
    other.wait(timeout=60)
    assert status == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another worker failed or was lost" in errors[0] and "Traceback" not in stderr
    assert ProjectDir(trained_copy).current_run_dir().name == current
    assert runs(trained_copy) == before


def ray_train_workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes through /proc")
def test_a_ray_worker_killed_mid_run_leaves_current(trained_copy):
    current, _ = reference(trained_copy)
    before = runs(trained_copy)
    driver = start(trained_copy, ["train", "--epochs", "40", "--patience", "40", "--seed", "1", "--workers", "2"])
    status, stderr = kill_mid_run(driver, lambda: ray_train_workers()[-1:])
    assert status == 1, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training on Ray failed" in errors[0], stderr[-2000:]
    assert ProjectDir(trained_copy).current_run_dir().name == current
    assert runs(trained_copy) == before
    assert not list(trained_copy.glob(".ray-*"))


def test_extract_on_two_ray_workers_equals_one_process(tmp_path):
    from bigrec_cli.vectors import load_item_vectors
    from tests.conftest import SAMPLE, invoke

    projects = [tmp_path / "one", tmp_path / "two"]
    for project in projects:
        args = ["--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")]
        assert invoke("preprocess", "--project-dir", str(project), *args).exit_code == 0
    assert invoke("extract", "--project-dir", str(projects[0])).exit_code == 0
    process = start(projects[1], ["extract", "--workers", "2", "--json"])
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["num_encoded"] == 400
    ids_one, one = load_item_vectors(ProjectDir(projects[0]).item_vectors_path)
    ids_two, two = load_item_vectors(ProjectDir(projects[1]).item_vectors_path)
    assert ids_one == ids_two and one.shape == two.shape
    assert float(abs(one - two).max()) <= 1e-5
    again = start(projects[1], ["extract", "--workers", "2", "--json"])  # the cache answers; Ray is not needed
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert (json.loads(stdout)["num_encoded"], json.loads(stdout)["num_reused"]) == (0, 400)
