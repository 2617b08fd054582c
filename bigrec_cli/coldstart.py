"""Items without interactions: the boost their borrowed score gets, chosen on the validation split.

An item nobody has interacted with yet borrows the learned ID vector, bias and item-to-item neighbours of its
nearest items by text (`scoring.impute_items`). Borrowed scores are averages, so they rank a new item like a
typical neighbour: useful, but rarely in anyone's top 10. The cold boost adds a constant to every such item's logit.
It is chosen on validation with known items posing as new ones: a seeded share of the items that have training
interactions lose what they learned and borrow from the others, as a new item would; for each boost on a grid
(in units of the spread of the validation logits), the held-out events whose target poses as new measure the gain,
and every other held-out event measures the cost. The boost kept is the largest on the grid whose validation
NDCG@10 on the other events stays within `cold_boost_cost` (a share) of no boost and whose posing items gain;
when none does, no boost.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import sparse

from bigrec_cli.events import token_items
from bigrec_cli.itemitem import batched_std
from bigrec_cli.metrics import batch_rows, ranking_report, ranks_of_targets
from bigrec_cli.protocol import left_pad
from bigrec_cli.scoring import Scorer, impute_items, text_neighbours

POSING_SHARE = 0.1  # of the items with training interactions, posing as new ones while the boost is chosen
MIN_POSING_CASES = 10  # fewer held-out events on posing items than this measure nothing: no boost
BOOST_GRID = tuple(round(0.1 * step, 1) for step in range(31))  # × the spread of the validation logits


def posing_scorer(scorer: Scorer, posing: np.ndarray, rest: np.ndarray) -> Scorer:
    """The scorer with the `posing` rows made new: their ID vector, bias and item-to-item rows and columns
    borrowed from their text neighbours among `rest`, as for an item without interactions (no boost)."""
    weights = impute_items(replace(scorer.weights, cold_boost=np.zeros(1, dtype="float32")), posing, rest)
    term = scorer.item_item
    if term is not None and term.active and term.matrix.shape[0] > 1:
        keep = np.ones(term.matrix.shape[0], dtype="float32")
        keep[posing] = 0.0
        unlearned = sparse.diags(keep) @ term.matrix @ sparse.diags(keep)
        term = term.with_(matrix=sparse.csr_matrix(unlearned, dtype="float32"))
        term = term.impute(posing, *text_neighbours(weights.text_vectors, posing, rest))
    return Scorer(weights, list(scorer.item_ids), term, scorer.event_types)


def choose_cold_boost(
    scorer: Scorer,
    histories: list[np.ndarray],
    targets: np.ndarray,
    cold: np.ndarray,
    max_len: int,
    cost: float,
    seed: int = 0,
    exclude_history: bool = True,
    batch_size: int = 512,
    times: list[np.ndarray] | None = None,
) -> tuple[float, dict]:
    """The logit boost for items without interactions, and what was tried.

    Args:
        scorer: The trained scorer (its item-to-item term fitted on training events only).
        histories: Validation cases: each user's token sequence before the held-out event.
        targets: (cases,) item index of each held-out event.
        cold: (rows,) True for items without training interactions (row 0, padding, False).
        max_len: Steps the LSTM reads.
        cost: Share of the other events' validation NDCG@10 the boost may cost (0: no boost).
        seed: Seeds the choice of posing items.
        exclude_history: Whether history items are left out of the ranking (repeats not allowed).
        batch_size: Cases scored at once.
        times: The time stamps of each history's steps (the item-to-item term may count ages in time).
    """
    known = np.flatnonzero(~cold)[1:]
    if len(known) < 2:  # nothing to pose as new, or nothing left to borrow from
        return 0.0, {"posing_items": 0, "posing_cases": 0, "cost": cost, "boost": 0.0, "reason": "too few items"}
    rng = np.random.default_rng([seed, 11])
    posing = np.sort(rng.choice(known, size=max(1, round(POSING_SHARE * len(known))), replace=False))
    is_posing_row = np.zeros(len(cold), dtype=bool)
    is_posing_row[posing] = True
    is_posing = is_posing_row[targets]
    report = {"posing_items": len(posing), "posing_cases": int(is_posing.sum()), "cost": cost}
    if cost <= 0 or is_posing.sum() < MIN_POSING_CASES or is_posing.all():
        return 0.0, {**report, "boost": 0.0, "reason": "off, or too few held-out events on posing items"}
    posed = posing_scorer(scorer, posing, np.setdiff1d(known, posing))
    batch_size = batch_rows(scorer.num_items, batch_size)
    batches = [(start, min(start + batch_size, len(targets))) for start in range(0, len(targets), batch_size)]
    # the users' histories read as learned (one LSTM pass, states kept); only the posing items' scores are borrowed
    states = {start: scorer.user_states(left_pad(histories[start:stop], max_len)) for start, stop in batches}

    def logits(start: int, stop: int) -> np.ndarray:
        stamps = None if times is None else left_pad(times[start:stop], max_len, "float64")
        return posed.logits_from_states(states[start], left_pad(histories[start:stop], max_len), stamps)

    spread = batched_std(logits, batches) or 1.0  # of every validation logit: the grid's unit
    ranks: list[list[np.ndarray]] = [[] for _ in BOOST_GRID]
    for start, stop in batches:
        scores = logits(start, stop)
        excluded = [token_items(history) - 1 for history in histories[start:stop]] if exclude_history else None
        for step_position, step in enumerate(BOOST_GRID):
            boosted = scores + (step * spread) * is_posing_row[1:]
            ranks[step_position].append(ranks_of_targets(boosted, targets[start:stop] - 1, excluded))
    tried = []
    for step, parts in zip(BOOST_GRID, ranks):
        every = np.concatenate(parts)
        posing_report = ranking_report(every[is_posing], (10,))
        tried.append(
            {
                "boost": step * spread,
                "val_ndcg@10_other": ranking_report(every[~is_posing], (10,))["ndcg@10"],
                "val_ndcg@10_posing": posing_report["ndcg@10"],
                "val_hr@10_posing": posing_report["hr@10"],
            }
        )
    floor, unboosted = (1 - cost) * tried[0]["val_ndcg@10_other"], tried[0]["val_ndcg@10_posing"]
    allowed = [
        entry for entry in tried[1:] if entry["val_ndcg@10_other"] >= floor and entry["val_ndcg@10_posing"] > unboosted
    ]
    chosen = allowed[-1] if allowed else tried[0]
    return float(chosen["boost"]), {**report, "boost": float(chosen["boost"]), "chosen": chosen, "tried": tried}


def boost_cold_items(scorer_weights, cold: np.ndarray, boost: float):
    """The weights with the items without interactions marked and `boost` added to their logit; items added later
    are marked when they borrow (`scoring.impute_items`). Their learned-from biases stay as borrowed, so what later
    items borrow, and what a retrain starts from, carries no boost."""
    return replace(scorer_weights, cold_boost=np.array([boost], dtype="float32"), cold_rows=cold.astype("float32"))
