"""Training configuration: one frozen dataclass, saved with every run."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bigrec_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROJECT_CONFIG = "bigrec.toml"
DEFAULT_NEGATIVE_EVENTS = ("cancel", "return", "dislike")  # event types that are negative behaviour by default
CONFIG_SECTIONS = ("extract", "train", "retrain", "serve")


def read_project_config(root: Path) -> dict[str, dict[str, Any]]:
    """Read `bigrec.toml` in the project directory: one table per command (extract, train, retrain, serve).

    Returns an empty dict when the file does not exist. Keys may use dashes or underscores.
    """
    path = root / PROJECT_CONFIG
    try:
        with open(path, "rb") as stream:
            values = tomllib.load(stream)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid TOML: {error}", hint="fix the file, e.g. [train] epochs = 20") from None
    unknown = [name for name in values if name not in CONFIG_SECTIONS or not isinstance(values[name], dict)]
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}]", hint=f"tables: {', '.join(CONFIG_SECTIONS)}")
    return {
        section: {key.replace("-", "_"): value for key, value in table.items()} for section, table in values.items()
    }


def parse_pairs(text: str, what: str, number: bool) -> dict[str, Any]:
    """Parse `a=b,c=d` (an `--event-map` or `--event-weights` value); raise ValueError naming the bad part."""
    pairs: dict[str, Any] = {}
    for part in filter(None, (piece.strip() for piece in (text or "").split(","))):
        name, equals, value = (piece.strip() for piece in part.partition("="))
        if not equals or not name or not value:
            raise ValueError(f"{what}: {part!r} is not name=value")
        if number:
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{what}: {part!r} needs a number after '='") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{what}: {part!r} needs a finite weight of 0 or more")
        pairs[name] = value
    return pairs


LOSSES = ("bce", "gbce")
WEIGHT_SCALES = ("log", "linear", "ignore")
DEFAULT_EVENT_WEIGHTS = "purchase=3,cart=2,click=1"  # other positive types weigh 1; negative types are never targets
NEGATIVE_SAMPLINGS = ("uniform", "popularity")
INDEX_KINDS = ("ivf", "hnsw")  # faiss indexes a run may have
INDEX_MODES = ("auto", "exact", *INDEX_KINDS)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the BERT → LSTM → sigmoid model.

    Args:
        epochs: Maximum passes over the training sequences.
        batch_size: Sequences per step.
        learning_rate: Adam's step size.
        max_len: Behaviour items the LSTM reads (older ones are dropped; shorter histories are padded).
        lstm_units: LSTM state size.
        dim: Size of the item and user vectors the sigmoid head compares.
        negatives: Sampled negative items per positive (per position).
        negative_sampling: `uniform` over the catalog, or `popularity` (∝ training count^0.75, as word2vec): harder
            negatives, so popularity alone earns less of the score.
        seed: Seeds numpy, Python and TensorFlow; same data + same seed gives the same metrics on CPU.
        patience: Epochs without a better validation NDCG@10 before stopping.
        id_embedding: Add a learned per-item vector to the projected BERT vector (cold items use text alone).
        fine_tune_bert: Put the BERT encoder in the graph and train it end to end (small catalogs).
        loss: `bce`, or `gbce` (generalised BCE, which calibrates the positive term for sampled negatives).
        gbce_t: gBCE calibration in [0, 1]; 0 is plain BCE.
        dropout: Dropout on the item vectors the LSTM reads.
        id_dropout: Share of item lookups that drop the learned ID vector during training, so the text path
            learns to stand alone (helps items with no interactions).
        history_mean: Add the projected mean of the history's item vectors to the user vector (the history as a
            set, beside the LSTM's order-aware state).
        item_item: Add an item-to-item term (EASE or ItemKNN on the training split) to the logit, weighted by the
            validation split (weight 0 when it does not help).
        event_weights: How much each positive event type weighs in the loss (`type=weight,…`; unnamed types 1).
        weight_scale: How the events' `weight` column (e.g. a quantity) scales them in the loss: `log` (1 + ln w),
            `linear` (w) or `ignore` (the default: every event of a type weighs the same).
        weight_average: Decay of the moving average of the weights that validation scores and the run keeps;
            0 keeps the raw weights of the best epoch.
        cold_boost_cost: How much of the validation NDCG@10 of known items (a share) new items may cost: items
            without interactions get the largest bias boost that costs at most this, measured on validation with
            known items posing as new ones (0: no boost; new items then score like their text neighbours).
        index: The approximate index a run gets for fast top-K: `auto` (a faiss IVF index from 50,000 items on),
            `ivf` or `hnsw` (that faiss index, always) or `exact` (never; every answer scores the whole catalog).
    """

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 3e-3
    max_len: int = 100
    lstm_units: int = 128
    dim: int = 64
    negatives: int = 16
    negative_sampling: str = "uniform"
    seed: int = 0
    patience: int = 5
    id_embedding: bool = True
    fine_tune_bert: bool = False
    loss: str = "bce"
    gbce_t: float = 0.75
    dropout: float = 0.2
    id_dropout: float = 0.0
    weight_average: float = 0.99
    history_mean: bool = True
    item_item: bool = True
    event_weights: str = DEFAULT_EVENT_WEIGHTS
    weight_scale: str = "ignore"
    cold_boost_cost: float = 0.05
    index: str = "auto"

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "max_len", "lstm_units", "dim", "negatives", "patience")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} must be at least 1, got {getattr(self, name)}",
                    hint=f"pass --{name.replace('_', '-')} 1 or more",
                )
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate {self.learning_rate} is outside (0, 1)", hint="try 1e-3")
        if self.negative_sampling not in NEGATIVE_SAMPLINGS:
            raise ConfigError(
                f"unknown negative sampling {self.negative_sampling!r}",
                hint=f"use one of {', '.join(NEGATIVE_SAMPLINGS)}",
            )
        if self.weight_scale not in WEIGHT_SCALES:
            raise ConfigError(
                f"unknown weight scale {self.weight_scale!r}", hint=f"use one of {', '.join(WEIGHT_SCALES)}"
            )
        try:
            parse_pairs(self.event_weights, "--event-weights", number=True)
        except ValueError as error:
            raise ConfigError(str(error), hint="write it as purchase=3,cart=2,click=1") from None
        if self.index not in INDEX_MODES:
            raise ConfigError(f"unknown index {self.index!r}", hint=f"use one of {', '.join(INDEX_MODES)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}", hint=f"use one of {', '.join(LOSSES)}")
        for name, value, upper in (
            ("gbce_t", self.gbce_t, 1.0),
            ("dropout", self.dropout, 0.999),
            ("id_dropout", self.id_dropout, 1.0),
            ("weight_average", self.weight_average, 0.9999),
            ("cold_boost_cost", self.cold_boost_cost, 0.5),
        ):
            if not 0 <= value <= upper:
                raise ConfigError(
                    f"{name} must be between 0 and {upper:g}, got {value}",
                    hint=f"pass --{name.replace('_', '-')} in that range",
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build a config from a saved dict, ignoring keys this version does not know."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})
