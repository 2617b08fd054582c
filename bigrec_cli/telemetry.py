"""What `bigrec serve` tells its operator: Prometheus metrics at GET /metrics and an optional JSON access log.

Plain Python over prometheus_client: no TensorFlow, no model code. Each app keeps its metrics on its own
`CollectorRegistry`, so several apps in one process (tests) do not share counts.

With `serve --workers N` every worker process counts on its own. `serve.run` then points `PROMETHEUS_MULTIPROC_DIR`
at a fresh folder before the workers start; prometheus_client, imported in each worker after that, keeps every
value in a memory-mapped file there, and /metrics, whichever worker answers it, adds up the files of all of them
(`MultiProcessCollector`). Gauges say how: a run's `bigrec_model_info` is 1 while any worker serves it, the load
time is the latest of the workers', the index recall the one set last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from bigrec_cli.errors import ConfigError

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable: set, it counts in files there
# Seconds: a warm /recommend answers in 1-50 ms; the top buckets catch a cold start or a store wait.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"  # the endpoint of a path no route serves, and the method of an unusual verb: labels stay bounded
LOG = logging.getLogger("bigrec.serve")


def iso_time_ms(seconds: float) -> str:
    """ISO-8601 in UTC to the millisecond: `2025-01-31T12:00:00.123Z`."""
    whole = math.floor(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


class AccessLog:
    """One JSON object a line, appended to a file (`O_APPEND`, one write a line) or written to stderr (`-`).

    Several worker processes may append to the same file: each line goes out in a single write(2) to a file opened
    with O_APPEND, so lines never interleave. A failing write (disk full) is logged once and never fails a request.

    Raises ConfigError when the file cannot be opened for appending.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self._fd: int | None = None
        self._warned = False
        if target != "-":
            try:
                self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError as error:
                raise ConfigError(
                    f"cannot append to --access-log {target}: {error.strerror}",
                    hint="pass a writable file, or - for stderr",
                ) from None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            if self._fd is None:
                sys.stderr.write(line)
                sys.stderr.flush()
            else:
                os.write(self._fd, line.encode())
        except (OSError, ValueError) as error:  # ValueError: a closed stderr
            if not self._warned:
                self._warned = True
                LOG.warning("access log %s: %s (further failures are not reported)", self.target, error)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _ServedRunsOnly:
    """Multi-process collection, less the runs no worker serves any more.

    A label cannot be removed from the shared files (prometheus_client keeps every value it wrote), so a worker
    sets the run it stopped serving to 0; leaving those out gives the single-process answer: only served runs.
    """

    def __init__(self, path: str) -> None:
        self.collector = MultiProcessCollector(None, path)

    def collect(self):
        for metric in self.collector.collect():
            if metric.name == "bigrec_model_info":
                metric.samples = [sample for sample in metric.samples if sample.value]
            yield metric


class Telemetry:
    """The server's metrics, and its access log when one is asked for.

    Args:
        access_log: A file to append JSON lines to, `-` for stderr, or None for no access log.
    """

    def __init__(self, access_log: str | None = None) -> None:
        # prometheus_client chose files or memory when it was imported: go by its choice, not by the variable now.
        in_files = getattr(values.ValueClass, "_multiprocess", False)
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR) if in_files else None
        self.registry = CollectorRegistry()
        metric = {"registry": self.registry}
        self.requests = Counter(
            "bigrec_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["endpoint", "method", "status"],
            **metric,
        )
        self.latency = Histogram(
            "bigrec_http_request_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            **metric,
        )
        self.model_info = Gauge(
            "bigrec_model_info", "1 for the run being served.", ["run_id"], multiprocess_mode="livemax", **metric
        )
        self.model_loaded = Gauge(
            "bigrec_model_loaded_timestamp_seconds",
            "When the served model was loaded (Unix seconds).",
            multiprocess_mode="livemax",
            **metric,
        )
        self.index_recall = Gauge(
            "bigrec_index_recall_at_10",
            "Recall@10 of the served run's approximate index against exact ranking; NaN without one.",
            multiprocess_mode="livemostrecent",
            **metric,
        )
        self.feedback_events = Counter(
            "bigrec_feedback_events",
            "Events POSTed to /feedback: accepted (newly stored) or rejected (invalid).",
            ["outcome"],
            **metric,
        )
        self.reloads = Counter(
            "bigrec_reloads", "Attempts to load a newly promoted run or new item vectors.", ["outcome"], **metric
        )
        for outcome in ("accepted", "rejected"):
            self.feedback_events.labels(outcome=outcome)
        for outcome in ("ok", "error"):
            self.reloads.labels(outcome=outcome)
        if self.multiprocess_dir is None:
            self.exposed = self.registry
        else:
            self.exposed = CollectorRegistry()
            self.exposed.register(_ServedRunsOnly(self.multiprocess_dir))
        self.access_log = AccessLog(access_log) if access_log else None
        self._served: str | None = None

    def request(self, *, method: str, endpoint: str | None, status: int, started: float, seconds: float, run_id: str):
        """Count one answered request (and log it): `endpoint` is the route template, None where no route matched."""
        endpoint = endpoint or OTHER
        method = method if method in METHODS else OTHER
        self.requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint, method=method).observe(seconds)
        if self.access_log is not None:
            record = {
                "time": iso_time_ms(started),
                "method": method,
                "endpoint": endpoint,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "run_id": run_id,
            }
            self.access_log.write(record)

    def model_served(self, run_id: str, loaded_at: float, index_recall: Any = None) -> None:
        """Say which run is served now, since when, and its index's recall@10 (NaN when it has none)."""
        previous, self._served = self._served, run_id
        if previous is not None and previous != run_id:
            if self.multiprocess_dir is None:
                self.model_info.remove(previous)
            else:
                self.model_info.labels(run_id=previous).set(0)
        self.model_info.labels(run_id=run_id).set(1)
        self.model_loaded.set(loaded_at)
        recall = index_recall if isinstance(index_recall, (int, float)) else math.nan
        self.index_recall.set(recall)

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels(outcome="ok" if ok else "error").inc()

    def feedback(self, num_accepted: int, num_rejected: int) -> None:
        self.feedback_events.labels(outcome="accepted").inc(num_accepted)
        self.feedback_events.labels(outcome="rejected").inc(num_rejected)

    def close(self) -> None:
        """At a worker's shutdown: its live gauges leave the shared files; the access log closes."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)
        if self.access_log is not None:
            self.access_log.close()
