"""The two ways `validate_events` checks a batch agree: value by value in plain Python (small batches, such as one
`POST /feedback`) and column by column with pandas (the reference). Same typed values, same failures, rule numbers,
rows and messages, for well-formed and malformed rows alike."""

import math
from unittest import mock

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigrec_cli import events
from bigrec_cli.data import EventPolicy
from bigrec_cli.events import EventCheck, frame_from_objects, validate_events
from bigrec_cli.feedback import Row, parse_event, parse_rows

NOW = 1_800_000_000.0


def by_values(frame: pd.DataFrame, default_timestamp: float | None) -> EventCheck:
    texts = events._plain_texts(frame)
    assert texts is not None, "a frame of text cells can be checked value by value"
    return events._validate_values(texts, len(frame), default_timestamp)


def same_value(left, right) -> bool:
    """Equal, with NaN equal to NaN and -0.0 unequal to 0.0."""
    if isinstance(left, float) and isinstance(right, float):
        both_nan = math.isnan(left) and math.isnan(right)
        return both_nan or (left == right and math.copysign(1, left) == math.copysign(1, right))
    return type(left) is type(right) and left == right


def assert_same_values(left: list, right: list) -> None:
    assert len(left) == len(right) and all(map(same_value, left, right)), (left, right)


def assert_same_check(fast: EventCheck, reference: EventCheck) -> None:
    pd.testing.assert_frame_equal(fast.events, reference.events, check_exact=True)
    for column in reference.events.columns:
        assert_same_values(fast.events[column].tolist(), reference.events[column].tolist())
        assert_same_values(fast.values(column), reference.events[column].tolist())
        assert_same_values(reference.values(column), reference.events[column].tolist())
    assert [(f.summary, f.hint, f.reasons, f.rule) for f in fast.failures] == [
        (f.summary, f.hint, f.reasons, f.rule) for f in reference.failures
    ]
    for fast_failure, reference_failure in zip(fast.failures, reference.failures):
        assert fast_failure.rows.dtype == reference_failure.rows.dtype
        assert fast_failure.rows.tolist() == reference_failure.rows.tolist()
    assert fast.row_reasons() == reference.row_reasons()


# Timestamps in every form the validator reads or refuses: Unix seconds, ISO-8601 dates with and without time,
# fractions of every length, zones in every spelling, impossible dates, years outside pandas' nanosecond range.
# Not "now" and "today": pandas reads them as the current time, which two checks read microseconds apart.
DIGITS = "0123456789"
two_digits = st.integers(0, 99).map(lambda value: f"{value:02d}")


@st.composite
def iso_dates(draw) -> str:
    year = draw(st.one_of(st.integers(1960, 2100), st.integers(0, 9999), st.sampled_from([1677, 1678, 2261, 2262])))
    text = f"{year:04d}-{draw(st.one_of(st.integers(1, 12).map('{:02d}'.format), two_digits))}"
    text += f"-{draw(st.one_of(st.integers(1, 31).map('{:02d}'.format), two_digits))}"
    parts = draw(st.integers(0, 4))
    if parts >= 1:
        text += draw(st.sampled_from(["T", " ", "t"])) + draw(
            st.one_of(st.integers(0, 23).map("{:02d}".format), two_digits)
        )
        text += ":" + draw(st.one_of(st.integers(0, 59).map("{:02d}".format), two_digits))
    if parts >= 2:
        text += ":" + draw(st.one_of(st.integers(0, 59).map("{:02d}".format), st.sampled_from(["60", "99"])))
    if parts >= 3:
        text += "." + draw(st.text(DIGITS, max_size=10))
    if parts >= 1 or draw(st.booleans()):
        zones = st.sampled_from(["", "Z", "z", "+00:00", "-05:30", "+0200", "+02", "+23:59", "+24:00", "+02:60"])
        signed = st.tuples(st.sampled_from("+-"), st.integers(0, 30), st.integers(0, 70))
        text += draw(st.one_of(zones, signed.map(lambda zone: f"{zone[0]}{zone[1]:02d}:{zone[2]:02d}")))
    return text


