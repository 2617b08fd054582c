"""Which worker of a training cluster this process is, from `TF_CONFIG` (set by Ray Train, Kubeflow's TFJob,
Vertex AI, SageMaker or by hand). Plain Python: reading it never loads TensorFlow."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from bigrec_cli.errors import DataError

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker run; one worker alone when `TF_CONFIG` names no cluster."""

    num_workers: int = 1
    index: int = 0
    task_type: str = "worker"
    has_chief: bool = False  # the cluster has a `chief` task besides its workers

    @property
    def distributed(self) -> bool:
        return self.num_workers > 1

    @property
    def is_chief(self) -> bool:
        """The chief writes and promotes the run: the `chief` task when the cluster has one, else worker 0."""
        return self.task_type == "chief" or (self.index == 0 and not self.has_chief)

    def describe(self) -> str:
        return f"{self.task_type} {self.index} of {self.num_workers} workers"


def cluster_from_env(environ: dict[str, str] | None = None) -> Cluster:
    """Parse `TF_CONFIG`; a missing or one-task `TF_CONFIG` is a single worker.

    Raises:
        DataError: `TF_CONFIG` is not the JSON a TensorFlow launcher writes.
    """
    text = (environ if environ is not None else os.environ).get(TF_CONFIG, "").strip()
    if not text:
        return Cluster()
    hint = (
        'TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", …]}, "task": {"type": "worker", "index": 0}}'
    )
    try:
        spec = json.loads(text)
        tasks, task = spec["cluster"], spec["task"]
        task_type, index = task["type"], task["index"]
        if not isinstance(tasks, dict) or not all(
            isinstance(addresses, list) and all(isinstance(address, str) for address in addresses)
            for addresses in tasks.values()
        ):
            raise TypeError("cluster must map each task type to a list of host:port strings")
        if not isinstance(task_type, str) or isinstance(index, bool) or not isinstance(index, int):
            raise TypeError("task must name a type (a string) and an index (an integer)")
        sizes = {name: len(addresses) for name, addresses in tasks.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"TF_CONFIG cannot be read ({error.__class__.__name__}: {error})", hint=hint) from None
    if task_type not in ("chief", "worker"):
        raise DataError(
            f"TF_CONFIG names task type {task_type!r}, which MultiWorkerMirroredStrategy does not run",
            hint="bigrec trains with chief and worker tasks only (no parameter servers or evaluators)",
        )
    if not 0 <= index < sizes.get(task_type, 0):
        raise DataError(f"TF_CONFIG's task {task_type} {index} is not in its cluster {sizes}", hint=hint)
    workers = sizes.get("chief", 0) + sizes.get("worker", 0)
    return Cluster(num_workers=workers, index=index, task_type=task_type, has_chief=sizes.get("chief", 0) > 0)
