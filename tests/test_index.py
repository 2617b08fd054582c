"""The approximate top-K index (faiss HNSW): real indexes, the real CLI, answers compared with exact ranking."""

import json

import numpy as np
import pytest

from bigrec_cli.annindex import INDEX_MIN_ITEMS, START_BREADTH, ItemIndex, index_kind, num_lists
from bigrec_cli.errors import ArtifactError, ConfigError
from bigrec_cli.project import ProjectDir
from bigrec_cli.recommend import widen
from tests.conftest import SAMPLE, invoke


def clustered(rng: np.random.Generator, items: int, dim: int, clusters: int = 200) -> np.ndarray:
    """Item vectors in clusters (as trained vectors are), not i.i.d. noise."""
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, items)] + 0.3 * rng.normal(size=(items, dim))).astype("float32")


@pytest.mark.parametrize(("kind", "breadth"), [("ivf", 64), ("hnsw", 256)])
def test_index_finds_the_exact_top_10_with_the_bias_folded_in(tmp_path, kind, breadth):
    rng = np.random.default_rng(0)
    vectors, bias = clustered(rng, 20_000, 16), rng.normal(scale=2.0, size=20_000).astype("float32")
    index = ItemIndex.build(vectors, bias, kind)
    index.breadth = breadth  # train widens it until validation recall reaches 0.98
    assert index.kind == kind
    users = rng.normal(size=(200, 16)).astype("float32")
    exact = np.argsort(-(users @ vectors.T + bias), axis=1)[:, :10]
    found = index.candidates(users, np.full(len(users), 10))
    recall = np.mean([len(np.intersect1d(found[row], exact[row])) / 10 for row in range(len(users))])
    assert recall >= 0.95
    # a user's candidates never depend on the other users searched with it (a deeper search for one is its own)
    deeper = index.candidates(users, np.r_[np.full(len(users) - 1, 10), 3_000])
    assert all(np.array_equal(deeper[row], found[row]) for row in range(len(users) - 1))
    # the bias counts: without it the answers differ
    plain = np.argsort(-(users @ vectors.T), axis=1)[:, :10]
    assert np.mean([len(np.intersect1d(plain[row], exact[row])) / 10 for row in range(len(users))]) < 0.9
    # written and read back (faiss' own format), then grown with new items that become findable
    path = tmp_path / "items.faiss"
    index.save(path)
    again = ItemIndex.load(path)
    assert again.num_items == 20_000 and again.kind == kind
    for mine, theirs in zip(again.candidates(users[:5], np.full(5, 10)), index.candidates(users[:5], np.full(5, 10))):
        np.testing.assert_array_equal(mine, theirs)
    # a new item along user 0's query [u, 1], as long as the longest indexed item: the best logit there can be
    query = np.append(users[0], 1.0)
    radius = float(np.sqrt((vectors.astype("float64") ** 2).sum(axis=1) + bias.astype("float64") ** 2).max())
    if kind == "hnsw":
        assert again.radius == pytest.approx(radius, rel=1e-5)  # every indexed point lies on that sphere
    point = 0.999 * radius * query / np.linalg.norm(query)
    assert point @ query > (vectors @ users[0] + bias).max()
    again.extend(point[None, :16].astype("float32"), point[16:].astype("float32"))
    assert again.num_items == 20_001 and again.candidates(users[:1], np.ones(1))[0][0] == 20_000
    path.write_bytes(b"not an index")
    with pytest.raises(ArtifactError, match="not a faiss index"):
        ItemIndex.load(path)


@pytest.mark.parametrize(("kind", "narrow", "wide"), [("ivf", 1, 128), ("hnsw", 10, 1024)])
def test_a_wider_search_finds_more_and_the_index_file_keeps_its_breadth(tmp_path, kind, narrow, wide):
    rng = np.random.default_rng(1)
    vectors, bias = clustered(rng, 20_000, 16), rng.normal(scale=2.0, size=20_000).astype("float32")
    users = rng.normal(size=(300, 16)).astype("float32")
    exact = np.argsort(-(users @ vectors.T + bias), axis=1)[:, :10]
    index = ItemIndex.build(vectors, bias, kind)
    assert index.breadth == START_BREADTH[kind]

    def recall() -> float:
        found = index.candidates(users, np.full(len(users), 10))
        return float(np.mean([len(np.intersect1d(found[row], exact[row])) / 10 for row in range(len(users))]))

    index.breadth = narrow
    low = recall()
    index.breadth = wide
    assert recall() > low and recall() >= 0.99
    index.save(tmp_path / "items.faiss")
    assert ItemIndex.load(tmp_path / "items.faiss").breadth == wide


