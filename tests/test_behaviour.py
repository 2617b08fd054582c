"""Behaviour beyond a click: every event kept, repeats allowed or excluded, negative events never targets."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sparse

from bigrec_cli.data import order_and_deduplicate, split_by_time
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
    events = pd.read_parquet(project / "data" / "events.parquet")
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
