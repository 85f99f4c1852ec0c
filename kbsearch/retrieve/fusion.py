"""The fusion first stages: ``fused`` (a linear fusion of each FAQ's row scores, the default) and ``hybrid``
(reciprocal-rank fusion of the vector and BM25 lists).

The fusions themselves are pure functions over frozen candidates and score arrays
(``linear_fusion``, ``reciprocal_rank_fusion``); the stage classes gather those arrays from the build.
Both keep each candidate's ``vector`` score its best row cosine, so ``threshold_vector`` decides the
hand-off as in every other mode. When BM25 fails, both rank by the vector side alone (a fallback).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.config import RetrieveSettings
from kbsearch.errors import KbsearchError, cause_of
from kbsearch.retrieve.base import Query, Retrieval
from kbsearch.retrieve.lexical import Bm25Search
from kbsearch.retrieve.vector import VectorSearch, attach_bm25, bm25_of
from kbsearch.types import Candidate, IndexRow

if TYPE_CHECKING:
    from kbsearch.index.store import Build
    from kbsearch.telemetry.trace import Trace


@dataclass(frozen=True)
class LinearWeights:
    """The weights of ``linear_fusion`` (``retrieve.fused_*``)."""

    answer: float = 0.35
    bm25: float = 0.1
    variant_k: int = 5
    variant_weight: float = 1.0


def _order(c: Candidate) -> tuple[float, float]:
    return (-(c.fusion or 0.0), -(c.vector or 0.0))


def linear_fusion(cands: Sequence[Candidate], spans: Sequence[Sequence[int]], sims: np.ndarray,
                  bm25: np.ndarray | None, rows: Sequence[IndexRow], w: LinearWeights) -> list[Candidate]:
    """Score each FAQ from all its rows and rank by that score.

    ``fusion = question side + w.answer * answer side + w.bm25 * BM25``, where the question side is
    ``(best + w.variant_weight * mean of the best w.variant_k) / (1 + w.variant_weight)`` over the FAQ's
    question and variant cosines, the answer side is its best answer-chunk cosine (the question side's best
    when it has no chunk), and BM25 its best normalised row score. Each candidate's ``vector`` becomes its
    best row cosine (the first such row on a tie) and ``row`` that row.

    The arithmetic runs over all candidates' rows at once (grouped, sorted, cumulated), in float64; one
    small numpy computation per FAQ cost ~5 ms a question with a hundred candidates.

    Args:
        cands: The candidate FAQs (vector and BM25 finds, one each).
        spans: Each candidate's row numbers, in the same order.
        sims: The question's cosine with every row of ``spans``, concatenated.
        bm25: Every row of ``spans``' normalised BM25 score, concatenated (None: BM25 failed; the vector sides rank).
        rows: The build's index rows.
        w: The weights.
    """
    n = len(cands)
    lengths = np.fromiter((len(span) for span in spans), dtype=np.intp, count=n)
    flat = [r for span in spans for r in span]
    if not flat:
        return sorted((c.evolve(fusion=-np.inf, rank=-np.inf, ranked_by="fused") for c in cands), key=_order)
    cos = np.asarray(sims, dtype=np.float64)
    group = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    is_chunk = np.fromiter((rows[r].kind == "chunk" for r in flat), dtype=bool, count=len(flat))
    # each FAQ's rows, best cosine first; lexsort is stable, so equal cosines keep their order (as argmax)
    order = np.lexsort((-cos, group))
    filled = lengths > 0
    best_pos = np.where(filled, order[np.minimum(starts, len(flat) - 1)], 0)
    # the question side: question and variant rows, or every row of a FAQ that has only chunks
    has_question = np.bincount(group, weights=~is_chunk, minlength=n) > 0
    q_rows = order[(~is_chunk | ~has_question[group])[order]]
    q_count = np.bincount(group[q_rows], minlength=n)
    q_start = np.cumsum(q_count) - q_count
    q_cos = cos[q_rows]
    q_sum = np.concatenate(([0.0], np.cumsum(q_cos)))
    top_k = np.minimum(q_count, w.variant_k)
    q_best = q_cos[np.minimum(q_start, len(q_cos) - 1)]
    q_mean = (q_sum[q_start + top_k] - q_sum[q_start]) / np.maximum(top_k, 1)
    q_score = (q_best + w.variant_weight * q_mean) / (1 + w.variant_weight)
    a_best = np.full(n, -np.inf)
    np.maximum.at(a_best, group[is_chunk], cos[is_chunk])
    a_score = np.where(np.isfinite(a_best), a_best, q_best)
    if bm25 is not None:
        bm_best = np.full(n, -np.inf)
        np.maximum.at(bm_best, group, np.asarray(bm25, dtype=np.float64))
        bms: list[float | None] = bm_best.tolist()
    else:
        bms = [c.bm25 for c in cands]
    partial = (q_score + w.answer * a_score).tolist()
    vectors, best_rows = cos[best_pos].tolist(), [flat[i] for i in best_pos.tolist()]
    out = []
    for i, c in enumerate(cands):
        if not filled[i]:
            out.append(c.evolve(fusion=-np.inf, rank=-np.inf, ranked_by="fused"))
            continue
        bm = bms[i]
        fused = partial[i] + w.bm25 * (bm or 0.0)
        out.append(c.evolve(vector=vectors[i], row=rows[best_rows[i]], bm25=bm, fusion=fused, rank=fused,
                            ranked_by="fused"))
    return sorted(out, key=_order)


def reciprocal_rank_fusion(lists: Sequence[tuple[Sequence[Candidate], float]], k: int,
                           vector_of: Mapping[str, float] | None = None,
                           bm25_of: Mapping[str, float] | None = None) -> list[Candidate]:
    """Weighted reciprocal-rank fusion: ``sum(weight / (k + rank))`` per FAQ over the ranked lists.

    A FAQ keeps the row and scores of the first list it appears in, filled in from later ones;
    ``vector_of`` / ``bm25_of`` give the vector / BM25 score of FAQs no list scored that way.
    """
    merged: dict[str, list] = {}  # faq id -> [candidate, vector, bm25, fusion]
    for ranked, weight in lists:
        for rank, c in enumerate(ranked, start=1):
            m = merged.get(c.entry.id)
            if m is None:
                m = merged[c.entry.id] = [c, c.vector, c.bm25, 0.0]
            else:
                m[1] = m[1] if m[1] is not None else c.vector
                m[2] = m[2] if m[2] is not None else c.bm25
            m[3] = m[3] + weight / (k + rank)
    vector_of, bm25_of = vector_of or {}, bm25_of or {}
    out = [c.evolve(vector=vec if vec is not None else vector_of.get(faq), bm25=bm if bm is not None else bm25_of.get(faq),
                    fusion=f, rank=f, ranked_by="rrf")
           for faq, (c, vec, bm, f) in merged.items()]
    return sorted(out, key=_order)


class _FusionStage:
    """Shared by both fusions: the vector search (its failure is the query path's fallback to BM25) and a
    BM25 search whose failure leaves the vector side to rank alone."""

    name = "fusion"

    def __init__(self, vector: VectorSearch, bm25: Bm25Search, settings: RetrieveSettings) -> None:
        self.vector, self.bm25, self.settings = vector, bm25, settings

    def _both(self, query: Query, build: Build, trace: Trace) -> tuple[list[Candidate], np.ndarray,
                                                                          list[Candidate] | None, np.ndarray | None, int]:
        vec, qvec, found = self.vector.search(query, build, trace)
        trace.keep("vector", vec)
        try:
            lex, every, found_lex = self.bm25.search(query, build, trace)
        except KbsearchError as exc:
            trace.fallback(cause_of(exc, FallbackCause.BM25_ERROR), str(exc),
                           f"BM25 failed, {self.name} ranks by the vector side alone")
            return vec, qvec, None, None, found
        trace.keep("bm25", lex)
        return vec, qvec, lex, every, max(found, found_lex)


class LinearFusionStage(_FusionStage):
    """``first_stage = "fused"`` (the default): vector and BM25 candidates, ranked by ``linear_fusion``."""

    name = "fused"

    def retrieve(self, query: Query, build: Build, trace: Trace) -> Retrieval:
        """See :class:`~kbsearch.retrieve.base.FirstStage`."""
        vec, qvec, lex, every, found = self._both(query, build, trace)
        merged = {c.entry.id: c for c in vec}
        for c in lex or []:
            if c.entry.id not in merged:  # a BM25-only find: its scores are computed from all its rows below
                merged[c.entry.id] = c.evolve(bm25=None)
        cands = list(merged.values())
        s = self.settings
        with trace.span("fuse") as span:
            spans = [build.faq_rows.get(c.entry.id, []) for c in cands]
            rows = [r for part in spans for r in part]
            assert build.vectors is not None  # the vector search above succeeded
            sims = build.vectors.similarity(qvec, rows)
            bm = every[rows] if every is not None and rows else None
            ranked = linear_fusion(cands, spans, sims, bm, build.rows,
                                   LinearWeights(s.fused_answer_weight, s.fused_bm25_weight, s.fused_variant_k,
                                                 s.fused_variant_weight))
            span.candidates = len(ranked)
        if every is None:  # BM25 failed above: try the candidates' rows alone (their scores are informational)
            ranked = attach_bm25(query.text, ranked, build.bm25, build.faq_rows, trace)
        trace.keep("fused", ranked)
        return Retrieval(tuple(ranked), "vector", found, qvec)


class RrfStage(_FusionStage):
    """``first_stage = "hybrid"``: ``reciprocal_rank_fusion`` of the vector and BM25 lists."""

    name = "hybrid"

    def retrieve(self, query: Query, build: Build, trace: Trace) -> Retrieval:
        """See :class:`~kbsearch.retrieve.base.FirstStage`."""
        vec, qvec, lex, _, found = self._both(query, build, trace)
        if lex is None:
            ranked = attach_bm25(query.text, vec, build.bm25, build.faq_rows, trace)
        else:
            # The vector-only finds' BM25 scores (informational), so each fused candidate is made once.
            in_lex = {c.entry.id for c in lex}
            bm25_of_vec = bm25_of(query.text, [c.entry.id for c in vec if c.entry.id not in in_lex], build.bm25,
                                  build.faq_rows, trace)
            with trace.span("fuse") as span:
                # BM25-only finds get their exact vector score (best row cosine), so the threshold can judge them.
                # One similarity call per FAQ: a few hundred rows at a time stay on one BLAS thread (one call over
                # all of them was 5x slower on banking77, whose FAQs have ~130 rows each).
                seen = {c.entry.id for c in vec}
                vector_of: dict[str, float] = {}
                assert build.vectors is not None  # the vector search above succeeded
                for c in lex:
                    rows = build.faq_rows.get(c.entry.id)
                    if c.entry.id not in seen and rows:
                        vector_of[c.entry.id] = float(build.vectors.similarity(qvec, rows).max())
                ranked = reciprocal_rank_fusion([(vec, 1.0), (lex, self.settings.rrf_bm25_weight)], self.settings.rrf_k,
                                                vector_of, bm25_of_vec)
                span.candidates = len(ranked)
            trace.keep("fused", ranked)
        return Retrieval(tuple(ranked), "vector", found, qvec)