def test_an_hnsw_file_written_before_breadths_were_kept_searches_as_it_did(tmp_path):
    rng = np.random.default_rng(2)
    vectors, bias = clustered(rng, 2_000, 8), rng.normal(size=2_000).astype("float32")
    index = ItemIndex.build(vectors, bias, "hnsw")
    index.index.hnsw.efSearch = 16  # what such files hold: faiss' default; they were searched at 256
    index.save(tmp_path / "items.hnsw")
    assert ItemIndex.load(tmp_path / "items.hnsw").breadth == START_BREADTH["hnsw"]


def test_widening_doubles_the_breadth_until_recall_reaches_the_target():
    rng = np.random.default_rng(3)
    vectors, bias = clustered(rng, 20_000, 16), rng.normal(scale=2.0, size=20_000).astype("float32")
    users = rng.normal(size=(200, 16)).astype("float32")
    exact = np.argsort(-(users @ vectors.T + bias), axis=1)[:, :10]
    index = ItemIndex.build(vectors, bias, "ivf")
    assert index.index.nlist == num_lists(20_000) == 283 and index.max_breadth == 283

    def recall() -> float:
        found = index.candidates(users, np.full(len(users), 10))
        return float(np.mean([len(np.intersect1d(found[row], exact[row])) / 10 for row in range(len(users))]))

    tried = widen(index, recall, target=0.99)
    *doubled, halfway = list(tried)
    assert doubled[0] == START_BREADTH["ivf"] and all(b == 2 * a for a, b in zip(doubled, doubled[1:]))
    assert tried[doubled[-1]] >= 0.99 and all(tried[breadth] < 0.99 for breadth in doubled[:-1])
    assert halfway == (doubled[-2] + doubled[-1]) // 2, "then once halfway back"
    reached = [breadth for breadth, value in tried.items() if value >= 0.99]
    assert index.breadth == min(reached), "the index stays at the narrowest breadth that reached the target"
    assert recall() == tried[index.breadth]
    # a target no breadth reaches: doubled up to the number of lists, the last step clipped (256 -> 283)
    index.breadth = START_BREADTH["ivf"]
    assert list(widen(index, recall, target=1.01)) == [16, 32, 64, 128, 256, 283] and index.breadth == 283
    assert list(widen(index, lambda: float("nan"), target=0.98)) == [283], "nothing to tell: no widening"
    assert list(widen(index, recall, target=None)) == [283]
    # a target the first doubling reaches: halfway back is 24 lists
    index.breadth = START_BREADTH["ivf"]
    assert list(widen(index, lambda: index.breadth / 32, target=0.7)) == [16, 32, 24] and index.breadth == 24
    index.breadth = START_BREADTH["ivf"]
    assert list(widen(index, lambda: index.breadth / 32, target=0.8)) == [16, 32, 24] and index.breadth == 32


def test_an_index_needs_a_known_kind_and_items():
    with pytest.raises(ConfigError, match="unknown index kind"):
        ItemIndex.build(np.zeros((5, 2), "float32"), np.zeros(5, "float32"), "annoy")
    with pytest.raises(ConfigError, match="catalog is empty"):
        ItemIndex.build(np.zeros((0, 2), "float32"), np.zeros(0, "float32"))


def test_auto_indexes_large_catalogs_only():
    assert index_kind("auto", INDEX_MIN_ITEMS - 1) is None and index_kind("auto", INDEX_MIN_ITEMS) == "ivf"
    assert index_kind("hnsw", 10) == "hnsw" and index_kind("ivf", 10) == "ivf" and index_kind("exact", 10**7) is None
    assert num_lists(1_000_000) == 2_000 and num_lists(400) == 10  # 2·sqrt(N), at least 39 items a list


