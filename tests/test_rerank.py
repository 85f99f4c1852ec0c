"""Rerank stage: a contract battery every model backend passes, plus oracles per backend.

The models are tiny, randomly initialised and built here (no Hub access): a Qwen3 causal LM with a
byte-level BPE tokenizer that knows the chat special tokens, and BERT sequence classifiers (1 and 2
labels) with a WordPiece tokenizer. The Qwen3 oracle runs the causal LM directly on the official
Qwen3-Reranker prompt string, written out below independently of the package's constants.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from kbsearch.config import Settings
from kbsearch.errors import BackendError, BadInputError, NotFoundError, NotReadyError
from kbsearch.rerank import Reranker, make_rerank_planner
from kbsearch.rerank.cross_encoder import QWEN3_CHAT_TEMPLATE, CrossEncoderReranker, Qwen3Reranker
from kbsearch.rerank.plan import SharedRerankPlanner

# The official Qwen3-Reranker prompt (model card), spelled out here as the oracle.
OFFICIAL_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
OFFICIAL_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

INSTRUCTION = "Given a customer-service question, judge whether the FAQ entry answers it"
QUERY = "How do I return an order?"
DOCS = [
    "Returns are accepted within 30 days of delivery.",
    "We ship worldwide.",
    "如何退货：在订单页面点击退货。",
    "Refunds reach your card in 5 business days after we receive the parcel back at our warehouse.",
    "yes",
]
CORPUS = [
    OFFICIAL_PREFIX + OFFICIAL_SUFFIX,
    "<Instruct>: " + INSTRUCTION + "\n<Query>: " + QUERY + "\n<Document>: " + " ".join(DOCS),
    "Given a web search query, retrieve relevant passages that answer the query",
]


def official_body(instruction: str, query: str, doc: str) -> str:
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


# --- tiny models ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3ForCausalLM + byte-level BPE tokenizer saved as a plain HF model dir."""
    path = tmp_path_factory.mktemp("qwen3-reranker")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.add_tokens(["yes", "no"])  # single tokens, as in Qwen's vocabulary
    tokenizer.save_pretrained(path)

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=0.5,  # wide weights -> P(yes) spread well away from 0.5
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        Qwen3ForCausalLM(config).save_pretrained(path)
    return path


