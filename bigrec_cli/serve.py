"""`bigrec serve`: a warm HTTP server over the promoted run and the live feedback store.

`create_app` builds the app (tested in-process); `run` binds it with uvicorn. The model and item matrix stay in
memory; a watcher thread loads a newly promoted run (or new item vectors) in the background and swaps it in with
one assignment, so requests in flight finish on the old one and none fails.
"""

from __future__ import annotations

import gc
import hmac
import json
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

import bigrec_cli
from bigrec_cli.feedback import IngestSummary, Row, ingest, rows_from_objects
from bigrec_cli.project import ProjectDir
from bigrec_cli.recommend import MAX_K, WARM_USERS, Recommender

MAX_BODY_BYTES = 1 << 20
MAX_EVENTS_PER_REQUEST = 10_000
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def project_generation(project: ProjectDir) -> Callable[[], Hashable]:
    """What the served model depends on: the promoted run and the item vectors' write time."""

    def generation() -> Hashable:
        try:
            features_time = project.features_meta_path.stat().st_mtime
        except FileNotFoundError:
            features_time = 0.0
        return project.current_run_id(), features_time

    return generation


@dataclass
class ServingState:
    """The recommender in use and how it was loaded. Replaced whole, never mutated, on reload."""

    recommender: Recommender
    generation: Hashable
    loaded_at: float = field(default_factory=time.time)


class ModelWatcher:
    """Polls what the model depends on and swaps in a freshly loaded recommender when it changes.

    Args:
        load: Builds a ready recommender (the promoted run, its users warmed).
        generation: Returns a value that changes whenever `load` would give a different recommender.
        poll_seconds: How often to look.
    """

    def __init__(
        self, load: Callable[[], Recommender], generation: Callable[[], Hashable], poll_seconds: float = 1.0
    ) -> None:
        self.load = load
        self.generation = generation
        self.poll_seconds = poll_seconds
        first = generation()
        self.state = ServingState(load(), first)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Reload if the generation changed; return True when a new model was swapped in."""
        generation = self.generation()
        if generation == self.state.generation:
            return False
        try:
            fresh = self.load()
        except Exception as error:  # a damaged or half-promoted run must not take the server down
            self.last_error = f"{type(error).__name__}: {error}"
            return False
        self.state = ServingState(fresh, generation)
        self.last_error = None
        gc.collect()  # the previous model's objects, then keep the new one out of the collector's way
        gc.freeze()
        return True

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.poll_seconds):
                self.check()

        self._thread = threading.Thread(target=loop, name="bigrec-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def create_app(
    *,
    load: Callable[[], Recommender],
    generation: Callable[[], Hashable],
    ingest: Callable[[list[Row]], IngestSummary],
    token: str | None = None,
    poll_seconds: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    watch: bool = True,
) -> FastAPI:
    """Build the ASGI app from what it needs; `project_app` wires these to a project directory.

    Args:
        load: Returns a ready recommender (`recommend(user, k, exclude_seen)`, `run.run_id`, `scorer.num_items`).
        generation: Returns a value that changes when `load` would return a different recommender.
        ingest: Stores decoded feedback rows all or nothing and returns what it did.
        token: When set, every endpoint but /health needs `Authorization: Bearer <token>`.
        poll_seconds: How often to look for a newly promoted run.
        max_body_bytes: Largest accepted request body.
        watch: Start the background watcher (tests may call `app.state.watcher.check()` instead).
    """
    watcher = ModelWatcher(load, generation, poll_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if watch:
            watcher.start()
        yield
        watcher.stop()

    app = FastAPI(
        title="bigrec",
        version=bigrec_cli.__version__,
        lifespan=lifespan,
        description="Real-time recommendations from a BERT → LSTM → sigmoid model.",
    )
    app.state.watcher = watcher

    def authorize(authorization: str = Header("", include_in_schema=False)) -> None:
        supplied = authorization[7:] if authorization.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(supplied.encode(), str(token).encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorize)] if token else []

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and the run being served."""
        state = watcher.state
        return {
            "status": "ok",
            "run_id": state.recommender.run.run_id,
            "loaded_at": state.loaded_at,
            "num_items": state.recommender.scorer.num_items,
            "reload_error": watcher.last_error,
        }

    # `async def`: the work is a few milliseconds of CPU, cheaper run inline than handed to a thread pool.
    @app.get("/recommend", dependencies=guarded)
    async def recommend(
        user: str = Query(min_length=1, max_length=256), k: int = Query(10, ge=1, le=MAX_K), include_seen: bool = False
    ) -> Response:
        """Top-k items for the user's latest behaviour, the same answer as `bigrec recommend --json`."""
        answer = watcher.state.recommender.recommend(user, k=k, exclude_seen=not include_seen)
        return Response(json.dumps(answer), media_type="application/json")

    @app.post("/feedback", dependencies=guarded)
    async def feedback(request: Request) -> JSONResponse:
        """Store events (a JSON list, or {"events": [...]}) with the validation of `bigrec ingest-feedback`.

        All or nothing: if any event is invalid, none is stored and the response lists the reasons (422).
        """
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise HTTPException(413, f"body larger than {max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body_bytes:
                raise HTTPException(413, f"body larger than {max_body_bytes} bytes")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HTTPException(400, f"body is not JSON: {error}") from None
        events = payload.get("events") if isinstance(payload, dict) else payload
        if not isinstance(events, list) or not events:
            raise HTTPException(400, 'send a non-empty JSON list of events, or {"events": [...]}')
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_EVENTS_PER_REQUEST} events per request")
        summary = ingest(rows_from_objects(events))
        result = {key: value for key, value in summary.__dict__.items() if key != "rejects_path"}
        if summary.num_rejected:
            result["detail"] = "no event stored: fix the rejected events and resend"
            return JSONResponse(result, status_code=422)
        return JSONResponse(result)

    return app


