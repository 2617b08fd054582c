"""`train` reads its data shard by shard: the result equals the whole-table path, feedback and new users included."""

import numpy as np

from bigrec_cli.data import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VALID,
    event_files,
    event_policy,
    fold_feedback,
    load_events,
    preprocess,
)
from bigrec_cli.feedback import FeedbackStore
from bigrec_cli.project import ProjectDir
from bigrec_cli.protocol import (
    Windows,
    event_vocabulary,
    holdout_cases,
    indexed_events,
    loss_weights,
    training_windows,
    user_sequences,
)
from bigrec_cli.sequences import read_training_data
from bigrec_cli.vectors import load_item_vectors
from tests.conftest import SAMPLE, invoke

WEIGHTS = {"purchase": 3.0, "click": 1.0}


def whole_table(project: ProjectDir, item_ids: list[str], feedback):
    """What train computed before it streamed: every event in one pandas table."""
    policy = event_policy(project)
    raw = fold_feedback(load_events(project), feedback, policy)
    types = event_vocabulary(raw[raw["split"] != SPLIT_TEST], policy.negative_events)
    events = indexed_events(raw, item_ids, types)
    events = events.assign(loss_weight=loss_weights(events, WEIGHTS, "log", policy.negative_events))
    return types, events


def test_shards_give_what_one_table_gives(trained_copy):
    # several shards: preprocess again with small shards, then new users and events through the feedback store
    root = ProjectDir(trained_copy)
    preprocess(root, events_path=SAMPLE / "events.csv", items_path=SAMPLE / "items.csv", shard_events=1_500)
    invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv"))
    rows = "user_id,item_id,timestamp\n" + "".join(f"brandnew,i000{n},{1800000000 + n}\n" for n in range(3, 8))
    assert invoke("ingest-feedback", "--project-dir", str(trained_copy), "-", input=rows).exit_code == 0
    project = ProjectDir(trained_copy).pinned()
    assert len(event_files(project)) > 1
    item_ids, _ = load_item_vectors(project.item_vectors_path)
    feedback = FeedbackStore(project.feedback_db).events_frame()
    types, events = whole_table(project, item_ids, feedback)
    policy = event_policy(project)
    data = read_training_data(project, item_ids, policy, event_weights=WEIGHTS, weight_scale="log", feedback=feedback)
    assert data.event_types == types
    sequences = user_sequences(events, (SPLIT_TRAIN,))
    assert "brandnew" in sequences and list(data.sequences) == list(sequences)
    assert all(np.array_equal(data.sequences[user], sequences[user]) for user in sequences)
    weights = user_sequences(events, (SPLIT_TRAIN,), column="loss_weight")
    assert all(np.allclose(data.weights[user], weights[user]) for user in weights)
    seen = user_sequences(events, (SPLIT_TRAIN, SPLIT_VALID))
    assert list(data.seen) == list(seen) and all(np.array_equal(data.seen[user], seen[user]) for user in seen)
    cases = holdout_cases(events, SPLIT_VALID)
    assert data.cases.user_ids == cases.user_ids and np.array_equal(data.cases.targets, cases.targets)
    assert all(np.array_equal(a, b) for a, b in zip(data.cases.histories, cases.histories))
    assert all(np.array_equal(a, b) for a, b in zip(data.cases.times, cases.times))
    # each history step's time is its event's: the users' training events, in order
    stamps = user_sequences(events, (SPLIT_TRAIN,), column="timestamp")
    assert all(np.array_equal(times, stamps[user]) for user, times in zip(cases.user_ids, cases.times))
    assert all(len(times) == len(history) for times, history in zip(cases.times, cases.histories))
    counts = np.bincount(events.loc[events["split"] == SPLIT_TRAIN, "index"], minlength=len(item_ids) + 1)
    assert np.array_equal(data.train_counts, counts)


def test_windows_are_cut_per_batch_as_they_were_all_at_once():
    sequences = {"a": np.arange(1, 12), "b": np.array([5, 6]), "c": np.array([7])}
    weights = {"a": np.r_[np.ones(10), 0.0], "b": np.array([1.0, 2.0]), "c": np.array([1.0])}
    windows = Windows(sequences, max_len=4, weights=weights)
    # a: 10 positions in windows ending at 10, 6, 2; b: 1; c: none
    assert len(windows) == 4
    inputs, targets, target_weights = training_windows(sequences, 4, weights)
    np.testing.assert_array_equal(inputs[0], [7, 8, 9, 10])
    np.testing.assert_array_equal(targets[0], [8, 9, 10, 0])  # the last target weighs 0: read, never predicted
    np.testing.assert_array_equal(inputs[2], [0, 0, 1, 2])
    np.testing.assert_array_equal(targets[2], [0, 0, 2, 3])
    np.testing.assert_array_equal(target_weights[3], [0, 0, 0, 2])
    again = windows.rows(np.array([3, 0]))
    np.testing.assert_array_equal(again[0], inputs[[3, 0]])
    np.testing.assert_array_equal(windows.target_counts(11), np.bincount(targets[targets > 0], minlength=12))
