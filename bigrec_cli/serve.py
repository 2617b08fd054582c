"""`bigrec serve`: a warm HTTP server over the promoted run and the live feedback store.

`create_app` builds the app (tested in-process); `run` binds it with uvicorn. The model and item matrix stay in
memory; a watcher thread loads a newly promoted run (or new item vectors) in the background and swaps it in with
one assignment, so requests in flight finish on the old one and none fails.
"""

from __future__ import annotations

import ctypes
import gc
import hmac
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

import bigrec_cli
from bigrec_cli.errors import CannotListenError, ConfigError, StoreBusyError
from bigrec_cli.feedback import IngestSummary, Row, ingest, open_store, rows_from_objects
from bigrec_cli.project import ProjectDir
from bigrec_cli.recommend import MAX_K, WARM_USERS, Recommender
from bigrec_cli.telemetry import MULTIPROCESS_DIR, AccessLog, Telemetry

MAX_BODY_BYTES = 1 << 20
MAX_EVENTS_PER_REQUEST = 10_000
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOG = logging.getLogger("bigrec.serve")
RETIRE_SECONDS = 5.0  # how long a swapped-out model stays open for requests that started on it
HTTP_BUSY_TIMEOUT = 2.0  # seconds a feedback request waits for another writer before answering 503


def project_generation(project: ProjectDir) -> Callable[[], Hashable]:
    """What the served model depends on: the promoted run, and when the item vectors and the data were written."""

    def generation() -> Hashable:
        times = []
        for path in (project.features_meta_path, project.data_meta_path):
            try:
                times.append(path.stat().st_mtime_ns)
            except FileNotFoundError:
                times.append(0)
        return project.current_run_id(), *times

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
        telemetry: Told which run is served, and counts each reload attempt (ok, or error: a failing run is tried
            again at every poll while `current` names it).
    """

    def __init__(
        self,
        load: Callable[[], Recommender],
        generation: Callable[[], Hashable],
        poll_seconds: float = 1.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.load = load
        self.generation = generation
        self.poll_seconds = poll_seconds
        self.retire_seconds = RETIRE_SECONDS
        self.telemetry = telemetry
        first = generation()
        self.state = ServingState(load(), first)
        self.last_error: str | None = None
        self._report(self.state)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Reload if the generation changed; return True when a new model was swapped in."""
        generation = self.generation()
        if generation == self.state.generation:
            self.last_error = None  # whatever failed to load is no longer what the project points at
            return False
        try:
            fresh = self.load()
        except Exception as error:  # a damaged or half-promoted run must not take the server down
            self.last_error = f"{type(error).__name__}: {error}"
            LOG.warning("not reloading: %s", self.last_error)
            if self.telemetry is not None:
                self.telemetry.reloaded(ok=False)
            return False
        retired, self.state = self.state, ServingState(fresh, generation)
        self.last_error = None
        if self.telemetry is not None:
            self.telemetry.reloaded(ok=True)
        self._report(self.state)
        # Requests still running on the old model finish within milliseconds; it is closed and released after
        # that, explicitly (see retire). The new model moves out of the collector's sight now.
        closer = threading.Timer(self.retire_seconds, retire, args=([retired],))
        closer.daemon = True
        closer.start()
        del retired
        gc.freeze()
        return True

    def _report(self, state: ServingState) -> None:
        if self.telemetry is not None:
            recommender = state.recommender
            self.telemetry.model_served(
                recommender.run.run_id, state.loaded_at, getattr(recommender, "index_recall", None)
            )

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.poll_seconds):
                self.check()

        self._thread = threading.Thread(target=loop, name="bigrec-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def retire(holder: list[ServingState]) -> None:
    """Close a swapped-out model and give its memory back to the system.

    Its feedback store's connections are closed explicitly: the model was frozen out of the cycle collector's
    sight when it loaded, so they would otherwise stay open. Then the last reference goes, the collector runs over
    unfrozen objects (the model's cycles included) and the new model is frozen again. Last, glibc's malloc_trim
    hands the pages the old model freed back to the system instead of keeping them for reuse.
    """
    state = holder.pop()
    getattr(state.recommender, "close", lambda: None)()
    del state
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_free_memory()


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc's malloc_trim; elsewhere nothing to do)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: musl and macOS lack it, Windows has no CDLL(None)
        pass


class Reason(BaseModel):
    item_id: str
    title: str
    contribution: float = Field(description="How much the item's logit drops when this history item is left out.")


class RecommendedItem(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float | None = Field(description="Engagement probability; null for popular items given at cold start.")
    because: list[Reason] | None = Field(None, description="With explain=true: the history items that raised it most.")


class RecommendAnswer(BaseModel):
    user_id: str
    cold_start: bool = Field(description="True when the user has no known behaviour: the items are the most popular.")
    items: list[RecommendedItem]


class FeedbackEvent(BaseModel):
    """One event, validated as `bigrec ingest-feedback` validates a row."""

    user_id: str = Field(max_length=256)
    item_id: str = Field(max_length=256)
    timestamp: float | str | None = Field(None, description="Unix seconds or ISO-8601; default: now.")
    event: str | None = Field(
        None,
        description="Event type, e.g. click, cart, purchase, or a negative one (cancel, return, dislike: read by the "
        "model, never recommended right back); the project's --event-map applies. Default: interaction.",
    )
    weight: float | None = Field(
        None,
        description="A finite number, e.g. a quantity; scales the event in training with --weight-scale. Default 1.",
    )
    rating: float | None = Field(None, description="With the project's --min-rating, a lower rating is a dislike.")
    event_id: str | None = Field(None, description="Idempotency key; default: a hash of the row.")
    title: str | None = Field(None, description="Required with text for an item not in the catalog.")
    text: str | None = None


class IngestResult(BaseModel):
    num_rows: int
    num_accepted: int
    num_duplicates: int
    num_rejected: int
    num_new_items: int
    rejections: list[dict[str, Any]]
    detail: str | None = None


def feedback_body_schema() -> dict[str, Any]:
    """The OpenAPI request body of POST /feedback: a list of events, or {"events": [...]}."""
    event = FeedbackEvent.model_json_schema()
    events = {"type": "array", "items": event, "minItems": 1, "maxItems": MAX_EVENTS_PER_REQUEST}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [events, {"type": "object", "properties": {"events": events}, "required": ["events"]}]
                },
                "example": [{"user_id": "42", "item_id": "1337", "event": "click"}],
            }
        },
    }


