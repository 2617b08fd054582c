"""`bigrec train`: fit the model on the training split, stop early on validation NDCG@10, write a run."""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from bigrec_cli.annindex import ItemIndex, index_kind
from bigrec_cli.artifacts import TrainResult, load_run, write_run
from bigrec_cli.backend import keras, set_seed, tf, versions
from bigrec_cli.checkpoints import extraction_checkpoint
from bigrec_cli.cluster import Cluster, cluster_from_env
from bigrec_cli.coldstart import boost_cold_items, choose_cold_boost
from bigrec_cli.config import TrainConfig, parse_pairs
from bigrec_cli.data import event_policy
from bigrec_cli.errors import ConfigError, DataError, WorkerLostError
from bigrec_cli.events import token_items
from bigrec_cli.feedback import open_store
from bigrec_cli.itemitem import ItemItem, fit_item_item, history_matrix, refit_item_item
from bigrec_cli.metrics import batch_rows
from bigrec_cli.model import build_model, export_scorer_weights, reset_cold_items, warm_start
from bigrec_cli.project import RUN_SCORER, ProjectDir, read_json
from bigrec_cli.protocol import Windows, sample_cases, scorer_report
from bigrec_cli.recommend import sampled_recall
from bigrec_cli.scoring import Scorer, ScorerWeights, fit_calibration, impute_items
from bigrec_cli.sequences import read_training_data
from bigrec_cli.vectors import load_item_vectors

FINE_TUNE_MAX_TOKENS = 64
INDEX_MIN_RECALL = 0.95  # `--index auto` keeps an index whose answers match exact ranking at least this often
# The item-to-item term, the cold boost and the calibration are chosen on at most this many validation users (a
# seeded sample by user id): each tries dozens of variants over the whole catalog, and at 100,000 users x 10,000
# items that took longer than the epoch; 20,000 users already pin NDCG@10 to about ±0.002. Below it, every user.
SELECTION_CASES = 20_000
INDEX_TARGET_RECALL = 0.98  # the index widens its search (nprobe or efSearch) until validation recall reaches this
RUN_ROOM_BYTES = 16 * 2**20  # disk a run needs beyond its item arrays (JSON files, the item-to-item term)


class WindowBatches(keras.utils.Sequence):
    """Batches of training windows with freshly sampled negatives, reproducible from (seed, epoch, batch).

    Batches are drawn at random each epoch. (Batching windows of similar length cut the LSTM's steps by 35% on
    MovieLens 100K but lowered test NDCG@10 from 0.112–0.121 to 0.102–0.104: see bench/NOTES.md.)
    """

    def __init__(self, windows: Windows, config: TrainConfig, num_items: int) -> None:
        super().__init__()
        self.windows = windows
        self.config, self.num_items = config, num_items
        self.cumulative = None
        if config.negative_sampling == "popularity":
            weights = windows.target_counts(num_items)[1:].astype("float64") ** 0.75
            self.cumulative = np.cumsum(weights / weights.sum())
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = self._order()

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.config.seed, self.epoch]).permutation(len(self.windows))

    def __len__(self) -> int:
        return int(np.ceil(len(self.windows) / self.config.batch_size))

    def __getitem__(self, batch: int) -> dict[str, np.ndarray]:
        rows = self.order[batch * self.config.batch_size : (batch + 1) * self.config.batch_size]
        rng = np.random.default_rng([self.config.seed, self.epoch, batch, 1])
        inputs, targets, weights = self.windows.rows(rows)
        # Windows are left-padded: drop the columns that are padding in every row of this batch.
        first = int(np.argmax(inputs.any(axis=0))) if inputs.any() else 0
        inputs, targets, weights = inputs[:, first:], targets[:, first:], weights[:, first:]
        shape = (*targets.shape, self.config.negatives)
        if self.cumulative is None:
            negatives = rng.integers(1, self.num_items + 1, size=shape)
        else:
            negatives = (
                np.minimum(np.searchsorted(self.cumulative, rng.random(shape), side="right"), self.num_items - 1) + 1
            )
        return {"sequences": inputs, "targets": targets, "negatives": negatives, "weights": weights}

    def on_epoch_end(self) -> None:
        self.start_epoch(self.epoch + 1)


