"""One event format: files (`preprocess`) and feedback (`ingest-feedback`, `POST /feedback`) accept and reject
the same rows, with the same timestamp parser."""

from pathlib import Path

import pandas as pd
import pytest

from bigrec_cli.data import clean_events
from bigrec_cli.errors import DataError
from bigrec_cli.feedback import RowError, parse_event

VALID = [
    {"user_id": "u1", "item_id": "i1", "timestamp": "1700000000"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "1700000000.5"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T12:00:00Z"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T14:00:00+02:00"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T12:00:00"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01 12:00:00"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01"},
    {"user_id": " u1 ", "item_id": "i1", "timestamp": "0"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "5", "weight": "2.5", "event": "purchase"},
    {"user_id": "u" * 256, "item_id": "i1", "timestamp": "5"},
]
INVALID = [
    {"user_id": "", "item_id": "i1", "timestamp": "1"},
    {"user_id": "u1", "item_id": "  ", "timestamp": "1"},
    {"user_id": "u" * 257, "item_id": "i1", "timestamp": "1"},
    {"user_id": "u\x001", "item_id": "i1", "timestamp": "1"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "yesterday"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "-5"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "inf"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "nan"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "2024-13-45T00:00:00Z"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "1", "weight": "NaN"},
    {"user_id": "u1", "item_id": "i1", "timestamp": "1", "weight": "heavy"},
]


def through_file(row: dict) -> float | None:
    try:
        return float(clean_events(pd.DataFrame([row], dtype=str), Path("events.csv"), 2)["timestamp"].iloc[0])
    except DataError:
        return None


def through_feedback(row: dict) -> float | None:
    try:
        return parse_event(row, now=1_800_000_000.0).timestamp
    except RowError:
        return None


@pytest.mark.parametrize("row", VALID + INVALID, ids=lambda row: repr(row)[:60])
def test_files_and_feedback_agree(row):
    expected_valid = row in VALID
    from_file, from_feedback = through_file(row), through_feedback(row)
    assert (from_file is not None) == expected_valid
    assert (from_feedback is not None) == expected_valid
    assert from_file == from_feedback


def test_iso_utc_timestamp_is_parsed_the_same_everywhere():
    row = {"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T12:00:00Z"}
    assert through_file(row) == through_feedback(row) == 1714564800.0


def test_feedback_without_timestamp_gets_now():
    assert parse_event({"user_id": "u1", "item_id": "i1"}, now=1_800_000_000.0).timestamp == 1_800_000_000.0


def test_a_rule_keeps_its_number_whether_or_not_other_optional_columns_are_there():
    from bigrec_cli.events import validate_events

    rows = {"user_id": ["u"], "item_id": ["i"], "timestamp": ["1"], "rating": ["x"]}
    alone = validate_events(pd.DataFrame(rows)).failures
    beside = validate_events(pd.DataFrame({**rows, "weight": ["y"]})).failures
    rating_rule = [failure.rule for failure in beside if failure.summary.startswith("rating")]
    weight_rule = [failure.rule for failure in beside if failure.summary.startswith("weight")]
    assert [failure.rule for failure in alone] == rating_rule, "batches with and without a weight column agree"
    assert weight_rule[0] < rating_rule[0], "weight is checked before rating"
