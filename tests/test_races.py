"""4 processes ingest 10,000 events each while another process keeps asking for recommendations."""

import os
import sqlite3
import subprocess
import sys

from bigrec_cli.project import ProjectDir
from tests.conftest import REPO

NUM_WRITERS, EVENTS_EACH, OVERLAP = 4, 10_000, 1_000


def test_concurrent_ingest_stores_every_event_once(trained_copy, tmp_path):
    env = {**os.environ, "BIGREC_PROJECT_DIR": str(trained_copy)}
    files = []
    for writer in range(NUM_WRITERS):
        # Neighbouring files share OVERLAP event ids: those must be stored once, not twice.
        first = writer * (EVENTS_EACH - OVERLAP)
        path = tmp_path / f"writer{writer}.csv"
        with open(path, "w") as stream:
            stream.write("event_id,user_id,item_id,timestamp\n")
            for event in range(first, first + EVENTS_EACH):
                stream.write(f"e{event},u{event % 300:04d},i{event % 400:04d},{1_800_000_000 + event}\n")
        files.append(path)
    expected = (NUM_WRITERS - 1) * (EVENTS_EACH - OVERLAP) + EVENTS_EACH

    stop_file = tmp_path / "stop"
    loop = (
        "import sys, pathlib\n"
        "from bigrec_cli.project import ProjectDir\n"
        "from bigrec_cli.recommend import Recommender\n"
        f"recommender = Recommender(ProjectDir(pathlib.Path({str(trained_copy)!r})))\n"
        "calls = 0\n"
        f"while not pathlib.Path({str(stop_file)!r}).exists() or calls < 20:\n"
        "    assert len(recommender.recommend('u%04d' % (calls % 300))['items']) == 10\n"
        "    calls += 1\n"
        "print(calls)\n"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", loop], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "bigrec_cli", "ingest-feedback", str(path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    outcomes = [(writer.wait(timeout=300), writer.stderr.read()) for writer in writers]
    stop_file.touch()
    calls, reader_errors = reader.communicate(timeout=300)
    reader_results = [(reader.returncode, reader_errors)]

    assert [code for code, _ in outcomes] == [0] * NUM_WRITERS, outcomes
    assert reader.returncode == 0, reader_errors
    everything = " ".join(text for _, text in outcomes + reader_results).lower()
    assert "locked" not in everything and "traceback" not in everything
    with sqlite3.connect(ProjectDir(trained_copy).feedback_db) as connection:
        stored = connection.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events").fetchone()
    assert stored == (expected, expected)
    print(
        f"ingested {NUM_WRITERS}x{EVENTS_EACH} concurrently: stored {stored[0]} of {expected} distinct, "
        f"{calls.strip()} recommend calls in another process meanwhile"
    )
