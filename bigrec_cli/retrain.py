"""`bigrec retrain`: the one command a crontab needs. Lock, fold feedback in, extract, warm-start, gate, promote."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bigrec_cli.artifacts import Run, live_scorer, load_run
from bigrec_cli.checkpoints import extraction_checkpoint
from bigrec_cli.config import TrainConfig, read_project_config
from bigrec_cli.data import SPLIT_TEST, SPLIT_VALID, event_policy, fold_feedback, load_events
from bigrec_cli.feedback import open_store
from bigrec_cli.project import ProjectDir, append_json_line, read_json
from bigrec_cli.protocol import holdout_cases, indexed_events, scorer_report


@dataclass(frozen=True)
class RetrainResult:
    """What one retrain decided."""

    decision: str  # "promoted", "rejected" or "skipped"
    record: dict


@contextmanager
def project_lock(project: ProjectDir) -> Iterator[bool]:
    """Hold the project's retrain lock; yields False at once when another process holds it.

    The lock is an flock on a file, so the kernel releases it when its holder dies, even by SIGKILL.
    """
    project.root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(project.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(descriptor)


def holdout_reports(project: ProjectDir, run_dir: Path, events) -> dict[str, dict[str, float]]:
    """Score a run on the validation and test splits of `events` (today's data, feedback folded in)."""
    run = load_run(run_dir)
    scorer = live_scorer(project, run)
    policy = event_policy(project)
    indexed = indexed_events(events, scorer.item_ids, run.event_types)
    max_len = run.config.max_len
    exclude = policy.exclude_history
    return {
        "valid": scorer_report(scorer, holdout_cases(indexed, SPLIT_VALID), max_len, exclude_history=exclude),
        "test": scorer_report(scorer, holdout_cases(indexed, SPLIT_TEST), max_len, exclude_history=exclude),
    }


def nothing_new(project: ProjectDir, run: Run, overrides: dict) -> str | None:
    """Say why a retrain would change nothing (no new events, items or configuration), or None if it would."""
    data = read_json(project.data_meta_path)
    if run.manifest.get("data_fingerprint") != data.get("fingerprint"):
        return None
    if open_store(project).max_rowid() > int(run.manifest.get("feedback_rowid", 0)):
        return None
    if read_json(project.features_meta_path).get("num_items") != len(run.item_ids):
        return None
    if any(getattr(run.config, key) != value for key, value in overrides.items()):
        return None
    return f"nothing new since run {run.run_id}: no new events, items or configuration"


def retrain(
    project: ProjectDir,
    *,
    epochs: int | None = None,
    tolerance: float = 0.005,
    seed: int | None = None,
    learning_rate: float | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    force: bool = False,
) -> RetrainResult:
    """Retrain on everything the project knows and promote the result only if it is not worse.

    Args:
        project: The project directory (preprocess and extract must have run once).
        epochs: Maximum epochs (default: the current run's).
        tolerance: Promote when candidate validation NDCG@10 ≥ current − tolerance.
        seed: Random seed (default: the current run's).
        learning_rate: Adam's step size (default: the current run's).
        on_epoch: Called after each epoch with its metrics.
        on_step: Called after each training step with (epoch, steps done, steps per epoch).
        on_stage: Called with a short description as each stage starts.
        on_phase: Called with each of train's steps after the epochs (default: `on_stage`).
        force: Retrain even when nothing is new since the current run.

    Returns:
        The decision and the record appended to `retrain.log.jsonl`.
    """
    say = on_stage or (lambda _: None)
    with project_lock(project) as acquired:
        if not acquired:
            return RetrainResult("skipped", {"reason": f"another retrain holds {project.lock_path}"})
        started = time.time()
        project.require_features()
        current_id = project.current_run_id()
        current_dir = project.current_run_dir() if current_id else None
        durations: dict[str, float] = {}
        overrides = {
            key: value
            for key, value in (("epochs", epochs), ("seed", seed), ("learning_rate", learning_rate))
            if value is not None
        }
        overrides = {**read_project_config(project.root).get("train", {}), **overrides}  # bigrec.toml, e.g. tuned
        if current_dir is not None and not force:
            unchanged = nothing_new(project, load_run(current_dir), overrides)
            if unchanged:
                return RetrainResult("nothing-new", {"reason": unchanged, "current_run": current_id})

        say("extracting vectors for new or changed items")
        from bigrec_cli import features

        checkpoint, meta = extraction_checkpoint(project)
        clock = time.perf_counter()
        extracted = features.extract(project, checkpoint, pooling=meta["pooling"], max_length=meta["max_length"])
        durations["extract_s"] = time.perf_counter() - clock

        say("training, warm-started from " + (current_id or "scratch"))
        from bigrec_cli.train import train

        base = load_run(current_dir).config if current_dir else TrainConfig()
        config = TrainConfig.from_dict({**base.to_dict(), **overrides, "fine_tune_bert": False})
        clock = time.perf_counter()
        result = train(
            project,
            config,
            on_epoch=on_epoch,
            on_step=on_step,
            on_phase=on_phase or on_stage,
            include_feedback=True,
            warm_start_from=current_dir,
            promote=False,
        )
        durations["train_s"] = time.perf_counter() - clock

        say("evaluating candidate and current run on the same split")
        clock = time.perf_counter()
        rowid = int(load_run(result.run_dir).manifest["feedback_rowid"])
        feedback = open_store(project).events_frame(up_to_rowid=rowid)
        events = fold_feedback(load_events(project), feedback, event_policy(project))
        candidate = holdout_reports(project, result.run_dir, events)
        incumbent = holdout_reports(project, current_dir, events) if current_dir else None
        durations["evaluate_s"] = time.perf_counter() - clock
        candidate_score = candidate["valid"]["ndcg@10"]
        current_score = incumbent["valid"]["ndcg@10"] if incumbent else None
        promoted = current_score is None or candidate_score >= current_score - tolerance
        if promoted:
            project.promote(result.run_dir, reason="retrain")
        durations["total_s"] = time.time() - started
        record = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "decision": "promoted" if promoted else "rejected",
            "candidate_run": result.run_id,
            "current_run": current_id,
            "candidate_val_ndcg@10": candidate_score,
            "current_val_ndcg@10": current_score,
            "candidate_test_ndcg@10": candidate["test"]["ndcg@10"],
            "tolerance": tolerance,
            "feedback_rowid": rowid,
            "items_encoded": extracted.num_encoded,
            "epochs_run": result.epochs_run,
            "durations": {key: round(value, 3) for key, value in durations.items()},
        }
        append_json_line(project.retrain_log_path, record)
        return RetrainResult(record["decision"], record)
