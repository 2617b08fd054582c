"""The shared Keras core: BERT item vectors → LSTM over the user's sequence → Dense(1) → sigmoid.

Item vectors come from one table (frozen BERT features) or from the BERT encoder inside the graph
(`fine_tune_bert`); either way a batch looks its items up by index, never copying a window per target.
Every position of every sequence is a training example: the next item is the positive, sampled items
are the negatives, and the loss is binary cross-entropy on the sigmoid of the head's output.
"""

from __future__ import annotations

import numpy as np

from bigrec_cli.backend import keras, tf
from bigrec_cli.config import TrainConfig
from bigrec_cli.events import TYPE_STRIDE
from bigrec_cli.scoring import LSTM_ACTIVATION, LSTM_RECURRENT_ACTIVATION, ScorerWeights


class ItemTable(keras.layers.Layer):
    """Item vectors: a projection of each item's BERT vector, plus an optional learned ID vector.

    Args:
        text_vectors: (num_items + 1, text_dim) BERT vectors; row 0 is padding.
        dim: Output size.
        id_embedding: Learn a per-item vector added to the projected text vector.
        bert: A bert4keras model to run inside the graph instead of the frozen table.
        token_table: (num_items + 1, length) token ids of each item, required with `bert`.
    """

    def __init__(
        self,
        text_vectors: np.ndarray,
        dim: int,
        id_embedding: bool = True,
        bert=None,
        token_table: np.ndarray | None = None,
        id_dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.id_dropout = id_dropout
        self.num_rows, self.text_dim = text_vectors.shape
        self.text_table = self.add_weight(
            name="text_vectors",
            shape=text_vectors.shape,
            trainable=False,
            initializer=keras.initializers.Constant(text_vectors.astype("float32")),
        )
        self.projection = keras.layers.Dense(dim, name="projection")
        self.id_embedding = self.add_weight(
            name="id_embedding", shape=(self.num_rows, dim), trainable=id_embedding, initializer="zeros"
        )
        self.item_bias = self.add_weight(name="item_bias", shape=(self.num_rows,), initializer="zeros")
        self.bert = bert
        self.token_table = None if token_table is None else tf.constant(token_table, dtype=tf.int32)

    def text_vectors(self, indices: "tf.Tensor", training: bool = False) -> "tf.Tensor":
        """Return BERT vectors for item indices of any shape, running BERT once per distinct item."""
        if self.bert is None:
            return tf.gather(self.text_table, indices)
        flat = tf.reshape(indices, [-1])
        unique, position = tf.unique(flat)
        token_ids = tf.gather(self.token_table, unique)
        hidden = self.bert([token_ids, tf.zeros_like(token_ids)], training=training)
        mask = tf.cast(tf.not_equal(token_ids, 0), hidden.dtype)[:, :, None]
        pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return tf.reshape(tf.gather(pooled, position), tf.concat([tf.shape(indices), [self.text_dim]], axis=0))

    def lookup(self, indices: "tf.Tensor", training: bool = False) -> tuple["tf.Tensor", "tf.Tensor"]:
        """Return the item vectors and item biases of indices of any shape.

        With `id_dropout`, a dropped lookup loses both of its learned per-item parts (ID vector and bias), so it
        looks exactly like an item that never had an interaction: the text path learns to rank those too.
        """
        ids = tf.gather(self.id_embedding, indices)
        bias = tf.gather(self.item_bias, indices)
        if training and self.id_dropout > 0:
            keep = tf.cast(tf.random.uniform(tf.shape(indices)) >= self.id_dropout, ids.dtype)
            ids, bias = ids * keep[..., None], bias * keep
        if self.bert is None:
            # Project the whole table once, then look rows up: a batch names each item many times (every
            # candidate of every position), and projecting per lookup multiplied the work by that count.
            return tf.gather(self.projection(self.text_table), indices) + ids, bias
        return self.projection(self.text_vectors(indices, training)) + ids, bias

    def call(self, indices: "tf.Tensor", training: bool = False) -> "tf.Tensor":
        return self.lookup(indices, training)[0]


class SequenceRecommender(keras.Model):
    """Reads a behaviour sequence with an LSTM and scores candidate items with a sigmoid head.

    The head is Dense(1) over the element-wise product of the user vector and the candidate's item vector, plus
    an item bias; so scoring the whole catalog for one user is one LSTM pass and one matrix product.
    """

    def __init__(
        self, config: TrainConfig, item_table: ItemTable, num_sampled_items: int, num_event_types: int = 1, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.items = item_table
        # What kind of behaviour each step was (click, purchase, cancel, …): a learned vector added to the item's.
        # Type 0, the data's most common positive type, is the reference and stays zero, so with one type the model
        # is exactly the model without types.
        self.event_types = self.add_weight(
            name="event_types", shape=(max(num_event_types, 1), config.dim), initializer="zeros"
        )
        self.dropout = keras.layers.Dropout(config.dropout)
        # Spelled out because the numpy scorer repeats this computation (gate order: scoring.LSTM_GATES).
        self.lstm = keras.layers.LSTM(
            config.lstm_units,
            activation=LSTM_ACTIVATION,
            recurrent_activation=LSTM_RECURRENT_ACTIVATION,
            return_sequences=True,
            name="lstm",
        )
        self.user_projection = keras.layers.Dense(config.dim, name="user_projection")
        # The mean of every item vector read so far, projected into the user vector: the whole history as a set,
        # next to the LSTM's order-aware state (a factorised item-to-item term, as in FISM). Zero at the start.
        self.history_projection = keras.layers.Dense(
            config.dim, use_bias=False, kernel_initializer="zeros", trainable=config.history_mean, name="history"
        )
        self.head = keras.layers.Dense(1, kernel_initializer="ones", name="head")  # starts as a plain dot product
        self.positive_weight = positive_weight(config, num_sampled_items)

    def get_config(self) -> dict:
        return {"config": self.config.to_dict()}

    def step_vectors(self, tokens: "tf.Tensor", training: bool = False) -> "tf.Tensor":
        """The LSTM's input for sequence tokens (item index + type × TYPE_STRIDE): item vector + event type vector."""
        tokens = tf.cast(tokens, tf.int64)
        items, types = tf.math.floormod(tokens, TYPE_STRIDE), tf.math.floordiv(tokens, TYPE_STRIDE)
        type_vectors = tf.gather(self.event_types, types) * tf.cast(types > 0, self.event_types.dtype)[..., None]
        return self.items(items, training=training) + type_vectors

    def states(self, sequences: "tf.Tensor", training: bool = False) -> "tf.Tensor":
        """Return (batch, length, dim) user vectors after each position of left-padded token sequences."""
        vectors = self.dropout(self.step_vectors(sequences, training=training), training=training)
        mask = tf.not_equal(tf.math.floormod(tf.cast(sequences, tf.int64), TYPE_STRIDE), 0)
        hidden = self.lstm(vectors, mask=mask, training=training)
        present = tf.cast(mask, vectors.dtype)[:, :, None]
        means = tf.cumsum(vectors * present, axis=1) / tf.maximum(tf.cumsum(present, axis=1), 1.0)
        return self.user_projection(hidden) + self.history_projection(means)

    def candidate_logits(self, states: "tf.Tensor", candidates: "tf.Tensor", training: bool = False) -> "tf.Tensor":
        """Return logits of (batch, length, num_candidates) candidate items at each position."""
        vectors, bias = self.items.lookup(candidates, training=training)
        return tf.squeeze(self.head(states[:, :, None, :] * vectors), axis=-1) + bias

    def call(self, inputs, training: bool = False):
        sequences, candidates = inputs
        return self.candidate_logits(self.states(sequences, training), candidates, training)

    def train_step(self, data):
        sequences, targets, negatives = data["sequences"], data["targets"], data["negatives"]
        with tf.GradientTape() as tape:
            candidates = tf.concat([targets[:, :, None], negatives], axis=-1)
            logits = self((sequences, candidates), training=True)
            total, count = sampled_bce_parts(logits, targets, negatives, self.positive_weight, data.get("weights"))
            replica = tf.distribute.get_replica_context()
            if replica is not None and replica.num_replicas_in_sync > 1:
                # Each worker holds a slice of the global batch, and the optimizer sums the workers' gradients: so
                # each divides by the global batch's weight, and the sum is exactly the one-worker loss and gradient.
                count = replica.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss = total / tf.maximum(count, 1e-9)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss}

    def catalog_logits(self, sequences: np.ndarray) -> np.ndarray:
        """Keras reference of the scorer: (num_users, num_items) logits for items 1…N from the last position."""
        states = self.states(tf.constant(sequences), training=False)[:, -1]
        indices = tf.range(1, self.items.num_rows)
        vectors = self.items(indices[None, :])[0]
        logits = tf.squeeze(self.head(states[:, None, :] * vectors[None, :, :]), axis=-1)
        return (logits + tf.gather(self.items.item_bias, indices)[None, :]).numpy()


def positive_weight(config: TrainConfig, num_items: int) -> float:
    """Return β, the weight of the positive term: 1 for BCE, gSASRec's calibrated value for gBCE.

    gBCE (Petrov & Macdonald, 2023): β = α (t (1 − 1/α) + 1/α) with α = negatives / (num_items − 1).
    """
    if config.loss != "gbce":
        return 1.0
    alpha = min(config.negatives / max(num_items - 1, 1), 1.0)
    return float(alpha * (config.gbce_t * (1.0 - 1.0 / alpha) + 1.0 / alpha))


def sampled_bce(
    logits: "tf.Tensor",
    targets: "tf.Tensor",
    negatives: "tf.Tensor",
    beta: float,
    weights: "tf.Tensor | None" = None,
) -> "tf.Tensor":
    """Binary cross-entropy of the sigmoid over positions with a target; negatives equal to it are ignored.

    With `weights` (batch, length), each position's loss (its positive and its negatives) counts in proportion to
    its weight: the loss is Σ wₚ·lossₚ / Σ wₚ, so a purchase of weight 3 pulls three times as hard as a click of 1.
    """
    total, count = sampled_bce_parts(logits, targets, negatives, beta, weights)
    return total / tf.maximum(count, 1e-9)


def sampled_bce_parts(
    logits: "tf.Tensor",
    targets: "tf.Tensor",
    negatives: "tf.Tensor",
    beta: float,
    weights: "tf.Tensor | None" = None,
) -> tuple["tf.Tensor", "tf.Tensor"]:
    """`sampled_bce` as (Σ wₚ·lossₚ, Σ wₚ), so that workers holding slices of one batch can share the denominator."""
    valid = tf.cast(tf.not_equal(targets, 0), logits.dtype)
    if weights is not None:
        valid = valid * tf.cast(weights, logits.dtype)
    negative_valid = tf.cast(tf.not_equal(negatives, targets[:, :, None]), logits.dtype)
    positive_loss = beta * tf.nn.softplus(-logits[:, :, 0])
    negative_loss = tf.reduce_sum(tf.nn.softplus(logits[:, :, 1:]) * negative_valid, axis=-1)
    return tf.reduce_sum((positive_loss + negative_loss) * valid), tf.reduce_sum(valid)


def build_model(
    config: TrainConfig,
    text_vectors: np.ndarray,
    bert=None,
    token_table: np.ndarray | None = None,
    num_event_types: int = 1,
) -> SequenceRecommender:
    """Build and compile the model for a catalog.

    Args:
        config: Hyper-parameters.
        text_vectors: (num_items + 1, text_dim) frozen BERT vectors, row 0 padding.
        bert: With `config.fine_tune_bert`, the bert4keras encoder to train end to end.
        token_table: With `bert`, the token ids of every item.
        num_event_types: How many event types the sequences hold (see `protocol.event_vocabulary`).

    Returns:
        A compiled SequenceRecommender whose weights exist.
    """
    table = ItemTable(
        text_vectors,
        config.dim,
        id_embedding=config.id_embedding,
        bert=bert,
        token_table=token_table,
        id_dropout=config.id_dropout,
        name="items",
    )
    model = SequenceRecommender(
        config, table, num_sampled_items=text_vectors.shape[0] - 1, num_event_types=num_event_types
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate))
    dummy = np.zeros((1, 2), dtype="int64")
    model((dummy, dummy[:, :, None]))
    return model