def host_name(host: str) -> str:
    """The name part of a Host header (`[::1]:8000` → `::1`, `example.org:80` → `example.org`)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(name: str, allowed: set[str]) -> bool:
    """A Host is answered when listed, or when it is an IP address (DNS rebinding needs a domain name)."""
    if name in allowed or "*" in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


PATH = re.compile(r"(?:/[^/\s:'\"()]+)+/?")


def without_paths(message: str | None) -> str | None:
    """A message for /health, with file paths left out (they stay in the server's log)."""
    return None if message is None else PATH.sub("<path>", message)


def iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Measured:
    """ASGI middleware, outermost: times every HTTP request to its last byte and tells the telemetry.

    The endpoint is the template of the route that matched (`scope["route"]`, set by the router), never the raw
    path, so the labels stay as few as the routes.
    """

    def __init__(self, app, telemetry: Telemetry, run_id: Callable[[], str]) -> None:
        self.app = app
        self.telemetry = telemetry
        self.run_id = run_id

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, clock, run_id = time.time(), time.perf_counter(), self.run_id()
        status = 500  # what the client gets when the app raises before answering

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.telemetry.request(
                method=scope["method"],
                endpoint=getattr(scope.get("route"), "path", None),
                status=status,
                started=started,
                seconds=time.perf_counter() - clock,
                run_id=run_id,
            )


class SameSite:
    """ASGI middleware: answers only the Host names served here, and refuses a browser's cross-origin write.

    A Host that is neither listed nor an IP address gets 421 (DNS rebinding needs a domain name); a request other
    than GET, HEAD or OPTIONS whose Origin is neither allowed nor this Host gets 403. Plain ASGI rather than
    `@app.middleware("http")`, whose per-request task and streams cost every request time it does not need.
    """

    def __init__(self, app, allowed_hosts: set[str] | None, origins: set[str]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.origins = origins

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:  # names arrive lower-cased; the first of a repeated header counts
            headers.setdefault(name, value)
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if self.allowed_hosts is not None and not host_allowed(host_name(host), self.allowed_hosts):
            refusal = JSONResponse({"detail": f"host {host!r} is not served here (--allowed-host)"}, status_code=421)
            await refusal(scope, receive, send)
            return
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin and origin != "null":
            if origin not in self.origins and origin.split("://", 1)[-1] != host:
                refusal = JSONResponse(
                    {"detail": f"cross-origin write from {origin} refused (--allowed-origin)"}, status_code=403
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    *,
    load: Callable[[], Recommender],
    generation: Callable[[], Hashable],
    ingest: Callable[[list[Row]], IngestSummary],
    token: str | None = None,
    poll_seconds: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    watch: bool = True,
    allowed_hosts: set[str] | None = None,
    allowed_origins: set[str] | None = None,
    check_store: Callable[[], None] | None = None,
    close_store: Callable[[], None] | None = None,
    access_log: str | None = None,
) -> FastAPI:
    """Build the ASGI app from what it needs; `project_app` wires these to a project directory.

    Args:
        load: Returns a ready recommender (`recommend(user, k, exclude_seen)`, `run.run_id`, `scorer.num_items`).
        generation: Returns a value that changes when `load` would return a different recommender.
        ingest: Stores decoded feedback rows all or nothing and returns what it did; raises StoreBusyError when
            the store stays locked.
        token: When set, every endpoint but /health (the OpenAPI page and schema, and /metrics, included) needs
            `Authorization: Bearer <token>`.
        poll_seconds: How often to look for a newly promoted run.
        max_body_bytes: Largest accepted request body.
        watch: Start the background watcher (tests may call `app.state.watcher.check()` instead).
        allowed_hosts: Host header names to answer (DNS rebinding); None answers any.
        allowed_origins: Origins allowed to POST across sites; a browser's cross-origin write is refused otherwise.
        check_store: Raises when the feedback store is unusable; /health reports it.
        close_store: Releases the feedback store's connections when the app shuts down.
        access_log: A file to append one JSON line per request to, `-` for stderr; None: no access log.
    """
    import swagger_ui_bundle
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    telemetry = Telemetry(access_log)
    watcher = ModelWatcher(load, generation, poll_seconds, telemetry)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if watch:
            watcher.start()
        yield
        watcher.stop()
        telemetry.close()
        if close_store is not None:
            close_store()

    app = FastAPI(
        title="bigrec",
        version=bigrec_cli.__version__,
        lifespan=lifespan,
        description="Real-time recommendations from a BERT → LSTM → sigmoid model.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.watcher = watcher
    app.state.telemetry = telemetry
    bearer = HTTPBearer(auto_error=False, description="The token given to `bigrec serve --token`.")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        supplied = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(supplied.encode(), str(token).encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorize)] if token else []
    origins = {origin.rstrip("/").lower() for origin in allowed_origins or ()}

    app.add_middleware(SameSite, allowed_hosts=allowed_hosts, origins=origins)
    app.add_middleware(Measured, telemetry=telemetry, run_id=lambda: watcher.state.recommender.run.run_id)
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=guarded, include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="bigrec API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        return Response(status_code=200)

    @app.get("/health", responses={503: {"description": "The feedback store is unusable (damaged or unreadable)"}})
    async def health() -> JSONResponse:
        """Liveness, the run being served, and whether the feedback store can be read."""
        state = watcher.state
        answer = {
            "status": "ok",
            "run_id": state.recommender.run.run_id,
            "loaded_at": iso_time(state.loaded_at),
            "num_items": state.recommender.scorer.num_items,
            "reload_error": without_paths(watcher.last_error),
        }
        if check_store is not None:
            try:
                check_store()
            except Exception as error:  # a damaged store is an outage: say so instead of "ok"
                answer.update(status="degraded", store_error=without_paths(f"{type(error).__name__}: {error}"))
                return JSONResponse(answer, status_code=503)
        return JSONResponse(answer)

    @app.get("/metrics", dependencies=guarded, include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus' text format; with `serve --workers N`, the sum over all the workers."""
        return Response(await run_in_threadpool(generate_latest, telemetry.exposed), media_type=CONTENT_TYPE_LATEST)

    @app.get("/recommend", dependencies=guarded, response_model=RecommendAnswer)
    async def recommend(
        user: str = Query(min_length=1, max_length=256),
        k: int = Query(10, ge=1, le=MAX_K),
        include_seen: bool | None = Query(None, description="Allow history items; default: the project's repeats"),
        where: list[str] = Query(default=[], description="Attribute filters, all of which hold: category=guitars"),
        exclude: list[str] = Query(default=[], description="Item ids never to recommend"),
        explain: bool = Query(False, description="Add each item's most influential history items (`because`)"),
    ) -> Response:
        """Top-k items for the user's latest behaviour, the same answer as `bigrec recommend --json`."""
        recommender = watcher.state.recommender
        exclude_seen = None if include_seen is None else not include_seen
        options = {"exclude_seen": exclude_seen, "where": tuple(where), "exclude": tuple(exclude)}
        if explain:
            options["explain"] = True
        try:
            answer = await run_in_threadpool(recommender.recommend, user, k=k, **options)
        except StoreBusyError as error:  # the feedback store (a PostgreSQL server) is down or locked: retry later
            raise HTTPException(503, str(error), headers={"Retry-After": "1"}) from None
        except ConfigError as error:
            raise HTTPException(400, str(error)) from None
        return Response(json.dumps(answer), media_type="application/json")

    @app.post(
        "/feedback",
        dependencies=guarded,
        response_model=IngestResult,
        openapi_extra={"requestBody": feedback_body_schema()},
        responses={
            422: {"description": "An event is invalid: none was stored (the reasons are listed)"},
            503: {"description": "The store is locked by another writer: retry after the given seconds"},
        },
    )
    async def feedback(request: Request) -> JSONResponse:
        """Store events (a JSON list, or {"events": [...]}) with the validation of `bigrec ingest-feedback`.

        All or nothing: if any event is invalid, none is stored and the response lists the reasons (422).
        """
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(415, "send the events as application/json")
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
        except (ValueError, RecursionError) as error:
            raise HTTPException(400, f"body is not JSON: {str(error)[:200]}") from None
        events = payload.get("events") if isinstance(payload, dict) else payload
        if not isinstance(events, list) or not events:
            raise HTTPException(400, 'send a non-empty JSON list of events, or {"events": [...]}')
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_EVENTS_PER_REQUEST} events per request")
        try:
            summary = await run_in_threadpool(ingest, rows_from_objects(events))
        except StoreBusyError as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "1"}) from None
        telemetry.feedback(summary.num_accepted, summary.num_rejected)
        result = {key: value for key, value in summary.__dict__.items() if key != "rejects_path"}
        if summary.num_rejected:
            result["detail"] = "no event stored: fix the rejected events and resend"
            return JSONResponse(result, status_code=422)
        return JSONResponse(result)

    return app