decimals = st.tuples(
    st.sampled_from(["", "+", "-"]),
    st.text(DIGITS, min_size=1, max_size=20),
    st.sampled_from(["", "."]),
    st.text(DIGITS, max_size=20),
    st.sampled_from(["", "e5", "E-3", "e+400", "e-400", "e"]),
).map("".join)
long_decimals = st.tuples(
    st.sampled_from(["", "+", "-"]), st.integers(0, 10**19), st.integers(0, 10**19), st.integers(-330, 330)
).map(lambda parts: f"{parts[0]}{parts[1]}.{parts[2]}" + (f"e{parts[3]}" if parts[3] % 2 else ""))
numbers = st.one_of(
    decimals,
    long_decimals,
    st.integers(-(10**20), 10**20).map(str),
    st.floats().map(repr),
    st.sampled_from(
        ["-0", "+0", "0", "-0.0", "inf", "-Infinity", "iNf", "nan", "-NaN", "1_000", "１２", "0x10", "1,5"]
    ),
)
timestamps = st.one_of(
    numbers,
    iso_dates(),
    st.sampled_from(["1700000000", "2024-05-01T12:00:00Z", "2024-05-01", "yesterday", "NaT", "None", "", "  "]),
    st.text(max_size=12).filter(lambda text: text.strip().lower() not in ("now", "today")),
)
ids = st.one_of(
    st.text(max_size=10),
    st.text(max_size=6).map(lambda text: f" \t{text}\u3000"),
    st.sampled_from(["", " ", "u\x001", "u" * 256, "u" * 257, "é" * 257, "\x1cu\x1f"]),
)
texts = st.one_of(st.text(max_size=20), st.just("x" * 20_001))


def cell(values: st.SearchStrategy) -> st.SearchStrategy:
    """A JSON value: mostly the column's kind of text, sometimes a number, a boolean, a list or null."""
    others = st.one_of(st.none(), st.integers(-5, 10**30), st.floats(), st.booleans(), st.just([1]), st.just({}))
    return st.one_of(values, values, others)


rows = st.fixed_dictionaries(
    {},
    optional={
        "user_id": cell(ids),
        "item_id": cell(ids),
        "timestamp": cell(timestamps),
        "event": cell(st.one_of(ids, st.sampled_from(["click", "purchase", "view", "unknown-type"]))),
        "weight": cell(numbers),
        "rating": cell(numbers),
        "event_id": cell(ids),
        "title": cell(texts),
        "text": cell(texts),
    },
)
batches = st.lists(st.one_of(rows, st.none()), max_size=6)


@given(batches, st.sampled_from([NOW, None]))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_feedback_batches_check_alike_both_ways(objects, default_timestamp):
    frame, _ = frame_from_objects(objects)
    assert_same_check(by_values(frame, default_timestamp), events._validate_frame(frame, default_timestamp))


@given(st.lists(st.tuples(ids, ids, timestamps, numbers), max_size=6))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_file_batches_check_alike_both_ways(cells):
    """A CSV read as text (`dtype=str`): no default timestamp, empty cells are errors."""
    frame = pd.DataFrame(cells, columns=["user_id", "item_id", "timestamp", "weight"], dtype=str)
    assert_same_check(by_values(frame, None), events._validate_frame(frame, None))


