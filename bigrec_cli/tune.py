"""`bigrec tune`: hyper-parameter search on the validation split with Optuna, resumable, within a budget.

Each trial trains a model (never promoted, its run deleted afterwards) and is scored by validation NDCG@10, the
figure early stopping and the item-to-item term already use; the test split is never read. Optuna's TPE sampler
proposes the next configuration, and a median pruner stops a trial whose per-epoch validation NDCG@10 is below
the median of earlier trials at the same epoch. The study lives in `tune.sqlite3` in the project directory, so a
second `bigrec tune` continues it. The best configuration is written into `bigrec.toml`'s [train] table, which
the next `train` and `retrain` read. A new study's first trial is the configuration in use (the defaults, or
bigrec.toml's [train]), so the search starts from it and never writes a configuration that validated worse; one
that validated better by less than 1% (noise) does not replace it either.

On large data a budget would buy one or two full trainings, too few for a search. Beyond SCREEN_EVENTS training
events, each trial's LSTM therefore trains on a seeded share of the users holding about that many events (the same
users in every trial, the configuration in use included), while validation, the item-to-item term and the cold
boost see every user: configurations are screened at lower cost and compared with one another on equal terms.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable

from bigrec_cli.config import CONFIG_SECTIONS, PROJECT_CONFIG, TrainConfig, read_project_config
from bigrec_cli.errors import ConfigError
from bigrec_cli.project import ProjectDir, atomic_write_bytes, read_json

TUNE_DB = "tune.sqlite3"
MIN_GAIN = 0.01  # relative validation NDCG@10 a trial must gain over the configuration in use to replace it
SCREEN_EVENTS = 100_000  # beyond this many training events, trials train the LSTM on a share of users this size
STUDY_NAME = "bigrec"
SEARCH_SPACE = {
    "learning_rate": ("log", 3e-4, 1e-2),
    "dim": ("choice", (32, 64, 128)),
    "lstm_units": ("choice", (64, 128, 256)),
    "dropout": ("float", 0.0, 0.5),
    "negatives": ("choice", (8, 16, 32, 64)),
    # choices, not a range: 0 exactly is the setting where new items borrow and get the cold boost
    "id_dropout": ("choice", (0.0, 0.1, 0.25, 0.5)),
    "max_len": ("choice", (50, 100, 200)),
    "loss": ("choice", ("bce", "gbce")),
}


@dataclass(frozen=True)
class TuneResult:
    """What a tuning session found."""

    trials: list[dict]
    best: dict
    best_value: float
    written_to: str
    kept_current: bool = False  # the best trial beat the configuration in use by less than MIN_GAIN
    train_share: float = 1.0  # the share of users each trial's LSTM trained on


def parse_budget(text: str) -> float:
    """Seconds in a budget such as `30m`, `2h`, `90s` or `1h30m`."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ConfigError(f"cannot read the budget {text!r}", hint="write it like 30m, 2h, 90s or 1h30m")
    hours, minutes, seconds = (float(value or 0) for value in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def suggest(trial, base: TrainConfig) -> TrainConfig:
    """A configuration for one trial: the base one with the searched parameters drawn by the sampler."""
    values: dict[str, Any] = {}
    for name, (kind, *spec) in SEARCH_SPACE.items():
        if kind == "log":
            values[name] = trial.suggest_float(name, spec[0], spec[1], log=True)
        elif kind == "float":
            values[name] = trial.suggest_float(name, spec[0], spec[1])
        else:
            values[name] = trial.suggest_categorical(name, list(spec[0]))
    return TrainConfig.from_dict({**base.to_dict(), **values})


def starting_point(config: TrainConfig) -> dict[str, Any]:
    """The searched parameters of a configuration that lie in the search space: the first trial of a new study
    (a value outside it, e.g. `dim = 96` in bigrec.toml, is drawn by the sampler instead)."""
    point = {}
    for name, (kind, *spec) in SEARCH_SPACE.items():
        value = getattr(config, name)
        if (spec[0] <= value <= spec[1]) if kind in ("log", "float") else value in spec[0]:
            point[name] = value
    return point


def require_same_space(study, project: ProjectDir) -> None:
    """Refuse to continue a study whose trials searched a parameter as another kind (a range, not choices): Optuna
    cannot mix the two, and would fail inside the first trial."""
    import optuna

    kinds = {"log": optuna.distributions.FloatDistribution, "float": optuna.distributions.FloatDistribution}
    for trial in study.trials:
        for name, distribution in trial.distributions.items():
            expected = kinds.get(SEARCH_SPACE.get(name, ("choice",))[0], optuna.distributions.CategoricalDistribution)
            if not isinstance(distribution, expected):
                raise ConfigError(
                    f"{project.root / TUNE_DB} holds a study that searched {name} differently (an earlier version)",
                    hint=f"move {TUNE_DB} aside to start a new study; bigrec.toml keeps what it found",
                )


def write_train_table(project: ProjectDir, values: dict[str, Any]) -> None:
    """Set [train] options in `bigrec.toml`, keeping every other table and option (comments are not kept)."""
    tables = read_project_config(project.root)
    tables["train"] = {**tables.get("train", {}), **values}
    lines = [f"# bigrec options; `bigrec tune` wrote [train] on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    for section in CONFIG_SECTIONS:
        if tables.get(section):
            lines += ["", f"[{section}]", *(f"{key} = {toml_value(value)}" for key, value in tables[section].items())]
    atomic_write_bytes(project.root / PROJECT_CONFIG, ("\n".join(lines) + "\n").encode("utf-8"))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def tune(
    project: ProjectDir,
    *,
    budget_seconds: float | None = None,
    trials: int | None = None,
    seed: int = 0,
    on_trial: Callable[[dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TuneResult:
    """Search the configuration with the best validation NDCG@10 and write it into `bigrec.toml`.

    Args:
        project: The project (`preprocess` and `extract` must have run).
        budget_seconds: Stop starting trials after this long (a running trial finishes).
        trials: Run at most this many trials in this session.
        seed: Seeds the sampler (and every trial's training).
        on_trial: Called with each finished trial's record.
        on_epoch: Called with each epoch's record of the running trial.
    """
    import optuna

    from bigrec_cli import train as training

    if budget_seconds is None and trials is None:
        raise ConfigError("tune needs a budget", hint="pass --budget 30m and/or --trials N")
    project.require_features()
    share = screening_share(project)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = TrainConfig.from_dict({**TrainConfig().to_dict(), **read_project_config(project.root).get("train", {})})
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{project.root / TUNE_DB}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed + len(optuna_trials(project))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
    )
    if not study.trials:  # a new study starts from the configuration in use, so tune never ends below it
        study.enqueue_trial(starting_point(base))
    require_same_space(study, project)

    def objective(trial) -> float:
        config = suggest(trial, TrainConfig.from_dict({**base.to_dict(), "seed": seed}))

        def report(entry: dict) -> None:
            if on_epoch is not None:
                on_epoch({**entry, "trial": trial.number})
            trial.report(entry["val_ndcg@10"], entry["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = training.train(project, config, on_epoch=report, promote=False, train_share=share)
        shutil.rmtree(result.run_dir, ignore_errors=True)
        return result.metrics["val_ndcg@10"]

    def finished(_, trial) -> None:
        if on_trial is not None:
            on_trial(trial_record(trial))

    study.optimize(objective, n_trials=trials, timeout=budget_seconds, callbacks=[finished], catch=())
    completed = [trial for trial in study.trials if trial.state.name == "COMPLETE"]
    if not completed:
        raise ConfigError("no trial completed within the budget", hint="give a longer --budget or more --trials")
    best = study.best_trial
    current = next((trial for trial in completed if trial.params == starting_point(base)), None)
    # A winner by less than MIN_GAIN is validation noise (seeds alone move validation NDCG@10 by ~2%): keep the
    # configuration in use rather than trade it for a lucky draw.
    kept = current is not None and best.number != current.number and best.value < current.value * (1 + MIN_GAIN)
    chosen = current if kept else best
    write_train_table(project, chosen.params)
    return TuneResult(
        trials=[trial_record(trial) for trial in study.trials],
        best=chosen.params,
        best_value=float(chosen.value),
        written_to=str(project.root / PROJECT_CONFIG),
        kept_current=kept,
        train_share=share,
    )


def screening_share(project: ProjectDir) -> float:
    """The share of users each trial's LSTM trains on: all of them up to SCREEN_EVENTS training events; beyond,
    as many as hold about that many, so that a budget buys several trials rather than one or two. Every trial, the
    configuration in use among them, sees the same users, and validation, the item-to-item term and the cold boost
    see all of them."""
    num_train = read_json(project.data_meta_path).get("num_train", 0)
    return 1.0 if num_train <= SCREEN_EVENTS else SCREEN_EVENTS / num_train


def trial_record(trial) -> dict:
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "val_ndcg@10": trial.value,
        "epochs": len(trial.intermediate_values),
        **trial.params,
    }


def optuna_trials(project: ProjectDir) -> list:
    """The trials stored in the project's study so far (none before the first `tune`)."""
    if not (project.root / TUNE_DB).exists():
        return []
    import optuna

    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{project.root / TUNE_DB}").trials
    except KeyError:
        return []


def tuning_summary(project: ProjectDir) -> dict | None:
    """For `status`: how many trials ran and the best validation NDCG@10 (None before any `tune`)."""
    trials = [trial for trial in optuna_trials(project) if trial.state.name == "COMPLETE"]
    if not trials:
        return None
    best = max(trials, key=lambda trial: trial.value)
    return {"trials": len(trials), "best_val_ndcg@10": best.value, "best_trial": best.number}
