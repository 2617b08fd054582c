"""retrain, its gate and lock, runs list/show/promote/rollback, status."""

import json

import pytest

from bigrec_cli.project import ProjectDir, read_json_lines
from bigrec_cli.retrain import project_lock
from tests.conftest import SAMPLE, invoke


def test_retrain_folds_feedback_in_and_promotes(trained_copy):
    project = ProjectDir(trained_copy)
    before = project.current_run_id()
    assert (
        invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv")).exit_code == 0
    )
    status = json.loads(invoke("status", "--project-dir", str(trained_copy), "--json").stdout)
    assert status["feedback_not_trained_on"] == 5
    result = invoke("retrain", "--project-dir", str(trained_copy), "--epochs", "2", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["decision"] == "promoted" and record["current_run"] == before
    assert record["items_encoded"] == 1, "only the new item n0001 is encoded"
    assert project.current_run_id() == record["candidate_run"]
    manifest = json.loads((project.current_run_dir() / "manifest.json").read_text())
    assert manifest["warm_start_from"] == before
    assert json.loads((project.current_run_dir() / "item_vocab.json").read_text())[-1] == "n0001"
    status = json.loads(invoke("status", "--project-dir", str(trained_copy), "--json").stdout)
    assert status["feedback_not_trained_on"] == 0 and status["current_run"] == record["candidate_run"]
    log = read_json_lines(project.retrain_log_path)
    assert [entry["decision"] for entry in log] == ["promoted"]
    assert set(log[0]["durations"]) == {"extract_s", "train_s", "evaluate_s", "total_s"}


def test_worse_candidate_is_rejected_with_exit_3(trained_copy):
    # A current run well trained, then a candidate whose LSTM a learning rate of 0.5 wrecks. Both without the
    # item-to-item term (through bigrec.toml, which retrain reads): on the sample data the term alone is strong
    # enough to carry a wrecked LSTM level with a good one, and this test is about the gate, not the term.
    (trained_copy / "bigrec.toml").write_text("[train]\nitem-item = false\n")
    assert invoke("train", "--project-dir", str(trained_copy), "--epochs", "16", "--seed", "0").exit_code == 0
    project = ProjectDir(trained_copy)
    before = project.current_run_id()
    result = invoke(
        "retrain",
        "--project-dir",
        str(trained_copy),
        "--epochs",
        "1",
        "--learning-rate",
        "0.5",
        "--tolerance",
        "0",
        "--json",
    )
    assert result.exit_code == 3, result.stderr
    record = json.loads(result.stdout)
    assert record["decision"] == "rejected"
    assert record["candidate_val_ndcg@10"] < record["current_val_ndcg@10"]
    assert project.current_run_id() == before
    assert (project.runs_dir / record["candidate_run"] / "manifest.json").exists(), "the candidate stays on disk"
    assert read_json_lines(project.retrain_log_path)[-1]["decision"] == "rejected"


def test_overlapping_retrain_exits_0_and_does_nothing(trained_copy):
    project = ProjectDir(trained_copy)
    runs_before = sorted(path.name for path in project.runs_dir.iterdir())
    with project_lock(project) as acquired:
        assert acquired
        result = invoke("retrain", "--project-dir", str(trained_copy))
    assert result.exit_code == 0
    assert "another retrain holds" in result.stderr
    assert sorted(path.name for path in project.runs_dir.iterdir()) == runs_before
    assert not project.retrain_log_path.exists()


def test_runs_promote_rollback_show_and_list(trained_copy):
    project = ProjectDir(trained_copy)
    first = project.current_run_id()
    second = json.loads(invoke("train", "--project-dir", str(trained_copy), "--epochs", "1", "--json").stdout)["run_id"]
    assert project.current_run_id() == second
    listed = json.loads(invoke("runs", "list", "--project-dir", str(trained_copy), "--json").stdout)
    assert [row["run_id"] for row in listed] == sorted([first, second])
    assert [row["current"] for row in listed if row["run_id"] == second] == [True]
    assert invoke("runs", "rollback", "--project-dir", str(trained_copy)).exit_code == 0
    assert project.current_run_id() == first
    assert invoke("runs", "promote", second, "--project-dir", str(trained_copy)).exit_code == 0
    assert project.current_run_id() == second
    shown = json.loads(invoke("runs", "show", first, "--project-dir", str(trained_copy)).stdout)
    assert shown["run_id"] == first and "val_ndcg@10" in shown["metrics"]


@pytest.mark.parametrize("run_id", ["../../etc", "nope", ".incomplete-x", "a/b"])
def test_promote_refuses_unknown_or_escaping_run_ids(trained_copy, run_id):
    before = ProjectDir(trained_copy).current_run_id()
    result = invoke("runs", "promote", run_id, "--project-dir", str(trained_copy))
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert ProjectDir(trained_copy).current_run_id() == before


def test_promote_refuses_a_damaged_run(trained_copy):
    project = ProjectDir(trained_copy)
    first = project.current_run_id()
    second = json.loads(invoke("train", "--project-dir", str(trained_copy), "--epochs", "1", "--json").stdout)["run_id"]
    (project.runs_dir / first / "config.json").write_text("{}")
    result = invoke("runs", "promote", first, "--project-dir", str(trained_copy))
    assert result.exit_code == 1 and "config.json does not match its checksum" in result.stderr
    assert project.current_run_id() == second


def test_status_without_a_run(project):
    result = invoke("status", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["current_run"] is None
