"""The feedback store on a real PostgreSQL server (started here on loopback, never a mock) and on SQLite: the same
behaviour, exactly-once ingestion by concurrent processes, and two servers sharing one database."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from bigrec_cli.feedback import open_store, rows_from_objects
from bigrec_cli.project import ProjectDir
from tests.conftest import REPO, SAMPLE, invoke
from tests.test_telemetry import free_port, get

psycopg = pytest.importorskip("psycopg", reason="psycopg is a dependency of bigrec: run `make install`")


def postgres_binaries() -> Path | None:
    """The folder of initdb and postgres: pgserver's (the dev extra of `make install`), else one on PATH."""
    spec = importlib.util.find_spec("pgserver")  # finds the package without importing it (no side effects)
    folders = [Path(spec.origin).parent / "pginstall" / "bin"] if spec and spec.origin else []
    on_path = shutil.which("initdb") or shutil.which("pg_ctl")
    folders += [Path(on_path).parent] if on_path else []
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((folder for folder in folders if (folder / "initdb").exists() and (folder / "postgres").exists()), None)


class PostgresServer:
    """A throw-away PostgreSQL cluster on a free loopback port, with password authentication."""

    def __init__(self, binaries: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bigrec-pg-"))  # not under pytest's root-only tmp: postgres
        self.password = secrets.token_hex(8)  # may run as another user, who must reach it
        self.port = free_port()
        account = {}
        if os.geteuid() == 0:  # postgres refuses to run as root
            nobody = pwd.getpwnam("nobody")
            account = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.folder, 0o755)
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if account:
            os.chown(password_file, account["user"], account["group"])
        options = {"cwd": self.folder, "env": {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}, **account}
        data = self.folder / "data"
        subprocess.run(
            [binaries / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8", "--no-sync", "--auth-local=trust"]
            + ["--auth-host=scram-sha-256", f"--pwfile={password_file}"],
            check=True,
            capture_output=True,
            **options,
        )
        self.process = subprocess.Popen(
            [binaries / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(self.port), "-k", ""]
            + ["-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "server.log", "w"),
            **options,
        )
        self.admin_url = self.url("postgres")
        deadline = time.time() + 60
        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.1)

    def url(self, database: str, password: str | None = None) -> str:
        return f"postgresql://postgres:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"bigrec_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, no waiting for them
            self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries: `make install` installs pgserver's (the dev extra)")
    server = PostgresServer(binaries)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """A fresh database on the session's server."""
    from bigrec_cli import pgstore

    yield postgres.new_database()
    pgstore.close_connections()


@pytest.fixture
def preprocessed(project):
    result = invoke("preprocess", "--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv"))
    assert result.exit_code == 0, result.stderr
    return project


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request) -> str | None:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


def event(user: str, item: str, second: int, **extra) -> dict:
    return {"user_id": user, "item_id": item, "timestamp": 1_800_000_000 + second, **extra}


def test_the_store_behaves_the_same_on_sqlite_and_postgresql(preprocessed, store_url):
    from bigrec_cli.feedback import ingest

    project = ProjectDir(preprocessed, store_url=store_url)
    store = open_store(project)
    assert type(store).__name__ == ("FeedbackStore" if store_url is None else "PostgresStore")
    store.check()  # an empty store is fine before the first write
    assert (store.count_events(), store.max_rowid(), len(store.events_frame())) == (0, 0, 0)
    first = [
        event("u1", "i0001", 1, event_id="a"),
        event("u1", "i0002", 2, event_id="b"),
        event("u2", "i0001", 3, event_id="a"),  # another user's "a": a different event
        event("u1", "new-1", 4, title="A brand new saxophone"),
        event("u1", "i0001", 1, event_id="a"),  # the same event twice in one batch
    ]
    summary = ingest(project, rows_from_objects(first), source="test")
    assert (summary.num_accepted, summary.num_duplicates, summary.num_new_items) == (4, 1, 1)
    watermark = store.max_rowid()
    assert store.count_events() == 4 and store.count_events_after(0) == 4

    again = ingest(project, rows_from_objects(first[:2] + [event("u3", "i0003", 5)]), source="test")
    assert (again.num_accepted, again.num_duplicates) == (1, 2)
    assert store.count_events_after(watermark) == 1 and store.max_rowid() > watermark

    bad = ingest(
        project,
        rows_from_objects([event("u4", "i0004", 6), event("u4", "no-such-item", 7)]),
        source="http",
        all_or_nothing=True,
    )
    assert (bad.num_accepted, bad.num_rejected) == (0, 1) and store.count_events() == 5  # nothing of it stored

    history = [("i0001", 1_800_000_001.0), ("i0002", 1_800_000_002.0), ("new-1", 1_800_000_004.0)]
    assert store.user_events("u1") == [(*pair, "interaction") for pair in history]
    frame = store.events_frame(up_to_rowid=watermark)
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "event", "weight", "event_id"]
    assert sorted(frame["user_id"]) == ["u1", "u1", "u1", "u2"] and len(store.events_frame()) == 5
    assert set(frame["event_id"]) >= {"u1\x1fa", "u2\x1fa"}  # ids are scoped per user
    assert store.item_counts().to_dict() == {"i0001": 2, "i0002": 1, "i0003": 1, "new-1": 1}
    new_items = store.new_items()
    assert new_items.to_dict("records") == [
        {"item_id": "new-1", "title": "A brand new saxophone", "text": "A brand new saxophone"}
    ]
    assert store.new_items(exclude={"new-1"}).empty
    assert store.delete_user("u1") == 3 and store.delete_user("u1") == 0
    assert store.count_events() == 2 and store.user_events("u1") == []


