"""The model's forward pass in numpy: user state from the live sequence, then one matrix product.

This is what `recommend` and `evaluate` run, so neither pays TensorFlow's import. `train` exports the arrays
(`scorer.npz`) and a test checks that these scores equal the Keras model's to 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bigrec_cli.errors import ArtifactError
from bigrec_cli.events import TYPE_STRIDE, token_items, token_types
from bigrec_cli.vectors import load_arrays, save_arrays

if TYPE_CHECKING:
    from bigrec_cli.itemitem import ItemItem

# The LSTM as Keras computes it: `model.py` builds its layer from these, and `Scorer` steps through them in numpy.
LSTM_GATES = ("input", "forget", "candidate", "output")  # Keras' order of the gate blocks in kernel columns
LSTM_ACTIVATION = "tanh"  # of the candidate and of the cell state
LSTM_RECURRENT_ACTIVATION = "sigmoid"  # of the input, forget and output gates


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


ACTIVATIONS = {"tanh": np.tanh, "sigmoid": sigmoid}


@dataclass(frozen=True)
class ScorerWeights:
    """Every array the numpy forward pass needs, checked for names and shapes when built.

    Row 0 of the per-item arrays is padding. Shapes: `rows` item rows, `text_dim` BERT size, `dim` item/user vector
    size, `units` LSTM units.
    """

    text_vectors: np.ndarray  # (rows, text_dim)
    projection_kernel: np.ndarray  # (text_dim, dim)
    projection_bias: np.ndarray  # (dim,)
    id_embedding: np.ndarray  # (rows, dim)
    item_bias: np.ndarray  # (rows,)
    lstm_kernel: np.ndarray  # (dim, 4 units)
    lstm_recurrent_kernel: np.ndarray  # (units, 4 units)
    lstm_bias: np.ndarray  # (4 units,)
    user_kernel: np.ndarray  # (units, dim)
    user_bias: np.ndarray  # (dim,)
    history_kernel: np.ndarray  # (dim, dim): the mean of the history's item vectors, into the user vector
    type_embedding: np.ndarray  # (types, dim): added to the item vector of each step by its event type; row 0 zero
    head_kernel: np.ndarray  # (dim, 1)
    head_bias: np.ndarray  # (1,)
    cold_item_bias: np.ndarray  # (1,)
    calibration: np.ndarray  # (2,): a, b of the probability sigmoid(a · logit + b), fitted on validation
    cold_boost: np.ndarray  # (1,): added to the logit of items without interactions, chosen on validation
    cold_rows: np.ndarray  # (rows,): 1 for items whose learned parts are borrowed (no training interactions)

    def __post_init__(self) -> None:
        for item in fields(self):
            object.__setattr__(self, item.name, np.asarray(getattr(self, item.name), dtype="float32"))
        rows, text_dim = self.text_vectors.shape
        dim = self.projection_kernel.shape[-1]
        units = self.lstm_recurrent_kernel.shape[0]
        expected = {
            "text_vectors": (rows, text_dim),
            "projection_kernel": (text_dim, dim),
            "projection_bias": (dim,),
            "id_embedding": (rows, dim),
            "item_bias": (rows,),
            "lstm_kernel": (dim, 4 * units),
            "lstm_recurrent_kernel": (units, 4 * units),
            "lstm_bias": (4 * units,),
            "user_kernel": (units, dim),
            "user_bias": (dim,),
            "history_kernel": (dim, dim),
            "type_embedding": (self.type_embedding.shape[0], dim),
            "head_kernel": (dim, 1),
            "head_bias": (1,),
            "cold_item_bias": (1,),
            "calibration": (2,),
            "cold_boost": (1,),
            "cold_rows": (rows,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ArtifactError(
                    f"scorer array {name} has shape {getattr(self, name).shape}, expected {shape}",
                    hint="the run is damaged or from another version: train again",
                )

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ScorerWeights":
        """Build from named arrays (a `scorer.npz`), refusing missing or unknown names."""
        arrays = dict(arrays)
        if "cold_item_bias" not in arrays and "item_bias" in arrays:  # runs written before it existed
            arrays["cold_item_bias"] = np.median(arrays["item_bias"][1:], keepdims=True)
        if "history_kernel" not in arrays and "user_bias" in arrays:  # runs written before it existed
            arrays["history_kernel"] = np.zeros((len(arrays["user_bias"]),) * 2, dtype="float32")
        if "calibration" not in arrays:  # runs written before it: the plain sigmoid of the logit
            arrays["calibration"] = np.array([1.0, 0.0], dtype="float32")
        if "cold_boost" not in arrays:  # runs written before it: borrowed biases as they are
            arrays["cold_boost"] = np.zeros(1, dtype="float32")
        if "cold_rows" not in arrays and "item_bias" in arrays:  # runs written before it: no item marked
            arrays["cold_rows"] = np.zeros(len(arrays["item_bias"]), dtype="float32")
        if "type_embedding" not in arrays and "projection_bias" in arrays:  # runs written before event types
            arrays["type_embedding"] = np.zeros((1, len(arrays["projection_bias"])), dtype="float32")
        names = {item.name for item in fields(cls)}
        if set(arrays) != names:
            missing, unknown = sorted(names - set(arrays)), sorted(set(arrays) - names)
            raise ArtifactError(
                f"scorer arrays do not match: missing {missing}, unknown {unknown}",
                hint="the run is damaged or from another version: train again",
            )
        return cls(**arrays)

    @classmethod
    def load(cls, path: Path) -> "ScorerWeights":
        """Read `scorer.npz` without pickle."""
        return cls.from_arrays(load_arrays(path))

    def save(self, path: Path) -> None:
        """Write `scorer.npz` atomically."""
        save_arrays(path, **self.arrays())

    def arrays(self) -> dict[str, np.ndarray]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


PROBABILITY_FLOOR = 1e-6  # a probability is never exactly 0 or 1, however far a logit lies
COLD_NEIGHBOURS = 10  # warm items whose learned parts an item without interactions borrows, by text similarity


def text_neighbours(
    text_vectors: np.ndarray, rows: np.ndarray, candidates: np.ndarray, k: int = COLD_NEIGHBOURS, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` most similar candidate rows by the cosine of their BERT text vectors, and weights (the
    similarities, clipped at 0 and normalised to sum 1; uniform when none is positive).

    Returns:
        (len(rows), k) candidate rows and (len(rows), k) weights.
    """
    k = min(k, len(candidates))
    if not len(rows) or not k:
        return np.zeros((len(rows), 0), dtype="int64"), np.zeros((len(rows), 0), dtype="float32")

    def unit(vectors: np.ndarray) -> np.ndarray:
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    pool = unit(text_vectors[candidates].astype("float32"))
    chosen, weights = [], []
    # a chunk's similarities, their argpartition's int64 indices and a negated copy: about 16 bytes per pair, so
    # at 100,000 candidates 1,024 rows held 1.6 GB; chunks are cut to 2^24 pairs
    chunk = max(1, min(chunk, 2**24 // len(candidates)))  # as metrics.batch_rows, which this layer cannot import
    for start in range(0, len(rows), chunk):
        similarity = unit(text_vectors[rows[start : start + chunk]].astype("float32")) @ pool.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        values = np.clip(np.take_along_axis(similarity, top, axis=1), 0.0, None)
        totals = values.sum(axis=1, keepdims=True)
        weights.append(np.where(totals > 0, values / np.maximum(totals, 1e-12), 1.0 / k).astype("float32"))
        chosen.append(candidates[top])
    return np.concatenate(chosen), np.concatenate(weights)


def impute_items(weights: ScorerWeights, rows: np.ndarray, candidates: np.ndarray) -> ScorerWeights:
    """Give items without interactions (`rows`) the similarity-weighted mean ID vector and bias of their nearest
    warm items by text (`candidates`): a new film of a series scores like the series, not like the median item. They
    are marked in `cold_rows`, so their logit also gets the run's cold boost (see `coldstart.choose_cold_boost`)."""
    if not len(rows) or not len(candidates):
        return weights
    neighbours, shares = text_neighbours(weights.text_vectors, rows, candidates)
    id_embedding, item_bias = weights.id_embedding.copy(), weights.item_bias.copy()
    id_embedding[rows] = np.einsum("nk,nkd->nd", shares, weights.id_embedding[neighbours])
    item_bias[rows] = np.einsum("nk,nk->n", shares, weights.item_bias[neighbours])
    cold_rows = weights.cold_rows.copy()
    cold_rows[rows] = 1.0
    return replace(weights, id_embedding=id_embedding, item_bias=item_bias, cold_rows=cold_rows)


def fit_calibration(positives: np.ndarray, negatives: np.ndarray, ridge: float = 1.0, steps: int = 50) -> np.ndarray:
    """(a, b) of sigmoid(a · logit + b) by maximum likelihood on held-out positives against sampled negatives, so
    the head's output stays a probability when the item-to-item term (chosen for ranking, not for calibration) is
    added to the logit. Newton's method on standardised logits with a ridge, which keeps a finite when the
    positives and negatives are perfectly separated."""
    logits = np.concatenate([positives, negatives]).astype("float64")
    # Platt's targets: (N₊ + 1) / (N₊ + 2) and 1 / (N₋ + 2), not 1 and 0, so a perfect separation stays finite.
    labels = np.concatenate(
        [
            np.full(len(positives), (len(positives) + 1) / (len(positives) + 2)),
            np.full(len(negatives), 1 / (len(negatives) + 2)),
        ]
    )
    finite = np.isfinite(logits)
    logits, labels = logits[finite], labels[finite]
    if not len(positives) or not len(negatives) or not len(logits):
        return np.array([1.0, 0.0], dtype="float32")
    mean, spread = float(logits.mean()), float(logits.std()) or 1.0
    features = np.stack([(logits - mean) / spread, np.ones_like(logits)], axis=1)

    def objective(theta: np.ndarray) -> float:
        z = features @ theta
        return float(np.sum(np.logaddexp(0.0, z) - labels * z) + 0.5 * ridge * theta @ theta)

    prior = float(np.clip(labels.mean(), 1e-6, 1 - 1e-6))
    params = np.array([1.0, np.log(prior / (1 - prior))])
    for _ in range(steps):
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(features @ params, -50, 50)))
        gradient = features.T @ (probabilities - labels) + ridge * params
        hessian = (features * (probabilities * (1 - probabilities))[:, None]).T @ features + ridge * np.eye(2)
        step, current = np.linalg.solve(hessian, gradient), objective(params)
        while objective(params - step) > current and np.abs(step).max() > 1e-12:  # damped: never uphill
            step = step / 2
        params = params - step
        if np.abs(step).max() < 1e-9:
            break
    if params[0] <= 0:  # a logit that does not rank positives above negatives: keep the plain sigmoid
        return np.array([1.0, 0.0], dtype="float32")
    scale = params[0] / spread
    return np.array([scale, params[1] - scale * mean], dtype="float32")


