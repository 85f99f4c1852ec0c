"""The one query function the API, the CLI and eval share: retrieve -> rerank -> decide, with the fallbacks.

1. **Retrieve**: the configured first stage (``kbsearch.retrieve``). When the vector path fails (a
   timeout, a model error, a missing, corrupt or mismatched index), BM25 answers with ``degraded``; when
   BM25 fails too, the canned hand-off.
2. **Rerank**: the KB's ``RerankPlan`` (``kbsearch.rerank``); a reranker that fails leaves the first-stage
   order (degraded).
3. **Decide**: the deciding score against its kind's threshold (``kbsearch.decide``): answer or hand off,
   with a reason code. A question that asks for a person (the KB's hand-off rules, ``decide.human``: by
   words before retrieval, by meaning with the question's vector after it) is handed off whatever the
   scores, with its results kept for the agent.

Each fallback step catches the project's errors (``KbsearchError``, mapped at each backend's boundary)
and records its cause; anything else is a bug, which ends in the canned hand-off, is logged with its
stack and counted. Every step records spans into the question's ``Trace``, which observers (metrics,
logs) read when the question is done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from kbsearch.codes import FallbackCause, HandoffReason
from kbsearch.decide import canned, decide, handoff_for
from kbsearch.decide.human import human_requested
from kbsearch.errors import BadInputError, IndexCorruptError, KbsearchError, NotFoundError, cause_of
from kbsearch.index.store import Build
from kbsearch.rerank.apply import rerank_candidates
from kbsearch.retrieve import Query, Retrieval
from kbsearch.service.parts import EngineParts
from kbsearch.telemetry.explain import render_explain
from kbsearch.telemetry.trace import Trace
from kbsearch.types import Answer, Candidate, Decision, Hit, Mode

log = logging.getLogger(__name__)


class QueryEngine(EngineParts):
    """Answers questions against the active build of each KB (the parts, ``load()`` and ``status()``:
    ``kbsearch.service.parts.EngineParts``, which takes the same arguments)."""

    def ask(self, question: str, kb: str | None = None, top_k: int | None = None, *, explain: bool = False,
            query_vector: np.ndarray | None = None, request_id: str | None = None, observe: bool = True,
            context: dict[str, Any] | None = None) -> Answer:
        """Answer one question from ``kb`` (default ``default_kb``) with ``top_k`` results (default ``decide.top_k``).

        Args:
            explain: Also return every stage's candidates, the spans and the rule that decided.
            query_vector: The question's embedding when the caller already has it (batch evaluation).
            request_id: The caller's id for this question (default: a fresh one).
            observe: Pass the trace to the observers (metrics, logs, the question log); False for an
                operator's hit test, which must not count as traffic.
            context: The chatbot's context (session, user, channel, metadata), recorded with the question.

        Raises:
            NotFoundError: the KB does not exist (the API maps this to 404). BadInputError: an invalid KB name.
                Every backend failure becomes a degraded answer or the canned hand-off instead.
        """
        kb = kb or self.settings.default_kb
        trace = Trace(kb=kb, question=question, first_stage=self.settings.retrieve.first_stage, explain=explain,
                      context=dict(context or {}), **({"request_id": request_id} if request_id else {}))
        try:
            answer = self._ask(question, kb, top_k or self.settings.decide.top_k, trace, query_vector, explain)
        except (NotFoundError, BadInputError):
            raise
        except Exception as exc:  # the last net: a bug still gets the user the hand-off, never a 500
            log.exception("unexpected error answering a question on %r", kb)
            trace.unexpected = f"{type(exc).__name__}: {exc}"
            answer = self._canned(question, trace, HandoffReason.INTERNAL_ERROR, type(exc).__name__, explain)
        for observer in self.observers if observe else ():
            try:
                observer(trace)
            except Exception:  # telemetry must never fail a question
                log.exception("observer %r failed", observer)
        return answer

    def _ask(self, question: str, kb: str, top_k: int, trace: Trace, query_vector: np.ndarray | None,
             explain: bool) -> Answer:
        try:
            build = self.builds.get(kb)
        except IndexCorruptError as exc:
            log.error("cannot load knowledge base %r: %s", kb, exc)
            return self._canned(question, trace, HandoffReason.INDEX_UNAVAILABLE, str(exc), explain)
        trace.index_version = build.build_id
        query, kb_dir = Query(question, self._clock(), query_vector), self.builds.kb_dir(kb)
        rules_on = self.settings.decide.human_request
        human = self.human.by_words(kb_dir, question) if rules_on else None  # cheap: before retrieval
        retrieval = self._retrieve(query, build, trace)
        if retrieval is None:
            detail = f"vector and BM25 unavailable ({build.bm25_error or 'BM25 failed'})"
            return self._canned(question, trace, HandoffReason.BACKEND_FAILURE, detail, explain)
        if rules_on and human is None:  # by meaning: the question's vector from retrieval (none on the BM25 path)
            human = self.human.by_meaning(kb_dir, retrieval.query_vector, retrieval.candidates)
        cands, mode, reranker_id = self._rerank(kb, query, retrieval, build, trace)
        serving = {"model_id": self.embedder.model_id, "first_stage": self.settings.retrieve.first_stage,
                   "reranker": reranker_id}
        with trace.span("decide") as span:
            threshold, margin, source = self.thresholds.get(kb_dir, mode, serving)
            decision = decide(cands, mode, threshold, margin, source, retrieval.found)
            if human is not None:  # the user asked for a person: hand off whatever the scores
                decision, span.detail = human_requested(decision, human), human.note
                trace.notes.append(human.note)
            span.code = decision.reason
        return self._answer(question, trace, mode, decision, cands, top_k, explain)

    def _retrieve(self, query: Query, build: Build, trace: Trace) -> Retrieval | None:
        """The first stage; on its failure BM25 (degraded); None when BM25 fails too."""
        if self.first_stage is not self.bm25:
            try:
                return self.first_stage.retrieve(query, build, trace)
            except KbsearchError as exc:
                trace.fallback(cause_of(exc, FallbackCause.VECTOR_ERROR), str(exc), "vector path failed, BM25 used")
                log.warning("vector path failed for %r: %s", trace.kb, exc)
        try:
            return self.bm25.retrieve(query, build, trace)
        except KbsearchError as exc:
            trace.fallback(cause_of(exc, FallbackCause.BM25_ERROR), str(exc), "BM25 failed")
            return None

    def _rerank(self, kb: str, query: Query, retrieval: Retrieval, build: Build,
                trace: Trace) -> tuple[list[Candidate], Mode, str]:
        """The KB's rerank plan over the candidates: the order, the score kind that decides, and the reranker id."""
        cands, mode = list(retrieval.candidates), retrieval.score_kind
        if not self.planner.enabled:
            trace.notes.append(f"reranker: none (stage skipped; {mode} score decides)")
            return cands, mode, "none"
        if self.reranker_error is not None:
            trace.fallback(FallbackCause.RERANKER_NOT_LOADED, self.reranker_error, f"reranker unavailable, {mode} ranking used")
            return cands, mode, "none"
        if not cands:
            return cands, mode, "none"
        try:
            plan = self.planner.plan(self.builds.kb_dir(kb), build)
            if plan.reranker is None:
                trace.notes.append(f"reranker: {plan.why} (stage skipped; {mode} score decides)")
                return cands, mode, "none"
            with trace.span("rerank") as span:
                cands = rerank_candidates(plan, query.text, cands, build.chunks, self.settings.rerank.top_k)
                span.candidates, span.detail = min(len(cands), self.settings.rerank.top_k), f"{plan.model_id} weight {plan.weight}"
        except KbsearchError as exc:  # a reranker that is down must not fail the question
            trace.fallback(FallbackCause.RERANKER_ERROR, f"{type(exc).__name__}: {exc}", f"reranker failed, {mode} ranking used")
            log.warning("reranker failed: %s", exc)
            return cands, mode, "none"
        trace.keep("rerank", (c for c in cands if c.rerank is not None))
        trace.rerank_weight = plan.weight
        if plan.weight < 1.0:  # a blended reranker reorders; the first-stage score still decides
            trace.notes.append(f"reranker: {plan.label} blended with the {mode} score (weight {plan.weight}); "
                               f"{mode} score decides")
            return cands, mode, "none"
        return cands, "rerank", plan.model_id

    def _answer(self, question: str, trace: Trace, mode: Mode, decision: Decision, cands: Sequence[Candidate],
                top_k: int, explain: bool) -> Answer:
        hits = tuple(Hit.of(c) for c in cands[:top_k])
        trace.finish(mode, decision, hits)
        handoff = (handoff_for(question, decision.reason, decision.rule, self.settings.decide)
                   if decision.reason is not None else None)
        return Answer(answered=handoff is None, hits=hits, handoff=handoff, mode=mode,
                      degraded=trace.degraded, index_version=trace.index_version, decision=decision, trace=trace,
                      candidates=tuple(c.entry.id for c in cands), explain=render_explain(trace) if explain else None)

    def _canned(self, question: str, trace: Trace, reason: HandoffReason, detail: str, explain: bool) -> Answer:
        trace.degraded = True
        return self._answer(question, trace, "canned", canned(reason, detail), (), 0, explain)
