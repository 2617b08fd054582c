"""`bigrec recommend`: top-K items for a user's latest behaviour, feedback included, without TensorFlow."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bigrec_cli.annindex import BREADTH_NAME, OVERFETCH, ItemIndex
from bigrec_cli.artifacts import live_scorer, load_run
from bigrec_cli.data import RESERVED_ITEM_COLUMNS, event_policy, load_events
from bigrec_cli.errors import ConfigError, NotTrainedError
from bigrec_cli.events import token_items
from bigrec_cli.feedback import open_store
from bigrec_cli.metrics import BATCH_CELLS, batch_rows
from bigrec_cli.project import ProjectDir, run_index_path
from bigrec_cli.protocol import HoldoutCases, left_pad
from bigrec_cli.scoring import Scorer

MAX_K = 1000
STATE_CACHE_SIZE = 100_000
# users whose live history (steps, history items, rejected items) is kept between requests, checked against the
# store's version of their feedback at each request
LIVE_CACHE_SIZE = 20_000
WARM_USERS = 20_000


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def spreadsheet_safe(text: str) -> str:
    """Drop control characters, and prefix a cell that a spreadsheet would run as a formula (=, +, -, @) with '."""
    text = CONTROL.sub("", text)
    if text and (text[0] in "=+@\t\r" or (text[0] == "-" and not text[1:].replace(".", "", 1).isdigit())):
        return "'" + text
    return text


def answers_csv(answers: list[dict]) -> str:
    """Return answers as CSV text, one row per recommended item, with formula cells neutralised."""
    stream = io.StringIO(newline="")
    writer = csv.writer(stream)
    explained = any("because" in item for answer in answers for item in answer["items"])
    writer.writerow(["user_id", "rank", "item_id", "title", "score", "cold_start"] + (["because"] if explained else []))
    for answer in answers:
        for item in answer["items"]:
            score = "" if item["score"] is None else f"{item['score']:.6f}"
            row = [
                spreadsheet_safe(answer["user_id"]),
                item["rank"],
                spreadsheet_safe(item["item_id"]),
                spreadsheet_safe(item["title"]),
                score,
                int(answer["cold_start"]),
            ]
            if explained:
                row.append(spreadsheet_safe(";".join(reason["item_id"] for reason in item.get("because", []))))
            writer.writerow(row)
    return stream.getvalue()


CONDITION = re.compile(r"^\s*([^=!<>]+?)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")


def attribute_mask(attributes: pd.DataFrame, condition: str) -> np.ndarray:
    """Which items satisfy one `column OP value` condition (numbers compared as numbers, text as text)."""
    match = CONDITION.match(condition)
    if not match:
        raise ConfigError(f"cannot read the filter {condition!r}", hint="write column=value, column!=value or column<3")
    column, operator, value = match.groups()
    if column not in attributes.columns:
        known = ", ".join(attributes.columns) or "none (add columns to the items file)"
        raise ConfigError(f"items have no attribute {column!r}", hint=f"attributes: {known}")
    cells = attributes[column].astype(str)
    if operator in ("=", "!="):
        equal = (cells == value).to_numpy()
        return equal if operator == "=" else ~equal
    try:
        bound = float(value)
    except ValueError:
        raise ConfigError(f"{condition!r} compares with {value!r}, not a number", hint="use = or != for text") from None
    numbers = pd.to_numeric(cells, errors="coerce").to_numpy(dtype="float64")
    compare = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[operator]
    return compare(numbers, bound) & ~np.isnan(numbers)


