"""What an operator expects: forgetting a user, business rules, explanations, housekeeping, the item-item term."""

import json
import sqlite3
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sparse

from bigrec_cli.project import ProjectDir, read_json_lines
from tests.conftest import SAMPLE, invoke, zero_scorer_arrays


def answer(project, *args):
    result = invoke("recommend", "--project-dir", str(project), *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_forget_user_removes_every_trace_and_is_idempotent(trained_copy):
    invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv"))
    rejected = trained_copy / "bad.jsonl"
    rejected.write_text(json.dumps({"user_id": "u0007", "item_id": "nowhere"}) + "\n")
    assert invoke("ingest-feedback", "--project-dir", str(trained_copy), str(rejected)).exit_code == 2
    assert not answer(trained_copy, "--user", "u0007")["cold_start"]
    result = invoke("forget-user", "u0007", "--project-dir", str(trained_copy), "--json")
    assert result.exit_code == 0, result.stderr
    removed = json.loads(result.stdout)
    assert removed["preprocessed_events"] > 0 and removed["feedback_events"] == 5 and removed["rejected_rows"] == 1
    assert answer(trained_copy, "--user", "u0007")["cold_start"] is True
    events = pd.read_parquet(ProjectDir(trained_copy).events_path)
    assert "u0007" not in set(events["user_id"])
    kept = [path for path in (trained_copy / "data").rglob("*.parquet")]
    assert len(kept) == 2, "no earlier data version keeps the user's events"
    assert all("u0007" not in set(pd.read_parquet(path)["user_id"]) for path in kept if "events" in path.name)
    with sqlite3.connect(trained_copy / "feedback.sqlite3") as connection:
        assert connection.execute("SELECT COUNT(*) FROM events WHERE user_id = 'u0007'").fetchone()[0] == 0
    assert "u0007" not in (trained_copy / "feedback.rejects.jsonl").read_text()
    again = json.loads(invoke("forget-user", "u0007", "--project-dir", str(trained_copy), "--json").stdout)
    assert (again["preprocessed_events"], again["feedback_events"], again["rejected_rows"]) == (0, 0, 0)
    log = read_json_lines(trained_copy / "forget.log.jsonl")
    assert len(log) == 2 and "u0007" not in json.dumps(log)


def test_where_filters_candidates_and_keeps_k(trained_project):
    topics = pd.read_csv(SAMPLE / "items.csv").set_index("item_id")["topic"]
    jazz = answer(trained_project, "--user", "u0001", "--k", "10", "--where", "topic=jazz")
    assert len(jazz["items"]) == 10 and {topics[item["item_id"]] for item in jazz["items"]} == {"jazz"}
    both = answer(trained_project, "--user", "u0001", "--where", "topic!=jazz", "--where", "topic!=space")
    assert not {topics[item["item_id"]] for item in both["items"]} & {"jazz", "space"}
    cold = answer(trained_project, "--user", "nobody", "--where", "topic=jazz")
    assert cold["cold_start"] and {topics[item["item_id"]] for item in cold["items"]} == {"jazz"}
    first = answer(trained_project, "--user", "u0001")["items"][0]["item_id"]
    assert first not in {
        item["item_id"] for item in answer(trained_project, "--user", "u0001", "--exclude", first)["items"]
    }
    bad = invoke("recommend", "--project-dir", str(trained_project), "--user", "u0001", "--where", "colour=red")
    assert bad.exit_code == 1 and "no attribute 'colour'" in bad.stderr and "topic" in bad.stderr


def test_explain_names_history_items_by_occlusion(trained_project):
    from bigrec_cli.recommend import Recommender

    recommender = Recommender(ProjectDir(trained_project))
    explained = recommender.recommend("u0001", k=3, explain=True)
    history = recommender.sequences(["u0001"])[0]
    sequences = recommender.encode([history])
    full = recommender.scorer.logits(sequences)[0]
    for item in explained["items"]:
        assert item["because"], "a recommended item owes its score to some history item"
        reason = item["because"][0]
        without = recommender.scorer.logits(
            recommender.encode([[step for step in history if step[0] != reason["item_id"]]])
        )[0]
        column = recommender.scorer.index_of[item["item_id"]] - 1
        assert reason["contribution"] == pytest.approx(full[column] - without[column], rel=1e-4, abs=1e-5)
    table = invoke("recommend", "--project-dir", str(trained_project), "--user", "u0001", "--k", "3", "--explain")
    assert table.exit_code == 0 and "because of" in table.stdout


def test_runs_prune_keeps_current_and_the_rollback_target(trained_copy):
    project = ProjectDir(trained_copy)
    for seed in (2, 3, 4):
        assert invoke("train", "--project-dir", str(trained_copy), "--epochs", "1", "--seed", str(seed)).exit_code == 0
    runs = [
        row["run_id"] for row in json.loads(invoke("runs", "list", "--project-dir", str(trained_copy), "--json").stdout)
    ]
    assert invoke("runs", "promote", runs[0], "--project-dir", str(trained_copy)).exit_code == 0
    result = json.loads(invoke("runs", "prune", "--keep", "1", "--project-dir", str(trained_copy), "--json").stdout)
    left = {
        row["run_id"] for row in json.loads(invoke("runs", "list", "--project-dir", str(trained_copy), "--json").stdout)
    }
    assert project.current_run_id() == runs[0] and runs[0] in left
    assert runs[3] in left, "the run a rollback returns to stays"
    assert set(result["removed"]) == {runs[1], runs[2]}


def test_retrain_with_nothing_new_does_nothing_unless_forced(trained_copy):
    result = invoke("retrain", "--project-dir", str(trained_copy), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["decision"] == "nothing-new" and "nothing new" in result.stderr
    forced = invoke("retrain", "--project-dir", str(trained_copy), "--force", "--epochs", "1", "--tolerance", "1")
    assert forced.exit_code == 0, forced.stderr


def test_item_item_term_by_hand():
    from bigrec_cli.itemitem import ItemItem

    matrix = sparse.csr_matrix(np.array([[0, 0, 0, 0], [0, 0, 2, 1], [0, 1, 0, 0], [0, 0, 3, 0]], dtype="float32"))
    term = ItemItem(matrix, alpha=0.5, method="test")
    sequences = np.array([[0, 1, 3], [0, 0, 2], [1, 1, 0]])  # a repeated item counts once
    expected = 0.5 * np.array([[0, 5, 1], [1, 0, 0], [0, 2, 1]], dtype="float32")
    np.testing.assert_allclose(term.scores(sequences), expected)
    grown = term.grow(6)
    assert grown.matrix.shape == (6, 6) and grown.scores(np.array([[0, 5, 1]])).tolist() == [[0, 1, 0.5, 0, 0]]
    # decay 0.5 per step of age, an item aged at its latest occurrence: row 1 = 0.5 × (0.5 S[1] + 1 S[3]),
    # row 2 = 0.5 × S[2], row 3 = 0.5 × (0.5 S[1]) (item 1 last seen one step before the end)
    recent = ItemItem(matrix, alpha=0.5, method="test", decay=0.5)
    expected = np.array([[0, 2, 0.25], [0.5, 0, 0], [0, 0.5, 0.25]], dtype="float32")
    np.testing.assert_allclose(recent.scores(sequences), expected)
    assert recent.grow(6).decay == 0.5


def test_item_item_ages_in_time_by_hand(tmp_path):
    """Steps at one time stamp (a basket) share their age: with ages in time, decay^age counts distinct times."""
    from bigrec_cli.itemitem import ItemItem, step_ages

    assert step_ages((1, 6)).tolist() == [[5, 4, 3, 2, 1, 0]]
    assert step_ages((1, 6), np.array([[0, 10, 10, 20, 20, 30.0]])).tolist() == [[3, 2, 2, 1, 1, 0]]
    matrix = sparse.csr_matrix(np.array([[0, 0, 0, 0], [0, 0, 2, 1], [0, 1, 0, 0], [0, 0, 3, 0]], dtype="float32"))
    term = ItemItem(matrix, alpha=1.0, method="test", decay=0.5, age_unit="time")
    sequences, times = np.array([[0, 1, 2, 3]]), np.array([[0, 5, 7, 7.0]])
    # items 2 and 3 share the latest time (age 0), item 1 is one time older: S[1] / 2 + S[2] + S[3]
    np.testing.assert_allclose(term.scores(sequences, times), [[1, 4, 0.5]])
    # in steps, items 1, 2, 3 are 2, 1 and 0 steps old: S[1] / 4 + S[2] / 2 + S[3]
    np.testing.assert_allclose(term.with_(age_unit="step").scores(sequences, times), [[0.5, 3.5, 0.25]])
    np.testing.assert_array_equal(term.sparse_scores(sequences, times).toarray(), term.scores(sequences, times))
    with pytest.raises(ValueError, match="times"):
        term.scores(sequences)
    term.save(tmp_path / "item_item.npz")
    loaded = ItemItem.load(tmp_path / "item_item.npz")
    assert loaded.age_unit == "time" and loaded.decay == 0.5


def test_ages_in_time_are_chosen_where_baskets_make_them_better(monkeypatch):
    """The target goes with x, the first step of the latest basket [x, p, q, r]; an older basket [o1, o2] speaks
    for a decoy. Counted in steps, x is as old as the older basket (any decay that silences o1 and o2 silences x
    too); counted in times, x is the latest and o1, o2 one time older: only ages in time rank the target first."""
    from bigrec_cli import itemitem
    from bigrec_cli.itemitem import TIME_DECAY_GRID, fit_item_item

    x, target, o1, o2, decoy = 1, 2, 3, 4, 5
    rows = [[x, target]] * 30 + [[o1, decoy]] * 30 + [[o2, decoy]] * 30 + [[6], [7], [8]] * 10
    dense = np.zeros((len(rows), 8), dtype="float32")
    for row, items in enumerate(rows):
        dense[row, np.array(items) - 1] = 1
    train = sparse.csr_matrix(dense)
    sequences = np.tile([0, 0, o1, o2, x, 6, 7, 8], (20, 1))
    times = np.tile([0, 0, 1, 1, 2, 2, 2, 2.0], (20, 1))
    noise = np.random.default_rng(0).normal(scale=1e-3, size=(20, 8)).astype("float32")  # an LSTM that knows nothing
    excluded = [row[row > 0] - 1 for row in sequences]
    term, record = fit_item_item(train, noise, sequences, np.full(20, target), excluded, times=times)
    assert term.age_unit == "time" and record["chosen"]["val_ndcg@10"] == pytest.approx(1.0)
    assert max(entry["val_ndcg@10"] for entry in record["tried"] if entry.get("age_unit") == "step") < 0.9
    assert {entry["decay"] for entry in record["tried"] if entry.get("age_unit") == "time"} == set(TIME_DECAY_GRID)
    # a lead must be clear (TIME_MIN_GAIN) for ages in time to replace ages in steps: one of 1,000% never is
    monkeypatch.setattr(itemitem, "TIME_MIN_GAIN", 10.0)
    term, record = fit_item_item(train, noise, sequences, np.full(20, target), excluded, times=times)
    assert term.age_unit == "step" and record["chosen"]["val_ndcg@10"] < 0.9
    # every step at its own time: ages in time are ages in steps, so they are not tried at all
    distinct = np.tile(np.arange(8.0), (20, 1))
    _, record = fit_item_item(train, noise, sequences, np.full(20, target), excluded, times=distinct)
    assert {entry.get("age_unit") for entry in record["tried"][1:]} == {"step"}


def test_served_answers_count_a_basket_as_one_step(trained_copy):
    """A term whose ages count time, served: two feedback events at one time stamp weigh alike, and the answer is
    the exact top 10 of the LSTM logits plus that term."""
    from bigrec_cli.itemitem import ItemItem
    from bigrec_cli.recommend import Recommender

    feedback = trained_copy / "basket.csv"
    feedback.write_text(
        "user_id,item_id,timestamp,event\n"
        "u0001,i0003,2026-03-01T10:00:00Z,purchase\nu0001,i0015,2026-03-01T10:00:00Z,purchase\n"
    )
    assert invoke("ingest-feedback", "--project-dir", str(trained_copy), str(feedback)).exit_code == 0
    recommender = Recommender(ProjectDir(trained_copy))
    size = recommender.scorer.num_items + 1
    matrix = sparse.random(size, size, density=0.05, random_state=1, format="csr", dtype="float32")
    recommender.scorer.item_item = ItemItem(matrix, alpha=2.0, method="test", decay=0.5, age_unit="time")
    history = recommender.sequences(["u0001"])[0]
    sequences, times = recommender.encode([history]), recommender.encode_times([history])
    assert times[0, -1] == times[0, -2] > times[0, -3], "the basket's two steps share the latest time"
    weights = recommender.scorer.item_item.history(sequences, times).toarray()[0]
    basket = [recommender.scorer.index_of[item] for item in ("i0003", "i0015")]
    assert weights[basket].tolist() == [1.0, 1.0]
    logits = recommender.scorer.logits(sequences, times)[0]
    logits[[recommender.scorer.index_of[step[0]] - 1 for step in history]] = -np.inf
    expected = [recommender.scorer.item_ids[column] for column in np.argsort(-logits, kind="stable")[:10]]
    assert [item["item_id"] for item in recommender.recommend("u0001", k=10)["items"]] == expected


def test_item_item_is_chosen_on_validation_and_saved(tmp_path):
    from bigrec_cli.itemitem import DECAY_GRID, ItemItem, fit_item_item

    rng = np.random.default_rng(0)
    dense = (rng.random((200, 30)) < 0.2).astype("float32")
    dense[:, 1] = dense[:, 0]  # items 1 and 2 always go together
    train = sparse.csr_matrix(dense)
    sequences = np.zeros((50, 4), dtype="int64")
    sequences[:, -1] = 1
    targets = np.full(50, 2)
    noise = rng.normal(size=(50, 30)).astype("float32")  # an LSTM that knows nothing
    term, record = fit_item_item(train, noise, sequences, targets, [np.array([0])] * 50)
    assert term.alpha > 0 and record["chosen"]["val_ndcg@10"] == pytest.approx(1.0)
    assert record["chosen"]["decay"] == term.decay and {entry["decay"] for entry in record["tried"][1:]} == set(
        DECAY_GRID
    )
    term.save(tmp_path / "item_item.npz")
    loaded = ItemItem.load(tmp_path / "item_item.npz")
    np.testing.assert_allclose(loaded.scores(sequences), term.scores(sequences))
    assert loaded.decay == term.decay


def test_savedmodel_export_matches_the_numpy_scorer(trained_project, tmp_path):
    from bigrec_cli.artifacts import load_run, run_scorer
    from bigrec_cli.backend import tf
    from bigrec_cli.events import TYPE_STRIDE

    result = invoke("export", str(tmp_path / "model"), "--format", "savedmodel", "--project-dir", str(trained_project))
    assert result.exit_code == 0, result.stderr
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    run = load_run(ProjectDir(trained_project).current_run_dir())
    scorer = run_scorer(run)
    rng = np.random.default_rng(0)
    sequences = np.zeros((6, run.config.max_len), dtype="int64")
    for row in range(6):
        length = int(rng.integers(1, 30))
        sequences[row, -length:] = rng.integers(1, scorer.num_items + 1, size=length)
    sequences[0, -5] = 0  # padding inside a sequence
    sequences += rng.integers(0, len(run.event_types), size=sequences.shape) * TYPE_STRIDE * (sequences > 0)
    exported = loaded.signatures["logits"](sequences=tf.constant(sequences))
    np.testing.assert_allclose(next(iter(exported.values())).numpy(), scorer.logits(sequences), atol=1e-5, rtol=0)
    # the item-to-item term with a recency decay and a repeat weight, exported the same way
    from bigrec_cli.export import ScorerModule
    from bigrec_cli.itemitem import ItemItem

    size = scorer.num_items + 1
    matrix = sparse.random(size, size, density=0.05, random_state=0, format="csr", dtype="float32")
    negative = (len(run.event_types) - 1,)  # the last type read as negative behaviour: no say in the term
    scorer.item_item = ItemItem(matrix, alpha=0.7, method="test", decay=0.8, repeat_weight=0.3, negative_types=negative)
    module = ScorerModule(scorer, run.config.max_len)
    np.testing.assert_allclose(module.logits(tf.constant(sequences)).numpy(), scorer.logits(sequences), atol=1e-5)
    # ages counted in time: the module takes the steps' times as well
    times = np.sort(rng.integers(0, 8, size=sequences.shape), axis=1).astype("float64")
    scorer.item_item = scorer.item_item.with_(age_unit="time")
    timed = ScorerModule(scorer, run.config.max_len)
    np.testing.assert_allclose(
        timed.logits(tf.constant(sequences), tf.constant(times)).numpy(), scorer.logits(sequences, times), atol=1e-5
    )
    assert timed.top_k(tf.constant(sequences), tf.constant(times), tf.constant(5))["item_ids"].shape == (6, 5)
    scorer.item_item = scorer.item_item.with_(age_unit="step")
    top = loaded.signatures["serving_default"](sequences=tf.constant(sequences), k=tf.constant(5))
    assert top["item_ids"].shape == (6, 5)
    history = set(sequences[1][sequences[1] > 0] % TYPE_STRIDE)
    assert not set(top["item_indices"].numpy()[1]) & history, "the project excludes history items"
    allowed = ScorerModule(scorer, run.config.max_len, exclude_history=False).top_k(
        tf.constant(sequences), tf.constant(scorer.num_items)
    )
    assert set(allowed["item_indices"].numpy()[1]) >= history, "with repeats allowed, history items may come back"
    probabilities = allowed["probabilities"].numpy()
    assert (probabilities > 0).all() and (probabilities < 1).all()


def test_bigrec_toml_sets_options_and_flags_override_it(trained_copy):
    (trained_copy / "bigrec.toml").write_text("[train]\nepochs = 1\nmax-len = 20\n\n[serve]\nport = 9001\n")
    shown = json.loads(invoke("config", "show", "--project-dir", str(trained_copy), "--json").stdout)
    by_option = {(row["command"], row["option"]): row for row in shown}
    assert by_option[("train", "max_len")] == {
        "command": "train",
        "option": "max_len",
        "value": 20,
        "source": "bigrec.toml",
    }
    assert by_option[("train", "dim")]["source"] == "default" and by_option[("serve", "port")]["value"] == 9001
    first = json.loads(invoke("train", "--project-dir", str(trained_copy), "--json").stdout)
    second = json.loads(invoke("train", "--project-dir", str(trained_copy), "--max-len", "30", "--json").stdout)
    configs = [
        json.loads((trained_copy / "runs" / run["run_id"] / "config.json").read_text()) for run in (first, second)
    ]
    assert (configs[0]["epochs"], configs[0]["max_len"]) == (1, 20)
    assert (configs[1]["epochs"], configs[1]["max_len"]) == (1, 30)
    (trained_copy / "bigrec.toml").write_text("[train]\nepoch = 3\n")
    wrong = invoke("train", "--project-dir", str(trained_copy))
    assert wrong.exit_code == 1 and "has no option 'epoch'" in wrong.stderr and "epochs" in wrong.stderr


def test_http_filters_and_explanations(trained_copy):
    from fastapi.testclient import TestClient

    from bigrec_cli.serve import project_app

    topics = pd.read_csv(SAMPLE / "items.csv").set_index("item_id")["topic"]
    app = project_app(ProjectDir(trained_copy), watch=False, warm_users=0)
    with TestClient(app) as client:
        params = {"user": "u0001", "k": 5, "where": ["topic=jazz"], "explain": "true"}
        answer = client.get("/recommend", params=params).json()
        assert len(answer["items"]) == 5 and {topics[item["item_id"]] for item in answer["items"]} == {"jazz"}
        assert all("because" in item for item in answer["items"])
        assert client.get("/recommend", params={"user": "u0001", "where": "colour=red"}).status_code == 400


def test_item_item_term_is_refitted_on_more_events_with_its_chosen_lambda_and_weight():
    from bigrec_cli.baselines import EASE
    from bigrec_cli.itemitem import NEIGHBOURS, ItemItem, refit_item_item, top_neighbours

    rng = np.random.default_rng(1)
    more = sparse.csr_matrix((rng.random((120, 25)) < 0.25).astype("float32"))
    chosen = ItemItem(sparse.csr_matrix((26, 26), dtype="float32"), alpha=3.5, method="ease(lambda=20)")
    refitted = refit_item_item(chosen, more)
    expected = top_neighbours(EASE(20.0).fit(more).weights_, NEIGHBOURS)
    assert refitted.alpha == 3.5 and refitted.method == "ease(lambda=20)"
    np.testing.assert_allclose(refitted.matrix.toarray(), expected.toarray())
    edlae = refit_item_item(chosen.with_(method="ease(lambda=10, dropout=0.5)"), more)
    np.testing.assert_allclose(
        edlae.matrix.toarray(), top_neighbours(EASE(10.0, 0.5).fit(more).weights_, NEIGHBOURS).toarray()
    )
    assert not np.allclose(edlae.matrix.toarray(), expected.toarray())
    none = ItemItem(sparse.csr_matrix((1, 1), dtype="float32"), 0.0, "none")
    assert refit_item_item(none, more) is none


def test_repeat_weight_is_chosen_only_when_history_may_come_back():
    """Users who rebuy: the target is always their latest item. With repeats allowed, γ (the user's own recent items)
    is chosen on validation and ranks it first; with the history excluded there is nothing to choose."""
    from bigrec_cli.itemitem import ItemItem, fit_item_item

    rng = np.random.default_rng(2)
    train = sparse.csr_matrix((rng.random((80, 20)) < 0.3).astype("float32"))
    sequences = rng.integers(1, 21, size=(40, 5))
    targets = sequences[:, -1]
    noise = rng.normal(size=(40, 20)).astype("float32")
    term, record = fit_item_item(train, noise, sequences, targets, None)
    assert term.repeat_weight > 0 and record["chosen"]["val_ndcg@10"] == pytest.approx(1.0)
    own = ItemItem(term.matrix, 0.0, term.method, term.decay, 2.0)
    expected = np.zeros((1, 20), dtype="float32")
    expected[0, [2, 6]] = [2.0 * term.decay, 2.0]  # items 3 (one step old) and 7 (the latest)
    np.testing.assert_allclose(own.scores(np.array([[0, 0, 0, 3, 7]])), expected, rtol=1e-6)
    excluded = [row - 1 for row in sequences]
    term, record = fit_item_item(train, noise, sequences, targets, excluded)
    assert term.repeat_weight == 0 and not any("repeat_weight" in entry for entry in record["tried"])


def test_items_without_interactions_borrow_their_text_neighbours_parts():
    """By hand: item 3's text is close to item 1's and far from item 2's, so it takes mostly item 1's ID vector,
    bias and item-to-item neighbours."""
    from bigrec_cli.itemitem import ItemItem
    from bigrec_cli.scoring import impute_items, text_neighbours

    text = np.array([[0, 0], [1, 0], [0, 1], [3, 1]], dtype="float32")
    neighbours, shares = text_neighbours(text, np.array([3]), np.array([1, 2]), k=2)
    cosines = np.array([3, 1]) / np.sqrt(10)  # cos(item 3, item 1), cos(item 3, item 2)
    assert neighbours.tolist() == [[1, 2]] or neighbours.tolist() == [[2, 1]]
    order = np.argsort(neighbours[0])
    np.testing.assert_allclose(shares[0][order], cosines / cosines.sum(), rtol=1e-6)  # 0.75, 0.25

    matrix = sparse.csr_matrix(np.array([[0, 0, 0, 0], [0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype="float32"))
    term = ItemItem(matrix, alpha=1.0, method="test").impute(
        np.array([3]), np.array([[1, 2]]), np.array([[0.75, 0.25]])
    )
    # column 3 = 0.75 S[:, 1] + 0.25 S[:, 2]; row 3 = 0.75 S'[1, :] + 0.25 S'[2, :], its diagonal dropped
    expected = np.array([[0, 0, 0, 0], [0, 0, 2, 0.5], [0, 1, 0, 0.75], [0, 0.25, 1.5, 0]], dtype="float32")
    np.testing.assert_allclose(term.matrix.toarray(), expected, rtol=1e-6)

    from bigrec_cli.scoring import ScorerWeights

    arrays = zero_scorer_arrays(rows=4, text_dim=2, dim=2, units=1)
    arrays.update(
        text_vectors=text,
        projection_kernel=np.eye(2),
        id_embedding=np.array([[0, 0], [4, 0], [0, 8], [0, 0]]),
        item_bias=np.array([0, 1.0, -3.0, 0]),
        head_kernel=np.ones((2, 1)),
    )
    weights = ScorerWeights.from_arrays(arrays)
    imputed = impute_items(weights, np.array([3]), np.array([1, 2]))
    np.testing.assert_allclose(imputed.id_embedding[3], [3.0, 2.0], rtol=1e-6)  # 0.75 × (4, 0) + 0.25 × (0, 8)
    assert imputed.item_bias[3] == pytest.approx(0.75 * 1.0 + 0.25 * -3.0)  # 0.0
    np.testing.assert_array_equal(imputed.id_embedding[:3], weights.id_embedding[:3])


def test_calibration_recovers_a_known_sigmoid():
    """Labels drawn from sigmoid(2x − 1): maximum likelihood gives back a ≈ 2, b ≈ −1; logits that rank positives
    below negatives keep the plain sigmoid (a must stay positive so the order of the items never changes)."""
    from bigrec_cli.scoring import fit_calibration, sigmoid

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=40_000)
    labels = rng.random(40_000) < sigmoid(2.0 * logits - 1.0)
    a, b = fit_calibration(logits[labels], logits[~labels])
    assert a == pytest.approx(2.0, abs=0.08) and b == pytest.approx(-1.0, abs=0.08)
    assert fit_calibration(np.array([-5.0, -4.0]), np.array([4.0, 5.0, 6.0])).tolist() == [1.0, 0.0]


def test_negative_steps_never_speak_for_an_item_in_the_term():
    """A cancelled item (type 1, negative) neither boosts its neighbours nor itself, and leaves no mark in the
    matrix S is fitted on; the same item bought (type 0) does both."""
    from bigrec_cli.events import TYPE_STRIDE
    from bigrec_cli.itemitem import ItemItem, history_matrix

    matrix = sparse.csr_matrix(np.array([[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype="float32"))
    term = ItemItem(matrix, alpha=1.0, method="test", repeat_weight=2.0, negative_types=(1,))
    bought, cancelled = np.array([[0, 1, 2]]), np.array([[0, 1, 2 + TYPE_STRIDE]])
    np.testing.assert_allclose(term.scores(bought), [[2, 3, 1]])  # item 2: 1 (from 1) + 2 (itself); item 3: 1
    np.testing.assert_allclose(term.scores(cancelled), [[2, 1, 0]])  # only item 1 speaks
    fitted = history_matrix({"u": np.array([1, 2 + TYPE_STRIDE])}, 3, negative_types=(1,))
    assert fitted.toarray().tolist() == [[1, 0, 0]]


def test_item_item_choice_is_the_same_in_batches_of_users():
    """Scoring the validation cases in batches (memory bounded by the batch) chooses what one batch chooses."""
    from bigrec_cli.itemitem import fit_item_item

    rng = np.random.default_rng(4)
    train = sparse.csr_matrix((rng.random((150, 30)) < 0.2).astype("float32"))
    sequences = rng.integers(0, 31, size=(60, 6))
    targets = rng.integers(1, 31, size=60)
    logits = rng.normal(size=(60, 30)).astype("float32")
    for excluded in ([row[row > 0] - 1 for row in sequences], None):
        whole, record = fit_item_item(train, logits, sequences, targets, excluded, batch_size=10_000)
        batched, batched_record = fit_item_item(
            train, lambda start, stop: logits[start:stop], sequences, targets, excluded, batch_size=7
        )
        assert (batched.method, batched.decay, batched.repeat_weight) == (
            whole.method,
            whole.decay,
            whole.repeat_weight,
        )
        assert batched.alpha == pytest.approx(whole.alpha, rel=1e-5)
        np.testing.assert_allclose(
            [entry["val_ndcg@10"] for entry in batched_record["tried"]],
            [entry["val_ndcg@10"] for entry in record["tried"]],
            rtol=1e-6,
        )


def test_cold_boost_is_the_largest_within_its_cost_and_reaches_items_added_later():
    from bigrec_cli.coldstart import boost_cold_items, choose_cold_boost
    from bigrec_cli.scoring import Scorer, ScorerWeights, text_neighbours

    rng = np.random.default_rng(3)
    items = 40
    arrays = zero_scorer_arrays(rows=items + 1, text_dim=4, dim=2, units=1)
    # the LSTM is all zeros, so a user's logit for item i is its bias alone: -0.1 i (item 1 first)
    arrays.update(text_vectors=rng.normal(size=(items + 1, 4)), item_bias=-0.1 * np.arange(items + 1))
    scorer = Scorer(ScorerWeights.from_arrays(arrays), [f"i{row}" for row in range(1, items + 1)])
    histories = [np.array([row]) for row in rng.integers(1, items + 1, size=400)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, items + 1), history)) for history in histories])
    cold = np.zeros(items + 1, dtype=bool)
    cold[[7, 30]] = True  # no training interactions

    def choose(cost):
        return choose_cold_boost(scorer, histories, targets, cold, max_len=5, cost=cost, seed=0)

    assert choose(0.0)[0] == 0.0
    nearly_all_cold = np.ones(items + 1, dtype=bool)
    nearly_all_cold[[0, 5]] = False  # one item learned: nothing can pose as new
    assert choose_cold_boost(scorer, histories, targets, nearly_all_cold, max_len=5, cost=0.05)[0] == 0.0
    boost, report = choose(0.05)
    assert report["posing_items"] == 4 and report["posing_cases"] >= 10
    tried = report["tried"]
    floor = 0.95 * tried[0]["val_ndcg@10_other"]
    position = [entry["boost"] for entry in tried].index(boost)
    assert boost > 0 and tried[position]["val_ndcg@10_other"] >= floor
    assert tried[position]["val_ndcg@10_posing"] > tried[0]["val_ndcg@10_posing"], "the posing items gain"
    # every larger boost on the grid costs more than allowed or gains nothing (the choice is the largest that fits)
    for entry in tried[position + 1 :]:
        assert entry["val_ndcg@10_other"] < floor or entry["val_ndcg@10_posing"] <= tried[0]["val_ndcg@10_posing"]
    assert choose(0.3)[0] >= boost

    boosted = Scorer(boost_cold_items(scorer.weights, cold, boost), list(scorer.item_ids))
    np.testing.assert_allclose(boosted.output_bias[cold], scorer.output_bias[cold] + boost, rtol=1e-6)
    np.testing.assert_array_equal(boosted.output_bias[~cold], scorer.output_bias[~cold])
    # an item added later (here with item 7's very text) borrows from items that learned, never from item 7 or 30,
    # and its logit gets the boost once
    boosted.add_items(["twin of 7"], scorer.weights.text_vectors[7:8])
    plain = Scorer(replace(scorer.weights, cold_rows=cold.astype("float32")), list(scorer.item_ids))
    plain.add_items(["twin of 7"], scorer.weights.text_vectors[7:8])
    neighbours, shares = text_neighbours(boosted.weights.text_vectors, np.array([41]), np.flatnonzero(~cold)[1:])
    assert boosted.weights.item_bias[-1] == pytest.approx(float(shares[0] @ scorer.weights.item_bias[neighbours[0]]))
    assert boosted.output_bias[-1] == pytest.approx(plain.output_bias[-1] + boost, rel=1e-5)


@pytest.mark.parametrize("repeat_weight", [0.0, 0.7, np.float64(0.7)])
def test_dense_term_scores_equal_the_sparse_ones_to_the_bit(repeat_weight):
    from bigrec_cli.itemitem import ItemItem

    rng = np.random.default_rng(3)
    size = 301
    matrix = sparse.random(size, size, density=0.05, format="csr", dtype="float32", random_state=rng)
    matrix.data -= 0.3  # negative weights too, as EASE has
    sequences = rng.integers(0, size, size=(40, 30))
    sequences[:, :10] = 0  # left padding
    sequences[0] = 0  # a user without history
    term = ItemItem(matrix, np.float64(0.37), "ease(lambda=20)", 0.9, repeat_weight)  # numpy weights, as chosen
    dense = term.scores(sequences)
    assert dense.shape == (40, size - 1) and dense.dtype == np.float32 and not dense[0].any()
    assert np.array_equal(dense, term.sparse_scores(sequences).toarray())


def test_edlae_replaces_plain_ease_only_when_it_validates_clearly_better(monkeypatch):
    from bigrec_cli import itemitem

    rng = np.random.default_rng(5)
    train = sparse.csr_matrix((rng.random((300, 40)) < 0.15).astype("float32"))
    sequences = rng.integers(0, 41, size=(120, 6))
    targets = rng.integers(1, 41, size=120)
    logits = rng.normal(size=(120, 40)).astype("float32")
    excluded = [np.array([0])] * 120

    def chosen(gain: float) -> tuple[str, float, list]:
        monkeypatch.setattr(itemitem, "EDLAE_MIN_GAIN", gain)
        _, record = itemitem.fit_item_item(train, logits, sequences, targets, excluded)
        return record["chosen"]["method"], record["chosen"]["val_ndcg@10"], record["tried"]

    method, score, tried = chosen(0.0)  # no margin: the best of every variant
    assert score == max(entry["val_ndcg@10"] for entry in tried)
    method, score, tried = chosen(10.0)  # EDLAE would have to gain 1,000%: never chosen
    assert "dropout=" not in method
    assert score == max(entry["val_ndcg@10"] for entry in tried if "dropout=" not in entry["method"])
    assert any("dropout=" in entry["method"] for entry in tried), "EDLAE was tried all the same"


def test_text_neighbours_in_chunks_of_rows_equal_the_whole_similarity_matrix():
    from bigrec_cli.scoring import text_neighbours

    rng = np.random.default_rng(8)
    text = rng.normal(size=(20_301, 8)).astype("float32")
    rows, candidates = np.arange(1, 301), np.arange(301, 20_301)  # 20,000 candidates: chunks of 838 rows at most
    neighbours, shares = text_neighbours(text, rows, candidates, k=3, chunk=5)
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    similarity = unit[rows] @ unit[candidates].T  # every pair at once, by hand
    expected = candidates[np.argsort(-similarity, axis=1)[:, :3]]
    assert np.array_equal(np.sort(neighbours, axis=1), np.sort(expected, axis=1))
    assert np.allclose(shares.sum(axis=1), 1.0)
    again, _ = text_neighbours(text, rows, candidates, k=3)  # the default chunk, cut to 838 rows
    assert np.array_equal(np.sort(again, axis=1), np.sort(neighbours, axis=1))
