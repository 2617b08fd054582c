"""Work spread over Ray: `train --workers N` through Ray Train's TensorflowTrainer.

Ray starts on this machine for the run (the embedded default), or joins the cluster named by `--ray-address` /
`RAY_ADDRESS`. On a cluster, the project directory must be on a file system every node mounts at the same path,
and bigrec installed on every node: the workers read the data and the chief writes the run there.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from bigrec_cli.config import TrainConfig
from bigrec_cli.errors import BigrecError, DataError
from bigrec_cli.project import ProjectDir, atomic_write_json, read_json
from bigrec_cli.train import TrainResult

EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception|Exit|Interrupt)\b.*:")
RAY_HINT = "install Ray with `pip install 'ray[train,data]>=2.50'` (make install does), or run without --workers"


def _ray():
    try:
        import ray
        import ray.train  # noqa: F401
    except ImportError as error:
        raise BigrecError(f"Ray is not installed ({error})", hint=RAY_HINT) from None
    return ray


@contextmanager
def ray_runtime(address: str | None, cpus: int) -> Iterator[None]:
    """Join the Ray cluster at `address`, or start a local Ray for the duration of the block."""
    ray = _ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        yield
        return
    try:
        # Ray's own INFO and WARNING lines (placement, its state API) drown the workers' progress: errors only.
        quiet = ray.LoggingConfig(log_level="ERROR")
        # Ray Train also copies every print of a worker into its log, which the driver then shows a second time.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        if address:
            ray.init(address=address, logging_config=quiet)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, logging_config=quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise DataError(
            f"cannot start or reach Ray{f' at {address}' if address else ''}: {error}",
            hint="check --ray-address / RAY_ADDRESS (ray://host:10001 or host:6379), or leave it out to run locally",
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _train_worker(spec: dict) -> None:
    """One Ray Train worker: `TF_CONFIG` is set by TensorflowTrainer, so `train` joins its cluster."""
    import ray.train

    from bigrec_cli.train import train

    def on_epoch(entry: dict) -> None:
        line = f"epoch {entry['epoch']}: loss {entry['loss']:.4f}, val ndcg@10 {entry['val_ndcg@10']:.4f}"
        print(line, file=sys.stderr, flush=True)

    result = train(
        ProjectDir(Path(spec["project"]), spec["data_version"]), TrainConfig(**spec["config"]), on_epoch=on_epoch
    )
    if result.run_id:  # the chief: tell the driver which run it wrote (Ray's reported metrics come from any rank)
        summary = {
            "run_id": result.run_id,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds": result.seconds,
            "metrics": {name: value for name, value in result.metrics.items() if isinstance(value, float)},
        }
        atomic_write_json(Path(spec["result_file"]), summary)
    ray.train.report({"epochs_run": result.epochs_run})


def train_on_ray(project: ProjectDir, config: TrainConfig, workers: int, address: str | None = None) -> TrainResult:
    """Train with `workers` MultiWorkerMirroredStrategy workers started by Ray; the chief writes and promotes.

    A worker that fails fails the whole run (no retries): nothing is promoted and `current` stays as it was.
    """
    ray = _ray()
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    pinned = project.pinned()
    storage = Path(tempfile.mkdtemp(prefix=".ray-", dir=project.root))
    spec = {
        "project": str(project.root.resolve()),
        "data_version": pinned.data_version,
        "config": asdict(config),
        "result_file": str(storage.resolve() / "chief.json"),
    }
    try:
        with ray_runtime(address, cpus=max(workers, os.cpu_count() or 1)):
            trainer = TensorflowTrainer(
                _train_worker,
                train_loop_config=spec,
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
                run_config=RunConfig(
                    name="bigrec-train", storage_path=str(storage), failure_config=FailureConfig(max_failures=0)
                ),
            )
            try:
                result = trainer.fit()
            except ray.exceptions.RayError as error:
                raise _failed(error) from None
            except Exception as error:  # Ray Train wraps a worker's failure in its own error types
                if isinstance(error, BigrecError):
                    raise
                raise _failed(error) from None
            if getattr(result, "error", None) is not None:
                raise _failed(result.error)
        try:
            chief = read_json(Path(spec["result_file"]))
        except FileNotFoundError:
            raise BigrecError(
                "the Ray workers finished but the chief wrote no run", hint="see the workers' log above"
            ) from None
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    return TrainResult(
        run_id=chief["run_id"],
        run_dir=project.runs_dir / chief["run_id"],
        best_epoch=int(chief["best_epoch"]),
        epochs_run=int(chief["epochs_run"]),
        metrics=chief["metrics"],
        seconds=float(chief["seconds"]),
    )


def _failed(error: BaseException) -> BigrecError:
    # Ray's message holds the workers' tracebacks: their last exception line says what went wrong.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if EXCEPTION_LINE.match(line)]
    cause = causes[-1] if causes else (lines[0] if lines else error.__class__.__name__)
    return BigrecError(
        f"training on Ray failed, nothing was promoted ({cause[:300]})",
        hint="see the workers' log above; `bigrec status` shows the run still in use",
    )