def project_app(
    project: ProjectDir, *, token: str | None = None, warm_users: int = WARM_USERS, **options: Any
) -> FastAPI:
    """The app over a project: its promoted run, warmed for the `warm_users` most recent users, and its store."""

    def load() -> Recommender:
        recommender = Recommender(project)
        if warm_users:
            recommender.warm(warm_users)
        return recommender

    def store(rows: list[Row]) -> IngestSummary:
        return ingest(project, rows, source="http", all_or_nothing=True)

    return create_app(load=load, generation=project_generation(project), ingest=store, token=token, **options)


def app_from_environment() -> FastAPI:
    """App factory for uvicorn worker processes: the project, token and warm-up size come from the environment."""
    app = project_app(
        ProjectDir(Path(os.environ["BIGREC_PROJECT_DIR"])),
        token=os.environ.get("BIGREC_TOKEN") or None,
        warm_users=int(os.environ.get("BIGREC_WARM_USERS", WARM_USERS)),
    )
    tune_process_for_serving()
    return app


def tune_process_for_serving() -> None:
    """Settings for a process that answers many small requests, each a few milliseconds of numpy.

    - One BLAS thread: a request multiplies a (1, dim) user vector by the item matrix, too little work to share
      out, and a pool of spinning BLAS threads competes with the event loop for the cores (on 2 cores it doubled
      the time of the item-matrix product under load; see bench/NOTES.md).
    - `gc.freeze()` once the model is loaded: the long-lived objects move out of the collector's sight, so a full
      collection no longer walks the catalog's dicts and lists in the middle of a request.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    gc.collect()
    gc.freeze()


def run(
    project: ProjectDir,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    workers: int = 1,
    warm_users: int = WARM_USERS,
) -> None:
    """Load the project and serve it until interrupted; `workers` > 1 runs that many processes on one port."""
    import uvicorn

    if workers == 1:
        app = project_app(project, token=token, warm_users=warm_users)
        tune_process_for_serving()
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    os.environ["BIGREC_PROJECT_DIR"] = str(project.root)
    os.environ["BIGREC_WARM_USERS"] = str(warm_users)
    if token:
        os.environ["BIGREC_TOKEN"] = token
    uvicorn.run(
        "bigrec_cli.serve:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
