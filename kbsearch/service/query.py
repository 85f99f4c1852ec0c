"""The one query function the API and the CLI share, with its fallback chain.

Normal path: embed the question -> FAISS top ``vector_top_k`` rows -> group rows to FAQs (max) -> drop
entries that are not valid today -> (``first_stage=fused``, the default: add BM25's FAQs and rank every
candidate by a linear fusion of its question, answer and BM25 scores, see ``_linear``) -> rerank the
best ``rerank_top_k`` FAQs (unless the reranker is ``none``) -> top ``top_k`` -> compare the deciding
score with *its own* threshold -> answer or hand off.

Fallbacks: if embedding or vector search fails (exception, timeout, missing or corrupt index), BM25
answers with ``degraded=True``; if BM25 fails too, the canned hand-off message. If the reranker fails,
the vector ranking decides (degraded). No backend failure escapes as an exception.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from kbsearch.config import Settings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BackendError, IndexCorruptError, KbsearchError, NotFoundError
from kbsearch.index.store import THRESHOLDS, Build, active_build_id, load_build, read_thresholds
from kbsearch.rerank.base import Reranker
from kbsearch.rerank.kb import KB_RERANKER_DOC, KbReranker, blend, kb_reranker_weight
from kbsearch.service.handoff import handoff_for
from kbsearch.types import Answer, FaqEntry, Hit, IndexRow, Mode, Scores

log = logging.getLogger(__name__)


@dataclass
class _Candidate:
    entry: FaqEntry
    row: IndexRow
    vector: float | None = None
    bm25: float | None = None
    rerank: float | None = None
    fused: float | None = None


def _group(rows: np.ndarray, scores: np.ndarray, build: Build, today: dt.date, kind: str) -> list[_Candidate]:
    """Collapse index rows into one candidate per FAQ id (best row wins), valid entries only, best first."""
    best: dict[str, _Candidate] = {}
    for r, s in zip(rows.tolist(), scores.tolist()):
        if r < 0:
            continue
        row = build.rows[r]
        entry = build.entries.get(row.faq_id)
        if entry is None or not entry.is_valid_on(today):
            continue
        cand = best.get(row.faq_id)
        if cand is None:
            best[row.faq_id] = _Candidate(entry=entry, row=row, **{kind: float(s)})
        elif float(s) > getattr(cand, kind):
            cand.row = row
            setattr(cand, kind, float(s))
    return sorted(best.values(), key=lambda c: -getattr(c, kind))


def _trace_row(c: _Candidate, kind: str) -> dict[str, Any]:
    """One candidate as hit-testing shows it: which row matched, and its score."""
    return {"id": c.entry.id, "score": getattr(c, kind), "matched": c.row.kind, "chunk": c.row.chunk,
            "text": c.row.text[:200]}


def _first_stage_score(c: _Candidate) -> float:
    """The score the first stage ranked ``c`` by: fused (linear or RRF), else vector, else BM25."""
    for score in (c.fused, c.vector, c.bm25):
        if score is not None and np.isfinite(score):
            return float(score)
    return 0.0


def rerank_doc(entry: FaqEntry) -> str:
    """The whole-FAQ document a reranker judges (and a pair model trains on): question, then answer."""
    return f"{entry.question}\n{entry.answer}"


def rerank_text(cand: _Candidate, build: Build, doc: str = "faq") -> str:
    """The document a reranker judges.

    ``doc="faq"``: the matched answer chunk (which starts with its question), or question + answer.
    ``doc="question"``: the matched question or variant, else the FAQ's question.
    """
    if doc == "question":
        return cand.row.text if cand.row.kind != "chunk" else cand.entry.question
    if cand.row.kind == "chunk":
        chunk = build.chunks.get((cand.entry.id, cand.row.chunk))
        if chunk is not None:
            return chunk.text
    return rerank_doc(cand.entry)


class QueryEngine:
    """Answers questions against the active build of each KB.

    Args:
        settings: Service settings (thresholds, top-k, timeouts, hand-off messages).
        embedder: The query embedder (must match the builds' model).
        reranker: The second stage (``enabled=False`` to skip it).
        clock: Returns "today" for validity checks (tests inject a fixed day).
    """

    def __init__(self, settings: Settings, embedder: Embedder, reranker: Reranker,
                 clock: Callable[[], dt.date] = dt.date.today):
        self.settings = settings
        self.embedder = embedder
        self.reranker = reranker
        self._clock = clock
        self._builds: dict[str, Build] = {}
        self._failed: dict[str, str] = {}  # kb -> id of an active build that failed to load
        self._thresholds: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}  # kb -> (mtime, file)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kbsearch-vector")
        self.embedder_error: str | None = None
        self.reranker_error: str | None = None
        self.loaded = False

    # ---------------------------------------------------------------- loading
    def load(self, kb: str | None = None) -> None:
        """Load the models and the active build of ``kb`` (default ``settings.default_kb``); idempotent.

        A model that fails to load is recorded, not raised: the service then runs degraded (BM25),
        and ``status()`` says why. Other KBs load on their first question.
        """
        if self.loaded:
            return
        try:
            self.embedder.load()
        except Exception as exc:  # any model-loading failure: serve from BM25 and report it
            self.embedder_error = f"{type(exc).__name__}: {exc}"
            log.error("embedder failed to load: %s", self.embedder_error)
        try:
            self.reranker.load()
        except Exception as exc:
            self.reranker_error = f"{type(exc).__name__}: {exc}"
            log.error("reranker failed to load: %s", self.reranker_error)
        kb = kb or self.settings.default_kb
        try:
            self.build(kb)
        except NotFoundError:
            log.warning("knowledge base %r has no build yet; run `kbsearch ingest`", kb)
        except IndexCorruptError as exc:
            log.error("default knowledge base is corrupt: %s", exc)
        self.loaded = True

    def build(self, kb: str) -> Build:
        """The loaded active build of ``kb``, reloaded when ACTIVE has moved.

        Raises:
            NotFoundError: the KB does not exist or has no active build.
            IndexCorruptError: the active build is unreadable and no earlier build is loaded.
        """
        kb_dir = self.settings.kb_dir(kb)
        active = active_build_id(kb_dir)
        if active is None:
            raise NotFoundError(f"unknown knowledge base {kb!r}")
        current = self._builds.get(kb)
        if current is not None and (current.build_id == active or self._failed.get(kb) == active):
            return current
        with self._lock:
            current = self._builds.get(kb)
            if current is not None and (current.build_id == active or self._failed.get(kb) == active):
                return current
            try:
                fresh = load_build(kb_dir, active, device=self.settings.device)
            except IndexCorruptError:
                if current is not None:
                    # Remembered, so a broken build is not re-read (and re-hashed) on every question.
                    self._failed[kb] = active
                    log.exception("new build %s of %r is corrupt; still serving %s", active, kb, current.build_id)
                    return current
                raise
            self._check_embedder(fresh)
            self._failed.pop(kb, None)
            self._builds[kb] = fresh
            return fresh

    def _check_embedder(self, build: Build) -> None:
        """Refuse the vector index of a build made with another model, dimension or prompts.

        Query vectors from a different model land in another space: the search would return confident
        nonsense, or fail on the dimension. The build is then served from BM25 until it is rebuilt.
        """
        if self.embedder_error is not None or build.vectors is None:
            return
        built = build.manifest.get("embedder", {})
        serving = self.embedder.describe()
        keys = ("model_id", "dim", "query_prompt", "document_prompt")
        diff = {k: (built.get(k), serving.get(k)) for k in keys if built.get(k) != serving.get(k)}
        if diff:
            detail = ", ".join(f"{k} {b!r} (build) != {v!r} (service)" for k, (b, v) in diff.items())
            build.vectors = None
            build.vector_error = f"build {build.build_id} was embedded differently: {detail}; run `kbsearch rebuild-index`"
            log.error(build.vector_error)

    def status(self) -> dict[str, object]:
        """Readiness: models and builds loaded, with reasons for anything that is not."""
        kbs = {
            name: {"build": b.build_id, "entries": len(b.entries), "vector": b.vector_error or "ok",
                   "bm25": b.bm25_error or "ok", **self._kb_reranker_status(name)}
            for name, b in dict(self._builds).items()
        }
        return {
            "loaded": self.loaded,
            "embedder": self.embedder_error or "ok",
            "reranker": self.reranker_error or ("ok" if self.reranker.enabled else "none"),
            "kbs": kbs,
            "ready": self.loaded and self.embedder_error is None and bool(kbs)
            and all(v["vector"] == "ok" for v in kbs.values()),
        }

    def _kb_reranker_status(self, kb: str) -> dict[str, str]:
        """With the kb backend: which trained model serves ``kb``, or why none does."""
        if not isinstance(self.reranker, KbReranker):
            return {}
        path, why = self.reranker.resolve(self.settings.kb_dir(kb))
        return {"reranker": f"ok: {path} (blend weight {kb_reranker_weight(path)})" if path is not None else why}

    # ---------------------------------------------------------------- asking
    def ask(self, question: str, kb: str | None = None, top_k: int | None = None, *, explain: bool = False,
            query_vector: np.ndarray | None = None) -> Answer:
        """Answer one question from ``kb`` (default ``settings.default_kb``).

        Args:
            question: The user's question.
            kb: Knowledge base name.
            top_k: Results to return (default ``settings.top_k``).
            explain: Record every stage's candidates and the rule that decided (``Answer.explain``).
            query_vector: The question's embedding when the caller already has it (batch evaluation);
                None embeds it here.

        Raises:
            NotFoundError: the KB does not exist (the API maps this to 404). Every backend failure
                is turned into a degraded answer or the canned hand-off instead.
        """
        kb = kb or self.settings.default_kb
        top_k = top_k or self.settings.top_k
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        trace: dict[str, Any] | None = {} if explain else None
        try:
            return self._ask(question, kb, top_k, t0, timings, query_vector, trace)
        except NotFoundError:
            raise
        except Exception as exc:  # the last net: a user must get the hand-off, never a 500
            log.exception("unexpected error answering a question on %r", kb)
            return self._canned(question, f"internal-error: {type(exc).__name__}", "", timings, t0, trace=trace)

    def _ask(self, question: str, kb: str, top_k: int, t0: float, timings: dict[str, float],
             query_vector: np.ndarray | None, trace: dict[str, Any] | None) -> Answer:
        notes: list[str] = []
        today = self._clock()
        try:
            build = self.build(kb)
        except IndexCorruptError as exc:
            log.error("cannot load knowledge base %r: %s", kb, exc)
            return self._canned(question, f"index-unavailable: {exc}", "", timings, t0, trace=trace)
        stage = self.settings.first_stage
        degraded = False

        # 1. first stage: vector and/or BM25 candidates, one per FAQ
        vec: list[_Candidate] | None = None
        qvec: np.ndarray | None = None
        if stage != "bm25":
            try:
                vec, qvec = self._vector(question, build, today, timings, query_vector)
            except KbsearchError as exc:
                degraded = True
                notes.append(f"vector path failed, BM25 used: {exc}")
                log.warning("vector path failed for %r: %s", kb, exc)
        lex: list[_Candidate] | None = None
        bm25_rows: np.ndarray | None = None  # every row's normalised BM25 score, when BM25 ran
        if stage != "vector" or vec is None:
            lexical = self._lexical(question, build, today, timings)
            if lexical is not None:
                lex, bm25_rows = lexical
        if vec is None and lex is None:
            reason = f"backend-failure: vector and BM25 unavailable ({build.bm25_error or 'BM25 failed'})"
            return self._canned(question, reason, build.build_id, timings, t0, notes, trace)
        if trace is not None:
            trace["first_stage"] = stage
            trace["vector"] = [_trace_row(c, "vector") for c in (vec or [])]
            trace["bm25"] = [_trace_row(c, "bm25") for c in (lex or [])]

        if vec is not None and lex is not None and stage == "hybrid":
            cands = self._fuse(vec, lex, build, qvec)
            if trace is not None:
                trace["fused"] = [{"id": c.entry.id, "score": c.fused} for c in cands]
            mode: Mode = "vector"
        elif vec is not None and qvec is not None and stage == "fused":
            cands, mode = self._linear(vec, lex or [], bm25_rows, build, qvec, timings), "vector"
            if trace is not None:
                trace["fused"] = [{"id": c.entry.id, "score": c.fused, "vector": c.vector, "bm25": c.bm25}
                                  for c in cands]
        elif vec is not None:
            cands, mode = vec, "vector"
        else:
            cands, mode = lex or [], "bm25"
        if stage != "bm25":
            self._attach_bm25(question, cands, build, timings)

        # 2. second stage
        if not self.reranker.enabled:
            notes.append(f"reranker: none (stage skipped; {mode} score decides)")
        elif self.reranker_error is not None:
            degraded = True
            notes.append(f"reranker unavailable, {mode} ranking used: {self.reranker_error}")
        elif cands:
            try:
                reranker, doc, why, weight = self._reranker_for(kb)
                if reranker is None:
                    notes.append(f"reranker: {why} (stage skipped; {mode} score decides)")
                else:
                    self._rerank(reranker, doc, question, cands, build, timings, weight)
                    if weight < 1.0:  # a KB reranker blended with the first stage reorders; it does not decide
                        notes.append(f"reranker: KB reranker blended with the {mode} score (weight {weight}); "
                                     f"{mode} score decides")
                    else:
                        mode = "rerank"
                    if trace is not None:
                        trace["rerank"] = [{"id": c.entry.id, "score": c.rerank} for c in cands
                                           if c.rerank is not None]
                        trace["rerank_weight"] = weight
            except Exception as exc:  # a reranker that is down must not fail the request
                degraded = True
                notes.append(f"reranker failed, {mode} ranking used: {type(exc).__name__}: {exc}")
                log.warning("reranker failed: %s", exc)
        return self._finish(question, cands, mode, degraded, build, top_k, timings, notes, t0, trace)

    # ---------------------------------------------------------------- stages
    def _vector(self, question: str, build: Build, today: dt.date, timings: dict[str, float],
                query_vector: np.ndarray | None) -> tuple[list[_Candidate], np.ndarray]:
        if self.embedder_error is not None:
            raise BackendError(f"embedder not loaded: {self.embedder_error}")
        if build.vectors is None:
            raise IndexCorruptError(build.vector_error or "vector index missing")
        index = build.vectors
        fields = self.settings.vector_fields
        allowed = None if fields == "both" else build.rows_of_kind("chunk" if fields == "answer" else "question")

        def run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            q = self.embedder.embed_queries([question]) if query_vector is None else query_vector.reshape(1, -1)
            if allowed is None:
                scores, rows = index.search(q, self.settings.vector_top_k)
            else:  # exact search within the allowed rows only
                sims = index.similarity(q[0], allowed)
                top = np.argsort(-sims, kind="stable")[: self.settings.vector_top_k]
                scores, rows = sims[top][None, :], np.asarray(allowed, dtype=np.int64)[top][None, :]
            return q, scores, rows

        t = time.perf_counter()
        future = self._pool.submit(run)
        try:
            q, scores, rows = future.result(timeout=self.settings.vector_timeout_s)
        except FutureTimeout as exc:
            future.cancel()
            raise _VectorFailure(f"timed out after {self.settings.vector_timeout_s}s") from exc
        except Exception as exc:  # model or FAISS errors of any type
            raise _VectorFailure(f"{type(exc).__name__}: {exc}") from exc
        finally:
            timings["vector"] = (time.perf_counter() - t) * 1000
        return _group(rows[0], scores[0], build, today, "vector"), q[0]

    def _lexical(self, question: str, build: Build, today: dt.date,
                 timings: dict[str, float]) -> tuple[list[_Candidate], np.ndarray] | None:
        """BM25 candidates and every row's normalised BM25 score, or None when BM25 is unavailable or fails."""
        if build.bm25 is None:
            return None
        t = time.perf_counter()
        try:
            found = build.bm25.search(question, self.settings.bm25_top_k)
        except Exception:  # rank-bm25 internals: this backend is down for this question
            log.exception("BM25 failed")
            return None
        finally:
            timings["bm25"] = (time.perf_counter() - t) * 1000
        return _group(found.rows, found.normalised, build, today, "bm25"), found.all_normalised

    def _fuse(self, vec: list[_Candidate], lex: list[_Candidate], build: Build,
              qvec: np.ndarray | None) -> list[_Candidate]:
        """Weighted reciprocal-rank fusion of the two lists (``weight/(k + rank)`` summed per FAQ).

        FAQs found by BM25 alone get their vector score computed exactly from the index, so the vector
        threshold can judge whichever FAQ ends up on top.
        """
        k = self.settings.rrf_k
        merged: dict[str, _Candidate] = {}
        for ranked, weight in ((vec, 1.0), (lex, self.settings.rrf_bm25_weight)):
            for rank, c in enumerate(ranked, start=1):
                m = merged.get(c.entry.id)
                if m is None:
                    m = merged[c.entry.id] = _Candidate(entry=c.entry, row=c.row, vector=c.vector, bm25=c.bm25,
                                                        fused=0.0)
                else:
                    m.vector = m.vector if m.vector is not None else c.vector
                    m.bm25 = m.bm25 if m.bm25 is not None else c.bm25
                m.fused = (m.fused or 0.0) + weight / (k + rank)
        missing = [m for m in merged.values() if m.vector is None]
        if missing and qvec is not None and build.vectors is not None:
            for m in missing:
                rows = build.faq_rows.get(m.entry.id, [])
                sims = build.vectors.similarity(qvec, rows)
                best = int(np.argmax(sims))
                m.vector = float(sims[best])
        return sorted(merged.values(), key=lambda c: (-(c.fused or 0.0), -(c.vector or 0.0)))

    def _linear(self, vec: list[_Candidate], lex: list[_Candidate], bm25_rows: np.ndarray | None, build: Build,
                qvec: np.ndarray, timings: dict[str, float]) -> list[_Candidate]:
        """Linear score fusion over every row of each candidate FAQ (vector or BM25 candidates).

        ``fused = question side + fused_answer_weight * answer side + fused_bm25_weight * BM25``, where the
        question side is ``(best + w * mean of the best k)`` over the FAQ's question and variant cosines
        divided by ``1 + w``, the answer side is the best answer-chunk cosine (the question side when the
        FAQ has no chunk), and BM25 is the FAQ's best normalised row score, read from ``bm25_rows`` (the
        BM25 stage's scores of every row, so the query is not scored twice; None when BM25 failed: the
        vector sides rank alone). Each candidate's ``vector`` score stays its best row cosine, so
        ``threshold_vector`` keeps its meaning.
        """
        s = self.settings
        merged = {c.entry.id: c for c in vec}
        for c in lex:
            merged.setdefault(c.entry.id, _Candidate(entry=c.entry, row=c.row))
        cands = list(merged.values())
        spans = [build.faq_rows.get(c.entry.id, []) for c in cands]
        rows = [r for span in spans for r in span]
        t = time.perf_counter()
        sims = build.vectors.similarity(qvec, rows) if build.vectors is not None else np.zeros(len(rows))
        bm = bm25_rows[rows] if bm25_rows is not None and rows else None
        timings["fuse"] = (time.perf_counter() - t) * 1000
        is_chunk = np.array([build.rows[r].kind == "chunk" for r in rows], dtype=bool)
        start = 0
        for c, span in zip(cands, spans):
            part = slice(start, start + len(span))
            start += len(span)
            if not span:
                c.fused = -np.inf
                continue
            cos, chunk = sims[part], is_chunk[part]
            best = int(np.argmax(cos))
            c.vector, c.row = float(cos[best]), build.rows[span[best]]
            q_side = np.sort(cos[~chunk])[::-1] if (~chunk).any() else np.sort(cos)[::-1]
            q_score = (q_side[0] + s.fused_variant_weight * q_side[: s.fused_variant_k].mean()) / (
                1 + s.fused_variant_weight)
            a_score = cos[chunk].max() if chunk.any() else q_side[0]
            if bm is not None:
                c.bm25 = float(bm[part].max())
            c.fused = float(q_score + s.fused_answer_weight * a_score + s.fused_bm25_weight * (c.bm25 or 0.0))
        return sorted(cands, key=lambda c: (-(c.fused or 0.0), -(c.vector or 0.0)))

    @staticmethod
    def _attach_bm25(question: str, cands: list[_Candidate], build: Build, timings: dict[str, float]) -> None:
        """Fill in each candidate's BM25 score (best row of its FAQ), scoring only the candidates' rows.

        Informational on the vector path: a BM25 failure leaves the scores unset and is logged.
        """
        cands = [c for c in cands if c.bm25 is None]
        if build.bm25 is None or not cands:
            return
        spans = [build.faq_rows.get(c.entry.id, []) for c in cands]
        rows = [r for span in spans for r in span]
        t = time.perf_counter()
        try:
            norm = build.bm25.normalised_scores_for(question, rows)
        except Exception:  # rank-bm25 internals; the answer does not depend on this score
            log.exception("BM25 scoring of vector candidates failed")
            return
        finally:
            timings["bm25"] = (time.perf_counter() - t) * 1000
        start = 0
        for c, span in zip(cands, spans):
            c.bm25 = float(norm[start : start + len(span)].max()) if span else 0.0
            start += len(span)

    def _reranker_for(self, kb: str) -> tuple[Reranker | None, str, str, float]:
        """The reranker that scores ``kb``'s candidates, what it reads (``rerank_doc``), why none, and its
        blend weight with the first stage (1.0: its order alone).

        The ``kb`` backend resolves the KB's own trained model (question-question, with the weight its
        self-check chose, see ``kbsearch.rerank.kb``); every other backend serves all KBs with one model.
        """
        if isinstance(self.reranker, KbReranker):
            model, why, weight = self.reranker.for_kb(self.settings.kb_dir(kb))
            return model, KB_RERANKER_DOC, why, weight
        return self.reranker, self.settings.rerank_doc, "ok", 1.0

    def _rerank(self, reranker: Reranker, doc: str, question: str, cands: list[_Candidate], build: Build,
                timings: dict[str, float], weight: float = 1.0) -> None:
        head = cands[: self.settings.rerank_top_k]
        t = time.perf_counter()
        try:
            scores = reranker.score(question, [rerank_text(c, build, doc) for c in head])
        finally:
            timings["rerank"] = (time.perf_counter() - t) * 1000
        for c, s in zip(head, scores):
            c.rerank = float(s)
        # FAQs beyond the rerank window keep their first-stage order after the reranked ones.
        if weight >= 1.0:
            cands[: len(head)] = sorted(head, key=lambda c: (-(c.rerank or 0.0), -(c.vector or 0.0)))
            return
        first = [_first_stage_score(c) for c in head]
        keys = blend(first, [c.rerank or 0.0 for c in head], weight)
        order = sorted(range(len(head)), key=lambda i: -keys[i])  # stable: ties keep the first-stage order
        cands[: len(head)] = [head[i] for i in order]

    # ---------------------------------------------------------------- results
    def _threshold(self, mode: Mode, kb: str) -> tuple[float, float, str]:
        """The threshold and top-1/top-2 margin for ``mode``'s score kind, and where they come from.

        A KB's calibrated threshold (``kbsearch calibrate``) wins over the global setting when it was
        measured with the model, reranker and first stage now serving; otherwise the setting applies.
        """
        setting = {"rerank": self.settings.threshold_rerank, "vector": self.settings.threshold_vector,
                   "bm25": self.settings.threshold_bm25}[mode]
        cal = self._calibrated(kb).get(mode)
        if cal is None:
            return setting, 0.0, "setting"
        # The reranker that produced the deciding score: none unless the rerank score decides (the stage
        # can be configured yet skipped for a KB, e.g. a kb reranker that failed its self-check).
        serving = {"model_id": self.embedder.model_id, "first_stage": self.settings.first_stage,
                   "reranker": self.reranker.model_id if mode == "rerank" else "none"}
        if any(cal.get(k) != v for k, v in serving.items()):
            return setting, 0.0, "setting (calibration was for another configuration)"
        return float(cal["threshold"]), float(cal.get("margin") or 0.0), f"calibrated {cal.get('date', '')}"

    def _calibrated(self, kb: str) -> dict[str, dict[str, Any]]:
        """The KB's thresholds file, re-read when it changes (one stat per question)."""
        path = self.settings.kb_dir(kb) / THRESHOLDS
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._thresholds.get(kb)
        if cached is None or cached[0] != mtime:
            cached = (mtime, read_thresholds(self.settings.kb_dir(kb)))
            self._thresholds[kb] = cached
        return cached[1]

    def _finish(self, question: str, cands: list[_Candidate], mode: Mode, degraded: bool, build: Build,
                top_k: int, timings: dict[str, float], notes: list[str], t0: float,
                trace: dict[str, Any] | None) -> Answer:
        kind = mode if mode != "canned" else "vector"
        hits = tuple(
            Hit(entry=c.entry, score=float(getattr(c, kind) or 0.0),
                scores=Scores(vector=c.vector, bm25=c.bm25, rerank=c.rerank), matched=c.row)
            for c in cands[:top_k]
        )
        threshold, margin, source = self._threshold(mode, build.path.parent.parent.name)
        gap = (getattr(cands[0], kind) or 0.0) - (getattr(cands[1], kind) or 0.0) if len(cands) > 1 else None
        handoff = None
        if not hits:
            handoff = handoff_for(question, "no-match: no candidate FAQ", self.settings)
        elif hits[0].score < threshold:
            handoff = handoff_for(
                question, f"below-threshold: {mode} score {hits[0].score:.3f} < threshold_{mode} {threshold:.3f}",
                self.settings)
        elif margin > 0 and gap is not None and gap < margin:
            handoff = handoff_for(
                question, f"ambiguous: top-1/top-2 {mode} margin {gap:.3f} < calibrated margin {margin:.3f}",
                self.settings)
        if trace is not None:
            trace["decision"] = {"score_kind": mode, "score": hits[0].score if hits else None,
                                 "threshold": threshold, "margin": margin, "threshold_source": source,
                                 "rule": handoff.reason if handoff else "answered"}
        timings["total"] = (time.perf_counter() - t0) * 1000
        return Answer(answered=handoff is None, hits=hits, handoff=handoff, mode=mode, degraded=degraded,
                      index_version=build.build_id, timings_ms={k: round(v, 2) for k, v in timings.items()},
                      notes=tuple(notes), candidates=tuple(c.entry.id for c in cands), explain=trace)

    def _canned(self, question: str, reason: str, index_version: str, timings: dict[str, float], t0: float,
                notes: list[str] | None = None, trace: dict[str, Any] | None = None) -> Answer:
        timings["total"] = (time.perf_counter() - t0) * 1000
        if trace is not None:
            trace["decision"] = {"score_kind": "canned", "score": None, "threshold": None, "rule": reason}
        return Answer(answered=False, hits=(), handoff=handoff_for(question, reason, self.settings),
                      mode="canned", degraded=True, index_version=index_version,
                      timings_ms={k: round(v, 2) for k, v in timings.items()}, notes=tuple(notes or ()),
                      explain=trace)

    def close(self) -> None:
        """Release the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class _VectorFailure(KbsearchError):
    """The embedding model or the vector index failed for this question (the query falls back)."""