def project_app(
    project: ProjectDir,
    *,
    token: str | None = None,
    warm_users: int = WARM_USERS,
    index: str = "auto",
    **options: Any,
) -> FastAPI:
    """The app over a project: its promoted run, warmed for the `warm_users` most recent users, and its store;
    `index` as `Recommender` takes it (auto: the run's approximate index when it has one)."""

    def load() -> Recommender:
        recommender = Recommender(project, index=index)
        if warm_users:
            recommender.warm(warm_users)
        return recommender

    # One writer for the app's life: its connection stays open between requests, so a POST pays no connect and no
    # migration check (which took SQLite's write lock once more).
    writer = open_store(project, busy_timeout=HTTP_BUSY_TIMEOUT)

    def store(rows: list[Row]) -> IngestSummary:
        return ingest(project, rows, source="http", all_or_nothing=True, store=writer)

    feedback_store = open_store(project)

    def close_stores() -> None:
        writer.close()
        feedback_store.close()

    return create_app(
        load=load,
        generation=project_generation(project),
        ingest=store,
        token=token,
        check_store=feedback_store.check,
        close_store=close_stores,
        **options,
    )


def app_from_environment() -> FastAPI:
    """App factory for uvicorn worker processes: the project, token, warm-up size and the rest come from the
    environment (`run` sets it; `PROMETHEUS_MULTIPROC_DIR` too, so that the workers' metrics add up)."""
    app = project_app(
        ProjectDir(Path(os.environ["BIGREC_PROJECT_DIR"])),
        token=os.environ.get("BIGREC_TOKEN") or None,
        warm_users=int(os.environ.get("BIGREC_WARM_USERS", WARM_USERS)),
        allowed_hosts=set(filter(None, os.environ.get("BIGREC_ALLOWED_HOSTS", "").split(","))),
        allowed_origins=set(filter(None, os.environ.get("BIGREC_ALLOWED_ORIGINS", "").split(","))),
        access_log=os.environ.get("BIGREC_ACCESS_LOG") or None,
        index=os.environ.get("BIGREC_INDEX") or "auto",
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


def check_address(host: str, port: int) -> None:
    """Bind the address once and release it, so that a busy port is one clear error before anything loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise CannotListenError(
            f"cannot resolve --host {host}: {error.strerror}", hint="pass an address or name"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise CannotListenError(
                f"cannot listen on {host}:{port}: {error.strerror}",
                hint="stop what uses that port, or pass another --port",
            ) from None


def run(
    project: ProjectDir,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    workers: int = 1,
    warm_users: int = WARM_USERS,
    allowed_hosts: list[str] = (),
    allowed_origins: list[str] = (),
    access_log: str | None = None,
    index: str = "auto",
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Load the project and serve it until interrupted; `workers` > 1 runs that many processes on one port.

    With workers, the metrics of each process go to files in a fresh temporary folder (`PROMETHEUS_MULTIPROC_DIR`,
    set before the workers start and import prometheus_client; removed at exit), which /metrics adds up.

    Raises CannotListenError before loading anything when the address cannot be bound, and ConfigError when the
    access log cannot be appended to.
    """
    import uvicorn

    check_address(host, port)
    if access_log and access_log != "-":
        AccessLog(access_log).close()
    hosts = (
        LOOPBACK_HOSTS
        | {host.strip("[]").lower(), socket.gethostname().lower()}
        | {name.lower() for name in allowed_hosts}
    )
    origins = set(allowed_origins)
    if on_listening is not None:
        on_listening(f"http://{'[' + host + ']' if ':' in host else host}:{port}")
    if workers == 1:
        app = project_app(
            project,
            token=token,
            warm_users=warm_users,
            allowed_hosts=hosts,
            allowed_origins=origins,
            access_log=access_log,
            index=index,
        )
        tune_process_for_serving()
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    os.environ["BIGREC_PROJECT_DIR"] = str(project.root)
    os.environ["BIGREC_WARM_USERS"] = str(warm_users)
    if token:
        os.environ["BIGREC_TOKEN"] = token
    os.environ["BIGREC_ALLOWED_HOSTS"] = ",".join(sorted(hosts))
    os.environ["BIGREC_ALLOWED_ORIGINS"] = ",".join(sorted(origins))
    os.environ["BIGREC_ACCESS_LOG"] = access_log or ""
    os.environ["BIGREC_INDEX"] = index
    if project.store_url:
        os.environ["BIGREC_STORE"] = project.store_url  # the workers open the same feedback store
    metrics_dir = tempfile.mkdtemp(prefix="bigrec-metrics-")
    os.environ[MULTIPROCESS_DIR] = metrics_dir  # the workers are spawned: they import prometheus_client after this
    try:
        if hasattr(socket, "SO_REUSEPORT") and sys.platform == "linux":
            serve_workers(workers, host, port)
        else:  # no kernel balancing of SO_REUSEPORT sockets: uvicorn's workers on one shared socket
            uvicorn.run(
                "bigrec_cli.serve:app_from_environment",
                factory=True,
                workers=workers,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
            )
    finally:
        os.environ.pop(MULTIPROCESS_DIR, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def serve_worker(host: str, port: int, listening) -> None:
    """One worker process of `serve_workers`: builds the app (model loaded and warmed), then binds its own
    SO_REUSEPORT socket on host:port, sets `listening`, and serves until SIGINT/SIGTERM."""
    import uvicorn

    config = uvicorn.Config(
        "bigrec_cli.serve:app_from_environment",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
    config.load()
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(address)
    listener.listen(config.backlog)
    listening.set()
    uvicorn.Server(config).run(sockets=[listener])


def serve_workers(count: int, host: str, port: int) -> None:
    """Run `count` worker processes on host:port, each listening on its own SO_REUSEPORT socket, until SIGINT/SIGTERM.

    uvicorn's own workers share one listening socket, and whichever worker is awake when connections arrive accepts
    all of them: a client that keeps its connections open (a load generator, a proxy's pool) then sends every
    request to one worker while the others idle (k6, 8 keep-alive connections, 10 s: one worker used 9.2 s of CPU,
    the other 0.0). With a socket each, the kernel spreads new connections over the workers by a hash of their
    addresses, and a worker listens only once its model is loaded. A worker that dies after it listened is started
    again; one that dies before stops the server (the same damage would stop every new one).
    """
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")

    def start() -> tuple[Any, Any]:
        listening = context.Event()
        process = context.Process(target=serve_worker, args=(host, port, listening), name="bigrec-serve-worker")
        process.start()
        return process, listening

    stopping = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stopping.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    running = [start() for _ in range(count)]
    try:
        while not stopping.wait(0.5):
            for slot, (process, listening) in enumerate(running):
                if process.exitcode is None:
                    continue
                if not listening.is_set():
                    raise CannotListenError(
                        f"a server worker stopped before it listened (exit code {process.exitcode})",
                        hint="see its messages above",
                    )
                LOG.warning("server worker %s exited (code %s): starting another", process.pid, process.exitcode)
                running[slot] = start()
    finally:
        for process, _ in running:
            if process.exitcode is None:
                process.terminate()
        for process, _ in running:
            process.join(timeout=30)
            if process.exitcode is None:
                process.kill()
                process.join()
        for number, handler in previous.items():
            signal.signal(number, handler)
