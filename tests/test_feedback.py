import json
import sqlite3

import pytest

from tests.conftest import SAMPLE, invoke


@pytest.fixture
def preprocessed(project):
    result = invoke("preprocess", "--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv"))
    assert result.exit_code == 0, result.stderr
    return project


def count_events(project) -> int:
    with sqlite3.connect(project / "feedback.sqlite3") as connection:
        return connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def test_ingest_is_idempotent_and_uses_wal(preprocessed, tmp_path):
    feedback = tmp_path / "f.csv"
    feedback.write_text("user_id,item_id,timestamp\nu0001,i0001,1800000000\nu0001,i0002,1800000001\n")
    first = invoke("ingest-feedback", str(feedback), "--json")
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["num_accepted"] == 2
    second = invoke("ingest-feedback", str(feedback), "--json")
    assert second.exit_code == 0
    assert json.loads(second.stdout)["num_accepted"] == 0
    assert json.loads(second.stdout)["num_duplicates"] == 2
    assert count_events(preprocessed) == 2
    with sqlite3.connect(preprocessed / "feedback.sqlite3") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rejected_rows_are_kept_with_reason_and_exit_2(preprocessed):
    lines = "\n".join(
        [
            json.dumps({"user_id": "u1", "item_id": "i0001", "timestamp": 1800000000}),
            json.dumps({"user_id": "u1", "item_id": "nope", "timestamp": 1800000001}),
            "{not json",
            json.dumps({"user_id": "", "item_id": "i0001"}),
            json.dumps({"user_id": "u1", "item_id": "i0002", "timestamp": "soon"}),
            json.dumps({"user_id": "u1", "item_id": "new-1", "title": "Brand new saxophone story"}),
        ]
    )
    result = invoke("ingest-feedback", "-", "--json", input=lines + "\n")
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert (summary["num_accepted"], summary["num_rejected"], summary["num_new_items"]) == (2, 4, 1)
    rejects = [json.loads(line) for line in (preprocessed / "feedback.rejects.jsonl").read_text().splitlines()]
    assert [entry["line"] for entry in rejects] == [2, 3, 4, 5]
    assert "unknown item_id 'nope'" in rejects[0]["reason"]
    assert "timestamp 'soon'" in rejects[3]["reason"]
    assert count_events(preprocessed) == 2


def test_file_without_required_columns_changes_nothing(preprocessed, tmp_path):
    feedback = tmp_path / "f.csv"
    feedback.write_text("user,item\nu1,i0001\n")
    result = invoke("ingest-feedback", str(feedback))
    assert result.exit_code == 1
    assert "has no column 'user_id', 'item_id'" in result.stderr
    assert not (preprocessed / "feedback.sqlite3").exists()


def test_ingest_before_preprocess_says_what_to_run(project, tmp_path):
    feedback = tmp_path / "f.csv"
    feedback.write_text("user_id,item_id\nu1,i0001\n")
    result = invoke("ingest-feedback", str(feedback))
    assert result.exit_code == 1 and "bigrec preprocess" in result.stderr