def worker_batches(strategy, batches: WindowBatches):
    """Each worker's share of every global batch of `batches`, for MultiWorkerMirroredStrategy.

    Every worker draws the same global batches (they are reproducible from seed, epoch and batch) and keeps its own
    contiguous slice of rows; the model's loss divides by the global batch's weight, so the summed gradients are
    those of one worker with the same global batch. The dataset runs on, epoch after epoch: `fit` counts the steps.
    """
    spec = {
        "sequences": tf.TensorSpec((None, None), tf.int64),
        "targets": tf.TensorSpec((None, None), tf.int64),
        "negatives": tf.TensorSpec((None, None, None), tf.int64),
        "weights": tf.TensorSpec((None, None), tf.float32),
    }

    def dataset(context: "tf.distribute.InputContext") -> "tf.data.Dataset":
        def slices():
            for epoch in itertools.count():
                batches.start_epoch(epoch)
                for index in range(len(batches)):
                    yield {
                        name: np.array_split(value, context.num_input_pipelines)[context.input_pipeline_id]
                        for name, value in batches[index].items()
                    }

        return tf.data.Dataset.from_generator(slices, output_signature=spec).prefetch(2)

    return strategy.distribute_datasets_from_function(dataset)


def worker_strategy(cluster: Cluster):
    """MultiWorkerMirroredStrategy when `TF_CONFIG` names a cluster; None for one worker.

    It must exist before TensorFlow runs anything in this process, so `train` creates it first.
    """
    if not cluster.distributed:
        return None
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (tf.errors.OpError, ValueError, RuntimeError) as error:
        raise DataError(
            f"{cluster.describe()}: cannot join the TF_CONFIG cluster ({str(error).strip().splitlines()[0][:200]})",
            hint="check each task's host:port in TF_CONFIG (reachable, and this task's port free on its host)",
        ) from None


def chief_value(strategy, value: float, is_chief: bool) -> float:
    """The chief's `value` on every worker (an all-reduce of the chief's value and the others' zeros).

    Each worker scores validation itself; if their floating-point results differed in the last bits (other BLAS
    threads on other hosts), one could stop while another waits at the next step. Deciding on the chief's score
    keeps every worker's early stopping, best epoch and weights in step.
    """

    def share() -> "tf.Tensor":
        mine = tf.constant(value if is_chief else 0.0, tf.float32)  # made on the replica's device, not passed in
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, mine)

    shared = strategy.run(tf.function(share))  # a new function per call: `value` is part of it
    return float(strategy.experimental_local_results(shared)[0].numpy())


