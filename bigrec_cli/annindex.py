"""Approximate retrieval for large catalogs: a faiss HNSW index over the scorer's item vectors.

The scorer's logit of item j for a user vector u is u · v_j + b_j (+ the item-to-item term): an inner product once
the bias is folded in as one more dimension, x_j = [v_j, b_j] against q = [u, 1]. HNSW's greedy walk finds the
largest inner products poorly when the items' norms differ (long vectors crowd out the rest), so the graph is built
over the reduction to nearest neighbours of Bachrach et al. (2014): each item gets one more coordinate,
sqrt(R² − |x_j|²) with R the largest norm, so every item has norm R, the query gets 0 there, and
|q − x_j|² = |q|² + R² − 2 q · x_j: the nearest items in L2 are those with the largest logits.

Below `INDEX_MIN_ITEMS` items one matrix product over the catalog takes a few milliseconds and stays exact; above
it, the index proposes candidates, which the scorer then scores exactly (the item-to-item term and the rules
included) before the top K are taken. The index is a file of its run (`items.hnsw`, in faiss' own format, never
pickle), checksummed by the run's manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bigrec_cli.config import INDEX_MODES
from bigrec_cli.errors import ArtifactError, BigrecError

INDEX_MIN_ITEMS = 50_000  # beyond this, one brute-force query costs more than ~10 ms on 2 cores (#15's figures)
HNSW_NEIGHBOURS = 32  # M: graph degree
# On 30,000 jittered real item vectors (bench/index.py), recall@10 of the answers at efConstruction 40 / 200 was
# 0.959 / 0.978 with efSearch 128, 0.981 / 0.994 with 256, for 3.3 times the build time: 128 and 256 between them.
EF_CONSTRUCTION = 128
EF_SEARCH = 256  # where `train` starts; it doubles efSearch (up to EF_SEARCH_MAX) until validation recall suffices
EF_SEARCH_MAX = 4096
OVERFETCH = 50  # candidates beyond k + the user's excluded items, so that exclusions and re-scoring rarely starve


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise BigrecError(
            f"faiss is not installed ({error})", hint="pip install faiss-cpu (make install does), or --index exact"
        ) from None
    return faiss


def wants_index(mode: str, num_items: int) -> bool:
    """Whether a run of `num_items` items gets an index under `mode` (auto: from INDEX_MIN_ITEMS items on)."""
    if mode not in INDEX_MODES:
        raise BigrecError(f"unknown index mode {mode!r}", hint=f"use one of {', '.join(INDEX_MODES)}")
    return mode == "hnsw" or (mode == "auto" and num_items >= INDEX_MIN_ITEMS)


def _rows(vectors: np.ndarray, bias: np.ndarray, radius: float | None = None) -> tuple[np.ndarray, float]:
    """Items as points of norm `radius` (the largest norm when None): [v, b, sqrt(radius² − |[v, b]|²)]."""
    points = np.concatenate([vectors, bias[:, None]], axis=1).astype("float64")
    squared = (points**2).sum(axis=1)
    if radius is None:
        radius = float(np.sqrt(squared.max())) if len(squared) else 1.0
    # An item added later that is longer than R gets 0 here, which understates its logit by (|x|² − R²) / 2:
    # the recommender therefore proposes the items added since the build to every user itself.
    extra = np.sqrt(np.maximum(radius**2 - squared, 0.0))
    return np.ascontiguousarray(np.concatenate([points, extra[:, None]], axis=1), dtype="float32"), radius


class ItemIndex:
    """An HNSW graph (inner product) over items 1…N; row r of the index is item index r + 1."""

    def __init__(self, index) -> None:
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray, bias: np.ndarray) -> "ItemIndex":
        """Index items' output vectors (N, dim) and biases (N,)."""
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(vectors.shape[1] + 2, HNSW_NEIGHBOURS, faiss.METRIC_L2)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.hnsw.efSearch = EF_SEARCH
        index.add(_rows(vectors, bias)[0])
        return cls(index)

    @classmethod
    def load(cls, path: Path) -> "ItemIndex":
        faiss = _faiss()
        try:
            return cls(faiss.read_index(str(path)))
        except RuntimeError as error:
            raise ArtifactError(f"{path} is not a faiss index ({error})", hint="train again") from None

    def save(self, path: Path) -> None:
        """Write the index beside `path`, then rename it into place."""
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _faiss().write_index(self.index, str(staging))
        staging.replace(path)

    @property
    def num_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def ef_search(self) -> int:
        """The breadth of every search (faiss keeps it in the index file, so a run's choice travels with it)."""
        return int(self.index.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.index.hnsw.efSearch = int(value)

    @property
    def radius(self) -> float:
        """R: every indexed item has this norm (read back from the first one, so the file needs nothing else)."""
        return float(np.linalg.norm(self.index.reconstruct(0))) if self.num_items else 1.0

    def extend(self, vectors: np.ndarray, bias: np.ndarray) -> None:
        """Add items after the indexed ones (catalog items a later `extract` added)."""
        if len(vectors):
            self.index.add(_rows(vectors, bias, self.radius)[0])

    def candidates(self, states: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """Each user's `counts[row]` item columns (index − 1) with the highest approximate logits.

        A user's answer depends on that user alone: users are searched in groups of equal count, each with
        efSearch = max(the index's efSearch, count), passed per search (the index is shared by the server's threads).
        """
        faiss = _faiss()
        queries = np.concatenate([states, np.ones((len(states), 1)), np.zeros((len(states), 1))], axis=1)
        queries = np.ascontiguousarray(queries, dtype="float32")
        counts = np.clip(np.asarray(counts, dtype="int64"), 1, max(self.num_items, 1))
        found: list[np.ndarray] = [np.zeros(0, dtype="int64")] * len(states)
        for count in np.unique(counts):
            rows = np.flatnonzero(counts == count)
            params = faiss.SearchParametersHNSW(efSearch=int(max(self.ef_search, count)))
            _, columns = self.index.search(queries[rows], int(count), params=params)
            for row, answer in zip(rows, columns):
                found[row] = answer[answer >= 0]
        return found
