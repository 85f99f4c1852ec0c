"""Turn ingested entries into a served build: index rows -> embeddings -> FAISS + BM25 -> store.

Used by ``kbsearch ingest`` (after the ingest pipeline) and ``kbsearch rebuild-index`` (which re-embeds
the entries stored in the active build, e.g. after a model change). Either way the new build is
activated only once it is complete on disk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.config import Settings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError
from kbsearch.index.factory import build_vector_index
from kbsearch.index.store import load_build, write_build
from kbsearch.lexical.bm25 import BM25Index
from kbsearch.types import Chunk, FaqEntry, IndexRow

BM25_TOKENIZER = "char"


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


def embed_rows(embedder: Embedder, rows: list[IndexRow], batch_size: int, *, question_rows_as: str = "query",
               progress: bool = False) -> np.ndarray:
    """Embed every row in batches: answer chunks with the document prompt, question and variant rows
    with the query prompt when ``question_rows_as == "query"`` (question-to-question matching).
    """
    as_query = np.array([question_rows_as == "query" and r.kind != "chunk" for r in rows], dtype=bool)
    out = np.zeros((len(rows), 0), dtype=np.float32)
    bar = None
    if progress and len(rows) > batch_size:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="embed", unit="row", leave=False, disable=None)  # None: no bar off a TTY
    for flag, embed in ((True, embedder.embed_queries), (False, embedder.embed_documents)):
        idx = np.flatnonzero(as_query == flag)
        for i in range(0, len(idx), batch_size):
            part = idx[i : i + batch_size]
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
    """What a build produced: its id, directory and the seconds each build stage took."""

    build_id: str
    path: Path
    seconds: dict[str, float]
    rows: int


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
    t2 = time.perf_counter()
    seconds["embed"] = t2 - t1
    index = build_vector_index(settings.index.backend, vectors, device="cpu")  # saved here; a service may load it on a GPU
    bm25 = BM25Index.build([r.text for r in rows], tokenizer=BM25_TOKENIZER)
    t3 = time.perf_counter()
    seconds["index"] = t3 - t2
    report = {**report, "build_seconds": {k: round(v, 3) for k, v in seconds.items()}}
    manifest = {
        "embedder": embedder.describe(),
        "model_id": embedder.model_id,
        "row_prompts": {"question": settings.embed.question_rows_as, "variant": settings.embed.question_rows_as,
                        "chunk": "document"},
        "bm25": {"library": "rank-bm25", "variant": "BM25Okapi", "tokenizer": BM25_TOKENIZER,
                 "k1": bm25.k1, "b": bm25.b},
    }
    kb_dir = settings.kb_dir(kb)
    build_id = write_build(kb_dir, entries=entries, chunks=chunks, rows=rows, vectors=index, bm25=bm25,
                           report=report, manifest=manifest, keep=settings.index.keep_builds)
    seconds["write"] = time.perf_counter() - t3
    return BuildResult(build_id=build_id, path=kb_dir / "builds" / build_id, seconds=seconds, rows=len(rows))


def rebuild_index(settings: Settings, kb: str, embedder: Embedder, *, progress: bool = False) -> BuildResult:
    """Re-embed the entries stored in ``kb``'s active build into a new build and activate it."""
    current = load_build(settings.kb_dir(kb), device="cpu")
    report: dict[str, Any] = {"rebuilt_from": current.build_id}
    try:
        report["ingest_report"] = json.loads((current.path / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report["ingest_report"] = None
    chunks = sorted(current.chunks.values(), key=lambda c: (c.faq_id, c.ordinal))
    return build_index(settings, kb, list(current.entries.values()), chunks, embedder, report, progress=progress)
