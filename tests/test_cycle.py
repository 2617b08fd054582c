"""The whole cycle through the real CLI with the tiny BERT: the model, the numpy scorer and the feedback loop."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigrec_cli.project import ProjectDir
from tests.conftest import REPO, SAMPLE, invoke


def recommend_json(project, user, k=10):
    result = invoke("recommend", "--project-dir", str(project), "--user", user, "--k", str(k), "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_evaluate_reports_model_and_baselines(trained_project):
    result = invoke("evaluate", "--project-dir", str(trained_project), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("hr@5", "ndcg@10", "mrr@20", "auc", "log_loss"):
        assert 0.0 <= report[key] <= (1.0 if key != "log_loss" else 50.0)
    assert set(report["baselines"]) == {"pop", "itemknn", "ease"}
    assert set(report["baselines"]["ease"]) == {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}
    assert "strictly higher" in report["protocol"]["split"]
    assert report["num_users"] == 300
    table = invoke("evaluate", "--project-dir", str(trained_project))
    assert "ndcg@10" in table.stdout and "ease" in table.stdout


def test_recommend_excludes_seen_items_and_names_titles(trained_project):
    answer = recommend_json(trained_project, "u0007")
    assert answer["cold_start"] is False
    assert len(answer["items"]) == 10
    import pandas as pd

    events = pd.read_parquet(ProjectDir(trained_project).events_path)
    seen = set(events[events["user_id"] == "u0007"]["item_id"])
    assert not seen & {item["item_id"] for item in answer["items"]}
    assert all(item["title"] for item in answer["items"])
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 < score < 1.0 for score in scores)


def test_unknown_user_gets_flagged_popular_items(trained_project):
    answer = recommend_json(trained_project, "someone-new", k=5)
    assert answer["cold_start"] is True and len(answer["items"]) == 5


def test_batch_recommend_writes_csv(trained_project, tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu0001\nu0002\nstranger\n")
    result = invoke("recommend", "--project-dir", str(trained_project), "--users", str(users), "--k", "3")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "user_id,rank,item_id,title,score,cold_start"
    assert len(lines) == 1 + 9
    assert lines[-1].startswith("stranger,3,") and lines[-1].endswith(",1")


def test_feedback_changes_the_next_recommendation_without_retraining(trained_copy):
    before = recommend_json(trained_copy, "u0007")
    current = (trained_copy / "current").read_text()
    result = invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv"))
    assert result.exit_code == 0, result.stderr
    after = recommend_json(trained_copy, "u0007")
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    ingested = {"i0003", "i0015", "i0027", "i0039"}
    assert not ingested & {item["item_id"] for item in after["items"]}, "ingested items count as seen"
    assert (trained_copy / "current").read_text() == current
    again = invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv"), "--json")
    assert json.loads(again.stdout)["num_accepted"] == 0
    # A brand-new user becomes warm with their first event.
    new_user = invoke(
        "ingest-feedback",
        "--project-dir",
        str(trained_copy),
        "-",
        input="user_id,item_id,timestamp\nfresh,i0003,1800000000\n",
    )
    assert new_user.exit_code == 0
    assert recommend_json(trained_copy, "fresh")["cold_start"] is False


def test_new_item_from_feedback_gets_a_vector_at_next_extract(trained_copy):
    invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv"))
    result = invoke("extract", "--project-dir", str(trained_copy), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["num_items"], summary["num_encoded"], summary["num_reused"]) == (401, 1, 400)
    # The run never saw n0001, but its text vector makes it scorable for other users.
    answer = recommend_json(trained_copy, "u0001", k=400)
    assert "n0001" in {item["item_id"] for item in answer["items"]}


def test_same_seed_gives_same_metrics(tmp_path, trained_project):
    import shutil

    metrics = []
    for attempt in range(2):
        root = tmp_path / f"p{attempt}"
        shutil.copytree(trained_project, root)
        result = invoke("train", "--project-dir", str(root), "--epochs", "2", "--seed", "7", "--json")
        assert result.exit_code == 0, result.stderr
        metrics.append({k: v for k, v in json.loads(result.stdout).items() if k.startswith("val_")})
    assert metrics[0] == metrics[1]


def test_fine_tune_bert_trains_end_to_end(trained_copy):
    result = invoke("train", "--project-dir", str(trained_copy), "--epochs", "1", "--fine-tune-bert", "--json")
    assert result.exit_code == 0, result.stderr
    run_dir = trained_copy / "runs" / json.loads(result.stdout)["run_id"]
    from bigrec_cli.vectors import load_arrays

    tuned = load_arrays(run_dir / "scorer.npz")["text_vectors"]
    frozen = np.load(trained_copy / "features" / "item_vectors.npz")["vectors"]
    assert tuned.shape == (frozen.shape[0] + 1, frozen.shape[1])
    assert not np.allclose(tuned[1:], frozen, atol=1e-4), "BERT weights did not change"
    assert recommend_json(trained_copy, "u0007")["cold_start"] is False


def test_killed_train_leaves_current_on_previous_run(trained_copy):
    previous = (trained_copy / "current").read_text()
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(trained_copy)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bigrec_cli", "train", "--epochs", "50", "--patience", "50"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 120
    for line in process.stderr:
        if line.startswith("epoch 1:") or time.time() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (trained_copy / "current").read_text() == previous
    # A half-written run directory from a crash is never picked up.
    (trained_copy / "runs" / ".incomplete-20990101T000000Z-dead00").mkdir()
    assert recommend_json(trained_copy, "u0007")["cold_start"] is False


def test_damaged_run_file_is_named(trained_copy):
    run_dir = ProjectDir(trained_copy).current_run_dir()
    with open(run_dir / "scorer.npz", "r+b") as stream:
        stream.seek(200)
        stream.write(b"\x00garbage\x00")
    result = invoke("recommend", "--project-dir", str(trained_copy), "--user", "u0007")
    assert result.exit_code == 1
    assert "scorer.npz does not match its checksum" in result.stderr


def test_steps_out_of_order_say_what_to_run(project):
    result = invoke("train")
    assert result.exit_code == 1 and "bigrec preprocess" in result.stderr
    result = invoke("recommend", "--user", "u1")
    assert result.exit_code == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bert-dir", "/nonexistent"], "is not a directory"),
        (["--config-path", "x.json"], "go together"),
    ],
)
def test_extract_checkpoint_errors(trained_copy, args, message):
    result = invoke("extract", "--project-dir", str(trained_copy), *args)
    assert result.exit_code == 1 and message in result.stderr


def test_evaluate_report_writes_plots_and_page(trained_project, tmp_path):
    result = invoke("evaluate", "--project-dir", str(trained_project), "--report", str(tmp_path / "report"))
    assert result.exit_code == 0, result.stderr
    for name in ("ndcg_at_k.png", "hr_at_k.png", "training.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "index.html").read_text()
    assert "ndcg@10" in page and "ease" in page and 'src="training.png"' in page


def test_report_curves_by_hand():
    from bigrec_cli.report import curve

    ranks = np.array([0, 2])
    hr = curve(ranks, "hr")
    assert hr[0] == 0.5 and hr[2] == 1.0
    ndcg = curve(ranks, "ndcg")
    assert ndcg[0] == pytest.approx(0.5) and ndcg[2] == pytest.approx((1 + 0.5) / 2)
