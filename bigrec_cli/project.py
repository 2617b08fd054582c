"""The project directory: every path bigrec writes, atomic writes, runs and the `current` pointer."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from bigrec_cli.errors import ArtifactError, DataError, NotTrainedError

DATA_DIR = "data"
EVENTS_DIR = "events"  # the events' shards by user: events/part-00000.parquet, …
EVENTS_FILE = "events.parquet"  # the events in one file: projects written before shards
ITEMS_FILE = "items.parquet"
DATA_META_FILE = "data.json"
DATA_CURRENT_FILE = "CURRENT"  # names the data version in use: data/<version>/{events,items}.parquet, data.json
DATA_LOCK_FILE = ".write.lock"  # held while a data version is written: one writer at a time
KEEP_DATA_VERSIONS = 2  # the current one and the one before it (a reader that resolved it a moment ago)
FEATURES_DIR = "features"
ITEM_VECTORS_FILE = "item_vectors.npz"
FEATURES_META_FILE = "features.json"
VECTOR_CACHE_DIR = "cache"
RUNS_DIR = "runs"
CURRENT_FILE = "current"
FEEDBACK_DB = "feedback.sqlite3"
REJECTS_FILE = "feedback.rejects.jsonl"
PROMOTIONS_FILE = "promotions.jsonl"
RETRAIN_LOG = "retrain.log.jsonl"
LOCK_FILE = "retrain.lock"

RUN_CONFIG = "config.json"
RUN_SCORER = "scorer.npz"
RUN_ITEM_ITEM = "item_item.npz"
RUN_ITEM_VOCAB = "item_vocab.json"
RUN_EVENT_TYPES = "event_types.json"
RUN_METRICS = "metrics.json"
RUN_HISTORY = "history.json"
RUN_MANIFEST = "manifest.json"
RUN_INDEX = "items.faiss"  # the approximate index of large catalogs (faiss IVF or HNSW), when the run has one
RUN_INDEX_BEFORE = "items.hnsw"  # its name in runs written before IVF indexes


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block succeeds, move it over `path` in one step.

    Readers see the old file or the whole new one, never a part; on failure the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside `path`; when the block succeeds, rename it to `path`.

    If `path` appeared meanwhile (another process finished the same work first), the staging folder is dropped.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        yield staging
        try:
            staging.rename(path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` atomically (see `atomic_file`), with the permissions a new file would get."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(payload)
        os.chmod(temporary, 0o666 & ~_umask())


def atomic_write_json(path: Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def append_json_line(path: Path, value: Any) -> None:
    """Append one JSON line with a single write, so concurrent appenders never interleave within a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(value, sort_keys=True, default=_json_default) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_json_lines(path: Path) -> list[Any]:
    """Read a JSON lines log, skipping a torn last line left by a crash."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    values = []
    for line in lines:
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return values


def run_index_path(run_dir: Path) -> Path:
    """The path of a run's approximate index: `items.faiss`, or `items.hnsw` in a run written before IVF indexes
    (whichever exists; `items.faiss` when neither does, so the caller can tell the run has none)."""
    before = run_dir / RUN_INDEX_BEFORE
    return before if before.exists() and not (run_dir / RUN_INDEX).exists() else run_dir / RUN_INDEX


def read_json(path: Path) -> Any:
    """Read a JSON artifact, turning a missing or damaged file into an ArtifactError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing", hint="rerun the step that writes it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is damaged: {error}", hint="rerun the step that writes it") from None


