"""Training details: the moving average of the weights, and how items without interactions are scored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bigrec_cli.project import ProjectDir
from tests.conftest import invoke


def test_weight_average_follows_its_formula_and_restores_raw_weights():
    from bigrec_cli.backend import keras
    from bigrec_cli.train import WeightAverage

    model = keras.Sequential([keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", input_shape=(1,))])
    average = WeightAverage(decay=0.2)
    average.set_model(model)
    average.on_train_begin()
    kernel = model.layers[0].kernel
    kernel.assign([[3.0]])
    average.on_train_batch_end(0)
    # step 1: decay = min(0.2, 2/11) = 2/11, from the initial weight 1
    first = 2 / 11 * 1.0 + 9 / 11 * 3.0
    assert average.shadows[0].numpy()[0, 0] == pytest.approx(first)
    kernel.assign([[5.0]])
    average.on_train_batch_end(1)
    # step 2: decay = min(0.2, 3/12) = 0.2
    second = 0.2 * first + 0.8 * 5.0
    assert average.shadows[0].numpy()[0, 0] == pytest.approx(second)
    with average.applied():
        assert kernel.numpy()[0, 0] == pytest.approx(second)
    assert kernel.numpy()[0, 0] == 5.0


@pytest.mark.parametrize(("option", "good", "bad"), [("weight-average", "0", "1"), ("id-dropout", "0.5", "1.5")])
def test_training_option_is_saved_and_checked(trained_copy, option, good, bad):
    result = invoke("train", "--project-dir", str(trained_copy), "--epochs", "1", f"--{option}", good, "--json")
    assert result.exit_code == 0, result.stderr
    run_dir = trained_copy / "runs" / json.loads(result.stdout)["run_id"]
    name = option.replace("-", "_")
    assert json.loads((run_dir / "config.json").read_text())[name] == float(good)
    refused = invoke("train", "--project-dir", str(trained_copy), f"--{option}", bad)
    assert refused.exit_code == 1 and name in refused.stderr


def test_dropped_lookup_loses_id_vector_and_bias():
    from bigrec_cli.backend import tf
    from bigrec_cli.config import TrainConfig
    from bigrec_cli.model import build_model

    rng = np.random.default_rng(0)
    text = np.concatenate([np.zeros((1, 8)), rng.normal(size=(5, 8))]).astype("float32")
    model = build_model(TrainConfig(dim=4, id_dropout=1.0), text)
    items = model.items
    items.id_embedding.assign(rng.normal(size=items.id_embedding.shape).astype("float32"))
    items.item_bias.assign(np.arange(6, dtype="float32"))
    indices = tf.constant([[1, 2, 3]])
    text_only = items.projection(tf.gather(items.text_table, indices)).numpy()
    dropped_vectors, dropped_bias = items.lookup(indices, training=True)
    np.testing.assert_allclose(dropped_vectors.numpy(), text_only, atol=1e-6)
    assert dropped_bias.numpy().tolist() == [[0.0, 0.0, 0.0]]
    vectors, bias = items.lookup(indices, training=False)
    np.testing.assert_allclose(vectors.numpy(), text_only + items.id_embedding.numpy()[[1, 2, 3]][None], atol=1e-6)
    assert bias.numpy().tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize(("id_dropout", "expect_zero"), [(0.0, False), (0.5, True)])
def test_items_without_interactions_get_the_cold_bias(trained_copy, id_dropout, expect_zero):
    from bigrec_cli.artifacts import load_run, run_scorer
    from bigrec_cli.vectors import load_arrays

    result = invoke(
        "train", "--project-dir", str(trained_copy), "--epochs", "1", "--id-dropout", str(id_dropout), "--json"
    )
    assert result.exit_code == 0, result.stderr
    run = load_run(ProjectDir(trained_copy).current_run_dir())
    arrays = load_arrays(run.directory / "scorer.npz")
    expected = 0.0 if expect_zero else float(np.median(arrays["item_bias"][1:]))
    assert arrays["cold_item_bias"][0] == pytest.approx(expected, abs=1e-6)
    text = np.ones((1, arrays["text_vectors"].shape[1]), "float32")
    scorer = run_scorer(run)
    scorer.add_items(["brand-new"], text, impute=False)
    assert scorer.weights.item_bias[-1] == pytest.approx(expected, abs=1e-6)
    assert not scorer.weights.id_embedding[-1].any()
    if not expect_zero:  # as `live_scorer` does for such runs: the learned parts of its text neighbours
        borrowed = run_scorer(run)
        borrowed.add_items(["brand-new"], text)
        biases, boost = arrays["item_bias"][1:], float(arrays["cold_boost"][0])
        assert biases.min() <= borrowed.weights.item_bias[-1] <= biases.max()
        # the cold boost chosen on validation reaches the new item's logit once
        expected_logit_bias = borrowed.weights.item_bias[-1] + arrays["head_bias"][0] + boost
        assert borrowed.output_bias[-1] == pytest.approx(expected_logit_bias, abs=1e-5)
        assert borrowed.weights.id_embedding[-1].any()


def test_scorer_reads_runs_written_before_the_cold_bias_existed(trained_project):
    from bigrec_cli.artifacts import load_run
    from bigrec_cli.scoring import Scorer, ScorerWeights
    from bigrec_cli.vectors import load_arrays

    run = load_run(ProjectDir(trained_project).current_run_dir())
    arrays = load_arrays(run.directory / "scorer.npz")
    older = {name: value for name, value in arrays.items() if name != "cold_item_bias"}
    scorer = Scorer(ScorerWeights.from_arrays(older), run.item_ids)
    assert scorer.weights.cold_item_bias[0] == pytest.approx(np.median(arrays["item_bias"][1:]))
    current = Scorer(ScorerWeights.from_arrays(arrays), run.item_ids)
    np.testing.assert_allclose(scorer.logits(np.array([[0, 1, 2]])), current.logits(np.array([[0, 1, 2]])))


def test_popularity_negatives_follow_training_counts():
    from bigrec_cli.config import TrainConfig
    from bigrec_cli.protocol import Windows
    from bigrec_cli.train import WindowBatches

    # Item 1 is a target 8 times, item 2 once, item 3 never: weights 8^0.75 : 1 : 0.
    windows = Windows({"u": np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 2])}, max_len=10)
    config = TrainConfig(negatives=2000, negative_sampling="popularity", batch_size=1)
    negatives = WindowBatches(windows, config, num_items=3)[0]["negatives"]
    counts = np.bincount(negatives.ravel(), minlength=4)
    assert counts[0] == 0 and counts[3] == 0, "never padding, never an item without training events"
    share = counts[1] / counts[1:].sum()
    assert share == pytest.approx(8**0.75 / (8**0.75 + 1), abs=0.01)
    uniform = WindowBatches(windows, TrainConfig(negatives=2000, batch_size=1), num_items=3)[0]
    assert set(np.unique(uniform["negatives"])) == {1, 2, 3}
    bad = invoke("train", "--negative-sampling", "zipf")
    assert bad.exit_code == 1 and "negative sampling" in bad.stderr


def test_scorer_treats_inner_padding_like_keras_masking(trained_project):
    """Rows with padding inside them take the general path: a padded step keeps the state, as Keras' mask does."""
    from bigrec_cli.artifacts import load_run, run_scorer

    scorer = run_scorer(load_run(ProjectDir(trained_project).current_run_dir()))
    gapped = np.array([[0, 3, 0, 5, 7], [0, 0, 4, 0, 2]])
    packed = np.array([[0, 0, 3, 5, 7], [0, 0, 0, 4, 2]])
    np.testing.assert_allclose(scorer.user_states(gapped), scorer.user_states(packed), atol=1e-6)
    # each row alone gives the same state as in a batch, whatever the other rows' lengths
    mixed = np.array([[0, 0, 0, 0, 9], [1, 2, 3, 4, 5], [0, 0, 6, 7, 8]])
    alone = np.concatenate([scorer.user_states(row[None]) for row in mixed])
    np.testing.assert_allclose(scorer.user_states(mixed), alone, atol=1e-6)


