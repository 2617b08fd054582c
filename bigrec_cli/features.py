"""BERT item vectors: tokenize item text, run the bert4keras encoder, pool, cache by text and model."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bigrec_cli import data as data_module
from bigrec_cli.backend import Tokenizer, build_transformer_model, tf
from bigrec_cli.bertfiles import (
    CHECKPOINT_PREFIX,
    CONFIG_NAME,
    SAMPLE_BERT_DIR,
    VOCAB_NAME,
    BertCheckpoint,
    tiny_model_dir,
)
from bigrec_cli.errors import ConfigError
from bigrec_cli.feedback import FeedbackStore
from bigrec_cli.project import ProjectDir, atomic_temporary, atomic_write_json, commit_temporary
from bigrec_cli.vectors import save_item_vectors

POOLINGS = ("mean", "cls")
BATCH_SIZE = 128
ProgressCallback = Callable[[int], None]


def write_tiny_checkpoint(source: Path, destination: Path, seed: int = 0) -> BertCheckpoint:
    """Write a deterministic, randomly initialised Google-format BERT for the config and vocab in `source`.

    The weights follow BERT's initialiser (truncated normal, std 0.02), drawn from numpy with `seed`, so every
    machine writes the same checkpoint. The files are written into a temporary folder and renamed into place.
    """
    config = BertCheckpoint(source / CONFIG_NAME, source / CHECKPOINT_PREFIX, source / VOCAB_NAME, "tiny").config()
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape: int) -> np.ndarray:
        return np.clip(rng.normal(0.0, 0.02, size=shape), -0.04, 0.04).astype("float32")

    variables = {
        "bert/embeddings/word_embeddings": normal(config["vocab_size"], hidden),
        "bert/embeddings/token_type_embeddings": normal(config["type_vocab_size"], hidden),
        "bert/embeddings/position_embeddings": normal(config["max_position_embeddings"], hidden),
        "bert/embeddings/LayerNorm/gamma": np.ones(hidden, "float32"),
        "bert/embeddings/LayerNorm/beta": np.zeros(hidden, "float32"),
        "bert/pooler/dense/kernel": normal(hidden, hidden),
        "bert/pooler/dense/bias": np.zeros(hidden, "float32"),
    }
    for layer in range(config["num_hidden_layers"]):
        prefix = f"bert/encoder/layer_{layer}/"
        for name in ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense"):
            variables[prefix + name + "/kernel"] = normal(hidden, hidden)
            variables[prefix + name + "/bias"] = np.zeros(hidden, "float32")
        variables[prefix + "intermediate/dense/kernel"] = normal(hidden, inner)
        variables[prefix + "intermediate/dense/bias"] = np.zeros(inner, "float32")
        variables[prefix + "output/dense/kernel"] = normal(inner, hidden)
        variables[prefix + "output/dense/bias"] = np.zeros(hidden, "float32")
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            variables[prefix + norm + "/gamma"] = np.ones(hidden, "float32")
            variables[prefix + norm + "/beta"] = np.zeros(hidden, "float32")
    write_google_checkpoint(variables, destination / CHECKPOINT_PREFIX)
    shutil.copyfile(source / CONFIG_NAME, destination / CONFIG_NAME)
    shutil.copyfile(source / VOCAB_NAME, destination / VOCAB_NAME)
    return BertCheckpoint(destination / CONFIG_NAME, destination / CHECKPOINT_PREFIX, destination / VOCAB_NAME, "tiny")


def write_google_checkpoint(variables: dict[str, np.ndarray], prefix: Path) -> None:
    """Save named arrays as a TF1 checkpoint (`prefix.index`, `prefix.data-*`) that bert4keras can load."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf_variables = {name: tf.compat.v1.Variable(value, name=name) for name, value in variables.items()}
        saver = tf.compat.v1.train.Saver(var_list=tf_variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False, write_state=False)


