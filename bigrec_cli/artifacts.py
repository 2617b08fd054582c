"""Training runs: writing one, reading and verifying one, its scorer, and listing, promoting and rolling back.

A run is a folder `runs/<run_id>/` written under a hidden staging name and renamed when complete; its manifest
holds the SHA-256 of every file, checked whenever the run is loaded. No TensorFlow here.
"""

from __future__ import annotations

import calendar
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import bigrec_cli
from bigrec_cli.annindex import ItemIndex
from bigrec_cli.config import TrainConfig
from bigrec_cli.errors import ArtifactError, NotTrainedError
from bigrec_cli.feedback import open_store
from bigrec_cli.itemitem import ItemItem
from bigrec_cli.project import (
    RUN_CONFIG,
    RUN_EVENT_TYPES,
    RUN_HISTORY,
    RUN_INDEX,
    RUN_ITEM_ITEM,
    RUN_ITEM_VOCAB,
    RUN_MANIFEST,
    RUN_METRICS,
    RUN_SCORER,
    ProjectDir,
    atomic_write_json,
    file_sha256,
    read_json,
    read_json_lines,
)
from bigrec_cli.scoring import Scorer, ScorerWeights
from bigrec_cli.vectors import load_item_vectors


@dataclass(frozen=True)
class Run:
    """A completed, verified training run."""

    run_id: str
    directory: Path
    config: TrainConfig
    item_ids: list[str]
    manifest: dict
    metrics: dict
    event_types: list[str]  # position = the type's id in sequence tokens; empty for runs from before event types


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced (here, not in train.py, so that a process driving workers needs no TensorFlow)."""

    run_id: str  # "" on a worker that is not the chief: only the chief writes the run
    run_dir: Path | None
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]
    seconds: float


def write_run(
    project: ProjectDir,
    *,
    config: TrainConfig,
    weights: ScorerWeights,
    item_ids: list[str],
    history: list[dict],
    metrics: dict,
    manifest: dict,
    item_item: ItemItem | None = None,
    event_types: list[str] | None = None,
    index: ItemIndex | None = None,
) -> Path:
    """Write a complete run and return its folder; a crash leaves only a hidden staging folder, never a half run.

    Args:
        project: The project directory.
        config: The configuration the run was trained with.
        weights: The scorer's arrays.
        item_ids: Item id of each scorer row 1…N.
        history: One entry per epoch.
        metrics: Validation metrics and training counts.
        manifest: Provenance to record beside the versions and file checksums (data fingerprint, feature model, …).
        item_item: The item-to-item term the head adds (none when it did not help on validation).
        event_types: The event types the model reads, in the order of their ids.
        index: The approximate index of the run's items (large catalogs).
    """
    run_id = project.new_run_id()
    staging = project.staging_run_dir(run_id)
    staging.mkdir(parents=True)
    try:
        weights.save(staging / RUN_SCORER)
        if item_item is not None and item_item.active:
            item_item.save(staging / RUN_ITEM_ITEM)
        if index is not None:
            index.save(staging / RUN_INDEX)
        atomic_write_json(staging / RUN_CONFIG, config.to_dict())
        atomic_write_json(staging / RUN_ITEM_VOCAB, item_ids)
        atomic_write_json(staging / RUN_EVENT_TYPES, list(event_types or []))
        atomic_write_json(staging / RUN_HISTORY, history)
        atomic_write_json(staging / RUN_METRICS, metrics)
        files = {path.name: file_sha256(path) for path in sorted(staging.iterdir()) if path.is_file()}
        atomic_write_json(
            staging / RUN_MANIFEST,
            {
                "run_id": run_id,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "bigrec": bigrec_cli.__version__,
                "python": platform.python_version(),
                "numpy": np.__version__,
                **manifest,
                "files": files,
            },
        )
        final = project.run_dir(run_id)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def verify_run(run_dir: Path) -> dict:
    """Check every file of a run against the checksums in its manifest and return the manifest."""
    manifest = read_json(run_dir / RUN_MANIFEST)
    for name, expected in manifest.get("files", {}).items():
        path = run_dir / name
        if not path.exists():
            raise ArtifactError(f"{path} is missing", hint="train again or `bigrec runs promote` another run")
        if file_sha256(path) != expected:
            raise ArtifactError(
                f"{path} does not match its checksum in the manifest (damaged)",
                hint="train again or promote another run",
            )
    return manifest


def load_run(run_dir: Path) -> Run:
    """Read a run after checking every file against the checksums in its manifest."""
    manifest = verify_run(run_dir)
    return Run(
        run_id=run_dir.name,
        directory=run_dir,
        config=TrainConfig.from_dict(read_json(run_dir / RUN_CONFIG)),
        item_ids=read_json(run_dir / RUN_ITEM_VOCAB),
        manifest=manifest,
        metrics=read_json(run_dir / RUN_METRICS),
        event_types=read_json(run_dir / RUN_EVENT_TYPES) if (run_dir / RUN_EVENT_TYPES).exists() else [],
    )


def run_scorer(run: Run) -> Scorer:
    """Return the run's numpy scorer (with its item-to-item term when it has one)."""
    path = run.directory / RUN_ITEM_ITEM
    item_item = ItemItem.load(path) if path.exists() else None
    return Scorer(ScorerWeights.load(run.directory / RUN_SCORER), run.item_ids, item_item, run.event_types)


