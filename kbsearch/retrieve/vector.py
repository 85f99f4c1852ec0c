"""The vector first stage: embed the question, search the vector index, one candidate per FAQ.

Embedding and search run in a worker thread under ``retrieve.vector_timeout_s``, the question embedded
together with the others asked at the same time (``batching.QuestionBatcher``); a timeout, a model
error or a missing, corrupt or mismatched index raises ``BackendError`` with its cause, and the query
path falls back to BM25. The worker's timings are recorded by the asking thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.config import RetrieveSettings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BackendError, KbsearchError, cause_of
from kbsearch.retrieve.base import Query, Retrieval
from kbsearch.retrieve.batching import ModelThreadEmbedder, QuestionBatcher
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
        self._batcher = QuestionBatcher(embedder.embed_queries, settings.question_batch)
        self.model_embedder = ModelThreadEmbedder(embedder, self._batcher)  # the service's embedder, on the model thread
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)

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
            q = (self._batcher.embed(query.text) if query.vector is None else query.vector).reshape(1, -1)
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

        self.breaker.check()
        started = threading.Event()

        def timed() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            started.set()
            return run()

        t0 = time.perf_counter()
        future = self._pool.submit(timed)
        try:
            # Queueing is not failure: waiting for a free worker has its own bound, and the timeout that sends
            # the question to BM25 counts from when the backend starts working on it.
            if not started.wait(self.settings.vector_queue_timeout_s):
                future.cancel()
                trace.record("embed", (time.perf_counter() - t0) * 1000, "timeout", FallbackCause.VECTOR_BUSY)
                raise BackendError(f"every vector worker busy for {self.settings.vector_queue_timeout_s}s",
                                   FallbackCause.VECTOR_BUSY)
            q, scores, rows = future.result(timeout=self.settings.vector_timeout_s)
        except FutureTimeout as exc:
            future.cancel()
            cause = FallbackCause.EMBED_TIMEOUT if phase[0] == "embed" else FallbackCause.VECTOR_TIMEOUT
            trace.record(phase[0], (time.perf_counter() - t0) * 1000, "timeout", cause)
            self.breaker.failed()
            raise BackendError(f"timed out after {self.settings.vector_timeout_s}s", cause) from exc
        except BackendError as exc:
            if exc.cause is FallbackCause.VECTOR_BUSY:
                self.breaker.failed()
                raise
            raise self._failed(exc, phase[0], t0, trace) from exc
        except KbsearchError as exc:  # the embedder's and the index's mapped errors
            raise self._failed(exc, phase[0], t0, trace) from exc
        self.breaker.succeeded()
        if query.vector is None:
            trace.record("embed", times["embed"])
        cands, found = candidates_of(rows[0], scores[0], build, query, "vector")
        trace.record("vector", times["vector"], candidates=len(cands))
        return cands, q[0], found

    def _failed(self, exc: KbsearchError, phase: str, t0: float, trace: Trace) -> BackendError:
        cause = FallbackCause.EMBED_ERROR if phase == "embed" else FallbackCause.VECTOR_ERROR
        trace.record(phase, (time.perf_counter() - t0) * 1000, "error", cause, detail=str(exc))
        self.breaker.failed()
        return BackendError(str(exc), cause)

    def close(self) -> None:
        """Release the worker threads and the model thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._batcher.close()


class CircuitBreaker:
    """Stops sending questions to a backend that keeps failing, and probes it to recover.

    After ``threshold`` failures in a row the circuit opens: for ``cooldown_s`` every call is refused at once
    (cause ``circuit-open``: the question goes straight to BM25 instead of waiting out another timeout).
    Then one call at a time is let through as a probe; a success closes the circuit, a failure opens it again.

    Args:
        threshold: Consecutive failures that open the circuit (0 = never open).
        cooldown_s: How long it stays open before a probe.
        clock: Monotonic seconds (tests inject one).
    """

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown_s, self.clock = threshold, cooldown_s, clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (probing)."""
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def check(self) -> None:
        """Let a call through, or refuse it while the circuit is open (and while a probe is out).

        Raises:
            BackendError: cause ``circuit-open``.
        """
        with self._lock:
            if self.opened_at is None:
                return
            if self.clock() - self.opened_at >= self.cooldown_s and not self._probing:
                self._probing = True  # this call is the probe
                return
        raise BackendError(f"vector path off after {self.failures} failures in a row; probing every "
                           f"{self.cooldown_s:g}s", FallbackCause.CIRCUIT_OPEN)

    def succeeded(self) -> None:
        """A call worked: close the circuit."""
        with self._lock:
            self.failures, self.opened_at, self._probing = 0, None, False

    def failed(self) -> None:
        """A call failed: count it; open (or re-open) the circuit at the threshold or when a probe fails."""
        with self._lock:
            self.failures += 1
            if self.threshold and (self._probing or self.failures >= self.threshold):
                self.opened_at, self._probing = self.clock(), False


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