def _wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([QUERY, *DOCS], trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="session")
def bert_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny random BertForSequenceClassification dirs with 1 and 2 labels."""
    tokenizer = _wordpiece_tokenizer()
    dirs = {}
    for num_labels in (1, 2):
        path = tmp_path_factory.mktemp(f"bert-{num_labels}")
        tokenizer.save_pretrained(path)
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, initializer_range=0.5,
        )
        config.architectures = ["BertForSequenceClassification"]
        with torch.random.fork_rng():
            torch.manual_seed(num_labels)
            BertForSequenceClassification(config).save_pretrained(path)
        dirs[num_labels] = path
    return dirs


@pytest.fixture(scope="session")
def qwen3_reranker(qwen3_dir: Path) -> Qwen3Reranker:
    # batch_size 2 with 5 docs: several batches, ST's length sorting and left padding all exercised.
    reranker = Qwen3Reranker(str(qwen3_dir), INSTRUCTION, batch_size=2, max_length=256, device="cpu")
    reranker.load()
    return reranker


@pytest.fixture(scope="session")
def ce_rerankers(bert_dirs: dict[int, Path]) -> dict[int, CrossEncoderReranker]:
    rerankers = {
        n: CrossEncoderReranker(str(path), batch_size=2, max_length=64, device="cpu") for n, path in bert_dirs.items()
    }
    for reranker in rerankers.values():
        reranker.load()
    return rerankers


@pytest.fixture(params=["qwen3", "cross-encoder-1-label", "cross-encoder-2-labels"])
def reranker(request: pytest.FixtureRequest) -> Reranker:
    if request.param == "qwen3":
        return request.getfixturevalue("qwen3_reranker")
    return request.getfixturevalue("ce_rerankers")[1 if request.param.endswith("1-label") else 2]


# --- contract: every model backend -----------------------------------------------------------------


def test_backend_satisfies_protocol(reranker: Reranker) -> None:
    assert isinstance(reranker, Reranker) and reranker.model_id


def test_scores_are_probabilities_in_input_order(reranker: Reranker) -> None:
    scores = reranker.score(QUERY, DOCS)
    assert len(scores) == len(DOCS)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == len(scores)  # distinct, so an order mix-up could not go unnoticed
    one_by_one = [reranker.score(QUERY, [doc])[0] for doc in DOCS]
    assert scores == pytest.approx(one_by_one, abs=1e-5)
    assert reranker.score(QUERY, DOCS[::-1]) == pytest.approx(scores[::-1], abs=1e-5)


def test_no_docs_gives_no_scores(reranker: Reranker) -> None:
    assert reranker.score(QUERY, []) == []


def test_load_is_idempotent(reranker: Reranker) -> None:
    model = reranker._model  # type: ignore[attr-defined]
    reranker.load()
    assert reranker._model is model  # type: ignore[attr-defined]


def test_describe_reports_model_and_limits(reranker: Reranker) -> None:
    info = reranker.describe()
    assert info["model_id"] == reranker.model_id
    assert info["loaded"] is True
    assert info["device"] == "cpu"
    assert info["batch_size"] == 2
    assert isinstance(info["max_length"], int)
    assert info["score"]


@pytest.mark.parametrize("cls", [Qwen3Reranker, CrossEncoderReranker])
def test_score_before_load_is_not_ready(cls: type, tmp_path: Path) -> None:
    reranker = cls(str(tmp_path))
    assert reranker.describe()["loaded"] is False
    with pytest.raises(NotReadyError, match="load"):
        reranker.score(QUERY, DOCS)


# --- Qwen3: the official prompt and P(yes) ------------------------------------------------------------


def _official_p_yes(model_dir: Path, input_ids: list[int]) -> float:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0, -1]
    no_id, yes_id = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    return torch.softmax(logits[[no_id, yes_id]], dim=-1)[1].item()


def test_qwen3_template_renders_the_official_prompt(qwen3_dir: Path) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(qwen3_dir)
    messages = [
        {"role": "system", "content": INSTRUCTION},
        {"role": "query", "content": QUERY},
        {"role": "document", "content": DOCS[0]},
    ]
    rendered = tokenizer.apply_chat_template(messages, chat_template=QWEN3_CHAT_TEMPLATE, tokenize=False)
    assert rendered == OFFICIAL_PREFIX + official_body(INSTRUCTION, QUERY, DOCS[0]) + OFFICIAL_SUFFIX


def _official_ids(model_dir: Path, instruction: str, query: str, doc: str) -> list[int]:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    return tokenizer(OFFICIAL_PREFIX + official_body(instruction, query, doc) + OFFICIAL_SUFFIX)["input_ids"]


def test_qwen3_score_equals_hand_computed_p_yes(qwen3_reranker: Qwen3Reranker, qwen3_dir: Path) -> None:
    expected = [_official_p_yes(qwen3_dir, _official_ids(qwen3_dir, INSTRUCTION, QUERY, d)) for d in DOCS]
    assert qwen3_reranker.score(QUERY, DOCS) == pytest.approx(expected, abs=1e-4)
    assert max(expected) - min(expected) > 0.05  # the tiny model discriminates: the check has teeth


def test_qwen3_truncation_cuts_the_document_and_keeps_the_prompt_tail(qwen3_dir: Path) -> None:
    # The official code truncates only the body: prefix + body[:max_length - |prefix| - |suffix|] + suffix.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(qwen3_dir)
    prefix = tokenizer(OFFICIAL_PREFIX)["input_ids"]
    suffix = tokenizer(OFFICIAL_SUFFIX)["input_ids"]
    long_doc = " ".join(DOCS * 4)
    body = tokenizer(official_body(INSTRUCTION, QUERY, long_doc))["input_ids"]
    max_length = len(prefix) + len(suffix) + len(body) // 2
    expected = _official_p_yes(qwen3_dir, prefix + body[: max_length - len(prefix) - len(suffix)] + suffix)

    reranker = Qwen3Reranker(str(qwen3_dir), INSTRUCTION, max_length=max_length, device="cpu")
    reranker.load()
    short, long = reranker.score(QUERY, [DOCS[1], long_doc])  # one batch: one row truncated, one padded
    assert long == pytest.approx(expected, abs=1e-4)
    untruncated = _official_p_yes(qwen3_dir, _official_ids(qwen3_dir, INSTRUCTION, QUERY, DOCS[1]))
    assert short == pytest.approx(untruncated, abs=1e-4)


def test_qwen3_instruction_changes_the_score(qwen3_reranker: Qwen3Reranker, qwen3_dir: Path) -> None:
    other = Qwen3Reranker(str(qwen3_dir), "Judge whether the passage is about shipping", device="cpu")
    other.load()
    mine, theirs = qwen3_reranker.score(QUERY, DOCS), other.score(QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(mine, theirs)) > 1e-3


def test_qwen3_describe(qwen3_reranker: Qwen3Reranker, qwen3_dir: Path) -> None:
    info = qwen3_reranker.describe()
    assert info["backend"] == "qwen3"
    assert info["model_id"] == str(qwen3_dir)
    assert info["instruction"] == INSTRUCTION
    assert info["max_length"] == 256
    assert info["format"] == "qwen3-reranker-official"
    assert "P(yes)" in info["score"]


def test_qwen3_rejects_a_two_label_classifier(bert_dirs: dict[int, Path]) -> None:
    with pytest.raises(BadInputError, match="yes-vs-no"):
        Qwen3Reranker(str(bert_dirs[2]), INSTRUCTION, device="cpu").load()


def test_qwen3_rejects_an_empty_instruction(qwen3_dir: Path) -> None:
    with pytest.raises(BadInputError, match="instruction"):
        Qwen3Reranker(str(qwen3_dir), "  ")


# --- generic cross-encoder: differential against transformers -------------------------------------------


@pytest.mark.parametrize("num_labels", [1, 2])
def test_cross_encoder_probability_matches_transformers(
    num_labels: int, ce_rerankers: dict[int, CrossEncoderReranker], bert_dirs: dict[int, Path]
) -> None:
    path = bert_dirs[num_labels]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    batch = tokenizer([QUERY] * len(DOCS), DOCS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    expected = torch.sigmoid(logits[:, 0]) if num_labels == 1 else torch.softmax(logits, dim=-1)[:, 1]
    assert ce_rerankers[num_labels].score(QUERY, DOCS) == pytest.approx(expected.tolist(), abs=1e-5)
    info = ce_rerankers[num_labels].describe()
    assert info["backend"] == "cross-encoder"
    assert info["num_labels"] == num_labels


def test_cross_encoder_rejects_a_causal_lm_reranker(qwen3_dir: Path) -> None:
    with pytest.raises(BadInputError, match="qwen3"):
        CrossEncoderReranker(str(qwen3_dir), device="cpu").load()


# --- loading failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Qwen3Reranker, CrossEncoderReranker])
def test_missing_model_path_is_not_found(cls: type, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    reranker = cls(str(missing), device="cpu")
    with pytest.raises(NotFoundError, match="no-such-model"):
        reranker.load()
    assert reranker.loaded is False


@pytest.mark.parametrize("cls", [Qwen3Reranker, CrossEncoderReranker])
def test_unloadable_model_dir_is_a_backend_error(cls: type, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="could not load reranker") as info:
        cls(str(tmp_path), device="cpu").load()
    assert info.value.__cause__ is not None  # the library's own error stays attached


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_backend_error(bert_dirs: dict[int, Path]) -> None:
    with pytest.raises(BackendError, match="no CUDA device"):
        CrossEncoderReranker(str(bert_dirs[1]), device="cuda").load()


def test_non_string_input_is_bad_input(qwen3_reranker: Qwen3Reranker) -> None:
    with pytest.raises(BadInputError, match="strings"):
        qwen3_reranker.score(QUERY, [None])  # type: ignore[list-item]


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_length": 8}, {"device": ""}, {"device": "gpu"}])
def test_constructor_validates(kwargs: dict, tmp_path: Path) -> None:
    with pytest.raises(BadInputError):
        CrossEncoderReranker(str(tmp_path), **kwargs)
    with pytest.raises(BadInputError):
        CrossEncoderReranker("")


# --- planners and the factory ---------------------------------------------------------------------------


def test_none_plans_no_reranker_for_any_kb(tmp_path: Path) -> None:
    planner = make_rerank_planner(Settings(rerank={"backend": "none"}))
    assert isinstance(planner, SharedRerankPlanner) and planner.enabled is False and planner.model_id == "none"
    planner.load()
    plan = planner.plan(tmp_path / "any-kb")
    assert plan.reranker is None and plan.why == "none" and planner.forced() is planner
    assert planner.describe(tmp_path / "any-kb") is None  # not per KB


def test_factory_builds_each_backend_from_settings(qwen3_dir: Path, bert_dirs: dict[int, Path], tmp_path: Path) -> None:
    planner = make_rerank_planner(Settings(rerank={
        "backend": "qwen3", "model": str(qwen3_dir), "instruction": "Match FAQ entries", "batch_size": 3,
        "max_length": 128, "doc": "question"}, device="cpu"))
    plan = planner.plan(tmp_path / "any-kb")
    qwen3 = plan.reranker
    assert isinstance(qwen3, Qwen3Reranker) and (plan.doc, plan.weight, plan.model_id) == ("question", 1.0, str(qwen3_dir))
    assert (qwen3.instruction, qwen3.batch_size, qwen3.max_length, qwen3.device) == ("Match FAQ entries", 3, 128, "cpu")
    assert qwen3.loaded is False  # cheap: nothing loaded until load()

    ce_planner = make_rerank_planner(Settings(rerank={"backend": "cross-encoder", "model": str(bert_dirs[1])}, device="auto"))
    ce = ce_planner.plan(tmp_path / "any-kb").reranker
    assert isinstance(ce, CrossEncoderReranker) and ce_planner.enabled
    ce_planner.load()
    assert ce.describe()["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert 0.0 <= ce.score(QUERY, DOCS[:1])[0] <= 1.0


def test_building_rerankers_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from kbsearch.config import Settings\n"
        "from kbsearch.rerank import make_rerank_planner\n"
        "for b in ('none', 'kb', 'qwen3', 'cross-encoder'):\n"
        "    make_rerank_planner(Settings(rerank={'backend': b, 'model': 'some/model'}))\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
