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


def test_writers_in_one_process_take_turns_without_sleeping(preprocessed):
    """A second writer starts the moment the first commits: SQLite's busy handler, which the lock replaces, would
    sleep on (its tries come 128, 178, 228, 328 ms after the wait began) and start about 0.1 s late here."""
    import threading
    import time

    from bigrec_cli.feedback import FeedbackStore

    database = preprocessed / "feedback.sqlite3"
    first, second = FeedbackStore(database), FeedbackStore(database)
    holding, times = threading.Event(), {}

    def hold() -> None:
        with first.transaction() as connection:
            connection.execute("INSERT INTO items VALUES ('held', 'Held', 'Held', 0)")
            holding.set()
            time.sleep(0.235)
        times["released"] = time.monotonic()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    with second.transaction() as connection:
        times["began"] = time.monotonic()
        connection.execute("INSERT INTO items VALUES ('next', 'Next', 'Next', 0)")
    holder.join()
    assert 0 <= times["began"] - times["released"] < 0.05, times
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 2
    first.close()
    second.close()


def test_a_writer_of_this_process_past_the_busy_timeout_is_store_busy(preprocessed):
    import threading
    import time

    from bigrec_cli.errors import StoreBusyError
    from bigrec_cli.feedback import FeedbackStore

    database = preprocessed / "feedback.sqlite3"
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with FeedbackStore(database).transaction():
            holding.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    waiting = FeedbackStore(database, busy_timeout=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(StoreBusyError, match="locked by another writer"):
            with waiting.errors(), waiting.transaction():
                pass
        assert time.monotonic() - started < 2
    finally:
        done.set()
        holder.join()


def test_a_kept_write_connection_follows_the_file_when_it_is_deleted(preprocessed):
    """The store keeps its write connection between writes; a deleted store file must not swallow the next event
    into the unlinked inode."""
    from bigrec_cli.feedback import open_store, rows_from_objects
    from bigrec_cli.project import ProjectDir

    store = open_store(ProjectDir(preprocessed))

    def write(event_id: str) -> int:
        rows = rows_from_objects([{"user_id": "u0001", "item_id": "i0001", "event_id": event_id}])
        return store.ingest_rows(rows, source="test", known_items={"i0001"}, rejects_path=None).num_accepted

    assert write("a") == 1 and write("b") == 1 and write("a") == 0
    assert count_events(preprocessed) == 2
    for suffix in ("", "-wal", "-shm"):
        (preprocessed / f"feedback.sqlite3{suffix}").unlink(missing_ok=True)
    assert write("c") == 1
    assert count_events(preprocessed) == 1
    store.close()