class Scorer:
    """Scores items for behaviour sequences with a trained run's weights.

    Args:
        weights: The exported weights; row 0 of the item arrays is padding.
        item_ids: Item id of rows 1…N.
        item_item: The run's item-to-item term, if it has one.
        event_types: The run's event types; a type's position is its id in the tokens of a sequence.
    """

    def __init__(
        self,
        weights: ScorerWeights,
        item_ids: list[str],
        item_item: ItemItem | None = None,
        event_types: list[str] | None = None,
    ) -> None:
        if len(item_ids) + 1 != weights.text_vectors.shape[0]:
            raise ArtifactError(
                f"the scorer has {weights.text_vectors.shape[0] - 1} items, the vocabulary {len(item_ids)}",
                hint="the run is damaged: train again",
            )
        self.weights = weights
        self.item_item = item_item if item_item is not None and item_item.active else None
        self.item_ids = list(item_ids)
        self.index_of = {item_id: index + 1 for index, item_id in enumerate(self.item_ids)}
        self.event_types = list(event_types or [])[: weights.type_embedding.shape[0]]
        self.type_of = {name: position for position, name in enumerate(self.event_types)}
        self._refresh()

    def _refresh(self) -> None:
        w = self.weights
        vectors = w.text_vectors @ w.projection_kernel + w.projection_bias + w.id_embedding
        vectors[0] = 0.0
        self.input_vectors = vectors.astype("float32")
        self.output_vectors = (vectors * w.head_kernel[:, 0]).astype("float32")
        self.output_bias = (w.item_bias + w.head_bias[0] + w.cold_boost[0] * w.cold_rows).astype("float32")
        # The LSTM's input transform depends only on the item and the type: apply it once per item and once per
        # type, not once per step and user.
        self.input_gates = (self.input_vectors @ w.lstm_kernel + w.lstm_bias).astype("float32")
        self.type_vectors = w.type_embedding.copy()
        self.type_vectors[0] = 0.0
        self.type_gates = (self.type_vectors @ w.lstm_kernel).astype("float32")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def add_items(self, item_ids: list[str], text_vectors: np.ndarray, impute: bool = True) -> None:
        """Make items unknown to the run scorable: from their text vector, plus (with `impute`) the ID vector, bias
        and item-to-item neighbours borrowed from the run's items nearest to them by text."""
        fresh = [index for index, item_id in enumerate(item_ids) if item_id not in self.index_of]
        if not fresh:
            return
        w = self.weights
        # borrowed from items that learned from interactions, never from ones that borrowed themselves
        known = np.flatnonzero(w.cold_rows[1:] == 0) + 1
        self.weights = replace(
            w,
            text_vectors=np.concatenate([w.text_vectors, text_vectors[fresh]]),
            id_embedding=np.concatenate([w.id_embedding, np.zeros((len(fresh), w.id_embedding.shape[1]))]),
            item_bias=np.concatenate([w.item_bias, np.full(len(fresh), w.cold_item_bias[0])]),
            cold_rows=np.concatenate([w.cold_rows, np.ones(len(fresh))]),
        )
        for index in fresh:
            self.item_ids.append(item_ids[index])
            self.index_of[item_ids[index]] = len(self.item_ids)
        added = np.arange(len(w.item_bias), len(self.item_ids) + 1)
        if impute:
            # like items without interactions at training time: their text neighbours' learned parts
            self.weights = impute_items(self.weights, added, known)
        if self.item_item is not None:
            self.item_item = self.item_item.grow(len(self.item_ids) + 1)
            if impute:
                self.item_item = self.item_item.impute(added, *text_neighbours(self.weights.text_vectors, added, known))
        self._refresh()

    def user_states(self, sequences: np.ndarray) -> np.ndarray:
        """Run the LSTM over left-padded index sequences (0 = padding) and return the last user vectors.

        Args:
            sequences: (num_users, length) item indices, most recent last.

        Returns:
            (num_users, dim) user vectors, one LSTM pass for the whole batch.
        """
        w = self.weights
        units = w.lstm_recurrent_kernel.shape[0]
        items, types = token_items(sequences), token_types(sequences)
        typed = bool(types.any())
        num_users, length = sequences.shape
        hidden = np.zeros((num_users, units), dtype="float32")
        cell = np.zeros((num_users, units), dtype="float32")
        present = items > 0
        starts = np.where(present.any(axis=1), np.argmax(present, axis=1), length)
        if not present[np.arange(length)[None, :] >= starts[:, None]].all():
            return self._user_states_with_gaps(items, types)
        # Rows sorted by where their sequence starts: at each step the rows already started are a prefix, so
        # the step runs on that prefix only (no work, no masking for rows still in their padding).
        order = np.argsort(starts, kind="stable")
        sorted_starts, rows, row_types = starts[order], items[order], types[order]
        recurrent = w.lstm_recurrent_kernel
        for step in range(int(sorted_starts[0]) if num_users else length, length):
            active = int(np.searchsorted(sorted_starts, step, side="right"))
            gates = self.input_gates[rows[:active, step]]
            if typed:
                gates += self.type_gates[row_types[:active, step]]
            gates += hidden[:active] @ recurrent
            self._lstm_step(gates, hidden[:active], cell[:active], units)
        states = np.empty_like(hidden)
        states[order] = hidden
        return states @ w.user_kernel + w.user_bias + self._history_means(items, types) @ w.history_kernel

    def _history_means(self, items: np.ndarray, types: np.ndarray) -> np.ndarray:
        """The mean step vector (item + event type) of each row (padding excluded; zeros for an empty row)."""
        counts = np.maximum((items > 0).sum(axis=1, keepdims=True), 1).astype("float32")
        total = self.input_vectors[items].sum(axis=1)
        if types.any():
            total += (self.type_vectors[types] * (items > 0)[..., None]).sum(axis=1)
        return total / counts

    @staticmethod
    def _lstm_step(gates: np.ndarray, hidden: np.ndarray, cell: np.ndarray, units: int) -> None:
        """One Keras LSTM step over gate blocks in `LSTM_GATES` order, updating hidden and cell in place."""
        block = {name: slice(position * units, (position + 1) * units) for position, name in enumerate(LSTM_GATES)}
        recurrent, activation = ACTIVATIONS[LSTM_RECURRENT_ACTIVATION], ACTIVATIONS[LSTM_ACTIVATION]
        cell *= recurrent(gates[:, block["forget"]])
        cell += recurrent(gates[:, block["input"]]) * activation(gates[:, block["candidate"]])
        np.multiply(recurrent(gates[:, block["output"]]), activation(cell), out=hidden)

    def _user_states_with_gaps(self, items: np.ndarray, types: np.ndarray) -> np.ndarray:
        """The same LSTM for rows with padding inside them: a padded step leaves that row's state as it was."""
        w = self.weights
        units = w.lstm_recurrent_kernel.shape[0]
        hidden = np.zeros((len(items), units), dtype="float32")
        cell = np.zeros((len(items), units), dtype="float32")
        for step in range(items.shape[1]):
            active = items[:, step] > 0
            new_hidden, new_cell = hidden.copy(), cell.copy()
            gates = self.input_gates[items[:, step]] + self.type_gates[types[:, step]]
            gates += hidden @ w.lstm_recurrent_kernel
            self._lstm_step(gates, new_hidden, new_cell, units)
            hidden = np.where(active[:, None], new_hidden, hidden)
            cell = np.where(active[:, None], new_cell, cell)
        return hidden @ w.user_kernel + w.user_bias + self._history_means(items, types) @ w.history_kernel

    def logits(self, sequences: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
        """Return (num_users, num_items) logits for items 1…N (column j is item index j + 1); `times`: the steps'
        time stamps, aligned with `sequences` (the item-to-item term may count ages in time)."""
        return self.logits_from_states(self.user_states(sequences), sequences, times)

    def logits_from_states(
        self, states: np.ndarray, sequences: np.ndarray | None = None, times: np.ndarray | None = None
    ) -> np.ndarray:
        """Return logits for user vectors from `user_states`: one matrix product with the item matrix, plus the
        item-to-item term of the same `sequences` (and their `times`) when the run has one."""
        logits = states @ self.output_vectors[1:].T + self.output_bias[1:]
        if self.item_item is not None and sequences is not None:
            logits += self.item_item.scores(sequences, times)
        return logits

    def probabilities(self, sequences: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
        """Return the sigmoid engagement probabilities, (num_users, num_items)."""
        return self.probability(self.logits(sequences, times))

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """The engagement probability of logits: sigmoid(a · logit + b), a and b fitted on validation (a > 0, so
        the order of the items never changes)."""
        a, b = self.weights.calibration.astype("float64")
        return np.clip(sigmoid(a * np.asarray(logits, dtype="float64") + b), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)

    def encode_sequences(
        self, histories: list[list[str]], max_len: int, types: list[list[str]] | None = None
    ) -> np.ndarray:
        """Turn item-id histories (and their event types) into left-padded token rows of the last `max_len` known
        items; a type the run does not know reads as type 0."""
        rows = np.zeros((len(histories), max_len), dtype="int64")
        for row, history in enumerate(histories):
            kinds = types[row] if types is not None else [""] * len(history)
            tokens = [
                self.index_of[item] + self.type_of.get(kind, 0) * TYPE_STRIDE
                for item, kind in zip(history, kinds)
                if item in self.index_of
            ][-max_len:]
            if tokens:
                rows[row, max_len - len(tokens) :] = tokens
        return rows
