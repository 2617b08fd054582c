"""The model's forward pass in numpy: user state from the live sequence, then one matrix product.

This is what `recommend` and `evaluate` run, so neither pays TensorFlow's import. `train` exports the arrays
(`scorer.npz`) and a test checks that these scores equal the Keras model's to 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigrec_cli.vectors import load_arrays

SCORER_ARRAYS = (
    "text_vectors", "projection_kernel", "projection_bias", "id_embedding", "item_bias", "lstm_kernel",
    "lstm_recurrent_kernel", "lstm_bias", "user_kernel", "user_bias", "head_kernel", "head_bias", "cold_item_bias",
)  # fmt: skip
# Arrays a run written by an earlier version may lack, with how to stand in for them.
OPTIONAL_ARRAYS = {"cold_item_bias": lambda arrays: np.median(arrays["item_bias"][1:], keepdims=True)}


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


class Scorer:
    """Scores items for behaviour sequences with a trained run's weights.

    Args:
        arrays: The exported weights (see SCORER_ARRAYS); row 0 of the item arrays is padding.
        item_ids: Item id of rows 1…N.
    """

    def __init__(self, arrays: dict[str, np.ndarray], item_ids: list[str]) -> None:
        arrays = dict(arrays)
        for name, stand_in in OPTIONAL_ARRAYS.items():
            if name not in arrays:
                arrays[name] = stand_in(arrays)
        self.arrays = {name: np.asarray(arrays[name], dtype="float32") for name in SCORER_ARRAYS}
        self.item_ids = list(item_ids)
        self.index_of = {item_id: index + 1 for index, item_id in enumerate(self.item_ids)}
        self._refresh()

    @classmethod
    def load(cls, path: Path, item_ids: list[str]) -> "Scorer":
        """Read `scorer.npz` without pickle."""
        return cls(load_arrays(path), item_ids)

    def _refresh(self) -> None:
        a = self.arrays
        vectors = a["text_vectors"] @ a["projection_kernel"] + a["projection_bias"] + a["id_embedding"]
        vectors[0] = 0.0
        self.input_vectors = vectors.astype("float32")
        self.output_vectors = (vectors * a["head_kernel"][:, 0]).astype("float32")
        self.output_bias = (a["item_bias"] + a["head_bias"][0]).astype("float32")
        # The LSTM's input transform depends only on the item: apply it once per item, not once per step and user.
        self.input_gates = (self.input_vectors @ a["lstm_kernel"] + a["lstm_bias"]).astype("float32")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def add_items(self, item_ids: list[str], text_vectors: np.ndarray) -> None:
        """Make items unknown to the run scorable from their text vectors alone (no learned ID vector)."""
        fresh = [index for index, item_id in enumerate(item_ids) if item_id not in self.index_of]
        if not fresh:
            return
        a = self.arrays
        cold_bias = float(a["cold_item_bias"][0])
        a["text_vectors"] = np.concatenate([a["text_vectors"], text_vectors[fresh].astype("float32")])
        a["id_embedding"] = np.concatenate([a["id_embedding"], np.zeros((len(fresh), a["id_embedding"].shape[1]), "float32")])
        a["item_bias"] = np.concatenate([a["item_bias"], np.full(len(fresh), cold_bias, "float32")])
        for index in fresh:
            self.item_ids.append(item_ids[index])
            self.index_of[item_ids[index]] = len(self.item_ids)
        self._refresh()

    def user_states(self, sequences: np.ndarray) -> np.ndarray:
        """Run the LSTM over left-padded index sequences (0 = padding) and return the last user vectors.

        Args:
            sequences: (num_users, length) item indices, most recent last.

        Returns:
            (num_users, dim) user vectors, one LSTM pass for the whole batch.
        """
        a = self.arrays
        units = a["lstm_recurrent_kernel"].shape[0]
        num_users, length = sequences.shape
        hidden = np.zeros((num_users, units), dtype="float32")
        cell = np.zeros((num_users, units), dtype="float32")
        present = sequences > 0
        starts = np.where(present.any(axis=1), np.argmax(present, axis=1), length)
        if not present[np.arange(length)[None, :] >= starts[:, None]].all():
            return self._user_states_with_gaps(sequences)
        # Rows sorted by where their sequence starts: at each step the rows already started are a prefix, so
        # the step runs on that prefix only (no work, no masking for rows still in their padding).
        order = np.argsort(starts, kind="stable")
        sorted_starts, rows = starts[order], sequences[order]
        recurrent = a["lstm_recurrent_kernel"]
        for step in range(int(sorted_starts[0]) if num_users else length, length):
            active = int(np.searchsorted(sorted_starts, step, side="right"))
            gates = self.input_gates[rows[:active, step]]
            gates += hidden[:active] @ recurrent
            self._lstm_step(gates, hidden[:active], cell[:active], units)
        states = np.empty_like(hidden)
        states[order] = hidden
        return states @ a["user_kernel"] + a["user_bias"]

    @staticmethod
    def _lstm_step(gates: np.ndarray, hidden: np.ndarray, cell: np.ndarray, units: int) -> None:
        """One Keras LSTM step (gate order i, f, c, o; sigmoid and tanh), updating hidden and cell in place."""
        input_forget = sigmoid(gates[:, : 2 * units])
        candidate = np.tanh(gates[:, 2 * units : 3 * units])
        output = sigmoid(gates[:, 3 * units :])
        cell *= input_forget[:, units:]
        cell += input_forget[:, :units] * candidate
        np.multiply(output, np.tanh(cell), out=hidden)

    def _user_states_with_gaps(self, sequences: np.ndarray) -> np.ndarray:
        """The same LSTM for rows with padding inside them: a padded step leaves that row's state as it was."""
        a = self.arrays
        units = a["lstm_recurrent_kernel"].shape[0]
        hidden = np.zeros((len(sequences), units), dtype="float32")
        cell = np.zeros((len(sequences), units), dtype="float32")
        for step in range(sequences.shape[1]):
            active = sequences[:, step] > 0
            new_hidden, new_cell = hidden.copy(), cell.copy()
            gates = self.input_gates[sequences[:, step]] + hidden @ a["lstm_recurrent_kernel"]
            self._lstm_step(gates, new_hidden, new_cell, units)
            hidden = np.where(active[:, None], new_hidden, hidden)
            cell = np.where(active[:, None], new_cell, cell)
        return hidden @ a["user_kernel"] + a["user_bias"]

    def logits(self, sequences: np.ndarray) -> np.ndarray:
        """Return (num_users, num_items) logits for items 1…N (column j is item index j + 1)."""
        return self.logits_from_states(self.user_states(sequences))

    def logits_from_states(self, states: np.ndarray) -> np.ndarray:
        """Return logits for user vectors from `user_states`: one matrix product with the item matrix."""
        return states @ self.output_vectors[1:].T + self.output_bias[1:]

    def probabilities(self, sequences: np.ndarray) -> np.ndarray:
        """Return the sigmoid engagement probabilities, (num_users, num_items)."""
        return sigmoid(self.logits(sequences))

    def encode_sequences(self, histories: list[list[str]], max_len: int) -> np.ndarray:
        """Turn item-id histories into left-padded index rows of the last `max_len` known items."""
        rows = np.zeros((len(histories), max_len), dtype="int64")
        for row, history in enumerate(histories):
            indices = [self.index_of[item] for item in history if item in self.index_of][-max_len:]
            if indices:
                rows[row, max_len - len(indices) :] = indices
        return rows
