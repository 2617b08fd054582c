"""The HTTP server in-process (FastAPI's TestClient) over a real trained project."""

import json
import shutil
import sys

import pytest
from fastapi.testclient import TestClient

from bigrec_cli.project import ProjectDir
from bigrec_cli.serve import project_app
from tests.conftest import invoke


@pytest.fixture
def client(trained_copy):
    app = project_app(ProjectDir(trained_copy), token="s3cret", watch=False)
    with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as test_client:
        yield test_client


def cli_answer(project, user, k=10):
    result = invoke("recommend", "--project-dir", str(project), "--user", user, "--k", str(k), "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_same_answer(served, cli):
    """Same user, items, ranks and titles; scores equal to float32 precision.

    The server computes its users' LSTM states in one batch before serving, the CLI one user at a time, so the
    last bits of a score may differ (BLAS sums in another order).
    """

    def without_scores(answer):
        return {**answer, "items": [{**item, "score": None} for item in answer["items"]]}

    assert without_scores(served) == without_scores(cli)
    for served_item, cli_item in zip(served["items"], cli["items"]):
        if cli_item["score"] is None:  # popular items for a user without behaviour carry no score
            assert served_item["score"] is None
        else:
            assert served_item["score"] == pytest.approx(cli_item["score"], rel=1e-5, abs=1e-7)


def test_serve_answers_equal_the_cli(client, trained_copy):
    assert client.app.state.watcher.state.recommender._state_cache, "the server computed its users' states"
    for user in ("u0007", "u0100", "nobody"):
        response = client.get("/recommend", params={"user": user, "k": 10})
        assert response.status_code == 200
        assert_same_answer(response.json(), cli_answer(trained_copy, user))


def test_feedback_over_http_changes_the_next_answer(client, trained_copy):
    before = client.get("/recommend", params={"user": "u0007"}).json()
    events = [
        {"user_id": "u0007", "item_id": item, "timestamp": 1800000000 + n}
        for n, item in enumerate(["i0003", "i0015", "i0027", "i0039"])
    ]
    response = client.post("/feedback", json={"events": events})
    assert response.status_code == 200, response.text
    assert response.json()["num_accepted"] == 4
    after = client.get("/recommend", params={"user": "u0007"}).json()
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    assert_same_answer(after, cli_answer(trained_copy, "u0007"))  # CLI and server read the same store
    again = client.post("/feedback", json=events).json()
    assert (again["num_accepted"], again["num_duplicates"]) == (0, 4)


def test_parallel_feedback_is_stored_once_and_counts_in_the_next_answer(client, trained_copy):
    """Posters in parallel threads take turns on the app's one kept write connection: each event is stored once by
    its id (a retried POST is a duplicate), a batch with a bad event stores none of its events, and each user's
    next answer already counts the event (its item, now seen, is left out)."""
    import threading

    from bigrec_cli.feedback import FeedbackStore

    failures = []

    def post_and_read(user: str) -> None:
        for number in range(5):
            top = client.get("/recommend", params={"user": user}).json()["items"][0]["item_id"]
            event = [{"user_id": user, "item_id": top, "event_id": f"e{number}"}]
            answers = [client.post("/feedback", json=event) for _ in range(2)]
            counts = [(answer.status_code, answer.json().get("num_accepted")) for answer in answers]
            if counts != [(200, 1), (200, 0)] or answers[1].json()["num_duplicates"] != 1:
                failures.append(f"{user}: {counts}")
            after = client.get("/recommend", params={"user": user}).json()
            if top in {item["item_id"] for item in after["items"]}:
                failures.append(f"{user}: {top} recommended right after it was posted")
        batch = [{"user_id": user, "item_id": "i0001", "event_id": "x"}, {"user_id": user, "item_id": "no-such-item"}]
        if client.post("/feedback", json=batch).status_code != 422:
            failures.append(f"{user}: a batch with a bad event was not refused")

    users = ["u0007", "u0047", "u0101", "u0225"]
    threads = [threading.Thread(target=post_and_read, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    stored = FeedbackStore(ProjectDir(trained_copy).feedback_db).events_frame()
    assert len(stored) == 5 * len(users) and stored["event_id"].is_unique
    assert sorted(stored["user_id"].unique()) == users


def test_wrong_or_missing_token_is_401(client):
    assert client.get("/recommend", params={"user": "u1"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/recommend", params={"user": "u1"}, headers={"Authorization": ""}).status_code == 401
    assert client.get("/health", headers={"Authorization": ""}).status_code == 200


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not JSON"),
        (b'{"events": "x"}', 400, "non-empty JSON list"),
        (b"[]", 400, "non-empty JSON list"),
        (
            json.dumps([{"user_id": "u1", "item_id": "i0001"}, {"user_id": "", "item_id": "i0002"}]).encode(),
            422,
            "rejected",
        ),
        (json.dumps([{"user_id": "u1", "item_id": "no-such-item"}]).encode(), 422, "rejected"),
        (b"[" + b'{"user_id": "u1", "item_id": "i0001"},' * 40000 + b"{}]", 413, "larger than"),
    ],
)
def test_bad_bodies_are_4xx_and_store_nothing(client, trained_copy, body, status, message):
    response = client.post("/feedback", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.text
    from bigrec_cli.feedback import FeedbackStore

    assert FeedbackStore(ProjectDir(trained_copy).feedback_db).count_events() == 0


def test_k_is_bounded(client):
    assert client.get("/recommend", params={"user": "u1", "k": 5000}).status_code == 422
    assert client.get("/recommend", params={"user": "u1", "k": 0}).status_code == 422


def test_promoted_run_is_picked_up_without_a_failed_request(client, trained_copy):
    project = ProjectDir(trained_copy)
    old_run = project.current_run_dir()
    new_run = old_run.parent / (old_run.name + "-copy")
    shutil.copytree(old_run, new_run)
    project.promote(new_run)
    watcher = client.app.state.watcher
    assert client.get("/health").json()["run_id"] == old_run.name
    assert watcher.check() is True
    assert client.get("/health").json()["run_id"] == new_run.name
    assert client.get("/recommend", params={"user": "u0007"}).status_code == 200


def test_concurrent_requests_during_swaps_all_succeed(client, trained_copy):
    import threading

    project = ProjectDir(trained_copy)
    runs = [project.current_run_dir()]
    runs.append(runs[0].parent / (runs[0].name + "-b"))
    shutil.copytree(runs[0], runs[1])
    failures, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            response = client.get("/recommend", params={"user": "u0007", "k": 5})
            if response.status_code != 200:
                failures.append(response.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for swap in range(6):
        project.promote(runs[swap % 2 == 0])
        client.app.state.watcher.check()
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []


def test_damaged_new_run_keeps_serving_the_old_one(client, trained_copy):
    project = ProjectDir(trained_copy)
    old_run = project.current_run_dir()
    broken = old_run.parent / (old_run.name + "-broken")
    shutil.copytree(old_run, broken)
    (broken / "scorer.npz").write_bytes(b"garbage")
    project.promote(broken)
    assert client.app.state.watcher.check() is False
    health = client.get("/health").json()
    assert health["run_id"] == old_run.name and "checksum" in health["reload_error"]


def test_openapi_schema_lists_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/feedback", "/health"} <= set(schema["paths"])
    body = schema["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    event = body["oneOf"][0]["items"]["properties"]
    assert "cancel" in event["event"]["description"] and "--event-map" in event["event"]["description"]
    assert "quantity" in event["weight"]["description"] and "--min-rating" in event["rating"]["description"]


def test_real_server_process_serves_on_loopback(trained_project):
    import http.client
    import os
    import socket
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(trained_project), "BIGREC_TOKEN": "t0k"}
    server = subprocess.Popen(
        [sys.executable, "-m", "bigrec_cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                assert connection.getresponse().status == 200
                break
            except OSError:
                assert time.time() < deadline
                time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/recommend?user=u0007&k=3", headers={"Authorization": "Bearer t0k"})
        response = connection.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["items"]) == 3
        connection.request("GET", "/recommend?user=u0007&k=3")
        assert connection.getresponse().status == 401
    finally:
        server.terminate()
        server.wait(timeout=30)


def listening_sockets(port):
    """Sockets in LISTEN state on the port (Linux /proc/net/tcp*)."""
    from pathlib import Path

    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                found += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_two_workers_share_out_keep_alive_connections(trained_project, tmp_path):
    """Each worker listens on its own socket once loaded, so connections opened at once and kept (as a load generator
    or a proxy's pool does) reach both workers; on one shared socket the first awake worker accepted them all."""
    import http.client
    import os
    import socket
    import subprocess
    import time

    from tests.conftest import REPO
    from tests.test_telemetry import recommends_per_worker

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temporary = tmp_path / "tmp"
    temporary.mkdir()  # where the server makes its workers' metrics folder
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(trained_project), "TMPDIR": str(temporary)}
    command = [sys.executable, "-m", "bigrec_cli", "serve", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while listening_sockets(port) < 2:
            assert server.poll() is None, server.stderr.read()
            assert time.time() < deadline, f"{listening_sockets(port)} listening socket(s) on the port, not 2"
            time.sleep(0.2)
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(16)]
        for connection in connections:
            connection.connect()
        for _ in range(2):
            for number, connection in enumerate(connections):
                connection.request("GET", f"/recommend?user=u{number:04d}&k=3")
                response = connection.getresponse()
                assert response.status == 200, response.read()
                response.read()
        (folder,) = temporary.glob("bigrec-metrics-*")
        per_worker = recommends_per_worker(folder)
        while sum(per_worker.values()) < 32 and time.time() < deadline:  # counted just after the answer is sent
            time.sleep(0.1)
            per_worker = recommends_per_worker(folder)
        assert sum(per_worker.values()) == 32 and all(per_worker.values()) and len(per_worker) == 2, per_worker
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_serving_process_uses_one_blas_thread_and_freezes_the_loaded_model():
    import subprocess
    import sys

    from tests.conftest import REPO

    script = (
        "import gc, json\n"
        "from threadpoolctl import threadpool_info\n"
        "from bigrec_cli.serve import tune_process_for_serving\n"
        "tune_process_for_serving()\n"
        "print(json.dumps({'threads': [pool['num_threads'] for pool in threadpool_info()],"
        " 'frozen': gc.get_freeze_count()}))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True, text=True).stdout
    report = json.loads(output)
    assert report["threads"] and set(report["threads"]) == {1}
    assert report["frozen"] > 0


def test_warmed_states_and_batch_answers_match_one_user_at_a_time(trained_project):
    from bigrec_cli.recommend import Recommender

    project = ProjectDir(trained_project)
    warmed, plain = Recommender(project), Recommender(project)
    users = list(plain._spans)
    assert warmed.warm(max_users=len(users) - 1) == len(users) - 1
    assert len(warmed._state_cache) >= 1 and not plain._state_cache
    sample = users[:25] + ["nobody"]
    one_by_one = [plain.recommend(user) for user in sample]
    for served, expected in zip(warmed.recommend_many(sample), one_by_one):
        assert_same_answer(served, expected)
    for served, expected in zip(
        Recommender(project).recommend_many(sample, k=7), [plain.recommend(u, k=7) for u in sample]
    ):
        assert_same_answer(served, expected)


def test_a_users_history_is_read_again_only_when_their_feedback_changes(trained_copy):
    """Served requests keep what they derived from a user's history while the store's version of that user's
    feedback stays the same: the history is read once, then again after each new event or a deletion, and the
    answers are those of a recommender reading everything afresh."""
    from bigrec_cli.feedback import ingest, rows_from_objects
    from bigrec_cli.recommend import Recommender

    project = ProjectDir(trained_copy)
    served = Recommender(project)
    reads = []
    real = served.store.user_events
    served.store.user_events = lambda user_id: reads.append(user_id) or real(user_id)
    first = served.recommend("u0001")
    assert served.recommend("u0001") == first and reads == ["u0001"], "an unchanged user is not read again"
    top = first["items"][0]["item_id"]
    ingest(project, rows_from_objects([{"user_id": "u0001", "item_id": top}]), source="test", all_or_nothing=True)
    after = served.recommend("u0001")
    assert reads == ["u0001", "u0001"] and top not in {item["item_id"] for item in after["items"]}
    assert_same_answer(after, Recommender(project).recommend("u0001"))
    served.store.delete_user("u0001")  # what forget-user does to the store
    assert_same_answer(served.recommend("u0001"), first)
    assert len(reads) == 3
