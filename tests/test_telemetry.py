"""GET /metrics and the access log of `bigrec serve`, over a real trained project: in-process through FastAPI's
TestClient, and as a real `serve --workers 2` whose workers' counts add up."""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bigrec_cli.feedback import FeedbackStore
from bigrec_cli.project import ProjectDir
from bigrec_cli.serve import project_app
from tests.conftest import REPO, invoke

TOKEN = "s3cret"


@pytest.fixture
def client(trained_copy):
    app = project_app(ProjectDir(trained_copy), token=TOKEN, watch=False)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client


def scrape(text: str) -> dict[tuple, float]:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def metrics(client) -> dict[tuple, float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return scrape(response.text)


def test_requests_are_counted_by_route_template(client, trained_copy):
    for _ in range(3):
        assert client.get("/recommend", params={"user": "u0007", "k": 5}).status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/users/u0007/history", params={"user": "u0007"}).status_code == 404
    response = client.get("/metrics")
    assert "u0007" not in response.text and "/users" not in response.text  # no raw path, no query, no user id
    samples = scrape(response.text)
    requests = "bigrec_http_requests_total"
    assert value(samples, requests, endpoint="/recommend", method="GET", status="200") == 3
    assert value(samples, "bigrec_http_request_seconds_count", endpoint="/recommend", method="GET") == 3
    assert value(samples, "bigrec_http_request_seconds_bucket", endpoint="/recommend", method="GET", le="+Inf") == 3
    assert value(samples, requests, endpoint="/health", method="GET", status="200") == 1
    assert value(samples, requests, endpoint="other", method="GET", status="404") == 1
    endpoints = {dict(labels)["endpoint"] for name, labels in samples if name == requests}
    assert endpoints == {"/recommend", "/health", "other"}  # /metrics counts itself once it has answered
    run_id = ProjectDir(trained_copy).current_run_id()
    assert value(samples, "bigrec_model_info", run_id=run_id) == 1
    assert [labels for name, labels in samples if name == "bigrec_model_info"] == [(("run_id", run_id),)]
    assert abs(value(samples, "bigrec_model_loaded_timestamp_seconds") - time.time()) < 600
    recall = value(samples, "bigrec_index_recall_at_10")  # NaN: the sample catalog is too small for an index
    assert recall is not None and (math.isnan(recall) or 0 <= recall <= 1)
    assert value(scrape(client.get("/metrics").text), requests, endpoint="/metrics", method="GET", status="200") == 1


def test_metrics_need_the_token_and_health_does_not(client):
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/health", headers={"Authorization": ""}).status_code == 200
    samples = metrics(client)
    assert value(samples, "bigrec_http_requests_total", endpoint="/metrics", method="GET", status="401") == 2


def test_feedback_events_are_counted_as_the_store_takes_them(client, trained_copy):
    good = {"user_id": "u0007", "item_id": "i0003", "timestamp": 1800000000}
    assert client.post("/feedback", json=[good]).status_code == 200
    assert client.post("/feedback", json=[{"user_id": "", "item_id": "i0004"}]).status_code == 422
    # All or nothing: the good event beside a bad one is not stored, so it is not counted as accepted either.
    mixed = [{**good, "item_id": "i0015"}, {"user_id": "u0007", "item_id": "no-such-item"}]
    assert client.post("/feedback", json=mixed).status_code == 422
    assert client.post("/feedback", json=[good]).json()["num_duplicates"] == 1  # stored once: neither outcome
    samples = metrics(client)
    assert value(samples, "bigrec_feedback_events_total", outcome="accepted") == 1
    assert value(samples, "bigrec_feedback_events_total", outcome="rejected") == 2
    assert FeedbackStore(ProjectDir(trained_copy).feedback_db).count_events() == 1


def promote_copy(project: ProjectDir, suffix: str, damaged: bool = False):
    """Promote a copy of the current run (its scorer overwritten with garbage when `damaged`)."""
    run = project.current_run_dir()
    copy = shutil.copytree(run, run.with_name(run.name + suffix))
    if damaged:
        (copy / "scorer.npz").write_bytes(b"garbage")
    project.promote(copy)
    return copy


def test_reloads_are_counted_and_the_old_run_leaves_model_info(client, trained_copy):
    project = ProjectDir(trained_copy)
    served = promote_copy(project, "-copy")
    assert client.app.state.watcher.check() is True
    promote_copy(project, "-broken", damaged=True)
    assert client.app.state.watcher.check() is False
    samples = metrics(client)
    assert value(samples, "bigrec_reloads_total", outcome="ok") == 1
    assert value(samples, "bigrec_reloads_total", outcome="error") == 1
    assert [labels for name, labels in samples if name == "bigrec_model_info"] == [(("run_id", served.name),)]


def test_access_log_has_one_json_line_per_request(trained_copy, tmp_path):
    log = tmp_path / "access.jsonl"
    app = project_app(ProjectDir(trained_copy), token=TOKEN, watch=False, access_log=str(log))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get("/recommend", params={"user": "u0007"}).status_code == 200
        assert client.post("/feedback", json=[{"user_id": "u0007", "item_id": "i0003"}]).status_code == 200
        assert client.get("/no/such/page", params={"user": "u0007"}).status_code == 404
        assert client.get("/health", headers={"Authorization": ""}).status_code == 200
    text = log.read_text(encoding="utf-8")
    assert "u0007" not in text and TOKEN not in text  # no user id, query string or token
    lines = [json.loads(line) for line in text.splitlines()]
    run_id = ProjectDir(trained_copy).current_run_id()
    assert [(line["method"], line["endpoint"], line["status"]) for line in lines] == [
        ("GET", "/recommend", 200),
        ("POST", "/feedback", 200),
        ("GET", "other", 404),
        ("GET", "/health", 200),
    ]
    for line in lines:
        assert set(line) == {"time", "method", "endpoint", "status", "duration_ms", "run_id"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["run_id"] == run_id and 0 < line["duration_ms"] < 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unwritable_access_log_is_one_line_before_loading(trained_project, tmp_path):
    target = tmp_path / "missing" / "access.log"
    result = invoke(
        "serve", "--project-dir", str(trained_project), "--port", str(free_port()), "--access-log", str(target)
    )
    assert result.exit_code == 1
    assert "cannot append to --access-log" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def get(url: str, token: str | None = None) -> tuple[int, str]:
    """One request on its own connection (so that the workers share them out)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def recommends_per_worker(folder) -> dict[str, float]:
    """GET /recommend as each worker counted it, from its own file in the metrics folder."""
    from prometheus_client.multiprocess import MultiProcessCollector

    return {
        path.name: sum(
            sample.value
            for family in MultiProcessCollector.merge([str(path)])
            for sample in family.samples
            if sample.name == "bigrec_http_requests_total" and sample.labels["endpoint"] == "/recommend"
        )
        for path in folder.glob("counter_*.db")
    }


@pytest.mark.slow
def test_metrics_of_two_worker_processes_add_up(trained_project, tmp_path):
    port, temporary, log = free_port(), tmp_path / "tmp", tmp_path / "access.jsonl"
    temporary.mkdir()  # the server's temporary folder, where it makes the metrics folder of its workers
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(trained_project), "BIGREC_TOKEN": TOKEN, "TMPDIR": str(temporary)}
    command = [sys.executable, "-m", "bigrec_cli", "serve", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(
        [*command, "--access-log", str(log)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not answer /health"
            time.sleep(0.2)
        (folder,) = temporary.glob("bigrec-metrics-*")
        # A worker still loading leaves every connection to the other: send until both have answered some.
        sent, per_worker = 0, {}
        while sent < 20 or sum(1 for count in per_worker.values() if count) < 2:
            assert sent < 500 and time.time() < deadline + 60, per_worker
            assert get(f"{base}/recommend?user=u{sent % 100:04d}&k=3", TOKEN)[0] == 200
            sent += 1
            per_worker = recommends_per_worker(folder)
        # A request is counted once its last byte is sent, so the client may read the answer a moment before
        # the count lands: wait for the last ones, never for more than a few seconds.
        settle = time.time() + 10
        while sum(per_worker.values()) < sent and time.time() < settle:
            time.sleep(0.05)
            per_worker = recommends_per_worker(folder)
        assert len(per_worker) == 2 and sum(per_worker.values()) == sent, per_worker
        for _ in range(6):  # each scrape on its own connection, answered by either worker: always the sum of both
            status, text = get(f"{base}/metrics", TOKEN)
            assert status == 200
            samples = scrape(text)
            requests = value(samples, "bigrec_http_requests_total", endpoint="/recommend", method="GET", status="200")
            assert requests == sent, per_worker
            assert value(samples, "bigrec_http_request_seconds_count", endpoint="/recommend", method="GET") == sent
            assert [labels for name, labels in samples if name == "bigrec_model_info"] == [
                (("run_id", ProjectDir(trained_project).current_run_id()),)
            ]
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert not list(temporary.glob("bigrec-metrics-*")), "the metrics folder outlived the server"
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]  # both workers, no torn line
    assert sum(line["endpoint"] == "/recommend" for line in lines) == sent


def test_worker_files_keep_only_the_served_run_and_a_closed_worker_leaves(tmp_path):
    """In a worker (prometheus_client imported with PROMETHEUS_MULTIPROC_DIR set) a reload cannot remove the old
    run's label from the shared files: it is set to 0 there and left out of /metrics."""
    script = (
        "import json, warnings\n"
        "warnings.simplefilter('error')\n"
        "from prometheus_client import generate_latest\n"
        "from bigrec_cli.telemetry import Telemetry\n"
        "telemetry = Telemetry()\n"
        "telemetry.model_served('run-a', 1700000000.0)\n"
        "telemetry.model_served('run-b', 1700000100.0, 0.97)\n"
        "print(generate_latest(telemetry.exposed).decode())\n"
        "telemetry.close()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    samples = scrape(output.stdout)
    assert [labels for name, labels in samples if name == "bigrec_model_info"] == [(("run_id", "run-b"),)]
    assert value(samples, "bigrec_model_loaded_timestamp_seconds") == 1700000100.0
    assert value(samples, "bigrec_index_recall_at_10") == 0.97
    names = [path.name for path in tmp_path.iterdir()]
    assert any(name.startswith("counter_") for name in names) and not any(name.startswith("gauge_") for name in names)
