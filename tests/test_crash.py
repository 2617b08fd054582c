"""Really kill train, retrain and ingest-feedback with SIGKILL at several points; the project must stay usable."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from bigrec_cli.project import ProjectDir
from bigrec_cli.retrain import project_lock
from tests.conftest import REPO, invoke


def kill_when(args, project, *, after_seconds=None, after_line=None, timeout=120):
    """Start `bigrec ARGS`, SIGKILL it when a stderr line starts with `after_line` or after `after_seconds`."""
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(project)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bigrec_cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if after_seconds is not None:
        time.sleep(after_seconds)
    else:
        deadline = time.time() + timeout
        for line in process.stderr:
            if line.startswith(after_line) or time.time() > deadline:
                break
        else:
            process.wait()
            return False
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return still_running


def assert_usable(project):
    current = ProjectDir(project).current_run_dir()
    assert (current / "manifest.json").exists()
    answer = invoke("recommend", "--project-dir", str(project), "--user", "u0007", "--json")
    assert answer.exit_code == 0, answer.stderr
    assert len(json.loads(answer.stdout)["items"]) == 10
    status = invoke("status", "--project-dir", str(project), "--json")
    assert status.exit_code == 0, status.stderr
    return json.loads(status.stdout)


TRAIN_POINTS = [{"after_seconds": 1.0}, {"after_seconds": 4.0}, {"after_line": "epoch 1:"}, {"after_line": "epoch 3:"}]


@pytest.mark.parametrize("point", TRAIN_POINTS, ids=lambda point: str(list(point.values())[0]))
def test_killed_train(trained_copy, point):
    before = ProjectDir(trained_copy).current_run_id()
    killed = kill_when(["train", "--epochs", "50", "--patience", "50"], trained_copy, **point)
    assert killed, "the command finished before the kill point"
    assert ProjectDir(trained_copy).current_run_id() == before
    assert_usable(trained_copy)


RETRAIN_POINTS = [{"after_line": "extracting"}, {"after_line": "training"}, {"after_line": "epoch 1:"}]


@pytest.mark.parametrize("point", RETRAIN_POINTS, ids=lambda point: str(list(point.values())[0]))
def test_killed_retrain(trained_copy, point):
    project = ProjectDir(trained_copy)
    before = project.current_run_id()
    killed = kill_when(["retrain", "--epochs", "50"], trained_copy, **point)
    assert killed
    assert project.current_run_id() == before
    assert_usable(trained_copy)
    with project_lock(project) as acquired:
        assert acquired, "a killed retrain must not leave the lock held"


def test_killed_ingest_loses_no_committed_event(trained_copy, tmp_path):
    feedback = tmp_path / "big.csv"
    num_rows = 60_000
    with open(feedback, "w") as stream:
        stream.write("event_id,user_id,item_id,timestamp\n")
        for row in range(num_rows):
            stream.write(f"e{row},u{row % 300:04d},i{row % 400:04d},{1_800_000_000 + row}\n")
    database = ProjectDir(trained_copy).feedback_db
    counts = []
    for delay in (0.3, 1.0, 2.0, 3.0):
        kill_when(["ingest-feedback", str(feedback)], trained_copy, after_seconds=delay)
        if database.exists():
            with sqlite3.connect(database) as connection:
                assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                counts.append(connection.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        else:
            counts.append(0)
        assert counts[-1] in (0, num_rows), "one transaction: all rows or none"
        assert_usable(trained_copy)
    result = invoke("ingest-feedback", "--project-dir", str(trained_copy), str(feedback), "--json")
    assert result.exit_code == 0, result.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM events").fetchone()[0] == num_rows
    print(f"counts after kills: {counts}")