def export_scorer_weights(model: SequenceRecommender, batch_size: int = 256) -> ScorerWeights:
    """Return the weights the numpy scorer needs; with a fine-tuned BERT, its item vectors are recomputed."""
    items = model.items
    if items.bert is None:
        text_vectors = items.text_table.numpy()
    else:
        parts = [
            items.text_vectors(tf.range(start, min(start + batch_size, items.num_rows))).numpy()
            for start in range(0, items.num_rows, batch_size)
        ]
        text_vectors = np.concatenate(parts)
        text_vectors[0] = 0.0
    kernel, recurrent_kernel, bias = model.lstm.cell.get_weights()
    return ScorerWeights(
        text_vectors=text_vectors,
        projection_kernel=items.projection.kernel.numpy(),
        projection_bias=items.projection.bias.numpy(),
        id_embedding=items.id_embedding.numpy(),
        item_bias=items.item_bias.numpy(),
        lstm_kernel=kernel,
        lstm_recurrent_kernel=recurrent_kernel,
        lstm_bias=bias,
        user_kernel=model.user_projection.kernel.numpy(),
        user_bias=model.user_projection.bias.numpy(),
        history_kernel=model.history_projection.kernel.numpy(),
        type_embedding=np.concatenate([np.zeros((1, model.config.dim)), model.event_types.numpy()[1:]]),
        head_kernel=model.head.kernel.numpy(),
        head_bias=model.head.bias.numpy(),
        cold_item_bias=np.array([cold_item_bias(model.config, items.item_bias.numpy()[1:])]),
        calibration=np.array([1.0, 0.0]),
        cold_boost=np.zeros(1),
        cold_rows=np.zeros(len(items.item_bias.numpy())),
    )