def _hash_file(digest: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    _hash_file(digest, path)
    return digest.hexdigest()


def files_sha256(paths: Iterable[Path]) -> str:
    """Return one hex SHA-256 over the name and bytes of each file, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        _hash_file(digest, path)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


@dataclass(frozen=True)
class ProjectDir:
    """Every path inside one project directory.

    Args:
        root: The directory given by `--project-dir` or `BIGREC_PROJECT_DIR`.
        data_version: A data version to read whatever `data/CURRENT` says later (see `pinned`).
        store_url: The feedback store's PostgreSQL URL (`--store`); None: `BIGREC_STORE`, else `feedback.sqlite3`.
            Never written into the project, and left out of the repr: it may carry a password.
    """

    root: Path
    data_version: str | None = None
    store_url: str | None = field(default=None, repr=False)

    def pinned(self) -> "ProjectDir":
        """This project with its data version fixed to the one in use now: an operation that reads data.json,
        the events and the items one after the other never mixes two versions while `preprocess` runs."""
        version = self.data_dir.name if (self.root / DATA_DIR / DATA_CURRENT_FILE).exists() else None
        return ProjectDir(self.root, version, self.store_url)

    @property
    def data_dir(self) -> Path:
        """The folder of the data version in use (`data/CURRENT` names it; projects from before versions: `data/`)."""
        base = self.root / DATA_DIR
        if self.data_version is not None:
            return base / self.data_version
        try:
            name = (base / DATA_CURRENT_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return base
        if not name.startswith("v-") or "/" in name or not (base / name).is_dir():
            raise ArtifactError(f"{base / DATA_CURRENT_FILE} names no data version ({name!r})", hint="run preprocess")
        return base / name

    @contextmanager
    def new_data_version(self, keep: int = KEEP_DATA_VERSIONS) -> Iterator[Path]:
        """Yield a staging folder for a complete data version; when the block succeeds, rename it into place and
        switch `data/CURRENT` to it in one atomic write. A crash at any point leaves the previous version in use,
        whole: its events, items and data.json never mix with the new ones. Older versions beyond `keep` go."""
        base = self.root / DATA_DIR
        name = f"v-{time.time_ns():020d}-{secrets.token_hex(3)}"  # sorts by creation, even within one second
        created = [folder for folder in (self.root, base) if not folder.exists()]
        base.mkdir(parents=True, exist_ok=True)
        lock = os.open(base / DATA_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            # Another writer (a long preprocess, a forget-user) stages in this folder too, and the clean-up below
            # would delete its staging folder: refuse instead. An flock: the kernel frees it if its holder dies.
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(lock, 32, 0).decode(errors="replace").strip() or "?"
                raise DataError(
                    f"another bigrec command (pid {holder}) is writing {base} now",
                    hint="wait for it to finish, then run this command again",
                ) from None
            os.ftruncate(lock, 0)
            os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
            try:
                with atomic_directory(base / name) as staging:
                    yield staging
            except BaseException:
                if created:  # a failed first version leaves no trace, not even empty folders or the lock
                    (base / DATA_LOCK_FILE).unlink(missing_ok=True)
                for folder in reversed(created):
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
                raise
            self._switch_data_version(base, name, keep)
        finally:
            os.close(lock)

    def _switch_data_version(self, base: Path, name: str, keep: int) -> None:
        """Point `data/CURRENT` at the new version and remove what is stale (the caller holds the write lock)."""
        atomic_write_bytes(base / DATA_CURRENT_FILE, (name + "\n").encode())
        _fsync_dir(base)
        versions = sorted(path for path in base.iterdir() if path.is_dir() and path.name.startswith("v-"))
        stale = [old for old in versions[:-keep] if old.name != name]
        # staging folders of a preprocess that was killed hold a whole copy of the events: they go too
        stale += [path for path in base.iterdir() if path.is_dir() and path.name.startswith(".v-")]
        for old in stale:
            shutil.rmtree(old, ignore_errors=keep > 1)  # forgetting a user (keep=1) must not leave a copy quietly
        for legacy in (EVENTS_FILE, ITEMS_FILE, DATA_META_FILE):  # a project's files from before versions
            (base / legacy).unlink(missing_ok=True)

    @property
    def events_path(self) -> Path:
        """The events' folder of shards, or the one Parquet file of a project written before shards."""
        shards = self.data_dir / EVENTS_DIR
        return shards if shards.is_dir() else self.data_dir / EVENTS_FILE

    @property
    def items_path(self) -> Path:
        return self.data_dir / ITEMS_FILE

    @property
    def data_meta_path(self) -> Path:
        return self.data_dir / DATA_META_FILE

    @property
    def features_dir(self) -> Path:
        return self.root / FEATURES_DIR

    @property
    def item_vectors_path(self) -> Path:
        return self.features_dir / ITEM_VECTORS_FILE

    @property
    def features_meta_path(self) -> Path:
        return self.features_dir / FEATURES_META_FILE

    @property
    def vector_cache_dir(self) -> Path:
        return self.features_dir / VECTOR_CACHE_DIR

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def current_path(self) -> Path:
        return self.root / CURRENT_FILE

    @property
    def feedback_db(self) -> Path:
        return self.root / FEEDBACK_DB

    @property
    def rejects_path(self) -> Path:
        return self.root / REJECTS_FILE

    @property
    def promotions_path(self) -> Path:
        return self.root / PROMOTIONS_FILE

    @property
    def retrain_log_path(self) -> Path:
        return self.root / RETRAIN_LOG

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def require_data(self) -> None:
        """Raise NotTrainedError unless `preprocess` has written the data."""
        if not self.data_meta_path.exists():
            raise NotTrainedError(f"no preprocessed data in {self.root}", hint="run `bigrec preprocess` first")

    def require_features(self) -> None:
        """Raise NotTrainedError unless `extract` has written item vectors."""
        self.require_data()
        if not self.features_meta_path.exists():
            raise NotTrainedError(f"no item vectors in {self.root}", hint="run `bigrec extract` first")

    def require_room(self, need_bytes: int) -> None:
        """Refuse, before any long work, to write into a project that is read-only or lacks the disk space.

        Args:
            need_bytes: About how much the work will write.
        """
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            raise ArtifactError(
                f"{self.root} is not writable (read-only file system or permissions)",
                hint="point --project-dir at a writable copy of the project",
            )
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise ArtifactError(
                f"{free / 2**20:.0f} MiB free on the disk of {self.root}, "
                f"and this needs about {need_bytes / 2**20:.0f} MiB",
                hint="free some disk space (`bigrec runs prune` removes old runs), or move the project",
            )

    def new_run_id(self) -> str:
        """Return a sortable, unique run id: UTC time plus a random suffix."""
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)

    def staging_run_dir(self, run_id: str) -> Path:
        """Return the hidden directory a run is written into before it is complete."""
        return self.runs_dir / f".incomplete-{run_id}"

    def run_dir(self, run_id: str) -> Path:
        """Return the directory of a completed run, refusing ids that would leave `runs/`."""
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
            raise ArtifactError(f"{run_id!r} is not a run id", hint="use an id from `runs/`")
        return self.runs_dir / run_id

    def current_run_id(self) -> str | None:
        """Return the promoted run id, or None when no run has completed."""
        try:
            run_id = self.current_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return run_id or None

    def current_run_dir(self) -> Path:
        """Return the promoted run's directory or raise NotTrainedError."""
        run_id = self.current_run_id()
        if run_id is None:
            raise NotTrainedError(f"no trained model in {self.root}", hint="run `bigrec train` first")
        path = self.run_dir(run_id)
        if not path.is_dir():
            raise ArtifactError(f"`current` names run {run_id} but {path} is missing", hint="run `bigrec train` again")
        return path

    def promote(self, run_dir: Path, reason: str = "train") -> None:
        """Point `current` at a completed run in one atomic step and record it in `promotions.jsonl`."""
        atomic_write_bytes(self.current_path, (run_dir.name + "\n").encode())
        append_json_line(self.promotions_path, {"run_id": run_dir.name, "at": time.time(), "reason": reason})
