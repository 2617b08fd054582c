"""`bigrec train` takes every field of TrainConfig as an option, with TrainConfig's default: one place only."""

import dataclasses
import inspect

from bigrec_cli import cli
from bigrec_cli.config import TrainConfig


def test_train_options_are_the_config_fields_with_its_defaults():
    parameters = inspect.signature(cli.train).parameters
    # --workers and --ray-address say where training runs, not what it trains: they are not saved with the run
    launch = ("workers", "ray_address")
    options = {name for name in parameters if name not in ("ctx", "project_dir", "as_json", *launch)}
    assert options == {field.name for field in dataclasses.fields(TrainConfig)}
    for field in dataclasses.fields(TrainConfig):
        default = parameters[field.name].default
        assert getattr(default, "value", default) == field.default, field.name
