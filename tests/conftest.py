from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bigrec_cli.cli import app

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
ML100K = REPO.parent / "shared" / "data" / "ml-100k"


def pytest_collection_modifyitems(items):
    """Tests that train a model (through the shared trained project) belong to the slow tier."""
    for item in items:
        if {"trained_project", "trained_copy"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, cache_dir, tmp_path):
    """Every test gets its own project dir and a shared session cache (the tiny BERT is generated once)."""
    monkeypatch.setenv("BIGREC_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("BIGREC_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.setenv("BIGREC_BERT", "tiny")


def zero_scorer_arrays(rows: int, text_dim: int, dim: int, units: int) -> dict:
    """Every array a ScorerWeights needs (its pre-calibration, pre-type fields), zero and of the right shape."""
    import numpy as np

    return {
        "text_vectors": np.zeros((rows, text_dim)),
        "projection_kernel": np.zeros((text_dim, dim)),
        "projection_bias": np.zeros(dim),
        "id_embedding": np.zeros((rows, dim)),
        "item_bias": np.zeros(rows),
        "lstm_kernel": np.zeros((dim, 4 * units)),
        "lstm_recurrent_kernel": np.zeros((units, 4 * units)),
        "lstm_bias": np.zeros(4 * units),
        "user_kernel": np.zeros((units, dim)),
        "user_bias": np.zeros(dim),
        "history_kernel": np.zeros((dim, dim)),
        "head_kernel": np.zeros((dim, 1)),
        "head_bias": np.zeros(1),
        "cold_item_bias": np.zeros(1),
    }


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


@pytest.fixture
def project(tmp_path) -> Path:
    return tmp_path / "project"


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, cache_dir) -> Path:
    """sample_data preprocessed, extracted with the tiny BERT and trained briefly, once per session."""
    import os

    root = tmp_path_factory.mktemp("trained") / "project"
    os.environ["BIGREC_CACHE_DIR"] = str(cache_dir)
    os.environ["BIGREC_BERT"] = "tiny"
    steps = [
        [
            "preprocess",
            "--project-dir",
            str(root),
            "--events",
            str(SAMPLE / "events.csv"),
            "--items",
            str(SAMPLE / "items.csv"),
        ],
        ["extract", "--project-dir", str(root)],
        ["train", "--project-dir", str(root), "--epochs", "4", "--seed", "1"],
    ]
    for step in steps:
        result = CliRunner().invoke(app, step)
        assert result.exit_code == 0, (step, result.stdout, result.stderr, result.exception)
    return root


@pytest.fixture
def trained_copy(trained_project, tmp_path) -> Path:
    """A private copy of the trained project that a test may change."""
    destination = tmp_path / "trained"
    shutil.copytree(trained_project, destination)
    return destination