def index_top_k(
    scorer: Scorer,
    index: ItemIndex,
    states: np.ndarray,
    sequences: np.ndarray,
    blocked: list[np.ndarray],
    k: int,
    allowed: np.ndarray | None = None,
    always: np.ndarray | None = None,
    times: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Each user's top k (item columns, exact logits) among the index's candidates.

    The index proposes k + the user's blocked items + OVERFETCH items by its inner product; `always` (the items
    added after the index was built) and, with an item-to-item term, the items it scores highest join them. Every
    candidate is then scored exactly, exactly as without an index, so the answer differs from the exact one only
    where the best items were never proposed; a user's answer never depends on the other users of the batch. None
    for a user whose filters left fewer than k candidates: the caller ranks that user exactly. `times`: the steps'
    time stamps, aligned with `sequences` (for a term whose ages count time).
    """
    blocked = [np.unique(columns) for columns in blocked]
    counts = np.array([k + len(columns) + OVERFETCH for columns in blocked], dtype="int64")
    proposed = index.candidates(states, counts)
    term = scorer.item_item.sparse_scores(sequences, times) if scorer.item_item is not None else None
    answers: list[tuple[np.ndarray, np.ndarray] | None] = []
    for row in range(len(states)):
        columns = proposed[row]
        if always is not None and len(always):
            columns = np.union1d(columns, always)
        if term is not None:
            span = slice(term.indptr[row], term.indptr[row + 1])
            neighbours, values = term.indices[span], term.data[span]
            neighbours, values = neighbours[values > 0], values[values > 0]
            if len(neighbours) > counts[row]:
                neighbours = neighbours[np.argpartition(-values, int(counts[row]))[: counts[row]]]
            columns = np.union1d(columns, neighbours)
        logits = states[row] @ scorer.output_vectors[columns + 1].T + scorer.output_bias[columns + 1]
        if term is not None:
            logits = logits + sparse_row_values(term, row, columns)
        keep = ~np.isin(columns, blocked[row])
        if allowed is not None:
            keep &= allowed[columns]
        columns, logits = columns[keep], logits[keep]
        if len(columns) < min(k, scorer.num_items - len(blocked[row])):
            answers.append(None)
            continue
        order = np.argsort(-logits, kind="stable")[:k]
        answers.append((columns[order], logits[order]))
    return answers


def sparse_row_values(matrix, row: int, columns: np.ndarray) -> np.ndarray:
    """matrix[row, columns] of a CSR matrix with sorted indices, 0 where the row has no entry."""
    span = slice(matrix.indptr[row], matrix.indptr[row + 1])
    indices, data = matrix.indices[span], matrix.data[span]
    if not len(indices):
        return np.zeros(len(columns), dtype=data.dtype)
    position = np.minimum(np.searchsorted(indices, columns), len(indices) - 1)
    return np.where(indices[position] == columns, data[position], 0).astype(data.dtype)


def exact_top(
    scorer: Scorer,
    states: np.ndarray,
    sequences: np.ndarray,
    blocked: list[np.ndarray],
    k: int = 10,
    chunk_cells: int = BATCH_CELLS,
    times: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Each user's exact top k item columns among the items the user may get (unordered).

    Args:
        scorer: The run's scorer.
        states: (users, dim) the users' LSTM states.
        sequences: (users, max_len) their padded token sequences (for the item-to-item term).
        blocked: Each user's item columns left out of the ranking.
        k: How many.
        chunk_cells: Users are ranked in chunks of about this many logits, never all at once.
        times: The steps' time stamps, aligned with `sequences` (for a term whose ages count time).
    """
    tops: list[np.ndarray] = []
    step = max(1, chunk_cells // max(scorer.num_items, 1))
    for start in range(0, len(states), step):
        stop = min(start + step, len(states))
        stamps = None if times is None else times[start:stop]
        exact = scorer.logits_from_states(states[start:stop], sequences[start:stop], stamps)
        for row, columns in enumerate(blocked[start:stop]):
            exact[row, columns] = -np.inf
        keep = min(k, exact.shape[1] - 1)
        top = np.argpartition(-exact, keep, axis=1)[:, :k]
        tops.extend(columns[np.isfinite(values)] for columns, values in zip(top, np.take_along_axis(exact, top, 1)))
    return tops


def index_recall(
    scorer: Scorer,
    index: ItemIndex,
    states: np.ndarray,
    sequences: np.ndarray,
    blocked: list[np.ndarray],
    k: int = 10,
    best: list[np.ndarray] | None = None,
    times: np.ndarray | None = None,
) -> float:
    """Recall@k of the index's answers against exact ranking: the share of the exact top k (of the items a user may
    get) that it returns. `best`: the users' `exact_top`, when already known; `times`: the steps' time stamps."""
    if not len(states):
        return float("nan")
    best = exact_top(scorer, states, sequences, blocked, k, times=times) if best is None else best
    hits, wanted = 0, 0
    for start in range(0, len(states), 512):
        stop = min(start + 512, len(states))
        stamps = None if times is None else times[start:stop]
        found = index_top_k(
            scorer, index, states[start:stop], sequences[start:stop], blocked[start:stop], k, times=stamps
        )
        for answer, exact in zip(found, best[start:stop]):
            wanted += len(exact)
            hits += len(exact) if answer is None else len(np.intersect1d(answer[0], exact))
    return float(hits / wanted) if wanted else float("nan")


def sampled_recall(
    scorer: Scorer,
    index: ItemIndex,
    cases: HoldoutCases,
    max_len: int,
    exclude_history: bool,
    seed: int,
    sample: int = 2_000,
    target: float | None = None,
) -> dict:
    """Recall@10 of the index against exact ranking for (up to `sample`) users of these cases (their histories).

    Args:
        scorer: The run's scorer.
        index: Its index; with a `target`, left at the breadth reached.
        cases: The users, with their token sequences and the steps' times.
        max_len: Steps the LSTM reads.
        exclude_history: Whether history items are left out of the ranking.
        seed: Seeds the choice of users.
        sample: At most this many users.
        target: Widen the index (see `widen`) until its recall reaches this; None: measure it as it is.
    """
    rows = sorted(np.random.default_rng([seed, 11]).permutation(len(cases.histories))[:sample])
    chosen = [cases.histories[row] for row in rows]
    sequences = left_pad(chosen, max_len)
    times = left_pad([cases.times[row] for row in rows], max_len, "float64")
    states = scorer.user_states(sequences) if len(sequences) else np.zeros((0, scorer.output_vectors.shape[1]))
    empty = np.zeros(0, dtype="int64")
    blocked = [token_items(history) - 1 if exclude_history else empty for history in chosen]
    best = exact_top(scorer, states, sequences, blocked, 10, times=times)
    tried = widen(index, lambda: index_recall(scorer, index, states, sequences, blocked, 10, best, times=times), target)
    return {
        "kind": index.kind,
        "recall@10": tried[index.breadth],
        "recall_cases": len(chosen),
        "breadth": index.breadth,
        "breadth_name": BREADTH_NAME[index.kind],
        "recall@10_by_breadth": {str(breadth): recall for breadth, recall in tried.items()},
    }


def widen(index: ItemIndex, recall_of: Callable[[], float], target: float | None) -> dict[int, float]:
    """Double the index's breadth (nprobe or efSearch; the last step clipped to its maximum) until `recall_of()`
    reaches `target` or the breadth its maximum, then try once halfway back to the breadth before the last step,
    and leave the index at the narrowest breadth that reached the target (or at the widest tried): a larger catalog,
    or one whose best items are harder to reach, searches more widely, and the halfway step saves up to a quarter
    of each query's work where doubling overshot. Returns the recall at each breadth tried, in order; with no
    target, at the breadth as it is. A NaN recall (no users to tell) stops at once."""
    tried = {index.breadth: recall_of()}
    while target is not None and tried[index.breadth] < target and index.breadth < index.max_breadth:
        previous = index.breadth
        index.breadth = min(2 * index.breadth, index.max_breadth)
        tried[index.breadth] = recall_of()
        if tried[index.breadth] >= target and index.breadth - previous > 1:
            reached = index.breadth
            index.breadth = (previous + reached) // 2
            tried[index.breadth] = recall_of()
            if tried[index.breadth] < target:
                index.breadth = reached
            break
    return tried


@dataclass(frozen=True, eq=False)
class LiveHistory:
    """What a request needs of a user's behaviour (preprocessed events, then feedback).

    Attributes:
        steps: (item, event type, time) of each step the LSTM reads, oldest first (`Recommender._sequence`).
        positives: The items of positive events, each once (left out with `--repeats exclude`).
        rejected: Items whose latest event is negative (never recommended right back).
        positive_columns: The scorer's columns (index − 1) of `positives` it knows.
        rejected_columns: The same of `rejected`.
        tokens: (max_len,) the left-padded token row of `steps` (`Recommender.encode`).
        times: (max_len,) the time stamps aligned with `tokens`, when the run's term counts ages in time; else None.
    """

    steps: tuple[tuple[str, str, float], ...]
    positives: tuple[str, ...]
    rejected: tuple[str, ...]
    positive_columns: np.ndarray
    rejected_columns: np.ndarray
    tokens: np.ndarray
    times: np.ndarray | None


class Recommender:
    """Serves top-K lists from the promoted run and the live behaviour of each user.

    Args:
        project: The project directory.
        run_dir: A run to use instead of the promoted one.
        index: `auto` uses the run's approximate index when it has one, `exact` always scores the whole catalog,
            `ivf` or `hnsw` requires the index (whichever kind the run has).
    """

    def __init__(self, project: ProjectDir, run_dir: Path | None = None, index: str = "auto") -> None:
        project = self.project = project.pinned()
        self.run = load_run(run_dir or project.current_run_dir())
        self.scorer = live_scorer(project, self.run)
        self.added_columns = np.zeros(0, dtype="int64")
        self.index = self._load_index(index)
        self.max_len = self.run.config.max_len
        self.store = open_store(project)
        self._state_cache: dict[bytes, np.ndarray] = {}
        self._live_cache: dict[str, tuple[tuple, LiveHistory]] = {}
        items = pd.read_parquet(project.items_path)
        self.catalog_items = set(items["item_id"])
        attribute_columns = [column for column in items.columns if column not in RESERVED_ITEM_COLUMNS]
        self.attributes = items.set_index("item_id")[attribute_columns].reindex(self.scorer.item_ids).fillna("")
        self._masks: dict[tuple, np.ndarray] = {}
        extra = self.store.new_items(exclude=self.catalog_items)
        self.titles = dict(zip(items["item_id"], items["title"])) | dict(zip(extra["item_id"], extra["title"]))
        self.policy = event_policy(project)
        events = load_events(project, columns=["user_id", "item_id", "timestamp", "event"])
        # Preprocessed events hold each user's together, by time, and never change while a run serves: index each
        # user's slice once; per request only the feedback store is read.
        users = events["user_id"].to_numpy(dtype=object)
        self._event_items = events["item_id"].to_numpy(dtype=object)
        self._event_times = events["timestamp"].to_numpy(dtype="float64")
        self._event_types = events["event"].to_numpy(dtype=object)
        boundaries = np.flatnonzero(users[1:] != users[:-1]) + 1
        starts, stops = np.r_[0, boundaries], np.r_[boundaries, len(users)]
        self._spans = dict(zip(users[starts].tolist(), zip(starts.tolist(), stops.tolist()))) if len(users) else {}
        # every reload reads this: counted in SQLite, so it costs memory per item, never per stored event
        popularity = events["item_id"].value_counts().add(self.store.item_counts(), fill_value=0)
        popularity = popularity.sort_values(ascending=False, kind="stable")
        self.popular = [item for item in popularity.index if item in self.scorer.index_of]

    def _load_index(self, mode: str) -> ItemIndex | None:
        """The run's index, extended with the catalog items a later `extract` added; None for exact scoring."""
        path = run_index_path(self.run.directory)
        if mode == "exact" or (mode == "auto" and not path.exists()):
            return None
        if not path.exists():
            raise NotTrainedError(
                f"run {self.run.run_id} has no approximate index",
                hint="train with --index ivf (or hnsw), or recommend with --index auto/exact",
            )
        index = ItemIndex.load(path)
        if mode not in ("auto", index.kind):
            raise NotTrainedError(
                f"run {self.run.run_id} has an {index.kind} index, not {mode}",
                hint=f"use --index auto or {index.kind}, or train with --index {mode}",
            )
        if index.num_items > self.scorer.num_items:
            raise NotTrainedError(f"{path} indexes more items than the run has", hint="train again")
        added = slice(index.num_items + 1, self.scorer.num_items + 1)
        index.extend(self.scorer.output_vectors[added], self.scorer.output_bias[added])
        # Items a later extract added: proposed to every user as well (few, and the index may understate them).
        self.added_columns = np.arange(len(self.run.item_ids), self.scorer.num_items)
        return index

    @property
    def index_recall(self) -> float | None:
        """Recall@10 of the run's index against exact ranking, measured on validation users when it was built."""
        if self.index is None:
            return None
        return self.run.metrics.get("index", {}).get("recall@10")

    def close(self) -> None:
        """Release what this recommender holds open (its feedback store's connections)."""
        self.store.close()

    def warm(self, max_users: int = WARM_USERS, batch_size: int = 2048) -> int:
        """Compute and cache the LSTM states of the most recently active users; return how many.

        The server calls this before it answers with a freshly loaded run, so the first request of each of those
        users costs one matrix product instead of an LSTM pass. The cache is keyed by the exact sequence, so a user
        whose behaviour changes later is computed afresh.
        """
        if not self._spans:
            return 0
        users = list(self._spans)
        last_seen = self._event_times[[stop - 1 for _, stop in self._spans.values()]]
        chosen = [users[row] for row in np.argsort(-last_seen, kind="stable")[: min(max_users, STATE_CACHE_SIZE)]]
        for start in range(0, len(chosen), batch_size):
            self._user_states(self.encode(self.sequences(chosen[start : start + batch_size])))
        return len(chosen)

    def behaviour(self, user_ids: list[str]) -> list[list[tuple[str, float, str]]]:
        """Each user's events, (item_id, timestamp, event) oldest first: preprocessed ones, then feedback.

        The feedback store is read once for a large batch, one indexed query per user for a small one.
        """
        if len(user_ids) > 32:
            frame = self.store.events_frame()
            feedback = {
                user: list(zip(group["item_id"], group["timestamp"], group["event"]))
                for user, group in frame.groupby("user_id", sort=False)
            }
            live = [feedback.get(user_id, []) for user_id in user_ids]
        else:
            live = [self.store.user_events(user_id) for user_id in user_ids]
        result = []
        for user_id, extra in zip(user_ids, live):
            start, stop = self._spans.get(user_id, (0, 0))
            base = zip(self._event_items[start:stop], self._event_times[start:stop], self._event_types[start:stop])
            result.append(sorted([*base, *extra], key=lambda row: row[1]))
        return result

    def live(self, user_ids: list[str]) -> list["LiveHistory"]:
        """Each user's live history. A small batch (a served request) reads the store's version of each user's
        feedback, one indexed count, and reuses what an earlier request derived while it has not changed: a
        request of a user with thousands of events costs what one of a new user costs, and only a request after
        new feedback reads and orders the whole history again. A large batch derives everything afresh."""
        if len(user_ids) > 32:
            return [self._derive(rows) for rows in self.behaviour(user_ids)]
        lives = []
        for user_id in user_ids:
            version = self.store.user_version(user_id)
            cached = self._live_cache.get(user_id)
            if cached is not None and cached[0] == version:
                lives.append(cached[1])
                continue
            live = self._derive(self.behaviour([user_id])[0])
            if len(self._live_cache) >= LIVE_CACHE_SIZE:
                self._live_cache.clear()
            self._live_cache[user_id] = (version, live)
            lives.append(live)
        return lives

    def _derive(self, rows: list[tuple[str, float, str]]) -> "LiveHistory":
        """Everything a request needs of these events, derived once (a request only reads it)."""
        positives, rejected = self._positives(rows), self._rejected(rows)
        steps = tuple(self._sequence(rows))
        times = self.encode_times([steps])
        live = LiveHistory(
            steps,
            tuple(positives),
            tuple(rejected),
            self._columns(positives),
            self._columns(rejected),
            self.encode([steps])[0],
            None if times is None else times[0],
        )
        for array in (live.positive_columns, live.rejected_columns, live.tokens, live.times):
            if array is not None:
                array.setflags(write=False)  # shared by every request until the user's feedback changes
        return live

    def sequences(self, user_ids: list[str]) -> list[list[tuple[str, str, float]]]:
        """The (item, event type, time) steps the LSTM reads, in time order (see `_sequence`)."""
        return [self._sequence(rows) for rows in self.behaviour(user_ids)]

    def _sequence(self, rows: list[tuple[str, float, str]]) -> list[tuple[str, str, float]]:
        """Every positive event, and every negative one whose type the run learned (a model trained before event
        types never saw negatives); with the project's `--dedupe latest`, each item once at its latest event."""
        negative, known = self.policy.negative_events, self.scorer.type_of
        steps = [(item, event, time) for item, time, event in rows if event not in negative or event in known]
        if self.policy.dedupe != "latest":
            return steps
        latest = {step[0]: position for position, step in enumerate(steps)}
        return [steps[position] for position in sorted(latest.values())]

    def _positives(self, rows: list[tuple[str, float, str]]) -> list[str]:
        """The items of the user's positive events, each once (the history that `--repeats exclude` keeps out)."""
        return list(dict.fromkeys(item for item, _, event in rows if event not in self.policy.negative_events))

    def encode(self, sequences: list[list[tuple[str, str, float]]]) -> np.ndarray:
        return self.scorer.encode_sequences(
            [[step[0] for step in steps] for steps in sequences],
            self.max_len,
            [[step[1] for step in steps] for steps in sequences],
        )

    def encode_times(self, sequences: list[list[tuple[str, str, float]]]) -> np.ndarray | None:
        """The steps' times aligned with `encode`'s rows (the last `max_len` steps whose item the scorer knows),
        when the run's item-to-item term counts ages in time (None otherwise: nothing reads them)."""
        term = self.scorer.item_item
        if term is None or term.age_unit != "time":
            return None
        rows = np.zeros((len(sequences), self.max_len), dtype="float64")
        for row, steps in enumerate(sequences):
            kept = [step[2] for step in steps if step[0] in self.scorer.index_of][-self.max_len :]
            if kept:
                rows[row, self.max_len - len(kept) :] = kept
        return rows

    def _rejected(self, rows: list[tuple[str, float, str]]) -> list[str]:
        """Items whose latest event is negative (cancelled, returned, disliked): never recommended right back."""
        last = {item: event for item, _, event in rows}
        return [item for item, event in last.items() if event in self.policy.negative_events]

    def candidates(self, where: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> np.ndarray | None:
        """The items that may be recommended, as a mask over items 1…N (None: all of them).

        Args:
            where: Conditions on item attributes (extra columns of the items file), all of which must hold:
                `column=value`, `column!=value`, or `column<value` (also `<=`, `>`, `>=`; compared as numbers).
            exclude: Item ids never to recommend.
        """
        if not where and not exclude:
            return None
        key = (tuple(where), tuple(exclude))
        if key not in self._masks:
            allowed = np.ones(self.scorer.num_items, dtype=bool)
            for condition in where:
                allowed &= attribute_mask(self.attributes, condition)
            for item_id in exclude:
                if item_id in self.scorer.index_of:
                    allowed[self.scorer.index_of[item_id] - 1] = False
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[key] = allowed
        return self._masks[key]

    def recommend_many(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude_seen: bool | None = None,
        where: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        explain: bool = False,
    ) -> list[dict]:
        """Return one answer per user: `{"user_id", "cold_start", "items": [{"rank", "item_id", "title", "score"}]}`.

        Users with no behaviour get the most popular items, flagged `cold_start`. History items are left out when
        `exclude_seen` (default: the project's `--repeats exclude`); items whose latest event is negative always
        are. `where` and `exclude` filter the candidates before the top-K (see `candidates`); `explain` adds to
        each item the history items that raised its score most (`because`), found by occlusion.
        """
        if not 1 <= k <= MAX_K:
            raise ConfigError(f"k must be between 1 and {MAX_K}, got {k}", hint="pass a smaller --k")
        if exclude_seen is None:
            exclude_seen = self.policy.exclude_history
        allowed = self.candidates(tuple(where), tuple(exclude))
        lives = self.live(user_ids)
        blocked_columns = [
            np.concatenate([live.positive_columns, live.rejected_columns]) if exclude_seen else live.rejected_columns
            for live in lives
        ]
        warm = [row for row, live in enumerate(lives) if live.tokens.any()]  # some step the scorer knows
        answers: list[dict] = [{"user_id": user_id, "cold_start": True, "items": []} for user_id in user_ids]
        if warm:
            # Batch users of similar history length together: fewer padded LSTM steps.
            warm.sort(key=lambda row: len(lives[row].steps))
            sequences = np.stack([lives[row].tokens for row in warm])
            times = None if lives[warm[0]].times is None else np.stack([lives[row].times for row in warm])
            states = self._user_states(sequences)
            size = batch_rows(self.scorer.num_items, 512)  # users whose logits over the catalog are held at once
            for start in range(0, len(warm), size):
                rows = warm[start : start + size]
                block_states, block_sequences = states[start : start + size], sequences[start : start + size]
                block_times = None if times is None else times[start : start + size]
                exact = rows
                if self.index is not None:
                    found = index_top_k(
                        self.scorer,
                        self.index,
                        block_states,
                        block_sequences,
                        [blocked_columns[row] for row in rows],
                        k,
                        allowed,
                        always=self.added_columns,
                        times=block_times,
                    )
                    for row, answer in zip(rows, found):
                        if answer is not None:
                            items = self._items(answer[0][None, :], answer[1][None, :])[0]
                            answers[row] = {"user_id": user_ids[row], "cold_start": False, "items": items}
                    exact = [row for row, answer in zip(rows, found) if answer is None]
                    positions = [rows.index(row) for row in exact]
                    block_states, block_sequences = block_states[positions], block_sequences[positions]
                    block_times = None if block_times is None else block_times[positions]
                if not exact:
                    continue
                logits = self.scorer.logits_from_states(block_states, block_sequences, block_times)
                if allowed is not None:
                    logits[:, ~allowed] = -np.inf
                for row, items in zip(exact, self._top_k(logits, [blocked_columns[row] for row in exact], k)):
                    answers[row] = {"user_id": user_ids[row], "cold_start": False, "items": items}
        for row, answer in enumerate(answers):
            if answer["cold_start"]:
                seen = {*lives[row].rejected, *(lives[row].positives if exclude_seen else ())}
                popular = [
                    item
                    for item in self.popular
                    if item not in seen and (allowed is None or allowed[self.scorer.index_of[item] - 1])
                ][:k]
                answer["items"] = [self._item(rank, item, None) for rank, item in enumerate(popular, start=1)]
            elif explain:
                self._explain(answer, list(lives[row].steps))
        return answers

    def _explain(self, answer: dict, history: list[tuple[str, str, float]], top: int = 3) -> None:
        """Add `because` to each item: the history items whose removal lowers its logit most (occlusion).

        One batched pass: the history with each of its last `max_len` items left out in turn, scored for the
        recommended items only.
        """
        steps = [step for step in history if step[0] in self.scorer.index_of][-self.max_len :]
        known = [step[0] for step in steps]
        if not known or not answer["items"]:
            return
        variants = [steps[:position] + steps[position + 1 :] for position in range(len(steps))]
        sequences = self.encode([steps, *variants])
        times = self.encode_times([steps, *variants])
        states = self.scorer.user_states(sequences)
        columns = np.array([self.scorer.index_of[item["item_id"]] for item in answer["items"]])
        logits = states @ self.scorer.output_vectors[columns].T + self.scorer.output_bias[columns]
        if self.scorer.item_item is not None:
            logits = logits + self.scorer.item_item.scores(sequences, times)[:, columns - 1]
        drops = logits[0][None, :] - logits[1:]  # (history items, recommended items): how much each one added
        for column, item in enumerate(answer["items"]):
            order = np.argsort(-drops[:, column], kind="stable")[:top]
            item["because"] = [
                {
                    "item_id": known[row],
                    "title": self.titles.get(known[row], ""),
                    "contribution": float(drops[row, column]),
                }
                for row in order
                if drops[row, column] > 0
            ]

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool | None = None, **options) -> dict:
        """Return the top-k answer for one user (see recommend_many)."""
        return self.recommend_many([user_id], k, exclude_seen, **options)[0]

    def _user_states(self, sequences: np.ndarray) -> np.ndarray:
        """LSTM states for index sequences, reusing those computed for the very same sequence before.

        The key is a 16-byte BLAKE2b digest of the sequence itself, so a user's new event (a different sequence) is
        never served a stale state, and a full cache holds 16 bytes per user, not the 800 of a 100-step sequence.
        """
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in sequences]
        cached = [self._state_cache.get(key) for key in keys]
        missing = [position for position, state in enumerate(cached) if state is None]
        if missing:
            fresh = self.scorer.user_states(sequences[missing])
            if len(self._state_cache) + len(missing) > STATE_CACHE_SIZE:
                self._state_cache.clear()
            for position, state in zip(missing, fresh):
                cached[position] = state
                self._state_cache[keys[position]] = state
        return np.stack(cached)

    def _columns(self, items: list[str]) -> np.ndarray:
        """The scorer's columns (index − 1) of the items it knows."""
        index_of = self.scorer.index_of
        return np.array([index_of[item] - 1 for item in items if item in index_of], dtype="int64")

    def _top_k(self, logits: np.ndarray, seen: list[np.ndarray], k: int) -> list[list[dict]]:
        """Return the answer items of each row of (users, items) logits, for all rows at once, without the
        row's `seen` columns."""
        rows = np.repeat(np.arange(len(seen)), [len(columns) for columns in seen])
        if len(rows):
            logits[rows, np.concatenate(seen)] = -np.inf
        keep = min(k, logits.shape[1])
        top = np.argpartition(logits, logits.shape[1] - keep, axis=1)[:, logits.shape[1] - keep :]
        values = np.take_along_axis(logits, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
        return self._items(top, values)

    def _items(self, top: np.ndarray, values: np.ndarray) -> list[list[dict]]:
        """Answer items of (users, k) item columns and their logits, best first; −inf logits are left out."""
        probabilities = self.scorer.probability(values)
        item_ids = self.scorer.item_ids
        return [
            [
                self._item(rank, item_ids[column], float(probability))
                for rank, (column, value, probability) in enumerate(zip(top_row, value_row, probability_row), start=1)
                if np.isfinite(value)
            ]
            for top_row, value_row, probability_row in zip(top, values, probabilities)
        ]

    def _item(self, rank: int, item_id: str, score: float | None) -> dict:
        return {"rank": rank, "item_id": item_id, "title": self.titles.get(item_id, ""), "score": score}
