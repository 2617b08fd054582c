"""What a new user tripped over and what a fault probe found, each reproduced (issues «day two» and «hardening»)."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bigrec_cli.project import ProjectDir
from tests.conftest import REPO, SAMPLE, invoke


@pytest.fixture
def preprocessed(project):
    result = invoke("preprocess", "--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv"))
    assert result.exit_code == 0, result.stderr
    return project


def one_line_error(result, *fragments):
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# Bugs 3 and 4: a byte-order mark or tabs in feedback ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xef\xbb\xbfuser_id,item_id\r\nuser_010,i0005\r\n",
        b'\xef\xbb\xbf{"user_id": "user_010", "item_id": "i0005"}\n',
        b"user_id\titem_id\ttimestamp\nuser_010\ti0005\t1800000000\n",
    ],
    ids=["csv-bom", "jsonl-bom", "tsv"],
)
def test_feedback_with_bom_or_tabs_is_read(preprocessed, tmp_path, payload):
    path = tmp_path / "fb.csv"
    path.write_bytes(payload)
    result = invoke("ingest-feedback", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["num_accepted"] == 1


def test_feedback_with_another_delimiter_gets_a_hint(preprocessed, tmp_path):
    path = tmp_path / "fb.csv"
    path.write_text("user_id;item_id\nu1;i0001\n")
    one_line_error(invoke("ingest-feedback", str(path)), "has no column", "delimiter")


# Bug 6: rejections carry the raw row, in line order -------------------------------------------------------------


def test_rejections_keep_the_raw_row_in_line_order(preprocessed, tmp_path):
    rows = [{"user_id": "u1", "item_id": "i0001"}] * 6 + [{"user_id": "u1", "item_id": "unknown-item"}]
    rows += [{"user_id": "", "item_id": "i0001"}, {"user_id": "u1", "item_id": "i0001", "timestamp": "soon"}]
    path = tmp_path / "fb.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert invoke("ingest-feedback", str(path)).exit_code == 2
    logged = [json.loads(line) for line in (preprocessed / "feedback.rejects.jsonl").read_text().splitlines()]
    assert [entry["line"] for entry in logged] == [7, 8, 9]
    assert json.loads(logged[0]["row"]) == {"user_id": "u1", "item_id": "unknown-item"}


# Bug 12: dropped unknown items are counted ----------------------------------------------------------------------


def test_drop_unknown_items_says_how_many(project, tmp_path):
    events = tmp_path / "events.csv"
    events.write_text((SAMPLE / "events.csv").read_text() + "u0001,not-in-catalog,1800000000,view\n" * 3)
    args = ["preprocess", "--events", str(events), "--items", str(SAMPLE / "items.csv"), "--drop-unknown-items"]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["num_dropped_unknown_items"] == 3


# Bug 11: an empty validation split is refused with the fix ------------------------------------------------------


@pytest.mark.slow
def test_train_refuses_an_empty_validation_split(project, tmp_path):
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{u},i000{i + 1},{i}\n" for u in range(5) for i in range(2))
    )
    assert invoke("preprocess", "--events", str(events), "--items", str(SAMPLE / "items.csv")).exit_code == 0
    assert invoke("extract").exit_code == 0
    one_line_error(invoke("train", "--epochs", "1"), "validation split is empty", "at least 3 events")


# Bugs 1 and 5: --output -------------------------------------------------------------------------------------------


def test_output_into_a_missing_folder_is_one_line(trained_project, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("u0001\n")
    result = invoke(
        "recommend",
        "--project-dir",
        str(trained_project),
        "--users",
        str(users),
        "--output",
        str(tmp_path / "no" / "such" / "x.csv"),
    )
    one_line_error(result, "does not exist", "fix:")


def test_single_user_output_is_written(trained_project, tmp_path):
    output = tmp_path / "x.csv"
    result = invoke("recommend", "--project-dir", str(trained_project), "--user", "u0001", "--output", str(output))
    assert result.exit_code == 0, result.stderr
    lines = output.read_text().splitlines()
    assert lines[0].startswith("user_id,rank,item_id") and len(lines) == 11


# Bug 2: status keeps the last retrain ----------------------------------------------------------------------------


def test_status_table_shows_the_last_retrain(trained_copy):
    record = {"at": "2026-01-01T00:00:00Z", "decision": "rejected", "candidate_run": "r2", "candidate_val_ndcg@10": 0.1}
    (trained_copy / "retrain.log.jsonl").write_text(json.dumps(record) + "\n")
    result = invoke("status", "--project-dir", str(trained_copy))
    assert result.exit_code == 0, result.stderr
    assert "last_retrain" in result.stdout and "rejected" in result.stdout


# Bugs 7 and 9, hardening 6 and 7: the HTTP surface ---------------------------------------------------------------


@pytest.fixture
def app(trained_copy):
    from bigrec_cli.serve import project_app

    return project_app(ProjectDir(trained_copy), token="s3cret", watch=False, warm_users=0)


def test_token_guards_the_docs_and_schema(app):
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 401
        assert client.get("/openapi.json").status_code == 401
        assert client.get("/health").status_code == 200
        headers = {"Authorization": "Bearer s3cret"}
        page = client.get("/docs", headers=headers)
        assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_openapi_documents_bodies_and_answers(app):
    with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as client:
        schema = client.get("/openapi.json").json()
        body = schema["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "user_id" in json.dumps(body) and "event" in json.dumps(body)
        answer = schema["paths"]["/recommend"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer != {} and "RecommendAnswer" in json.dumps(answer)
        assert client.head("/health").status_code == 200
        loaded_at = client.get("/health").json()["loaded_at"]
        assert time.strptime(loaded_at, "%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "line",
    [
        '{"user_id": "\\ud800", "item_id": "i0001"}',
        '{"user_id": "u1", "item_id": ' + "9" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["lone-surrogate", "huge-integer", "deep-nesting"],
)
def test_one_bad_json_row_is_rejected_alone(preprocessed, tmp_path, line):
    path = tmp_path / "fb.jsonl"
    path.write_text('{"user_id": "u1", "item_id": "i0001"}\n' + line + "\n", encoding="utf-8", errors="surrogatepass")
    result = invoke("ingest-feedback", str(path), "--json")
    assert result.exit_code == 2, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["num_accepted"], summary["num_rejected"]) == (1, 1)


def test_bad_json_bodies_are_4xx(app):
    with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as client:
        for body in (
            '[{"user_id": "\\ud800", "item_id": "i0001"}]',
            "[" * 100_000 + "]" * 100_000,
            '[{"user_id": "u1", "item_id": ' + "9" * 5000 + "}]",
        ):
            response = client.post("/feedback", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])


def test_locked_store_gives_a_prompt_503_and_health_stays_fast(app, trained_copy):
    from bigrec_cli.feedback import FeedbackStore

    store = FeedbackStore(trained_copy / "feedback.sqlite3")
    holder = store.connect()
    store.migrate(holder)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as client:
            started = time.perf_counter()
            response = client.post("/feedback", json=[{"user_id": "u1", "item_id": "i0001"}])
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            assert time.perf_counter() - started < 10
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            assert time.perf_counter() - started < 0.5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def open_handles(path: Path) -> int:
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{entry}").startswith(str(path))
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_reloads_do_not_leak_store_connections(app, trained_copy):
    watcher = app.state.watcher
    watcher.retire_seconds = 0.0
    project = ProjectDir(trained_copy)
    first = project.current_run_dir()
    second = first.parent / (first.name + "-b")
    import shutil

    shutil.copytree(first, second)
    with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as client:
        client.post("/feedback", json=[{"user_id": "u0001", "item_id": "i0001"}])
        handles, served = [], []
        for swap in range(24):
            project.promote(second if swap % 2 == 0 else first)
            assert watcher.check() is True
            served.append(weakref.ref(watcher.state.recommender))
            for _ in range(4):
                assert client.get("/recommend", params={"user": "u0001"}).status_code == 200
            time.sleep(0.05)
            handles.append(open_handles(project.feedback_db))
        # without closing, every swap left the old model's connections open: 5, 9, 13, … handles
        assert max(handles) - min(handles) <= 4, handles
        time.sleep(0.2)
        # a retired model is released whole, frozen as it was when it loaded: only the one in use is alive
        assert [ref() is not None for ref in served].count(True) == 1


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_reader_connections_of_ended_threads_are_closed(trained_copy):
    from bigrec_cli.feedback import FeedbackStore, ingest, rows_from_objects

    project = ProjectDir(trained_copy)
    ingest(project, rows_from_objects([{"user_id": "u0001", "item_id": "i0001"}]), source="test")
    store = FeedbackStore(project.feedback_db)
    before = open_handles(project.feedback_db)
    for _ in range(12):  # a server's worker threads come and go; each reads through its own connection
        worker = threading.Thread(target=store.user_events, args=("u0001",))
        worker.start()
        worker.join()
    assert store.user_events("u0001"), "the store still reads"
    # one live connection (this thread's) and what the ended threads left: at most the last one's, never twelve
    assert open_handles(project.feedback_db) - before <= 2 * 3, "db, -wal and -shm handles of at most two"
    store.close()
    assert open_handles(project.feedback_db) == before


# Bug 8: a busy port ---------------------------------------------------------------------------------------------


def test_busy_port_is_one_line_and_its_own_status(trained_project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "BIGREC_PROJECT_DIR": str(trained_project)}
        result = subprocess.run(
            [sys.executable, "-m", "bigrec_cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 4, result.stderr
    assert "serving" not in result.stderr and "cannot listen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_empty_token_is_refused(trained_project):
    result = invoke("serve", "--project-dir", str(trained_project), "--token", "")
    one_line_error(result, "--token is empty")


# Hardening 3: a damaged feedback store --------------------------------------------------------------------------


def test_damaged_feedback_store_is_one_line_everywhere(trained_copy, tmp_path):
    database = trained_copy / "feedback.sqlite3"
    invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv"))
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    database.write_bytes(b"this is not a database" + b"\0" * 4096)
    for args in (["recommend", "--user", "u0001"], ["status"], ["ingest-feedback", str(SAMPLE / "feedback_demo.csv")]):
        one_line_error(invoke(*args, "--project-dir", str(trained_copy)), "is damaged", "backup")
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(database).execute("SELECT 1 FROM events").fetchall()


# Hardening 5: text is printed literally ---------------------------------------------------------------------------


def test_titles_and_ids_are_printed_literally(trained_copy):
    import pandas as pd

    items_path = ProjectDir(trained_copy).items_path
    items = pd.read_parquet(items_path)
    items["title"] = "Greatest hits [/remix] edition \x1b[2J :x:"
    items.to_parquet(items_path, index=False)
    result = invoke("recommend", "--project-dir", str(trained_copy), "--user", "u0001")
    assert result.exit_code == 0, result.stderr
    assert "Greatest hits [/remix] edition" in result.stdout and "\x1b[2J" not in result.stdout
    assert ":x:" in result.stdout and "❌" not in result.stdout
    weird = invoke("recommend", "--project-dir", str(trained_copy), "--user", "[/x]")
    assert weird.exit_code == 0 and "[/x]" in weird.stdout, weird.stderr


# Hardening 6 and 7: cross-site writes, Host, /health --------------------------------------------------------------


def test_cross_site_writes_and_foreign_hosts_are_refused(trained_copy):
    from bigrec_cli.serve import project_app

    app = project_app(ProjectDir(trained_copy), watch=False, warm_users=0, allowed_hosts={"127.0.0.1", "localhost"})
    event = '[{"user_id": "u1", "item_id": "i0001"}]'
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        json_header = {"Content-Type": "application/json"}
        assert client.post("/feedback", content=event, headers={"Content-Type": "text/plain"}).status_code == 415
        evil = client.post("/feedback", content=event, headers={**json_header, "Origin": "http://evil.example"})
        assert evil.status_code == 403
        same = client.post("/feedback", content=event, headers={**json_header, "Origin": "http://127.0.0.1:8000"})
        assert same.status_code == 200, same.text
        rebound = client.get("/health", headers={"Host": "attacker.example:8000"})
        assert rebound.status_code == 421
        assert client.get("/health", headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_health_hides_paths_and_forgets_errors_once_fixed(trained_copy):
    from bigrec_cli.serve import project_app

    app = project_app(ProjectDir(trained_copy), watch=False, warm_users=0)
    project = ProjectDir(trained_copy)
    good = project.current_run_id()
    with TestClient(app) as client:
        project.current_path.write_text("20990101T000000Z-gone00\n")
        assert app.state.watcher.check() is False
        error = client.get("/health").json()["reload_error"]
        assert error and str(trained_copy) not in error and "/" not in error.split(":", 1)[1]
        project.current_path.write_text(good + "\n")
        app.state.watcher.check()
        assert client.get("/health").json()["reload_error"] is None


def test_health_reports_a_damaged_store(trained_copy):
    from bigrec_cli.serve import project_app

    app = project_app(ProjectDir(trained_copy), watch=False, warm_users=0)
    (trained_copy / "feedback.sqlite3").write_bytes(b"garbage" * 1000)
    with TestClient(app) as client:
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["status"] == "degraded"


# Hardening 8 and 9 ------------------------------------------------------------------------------------------------


def test_directory_and_truncated_vectors_are_one_line(trained_copy):
    one_line_error(invoke("ingest-feedback", "--project-dir", str(trained_copy), "/etc"), "is a directory")
    vectors = trained_copy / "features" / "item_vectors.npz"
    vectors.write_bytes(vectors.read_bytes()[:1000])
    one_line_error(invoke("recommend", "--project-dir", str(trained_copy), "--user", "u0001"), "is damaged")


def test_runs_list_marks_a_run_that_fails_its_checksums(trained_copy):
    run = ProjectDir(trained_copy).current_run_dir()
    (run / "item_vocab.json").write_text('["tampered"]')
    listed = json.loads(invoke("runs", "list", "--project-dir", str(trained_copy), "--json").stdout)
    assert [row["status"] for row in listed if row["run_id"] == run.name] == ["damaged"]


def test_event_ids_are_scoped_per_user(preprocessed, tmp_path):
    path = tmp_path / "fb.jsonl"
    rows = [
        {"user_id": "A", "item_id": "i0001", "event_id": "dup"},
        {"user_id": "B", "item_id": "i0002", "event_id": "dup"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("ingest-feedback", str(path), "--json")
    assert json.loads(result.stdout)["num_accepted"] == 2, result.stdout
    again = invoke("ingest-feedback", str(path), "--json")
    assert json.loads(again.stdout)["num_duplicates"] == 2


def test_far_future_timestamps_are_refused(preprocessed, tmp_path):
    path = tmp_path / "fb.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i0001,9999-01-01T00:00:00Z\nu1,i0001,1e300\nu1,i0002,1700000000\n")
    result = invoke("ingest-feedback", str(path), "--json")
    summary = json.loads(result.stdout)
    assert (summary["num_accepted"], summary["num_rejected"]) == (1, 2)
    assert all("future" in entry["reason"] for entry in summary["rejections"])
