"""Approximate retrieval for large catalogs: a faiss index over the scorer's item vectors.

The scorer's logit of item j for a user vector u is u · v_j + b_j (+ the item-to-item term): an inner product once
the bias is folded in as one more dimension, x_j = [v_j, b_j] against q = [u, 1]. Two faiss indexes find the
largest such products:

- `ivf` (the default): an inverted file, IndexIVFFlat with inner product. k-means splits the items into lists; a
  query scans, exactly, the items of the `nprobe` lists whose centroids score highest. On a million items whose
  vectors follow trained ones (bench/results/index-1000000.json) it reached recall@10 0.995 at nprobe 64, one
  user's top 10 in 1.13 ms on one thread, built in 16.8 s.
- `hnsw`: a graph, IndexHNSWFlat, built over the reduction of inner product to nearest neighbours of Bachrach et
  al. (2014) (each item gets one more coordinate, sqrt(R² − |x_j|²) with R the largest norm, so every item has norm
  R, the query gets 0 there, and |q − x_j|² = |q|² + R² − 2 q · x_j). On the same million items its greedy walk
  needed efSearch 4096 for recall@10 0.975, 18 ms a query, built in 101 s (index-1000000-hnsw.json): kept for
  catalogs where it does better.

Below `INDEX_MIN_ITEMS` items one matrix product over the catalog takes a few milliseconds and stays exact; above
it, the index proposes candidates, which the scorer then scores exactly (the item-to-item term and the rules
included) before the top K are taken. How widely it searches (its breadth: nprobe, or efSearch) is chosen by
`train` on validation users and kept in the index file. The index is a file of its run (`items.faiss`, in faiss'
own format, never pickle; `items.hnsw` in runs written before IVF), checksummed by the run's manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bigrec_cli.config import INDEX_KINDS, INDEX_MODES
from bigrec_cli.errors import ArtifactError, BigrecError, ConfigError

INDEX_MIN_ITEMS = 50_000  # beyond this, one brute-force query costs more than ~10 ms on 2 cores (#15's figures)
HNSW_NEIGHBOURS = 32  # M: graph degree
# On 30,000 jittered real item vectors (bench/index.py), recall@10 of the answers at efConstruction 40 / 200 was
# 0.959 / 0.978 with efSearch 128, 0.981 / 0.994 with 256, for 3.3 times the build time: 128 and 256 between them.
EF_CONSTRUCTION = 128
# Where `train` starts each kind's breadth, which it doubles until validation recall suffices (recommend.widen).
START_BREADTH = {"ivf": 16, "hnsw": 256}
MAX_BREADTH = {"ivf": 1024, "hnsw": 4096}
BREADTH_NAME = {"ivf": "nprobe", "hnsw": "efSearch"}
OVERFETCH = 50  # candidates beyond k + the user's excluded items, so that exclusions and re-scoring rarely starve


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise BigrecError(
            f"faiss is not installed ({error})", hint="pip install faiss-cpu (make install does), or --index exact"
        ) from None
    return faiss


def index_kind(mode: str, num_items: int) -> str | None:
    """The kind of index a run gets.

    Args:
        mode: `auto` (ivf from INDEX_MIN_ITEMS items on), `ivf`, `hnsw` (that kind at any size) or `exact`.
        num_items: The run's catalog size.

    Returns:
        `ivf`, `hnsw`, or None for exact scoring.
    """
    if mode not in INDEX_MODES:
        raise BigrecError(f"unknown index mode {mode!r}", hint=f"use one of {', '.join(INDEX_MODES)}")
    if mode in INDEX_KINDS:
        return mode
    return "ivf" if mode == "auto" and num_items >= INDEX_MIN_ITEMS else None


def num_lists(num_items: int) -> int:
    """The IVF lists for `num_items` items: about 2·sqrt(N) (2,000 at a million items), with at least 39 items a
    list (k-means wants that many points per centroid), and at least one list."""
    return int(max(1, min(round(2 * np.sqrt(num_items)), num_items // 39)))


def _points(vectors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Items as [v, b], against queries [u, 1]."""
    return np.ascontiguousarray(np.concatenate([vectors, bias[:, None]], axis=1), dtype="float32")


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
    """A faiss index (IVF or HNSW, inner product) over items 1…N; row r of the index is item index r + 1."""

    def __init__(self, index) -> None:
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray, bias: np.ndarray, kind: str = "ivf") -> "ItemIndex":
        """Index items' output vectors (N, dim) and biases (N,) in a faiss index of `kind` (`ivf` or `hnsw`), its
        breadth at the kind's START_BREADTH."""
        if kind not in INDEX_KINDS:
            raise ConfigError(f"unknown index kind {kind!r}", hint=f"use one of {', '.join(INDEX_KINDS)}")
        if not len(vectors):
            raise ConfigError("an index needs items, and the catalog is empty", hint="use --index exact")
        faiss = _faiss()
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(vectors.shape[1] + 2, HNSW_NEIGHBOURS, faiss.METRIC_L2)
            index.hnsw.efConstruction = EF_CONSTRUCTION
            index.add(_rows(vectors, bias)[0])
        else:
            points = _points(vectors, bias)
            lists = num_lists(len(points))
            quantizer = faiss.IndexFlatIP(points.shape[1])
            index = faiss.IndexIVFFlat(quantizer, points.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = 0  # k-means draws its starting centroids with this seed: the same items, the same lists
            index.train(points)
            index.add(points)
        built = cls(index)
        built.breadth = START_BREADTH[kind]
        return built

    @classmethod
    def load(cls, path: Path) -> "ItemIndex":
        faiss = _faiss()
        try:
            loaded = cls(faiss.read_index(str(path)))
        except RuntimeError as error:
            raise ArtifactError(f"{path} is not a faiss index ({error})", hint="train again") from None
        if loaded.kind == "hnsw" and loaded.breadth < START_BREADTH["hnsw"]:
            # Runs written before the breadth was kept in the file hold faiss' default efSearch (16); they were
            # searched at 256, which is where train starts.
            loaded.breadth = START_BREADTH["hnsw"]
        return loaded

    def save(self, path: Path) -> None:
        """Write the index beside `path`, then rename it into place."""
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _faiss().write_index(self.index, str(staging))
        staging.replace(path)

    @property
    def kind(self) -> str:
        """`hnsw` for a graph, `ivf` for an inverted file."""
        return "hnsw" if hasattr(self.index, "hnsw") else "ivf"

    @property
    def num_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def breadth(self) -> int:
        """How widely every search looks: nprobe lists (IVF) or efSearch (HNSW). faiss keeps it in the index file,
        so a run's choice travels with it."""
        return int(self.index.hnsw.efSearch if self.kind == "hnsw" else self.index.nprobe)

    @breadth.setter
    def breadth(self, value: int) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(value)
        else:
            self.index.nprobe = int(min(value, self.index.nlist))

    @property
    def max_breadth(self) -> int:
        """The widest search train tries: MAX_BREADTH of the kind, and for IVF no more than its lists."""
        return MAX_BREADTH["hnsw"] if self.kind == "hnsw" else min(MAX_BREADTH["ivf"], int(self.index.nlist))

    @property
    def radius(self) -> float:
        """R (HNSW): every indexed item has this norm (read back from the first one, so the file needs nothing
        else). An IVF index has no such sphere."""
        if self.kind != "hnsw":
            raise BigrecError("an IVF index has no radius", hint="radius belongs to the HNSW reduction")
        return float(np.linalg.norm(self.index.reconstruct(0))) if self.num_items else 1.0

    def extend(self, vectors: np.ndarray, bias: np.ndarray) -> None:
        """Add items after the indexed ones (catalog items a later `extract` added; IVF files them in the list of
        their best centroid)."""
        if len(vectors):
            self.index.add(_rows(vectors, bias, self.radius)[0] if self.kind == "hnsw" else _points(vectors, bias))

    def candidates(self, states: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """Each user's `counts[row]` item columns (index − 1) with the highest approximate logits.

        A user's answer depends on that user alone: users are searched in groups of equal count, with the index's
        breadth (HNSW: efSearch = max(breadth, count)) passed per search (the index is shared by the server's
        threads).
        """
        faiss = _faiss()
        columns_of = [states, np.ones((len(states), 1))] + ([np.zeros((len(states), 1))] if self.kind == "hnsw" else [])
        queries = np.ascontiguousarray(np.concatenate(columns_of, axis=1), dtype="float32")
        counts = np.clip(np.asarray(counts, dtype="int64"), 1, max(self.num_items, 1))
        found: list[np.ndarray] = [np.zeros(0, dtype="int64")] * len(states)
        for count in np.unique(counts):
            rows = np.flatnonzero(counts == count)
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=int(max(self.breadth, count)))
            else:
                params = faiss.SearchParametersIVF(nprobe=self.breadth)
            _, columns = self.index.search(queries[rows], int(count), params=params)
            for row, answer in zip(rows, columns):
                found[row] = answer[answer >= 0]
        return found