def cold_item_bias(config: TrainConfig, item_bias: np.ndarray) -> float:
    """Return the bias an item without interactions gets.

    A model trained with `id_dropout` has seen items without their learned parts (bias 0) and learned to rank them
    from text; otherwise the median bias of the known items is the least surprising value.
    """
    if config.id_dropout > 0 or not len(item_bias):
        return 0.0
    return float(np.median(item_bias))


def reset_cold_items(model: SequenceRecommender, cold: np.ndarray) -> None:
    """Make items without training interactions use their text alone: zero ID vector, the cold-item bias.

    Their learned parameters only ever saw them as sampled negatives, which says nothing about them.
    """
    if not cold.any():
        return
    id_embedding = model.items.id_embedding.numpy()
    id_embedding[cold] = 0.0
    model.items.id_embedding.assign(id_embedding)
    bias = model.items.item_bias.numpy()
    warm = ~cold
    warm[0] = False
    bias[cold] = cold_item_bias(model.config, bias[warm])
    model.items.item_bias.assign(bias)


def warm_start(
    model: SequenceRecommender,
    weights: ScorerWeights,
    old_item_ids: list[str],
    new_item_ids: list[str],
    old_event_types: list[str] | None = None,
    new_event_types: list[str] | None = None,
) -> None:
    """Copy a previous run's weights into a model whose catalog may have grown or been reordered.

    Shared layers are copied as they are; per-item rows (ID vector, bias) follow their item id, and items the
    previous run did not know start from zero. Frozen text vectors always come from the current extraction.
    """
    items = model.items
    items.projection.kernel.assign(weights.projection_kernel)
    items.projection.bias.assign(weights.projection_bias)
    old_row = {item_id: row for row, item_id in enumerate(old_item_ids, start=1)}
    rows = np.array([old_row.get(item_id, 0) for item_id in new_item_ids], dtype="int64")
    known = rows > 0
    id_embedding = np.zeros(items.id_embedding.shape, dtype="float32")
    id_embedding[1:][known] = weights.id_embedding[rows[known]]
    items.id_embedding.assign(id_embedding)
    bias = np.zeros(items.item_bias.shape, dtype="float32")
    bias[1:][known] = weights.item_bias[rows[known]]
    items.item_bias.assign(bias)
    model.lstm.cell.set_weights([weights.lstm_kernel, weights.lstm_recurrent_kernel, weights.lstm_bias])
    model.user_projection.set_weights([weights.user_kernel, weights.user_bias])
    model.history_projection.set_weights([weights.history_kernel])
    # Event type vectors follow their type's name (ids follow frequency, so new data may reorder them); the new
    # reference type (id 0) stays zero, and types the previous run did not know start from zero.
    old_type = {name: row for row, name in enumerate(old_event_types or []) if row < len(weights.type_embedding)}
    types = np.zeros(model.event_types.shape, dtype="float32")
    for row, name in enumerate(new_event_types or []):
        if row > 0 and row < types.shape[0] and name in old_type:
            types[row] = weights.type_embedding[old_type[name]]
    model.event_types.assign(types)
    model.head.set_weights([weights.head_kernel, weights.head_bias])
