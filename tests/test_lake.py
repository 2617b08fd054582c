"""Streaming preprocess: the user-hash shards, the same events as the in-memory pandas steps, data-lake inputs
whose errors name their file and line whatever the batch size, and projects written before shards."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bigrec_cli.data import (
    EventPolicy,
    clean_events,
    event_files,
    fingerprint_frames,
    load_events,
    load_items,
    order_and_deduplicate,
    preprocess,
    split_by_time,
)
from bigrec_cli.errors import DataError
from bigrec_cli.forget import forget_user
from bigrec_cli.lake import user_hash
from bigrec_cli.project import DATA_CURRENT_FILE, ProjectDir
from tests.conftest import SAMPLE


def messy_events(duplicate_weight: str) -> pd.DataFrame:
    """The sample events with many ties in time (timestamps to the day), exact duplicates (of `duplicate_weight`),
    repeated (user, item) pairs at other times and negative events: everything the order and the split decide."""
    events = pd.read_csv(SAMPLE / "events.csv", dtype=str)
    events["timestamp"] = (events["timestamp"].astype(float) // 86400 * 86400).astype(int).astype(str)
    events["weight"] = "1"
    rng = np.random.default_rng(0)
    duplicates = events.sample(n=300, random_state=1).assign(weight=duplicate_weight)
    repeats = events.sample(n=300, random_state=2)
    repeats["timestamp"] = (repeats["timestamp"].astype(int) + 3_600).astype(str)
    events = pd.concat([events, duplicates, repeats], ignore_index=True)
    events.loc[rng.random(len(events)) < 0.05, "event"] = "cancel"
    return events


def reference(events_csv: Path, dedupe: str) -> pd.DataFrame:
    """What preprocess wrote before it streamed: the whole file in pandas, then the same pandas steps."""
    items = pd.read_csv(SAMPLE / "items.csv", dtype=str)
    events = clean_events(pd.read_csv(events_csv, dtype=str, keep_default_na=False), events_csv, 2)
    events, _ = order_and_deduplicate(events, dedupe)
    events["split"] = split_by_time(events, EventPolicy().negative_events)
    index = {item_id: position + 1 for position, item_id in enumerate(sorted(items["item_id"]))}
    return events.assign(item_index=events["item_id"].map(index).astype("int64"))


def run(root: Path, events: Path, **options) -> ProjectDir:
    project = ProjectDir(root)
    preprocess(project, events_path=events, items_path=SAMPLE / "items.csv", **options)
    return project


@pytest.mark.parametrize("dedupe", ["exact", "latest"])
def test_streaming_gives_what_the_pandas_steps_give(tmp_path, dedupe):
    """Duplicates that differ in weight keep the later row of the input, as pandas' stable sort did: so each file
    is compared with the pandas steps on the same file, the shuffled one too."""
    events = messy_events(duplicate_weight="2")
    for name, frame in (("events", events), ("shuffled", events.sample(frac=1.0, random_state=3))):
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        project = run(tmp_path / name, path, policy=EventPolicy(dedupe=dedupe), batch_rows=1_000, shard_events=2_000)
        meta = json.loads(project.data_meta_path.read_text())
        assert meta["num_shards"] == 8 and len(event_files(project)) == 8
        streamed, expected = load_events(project), reference(path, dedupe)
        assert meta["num_duplicates"] == len(events) - len(expected) > 0 and meta["num_events"] == len(expected)
        assert (streamed["split"] == "negative").any() and (streamed["weight"] == 2).any()
        # Shards follow the hash, not the user order: by user, the events and their order within a user are equal.
        ordered = streamed.sort_values("user_id", kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(ordered, expected)
        assert meta["fingerprint"] == fingerprint_frames(streamed, load_items(project))


def test_row_order_of_a_sharded_input_changes_nothing(tmp_path):
    events = messy_events(duplicate_weight="1")
    original, shuffled = tmp_path / "events.csv", tmp_path / "shuffled.csv"
    events.to_csv(original, index=False)
    events.sample(frac=1.0, random_state=3).to_csv(shuffled, index=False)
    first = run(tmp_path / "a", original, batch_rows=1_000, shard_events=2_000)
    second = run(tmp_path / "b", shuffled, batch_rows=700, shard_events=2_000)
    pd.testing.assert_frame_equal(load_events(first), load_events(second))
    fingerprints = [json.loads(project.data_meta_path.read_text())["fingerprint"] for project in (first, second)]
    assert fingerprints[0] == fingerprints[1]


def test_every_user_lives_in_one_shard_and_every_shard_is_sorted(tmp_path):
    project = run(tmp_path / "project", SAMPLE / "events.csv", shard_events=1_500)
    num_shards = json.loads(project.data_meta_path.read_text())["num_shards"]
    shards = [pd.read_parquet(path) for path in event_files(project)]
    assert len(shards) == num_shards == 8 and all(len(shard) for shard in shards)
    for number, shard in enumerate(shards):
        assert (user_hash(shard["user_id"]) % num_shards == number).all()
        order = shard.sort_values(["user_id", "timestamp"], kind="stable").index
        assert (order == shard.index).all(), f"shard {number} is not sorted by user and time"
    users = pd.concat([shard["user_id"].drop_duplicates() for shard in shards])
    assert users.is_unique and len(users) == 300
    # pandas reads the folder as a whole, and the users stay contiguous in it (what the Recommender indexes)
    whole = pd.read_parquet(project.events_path)["user_id"]
    assert (whole.ne(whole.shift()).cumsum().groupby(whole).nunique() == 1).all()


def lake_with_a_bad_second_file(tmp_path: Path, second: str) -> Path:
    lake = tmp_path / "lake"
    (lake / "day=1").mkdir(parents=True)
    (lake / "day=2").mkdir()
    good = pd.read_csv(SAMPLE / "events.csv", dtype=str).head(50)
    good.to_parquet(lake / "day=1" / "part-0.parquet", index=False)
    (lake / "day=2" / "part-1.jsonl").write_text(second, encoding="utf-8")
    return lake


def jsonl(rows: list[tuple[str, str, str]]) -> str:
    return "".join(
        json.dumps({"user_id": user, "item_id": item, "timestamp": time}) + "\n" for user, item, time in rows
    )


@pytest.mark.parametrize("batch_rows", [2, 3, 1_000_000])
def test_an_error_in_the_second_file_of_a_lake_names_that_file_and_its_lines(tmp_path, batch_rows):
    """Batches of 2 or 3 rows split the bad lines across batches: the message is the whole file's, line by line."""
    rows = [("u1", "i0001", "1"), ("u1", "i0002", "x"), ("u1", "i0003", "3"), ("", "i0004", "4"), ("u2", "i0005", "y")]
    lake = lake_with_a_bad_second_file(tmp_path, jsonl(rows))
    with pytest.raises(DataError) as error:
        run(tmp_path / "project", lake, batch_rows=batch_rows)
    # empty user_id is checked before timestamps, so it is the error even where a batch before it has a bad time
    assert error.value.message == f"{lake / 'day=2' / 'part-1.jsonl'}: empty user_id at line 4"
    unknown = jsonl([("u1", "i0001", "1"), ("u1", "nope", "2"), ("u1", "i0002", "3"), ("u2", "nope", "4")])
    lake = lake_with_a_bad_second_file(tmp_path / "unknown", unknown)
    with pytest.raises(DataError) as error:
        run(tmp_path / "project", lake, batch_rows=batch_rows)
    assert error.value.message.startswith(f"{lake / 'day=2' / 'part-1.jsonl'}: item_id 'nope' has no entry in ")
    assert error.value.message.endswith(" at line 2, 4")
    assert not (tmp_path / "project").exists(), "a failed first preprocess leaves no folder behind"


