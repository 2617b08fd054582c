"""Behaviour beyond a click: every event kept, repeats allowed or excluded, negative events never targets."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sparse

from bigrec_cli.data import order_and_deduplicate, split_by_time
from bigrec_cli.project import ProjectDir
from tests.conftest import SAMPLE, invoke


def test_exact_duplicates_go_and_repeats_stay():
    events = pd.DataFrame(
        {
            "user_id": ["u"] * 5,
            "item_id": ["a", "a", "a", "b", "a"],
            "timestamp": [1.0, 1.0, 1.0, 2.0, 3.0],
            "event": ["click", "click", "purchase", "click", "purchase"],
        }
    )
    kept, dropped = order_and_deduplicate(events, "exact")
    assert dropped == 1
    pairs = list(zip(kept["item_id"], kept["event"]))
    assert sorted(pairs[:2]) == [("a", "click"), ("a", "purchase")], "ties in time: content order, not row order"
    assert len(kept) == 4 and kept["item_id"].tolist()[-2:] == ["b", "a"]
    latest, dropped_latest = order_and_deduplicate(events, "latest")
    assert latest["item_id"].tolist() == ["b", "a"] and dropped_latest == 3


def test_negative_events_are_never_targets():
    events = pd.DataFrame(
        {
            "user_id": ["u"] * 5,
            "item_id": list("abcde"),
            "timestamp": [1, 2, 3, 4, 5],
            "event": ["purchase", "purchase", "purchase", "purchase", "cancel"],
        }
    )
    assert split_by_time(events, ("cancel",)).tolist() == ["train", "train", "valid", "test", "negative"]


def test_personal_frequency_by_hand():
    from bigrec_cli.baselines import PersonalFrequency

    counts = sparse.csr_matrix(np.array([[3, 0, 1], [0, 1, 0]], dtype="float32"))
    model = PersonalFrequency().fit(counts)
    # popularity (users who had each item): 1, 1, 1 -> 1/2 each; the user's own counts dominate
    np.testing.assert_allclose(model.score(counts), [[3.5, 0.5, 1.5], [0.5, 1.5, 0.5]])


def shop_project(project, tmp_path, *extra):
    events = pd.read_csv(SAMPLE / "events.csv")
    purchases = events[events["event"] == "purchase"].copy()
    repeats = purchases.assign(timestamp=purchases["timestamp"] + 86_400 * 3)  # everyone buys again 3 days later
    path = tmp_path / "shop.csv"
    pd.concat([events, repeats]).to_csv(path, index=False)
    args = ["preprocess", "--events", str(path), "--items", str(SAMPLE / "items.csv"), "--json", *extra]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), len(events) + len(repeats)


@pytest.mark.slow
def test_repeats_are_kept_end_to_end(project, tmp_path):
    summary, total = shop_project(project, tmp_path, "--repeats", "allow")
    assert summary["num_events"] == total and summary["num_duplicates"] == 0
    events = pd.read_parquet(ProjectDir(project).events_path)
    assert events.duplicated(["user_id", "item_id"]).sum() > 1000
    assert invoke("extract").exit_code == 0
    assert invoke("train", "--epochs", "1").exit_code == 0
    report = json.loads(invoke("evaluate", "--json").stdout)
    assert report["protocol"]["repeats"] == "allow" and "history items allowed" in report["protocol"]["split"]
    assert "personal_frequency" in report["baselines"]
    user = events["user_id"].iloc[0]
    history = set(events.loc[events["user_id"] == user, "item_id"])
    answer = json.loads(invoke("recommend", "--user", user, "--k", "400", "--json").stdout)
    assert history & {item["item_id"] for item in answer["items"]}, "history items may come back under allow"


@pytest.mark.slow
def test_a_cancelled_item_is_not_recommended_right_back(project, tmp_path):
    shop_project(project, tmp_path, "--repeats", "allow")
    assert invoke("extract").exit_code == 0
    assert invoke("train", "--epochs", "1").exit_code == 0
    user = "u0007"
    top = json.loads(invoke("recommend", "--user", user, "--json").stdout)["items"][0]["item_id"]
    cancel = tmp_path / "cancel.csv"
    cancel.write_text(f"user_id,item_id,event\n{user},{top},cancel\n")
    assert invoke("ingest-feedback", str(cancel)).exit_code == 0
    for flag in ("--include-seen", "--exclude-seen"):
        answer = json.loads(invoke("recommend", "--user", user, "--k", "50", flag, "--json").stdout)
        assert top not in {item["item_id"] for item in answer["items"]}
    report = json.loads(invoke("evaluate", "--json").stdout)
    assert report["protocol"]["negative_events"] == ["cancel", "return", "dislike"]


def test_a_purchase_outweighs_a_click_in_the_loss():
    """Two positions with one sampled negative each, a click (weight 1) and a purchase of 2 units (weight 3 × (1 +
    ln 2) with the default event weights and log scale). Values computed by hand."""
    from bigrec_cli.backend import tf
    from bigrec_cli.config import DEFAULT_EVENT_WEIGHTS, parse_pairs
    from bigrec_cli.model import sampled_bce
    from bigrec_cli.protocol import loss_weights

    events = pd.DataFrame({"event": ["click", "purchase", "cancel"], "weight": [1.0, 2.0, 1.0]})
    weights = loss_weights(events, parse_pairs(DEFAULT_EVENT_WEIGHTS, "", number=True), "log", ("cancel",))
    np.testing.assert_allclose(weights, [1.0, 3.0 * (1.0 + np.log(2.0)), 0.0])  # 1, 5.0794, 0
    # position 1: positive logit 0, negative logit 0 -> 2 ln 2 = 1.386294
    # position 2: positive logit 2, negative logit -1 -> ln(1 + e^-2) + ln(1 + e^-1) = 0.126928 + 0.313262 = 0.440190
    logits = tf.constant([[[0.0, 0.0], [2.0, -1.0]]])
    targets, negatives = tf.constant([[5, 6]]), tf.constant([[[7], [8]]])
    plain = sampled_bce(logits, targets, negatives, 1.0).numpy()
    assert plain == pytest.approx((1.386294 + 0.440190) / 2, abs=1e-5)  # 0.913242
    weighted = sampled_bce(logits, targets, negatives, 1.0, tf.constant([[1.0, 3.0]])).numpy()
    assert weighted == pytest.approx((1 * 1.386294 + 3 * 0.440190) / 4, abs=1e-5)  # 0.676716: the purchase counts 3×
    assert sampled_bce(logits, targets, negatives, 1.0, tf.constant([[1.0, 0.0]])).numpy() == pytest.approx(1.386294)


def test_event_map_and_min_rating_reach_both_doors(project, tmp_path):
    rated = tmp_path / "rated.csv"
    rows = ["user_id,item_id,timestamp,event,rating"]
    for user in ("u1", "u2"):
        for step, (item, rating) in enumerate([("i0001", 5), ("i0002", 2), ("i0003", 4), ("i0004", 5), ("i0005", 3)]):
            rows.append(f"{user},{item},{1_700_000_000 + step},view,{rating}")
    rated.write_text("\n".join(rows) + "\n")
    items = str(SAMPLE / "items.csv")
    args = ["preprocess", "--events", str(rated), "--items", items, "--event-map", "view=click", "--min-rating", "4"]
    assert invoke(*args).exit_code == 0
    events = pd.read_parquet(ProjectDir(project).events_path)
    low = events["rating"] < 4
    assert set(events.loc[low, "event"]) == {"dislike"} and set(events.loc[~low, "event"]) == {"click"}
    assert set(events.loc[low, "split"]) == {"negative"}, "a low rating is negative behaviour, never a target"
    meta = json.loads((ProjectDir(project).data_meta_path).read_text())
    assert meta["event_map"] == {"view": "click"} and meta["min_rating"] == 4 and "dislike" in meta["negative_events"]
    feedback = tmp_path / "feedback.csv"
    feedback.write_text("user_id,item_id,event,rating\nu1,i0006,view,5\nu1,i0007,view,1\n")
    assert invoke("ingest-feedback", str(feedback)).exit_code == 0
    import sqlite3

    with sqlite3.connect(project / "feedback.sqlite3") as connection:
        stored = dict(connection.execute("SELECT item_id, event FROM events").fetchall())
    assert stored == {"i0006": "click", "i0007": "dislike"}, "the feedback door maps types the same way"
    no_rating = invoke("preprocess", "--events", str(SAMPLE / "events.csv"), "--items", items, "--min-rating", "4")
    assert no_rating.exit_code == 1 and "no rating column" in no_rating.stderr
    bad = invoke("preprocess", "--events", str(rated), "--items", items, "--event-map", "view")
    assert bad.exit_code == 1 and "--event-map" in bad.stderr


def test_event_types_are_input_to_the_model(trained_project):
    """The trained run knows the sample's event types, and the same items read as purchases or as views give
    different scores: the type is input, not decoration."""
    from bigrec_cli.artifacts import load_run, run_scorer
    from bigrec_cli.project import ProjectDir

    run = load_run(ProjectDir(trained_project).current_run_dir())
    assert run.event_types[0] == "view" and "purchase" in run.event_types
    scorer = run_scorer(run)
    history = ["i0001", "i0002", "i0003"]
    as_views = scorer.logits(scorer.encode_sequences([history], 10, [["view"] * 3]))
    as_purchases = scorer.logits(scorer.encode_sequences([history], 10, [["purchase"] * 3]))
    assert np.abs(as_views - as_purchases).max() > 1e-4
    unknown = scorer.logits(scorer.encode_sequences([history], 10, [["wishlist"] * 3]))
    np.testing.assert_array_equal(unknown, as_views)  # a type the run never saw reads as its first type


def test_negative_events_are_read_in_the_sequence_but_never_after_the_held_out_event():
    from bigrec_cli.events import TYPE_STRIDE
    from bigrec_cli.protocol import event_vocabulary, holdout_cases, indexed_events, training_windows, user_sequences

    events = pd.DataFrame(
        {
            "user_id": ["u"] * 7,
            "item_id": ["a", "b", "b", "c", "d", "e", "e"],
            "timestamp": [1, 2, 3, 4, 5, 6, 7],
            "event": ["purchase", "purchase", "cancel", "purchase", "purchase", "purchase", "cancel"],
        }
    )
    events["split"] = split_by_time(events, ("cancel",))
    vocabulary = event_vocabulary(events, ("cancel",))
    assert vocabulary == ["purchase", "cancel"]
    indexed = indexed_events(events, list("abcde"), vocabulary)
    cancel = TYPE_STRIDE  # type 1
    assert user_sequences(indexed, ("train",))["u"].tolist() == [1, 2, 2 + cancel, 3]
    inputs, targets, weights = training_windows(user_sequences(indexed, ("train",)), 4, {"u": np.array([1, 1, 0, 1.0])})
    assert inputs.tolist() == [[0, 1, 2, 2 + cancel]] and targets.tolist() == [[0, 2, 0, 3]], "a cancel is no target"
    test = holdout_cases(indexed, "test")
    assert test.histories[0].tolist() == [1, 2, 2 + cancel, 3, 4], "the cancel after the test purchase is not history"
    untyped = indexed_events(events, list("abcde"))  # a run from before event types never read negatives
    assert user_sequences(untyped, ("train",))["u"].tolist() == [1, 2, 3]
