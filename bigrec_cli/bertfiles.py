"""Where BERT checkpoints live: user-given paths, and the default model's cache. No TensorFlow here."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bigrec_cli.errors import ConfigError

CONFIG_NAME = "bert_config.json"
CHECKPOINT_PREFIX = "bert_model.ckpt"
VOCAB_NAME = "vocab.txt"
SAMPLE_BERT_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "bert"
DEFAULT_MODEL = "tiny"


@dataclass(frozen=True)
class BertCheckpoint:
    """A Google-format BERT checkpoint as bert4keras takes it.

    Args:
        config_path: `bert_config.json`.
        checkpoint_path: The checkpoint prefix (`…/bert_model.ckpt`), without `.index`.
        dict_path: `vocab.txt`.
        name: A short name for reports.
    """

    config_path: Path
    checkpoint_path: Path
    dict_path: Path
    name: str

    def config(self) -> dict:
        """Return the parsed `bert_config.json`."""
        return json.loads(self.config_path.read_text(encoding="utf-8"))

    def fingerprint(self) -> str:
        """Return a SHA-256 over the config, the vocab and every checkpoint file."""
        digest = hashlib.sha256()
        files = [self.config_path, self.dict_path, *sorted(self.checkpoint_path.parent.glob(self.checkpoint_path.name + ".*"))]
        for path in files:
            digest.update(path.name.encode())
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def cache_dir() -> Path:
    """Return bigrec's user cache: `BIGREC_CACHE_DIR`, else `$XDG_CACHE_HOME/bigrec`, else `~/.cache/bigrec`."""
    if os.environ.get("BIGREC_CACHE_DIR"):
        return Path(os.environ["BIGREC_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bigrec"


def checkpoint_from_paths(config_path: Path, checkpoint_path: Path, dict_path: Path) -> BertCheckpoint:
    """Check that the three bert4keras paths exist and return them as a BertCheckpoint."""
    for path, option in ((config_path, "--config-path"), (dict_path, "--dict-path")):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist", hint=f"check {option}")
    if not Path(str(checkpoint_path) + ".index").is_file():
        raise ConfigError(
            f"no checkpoint at {checkpoint_path} ({checkpoint_path}.index is missing)",
            hint="--checkpoint-path takes the prefix, e.g. DIR/bert_model.ckpt",
        )
    return BertCheckpoint(config_path, checkpoint_path, dict_path, name=checkpoint_path.parent.name)


def checkpoint_from_dir(directory: Path) -> BertCheckpoint:
    """Return the checkpoint in a directory holding `bert_config.json`, `bert_model.ckpt*` and `vocab.txt`."""
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory", hint="--bert-dir takes a folder with bert_config.json")
    missing = [name for name in (CONFIG_NAME, VOCAB_NAME, CHECKPOINT_PREFIX + ".index") if not (directory / name).exists()]
    if missing:
        raise ConfigError(
            f"{directory} has no {', '.join(missing)}",
            hint="a Google-format BERT folder holds bert_config.json, bert_model.ckpt.* and vocab.txt",
        )
    return BertCheckpoint(directory / CONFIG_NAME, directory / CHECKPOINT_PREFIX, directory / VOCAB_NAME,
                          name=directory.name)  # fmt: skip


def tiny_model_dir(source: Path = SAMPLE_BERT_DIR) -> Path:
    """Return where the tiny BERT generated from `source` is cached, keyed by its config and vocab."""
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, VOCAB_NAME):
        digest.update((source / name).read_bytes())
    return cache_dir() / f"tiny-bert-{digest.hexdigest()[:16]}"