def live_scorer(project: ProjectDir, run: Run) -> Scorer:
    """The run's scorer, plus items extracted after it (e.g. new items from feedback), scored from their text.

    Only when the project's item vectors come from the same BERT as the run's; a fine-tuned run's vectors differ.
    """
    scorer = run_scorer(run)
    if project.features_meta_path.exists() and not run.config.fine_tune_bert:
        meta = read_json(project.features_meta_path)
        if meta.get("model_key") == run.manifest.get("features_model_key"):
            impute = run.config.id_embedding and run.config.id_dropout == 0  # as `train` treats its cold items
            scorer.add_items(*load_item_vectors(project.item_vectors_path), impute=impute)
    return scorer


def list_runs(project: ProjectDir) -> list[dict]:
    """Return every completed run, oldest first, with its validation NDCG@10 and whether it is current."""
    current = project.current_run_id()
    rows = []
    if not project.runs_dir.exists():
        return rows
    for path in sorted(project.runs_dir.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            manifest = verify_run(path)
            metrics = read_json(path / RUN_METRICS)
        except ArtifactError:
            rows.append({"run_id": path.name, "current": path.name == current, "status": "damaged"})
            continue
        rows.append(
            {
                "run_id": path.name,
                "current": path.name == current,
                "status": "complete",
                "created_at": manifest.get("created_at"),
                "val_ndcg@10": metrics.get("val_ndcg@10"),
                "warm_start_from": manifest.get("warm_start_from"),
            }
        )
    return rows


def _existing(project: ProjectDir, run_id: str) -> Path:
    path = project.run_dir(run_id)
    if not path.is_dir():
        raise NotTrainedError(f"no run {run_id!r} in {project.runs_dir}", hint="see `bigrec runs list`")
    return path


def show_run(project: ProjectDir, run_id: str) -> dict:
    """Return a run's manifest, config and metrics after verifying its files."""
    run = load_run(_existing(project, run_id))
    return {
        "run_id": run.run_id,
        "current": project.current_run_id() == run.run_id,
        "config": run.config.to_dict(),
        "metrics": run.metrics,
        "manifest": run.manifest,
    }


def promote_run(project: ProjectDir, run_id: str, reason: str = "manual") -> dict:
    """Verify a run and make it current."""
    run = load_run(_existing(project, run_id))
    previous = project.current_run_id()
    project.promote(run.directory, reason=reason)
    return {"run_id": run.run_id, "previous": previous}


def rollback_target(project: ProjectDir) -> str | None:
    """The run `rollback` would promote: the latest earlier promotion that is not current and still loads."""
    current = project.current_run_id()
    history = [entry["run_id"] for entry in read_json_lines(project.promotions_path) if "run_id" in entry]
    for run_id in reversed(history):
        if run_id == current:
            continue
        try:
            load_run(_existing(project, run_id))
        except (ArtifactError, NotTrainedError):
            continue
        return run_id
    return None


def prune_runs(project: ProjectDir, keep: int) -> list[str]:
    """Delete completed runs beyond the `keep` newest; never `current` nor the rollback target. Returns the ids.

    A run is first renamed to a hidden name (so it leaves listings at once), then deleted.
    """
    protected = {project.current_run_id(), rollback_target(project)}
    runs = [row["run_id"] for row in list_runs(project)]
    removed = []
    for run_id in runs[: max(len(runs) - keep, 0)]:
        if run_id in protected:
            continue
        doomed = project.runs_dir / f".pruned-{run_id}"
        project.run_dir(run_id).rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(run_id)
    return removed


def rollback(project: ProjectDir) -> dict:
    """Promote the run that was current before the present one (skipping runs that are gone or damaged)."""
    current = project.current_run_id()
    if current is None:
        raise NotTrainedError("nothing to roll back: no run is current", hint="run `bigrec train` first")
    target = rollback_target(project)
    if target is None:
        raise NotTrainedError(f"no earlier run to roll back to from {current}", hint="see `bigrec runs list`")
    return promote_run(project, target, reason=f"rollback from {current}")


def status(project: ProjectDir) -> dict:
    """Return the current run, its metrics and age, and how much feedback it has not trained on."""
    store = open_store(project)
    result: dict = {
        "project_dir": str(project.root),
        "current_run": project.current_run_id(),
        "feedback_events": store.count_events(),
    }
    if result["current_run"] is None:
        result["feedback_not_trained_on"] = result["feedback_events"]
        return result
    run = load_run(project.current_run_dir())
    created = run.manifest.get("created_at")
    age = time.time() - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    result.update(
        {
            "created_at": created,
            "age_hours": round(age / 3600, 3),
            "val_ndcg@10": run.metrics.get("val_ndcg@10"),
            "val_hr@10": run.metrics.get("val_hr@10"),
            "feedback_not_trained_on": store.count_events_after(int(run.manifest.get("feedback_rowid", 0))),
            "last_retrain": (read_json_lines(project.retrain_log_path) or [None])[-1],
        }
    )
    return result
