"""Inspecting and switching runs by hand: list, show, promote, rollback, and the project's status. No TensorFlow."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

from bigrec_cli import project as names
from bigrec_cli.errors import ArtifactError, NotTrainedError
from bigrec_cli.feedback import FeedbackStore
from bigrec_cli.project import ProjectDir, read_json, read_json_lines
from bigrec_cli.recommend import load_run


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
            manifest = read_json(path / names.RUN_MANIFEST)
            metrics = read_json(path / names.RUN_METRICS)
        except ArtifactError:
            rows.append({"run_id": path.name, "current": path.name == current, "status": "damaged"})
            continue
        rows.append({"run_id": path.name, "current": path.name == current, "status": "complete",
                     "created_at": manifest.get("created_at"), "val_ndcg@10": metrics.get("val_ndcg@10"),
                     "warm_start_from": manifest.get("warm_start_from")})  # fmt: skip
    return rows


def show_run(project: ProjectDir, run_id: str) -> dict:
    """Return a run's manifest, config and metrics after verifying its files."""
    run = load_run(_existing(project, run_id))
    return {"run_id": run.run_id, "current": project.current_run_id() == run.run_id, "config": run.config,
            "metrics": run.metrics, "manifest": run.manifest}  # fmt: skip


def _existing(project: ProjectDir, run_id: str) -> Path:
    path = project.run_dir(run_id)
    if not path.is_dir():
        raise NotTrainedError(f"no run {run_id!r} in {project.runs_dir}", hint="see `bigrec runs list`")
    return path


def promote_run(project: ProjectDir, run_id: str, reason: str = "manual") -> dict:
    """Verify a run and make it current."""
    run = load_run(_existing(project, run_id))
    previous = project.current_run_id()
    project.promote(run.directory, reason=reason)
    return {"run_id": run.run_id, "previous": previous}


def rollback(project: ProjectDir) -> dict:
    """Promote the run that was current before the present one (skipping runs that are gone or damaged)."""
    current = project.current_run_id()
    if current is None:
        raise NotTrainedError("nothing to roll back: no run is current", hint="run `bigrec train` first")
    history = [entry["run_id"] for entry in read_json_lines(project.promotions_path) if "run_id" in entry]
    while history and history[-1] == current:
        history.pop()
    for run_id in reversed(history):
        if run_id == current:
            continue
        try:
            return promote_run(project, run_id, reason=f"rollback from {current}")
        except (ArtifactError, NotTrainedError):
            continue
    raise NotTrainedError(f"no earlier run to roll back to from {current}", hint="see `bigrec runs list`")


def status(project: ProjectDir) -> dict:
    """Return the current run, its metrics and age, and how much feedback it has not trained on."""
    store = FeedbackStore(project.feedback_db)
    result: dict = {"project_dir": str(project.root), "current_run": project.current_run_id(),
                    "feedback_events": store.count_events()}  # fmt: skip
    if result["current_run"] is None:
        result["feedback_not_trained_on"] = result["feedback_events"]
        return result
    run = load_run(project.current_run_dir())
    created = run.manifest.get("created_at")
    age = time.time() - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    result.update({
        "created_at": created,
        "age_hours": round(age / 3600, 3),
        "val_ndcg@10": run.metrics.get("val_ndcg@10"),
        "val_hr@10": run.metrics.get("val_hr@10"),
        "feedback_not_trained_on": store.count_events_after(int(run.manifest.get("feedback_rowid", 0))),
        "last_retrain": (read_json_lines(project.retrain_log_path) or [None])[-1],
    })  # fmt: skip
    return result
