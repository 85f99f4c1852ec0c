"""Turn ingested entries into a served build: index rows -> embeddings -> FAISS + BM25 -> store.

The vector index's kind follows the build's size (``factory.build_index_by_size``: exact flat, or HNSW
above ``IndexSettings.approximate_above_rows`` once its recall check passes); the build report
(``report.json``) and ``BuildResult.vector_index`` say which and why, the manifest records it.

Used by ``kbsearch ingest`` (after the ingest pipeline) and ``kbsearch rebuild-index`` (which re-embeds
the entries stored in the active build, e.g. after a model change); ``kbsearch.index.incremental`` shares
the last steps (``publish_rows``) to publish operator decisions without re-embedding what is unchanged.
Either way the new build is activated only once it is complete on disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.config import Settings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError, KbsearchError
from kbsearch.index.base import FLAT
from kbsearch.index.factory import IndexChoice, build_index_by_size
from kbsearch.index.lock import kb_writer
from kbsearch.index.manifest import REPORT_FILE
from kbsearch.index.milvus_backend import MilvusIndex, MilvusTarget
from kbsearch.index.store import Build, active_build_id, load_build, new_build_id, write_build
from kbsearch.lexical.bm25 import BM25Index
from kbsearch.types import Chunk, FaqEntry, IndexRow

log = logging.getLogger(__name__)

BM25_TOKENIZER = "char"

#: What a build's embedder must share with another embedder for their vectors to be comparable.
EMBEDDER_KEYS = ("model_id", "dim", "query_prompt", "document_prompt")


def embedder_differences(built: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The ``EMBEDDER_KEYS`` on which two ``Embedder.describe()`` dicts differ: key -> (built, other)."""
    return {k: (built.get(k), other.get(k)) for k in EMBEDDER_KEYS if built.get(k) != other.get(k)}


def make_rows(entries: list[FaqEntry], chunks: list[Chunk]) -> list[IndexRow]:
    """One row per text a question can match: the question, each variant, each answer chunk.

    Entries whose answer is just their question (intent datasets) get no chunk rows.

    Rows are grouped back to one result per FAQ id at query time (max over its rows).
    """
    by_faq: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_faq.setdefault(c.faq_id, []).append(c)
    rows: list[IndexRow] = []
    for e in entries:
        rows.append(IndexRow(faq_id=e.id, kind="question", text=e.question))
        rows.extend(IndexRow(faq_id=e.id, kind="variant", text=v) for v in e.variants)
        if e.answer.strip() == e.question.strip():
            continue  # intent data (no answer text): the chunk would only repeat the question
        for c in sorted(by_faq.get(e.id, []), key=lambda c: c.ordinal):
            rows.append(IndexRow(faq_id=e.id, kind="chunk", text=c.text, chunk=c.ordinal))
    return rows


#: Rows handed to the embedder per call. The model batches them itself (``embed.batch_size`` per forward pass)
#: after sorting them by length, so a large call wastes little on padding: with calls of 32 rows, ingest ran at
#: 1.58x the bare model's time on banking77 (2,000 rows, 2 CPU cores); ``bench/embed_throughput.py`` measures it.
EMBED_CALL_ROWS = 2048