def recommended(project, user: str, *extra: str) -> list[str]:
    result = invoke("recommend", "--project-dir", str(project), "--user", user, "--k", "20", "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return [item["item_id"] for item in json.loads(result.stdout)["items"]]


def test_a_run_with_an_index_answers_as_exact_ranking_and_grows_with_the_catalog(trained_copy):
    result = invoke("train", "--project-dir", str(trained_copy), "--epochs", "1", "--index", "ivf", "--json")
    assert result.exit_code == 0, result.stderr
    run_dir = trained_copy / "runs" / json.loads(result.stdout)["run_id"]
    metrics = json.loads((run_dir / "metrics.json").read_text())["index"]
    assert metrics["kind"] == "ivf" and metrics["recall@10"] == 1.0 and metrics["recall_cases"] > 0
    # recall already at the target: the breadth train starts from (here every one of the 10 lists) is kept
    assert metrics["breadth"] == 10 and metrics["recall@10_by_breadth"] == {"10": 1.0}
    assert "items.faiss" in json.loads((run_dir / "manifest.json").read_text())["files"]  # checksummed
    for user in ("u0007", "u0100", "u0250"):
        assert recommended(trained_copy, user) == recommended(trained_copy, user, "--index", "exact")
    evaluation = invoke("evaluate", "--project-dir", str(trained_copy), "--no-baselines", "--json")
    assert evaluation.exit_code == 0, evaluation.stderr
    assert json.loads(evaluation.stdout)["index"]["recall@10"] == 1.0
    # the server answers through the index, the same as exact scoring, and reports the index's recall
    from fastapi.testclient import TestClient

    from bigrec_cli.serve import project_app

    answers = {}
    for mode in ("auto", "exact"):
        with TestClient(project_app(ProjectDir(trained_copy), warm_users=0, index=mode)) as client:
            answer = client.get("/recommend", params={"user": "u0007", "k": 20})
            assert answer.status_code == 200, answer.text
            answers[mode] = [item["item_id"] for item in answer.json()["items"]]
            recall = [line for line in client.get("/metrics").text.splitlines() if line.startswith("bigrec_index")]
            assert recall == (
                ["bigrec_index_recall_at_10 1.0"] if mode == "auto" else ["bigrec_index_recall_at_10 NaN"]
            )
    assert answers["auto"] == answers["exact"] == recommended(trained_copy, "u0007")
    # a later extract adds an item: the index is extended when the run is loaded, and the item can be answered
    invoke("ingest-feedback", "--project-dir", str(trained_copy), str(SAMPLE / "feedback_demo.csv"))
    assert invoke("extract", "--project-dir", str(trained_copy)).exit_code == 0
    from bigrec_cli.recommend import Recommender

    recommender = Recommender(ProjectDir(trained_copy))
    assert recommender.index.num_items == recommender.scorer.num_items == 401
    answer = recommender.recommend("u0001", k=400)["items"]
    assert "n0001" in {item["item_id"] for item in answer}
    # a run written before IVF names its index items.hnsw: still found
    before = [recommended(trained_copy, user, "--index", "ivf") for user in ("u0007", "u0100")]
    (run_dir / "items.faiss").rename(run_dir / "items.hnsw")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["files"]["items.hnsw"] = manifest["files"].pop("items.faiss")
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert [recommended(trained_copy, user, "--index", "ivf") for user in ("u0007", "u0100")] == before
    # asking for the other kind is refused, not quietly answered by this one
    other = invoke("recommend", "--project-dir", str(trained_copy), "--user", "u0007", "--index", "hnsw")
    assert other.exit_code == 1 and "has an ivf index, not hnsw" in other.stderr
    # a damaged index is refused by name, like every other file of a run
    (run_dir / "items.hnsw").write_bytes(b"damaged")
    damaged = invoke("recommend", "--project-dir", str(trained_copy), "--user", "u0007")
    assert damaged.exit_code == 1 and "items.hnsw" in damaged.stderr


def test_index_hnsw_needs_a_run_with_an_index(trained_copy):
    result = invoke("recommend", "--project-dir", str(trained_copy), "--user", "u0007", "--index", "hnsw")
    assert result.exit_code == 1 and "no approximate index" in result.stderr


def test_auto_keeps_only_an_index_whose_answers_agree_with_exact_ranking():
    from bigrec_cli.train import INDEX_MIN_RECALL, keeps_index

    assert keeps_index("auto", 0.99) and keeps_index("auto", INDEX_MIN_RECALL)
    assert not keeps_index("auto", 0.44)  # answers missing most of the exact top 10: exact scoring instead
    assert keeps_index("hnsw", 0.44) and keeps_index("ivf", 0.44)  # asked for: kept, recall in metrics.json
    assert keeps_index("auto", float("nan"))  # no validation users to measure it on
