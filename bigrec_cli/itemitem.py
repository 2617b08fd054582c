"""The item-to-item term the sigmoid head adds to the LSTM's score: what co-occurs with the user's history.

The LSTM reads the order of recent behaviour; co-occurrence over the whole catalog (what is bought together) is
what a linear item-item model such as EASE captures best. After the LSTM is trained, `train` fits an item-item
matrix S on the training split only (EASE's closed form while the catalog is small enough to invert, or EDLAE's,
EASE with dropout-emphasised penalties; cosine ItemKNN beyond), keeps each item's strongest neighbours (sparse, so
memory grows with items × neighbours), and chooses its weight α, EASE's λ and dropout and a recency decay d by
validation NDCG@10. The logit of item j for a history h
of length L is then

    LSTM logit(h, j) + α · Σ_{i in h} d^(age of i) S[i, j]

where the age of an item is how long ago the user last had it, counted in steps (0 for the latest step) or in
distinct times (0 for every step at the latest time: a basket, an invoice, a session written at one time stamp,
counts as one step): what a user did recently speaks louder for the next item (as in session-aware item-item
models, e.g. SLIST). Which count, and d, are chosen on validation. d = 1 is plain EASE's scoring; α = 0 (no term)
when it does not help on validation. The LSTM never trains with the term, so S,
fitted on the very events the LSTM learns from, cannot teach it to trust co-occurrence more than held-out data
supports.
numpy and scipy only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sparse

from bigrec_cli.errors import ArtifactError
from bigrec_cli.events import token_items, token_types
from bigrec_cli.vectors import load_arrays, save_arrays

# Scoring with a fitted term (recommend, serve) needs scipy.sparse only; fitting it (train) imports the baselines,
# scikit-learn and the metrics inside the functions below, so serving does not pay for them.

EASE_MAX_ITEMS = 12_000  # EASE inverts an items × items matrix: beyond this, cosine ItemKNN (sparse) instead
NEIGHBOURS = 200
# similarities ItemKNN computes at once: 64 MiB of float32, held several times over by the sparse product,
# the dense block, its negated copy and argpartition's int64 indices (2^25 until the 10M-event run)
COSINE_BLOCK_CELLS = 2**24
# (λ, input dropout p) of each EASE fit tried: plain EASE, then EDLAE (p 0.5: each item's penalty grows by its own
# count). Chosen on half the validation users and read on the other half, both ways round, EDLAE beat plain EASE by
# 3.2% and 1.4% on online-retail-25, by 3.0% and -0.1% on ML-100K (bench/NOTES.md)
EASE_GRID = (
    (20.0, 0.0),
    (50.0, 0.0),
    (200.0, 0.0),
    (500.0, 0.0),
    (2000.0, 0.0),
    (10.0, 0.5),
    (50.0, 0.5),
    (200.0, 0.5),
)
EDLAE_MIN_GAIN = 0.01  # relative validation NDCG@10 EDLAE must gain over plain EASE's best to replace it
# and ages in time over ages in steps: on ML-100K (943 validation users, no baskets) seeds chose time by leads
# under 1%, and one of them lost 9% on test (bench/NOTES.md); on Online Retail time leads by 10% and more
TIME_MIN_GAIN = 0.01
ALPHA_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 32.0)  # × (std of LSTM logits / std of the term)
DECAY_GRID = (1.0, 0.97, 0.93, 0.9, 0.85, 0.8)  # per step of age; 1: every history item counts the same
# per distinct time of age: on purchases logged a basket at a time the latest basket speaks for the next item far
# more than one step of it does (online-retail, the term alone on validation: 0.1608 with steps, 0.1833 with
# times at d 0.05; ML-100K 0.1218 and 0.1222; bench/NOTES.md)
TIME_DECAY_GRID = (0.9, 0.7, 0.5, 0.3, 0.1, 0.03)
AGE_UNITS = ("step", "time")


@dataclass(frozen=True)
class ItemItem:
    """A sparse (rows × rows) item-item matrix over the scorer's rows (row 0 padding) and its weight.

    Attributes:
        matrix: S, CSR; S[i, j] is how much history item i speaks for candidate j.
        alpha: The weight of the term in the logit (0: off).
        method: How S was fitted, for the run's record.
        decay: Weight of a history item per unit of its age (1: all alike).
        age_unit: `step`: an item's age is how many steps ago the user last had it; `time`: how many distinct
            times ago (the steps at one time stamp, a basket, share an age). `time` needs the steps' times.
        repeat_weight: γ, how much a history item speaks for itself (projects whose history may be recommended
            again: the recency-weighted personal frequency); 0 otherwise.
        negative_types: Event type ids of negative behaviour (cancel, dislike, …): such steps are read by the LSTM
            but never speak for an item here.
    """

    matrix: sparse.csr_matrix
    alpha: float
    method: str
    decay: float = 1.0
    repeat_weight: float = 0.0
    negative_types: tuple[int, ...] = ()
    age_unit: str = "step"

    def __post_init__(self) -> None:
        if self.age_unit not in AGE_UNITS:
            raise ValueError(f"unknown age unit {self.age_unit!r}")
        # Python floats: a numpy float64 weight would turn the float32 scores into float64 (numpy 2's promotion)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "decay", float(self.decay))
        object.__setattr__(self, "repeat_weight", float(self.repeat_weight))

    def with_(self, **changes) -> "ItemItem":
        return replace(self, **changes)

    @property
    def active(self) -> bool:
        return bool(self.alpha or self.repeat_weight)

    def scores(self, sequences: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
        """(users, items) term for items 1…N of left-padded token rows: Σ over each row's distinct items i of
        decay^(age of i) · (α S[i, ·] + γ 1[· = i]), an item's age counted from the row's last column at its latest
        occurrence (`times`: the steps' time stamps, aligned with `sequences`; needed when ages count times)."""
        # dense from the start: the same float32 products and sums as `sparse_scores(...).toarray()`, without the
        # sparse column slice and index sort that cost a served request about as much as its LSTM logits
        history = self.history(sequences, times)
        scores = (history @ self.matrix).toarray()[:, 1:]
        scores *= np.float32(self.alpha)
        if self.repeat_weight:
            scores += history[:, 1:].toarray() * np.float32(self.repeat_weight)
        return scores

    def sparse_scores(self, sequences: np.ndarray, times: np.ndarray | None = None) -> sparse.csr_matrix:
        """`scores` as a sparse (users, items) matrix with sorted indices: only the neighbours of each row's history
        are non-zero, so a million-item catalog costs what the neighbours cost, not a dense row per user."""
        history = self.history(sequences, times)
        scores = (history @ self.matrix)[:, 1:].tocsr().astype("float32") * self.alpha
        if self.repeat_weight:
            scores = scores + history[:, 1:].tocsr().astype("float32") * self.repeat_weight
        scores = sparse.csr_matrix(scores, dtype="float32")
        scores.sort_indices()
        return scores

    def history(self, sequences: np.ndarray, times: np.ndarray | None = None) -> sparse.csr_matrix:
        """(users, rows) weights of each row's items: decay^(age) at the item's latest occurrence."""
        num_rows, length = sequences.shape
        rows = np.repeat(np.arange(num_rows), length)
        columns = positive_items(sequences, self.negative_types).ravel()
        if self.age_unit == "time" and times is None:
            raise ValueError("this term counts ages in distinct times: pass the steps' times")
        ages = step_ages(sequences.shape, times if self.age_unit == "time" else None).ravel()
        present = np.flatnonzero(columns > 0)[::-1]  # latest first, so the first of each item is its latest
        keys = rows[present] * self.matrix.shape[0] + columns[present]
        _, first = np.unique(keys, return_index=True)
        latest = present[first]
        weights = np.power(self.decay, ages[latest]).astype("float32")
        return sparse.csr_matrix((weights, (rows[latest], columns[latest])), shape=(num_rows, self.matrix.shape[0]))

    def impute(self, rows: np.ndarray, neighbours: np.ndarray, shares: np.ndarray) -> "ItemItem":
        """The term with the columns and rows of items without interactions (`rows`, whose columns and rows of S
        are empty) made the share-weighted mix of their text neighbours' (see `scoring.text_neighbours`)."""
        if not len(rows) or not neighbours.size:
            return self
        size = self.matrix.shape[0]
        mix = sparse.csr_matrix(
            (shares.ravel(), (neighbours.ravel(), np.repeat(rows, neighbours.shape[1]))), shape=(size, size)
        )
        matrix = self.matrix + self.matrix @ mix  # column j = Σ_k share_k S[:, k]: what speaks for j
        matrix = (matrix + mix.T @ matrix).tocsr()  # row j = Σ_k share_k S[k, :]: what j speaks for
        # the diagonal dropped in CSR itself: a LIL copy (a Python list entry per neighbour) of 100,000 items ×
        # 200 neighbours was the largest allocation of a 10M-event train (bench/NOTES.md)
        rows = np.repeat(np.arange(size), np.diff(matrix.indptr))
        matrix.data[rows == matrix.indices] = 0.0
        matrix.eliminate_zeros()
        matrix.sort_indices()
        return self.with_(matrix=matrix.astype("float32"))

    def grow(self, rows: int) -> "ItemItem":
        """The same term over more rows (items added after training get no neighbours)."""
        if rows <= self.matrix.shape[0]:
            return self
        matrix = self.matrix.copy()
        matrix.resize((rows, rows))
        return self.with_(matrix=matrix.tocsr())

    def save(self, path: Path) -> None:
        matrix = self.matrix.tocsr()
        save_arrays(
            path,
            data=matrix.data.astype("float32"),
            indices=matrix.indices.astype("int32"),
            indptr=matrix.indptr.astype("int64"),
            shape=np.array(matrix.shape, dtype="int64"),
            alpha=np.array([self.alpha], dtype="float32"),
            method=np.array(self.method),
            decay=np.array([self.decay], dtype="float32"),
            repeat_weight=np.array([self.repeat_weight], dtype="float32"),
            negative_types=np.array(self.negative_types, dtype="int64"),
            age_unit=np.array(self.age_unit),
        )

    @classmethod
    def load(cls, path: Path) -> "ItemItem":
        arrays = load_arrays(path)
        try:
            matrix = sparse.csr_matrix(
                (arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(int(n) for n in arrays["shape"])
            )
            decay = float(arrays["decay"][0]) if "decay" in arrays else 1.0  # runs from before the decay: 1
            repeat = float(arrays["repeat_weight"][0]) if "repeat_weight" in arrays else 0.0
            negative = tuple(int(n) for n in arrays["negative_types"]) if "negative_types" in arrays else ()
            unit = str(arrays["age_unit"]) if "age_unit" in arrays else "step"  # runs from before time ages
            return cls(matrix, float(arrays["alpha"][0]), str(arrays["method"]), decay, repeat, negative, unit)
        except (KeyError, ValueError, IndexError) as error:
            raise ArtifactError(f"{path} is damaged: {error}", hint="train again") from None


def step_ages(shape: tuple[int, int], times: np.ndarray | None = None) -> np.ndarray:
    """(rows, length) age of each step of left-padded rows: how many steps come after it, or, given the steps'
    `times`, how many distinct times come after it (steps at one time share their age).

    Raises:
        ValueError: `times` is not shaped like the rows.
    """
    num_rows, length = shape
    if times is None:
        return np.broadcast_to(np.arange(length - 1, -1, -1), (num_rows, length))
    if times.shape != (num_rows, length):
        raise ValueError(f"times of shape {times.shape} for token rows of shape {(num_rows, length)}")
    changes = np.zeros((num_rows, length), dtype="int64")
    changes[:, 1:] = times[:, 1:] != times[:, :-1]
    return np.cumsum(changes[:, ::-1], axis=1)[:, ::-1] - changes  # the changes strictly after each step


def shares_times(sequences: np.ndarray, times: np.ndarray | None) -> bool:
    """Whether any row has two item steps at one time (only then can ages in time differ from ages in steps)."""
    if times is None or sequences.shape[1] < 2:
        return False
    present = sequences > 0
    return bool(np.any((times[:, 1:] == times[:, :-1]) & present[:, 1:] & present[:, :-1]))


def positive_items(tokens: np.ndarray, negative_types: tuple[int, ...] = ()) -> np.ndarray:
    """The item index of each token, 0 (padding) where the step is negative behaviour."""
    items = token_items(tokens)
    if negative_types:
        items = np.where(np.isin(token_types(tokens), negative_types), 0, items)
    return items


def history_matrix(
    sequences: dict[str, np.ndarray], num_items: int, negative_types: tuple[int, ...] = ()
) -> sparse.csr_matrix:
    """Binary users × items (columns 0…N-1 for items 1…N) from token sequences; negative steps leave no mark."""
    rows = np.repeat(np.arange(len(sequences)), [len(sequence) for sequence in sequences.values()])
    tokens = np.concatenate(list(sequences.values())) if sequences else np.zeros(0, dtype="int64")
    columns = positive_items(tokens, negative_types) - 1
    kept = columns >= 0
    matrix = sparse.csr_matrix(
        (np.ones(int(kept.sum()), dtype="float32"), (rows[kept], columns[kept])), shape=(len(sequences), num_items)
    )
    matrix.data[:] = 1.0
    return matrix


def row_tops(weights: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's `keep` largest positive weights of a dense block: (row in the block, column, value) of each."""
    columns = np.argpartition(-weights, keep - 1, axis=1)[:, :keep]
    values = np.take_along_axis(weights, columns, axis=1)
    positive = values > 0
    return np.nonzero(positive)[0], columns[positive], values[positive]


def top_neighbours(weights: np.ndarray, neighbours: int) -> sparse.csr_matrix:
    """Keep each row's `neighbours` largest positive weights, as a sparse matrix with a padding row and column."""
    num_items = weights.shape[0]
    rows, columns, values = row_tops(weights, min(neighbours, num_items))
    return sparse.csr_matrix((values.astype("float32"), (rows + 1, columns + 1)), shape=(num_items + 1, num_items + 1))


def cosine_neighbours(
    train: sparse.csr_matrix, neighbours: int, block_cells: int = COSINE_BLOCK_CELLS
) -> sparse.csr_matrix:
    """Cosine similarity between item columns, each item's `neighbours` most similar kept.

    Items are taken in blocks of rows: a block's similarities to every item are one dense array of about
    `block_cells` values, cut to each row's top `neighbours` at once (`row_tops`), so memory stays bounded whatever
    the catalog (the whole items × items product of 100,000 synthetic items with Zipf popularity held 7.3 billion
    non-zero entries, 54.6 GiB of indices alone).
    """
    from sklearn.preprocessing import normalize

    columns = normalize(train.T.tocsr().astype("float32"), norm="l2", axis=1)  # items × users, unit rows
    num_items = columns.shape[0]
    size = num_items + 1
    if num_items < 2 or neighbours < 1:
        return sparse.csr_matrix((size, size), dtype="float32")
    others = columns.T.tocsc()
    keep = min(neighbours, num_items - 1)
    step = max(1, block_cells // num_items)
    rows, cols, values = [], [], []
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        block = np.asarray((columns[start:stop] @ others).todense(), dtype="float32")
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
        in_block, top, picked = row_tops(block, keep)
        rows.append(in_block + start + 1)
        cols.append(top + 1)
        values.append(picked)
    return sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size), dtype="float32"
    )


def candidates(train: sparse.csr_matrix) -> list[tuple[str, sparse.csr_matrix]]:
    """The item-item matrices to choose from: EASE or EDLAE for each (λ, dropout) of EASE_GRID (small catalogs), or
    cosine ItemKNN."""
    from bigrec_cli.baselines import EASE

    num_items = train.shape[1]
    if num_items <= EASE_MAX_ITEMS:
        return [
            (ease_method(l2, dropout), top_neighbours(EASE(l2, dropout).fit(train).weights_, NEIGHBOURS))
            for l2, dropout in EASE_GRID
        ]
    return [(f"itemknn(cosine, {NEIGHBOURS} neighbours)", cosine_neighbours(train, NEIGHBOURS))]


def ease_method(l2: float, dropout: float) -> str:
    """The run's record of an EASE fit.

    Args:
        l2: λ.
        dropout: EDLAE's p (0: plain EASE).

    Returns:
        `ease(lambda=50)` for plain EASE (as runs written before EDLAE say), `ease(lambda=10, dropout=0.5)` for EDLAE.
    """
    return f"ease(lambda={l2:g})" if not dropout else f"ease(lambda={l2:g}, dropout={dropout:g})"


def ease_parameters(method: str) -> tuple[float, float]:
    """The fit an `ease_method` record names.

    Args:
        method: The record, e.g. `ease(lambda=10, dropout=0.5)`.

    Returns:
        (λ, dropout); runs written before EDLAE name no dropout: 0.

    Raises:
        ArtifactError: The record names no EASE fit.
    """
    found = re.fullmatch(r"ease\(lambda=([^,)]+)(?:, dropout=([^)]+))?\)", method)
    if found is None:
        raise ArtifactError(f"unknown item-to-item method {method!r}", hint="train the run again with this version")
    return float(found.group(1)), float(found.group(2) or 0)


def refit_item_item(term: ItemItem, train: sparse.csr_matrix, text_vectors: np.ndarray | None = None) -> ItemItem:
    """The same kind of term (method, λ, weight α) fitted again on more events.

    `train` learns the LSTM and chooses (S, α) on the training split; the run then keeps S fitted on training and
    validation events, as the baselines are for the test split: every event but the held-out last one speaks.
    """
    from bigrec_cli.baselines import EASE

    if term.method.startswith("ease("):
        matrix = top_neighbours(EASE(*ease_parameters(term.method)).fit(train).weights_, NEIGHBOURS)
    elif term.method.startswith("itemknn("):
        matrix = cosine_neighbours(train, NEIGHBOURS)
    else:
        return term
    return impute_empty(term.with_(matrix=matrix), train, text_vectors)


def impute_empty(term: ItemItem, train: sparse.csr_matrix, text_vectors: np.ndarray | None) -> ItemItem:
    """Items with no interaction in `train` borrow their text neighbours' columns and rows of S (no-op without
    text vectors)."""
    if text_vectors is None:
        return term
    from bigrec_cli.scoring import text_neighbours

    counts = np.asarray(train.sum(axis=0)).ravel()
    empty, known = np.flatnonzero(counts == 0) + 1, np.flatnonzero(counts > 0) + 1
    return term.impute(empty, *text_neighbours(text_vectors, empty, known))


def batched_std(values_of, batches: list[tuple[int, int]]) -> float:
    """The standard deviation of every finite value `values_of(start, stop)` gives over the (start, stop) batches,
    one batch in memory at a time (0 when there is none)."""
    count = total = squares = 0.0
    for start, stop in batches:
        values = values_of(start, stop)
        values = values[np.isfinite(values)].astype("float64")
        count, total, squares = count + values.size, total + values.sum(), squares + (values**2).sum()
    if not count:
        return 0.0
    return float(np.sqrt(max(squares / count - (total / count) ** 2, 0.0)))


class _Cases:
    """The validation cases, scored one batch of users at a time: memory grows with the batch, never with
    users × items (a million-item catalog has no room for a dense matrix of every case)."""

    def __init__(self, logits, sequences, times, targets, excluded, num_items: int, batch_size: int = 1024) -> None:
        from bigrec_cli.metrics import batch_rows

        self.logits_of = logits if callable(logits) else (lambda start, stop: logits[start:stop])
        self.sequences, self.times, self.targets, self.excluded = sequences, times, targets, excluded
        batch_size = batch_rows(num_items, batch_size)
        self.batches = [(start, min(start + batch_size, len(targets))) for start in range(0, len(targets), batch_size)]

    def std(self, values_of) -> float:
        """The standard deviation of every finite value `values_of(start, stop)` gives, over all batches."""
        return batched_std(values_of, self.batches)

    def term(self, term: ItemItem, start: int, stop: int) -> np.ndarray:
        """The term's scores of the cases start…stop."""
        return term.scores(self.sequences[start:stop], None if self.times is None else self.times[start:stop])

    def age_grids(self) -> list[tuple[str, tuple[float, ...]]]:
        """The (age unit, decays) to try: ages in time only where some history has two steps at one time."""
        grids = [("step", DECAY_GRID)]
        if shares_times(self.sequences, self.times):
            grids.append(("time", TIME_DECAY_GRID))
        return grids

    def ndcg(self, variants) -> list[float]:
        """NDCG@10 of each scoring variant: `variants(start, stop)` yields one score matrix per variant."""
        from bigrec_cli.metrics import ranking_report, ranks_of_targets

        ranks: list[list[np.ndarray]] = []
        for start, stop in self.batches:
            excluded = self.excluded[start:stop] if self.excluded is not None else None
            for position, scores in enumerate(variants(start, stop)):
                if position == len(ranks):
                    ranks.append([])
                ranks[position].append(ranks_of_targets(scores, self.targets[start:stop] - 1, excluded))
        return [ranking_report(np.concatenate(parts), (10,))["ndcg@10"] for parts in ranks]


def fit_item_item(
    train: sparse.csr_matrix,
    logits,
    sequences: np.ndarray,
    targets: np.ndarray,
    excluded: list[np.ndarray] | None,
    text_vectors: np.ndarray | None = None,
    negative_types: tuple[int, ...] = (),
    batch_size: int = 1024,
    times: np.ndarray | None = None,
) -> tuple[ItemItem, dict]:
    """Fit S on the training matrix and choose (S, age unit, decay, α) by validation NDCG@10 of
    `logits + α · term`; when history items may be recommended (`excluded` is None), then γ, the weight of the
    user's own recent items.

    Args:
        train: Binary users × items of the training split (the only data S sees).
        logits: The LSTM logits of the validation cases: a (cases, items) array, or a function of (start, stop)
            that returns those rows (so the cases are scored in batches of `batch_size`).
        sequences: (cases, max_len) their token sequences.
        targets: (cases,) item index of each held-out event.
        excluded: Per case, the columns (item index − 1) excluded from the ranking (the history); None when
            repeats are allowed.
        text_vectors: (rows, text_dim) BERT vectors: items without training interactions then borrow the columns
            and rows of S of their nearest items by text.
        negative_types: Event type ids of negative behaviour, left out of the term's history.
        batch_size: Cases scored at once.
        times: (cases, max_len) the time stamp of each step: ages in time are tried too where steps share one
            (None: ages in steps only).

    Returns:
        The chosen term (α = 0 and method "none" when nothing beats the LSTM alone) and every choice tried.
    """
    cases = _Cases(logits, sequences, times, targets, excluded, train.shape[1], batch_size)
    none = sparse.csr_matrix((1, 1), dtype="float32")
    (alone,) = cases.ndcg(lambda start, stop: [cases.logits_of(start, stop)])
    tried = [{"method": "none", "alpha": 0.0, "val_ndcg@10": alone}]
    # the best of each unit of age, each starting from no term; the two are weighed against each other at the end
    bests = {unit: (alone, ItemItem(none, 0.0, "none", negative_types=negative_types)) for unit in AGE_UNITS}
    spread = cases.std(cases.logits_of) or 1.0
    ages = [(unit, decay) for unit, grid in cases.age_grids() for decay in grid]
    for method, fitted in candidates(train):
        matrix = impute_empty(ItemItem(fitted, 1.0, method, negative_types=negative_types), train, text_vectors).matrix
        for unit, decay in ages:
            term = ItemItem(matrix, 1.0, method, decay, negative_types=negative_types, age_unit=unit)
            scale = spread / (cases.std(lambda start, stop, term=term: cases.term(term, start, stop)) or 1.0)
            alphas = [alpha * scale for alpha in ALPHA_GRID[1:]]

            def variants(start: int, stop: int, term=term, alphas=alphas):
                base, raw = cases.logits_of(start, stop), cases.term(term, start, stop)
                return (base + alpha * raw for alpha in alphas)

            # EDLAE replaces plain EASE (or no term) only when it validates EDLAE_MIN_GAIN better: on a small
            # validation split a hair's lead is noise, and a retrain's gate then saw the newcomer lose
            kind = bests[unit][1].method
            needed = 1 + EDLAE_MIN_GAIN if "dropout=" in method and "dropout=" not in kind else 1.0
            for alpha, score in zip(alphas, cases.ndcg(variants)):
                tried.append({"method": method, "age_unit": unit, "decay": decay, "alpha": alpha, "val_ndcg@10": score})
                if score > bests[unit][0] * needed:
                    bests[unit] = score, term.with_(alpha=alpha)
    # ages in time replace ages in steps only when they validate TIME_MIN_GAIN better (the same reason)
    timed = bests["time"][1].method != "none" and bests["time"][0] > bests["step"][0] * (1 + TIME_MIN_GAIN)
    best_score, best = bests["time" if timed else "step"]
    if excluded is None:  # repeats allowed: how much do the user's own recent items speak for themselves?
        best_score, best = _choose_repeat_weight(best, best_score, cases, spread, tried)
    chosen = {
        "method": best.method,
        "alpha": best.alpha,
        "age_unit": best.age_unit,
        "decay": best.decay,
        "repeat_weight": best.repeat_weight,
        "val_ndcg@10": best_score,
    }
    return best, {"tried": tried, "chosen": chosen}


def _choose_repeat_weight(best: ItemItem, best_score: float, cases: _Cases, spread: float, tried: list):
    """γ (and, without a co-occurrence term, the decay) on top of the chosen term, by validation NDCG@10."""
    chosen = best
    size = len(cases.logits_of(0, 1)[0]) + 1
    empty = sparse.csr_matrix((size, size), dtype="float32")  # no co-occurrence term: S = 0
    ages = [(best.age_unit, best.decay)] if best.alpha else [(u, d) for u, grid in cases.age_grids() for d in grid]
    for unit, decay in ages:
        base = best if best.alpha else best.with_(matrix=empty, method="none", decay=decay, age_unit=unit)
        own = base.with_(alpha=0.0, decay=decay, repeat_weight=1.0)
        scale = spread / (cases.std(lambda start, stop, own=own: cases.term(own, start, stop)) or 1.0)
        weights = [weight * scale for weight in ALPHA_GRID[1:]]

        def variants(start: int, stop: int, base=base, own=own, weights=weights):
            scores = cases.logits_of(start, stop)
            if base.alpha:
                scores = scores + cases.term(base, start, stop)
            mine = cases.term(own, start, stop)
            return (scores + weight * mine for weight in weights)

        for weight, score in zip(weights, cases.ndcg(variants)):
            tried.append(
                {
                    "method": base.method,
                    "age_unit": unit,
                    "decay": decay,
                    "alpha": base.alpha,
                    "repeat_weight": weight,
                    "val_ndcg@10": score,
                }
            )
            if score > best_score:
                best_score = score
                chosen = base.with_(decay=decay, age_unit=unit, repeat_weight=weight)
    return best_score, chosen
