import json
from pathlib import Path

import pandas as pd
import pytest

from bigrec_cli.data import event_files, order_and_deduplicate, split_by_time
from bigrec_cli.events import parse_timestamps
from bigrec_cli.project import ProjectDir
from tests.conftest import ML100K, SAMPLE, invoke


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def items_csv(tmp_path):
    return write(tmp_path / "items.csv", "item_id,title,description\na,Alpha,first\nb,Beta,second\nc,Gamma,third\n")


def test_split_last_is_test_second_last_is_valid():
    events = pd.DataFrame(
        {"user_id": ["u"] * 4 + ["v"] * 2, "item_id": list("abcdab"), "timestamp": [1, 2, 3, 4, 1, 2]}
    )
    assert split_by_time(events).tolist() == ["train", "train", "valid", "test", "train", "train"]


def test_deduplicate_keeps_latest_and_orders_by_time():
    events = pd.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["a", "b", "a"], "timestamp": [3.0, 1.0, 5.0]})
    kept, dropped = order_and_deduplicate(events, "latest")
    assert dropped == 1
    assert kept["item_id"].tolist() == ["b", "a"]
    assert kept["timestamp"].tolist() == [1.0, 5.0]


def test_timestamps_unix_and_iso():
    seconds, bad = parse_timestamps(pd.Series(["0", "1700000000", "1970-01-02T00:00:00Z", "yesterday", "-5", "nan"]))
    assert seconds[:3].tolist() == [0.0, 1_700_000_000.0, 86_400.0]
    assert bad.tolist() == [False, False, False, True, True, True]


def test_preprocess_sample_data_writes_parquet_and_split(project):
    result = invoke(
        "preprocess", "--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv"), "--json"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["num_items"] == 400 and summary["num_users"] == 300
    assert summary["num_valid"] == summary["num_test"] == 300
    events = pd.read_parquet(ProjectDir(project).events_path)
    last = events.groupby("user_id").tail(1)
    assert set(last["split"]) == {"test"}
    assert events.groupby("user_id")["timestamp"].apply(lambda series: series.is_monotonic_increasing).all()


@pytest.mark.parametrize(
    "events_text, expected",
    [
        ("user_id,item_id\nu,a\n", "has no column 'timestamp'"),
        ("user_id;item_id;timestamp\nu;a;1\n", "is the delimiter a comma?"),
        ("user_id,item_id,timestamp\nu,a,1\nu,b,not-a-time\n", "unparseable timestamp 'not-a-time' at line 3"),
        ("user_id,item_id,timestamp\nu,a,1\nu,zzz,2\n", "item_id 'zzz' has no entry"),
        ("user_id,item_id,timestamp\n", "has a header but no events"),
        ("", "is empty"),
        ("user_id,item_id,timestamp,rating\nu,a,1,inf\n", "rating is not a finite number at line 2"),
    ],
)
def test_bad_events_fail_with_one_line_and_change_nothing(tmp_path, project, items_csv, events_text, expected):
    events = write(tmp_path / "events.csv", events_text)
    result = invoke("preprocess", "--events", str(events), "--items", str(items_csv))
    assert result.exit_code == 1
    assert expected in result.stderr
    assert "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "data").exists()


def event_bytes(project: Path) -> dict[str, bytes]:
    """Every events file of the data version in use (its shards), by name."""
    return {path.name: path.read_bytes() for path in event_files(ProjectDir(project))}