def test_projects_with_one_events_file_still_load_and_forget(tmp_path):
    """The layout before shards: data/<version>/events.parquet, one file sorted by user and time."""
    project = run(tmp_path / "project", SAMPLE / "events.csv", shard_events=1_500)
    events = load_events(project)
    folder = project.data_dir
    for path in event_files(project):
        path.unlink()
    (folder / "events").rmdir()
    events = events.sort_values("user_id", kind="stable").reset_index(drop=True)
    events.to_parquet(folder / "events.parquet", index=False)
    assert project.events_path == folder / "events.parquet"
    pd.testing.assert_frame_equal(load_events(project), events)
    assert forget_user(project, "u0007").preprocessed_events > 0
    assert (tmp_path / "project" / "data" / DATA_CURRENT_FILE).exists()
    assert "u0007" not in set(load_events(ProjectDir(project.root))["user_id"])


def test_forgetting_a_user_rewrites_only_their_shard(tmp_path):
    project = run(tmp_path / "project", SAMPLE / "events.csv", shard_events=1_500)
    before = {path.name: path.read_bytes() for path in event_files(project)}
    removed = forget_user(project, "u0007").preprocessed_events
    after = ProjectDir(project.root)
    changed = [path.name for path in event_files(after) if path.read_bytes() != before[path.name]]
    assert len(changed) == 1 and removed > 0
    meta = json.loads(after.data_meta_path.read_text())
    events = load_events(after)
    assert meta["num_events"] == len(events) and meta["num_users"] == 299 and "u0007" not in set(events["user_id"])
    assert meta["fingerprint"] == fingerprint_frames(events, load_items(after))


@pytest.mark.parametrize(
    "values",
    [[0, 1_700_000_000, 2**62], [1.5, float("nan"), -3.0, float("inf"), 0.1, 1e30], [True, False], [-5, 7]],
)
def test_numeric_timestamps_validate_as_their_text(values):
    """Parquet and JSON timestamps that are numbers skip the text parse: the same seconds, failures and lines."""
    from bigrec_cli.events import validate_events

    frame = pd.DataFrame({"user_id": "u", "item_id": "i", "timestamp": values})
    numbers, text = validate_events(frame), validate_events(frame.astype({"timestamp": object}))
    assert np.array_equal(numbers.events["timestamp"], text.events["timestamp"], equal_nan=True)
    assert [(failure.summary, failure.rows.tolist()) for failure in numbers.failures] == [
        (failure.summary, failure.rows.tolist()) for failure in text.failures
    ]