def test_validation_choices_read_a_seeded_sample_of_users_whatever_their_order():
    from bigrec_cli.protocol import HoldoutCases, sample_cases

    users = [f"u{number}" for number in range(1_000)]
    histories = [np.array([number, number + 1]) for number in range(1_000)]
    times = [np.array([10.0 * number, 10.0 * number + 1]) for number in range(1_000)]
    cases = HoldoutCases(users, histories, np.arange(1_000) + 2, times)
    assert sample_cases(cases, 1_000, seed=0) is cases, "no more users than the limit: all of them, as they are"
    sample = sample_cases(cases, 100, seed=0)
    assert len(sample.user_ids) == 100 and len(set(sample.user_ids)) == 100
    assert sample.user_ids == sorted(sample.user_ids, key=users.index), "the cases keep their order"
    for user, history, target, stamps in zip(sample.user_ids, sample.histories, sample.targets, sample.times):
        number = int(user[1:])
        assert history.tolist() == [number, number + 1] and target == number + 2
        assert stamps.tolist() == [10.0 * number, 10.0 * number + 1], "each history keeps its steps' times"
    reverse = HoldoutCases(users[::-1], cases.histories[::-1], cases.targets[::-1], cases.times[::-1])
    assert set(sample_cases(reverse, 100, seed=0).user_ids) == set(sample.user_ids)
    assert set(sample_cases(cases, 100, seed=1).user_ids) != set(sample.user_ids), "another seed, other users"