class WeightAverage(keras.callbacks.Callback):
    """An exponential moving average of the trainable weights, updated after every step (Polyak averaging).

    The averaged weights are what validation scores and what a run keeps: they wander less from epoch to epoch
    than the raw weights, so early stopping picks an epoch by its merit rather than by the noise of the last steps.
    """

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.shadows: list = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        variables = self.model.trainable_variables
        self.shadows = [tf.Variable(variable, trainable=False) for variable in variables]
        self.steps = tf.Variable(0.0, trainable=False)

        @tf.function
        def update() -> None:
            # TensorFlow's ExponentialMovingAverage warm-up: early on, the average follows the weights closely.
            self.steps.assign_add(1.0)
            decay = tf.minimum(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
            for shadow, variable in zip(self.shadows, variables):
                shadow.assign(decay * shadow + (1.0 - decay) * variable)

        self.update = update

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.update()

    @contextlib.contextmanager
    def applied(self):
        """Put the averaged weights into the model for the duration of the block, then restore the raw ones."""
        variables = self.model.trainable_variables
        raw = [variable.numpy() for variable in variables]
        for variable, shadow in zip(variables, self.shadows):
            variable.assign(shadow)
        try:
            yield
        finally:
            for variable, value in zip(variables, raw):
                variable.assign(value)


class StepReporter(keras.callbacks.Callback):
    """Tells a progress display how far the current epoch has come."""

    def __init__(self, on_step: Callable[[int, int, int], None], steps: int) -> None:
        super().__init__()
        self.on_step, self.steps, self.epoch = on_step, steps, 1

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1
        self.on_step(self.epoch, 0, self.steps)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_step(self.epoch, batch + 1, self.steps)


class EarlyStopping(keras.callbacks.Callback):
    """Scores the validation split with the numpy scorer after each epoch, keeps the best weights, stops on patience."""

    def __init__(
        self,
        cases,
        item_ids: list[str],
        config: TrainConfig,
        on_epoch: Callable[[dict], None] | None,
        average: WeightAverage | None = None,
        exclude_history: bool = True,
        event_types: list[str] | None = None,
        agree: Callable[[float], float] | None = None,
    ) -> None:
        super().__init__()
        self.cases, self.item_ids, self.config, self.on_epoch = cases, item_ids, config, on_epoch
        self.agree = agree  # with several workers: the chief's score, which every worker then decides on
        self.event_types = event_types
        self.average, self.exclude_history = average, exclude_history
        self.best_score, self.best_epoch, self.best_weights, self.wait = -1.0, 0, None, 0
        self.history: list[dict] = []
        self.epoch_started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train_seconds = time.perf_counter() - self.epoch_started
        scored = time.perf_counter()
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            exported = export_scorer_weights(self.model)
            weights = self.model.get_weights()
        report = scorer_report(
            Scorer(exported, self.item_ids, event_types=self.event_types),
            self.cases,
            self.config.max_len,
            exclude_history=self.exclude_history,
        )
        entry = {
            "epoch": epoch + 1,
            "loss": float((logs or {}).get("loss", float("nan"))),
            **{f"val_{name}": value for name, value in report.items()},
            "train_seconds": round(train_seconds, 3),  # the epoch's steps
            "validation_seconds": round(time.perf_counter() - scored, 3),  # scoring the validation cases
        }
        self.history.append(entry)
        if self.on_epoch is not None:
            self.on_epoch(entry)
        score = report["ndcg@10"] if self.agree is None else self.agree(report["ndcg@10"])
        if score > self.best_score:
            self.best_score, self.best_epoch, self.wait = score, epoch + 1, 0
            self.best_weights = weights
        else:
            self.wait += 1
            if self.wait >= self.config.patience:
                self.model.stop_training = True


def _fine_tune_parts(project: ProjectDir, texts: list[str]):
    from bigrec_cli.features import BertEncoder

    checkpoint, meta = extraction_checkpoint(project)
    encoder = BertEncoder(checkpoint, pooling="mean", max_length=min(meta["max_length"], FINE_TUNE_MAX_TOKENS))
    tokens = encoder.tokenize(texts)
    table = np.zeros((len(tokens) + 1, max(map(len, tokens))), dtype="int32")
    for row, token_ids in enumerate(tokens, start=1):
        table[row, : len(token_ids)] = token_ids
    return encoder.model, table


def choose_item_item(
    scorer: Scorer,
    sequences: dict,
    cases,
    max_len: int,
    exclude_history: bool = True,
    text_vectors: np.ndarray | None = None,
    negative_types: tuple[int, ...] = (),
) -> tuple[ItemItem | None, dict]:
    """Fit the item-to-item term on the training sequences; choose it and its weight on the validation cases."""
    padded, times = cases.padded(0, len(cases.histories), max_len)
    # The LSTM's user vectors once (cases × dim), in batches; each batch's logits are computed when scored.
    states = (
        np.concatenate([scorer.user_states(padded[start : start + 512]) for start in range(0, len(padded), 512)])
        if len(padded)
        else np.zeros((0, scorer.weights.projection_kernel.shape[1]), dtype="float32")
    )

    def logits(start: int, stop: int) -> np.ndarray:
        return scorer.logits_from_states(states[start:stop])

    excluded = [token_items(history) - 1 for history in cases.histories] if exclude_history else None
    train_matrix = history_matrix(sequences, scorer.num_items, negative_types)
    return fit_item_item(
        train_matrix, logits, padded, cases.targets, excluded, text_vectors, negative_types, times=times
    )


def users_share(sequences: dict[str, np.ndarray], share: float, seed: int) -> dict[str, np.ndarray]:
    """The sequences of a seeded share of the users.

    Args:
        sequences: Each user's training tokens.
        share: In (0, 1]: the share of users kept, chosen by a hash of the seed and the user id, so the same users
            whatever the order of the data; 1 keeps them all.
        seed: Another seed, other users.
    """
    if share == 1:
        return sequences
    if not 0 < share < 1:
        raise ConfigError(f"a share of users must lie in (0, 1], not {share}", hint="pass a share such as 0.4")
    limit = share * 2**32
    return {user: tokens for user, tokens in sequences.items() if zlib.crc32(f"{seed}:{user}".encode("utf-8")) < limit}


def build_index(scorer: Scorer, cases, config: TrainConfig, exclude_history: bool) -> tuple[ItemIndex | None, dict]:
    """The run's approximate index when `config.index` asks for one, and its recall@10 against exact ranking on
    validation users: the answers `recommend` gives with it against those it gives without. Its breadth (nprobe or
    efSearch) doubles until that recall reaches INDEX_TARGET_RECALL (or the kind's maximum), then tries halfway back
    (`widen`); the file keeps the narrowest that reached it."""
    kind = index_kind(config.index, scorer.num_items)
    if kind is None:
        return None, {"kind": "exact", "num_items": scorer.num_items}
    started = time.perf_counter()
    index = ItemIndex.build(scorer.output_vectors[1:], scorer.output_bias[1:], kind)
    built = time.perf_counter() - started
    recall = sampled_recall(
        scorer, index, cases, config.max_len, exclude_history, config.seed, target=INDEX_TARGET_RECALL
    )
    info = {"num_items": scorer.num_items, **recall, "build_seconds": round(built, 3)}
    if not keeps_index(config.index, recall["recall@10"]):
        # `auto` never trades answers for speed behind the user's back: exact scoring, and the reason recorded
        return None, {**info, "kind": "exact", "reason": f"index recall@10 below {INDEX_MIN_RECALL}: not kept"}
    return index, info


def keeps_index(mode: str, recall: float) -> bool:
    """Whether a built index is kept: always when asked for (`ivf`, `hnsw`); with `auto`, only if its answers agree with
    exact ranking on validation users at least INDEX_MIN_RECALL of the time (NaN: no users to tell, kept)."""
    return mode != "auto" or not recall < INDEX_MIN_RECALL


def calibrate(scorer: Scorer, cases, config: TrainConfig) -> np.ndarray:
    """(a, b) that make sigmoid(a · logit + b) a probability on validation: each held-out event against
    `config.negatives` items drawn uniformly from those the user never had, as in training."""
    rng = np.random.default_rng([config.seed, 7])
    positives, negatives = [], []
    size = batch_rows(scorer.num_items, 512)
    for start in range(0, len(cases.user_ids), size):
        histories = cases.histories[start : start + size]
        logits = scorer.logits(*cases.padded(start, start + size, config.max_len))
        for row, history in enumerate(histories):
            target = int(cases.targets[start + row]) - 1
            drawn = rng.integers(0, scorer.num_items, size=config.negatives * 2)
            drawn = drawn[~np.isin(drawn, np.append(token_items(history) - 1, target))][: config.negatives]
            positives.append(logits[row, target])
            negatives.extend(logits[row, drawn])
    return fit_calibration(np.array(positives), np.array(negatives))


def train(
    project: ProjectDir,
    config: TrainConfig,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    include_feedback: bool = False,
    warm_start_from: Path | None = None,
    promote: bool = True,
    exclude_items: set[str] | None = None,
    train_share: float = 1.0,
) -> TrainResult:
    """Train on the project's train split and promote the new run when it is complete.

    Args:
        project: The project (`preprocess` and `extract` must have run).
        config: Hyper-parameters.
        on_epoch: Called with each epoch's loss and validation metrics.
        on_step: Called after each training step with (epoch, steps done, steps per epoch), for a progress bar.
        on_phase: Called with a line naming each step after the epochs (choosing the item-to-item term, the cold
            boost, …), which on large data takes minutes.
        include_feedback: Fold the feedback store's events into the data before splitting.
        warm_start_from: A run whose weights initialise this one (`retrain`).
        promote: Point `current` at the new run when it completes.
        exclude_items: Items whose events are hidden from training and validation (cold-start experiments);
            they stay in the catalog and are scored from their text.
        train_share: The share of users whose sequences the LSTM trains on (a seeded choice by user id; `tune`
            screens configurations on large data this way). Validation, the item-to-item term and the cold boost
            still see every user (the term, the boost and the calibration are chosen on up to SELECTION_CASES of
            them).

    Returns:
        The run id, its directory, the best epoch and its validation metrics.
    """
    started = time.perf_counter()
    cluster = cluster_from_env()
    if cluster.distributed and config.fine_tune_bert:
        raise ConfigError(
            "--fine-tune-bert trains on one worker only", hint="leave out --workers / TF_CONFIG, or --fine-tune-bert"
        )
    strategy = worker_strategy(cluster)
    if not cluster.is_chief:
        on_epoch, on_step, on_phase = None, None, None  # the chief reports progress; the others train in silence

    def phase(text: str) -> None:
        if on_phase is not None:
            on_phase(text)

    project = project.pinned()
    project.require_features()
    # A run holds a copy of the item vectors plus the learned per-item arrays and the item-to-item term.
    project.require_room(3 * project.item_vectors_path.stat().st_size + RUN_ROOM_BYTES)
    features_meta = read_json(project.features_meta_path)
    item_ids, text_vectors = load_item_vectors(project.item_vectors_path)
    store = open_store(project)
    feedback_rowid = store.max_rowid() if include_feedback else 0
    policy = event_policy(project)
    data = read_training_data(
        project,
        item_ids,
        policy,
        event_weights=parse_pairs(config.event_weights, "--event-weights", number=True),
        weight_scale=config.weight_scale,
        feedback=store.events_frame(up_to_rowid=feedback_rowid) if include_feedback else None,
        exclude_items=exclude_items,
        with_seen=config.item_item,
    )
    event_types, sequences, cases = data.event_types, data.sequences, data.cases
    windows = Windows(users_share(sequences, train_share, config.seed), config.max_len, data.weights)
    if len(windows) == 0:
        raise DataError("no user has two training events", hint="give each user at least 4 events (3 are held out)")
    if not cases.user_ids:
        raise DataError(
            "the validation split is empty: no user has the 3 events needed to hold one out",
            hint="give users at least 3 events (last = test, second-to-last = validation), then preprocess again",
        )
    set_seed(config.seed)
    table = np.concatenate([np.zeros((1, text_vectors.shape[1]), "float32"), text_vectors])
    bert, token_table = None, None
    if config.fine_tune_bert:
        from bigrec_cli.features import catalog_texts

        texts = catalog_texts(project).set_index("item_id")["text"]
        bert, token_table = _fine_tune_parts(project, [str(texts.get(item, "")) for item in item_ids])
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(config, table, bert=bert, token_table=token_table, num_event_types=len(event_types))
        if warm_start_from is not None:
            previous = load_run(warm_start_from)
            warm_start(
                model,
                ScorerWeights.load(previous.directory / RUN_SCORER),
                previous.item_ids,
                item_ids,
                previous.event_types,
                event_types,
            )
    batches = WindowBatches(windows, config, num_items=len(item_ids))
    average = WeightAverage(config.weight_average) if config.weight_average > 0 else None
    stopper = EarlyStopping(
        cases,
        item_ids,
        config,
        on_epoch,
        average,
        exclude_history=policy.exclude_history,
        event_types=event_types,
        agree=None if strategy is None else lambda score: chief_value(strategy, score, cluster.is_chief),
    )
    callbacks = [stopper] if average is None else [average, stopper]
    if on_step is not None:
        callbacks.append(StepReporter(on_step, len(batches)))
    with contextlib.redirect_stdout(sys.stderr):
        if strategy is None:
            model.fit(batches, epochs=config.epochs, callbacks=callbacks, verbose=0, shuffle=False)
        else:
            try:
                model.fit(
                    worker_batches(strategy, batches),
                    epochs=config.epochs,
                    steps_per_epoch=len(batches),
                    callbacks=callbacks,
                    verbose=0,
                )
            except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError) as failure:
                lines = [line.strip() for line in failure.message.splitlines() if line.strip()]
                # TensorFlow's message opens with "Graph execution error:"; the collective's line names the cause.
                reason = next((line for line in lines if "aborted by" in line), lines[0] if lines else "")
                raise WorkerLostError(
                    f"{cluster.describe()}: another worker failed or was lost mid-run ({reason}); nothing was promoted",
                    hint="see that worker's log, then start every worker again; `current` is unchanged",
                ) from None
    if not cluster.is_chief:
        # Every worker holds the same weights; the chief alone scores, writes and promotes the run.
        metrics = {"val_ndcg@10": stopper.best_score}
        return TrainResult("", None, stopper.best_epoch, len(stopper.history), metrics, time.perf_counter() - started)
    if stopper.best_weights is not None:
        model.set_weights(stopper.best_weights)
    # an item is known from its positive training events (negative ones alone teach little)
    cold = data.train_counts == 0
    cold[0] = False
    reset_cold_items(model, cold)
    weights = export_scorer_weights(model)
    if config.id_embedding and config.id_dropout == 0:
        # Items without training interactions borrow their text neighbours' learned ID vector and bias (a model
        # trained with id-dropout has learned to rank such items from text alone, with bias 0: left as it is).
        weights = impute_items(weights, np.flatnonzero(cold), np.flatnonzero(~cold)[1:])
    text_vectors = weights.text_vectors if config.id_dropout == 0 else None
    negative_types = tuple(event_types.index(name) for name in policy.negative_events if name in event_types)
    choosing = sample_cases(cases, SELECTION_CASES, config.seed)
    item_item, item_item_choice = None, {"chosen": {"method": "none"}}
    if config.item_item:
        phase(f"choosing the item-to-item term on {len(choosing.user_ids):,} validation users")
        item_item, item_item_choice = choose_item_item(
            Scorer(weights, item_ids, event_types=event_types),
            sequences,
            choosing,
            config.max_len,
            policy.exclude_history,
            text_vectors,
            negative_types,
        )
    cold_boost = {"boost": 0.0, "reason": "no borrowed scores (id-dropout or no ID vectors)"}
    if config.id_embedding and config.id_dropout == 0:
        phase("choosing the boost of items without interactions")
        boost, cold_boost = choose_cold_boost(
            Scorer(weights, item_ids, item_item, event_types),
            choosing.histories,
            choosing.targets,
            cold,
            config.max_len,
            config.cold_boost_cost,
            seed=config.seed,
            exclude_history=policy.exclude_history,
            times=choosing.times,
        )
        weights = boost_cold_items(weights, cold, boost)
    phase("calibrating the probabilities")
    # Calibrated where S has not seen the targets (S from training events); the S kept below also saw validation
    # events, which moves logits little, and a calibration on those would be fitted on what S memorised.
    weights = replace(
        weights, calibration=calibrate(Scorer(weights, item_ids, item_item, event_types), choosing, config)
    )
    scorer = Scorer(weights, item_ids, item_item, event_types)
    phase(f"scoring the run on {len(cases.user_ids):,} validation users")
    report = scorer_report(scorer, cases, config.max_len, exclude_history=policy.exclude_history)
    metrics = {f"val_{name}": value for name, value in report.items()}
    if item_item is not None and item_item.active:
        # Chosen and scored above with S fitted on training events only; kept fitted on validation events too.
        phase("fitting the item-to-item term again on training and validation events")
        item_item = refit_item_item(item_item, history_matrix(data.seen, len(item_ids), negative_types), text_vectors)
        item_item_choice["chosen"]["kept_fitted_on"] = "train + validation events"
    kind = index_kind(config.index, len(item_ids))
    if kind is not None:
        phase(f"building the {kind} index over {len(item_ids):,} items")
    index, index_info = build_index(
        Scorer(weights, item_ids, item_item, event_types), cases, config, policy.exclude_history
    )
    phase("writing the run")
    final = write_run(
        project,
        config=config,
        weights=weights,
        item_ids=item_ids,
        history=stopper.history,
        item_item=item_item,
        event_types=event_types,
        index=index,
        metrics={
            **metrics,
            "item_item": item_item_choice["chosen"],
            "cold_boost": {key: value for key, value in cold_boost.items() if key != "tried"},
            "best_epoch": stopper.best_epoch,
            "epochs_run": len(stopper.history),
            "num_cold_items": int(cold.sum()),
            "index": index_info,
            "train_share": train_share,
            "selection_cases": len(choosing.user_ids),
        },
        manifest={
            **versions(),
            "data_fingerprint": read_json(project.data_meta_path)["fingerprint"],
            "features_model_key": features_meta["model_key"],
            "features_model": features_meta["model"],
            "feedback_rowid": feedback_rowid,
            "warm_start_from": warm_start_from.name if warm_start_from else None,
            "workers": cluster.num_workers,
            "train_seconds": round(time.perf_counter() - started, 3),
        },
    )
    if promote:
        project.promote(final)
    return TrainResult(
        final.name, final, stopper.best_epoch, len(stopper.history), metrics, time.perf_counter() - started
    )