def default_checkpoint() -> BertCheckpoint:
    """Return the project's default model, generating the tiny BERT into the user cache on first use."""
    directory = tiny_model_dir()
    if not (directory / (CHECKPOINT_PREFIX + ".index")).exists():
        staging = directory.parent / f".{directory.name}.{time.time_ns()}"
        write_tiny_checkpoint(SAMPLE_BERT_DIR, staging)
        try:
            staging.rename(directory)
        except OSError:  # another process won the race; its checkpoint is identical
            shutil.rmtree(staging, ignore_errors=True)
    return BertCheckpoint(directory / CONFIG_NAME, directory / CHECKPOINT_PREFIX, directory / VOCAB_NAME, "tiny")


NAMED_MODELS = ("auto", "minilm", "tiny")


def named_checkpoint(name: str) -> BertCheckpoint:
    """Resolve `--bert NAME`: `minilm`, `tiny`, or `auto` (MiniLM when its package is installed, else tiny)."""
    from bigrec_cli import hfimport

    if name not in NAMED_MODELS:
        raise ConfigError(f"unknown model name {name!r}", hint=f"use one of {', '.join(NAMED_MODELS)}, or --bert-dir")
    if name == "minilm" or (name == "auto" and hfimport.minilm_installed()):
        return hfimport.minilm_checkpoint()
    return default_checkpoint()


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
        self.model = build_transformer_model(str(checkpoint.config_path), str(checkpoint.checkpoint_path), model="bert")
        self._encode = tf.function(
            self._pooled,
            input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)],
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

    def encode(self, texts: list[str], batch_size: int = BATCH_SIZE, on_progress: ProgressCallback | None = None
               ) -> np.ndarray:  # fmt: skip
        """Return a (len(texts), dim) float32 matrix.

        Each distinct text runs through BERT once. Texts are sorted by token count and cut into batches of at most
        `batch_size` whose padding stays under 2% of their tokens (`length_batches`), so BERT computes almost only
        real tokens. `on_progress` counts the texts of `texts` that got their vector.
        """
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
    items = data_module.load_items(project)[["item_id", "title", "text"]]
    store = FeedbackStore(project.feedback_db)
    if store.exists():
        extra = store.new_items(exclude=set(items["item_id"]))
        if len(extra):
            items = pd.concat([items, extra[["item_id", "title", "text"]]], ignore_index=True)
    return items


def extract(project: ProjectDir, checkpoint: BertCheckpoint, *, pooling: str = "mean", max_length: int = 128,
            batch_size: int = BATCH_SIZE, on_start: Callable[[int], None] | None = None,
            on_progress: ProgressCallback | None = None) -> ExtractSummary:  # fmt: skip
    """Encode every catalog item's text once per model and write `features/item_vectors.npz`.

    Args:
        project: The project directory (`preprocess` must have run).
        checkpoint: The BERT to run.
        pooling: `mean` or `cls`.
        max_length: Tokens per item text.
        batch_size: Most texts per forward pass.
        on_start: Called with the number of texts to encode, before encoding.
        on_progress: Called with the number of texts just encoded.

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
        with np.load(cache_path, allow_pickle=False) as stored:
            cache = dict(zip(stored["keys"].tolist(), stored["vectors"]))
    hashes = [text_hash(text) for text in items["text"]]
    missing = sorted({key for key in hashes if key not in cache})
    missing_set = set(missing)
    if on_start is not None:
        on_start(len(missing))
    if missing:
        text_of = dict(zip(hashes, items["text"]))
        encoded = encoder.encode([text_of[key] for key in missing], batch_size=batch_size, on_progress=on_progress)
        cache.update(zip(missing, encoded))
        temporary = atomic_temporary(cache_path)
        try:
            keys = sorted(cache)
            with open(temporary, "wb") as stream:
                np.savez(stream, keys=np.array(keys), vectors=np.stack([cache[key] for key in keys]))
            commit_temporary(temporary, cache_path)
        finally:
            temporary.unlink(missing_ok=True)
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


__all__ = ["BertEncoder", "extract", "default_checkpoint", "named_checkpoint", "write_tiny_checkpoint"]
