"""BERT item vectors: tokenize item text, run the bert4keras encoder, pool, cache by text and model."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from bigrec_cli.backend import Tokenizer, build_transformer_model, tf
from bigrec_cli.checkpoints import BertCheckpoint
from bigrec_cli.data import load_items
from bigrec_cli.errors import ConfigError
from bigrec_cli.feedback import open_store
from bigrec_cli.project import ProjectDir, atomic_write_json
from bigrec_cli.vectors import load_arrays, save_arrays, save_item_vectors

POOLINGS = ("mean", "cls")
BATCH_SIZE = 128
ProgressCallback = Callable[[int], None]
Encode = Callable[[list[str], "ProgressCallback | None"], np.ndarray]


class BertEncoder:
    """Turns texts into one vector each with a bert4keras BERT.

    Args:
        checkpoint: The BERT to load.
        pooling: `mean` (mean of the last layer over real tokens) or `cls`.
        max_length: Tokens per text, [CLS] and [SEP] included; longer texts are truncated.
    """

    def __init__(self, checkpoint: BertCheckpoint, pooling: str = "mean", max_length: int = 128) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}", hint=f"use one of {', '.join(POOLINGS)}")
        config = checkpoint.config()
        if max_length > config.get("max_position_embeddings", 512):
            max_length = config["max_position_embeddings"]
        self.checkpoint = checkpoint
        self.pooling = pooling
        self.max_length = max_length
        self.dim = int(config["hidden_size"])
        self.tokenizer = Tokenizer(str(checkpoint.dict_path), do_lower_case=config.get("do_lower_case", True))
        self._encode = tf.function(
            self._pooled,
            input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)],
        )

    @cached_property
    def model(self):
        """The bert4keras model, loaded with its weights when first used: an `extract` whose texts are all cached,
        or encoded by Ray's actors, never loads them in this process."""
        return build_transformer_model(
            str(self.checkpoint.config_path), str(self.checkpoint.checkpoint_path), model="bert"
        )

    def key(self) -> str:
        """Return a hash naming this model and pooling: vectors from different keys are never mixed."""
        digest = hashlib.sha256(self.checkpoint.fingerprint().encode())
        digest.update(f"{self.pooling}:{self.max_length}".encode())
        return digest.hexdigest()[:24]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Return the token ids of each text, [CLS] … [SEP], truncated to max_length."""
        return [self.tokenizer.encode(text, maxlen=self.max_length)[0] for text in texts]

    def _pooled(self, token_ids: "tf.Tensor", segment_ids: "tf.Tensor") -> "tf.Tensor":
        hidden = self.model([token_ids, segment_ids], training=False)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = tf.cast(tf.not_equal(token_ids, 0), hidden.dtype)[:, :, None]
        return tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def encode(
        self, texts: list[str], batch_size: int = BATCH_SIZE, on_progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """Return a (len(texts), dim) float32 matrix.

        Each distinct text runs through BERT once. Texts are sorted by token count and cut into batches of at most
        `batch_size` whose padding stays under 2% of their tokens (`length_batches`), so BERT computes almost only
        real tokens. `on_progress` counts the texts of `texts` that got their vector.
        """
        self.model  # noqa: B018 - loaded here, eagerly, never inside the tf.function's first trace
        distinct = list(dict.fromkeys(texts))
        row_of = {text: row for row, text in enumerate(distinct)}
        copies = np.bincount([row_of[text] for text in texts], minlength=len(distinct))
        token_lists = self.tokenize(distinct)
        encoded = np.zeros((len(distinct), self.dim), dtype="float32")
        for batch in length_batches([len(tokens) for tokens in token_lists], batch_size):
            token_ids = np.zeros((len(batch), len(token_lists[batch[-1]])), dtype="int32")
            for row, index in enumerate(batch):
                token_ids[row, : len(token_lists[index])] = token_lists[index]
            encoded[batch] = self._encode(token_ids, np.zeros_like(token_ids)).numpy()
            if on_progress is not None:
                on_progress(int(copies[batch].sum()))
        return encoded[[row_of[text] for text in texts]]


def length_batches(lengths: list[int], batch_size: int, max_padding: float = 0.02) -> list[np.ndarray]:
    """Cut indices sorted by length into batches of at most `batch_size`, each padded by at most `max_padding`.

    A batch grows while its rows × longest length stays within (1 + max_padding) × its real token count, so texts
    of one length share a batch and lengths that differ a little may join, but short texts never wait on long ones.
    Each batch lists its indices shortest first (its last one is its longest).
    """
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, tokens = 0, 0
    for position, index in enumerate(order):
        length, rows = lengths[index], position - start
        if rows and (rows >= batch_size or length * (rows + 1) > (1 + max_padding) * (tokens + length)):
            batches.append(order[start:position])
            start, tokens = position, 0
        tokens += length
    if len(order):
        batches.append(order[start:])
    return batches


def text_hash(text: str) -> str:
    """Return the cache key of one item text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class ExtractSummary:
    """What `extract` did."""

    num_items: int
    num_encoded: int
    num_reused: int
    dim: int
    model: str
    model_key: str
    seconds: float


