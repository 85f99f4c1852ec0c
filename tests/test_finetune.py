"""kbsearch finetune: pairs files, the training loop on tiny random bases (full and LoRA), the model card,
loading the result as the cross-encoder reranker, and POST /similarity / kbsearch similar."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from kbsearch.api.app import create_app
from kbsearch.cli import main
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.errors import BadInputError
from kbsearch.finetune import Pair, Recipe, collect_pairs, finetune, load_pairs, read_card, variant_pairs
from kbsearch.index.builder import build_index
from kbsearch.index.store import load_build
from kbsearch.rerank.cross_encoder import CrossEncoderReranker
from support import entry, one_chunk

# Every phrasing carries its topic word, so a tiny random model can learn "same topic" in seconds.
TOPICS = {
    "退货": ["怎么退货", "如何申请退货", "退货流程是什么", "我想退货", "退货要多久"],
    "密码": ["忘记密码怎么办", "如何重置密码", "密码找回", "登录密码忘了", "修改密码在哪"],
    "发货": ["什么时候发货", "几天能发货", "发货时间", "还没发货怎么办", "发货要多久"],
    "花呗": ["花呗怎么还款", "花呗能延迟还吗", "花呗分期利息", "花呗额度怎么提", "花呗逾期了"],
}


def make_pairs(n: int, seed: int) -> list[Pair]:
    """Same topic -> 1, different topic -> 0, balanced."""
    rng = random.Random(seed)
    names = list(TOPICS)
    out = []
    for i in range(n):
        t = rng.choice(names)
        a = rng.choice(TOPICS[t])
        if i % 2 == 0:
            out.append(Pair(a, rng.choice([x for x in TOPICS[t] if x != a]), 1))
        else:
            out.append(Pair(a, rng.choice(TOPICS[rng.choice([x for x in names if x != t])]), 0))
    return out


def _tokenizer(bert: bool) -> PreTrainedTokenizerFast:
    corpus = [s for v in TOPICS.values() for s in v] + ["hello world shipping password"]
    if bert:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)  # splits CJK characters
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials,
                                                                  show_progress=False))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    # Qwen3-Embedding style: no pad token in the tokenizer, the last token is pooled
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _save_base(path: Path, tok: PreTrainedTokenizerFast, model_cls: type, config) -> Path:
    """Save a tokenizer and a seeded random bare model (no classification head) as a base folder."""
    tok.save_pretrained(path)
    config.architectures = [model_cls.__name__]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model_cls(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def bert_base(tmp_path_factory) -> Path:
    """A bare tiny BertModel (like the materialised e5-small folder: no classification head)."""
    tok = _tokenizer(bert=True)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return _save_base(tmp_path_factory.mktemp("bert-base"), tok, BertModel, config)


@pytest.fixture(scope="session")
def qwen3_base(tmp_path_factory) -> Path:
    """A bare tiny Qwen3Model (like Qwen3-Embedding), for the LoRA recipe."""
    tok = _tokenizer(bert=False)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    return _save_base(tmp_path_factory.mktemp("qwen3-base"), tok, Qwen3Model, config)


def recipe(base: Path, **kw) -> Recipe:
    defaults = {"method": "full", "lr": 1e-3, "batch_size": 16, "epochs": 25, "early_stop_patience": 25,
                "max_length": 32, "device": "cpu", "seed": 7, "data": ["synthetic topic pairs"],
                "freeze_embeddings": False}  # a random tiny base needs its embeddings trained
    return Recipe(base=str(base), **(defaults | kw))


@pytest.fixture(scope="session")
def trained(bert_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("pair") / "model"
    result = finetune(recipe(bert_base), make_pairs(320, 1), make_pairs(80, 2), out, progress=False)
    return result


# --- pairs files ---------------------------------------------------------------------------------


def test_load_pairs_accepts_jsonl_and_afqmc_csv(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text('{"a": "花呗能不能延迟还款", "b": "有没有办法推迟还花呗", "label": 1}\n\n'
                 '{"sentence1": "借呗提额要多久审核", "sentence2": "花呗分期利息怎么算", "label": "0"}\n', encoding="utf-8")
    c = tmp_path / "afqmc.csv"
    c.write_text("sentence1,sentence2,label\n花呗能不能延迟还款,有没有办法推迟还花呗,1\n", encoding="utf-8")
    assert load_pairs(j) == [Pair("花呗能不能延迟还款", "有没有办法推迟还花呗", 1), Pair("借呗提额要多久审核", "花呗分期利息怎么算", 0)]
    assert load_pairs(c) == [Pair("花呗能不能延迟还款", "有没有办法推迟还花呗", 1)]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.jsonl", '{"a": "x", "b": "y", "label": 1}\n{"a": "x", "label": 1}\n', r"bad.jsonl:2: missing field 'b'"),
    ("bad.jsonl", '{"a": "x", "b": "y", "label": 2}\n', r"bad.jsonl:1: field 'label' must be 0 or 1"),
    ("bad.jsonl", '{"a": " ", "b": "y", "label": 1}\n', r"bad.jsonl:1: field 'a' must be a non-empty"),
    ("bad.jsonl", "not json\n", r"bad.jsonl:1: not JSON"),
    ("bad.csv", "a,b,label\nx,y,1\nx,y,yes\n", r"bad.csv:3: field 'label' must be 0 or 1"),
    ("bad.txt", "x", r"must be .jsonl or .csv"),
    ("empty.jsonl", "", r"no pairs"),
])
def test_bad_pairs_name_file_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BadInputError, match=message):
        load_pairs(path)


# --- training ------------------------------------------------------------------------------------


def test_full_finetune_learns_and_writes_a_card(trained):
    r = trained
    assert r.method == "full" and r.trainable_params == r.total_params
    assert r.best.accuracy >= 0.9 and r.best.f1 >= 0.9, r.history  # the random base starts near 0.5
    assert r.history[0]["dev_accuracy"] < r.best.accuracy
    lines = (r.out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == r.epochs_run and json.loads(lines[0])["epoch"] == 1
    card = read_card(r.out)
    assert card["base"].endswith("bert-base0") or "bert-base" in card["base"]
    assert card["data"] == ["synthetic topic pairs"] and card["dev"]["f1"] == pytest.approx(r.best.f1)
    assert card["recipe"]["lr"] == 1e-3 and card["best_epoch"] == r.best_epoch and card["date"]
    assert card["complete"] is True
    assert "F1" in (r.out / "README.md").read_text(encoding="utf-8")


def test_the_output_loads_as_the_cross_encoder_reranker_with_the_dev_scores(trained):
    ce = CrossEncoderReranker(str(trained.out), batch_size=8, max_length=32, device="cpu")
    ce.load()
    dev = make_pairs(80, 2)
    right = 0
    for p in dev:
        (score,) = ce.score(p.a, [p.b])
        right += (score >= 0.5) == bool(p.label)
    assert right / len(dev) == pytest.approx(trained.best.accuracy)  # the kept checkpoint is the best one


def test_frozen_embeddings_stay_as_in_the_base(bert_base, tmp_path):
    from safetensors.torch import load_file

    r = finetune(recipe(bert_base, epochs=1, freeze_embeddings=True), make_pairs(32, 1), make_pairs(16, 2),
                 tmp_path / "m", progress=False)
    key = "bert.embeddings.word_embeddings.weight"
    before = load_file(bert_base / "model.safetensors")
    after = load_file(r.out / "model.safetensors")
    emb = before.get(key, before.get("embeddings.word_embeddings.weight"))
    assert r.trainable_params == r.total_params - emb.numel()
    assert torch.equal(after[key], emb)
    assert not torch.equal(after["bert.encoder.layer.0.attention.self.query.weight"],
                           before.get("encoder.layer.0.attention.self.query.weight"))


def test_an_interrupted_run_leaves_its_best_epoch_loadable(bert_base, tmp_path):
    def stop_at_epoch_3(line: str) -> None:
        if line.startswith("epoch 3:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(recipe(bert_base, epochs=5), make_pairs(64, 1), make_pairs(32, 2), tmp_path / "m",
                 progress=False, log_line=stop_at_epoch_3)
    card = read_card(tmp_path / "m")
    assert card["complete"] is False and card["best_epoch"] in (1, 2) and card["epochs_run"] == card["best_epoch"]
    ce = CrossEncoderReranker(str(tmp_path / "m"), batch_size=8, max_length=32, device="cpu")
    ce.load()
    assert 0.0 <= ce.score("怎么退货", ["如何申请退货"])[0] <= 1.0


def test_off_a_terminal_training_logs_its_steps_instead_of_a_bar(bert_base, tmp_path, monkeypatch, capsys):
    import kbsearch.finetune.train as train_module

    monkeypatch.setattr(train_module, "LOG_EVERY_S", 0.0)  # a line at every step
    lines: list[str] = []
    finetune(recipe(bert_base, epochs=1), make_pairs(64, 1), make_pairs(32, 2), tmp_path / "m", log_line=lines.append)
    steps = [line for line in lines if line.startswith("epoch 1, step ")]
    assert [line.split(":")[0] for line in steps] == [f"epoch 1, step {i}/4" for i in range(1, 5)]
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar redraws in the log
    quiet: list[str] = []
    finetune(recipe(bert_base, epochs=1), make_pairs(64, 1), make_pairs(32, 2), tmp_path / "q", progress=False,
             log_line=quiet.append)
    assert not any(", step " in line for line in quiet)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # on a terminal: the bar, not the lines
    shown: list[str] = []
    finetune(recipe(bert_base, epochs=1), make_pairs(64, 1), make_pairs(32, 2), tmp_path / "t", log_line=shown.append)
    assert "epoch 1/1" in capsys.readouterr().err and not any(", step " in line for line in shown)


def test_training_is_deterministic_for_a_seed(bert_base, tmp_path):
    runs = [finetune(recipe(bert_base, epochs=2), make_pairs(64, 1), make_pairs(32, 2), tmp_path / f"m{i}",
                     progress=False) for i in range(2)]
    assert runs[0].history[-1]["dev_loss"] == runs[1].history[-1]["dev_loss"]


def test_balance_weights_positives_and_fp16_halves_the_saved_weights(bert_base, tmp_path):
    from safetensors.torch import load_file

    # 1 positive : 3 negatives. Balanced, the untrained model's loss counts positives 3x: the first
    # dev loss differs from the unbalanced run on the same seed, and both runs still train.
    pairs = [p for p in make_pairs(200, 1) if p.label == 1][:16] + [p for p in make_pairs(200, 1) if p.label == 0][:48]
    plain = finetune(recipe(bert_base, epochs=1), pairs, pairs, tmp_path / "plain", progress=False)
    balanced = finetune(recipe(bert_base, epochs=1, balance=True, save_half=True), pairs, pairs, tmp_path / "bal",
                        progress=False)
    assert balanced.history[0]["dev_loss"] != plain.history[0]["dev_loss"]
    assert read_card(tmp_path / "bal")["recipe"]["balance"] is True
    halves = load_file(tmp_path / "bal" / "model.safetensors")
    assert all(t.dtype == torch.float16 for t in halves.values())
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / "plain" / "model.safetensors").values())
    ce = CrossEncoderReranker(str(tmp_path / "bal"), batch_size=8, max_length=32, device="cpu")
    ce.load()  # fp16 on disk, fp32 on CPU
    assert 0.0 <= ce.score("怎么退货", ["如何申请退货"])[0] <= 1.0


def test_early_stopping_keeps_the_best_epoch(bert_base, tmp_path):
    r = finetune(recipe(bert_base, epochs=30, early_stop_patience=2, lr=5e-3), make_pairs(160, 1),
                 make_pairs(40, 2), tmp_path / "m", progress=False)
    f1s = [h["dev_f1"] for h in r.history]
    assert r.epochs_run < 30 and r.best.f1 == max(f1s) and r.best_epoch == f1s.index(max(f1s)) + 1
    assert all(f <= r.best.f1 for f in f1s[r.best_epoch:]) and len(f1s) - r.best_epoch == 2


def test_lora_on_a_qwen3_style_base_trains_only_adapters_and_merges(qwen3_base, tmp_path):
    pytest.importorskip("peft")
    r = finetune(recipe(qwen3_base, method="lora", lr=5e-3, epochs=2, lora_r=4), make_pairs(64, 1),
                 make_pairs(32, 2), tmp_path / "m", progress=False)
    assert r.method == "lora" and 0 < r.trainable_params < r.total_params / 2
    assert read_card(r.out)["recipe"]["lora_r"] == 4 and not (r.out / "lora-adapter").exists()
    ce = CrossEncoderReranker(str(r.out), batch_size=8, max_length=32, device="cpu")
    ce.load()  # merged: a plain sequence classifier, no peft needed to serve it
    (p,) = ce.score("怎么退货", ["如何申请退货"])
    assert 0.0 <= p <= 1.0
    assert "lora" not in " ".join(ce._model.model.state_dict().keys())


@pytest.mark.parametrize(("method", "lr"), [("full", 3e-5), ("lora", 1e-4)])
def test_an_unset_learning_rate_follows_the_method(bert_base, tmp_path, method, lr):
    if method == "lora":
        pytest.importorskip("peft")
    r = finetune(recipe(bert_base, method=method, lr=None, epochs=1), make_pairs(32, 1), make_pairs(16, 2),
                 tmp_path / "m", progress=False)
    card = read_card(r.out)
    assert card["method"] == method and card["recipe"]["lr"] == lr
    assert f"lr {lr}" in (r.out / "README.md").read_text(encoding="utf-8")


def test_bad_recipe_and_data_are_refused(bert_base, tmp_path):
    with pytest.raises(BadInputError, match="'lr'"):
        finetune(recipe(bert_base, lr=0), make_pairs(8, 1), make_pairs(4, 2), tmp_path / "a", progress=False)
    with pytest.raises(BadInputError, match="both labels"):
        finetune(recipe(bert_base), [Pair("a", "b", 1)] * 4, make_pairs(4, 2), tmp_path / "b", progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("keep me")
    with pytest.raises(BadInputError, match="not empty"):
        finetune(recipe(bert_base), make_pairs(8, 1), make_pairs(4, 2), tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "x").read_text() == "keep me"


# --- pairs from a KB's variants ------------------------------------------------------------------


def test_variant_pairs_use_vector_ranked_hard_negatives(tmp_path):
    settings = Settings(home=tmp_path / "home", embed={"backend": "hash"})
    entries = [entry(f"t{i}", qs[0], f"{t}的答案。", variants=tuple(qs[1:3])) for i, (t, qs) in enumerate(TOPICS.items())]
    build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    pairs = variant_pairs(settings, "default", negatives=2)
    positives = [p for p in pairs if p.label == 1]
    assert len(positives) == 8 and len(pairs) == 8 * 3
    for p in positives:
        owner = next(e for e in entries if p.a in e.variants)
        assert p.b == f"{owner.question}\n{owner.answer}"
    # Oracle: each FAQ's best cosine to the variant over its stored rows (the variant's own row left out).
    build = load_build(settings.kb_dir("default"), device="cpu")
    vecs = build.vectors.vectors(list(range(len(build.rows))))
    docs = {e.id: f"{e.question}\n{e.answer}" for e in entries}
    for r, row in enumerate(build.rows):
        if row.kind != "variant":
            continue
        best: dict[str, float] = {}
        for other, sim in enumerate((vecs @ vecs[r]).tolist()):
            if other != r and build.rows[other].faq_id != row.faq_id:
                best[build.rows[other].faq_id] = max(sim, best.get(build.rows[other].faq_id, -2.0))
        want = sorted(best.values(), reverse=True)[:2]
        by_doc = {d: f for f, d in docs.items()}
        got = [by_doc[p.b] for p in pairs if p.a == row.text and p.label == 0]
        assert [best[f] for f in got] == pytest.approx(want)  # the two nearest other FAQs (ties either way)
    # The question-question view: the positive is the FAQ's nearest other phrasing, never the variant itself.
    qq = variant_pairs(settings, "default", negatives=2, doc="question", max_variants=3)
    assert len([p for p in qq if p.label == 1]) == 3
    for p in qq:
        assert p.a != p.b
        if p.label == 1:
            owner = next(e for e in entries if p.a in e.variants)
            assert p.b in (owner.question, *owner.variants)


def test_collect_pairs_holds_out_a_seeded_dev_share(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"a": p.a, "b": p.b, "label": p.label}, ensure_ascii=False) + "\n"
                            for p in make_pairs(50, 3)), encoding="utf-8")
    s = Settings(home=tmp_path / "home")
    train, dev, data = collect_pairs(s, [path], None, 0.2, None, 3, seed=1)
    again = collect_pairs(s, [path], None, 0.2, None, 3, seed=1)
    assert len(dev) == 10 and len(train) == 40 and not set(dev) - set(make_pairs(50, 3))
    assert (train, dev) == again[:2] and "50 pairs" in data[0]
    with pytest.raises(BadInputError, match="no training pairs"):
        collect_pairs(s, [], None, 0.2, None, 3, seed=1)


# --- /similarity and kbsearch similar ------------------------------------------------------------


def test_similarity_endpoint_with_the_trained_pair_model(trained, tmp_path):
    settings = Settings(home=tmp_path / "home", embed={"backend": "hash"}, pair={"model": str(trained.out), "max_length": 32})
    with TestClient(create_app(settings)) as client:
        same = client.post("/similarity", json={"a": "怎么退货", "b": "如何申请退货"}).json()
        other = client.post("/similarity", json={"a": "怎么退货", "b": "忘记密码怎么办"}).json()
        assert same["similar"] is True and other["similar"] is False and same["score"] > other["score"]
        assert same["model"] == str(trained.out) and same["threshold"] == 0.5
        bad = client.post("/similarity", json={"a": "  ", "b": "x"})
        assert bad.status_code == 422 and "a" in json.dumps(bad.json()["detail"])
        assert client.post("/similarity", json={"a": "x"}).status_code == 422


def test_similarity_without_a_pair_model_is_503_and_ask_still_works(tmp_path):
    settings = Settings(home=tmp_path / "home", embed={"backend": "hash"})
    with TestClient(create_app(settings)) as client:
        r = client.post("/similarity", json={"a": "x", "b": "y"})
        assert r.status_code == 503 and "KBSEARCH_PAIR__MODEL" in r.json()["detail"]
    broken = Settings(home=tmp_path / "home", embed={"backend": "hash"}, pair={"model": str(tmp_path / "missing")})
    with TestClient(create_app(broken)) as client:
        r = client.post("/similarity", json={"a": "x", "b": "y"})
        assert r.status_code == 503 and "failed to load" in r.json()["detail"]


def test_cli_finetune_then_similar(bert_base, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    pairs = tmp_path / "afqmc.csv"
    pairs.write_text("sentence1,sentence2,label\n" + "".join(f"{p.a},{p.b},{p.label}\n" for p in make_pairs(120, 5)),
                     encoding="utf-8")
    out = tmp_path / "model"
    assert main(["finetune", "--pairs", str(pairs), "--base", str(bert_base), "--out", str(out), "--epochs", "6",
                 "--lr", "2e-3", "--batch-size", "16", "--max-length", "32", "--method", "full", "--train-embeddings",
                 "--device", "cpu"]) == 0
    assert "dev accuracy" in capsys.readouterr().out and read_card(out)["data"][0].endswith("(120 pairs)")
    monkeypatch.setenv("KBSEARCH_PAIR__MODEL", str(out))
    monkeypatch.setenv("KBSEARCH_PAIR__MAX_LENGTH", "32")
    assert main(["similar", "怎么退货", "如何申请退货", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"similar", "score", "threshold", "model"} and 0 <= got["score"] <= 1
    assert main(["finetune", "--pairs", str(tmp_path / "nope.csv"), "--base", str(bert_base),
                 "--out", str(tmp_path / "m2")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_pair_metrics_by_hand():
    import numpy as np

    from kbsearch.finetune import pair_metrics

    m = pair_metrics(np.array([0.9, 0.8, 0.2, 0.6, 0.1]), np.array([1, 0, 1, 1, 0]), loss=0.5)
    # predicted 1,1,0,1,0: tp 2, fp 1, fn 1 -> P 2/3, R 2/3, F1 2/3; negatives: tp 1, fp 1, fn 1 -> F1 1/2
    assert (m.accuracy, m.precision, m.recall) == pytest.approx((0.6, 2 / 3, 2 / 3))
    assert m.f1 == pytest.approx(2 / 3) and m.macro_f1 == pytest.approx((2 / 3 + 0.5) / 2)


def test_a_killed_training_resumes_from_its_checkpoint_and_ends_as_the_uninterrupted_run(bert_base, tmp_path, monkeypatch):
    """Killed mid-epoch (an exception from the optimizer step, as a kill would stop it), run again on the same
    folder: it resumes at the checkpoint and ends with the same dev history and weights as a run never stopped."""
    from safetensors.torch import load_file

    train, dev = make_pairs(96, 1), make_pairs(32, 2)
    whole = finetune(recipe(bert_base, epochs=3), train, dev, tmp_path / "whole", progress=False, checkpoint_every_s=1e-9)
    assert not (tmp_path / "whole" / "checkpoint").exists()  # removed once complete

    real_step, calls = torch.optim.AdamW.step, [0]

    def dies_at_step_9(self, *a, **kw):  # 6 steps per epoch: killed in epoch 2, after its checkpoint at step 8
        calls[0] += 1
        if calls[0] == 9:
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", dies_at_step_9)
    with pytest.raises(KeyboardInterrupt):
        finetune(recipe(bert_base, epochs=3), train, dev, tmp_path / "m", progress=False, checkpoint_every_s=1e-9)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert (tmp_path / "m" / "checkpoint" / "state.pt").is_file() and not read_card(tmp_path / "m")["complete"]
    lines: list[str] = []
    resumed = finetune(recipe(bert_base, epochs=3), train, dev, tmp_path / "m", progress=False, checkpoint_every_s=1e-9,
                       log_line=lines.append)
    assert any("resuming the interrupted training at epoch 2, step 2/6" in line for line in lines)
    assert [h["dev_loss"] for h in resumed.history] == [h["dev_loss"] for h in whole.history]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "m" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_card(tmp_path / "m")["complete"] and not (tmp_path / "m" / "checkpoint").exists()
    # a checkpoint of other pairs is not resumed: the folder is refused as any non-empty folder
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(torch.optim.AdamW, "step", dies_at_step_9)
        calls[0] = 0
        finetune(recipe(bert_base, epochs=3), train, dev, tmp_path / "n", progress=False, checkpoint_every_s=1e-9)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    with pytest.raises(BadInputError, match="not empty"):
        finetune(recipe(bert_base, epochs=3), train[:-2], dev, tmp_path / "n", progress=False, checkpoint_every_s=1e-9)