def test_failed_preprocess_keeps_previous_data(tmp_path, project, items_csv):
    good = write(tmp_path / "good.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    assert invoke("preprocess", "--events", str(good), "--items", str(items_csv)).exit_code == 0
    before = event_bytes(project)
    bad = write(tmp_path / "bad.csv", "user_id,item_id,timestamp\nu,a,oops\n")
    assert invoke("preprocess", "--events", str(bad), "--items", str(items_csv)).exit_code == 1
    assert event_bytes(project) == before


def test_a_second_writer_of_the_data_is_refused_while_one_writes(tmp_path, project, items_csv):
    import fcntl
    import os

    good = write(tmp_path / "good.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    assert invoke("preprocess", "--events", str(good), "--items", str(items_csv)).exit_code == 0
    before = event_bytes(project)
    staging = project / "data" / ".v-00000000000000000000-abcdef.tmp"  # what a running preprocess writes into
    staging.mkdir()
    # a long preprocess in another process holds the data's write lock
    holder = os.open(project / "data" / ".write.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    os.pwrite(holder, b"4242\n", 0)
    try:
        other = write(tmp_path / "other.csv", "user_id,item_id,timestamp\nv,a,1\nv,b,2\nv,c,3\n")
        refused = invoke("preprocess", "--events", str(other), "--items", str(items_csv))
        assert refused.exit_code == 1 and "another bigrec command (pid 4242) is writing" in refused.stderr
        forgot = invoke("forget-user", "u")
        assert forgot.exit_code == 1 and "pid 4242" in forgot.stderr
        assert staging.is_dir(), "the running writer's staging folder is left alone"
        assert event_bytes(project) == before
    finally:
        os.close(holder)
    staging.rmdir()
    assert invoke("preprocess", "--events", str(other), "--items", str(items_csv)).exit_code == 0, "free again"


def test_unknown_items_can_be_dropped(tmp_path, project, items_csv):
    events = write(
        tmp_path / "e.jsonl",
        '{"user_id":"u","item_id":"a","timestamp":1}\n{"user_id":"u","item_id":"x","timestamp":2}\n',
    )
    result = invoke("preprocess", "--events", str(events), "--items", str(items_csv), "--drop-unknown-items", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["num_events"] == 1


def test_duplicate_item_ids_in_catalog_are_refused(tmp_path, project):
    items = write(tmp_path / "items.csv", "item_id,title\na,A\na,B\n")
    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,a,1\n")
    result = invoke("preprocess", "--events", str(events), "--items", str(items))
    assert result.exit_code == 1 and "repeats at line 3" in result.stderr


@pytest.mark.ml100k
@pytest.mark.skipif(not ML100K.exists(), reason="../shared/data/ml-100k is absent")
def test_movielens_100k_reads_as_unzipped(project):
    result = invoke("preprocess", "--format", "movielens-100k", "--source", str(ML100K), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["num_events"], summary["num_users"], summary["num_items"]) == (100_000, 943, 1682)
    items = pd.read_parquet(ProjectDir(project).items_path).set_index("item_id")
    assert items.loc["1", "title"] == "Toy Story (1995)"
    assert "Animation, Children's, Comedy" in items.loc["1", "text"]


def test_row_order_of_the_input_changes_nothing(tmp_path):
    """Ties in time are ordered by content, the catalog by id: shuffled files give the same data, split and
    fingerprint (so the same model and metrics, since training is deterministic for given data and seed)."""
    events = pd.read_csv(SAMPLE / "events.csv", dtype=str)
    events["timestamp"] = (events["timestamp"].astype(float) // 86400 * 86400).astype(int).astype(str)  # many ties
    items = pd.read_csv(SAMPLE / "items.csv", dtype=str)
    results = []
    for seed in (0, 1):
        folder = tmp_path / f"shuffled{seed}"
        folder.mkdir()
        events.sample(frac=1.0, random_state=seed).to_csv(folder / "events.csv", index=False)
        items.sample(frac=1.0, random_state=seed).to_csv(folder / "items.csv", index=False)
        project = folder / "project"
        args = ["preprocess", "--project-dir", str(project), "--events", str(folder / "events.csv")]
        result = invoke(*args, "--items", str(folder / "items.csv"))
        assert result.exit_code == 0, result.stderr
        results.append(
            (
                pd.read_parquet(ProjectDir(project).events_path),
                pd.read_parquet(ProjectDir(project).items_path),
                json.loads((ProjectDir(project).data_meta_path).read_text())["fingerprint"],
            )
        )
    (events_a, items_a, fingerprint_a), (events_b, items_b, fingerprint_b) = results
    pd.testing.assert_frame_equal(events_a, events_b)
    pd.testing.assert_frame_equal(items_a, items_b)
    assert fingerprint_a == fingerprint_b
    assert events_a.duplicated(["user_id", "timestamp"]).sum() > 100, "the data really has ties"


def test_data_is_replaced_as_one_version(tmp_path, project, items_csv):
    """events, items and data.json of one preprocess are switched in together, by one atomic write of
    data/CURRENT: a crash after the new Parquet files are written leaves the old version in use, whole."""
    import signal
    import subprocess
    import sys

    from bigrec_cli.data import load_events

    first = write(tmp_path / "first.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    second = write(tmp_path / "second.csv", "user_id,item_id,timestamp\nv,a,1\nv,b,2\nv,c,3\nv,a,4\n")
    assert invoke("preprocess", "--events", str(first), "--items", str(items_csv)).exit_code == 0
    layout = ProjectDir(project)
    old_dir, old_meta = layout.data_dir, json.loads(layout.data_meta_path.read_text())

    # A real SIGKILL once both Parquet files of the new version are written, before its data.json: no cleanup runs.
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from bigrec_cli import data\n"
        "from bigrec_cli.project import ProjectDir\n"
        "data.atomic_write_json = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "data.preprocess(ProjectDir(Path(sys.argv[1])), events_path=Path(sys.argv[2]), items_path=Path(sys.argv[3]))\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(project), str(second), str(items_csv)])
    assert killed.returncode == -signal.SIGKILL
    assert layout.data_dir == old_dir and json.loads(layout.data_meta_path.read_text()) == old_meta
    assert load_events(layout)["user_id"].unique().tolist() == ["u"]
    leftovers = [path.name for path in (project / "data").iterdir() if path.name.startswith(".v-")]
    assert len(leftovers) == 1, "the killed run's staging folder is all that is left"
    for _ in range(3):
        assert invoke("preprocess", "--events", str(second), "--items", str(items_csv)).exit_code == 0
    versions = [path for path in (project / "data").iterdir() if path.is_dir()]
    assert len(versions) == 2, "the version in use and the one before it; the killed run's staging folder is gone"
    assert load_events(layout)["user_id"].unique().tolist() == ["v"]
    assert json.loads(layout.data_meta_path.read_text())["num_events"] == 4


def test_projects_from_before_data_versions_still_read(tmp_path, project, items_csv):
    from bigrec_cli.data import load_events

    events = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    assert invoke("preprocess", "--events", str(events), "--items", str(items_csv)).exit_code == 0
    version = ProjectDir(project).data_dir
    for path in version.iterdir():  # the layout of earlier versions: data/events.parquet, … and no CURRENT
        path.rename(project / "data" / path.name)
    version.rmdir()
    (project / "data" / "CURRENT").unlink()
    assert ProjectDir(project).data_dir == project / "data"
    assert len(load_events(ProjectDir(project))) == 3
    assert invoke("preprocess", "--events", str(events), "--items", str(items_csv)).exit_code == 0
    files = sorted(path.name for path in (project / "data").iterdir() if path.is_file())
    assert files == [".write.lock", "CURRENT"], "the old layout's files are gone"


def test_events_from_a_folder_a_glob_and_hive_partitions(tmp_path, project, items_csv):
    """A data-lake layout: Parquet and CSV files under hive-style folders, a `_SUCCESS` marker; the same events
    read from the folder and from a glob, and the folder's `event=` value fills the column the files lack."""
    from bigrec_cli.data import load_events

    lake = tmp_path / "lake"
    (lake / "event=purchase").mkdir(parents=True)
    (lake / "event=view").mkdir()
    pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": ["1", "3"]}).to_parquet(
        lake / "event=purchase" / "part-0.parquet"
    )
    write(lake / "event=view" / "part-0.csv", "user_id,item_id,timestamp\nu,c,2\nv,a,1\nv,b,2\nv,c,3\n")
    write(lake / "_SUCCESS", "")
    pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}).to_parquet(lake / "event=view" / "part-9.parquet")
    assert invoke("preprocess", "--events", str(lake), "--items", str(items_csv)).exit_code == 0
    events = load_events(ProjectDir(project))
    assert list(zip(events["user_id"], events["item_id"], events["event"]))[:3] == [
        ("u", "a", "purchase"),
        ("u", "c", "view"),
        ("u", "b", "purchase"),
    ]
    assert len(events) == 6
    fingerprint = json.loads(ProjectDir(project).data_meta_path.read_text())["fingerprint"]
    pattern = str(lake / "**" / "part-*")
    assert invoke("preprocess", "--events", pattern, "--items", str(items_csv)).exit_code == 0
    assert json.loads(ProjectDir(project).data_meta_path.read_text())["fingerprint"] == fingerprint
    write(lake / "event=view" / "part-1.csv", "user_id,item_id,timestamp\nw,a,1\nw,zzz,2\n")
    bad = invoke("preprocess", "--events", str(lake), "--items", str(items_csv))
    assert bad.exit_code == 1 and "part-1.csv: item_id 'zzz'" in bad.stderr and "line 3" in bad.stderr
    empty = invoke("preprocess", "--events", str(tmp_path / "nothing-*.csv"), "--items", str(items_csv))
    assert empty.exit_code == 1 and "matches no file" in empty.stderr
    bracketed = write(tmp_path / "events[1].csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    assert invoke("preprocess", "--events", str(bracketed), "--items", str(items_csv)).exit_code == 0
