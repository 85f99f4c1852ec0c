"""The vector first stage: embed the question, search the vector index, one candidate per FAQ.

Embedding and search run in a worker thread under ``retrieve.vector_timeout_s``; a timeout, a model
error or a missing, corrupt or mismatched index raises ``BackendError`` with its cause, and the query
path falls back to BM25. The worker's timings are recorded by the asking thread.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.config import RetrieveSettings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BackendError, KbsearchError, cause_of
from kbsearch.retrieve.base import Query, Retrieval
from kbsearch.retrieve.candidates import candidates_of
from kbsearch.types import Candidate

if TYPE_CHECKING:
    from kbsearch.index.store import Build
    from kbsearch.lexical.bm25 import BM25Index
    from kbsearch.telemetry.trace import Trace


class VectorSearch:
    """Question embedding + vector index search, each question in a worker thread under a timeout.

    Args:
        settings: The ``retrieve`` group (top-k, fields, timeout, workers).
        embedder: The question embedder (must match the builds' model).
    """

    def __init__(self, settings: RetrieveSettings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self.error: str | None = None  # why the embedder is not loaded, when it is not
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="kbsearch-vector")

    def search(self, query: Query, build: Build, trace: Trace) -> tuple[list[Candidate], np.ndarray, int]:
        """Candidates by best row cosine, the question's vector, and the FAQs found before the validity filter.

        Raises:
            BackendError: with cause ``embedder-not-loaded``, ``embed-timeout``, ``embed-error``,
                ``vector-timeout``, ``vector-error``, ``index-missing``, ``index-corrupt`` or ``model-mismatch``.
        """
        if self.error is not None:
            raise BackendError(f"embedder not loaded: {self.error}", FallbackCause.EMBEDDER_NOT_LOADED)
        if build.vectors is None:
            raise BackendError(build.vector_error or "vector index missing", build.vector_cause or FallbackCause.INDEX_MISSING)
        index, top_k = build.vectors, self.settings.vector_top_k
        fields = self.settings.vector_fields
        allowed = None if fields == "both" else build.rows_of_kind("chunk" if fields == "answer" else "question")
        phase = ["embed"]
        times: dict[str, float] = {}

        def run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            t = time.perf_counter()
            q = self.embedder.embed_queries([query.text]) if query.vector is None else query.vector.reshape(1, -1)
            times["embed"] = (time.perf_counter() - t) * 1000
            phase[0] = "vector"
            t = time.perf_counter()
            if allowed is None:
                scores, rows = index.search(q, top_k)
            else:  # exact search within the allowed rows only
                sims = index.similarity(q[0], allowed)
                top = np.argsort(-sims, kind="stable")[:top_k]
                scores, rows = sims[top][None, :], np.asarray(allowed, dtype=np.int64)[top][None, :]
            times["vector"] = (time.perf_counter() - t) * 1000
            return q, scores, rows

        t0 = time.perf_counter()
        future = self._pool.submit(run)
        try:
            q, scores, rows = future.result(timeout=self.settings.vector_timeout_s)
        except FutureTimeout as exc:
            future.cancel()
            cause = FallbackCause.EMBED_TIMEOUT if phase[0] == "embed" else FallbackCause.VECTOR_TIMEOUT
            trace.record(phase[0], (time.perf_counter() - t0) * 1000, "timeout", cause)
            raise BackendError(f"timed out after {self.settings.vector_timeout_s}s", cause) from exc
        except KbsearchError as exc:  # the embedder's and the index's mapped errors
            cause = FallbackCause.EMBED_ERROR if phase[0] == "embed" else FallbackCause.VECTOR_ERROR
            trace.record(phase[0], (time.perf_counter() - t0) * 1000, "error", cause, detail=str(exc))
            raise BackendError(str(exc), cause) from exc
        if query.vector is None:
            trace.record("embed", times["embed"])
        cands, found = candidates_of(rows[0], scores[0], build, query, "vector")
        trace.record("vector", times["vector"], candidates=len(cands))
        return cands, q[0], found

    def close(self) -> None:
        """Release the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def bm25_of(question: str, faqs: list[str], bm25: BM25Index | None, faq_rows: dict[str, list[int]],
            trace: Trace) -> dict[str, float]:
    """Each FAQ's BM25 score (its best row's normalised score), scoring only their rows.

    Informational on the vector path: when BM25 is missing or fails, ``{}`` (and the span says why).
    """
    faqs = [f for f in faqs if faq_rows.get(f)]
    if bm25 is None or not faqs:
        return {}
    spans = [faq_rows[f] for f in faqs]
    with trace.span("bm25") as span:
        try:
            norm = bm25.normalised_scores_for(question, [r for part in spans for r in part])
        except KbsearchError as exc:
            span.fail("error", cause_of(exc, FallbackCause.BM25_ERROR), str(exc))
            return {}
    best = np.maximum.reduceat(norm, np.cumsum([0] + [len(part) for part in spans[:-1]]))  # each FAQ's best row
    return dict(zip(faqs, best.tolist()))


def attach_bm25(question: str, cands: list[Candidate], bm25: BM25Index | None, faq_rows: dict[str, list[int]],
                trace: Trace) -> list[Candidate]:
    """``cands`` with the BM25 score filled in where it is missing (see ``bm25_of``)."""
    scores = bm25_of(question, [c.entry.id for c in cands if c.bm25 is None], bm25, faq_rows, trace)
    return [c.evolve(bm25=scores[c.entry.id]) if c.entry.id in scores else c for c in cands] if scores else cands


class VectorStage:
    """``first_stage = "vector"``: FAQs ranked by their best row cosine (``retrieve.vector_fields`` picks the rows)."""

    name = "vector"

    def __init__(self, search: VectorSearch) -> None:
        self.search = search

    def retrieve(self, query: Query, build: Build, trace: Trace) -> Retrieval:
        """See :class:`~kbsearch.retrieve.base.FirstStage`."""
        cands, qvec, found = self.search.search(query, build, trace)
        trace.keep("vector", cands)
        cands = attach_bm25(query.text, cands, build.bm25, build.faq_rows, trace)
        return Retrieval(tuple(cands), "vector", found, qvec)
