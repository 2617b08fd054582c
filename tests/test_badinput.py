"""The malformed-input corpus in tests/badinput: each file meets a clear error or its documented rejection, and
the project is left unchanged. Property-based tests of the event parser and the preprocess validation."""

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigrec_cli.data import clean_events
from bigrec_cli.errors import DataError
from bigrec_cli.feedback import ParsedEvent, RowError, parse_event, read_rows
from tests.conftest import invoke

CORPUS = Path(__file__).resolve().parent / "badinput"

EVENT_CASES = {
    "ev_missing_columns.csv": "has no column 'item_id', 'timestamp'",
    "ev_wrong_delimiter.csv": "is the delimiter a comma?",
    "ev_latin1.csv": "is not UTF-8",
    "ev_empty.csv": "is empty",
    "ev_header_only.csv": "has a header but no events",
    "ev_nan_timestamp.csv": "unparseable timestamp 'nan' at line 3",
    "ev_inf_timestamp.csv": "unparseable timestamp 'inf' at line 2",
    "ev_negative_timestamp.csv": "unparseable timestamp '-100' at line 2",
    "ev_unknown_item.csv": "item_id 'i999' has no entry",
    "ev_empty_user.csv": "empty user_id at line 3",
    "ev_ragged_rows.csv": "line 2 has 5 fields, the header has 3",
    "ev_invalid.jsonl": "cannot be read as jsonl",
    "ev_corrupt.parquet": "cannot be read as parquet",
    "ev_unknown_format.xlsx": "unknown format '.xlsx'",
    "ev_nul_bytes.csv": "unparseable timestamp",
    "ENORMOUS": "user_id longer than 256 characters at line 2",
}
ITEM_CASES = {
    "items_duplicate_ids.csv": "item_id 'i1' repeats at line 3",
    "items_missing_item_id.csv": "has no column 'item_id'",
}
FEEDBACK_CASES = {
    "fb_wrong_columns.csv": "has no column 'user_id', 'item_id'",
    "fb_latin1.csv": "is not UTF-8",
    "fb_empty.csv": "is empty",
}


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def good_project(project):
    events = project.parent / "good-events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\nu1,i3,3\n")
    result = invoke("preprocess", "--events", str(events), "--items", str(CORPUS / "items.csv"))
    assert result.exit_code == 0, result.stderr
    return project


def corpus_file(name: str, tmp_path: Path) -> Path:
    if name == "ENORMOUS":
        path = tmp_path / "ev_enormous_id.csv"
        path.write_text("user_id,item_id,timestamp\n" + "u" * 2_000_000 + ",i1,1\n")
        return path
    return CORPUS / name


@pytest.mark.parametrize("name, message", sorted(EVENT_CASES.items()))
def test_bad_events_file(good_project, tmp_path, name, message):
    before = snapshot(good_project)
    result = invoke("preprocess", "--events", str(corpus_file(name, tmp_path)), "--items", str(CORPUS / "items.csv"))
    assert result.exit_code == 1
    assert message in result.stderr, result.stderr
    assert "fix:" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, "one message, not a dump"
    assert snapshot(good_project) == before


@pytest.mark.parametrize("name, message", sorted(ITEM_CASES.items()))
def test_bad_items_file(good_project, name, message):
    before = snapshot(good_project)
    events = good_project.parent / "good-events.csv"
    result = invoke("preprocess", "--events", str(events), "--items", str(CORPUS / name))
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert snapshot(good_project) == before


@pytest.mark.parametrize("name, message", sorted(FEEDBACK_CASES.items()))
def test_bad_feedback_file(good_project, name, message):
    before = snapshot(good_project)
    result = invoke("ingest-feedback", str(CORPUS / name))
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert snapshot(good_project) == before


def test_mixed_feedback_rows_are_rejected_one_by_one(good_project):
    result = invoke("ingest-feedback", str(CORPUS / "fb_mixed.jsonl"), "--json")
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert (summary["num_rows"], summary["num_accepted"], summary["num_duplicates"], summary["num_rejected"]) == (
        11,
        3,
        1,
        7,
    )
    reasons = {entry["line"]: entry["reason"] for entry in summary["rejections"]}
    assert "weight is not finite" in reasons[2]
    assert "timestamp 'inf'" in reasons[3] and "timestamp '-5'" in reasons[4]
    assert "unknown item_id 'i404'" in reasons[5]
    assert "longer than 256" in reasons[8] and "must be text" in reasons[9]
    assert "cannot be parsed" in reasons[11]


def test_formula_text_is_stored_as_text_and_neutralised_in_csv_output(trained_copy, tmp_path):
    feedback = tmp_path / "f.jsonl"
    feedback.write_text(json.dumps({"user_id": "u0001", "item_id": "evil", "title": '=HYPERLINK("http://x")'}) + "\n")
    assert invoke("ingest-feedback", "--project-dir", str(trained_copy), str(feedback)).exit_code == 0
    assert invoke("extract", "--project-dir", str(trained_copy)).exit_code == 0
    users = tmp_path / "users.txt"
    users.write_text("u0002\n")
    result = invoke("recommend", "--project-dir", str(trained_copy), "--users", str(users), "--k", "401")
    assert result.exit_code == 0, result.stderr
    evil = [line for line in result.stdout.splitlines() if ",evil," in line]
    assert evil and "'=HYPERLINK" in evil[0]


# Property-based tests ------------------------------------------------------------------------------------------

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=2),
)
rows = st.dictionaries(
    st.sampled_from(
        ["user_id", "item_id", "timestamp", "weight", "event", "event_id", "title", "text", "description", "other"]
    ),
    scalar,
    max_size=9,
)


@given(rows)
@settings(max_examples=400, deadline=None)
def test_parse_event_accepts_valid_rows_or_raises_row_error(row):
    try:
        event = parse_event(row, now=1_800_000_000.0)
    except RowError as error:
        assert str(error)
        return
    assert isinstance(event, ParsedEvent)
    assert event.user_id and event.item_id and len(event.user_id) <= 256
    assert math.isfinite(event.timestamp) and event.timestamp >= 0 and math.isfinite(event.weight)
    assert event.event_id


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_read_rows_never_crashes_on_arbitrary_text(text):
    import io

    try:
        for row in read_rows(io.StringIO(text), "fuzz"):
            assert row.line >= 1 and (row.values is None or isinstance(row.values, dict))
    except DataError as error:
        assert "fuzz" in str(error)


cell = st.one_of(
    st.text(max_size=12), st.integers(-5, 2_000_000_000).map(str), st.sampled_from(["nan", "inf", "", "2024-01-01"])
)


@given(st.lists(st.tuples(cell, cell, cell), min_size=0, max_size=12))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_clean_events_validates_or_returns_typed_frame(rows_):
    frame = pd.DataFrame(rows_, columns=["user_id", "item_id", "timestamp"], dtype=str)
    try:
        events = clean_events(frame, Path("events.csv"), 2)
    except DataError as error:
        assert "events.csv" in str(error)
        return
    assert len(events) == len(frame) > 0
    assert events["timestamp"].map(math.isfinite).all() and (events["timestamp"] >= 0).all()
    assert (events["user_id"] != "").all() and (events["item_id"] != "").all()
