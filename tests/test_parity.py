"""The Keras model and the numpy scorer compute the same logits, on untrained models with random weights.

No training and no shared fixture: every case builds a tiny model, fills every weight with random values (so
that a swapped gate block, another activation or a missing exported array changes the result), and compares the
Keras reference with the scorer built from the exported weights.
"""

import numpy as np
import pytest

from tests.conftest import SAMPLE, zero_scorer_arrays

NUM_ITEMS, TEXT_DIM, MAX_LEN = 12, 16, 7
CASES = {
    "id embedding": {},
    "no id embedding": {"id_embedding": False},
    "gbce": {"loss": "gbce", "gbce_t": 0.5},
    "id dropout": {"id_dropout": 0.5},
    "no history mean": {"history_mean": False},
    "fine-tuned bert": {"fine_tune_bert": True},
}
SEQUENCES = np.array(
    [
        [0, 0, 0, 0, 0, 0, 3],
        [1, 2, 3, 4, 5, 6, 7],
        [0, 0, 9, 12, 1, 1, 2],
        [0, 4, 0, 5, 0, 0, 11],  # padding inside the sequence: Keras' mask keeps the state through those steps
        [0, 0, 0, 8, 0, 10, 6],
    ]
)


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory):
    from bigrec_cli.checkpoints import write_tiny_checkpoint
    from bigrec_cli.features import BertEncoder

    checkpoint = write_tiny_checkpoint(SAMPLE / "bert", tmp_path_factory.mktemp("bert"))
    encoder = BertEncoder(checkpoint, max_length=8)
    texts = [f"item number {index} red shoes" if index % 2 else f"blue shirt {index}" for index in range(NUM_ITEMS)]
    tokens = encoder.tokenize(texts)
    table = np.zeros((NUM_ITEMS + 1, max(map(len, tokens))), dtype="int32")
    for row, token_ids in enumerate(tokens, start=1):
        table[row, : len(token_ids)] = token_ids
    return encoder.model, table


def randomized_model(overrides: dict, small_bert, num_event_types: int = 1):
    from bigrec_cli.config import TrainConfig
    from bigrec_cli.model import build_model

    config = TrainConfig(dim=8, lstm_units=6, negatives=3, max_len=MAX_LEN, seed=0, **overrides)
    rng = np.random.default_rng(7)
    bert, token_table = small_bert if config.fine_tune_bert else (None, None)
    text_dim = TEXT_DIM if bert is None else int(bert.output.shape[-1])
    text_vectors = rng.normal(size=(NUM_ITEMS + 1, text_dim)).astype("float32")
    text_vectors[0] = 0.0
    model = build_model(config, text_vectors, bert=bert, token_table=token_table, num_event_types=num_event_types)
    types_rng = np.random.default_rng(11)  # its own stream: the other weights stay those of the cases above
    model.event_types.assign(types_rng.normal(scale=0.5, size=model.event_types.shape).astype("float32"))
    layers = (model.items, model.lstm, model.user_projection, model.history_projection, model.head)
    for variable in [variable for layer in layers for variable in layer.weights]:
        if variable.name.split("/")[-1].startswith("text_vectors"):
            continue
        variable.assign(rng.normal(scale=0.5, size=variable.shape).astype("float32"))
    return model


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_scorer_equals_keras_model(overrides, small_bert):
    from bigrec_cli.model import export_scorer_weights
    from bigrec_cli.scoring import Scorer

    model = randomized_model(overrides, small_bert)
    scorer = Scorer(export_scorer_weights(model), [f"i{index}" for index in range(1, NUM_ITEMS + 1)])
    reference = model.catalog_logits(SEQUENCES)
    np.testing.assert_allclose(scorer.logits(SEQUENCES), reference, atol=1e-5, rtol=0)
    assert np.abs(reference).max() > 0.1, "random weights give logits far from zero"


def test_scorer_equals_keras_model_with_event_types(small_bert):
    """Tokens carry the event type (item + type × TYPE_STRIDE): both sides add the same type vector to each step."""
    from bigrec_cli.events import TYPE_STRIDE
    from bigrec_cli.model import export_scorer_weights
    from bigrec_cli.scoring import Scorer

    model = randomized_model({}, small_bert, num_event_types=3)
    types = np.random.default_rng(3).integers(0, 3, size=SEQUENCES.shape) * (SEQUENCES > 0)
    tokens = SEQUENCES + types * TYPE_STRIDE
    scorer = Scorer(export_scorer_weights(model), [f"i{index}" for index in range(1, NUM_ITEMS + 1)])
    reference = model.catalog_logits(tokens)
    np.testing.assert_allclose(scorer.logits(tokens), reference, atol=1e-5, rtol=0)
    untyped = model.catalog_logits(SEQUENCES)
    assert np.abs(reference - untyped).max() > 0.01, "the event types change the logits"
    np.testing.assert_allclose(scorer.logits(SEQUENCES), untyped, atol=1e-5, rtol=0)


def test_scorer_weights_check_names_and_shapes():
    from bigrec_cli.errors import ArtifactError
    from bigrec_cli.scoring import ScorerWeights

    units = 2
    arrays = zero_scorer_arrays(rows=4, text_dim=5, dim=3, units=units)
    assert ScorerWeights.from_arrays(arrays).lstm_bias.dtype == np.float32
    with pytest.raises(ArtifactError, match="lstm_bias has shape"):
        ScorerWeights.from_arrays({**arrays, "lstm_bias": np.zeros(3 * units)})
    with pytest.raises(ArtifactError, match=r"missing \['user_bias'\]"):
        ScorerWeights.from_arrays({name: value for name, value in arrays.items() if name != "user_bias"})
    with pytest.raises(ArtifactError, match=r"unknown \['extra'\]"):
        ScorerWeights.from_arrays({**arrays, "extra": np.zeros(1)})


def test_warm_start_carries_event_type_vectors_by_name(small_bert):
    """New data may reorder the type ids (they follow frequency): a retrain's start keeps each type's vector."""
    from dataclasses import replace

    from bigrec_cli.model import export_scorer_weights, warm_start

    previous = randomized_model({}, small_bert, num_event_types=3)
    weights = export_scorer_weights(previous)  # types: view (0, reference), purchase (1), cancel (2)
    weights = replace(weights, type_embedding=np.array([[0.0] * 8, [1.0] * 8, [2.0] * 8]))
    model = randomized_model({}, small_bert, num_event_types=4)
    items = [f"i{index}" for index in range(1, NUM_ITEMS + 1)]
    warm_start(model, weights, items, items, ["view", "purchase", "cancel"], ["view", "cancel", "return", "purchase"])
    types = model.event_types.numpy()
    np.testing.assert_array_equal(types[:, 0], [0.0, 2.0, 0.0, 1.0])  # cancel, a new type at zero, purchase
