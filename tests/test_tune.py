"""`bigrec tune` on the sample data with the tiny BERT: a real Optuna study in the project, resumable."""

import json
import sqlite3

import pytest

from bigrec_cli.config import TrainConfig
from bigrec_cli.errors import ConfigError
from bigrec_cli.project import ProjectDir
from bigrec_cli.tune import SEARCH_SPACE, parse_budget
from tests.conftest import invoke


def test_budgets_are_read_or_refused():
    assert parse_budget("30m") == 1800 and parse_budget("2h") == 7200 and parse_budget("1h30m") == 5400
    assert parse_budget("90s") == 90
    for text in ("", "soon", "30 minutes"):
        with pytest.raises(ConfigError):
            parse_budget(text)


def test_tune_writes_the_best_configuration_and_resumes(trained_copy, monkeypatch):
    (trained_copy / "bigrec.toml").write_text("[train]\nepochs = 2\n\n[serve]\nport = 9001\n")
    runs_before = sorted(path.name for path in (trained_copy / "runs").iterdir())
    first = invoke("tune", "--trials", "2", "--project-dir", str(trained_copy), "--json")
    assert first.exit_code == 0, first.stderr
    result = json.loads(first.stdout)
    assert len(result["trials"]) == 2 and set(result["best"]) >= {"learning_rate", "dim", "max_len", "loss"}
    defaults = TrainConfig()
    assert {name: result["trials"][0][name] for name in SEARCH_SPACE} == {
        name: getattr(defaults, name) for name in SEARCH_SPACE
    }, "a new study starts from the configuration in use"
    shown = {
        (row["command"], row["option"]): row
        for row in json.loads(invoke("config", "show", "--project-dir", str(trained_copy), "--json").stdout)
    }
    assert shown[("train", "dim")]["value"] == result["best"]["dim"]
    assert shown[("train", "dim")]["source"] == "bigrec.toml" and shown[("serve", "port")]["value"] == 9001
    assert shown[("train", "epochs")]["value"] == 2, "options tune does not search are kept"
    monkeypatch.setattr("bigrec_cli.tune.MIN_GAIN", 100.0)  # no trial can beat the configuration in use by that
    again = json.loads(invoke("tune", "--trials", "1", "--project-dir", str(trained_copy), "--json").stdout)
    assert len(again["trials"]) == 3, "the study in tune.sqlite3 is continued"
    assert again["best"] == result["best"], "the configuration in use is kept"
    assert again["kept_current"] == ((again["trials"][2]["val_ndcg@10"] or 0) > result["best_value"])
    with sqlite3.connect(trained_copy / "tune.sqlite3") as connection:
        assert connection.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 3
    status = json.loads(invoke("status", "--project-dir", str(trained_copy), "--json").stdout)
    assert status["tuning"]["trials"] == 3 and status["bigrec_toml_train"]["dim"] == result["best"]["dim"]
    runs_after = sorted(path.name for path in (trained_copy / "runs").iterdir())
    assert runs_after == runs_before, "trial runs are deleted; current is untouched"


def test_the_starting_point_keeps_only_values_the_search_space_holds():
    from bigrec_cli.tune import starting_point

    point = starting_point(TrainConfig(dim=96, learning_rate=0.02, max_len=50, id_dropout=0.1))
    assert "dim" not in point and "learning_rate" not in point, "drawn by the sampler instead"
    assert point["max_len"] == 50 and point["id_dropout"] == 0.1 and point["lstm_units"] == 128


def test_a_study_from_another_search_space_is_refused_with_the_fix(tmp_path):
    import optuna

    from bigrec_cli.tune import TUNE_DB, require_same_space

    study = optuna.create_study(study_name="bigrec", storage=f"sqlite:///{tmp_path / TUNE_DB}")
    study.add_trial(
        optuna.trial.create_trial(
            params={"id_dropout": 0.2},
            distributions={"id_dropout": optuna.distributions.FloatDistribution(0.0, 0.5)},
            value=0.1,
        )
    )
    with pytest.raises(ConfigError, match="searched id_dropout differently"):
        require_same_space(study, ProjectDir(tmp_path))


def test_a_share_of_users_is_chosen_by_user_id_whatever_the_order():
    from bigrec_cli.train import users_share

    sequences = {f"u{number}": [number] for number in range(2_000)}
    half = users_share(sequences, 0.5, seed=0)
    assert 900 < len(half) < 1_100
    assert set(users_share(dict(reversed(sequences.items())), 0.5, seed=0)) == set(half)
    assert set(users_share(sequences, 0.5, seed=1)) != set(half), "another seed, other users"
    assert users_share(sequences, 1.0, seed=0) is sequences
    for share in (0.0, 1.5):
        with pytest.raises(ConfigError):
            users_share(sequences, share, seed=0)


def test_on_large_data_each_trial_trains_on_a_share_of_users(trained_copy, monkeypatch):
    from bigrec_cli import train as training

    num_train = json.loads(next((trained_copy / "data").glob("*/data.json")).read_text())["num_train"]
    monkeypatch.setattr("bigrec_cli.tune.SCREEN_EVENTS", num_train // 2)  # the sample data counts as large
    real, shares = training.users_share, []

    def recorded(sequences, share, seed):
        kept = real(sequences, share, seed)
        shares.append((share, len(kept) / len(sequences)))
        return kept

    monkeypatch.setattr(training, "users_share", recorded)
    (trained_copy / "bigrec.toml").write_text("[train]\nepochs = 1\n")
    outcome = invoke("tune", "--trials", "1", "--project-dir", str(trained_copy), "--json")
    assert outcome.exit_code == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert result["train_share"] == (num_train // 2) / num_train and len(shares) == 1
    share, kept = shares[0]
    assert share == result["train_share"] and 0.3 < kept < 0.7
