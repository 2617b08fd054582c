"""Work spread over Ray: `train --workers N` through Ray Train's TensorflowTrainer, `extract --workers N` through
Ray Data (an actor pool, each actor loading BERT once).

Ray starts on this machine for the run (the embedded default), or joins the cluster named by `--ray-address` /
`RAY_ADDRESS`. On a cluster, the project directory must be on a file system every node mounts at the same path,
and bigrec installed on every node: the workers read the data and the chief writes the run there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from bigrec_cli.artifacts import TrainResult
from bigrec_cli.config import TrainConfig
from bigrec_cli.errors import BigrecError, ConfigError, DataError
from bigrec_cli.project import ProjectDir, atomic_write_json, read_json

if TYPE_CHECKING:  # the driver of Ray's workers loads no TensorFlow: only the workers do
    from bigrec_cli.checkpoints import BertCheckpoint
    from bigrec_cli.features import Encode, ProgressCallback


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
        else:  # "local": a Ray of its own, even where a `ray start` cluster runs on this machine
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_config=quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        ray.shutdown()  # whatever a failed start left running
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
    if config.fine_tune_bert:
        raise ConfigError("--fine-tune-bert trains on one worker only", hint="leave out --workers or --fine-tune-bert")
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


def _cause(error: BaseException) -> str:
    """Ray's message holds the workers' tracebacks: their last exception line says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (causes[-1] if causes else (lines[0] if lines else error.__class__.__name__))[:300]


def _failed(error: BaseException) -> BigrecError:
    return BigrecError(
        f"training on Ray failed ({_cause(error)})",
        hint="see the workers' log above; `bigrec status` shows the run in use (a run is promoted only when complete)",
    )


RAY_BLOCK_TEXTS = 1024  # texts per Ray Data batch: each actor groups a batch's texts by length for BERT


class _EncoderActor:
    """One Ray Data actor: loads BERT once, then encodes batch after batch."""

    def __init__(self, checkpoint: dict, pooling: str, max_length: int, batch_size: int) -> None:
        from bigrec_cli.checkpoints import BertCheckpoint
        from bigrec_cli.features import BertEncoder

        fields = {name: Path(value) if name != "name" else value for name, value in checkpoint.items()}
        self.encoder = BertEncoder(BertCheckpoint(**fields), pooling=pooling, max_length=max_length)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        texts = [str(text) for text in batch["text"]]
        return {"row": batch["row"], "vector": self.encoder.encode(texts, batch_size=self.batch_size)}


def ray_encoder(
    checkpoint: BertCheckpoint, pooling: str, max_length: int, batch_size: int, workers: int, address: str | None
) -> Encode:
    """An `extract` encoder that spreads the texts over `workers` Ray Data actors (locally or at `address`).

    On a cluster the checkpoint's files must be at the same path on every node (a shared file system).
    """
    _ray()
    # absolute paths: the actors may run in another working directory, or on another node
    fields = {
        name: str(Path(value).resolve()) if name != "name" else value for name, value in checkpoint.__dict__.items()
    }

    def encode(texts: list[str], on_progress: ProgressCallback | None) -> np.ndarray:
        import ray.data

        dim = int(checkpoint.config()["hidden_size"])
        vectors = np.zeros((len(texts), dim), dtype="float32")
        # Texts of similar length share a Ray batch, so each actor's BERT batches carry little padding.
        order = sorted(range(len(texts)), key=lambda row: len(texts[row]))
        # At least 4 batches per actor, so that every actor gets work and the progress bar moves.
        per_batch = max(1, min(RAY_BLOCK_TEXTS, -(-len(texts) // (4 * workers))))
        with ray_runtime(address, cpus=max(workers, os.cpu_count() or 1)):
            # Ray Data logs its own progress on stderr; bigrec's bar counts the encoded texts.
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            rows = [{"row": row, "text": texts[row]} for row in order]
            dataset = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // per_batch)).map_batches(
                _EncoderActor,
                fn_constructor_kwargs={
                    "checkpoint": fields,
                    "pooling": pooling,
                    "max_length": max_length,
                    "batch_size": batch_size,
                },
                compute=ray.data.ActorPoolStrategy(size=workers),
                batch_size=per_batch,
                batch_format="numpy",
                num_cpus=1,
            )
            try:
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    vectors[batch["row"]] = batch["vector"]
                    if on_progress is not None:
                        on_progress(len(batch["row"]))
            except ray.exceptions.RayError as error:
                raise BigrecError(
                    f"encoding on Ray failed, nothing was written ({_cause(error)})",
                    hint="see the workers' log above",
                ) from None
        return vectors

    return encode