@given(st.lists(st.one_of(rows, st.none()), min_size=1, max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_feedback_rows_are_accepted_and_rejected_alike_both_ways(objects):
    """Through `parse_rows` (the door of `POST /feedback`), with an event map and a rating threshold."""
    batch = [Row(line, values, repr(values)) for line, values in enumerate(objects, start=1)]
    # with an event map and a rating threshold (typed through a frame), and with nothing to map (plain values)
    for policy in (EventPolicy(event_map={"view": "click"}, min_rating=3.0), EventPolicy(), None):
        fast = parse_rows(batch, NOW, policy)
        with mock.patch.object(events, "FAST_PATH_MAX_ROWS", 0):
            reference = parse_rows(batch, NOW, policy)
        assert fast[1] == reference[1]
        assert [parsed for _, parsed in fast[0]] == [parsed for _, parsed in reference[0]]


@given(st.lists(timestamps, min_size=1, max_size=4))
@settings(max_examples=500, deadline=None)
def test_timestamps_are_read_alike_both_ways(column):
    seconds, bad = events._plain_timestamps([text.strip() for text in column])
    reference_seconds, reference_bad = events.parse_timestamps(pd.Series(column, dtype=str))
    assert_same_values(seconds, reference_seconds.tolist())
    assert bad == reference_bad.tolist()


@given(st.lists(numbers, min_size=1, max_size=4))
@settings(max_examples=500, deadline=None)
def test_numbers_are_read_alike_both_ways(column):
    reference = events._to_numbers(pd.Series(column, dtype=str).str.strip())
    assert_same_values(events._plain_numbers([text.strip() for text in column]), reference.tolist())


# Values the value-by-value path leaves to pandas, because pandas reads them (or, through them, their whole batch)
# its own way; each alone and beside ordinary values.
ODD_VALUES = [
    "-0",  # pandas reads a column of integers as int64, which has no -0.0
    "+31424213.1259128949",  # after "+", pandas reads some decimals one unit in the last place off
    "+066e99",
    "2024-05-01T12:00:00.123456789Z",  # nanoseconds: pandas reads the batch at that resolution
    "2300-01-01",  # past 2262: pandas reads the batch another way
    "1677-09-21T00:12:44Z",
    "2262-04-11T23:47:16Z",
    "1_000",
    "１２",
    "nan",
    "-nan",
    "NaT",
    "2024-02-30",
    "2024-05-01T24:00:00",
    "2024-06-30T23:59:60Z",
    "2024-05-01T12:00+02",
    "2024-05-01t12:00:00Z",  # pandas refuses lower case
    "2024-05-01T12:00:00z",
    "0001-01-01",
    "10000-01-01",
    "2024-05-01T12:00:00.",
    "2024-05-01T12:00:00,5",
]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_values_only_pandas_can_read_are_left_to_pandas(value):
    for column in ([value], [value, "5"], [value, "1700000000.25", "2024-05-01T12:00:00.5+02:00"]):
        frame = pd.DataFrame({"user_id": "u", "item_id": "i", "timestamp": column, "weight": column}, dtype=str)
        for default_timestamp in (None, NOW):
            assert_same_check(by_values(frame, default_timestamp), events._validate_frame(frame, default_timestamp))


def test_small_batches_are_checked_without_pandas_operations():
    one_event = [{"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T12:00:00Z"}]
    two_events = [
        {"user_id": "u1", "item_id": "i1", "timestamp": "1714564800.5", "weight": "2", "event": "click"},
        {"user_id": "u2", "item_id": "i2", "rating": "4"},
    ]
    with (
        mock.patch.object(events, "_validate_frame", side_effect=AssertionError("the pandas path ran")),
        mock.patch.object(events.pd, "to_numeric", side_effect=AssertionError("pandas parsed numbers")),
        mock.patch.object(events.pd, "to_datetime", side_effect=AssertionError("pandas parsed dates")),
    ):
        check = validate_events(frame_from_objects(one_event)[0], default_timestamp=NOW)
        assert check.values("timestamp") == [1714564800.0]
        assert check.row_reasons() == [""]
        check = validate_events(frame_from_objects(two_events)[0], default_timestamp=NOW)
        assert check.values("timestamp") == [1714564800.5, NOW]
        assert check.values("weight") == [2.0, 1.0]
        assert check.row_reasons() == ["", ""]
        assert parse_event({"user_id": "u1", "item_id": "i1", "weight": "2"}, now=NOW).weight == 2.0
    # a POST of one event builds no frame at all when the project maps no event types
    with (
        mock.patch.object(events, "frame_of_cells", side_effect=AssertionError("a frame of the cells was built")),
        mock.patch.object(events.TypedValues, "frame", side_effect=AssertionError("a frame of the values was built")),
    ):
        accepted, rejected = parse_rows([Row(1, one_event[0], "")], NOW, EventPolicy())
        assert rejected == [] and accepted[0][1].timestamp == 1714564800.0


def test_large_batches_and_typed_columns_keep_the_pandas_path():
    large = pd.DataFrame({"user_id": "u", "item_id": "i", "timestamp": ["1"] * events.FAST_PATH_MAX_ROWS})
    parquet_like = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [1_700_000_000]})
    with mock.patch.object(events, "_validate_values", side_effect=AssertionError("the value path ran")):
        assert validate_events(large).failures == []
        assert validate_events(parquet_like).values("timestamp") == [1_700_000_000.0]