def catalog_texts(project: ProjectDir) -> pd.DataFrame:
    """Return every item that needs a vector: the preprocessed catalog, then new items named by feedback."""
    items = load_items(project)[["item_id", "title", "text"]]
    store = open_store(project)
    if store.exists():
        extra = store.new_items(exclude=set(items["item_id"]))
        if len(extra):
            items = pd.concat([items, extra[["item_id", "title", "text"]]], ignore_index=True)
    return items


def extract(
    project: ProjectDir,
    checkpoint: BertCheckpoint,
    *,
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = BATCH_SIZE,
    on_start: Callable[[int], None] | None = None,
    on_progress: ProgressCallback | None = None,
    encode: Encode | None = None,
) -> ExtractSummary:
    """Encode every catalog item's text once per model and write `features/item_vectors.npz`.

    Args:
        project: The project directory (`preprocess` must have run).
        checkpoint: The BERT to run.
        pooling: `mean` or `cls`.
        max_length: Tokens per item text.
        batch_size: Most texts per forward pass.
        on_start: Called with the number of texts to encode, before encoding.
        on_progress: Called with the number of texts just encoded.
        encode: Encodes the texts the cache lacks (texts, on_progress) → (len(texts), dim) instead of this process's
            encoder, e.g. `raycluster.ray_encode` spreading them over Ray workers.

    Returns:
        Counts of items encoded now and reused from the cache.
    """
    started = time.perf_counter()
    project.require_data()
    items = catalog_texts(project)
    encoder = BertEncoder(checkpoint, pooling=pooling, max_length=max_length)
    model_key = encoder.key()
    cache_path = project.vector_cache_dir / f"{model_key}.npz"
    cache: dict[str, np.ndarray] = {}
    if cache_path.exists():
        stored = load_arrays(cache_path)
        cache = dict(zip(stored["keys"].tolist(), stored["vectors"]))
    hashes = [text_hash(text) for text in items["text"]]
    missing = sorted({key for key in hashes if key not in cache})
    missing_set = set(missing)
    if on_start is not None:
        on_start(len(missing))
    if missing:
        text_of = dict(zip(hashes, items["text"]))
        texts = [text_of[key] for key in missing]
        if encode is None:
            encoded = encoder.encode(texts, batch_size=batch_size, on_progress=on_progress)
        else:
            encoded = encode(texts, on_progress)
        cache.update(zip(missing, encoded))
        keys = sorted(cache)
        save_arrays(cache_path, keys=np.array(keys), vectors=np.stack([cache[key] for key in keys]))
    vectors = np.stack([cache[key] for key in hashes]).astype("float32")
    save_item_vectors(project.item_vectors_path, items["item_id"].tolist(), vectors)
    summary = ExtractSummary(
        num_items=len(items),
        num_encoded=len(missing),
        num_reused=sum(key not in missing_set for key in hashes),
        dim=encoder.dim,
        model=checkpoint.name,
        model_key=model_key,
        seconds=time.perf_counter() - started,
    )
    atomic_write_json(
        project.features_meta_path,
        {
            **summary.__dict__,
            "pooling": pooling,
            "max_length": encoder.max_length,
            "config_path": str(checkpoint.config_path),
            "checkpoint_path": str(checkpoint.checkpoint_path),
            "dict_path": str(checkpoint.dict_path),
        },
    )
    return summary


__all__ = ["BertEncoder", "extract", "catalog_texts", "length_batches"]
