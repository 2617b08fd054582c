"""`bigrec export`: a run's scorer as a TensorFlow SavedModel that TF Serving (or any TF runtime) can load.

The graph is the numpy scorer written in TensorFlow ops: item vectors, the Keras LSTM step (gate order and
activations from `scoring`), the history mean, the head and the item-to-item term; a padded step keeps the state,
as Keras' mask does. Two signatures take left-padded item indices (int64, 0 = padding, most recent last):
`logits` returns (batch, items) logits for items 1…N, and `serving_default` the top `k` items not in the history
(their ids, 1-based indices and probabilities). When the run's item-to-item term counts ages in time (steps at one
time stamp share an age), both also take `times`: (batch, max_len) float64, each step's time stamp, aligned with
the sequences.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bigrec_cli.artifacts import load_run, run_scorer
from bigrec_cli.backend import tf
from bigrec_cli.data import event_policy
from bigrec_cli.errors import ConfigError
from bigrec_cli.events import TYPE_STRIDE
from bigrec_cli.project import ProjectDir, atomic_directory
from bigrec_cli.scoring import LSTM_ACTIVATION, LSTM_GATES, LSTM_RECURRENT_ACTIVATION, PROBABILITY_FLOOR, Scorer

FORMATS = ("savedmodel",)
ACTIVATIONS = {"tanh": tf.tanh, "sigmoid": tf.sigmoid}


class ScorerModule(tf.Module):
    """The scorer's forward pass as a tf.Module (constants only: nothing here is trained)."""

    def __init__(self, scorer: Scorer, max_len: int, exclude_history: bool = True) -> None:
        super().__init__(name="bigrec_scorer")
        self.exclude_history = exclude_history  # the project's --repeats: exclude (films) or allow
        weights = scorer.weights
        self.max_len = max_len
        self.units = weights.lstm_recurrent_kernel.shape[0]
        self.input_vectors = tf.constant(scorer.input_vectors)
        self.input_gates = tf.constant(scorer.input_gates)
        self.type_vectors = tf.constant(scorer.type_vectors)
        self.type_gates = tf.constant(scorer.type_gates)
        self.recurrent = tf.constant(weights.lstm_recurrent_kernel)
        self.user_kernel = tf.constant(weights.user_kernel)
        self.user_bias = tf.constant(weights.user_bias)
        self.history_kernel = tf.constant(weights.history_kernel)
        self.output_vectors = tf.constant(scorer.output_vectors[1:])
        self.output_bias = tf.constant(scorer.output_bias[1:])
        self.item_ids = tf.constant(np.array(scorer.item_ids, dtype=object), dtype=tf.string)
        self.num_rows = len(scorer.item_ids) + 1
        self.calibration = tf.constant(weights.calibration)
        term = scorer.item_item
        self.decay = term.decay if term is not None else 1.0
        self.ages_in_time = term is not None and term.age_unit == "time"
        self.repeat_weight = term.repeat_weight if term is not None else 0.0
        self.negative_types = list(term.negative_types) if term is not None else []
        if term is not None:
            matrix = (term.matrix * term.alpha).tocoo()
            self.item_item = tf.sparse.reorder(
                tf.sparse.SparseTensor(
                    np.stack([matrix.row, matrix.col], axis=1).astype("int64"),
                    matrix.data.astype("float32"),
                    matrix.shape,
                )
            )
        else:
            self.item_item = None
        spec = tf.TensorSpec([None, max_len], tf.int64, name="sequences")
        k = tf.TensorSpec([], tf.int32, name="k")
        if self.ages_in_time:
            times = tf.TensorSpec([None, max_len], tf.float64, name="times")
            self.logits = tf.function(self._logits, input_signature=[spec, times])
            self.top_k = tf.function(
                lambda sequences, times, k: self._top_k(sequences, k, times), input_signature=[spec, times, k]
            )
        else:
            self.logits = tf.function(self._logits, input_signature=[spec])
            self.top_k = tf.function(self._top_k, input_signature=[spec, k])

    def _logits(self, tokens: tf.Tensor, times: tf.Tensor | None = None) -> tf.Tensor:
        """Logits for left-padded token rows (item index + event type × TYPE_STRIDE), as `Scorer.logits`."""
        sequences, types = tf.math.floormod(tokens, TYPE_STRIDE), tf.math.floordiv(tokens, TYPE_STRIDE)
        batch = tf.shape(sequences)[0]
        hidden = tf.zeros([batch, self.units])
        cell = tf.zeros([batch, self.units])
        block = {name: position for position, name in enumerate(LSTM_GATES)}
        recurrent, activation = ACTIVATIONS[LSTM_RECURRENT_ACTIVATION], ACTIVATIONS[LSTM_ACTIVATION]
        for step in range(self.max_len):
            items = sequences[:, step]
            gates = tf.gather(self.input_gates, items) + tf.gather(self.type_gates, types[:, step])
            gates += hidden @ self.recurrent
            parts = tf.split(gates, len(LSTM_GATES), axis=1)
            new_cell = recurrent(parts[block["forget"]]) * cell
            new_cell += recurrent(parts[block["input"]]) * activation(parts[block["candidate"]])
            new_hidden = recurrent(parts[block["output"]]) * activation(new_cell)
            present = tf.not_equal(items, 0)[:, None]
            hidden = tf.where(present, new_hidden, hidden)
            cell = tf.where(present, new_cell, cell)
        present = tf.cast(tf.not_equal(sequences, 0), tf.float32)
        steps = tf.gather(self.input_vectors, sequences) + tf.gather(self.type_vectors, types) * present[:, :, None]
        means = tf.reduce_sum(steps, axis=1) / tf.maximum(tf.reduce_sum(present, axis=1, keepdims=True), 1.0)
        users = hidden @ self.user_kernel + self.user_bias + means @ self.history_kernel
        logits = users @ tf.transpose(self.output_vectors) + self.output_bias
        if self.item_item is not None:  # each distinct history item once, at decay^(age of its latest occurrence)
            ages = tf.range(self.max_len - 1, -1, -1, dtype=tf.float32)[None, :]
            if times is not None:  # how many distinct times come after each step (as `itemitem.step_ages`)
                changes = tf.pad(tf.cast(times[:, 1:] != times[:, :-1], tf.float32), [[0, 0], [1, 0]])
                ages = tf.cumsum(changes, axis=1, reverse=True) - changes
            positive = present
            if self.negative_types:  # negative steps (cancel, dislike) never speak for an item in the term
                negative = tf.reduce_any(types[:, :, None] == tf.constant(self.negative_types, tf.int64), axis=-1)
                positive = present * (1.0 - tf.cast(negative, tf.float32))
            recency = tf.pow(tf.constant(self.decay, tf.float32), ages) * positive
            history = tf.reduce_max(tf.one_hot(sequences, self.num_rows) * recency[:, :, None], axis=1)
            term = tf.sparse.sparse_dense_matmul(self.item_item, tf.transpose(history), adjoint_a=True)
            logits += tf.transpose(term)[:, 1:] + self.repeat_weight * history[:, 1:]
        return logits

    def _top_k(self, sequences: tf.Tensor, k: tf.Tensor, times: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        logits = self._logits(sequences, times)
        items = tf.math.floormod(sequences, TYPE_STRIDE)
        if self.exclude_history:
            seen = tf.reduce_max(tf.one_hot(items - 1, self.num_rows - 1), axis=1) > 0
            logits = tf.where(seen, tf.fill(tf.shape(logits), -np.inf), logits)
        values, columns = tf.math.top_k(logits, k=tf.minimum(k, self.num_rows - 1))
        return {
            "item_ids": tf.gather(self.item_ids, columns),
            "item_indices": tf.cast(columns, tf.int64) + 1,
            "probabilities": tf.clip_by_value(
                tf.sigmoid(self.calibration[0] * values + self.calibration[1]), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR
            ),
        }


def export(project: ProjectDir, destination: Path, *, run_id: str | None = None, fmt: str = "savedmodel") -> Path:
    """Write the promoted run (or `run_id`) as a SavedModel folder at `destination` (replaced if it exists)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    run = load_run(project.run_dir(run_id) if run_id else project.current_run_dir())
    module = ScorerModule(run_scorer(run), run.config.max_len, event_policy(project).exclude_history)
    if destination.exists():
        shutil.rmtree(destination)
    with atomic_directory(destination) as staging:
        tf.saved_model.save(
            module,
            str(staging),
            signatures={"serving_default": module.top_k, "logits": module.logits},
        )
    return destination