def test_store_errors_are_one_line_with_the_fix_and_no_password(postgres, preprocessed, tmp_path):
    feedback = tmp_path / "f.csv"
    feedback.write_text("user_id,item_id\nu1,i0001\n")
    wrong = postgres.url("postgres", password="not-the-password-42")
    cases = [
        (wrong, "password authentication failed", "PGPASSWORD"),
        (postgres.url("no_such_db"), 'database "no_such_db" does not exist', "createdb"),
        (f"postgresql://postgres:hunter2secret@127.0.0.1:{free_port()}/x", "cannot connect", "start PostgreSQL"),
        ("mysql://root:hunter2secret@localhost/x", "is not a store bigrec knows", "postgresql://"),
    ]
    for url, message, fix in cases:
        result = invoke("ingest-feedback", str(feedback), "--store", url)
        assert result.exit_code == 1, (url, result.stdout, result.stderr, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and fix in lines[0], result.stderr
        assert "not-the-password-42" not in result.stderr and "hunter2secret" not in result.stderr
        assert postgres.password not in result.stderr
    assert not (preprocessed / "feedback.sqlite3").exists()


def test_a_server_that_is_down_is_busy_for_http_and_degraded_for_health(preprocessed):
    from bigrec_cli.errors import StoreBusyError
    from bigrec_cli.feedback import ingest

    project = ProjectDir(preprocessed, store_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(StoreBusyError, match="cannot connect"):  # POST /feedback answers 503 with Retry-After
        ingest(project, rows_from_objects([event("u1", "i0001", 1)]), source="http", all_or_nothing=True)
    with pytest.raises(StoreBusyError):  # /health answers "degraded"
        open_store(project).check()


def test_the_store_url_never_shows_its_password(postgres):
    project = ProjectDir(Path("/nowhere"), store_url=postgres.url("postgres"))
    assert postgres.password not in repr(project)
    assert postgres.password not in open_store(project).where


NUM_WRITERS, EVENTS_EACH, OVERLAP = 4, 10_000, 1_000


def overlapping_event_files(folder: Path) -> tuple[list[Path], int]:
    """NUM_WRITERS CSV files of EVENTS_EACH events, neighbours sharing OVERLAP event ids; and the distinct count."""
    files = []
    for writer in range(NUM_WRITERS):
        numbers = range(writer * (EVENTS_EACH - OVERLAP), writer * (EVENTS_EACH - OVERLAP) + EVENTS_EACH)
        body = "".join(f"e{n},u{n % 300:04d},i{n % 400:04d},{1_800_000_000 + n}\n" for n in numbers)
        files.append(folder / f"writer{writer}.csv")
        files[-1].write_text("event_id,user_id,item_id,timestamp\n" + body)
    return files, (NUM_WRITERS - 1) * (EVENTS_EACH - OVERLAP) + EVENTS_EACH


def recommend_until(root: str, stop_file: str) -> None:
    """Ask for recommendations (the store read each time) until `stop_file` appears; print how many answers."""
    from bigrec_cli.recommend import Recommender

    recommender, calls = Recommender(ProjectDir(Path(root))), 0
    while not Path(stop_file).exists() or calls < 20:
        assert len(recommender.recommend(f"u{calls % 300:04d}")["items"]) == 10
        calls += 1
    print(calls)


def python(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """This interpreter in the repository, its output captured as text."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_four_ingesters_store_every_event_once_on_postgresql(trained_copy, pg_url, tmp_path):
    """As tests/test_races.py on SQLite: 4 processes, overlapping event ids, a reader asking meanwhile; the
    database is new, so the 4 also race to create its tables."""
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(trained_copy), "BIGREC_STORE": pg_url}
    files, expected = overlapping_event_files(tmp_path)
    stop_file = tmp_path / "stop"
    loop = f"from tests.test_pgstore import recommend_until; recommend_until({str(trained_copy)!r}, {str(stop_file)!r})"
    reader = python(["-c", loop], env)
    writers = [python(["-m", "bigrec_cli", "ingest-feedback", str(path), "--json"], env) for path in files]
    outcomes = [(*writer.communicate(timeout=300), writer.returncode) for writer in writers]
    stop_file.touch()
    calls, reader_errors = reader.communicate(timeout=300)

    assert [code for _, _, code in outcomes] == [0] * NUM_WRITERS, outcomes
    assert reader.returncode == 0, reader_errors
    everything = " ".join(error for _, error, _ in outcomes).lower() + reader_errors.lower()
    assert "locked" not in everything and "traceback" not in everything
    assert sum(json.loads(out)["num_accepted"] for out, _, _ in outcomes) == expected
    with psycopg.connect(pg_url) as connection:
        stored = connection.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events").fetchone()
    assert stored == (expected, expected)
    assert not (trained_copy / "feedback.sqlite3").exists(), "nothing went to the SQLite file"
    status = invoke("status", "--project-dir", str(trained_copy), "--store", pg_url, "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["feedback_events"] == expected
    print(
        f"PostgreSQL: {NUM_WRITERS}x{EVENTS_EACH} ingested concurrently, {stored[0]} of {expected} stored once, "
        f"{calls.strip()} recommend calls meanwhile"
    )


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:  # not listening yet
        return False


@pytest.mark.slow
def test_two_servers_share_one_postgresql(trained_copy, pg_url, tmp_path):
    """An event posted to one server changes the next answer of the other (which runs 2 workers: they get the
    store from the server's --store)."""
    ports = [free_port(), free_port()]
    env = {key: value for key, value in os.environ.items() if key != "BIGREC_STORE"}
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "bigrec_cli", "serve", "--project-dir", str(trained_copy)]
            + ["--port", str(port), "--store", pg_url, "--warm-users", "0", "--workers", str(workers)],
            cwd=REPO,
            env=env,
            stderr=open(tmp_path / f"server{port}.log", "w"),
        )
        for port, workers in zip(ports, (1, 2))
    ]
    first, second = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        deadline = time.time() + 180
        for base in (first, second):
            while not answers(f"{base}/health"):
                assert time.time() < deadline and all(server.poll() is None for server in servers), [
                    (tmp_path / f"server{port}.log").read_text() for port in ports
                ]
                time.sleep(0.5)
        health = json.loads(get(f"{second}/health")[1])
        assert health["status"] == "ok", health

        def items(base: str) -> list[str]:
            status, body = get(f"{base}/recommend?user=u0007&k=10")
            assert status == 200, body
            return [item["item_id"] for item in json.loads(body)["items"]]

        before = items(second)
        assert items(first) == before
        events = [event("u0007", item, n) for n, item in enumerate(["i0003", "i0015", "i0027", "i0039"])]
        request = urllib.request.Request(
            f"{first}/feedback",
            data=json.dumps({"events": events}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["num_accepted"] == 4
        after = items(second)
        assert after != before, "the second server answers with the event posted to the first"
        assert items(first) == after
    finally:
        for server in servers:
            server.send_signal(signal.SIGINT)
        for server in servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert not (trained_copy / "feedback.sqlite3").exists(), "nothing went to the SQLite file"


def test_recommend_answers_503_while_its_store_is_down(trained_copy):
    """A server whose PostgreSQL goes away answers GET /recommend with 503 and Retry-After, not a 500."""
    from fastapi.testclient import TestClient

    from bigrec_cli.recommend import Recommender
    from bigrec_cli.serve import create_app

    recommender = Recommender(ProjectDir(trained_copy))
    assert recommender.recommend("u0007")["items"]
    recommender.store = open_store(ProjectDir(trained_copy, store_url=f"postgresql://u@127.0.0.1:{free_port()}/x"))
    app = create_app(load=lambda: recommender, generation=lambda: 0, ingest=lambda rows: None, watch=False)
    with TestClient(app) as client:
        answer = client.get("/recommend", params={"user": "u0007"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
    assert "cannot connect" in answer.json()["detail"]