def embed_rows(embedder: Embedder, rows: list[IndexRow], batch_size: int, *, question_rows_as: str = "query",
               progress: bool = False) -> np.ndarray:
    """Embed every row: answer chunks with the document prompt, question and variant rows with the query
    prompt when ``question_rows_as == "query"`` (question-to-question matching). ``EMBED_CALL_ROWS`` rows
    per call (at least ``batch_size``), the progress bar moving per call.
    """
    call = max(batch_size, EMBED_CALL_ROWS)
    as_query = np.array([question_rows_as == "query" and r.kind != "chunk" for r in rows], dtype=bool)
    out = np.zeros((len(rows), 0), dtype=np.float32)
    bar = None
    if progress and len(rows) > call:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="embed", unit="row", leave=False, disable=None)  # None: no bar off a TTY
    for flag, embed in ((True, embedder.embed_queries), (False, embedder.embed_documents)):
        idx = np.flatnonzero(as_query == flag)
        for i in range(0, len(idx), call):
            part = idx[i : i + call]
            vecs = embed([rows[j].text for j in part])
            if out.shape[1] == 0:
                out = np.zeros((len(rows), vecs.shape[1]), dtype=np.float32)
            out[part] = vecs
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    return out


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: its id, directory, the seconds each build stage took, and its rows.

    Attributes:
        build_id: The new build's id.
        path: Its directory.
        seconds: Seconds per stage (``model_load``, ``embed``, ``index``, ``write``; more for incremental builds).
        rows: Rows in the build.
        embedded: Rows embedded for this build.
        reused: Rows whose vectors were taken from the previous build (incremental builds).
        vector_index: Which kind of vector index the build got, why, and its recall check (also in report.json).
    """

    build_id: str
    path: Path
    seconds: dict[str, float]
    rows: int
    embedded: int = 0
    reused: int = 0
    vector_index: IndexChoice | None = None


def build_index(
    settings: Settings,
    kb: str,
    entries: list[FaqEntry],
    chunks: list[Chunk],
    embedder: Embedder,
    report: dict[str, Any],
    *,
    progress: bool = False,
) -> BuildResult:
    """Embed and index ``entries``/``chunks``, write a new build of ``kb`` and activate it.

    Args:
        settings: ``home``, the ``embed`` group (batch size, row prompts) and the ``index`` group (backend, builds kept).
        kb: Knowledge-base name.
        entries, chunks: What to serve (from ingest, or from the active build on rebuild).
        embedder: A loaded or loadable embedder.
        report: The ingest report to store with the build; build stage times are added to it.
        progress: Show a progress bar while embedding.

    Raises:
        BadInputError: when there is nothing to index.
    """
    if not entries:
        raise BadInputError(f"nothing to index for knowledge base {kb!r}: no entry was kept")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = make_rows(entries, chunks)
    embedder.load()
    t1 = time.perf_counter()
    seconds["model_load"] = t1 - t0
    vectors = embed_rows(embedder, rows, settings.embed.batch_size, question_rows_as=settings.embed.question_rows_as,
                         progress=progress)
    seconds["embed"] = time.perf_counter() - t1
    return publish_rows(settings, kb, entries, chunks, rows, vectors, embedder, report, seconds)


def row_prompts(settings: Settings) -> dict[str, str]:
    """The prompt each row kind is embedded with under ``settings`` (what ``embed_rows`` does), for the manifest."""
    question = settings.embed.question_rows_as
    return {"question": question, "variant": question, "chunk": "document"}


def publish_rows(
    settings: Settings,
    kb: str,
    entries: list[FaqEntry],
    chunks: list[Chunk],
    rows: list[IndexRow],
    vectors: np.ndarray,
    embedder: Embedder,
    report: dict[str, Any],
    seconds: dict[str, float],
    *,
    reused: int = 0,
) -> BuildResult:
    """Index embedded rows (vector index + BM25), write them as a new build of ``kb`` and activate it.

    The last steps of every build, full or incremental.

    Args:
        settings: The ``index`` group (backend, index kind by size, builds kept) and ``embed.question_rows_as``
            (recorded).
        kb: Knowledge-base name.
        entries, chunks, rows: What the build serves; ``rows[i]`` is ``vectors[i]``.
        vectors: ``(len(rows), dim)`` L2-normalised float32.
        embedder: The embedder the vectors were made with (its ``describe()`` goes into the manifest).
        report: The report to store with the build; ``vector_index`` (``IndexChoice``) and ``build_seconds`` are
            added to it.
        seconds: Stage times so far; ``index`` and ``write`` are added (in place).
        reused: How many of the vectors came from a previous build (the rest were embedded).
    """
    t0 = time.perf_counter()
    build_id = new_build_id()  # before the index: a milvus build's collection is named after it
    milvus = (MilvusTarget.from_settings(settings.index, settings.home, kb=kb, build_id=build_id)
              if settings.index.backend == "milvus" else None)
    index, choice = build_index_by_size(settings.index, vectors, milvus=milvus)  # CPU; a service may load flat on a GPU
    log.log(logging.WARNING if choice.kind == FLAT and choice.recall_check else logging.INFO,
            "vector index of kb %r: %s", kb, choice.reason)
    bm25 = BM25Index.build([r.text for r in rows], tokenizer=BM25_TOKENIZER)
    t1 = time.perf_counter()
    seconds["index"] = t1 - t0
    report = {**report, "vector_index": choice.to_json(),
              "build_seconds": {k: round(v, 3) for k, v in seconds.items()}}
    manifest = {
        "embedder": embedder.describe(),
        "model_id": embedder.model_id,
        "row_prompts": row_prompts(settings),
        "bm25": {"library": "kbsearch.lexical.bm25 (inverted index; rank-bm25's scores)", "variant": "BM25Okapi",
                 "tokenizer": BM25_TOKENIZER, "k1": bm25.k1, "b": bm25.b},
    }
    kb_dir = settings.kb_dir(kb)
    try:
        write_build(kb_dir, entries=entries, chunks=chunks, rows=rows, vectors=index, bm25=bm25, report=report,
                    manifest=manifest, keep=settings.index.keep_builds, build_id=build_id,
                    recall_check=choice.recall_check, token=settings.index.milvus_token)
    except BaseException:
        if isinstance(index, MilvusIndex) and not _published(kb_dir, build_id):
            index.drop()  # its collection belongs to no served build: don't leave it behind in Milvus
        raise
    seconds["write"] = time.perf_counter() - t1
    return BuildResult(build_id=build_id, path=kb_dir / "builds" / build_id, seconds=seconds, rows=len(rows),
                       embedded=len(rows) - reused, reused=reused, vector_index=choice)


def _published(kb_dir: Path, build_id: str) -> bool:
    """Whether ACTIVE names ``build_id`` (a write that failed after the swap, while pruning, did publish it)."""
    try:
        return active_build_id(kb_dir) == build_id
    except KbsearchError:
        return False


def ingest_report_of(build: Build) -> dict[str, Any] | None:
    """The ingest report ``build`` descends from: its own report, or the one a rebuilt/incremental build carries.

    None when the report is unreadable. Kept flat, so a chain of rebuilds does not nest reports ever deeper.
    """
    try:
        report = json.loads((build.path / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    return report.get("ingest_report", report)


def rebuild_index(settings: Settings, kb: str, embedder: Embedder, *, progress: bool = False) -> BuildResult:
    """Re-embed the entries stored in ``kb``'s active build into a new build and activate it (holding the KB's lock).

    Raises:
        NotFoundError: ``kb`` has no active build. IndexCorruptError: its entries are unreadable.
        KbBusyError: another writer held the KB's lock for the whole wait.
    """
    with kb_writer(settings, kb, "rebuild-index"):
        current = load_build(settings.kb_dir(kb), device="cpu", token=settings.index.milvus_token)
        report: dict[str, Any] = {"rebuilt_from": current.build_id, "ingest_report": ingest_report_of(current)}
        chunks = sorted(current.chunks.values(), key=lambda c: (c.faq_id, c.ordinal))
        return build_index(settings, kb, list(current.entries.values()), chunks, embedder, report, progress=progress)