def test_the_validation_sample_is_drawn_apart_from_the_share_of_users_trained_on():
    from bigrec_cli.protocol import HoldoutCases, sample_cases
    from bigrec_cli.train import users_share

    users = [f"u{number}" for number in range(10_000)]
    trained = set(users_share({user: np.array([1]) for user in users}, 0.4, seed=0))
    cases = HoldoutCases(
        users, [np.array([1])] * len(users), np.ones(len(users), dtype="int64"), [np.zeros(1)] * 10_000
    )
    sampled = sample_cases(cases, 2_000, seed=0).user_ids
    share = sum(user in trained for user in sampled) / len(sampled)
    assert 0.35 < share < 0.45, "as many trained users in the sample as in the data, not only those"


def test_train_chooses_the_term_boost_and_calibration_on_the_sample(trained_copy, monkeypatch):
    from bigrec_cli import train as training

    monkeypatch.setattr(training, "SELECTION_CASES", 20)
    seen = {}

    def recording(name, real, cases_of):
        def call(*args, **kwargs):
            seen[name] = cases_of(*args)
            return real(*args, **kwargs)

        return call

    # the real functions, called through: each records how many validation cases it was given
    for name, cases_of in {
        "choose_item_item": lambda scorer, sequences, cases, *rest: len(cases.user_ids),
        "choose_cold_boost": lambda scorer, histories, *rest: len(histories),
        "calibrate": lambda scorer, cases, *rest: len(cases.user_ids),
        "scorer_report": lambda scorer, cases, *rest: len(cases.user_ids),
    }.items():
        monkeypatch.setattr(training, name, recording(name, getattr(training, name), cases_of))
    result = invoke("train", "--project-dir", str(trained_copy), "--epochs", "1", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((ProjectDir(trained_copy).current_run_dir() / "metrics.json").read_text())
    assert metrics["selection_cases"] == 20
    assert seen["choose_item_item"] == seen["choose_cold_boost"] == seen["calibrate"] == 20
    assert seen["scorer_report"] == 300, "the run is reported on every validation user"
    # each step after the epochs is named on stderr as it starts, the sample's size with it
    assert "choosing the item-to-item term on 20 validation users" in result.stderr
    assert "scoring the run on 300 validation users" in result.stderr and "writing the run" in result.stderr
