"""The query path and its fallback chain, with real builds on disk and the in-tree fake embedder.

Each fallback is caused for real: a corrupt FAISS file, an embedder that raises or hangs, a corrupt
BM25 file, a reranker that raises. Each one is reported by its code (``FallbackCause``), each hand-off
by its reason (``HandoffReason``).
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest

from conftest import TODAY
from kbsearch.codes import FallbackCause, HandoffReason
from kbsearch.embed.fake import HashEmbedder
from kbsearch.config import Settings
from kbsearch.errors import BackendError, NotFoundError
from kbsearch.index.builder import build_index
from support import SMALL_KB, one_chunk


class KeywordReranker:
    """A deterministic reranker: P = 0.9 when the doc contains the query's marker word, else 0.1."""

    model_id = "keyword"

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls = 0

    def load(self) -> None:
        pass

    def score(self, query: str, docs: list[str]) -> list[float]:
        self.calls += 1
        if self.fail:
            raise BackendError("reranker crashed")
        return [0.9 if "钱包" in d and "钱包" in query else 0.1 for d in docs]

    def describe(self):
        return {"model_id": self.model_id}


class Broken(HashEmbedder):
    """An embedder that fails the way a real one does at its boundary (a ``BackendError``), hangs, or has a bug."""

    def __init__(self, mode: str):
        super().__init__(dim=64)
        self.mode = mode

    def embed_queries(self, texts):
        if self.mode == "raise":
            raise BackendError("CUDA error: device-side assert")
        if self.mode == "bug":
            raise AttributeError("'NoneType' object has no attribute 'encode'")
        time.sleep(2)
        return super().embed_queries(texts)


def test_answers_and_hands_off(settings, built, make_engine):
    eng = make_engine(settings)
    a = eng.ask("如何申请退货？")
    assert a.answered and a.hits[0].entry.id == "ret-1" and a.mode == "vector" and not a.degraded
    assert a.index_version == built.build_id and a.decision.reason is None and a.decision.rule == "answered"
    # Results are ranked by the fused score and show it; the vector cosine decided, reported separately.
    assert [h.ranked_by for h in a.hits] == ["fused"] * len(a.hits) and a.hits[0].score == a.hits[0].scores.fused
    assert [h.score for h in a.hits] == sorted((h.score for h in a.hits), reverse=True)
    assert a.decision.score_kind == "vector" and a.decision.score == a.hits[0].scores.vector
    assert a.decision.threshold == settings.decide.threshold_vector and a.hits[0].scores.bm25 > 0
    assert any("reranker: none" in n for n in a.notes)
    off = eng.ask("量子色动力学的渐近自由")
    assert not off.answered and off.handoff.message == settings.decide.handoff_message_zh
    assert off.handoff.code == HandoffReason.BELOW_THRESHOLD and off.handoff.reason.startswith("below-threshold: vector")
    en = eng.ask("what is the meaning of life, the universe and everything")
    assert not en.answered and en.handoff.message == settings.decide.handoff_message_en
    assert len(en.hits) > 0  # results still come back for the human agent


def test_results_grouped_one_per_faq(settings, built, make_engine):
    a = make_engine(settings).ask("退货", top_k=4)
    ids = [h.entry.id for h in a.hits]
    assert len(ids) == len(set(ids)) == 4


def test_entry_expiring_after_ingest_is_not_served(settings, built, make_engine):
    later = dt.date(2030, 1, 1)
    from dataclasses import replace

    entries = [replace(SMALL_KB[0], valid_until=dt.date(2027, 1, 1))] + SMALL_KB[1:4]
    build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    assert make_engine(settings, today=TODAY).ask("如何申请退货？").hits[0].entry.id == "ret-1"
    a = make_engine(settings, today=later).ask("如何申请退货？", top_k=4)
    assert "ret-1" not in [h.entry.id for h in a.hits]


def test_unknown_kb_is_not_found(settings, built, make_engine):
    with pytest.raises(NotFoundError):
        make_engine(settings).ask("hi", kb="nope")


def test_new_build_is_picked_up_without_restart(settings, built, make_engine):
    eng = make_engine(settings)
    first = eng.ask("如何申请退货？").index_version
    entries = SMALL_KB[:2]
    second = build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    assert eng.ask("如何申请退货？").index_version == second.build_id != first


def test_corrupt_faiss_falls_back_to_bm25(settings, built, make_engine):
    (built.path / "vectors.faiss").write_bytes(b"\x00" * 64)
    eng = make_engine(settings)
    a = eng.ask("如何申请退货")
    assert a.mode == "bm25" and a.degraded and a.answered and a.hits[0].entry.id == "ret-1"
    assert a.trace.fallbacks[0][0] == FallbackCause.INDEX_CORRUPT and a.hits[0].ranked_by == "bm25"
    assert not eng.status()["ready"]
    (built.path / "vectors.faiss").unlink()
    fresh = make_engine(settings).ask("如何申请退货")
    assert fresh.degraded and fresh.trace.fallbacks[0][0] == FallbackCause.INDEX_MISSING


@pytest.mark.parametrize(("mode", "cause"), [("raise", FallbackCause.EMBED_ERROR), ("hang", FallbackCause.EMBED_TIMEOUT)])
def test_failing_embedder_falls_back_to_bm25(settings, built, mode, cause, make_engine):
    a = make_engine(settings, embedder=Broken(mode)).ask("How long does shipping take")
    assert a.mode == "bm25" and a.degraded and a.hits[0].entry.id == "en-ship"
    assert any(("timed out" if mode == "hang" else "CUDA error") in n for n in a.notes)
    assert [c for c, _ in a.trace.fallbacks] == [cause]
    embed = next(s for s in a.trace.spans if s.name == "embed")
    assert (embed.outcome, embed.code) == ("timeout" if mode == "hang" else "error", cause)


def test_an_embedder_bug_is_not_a_fallback_but_the_canned_handoff(settings, built, make_engine):
    """Only the project's errors are fallbacks; anything else is a bug: canned hand-off, logged and counted."""
    seen = []
    a = make_engine(settings, embedder=Broken("bug"), observers=(seen.append,)).ask("How long does shipping take")
    assert a.mode == "canned" and a.handoff.code == HandoffReason.INTERNAL_ERROR and a.hits == ()
    assert seen == [a.trace] and a.trace.unexpected.startswith("AttributeError") and a.trace.fallbacks == []


def test_both_paths_broken_gives_canned_handoff(settings, built, make_engine):
    (built.path / "bm25.bin").write_text("{", encoding="utf-8")
    a = make_engine(settings, embedder=Broken("raise")).ask("怎么退货")
    assert a.mode == "canned" and a.degraded and not a.answered and a.hits == ()
    assert a.handoff.message == "正在为您转接人工客服，请稍候" and a.handoff.code == HandoffReason.BACKEND_FAILURE
    assert [c for c, _ in a.trace.fallbacks] == [FallbackCause.EMBED_ERROR, FallbackCause.BM25_MISSING]
    assert a.decision.score_kind is None and a.decision.threshold is None
    b = make_engine(settings, embedder=Broken("raise")).ask("how do I return this")
    assert b.handoff.message == settings.decide.handoff_message_en


@pytest.mark.parametrize("stage", ["fused", "hybrid"])
def test_a_fusion_whose_bm25_fails_ranks_by_the_vector_side(settings, built, make_engine, stage):
    (built.path / "bm25.bin").write_text("{", encoding="utf-8")
    a = make_engine(settings.updated(retrieve={"first_stage": stage})).ask("如何申请退货？")
    assert a.answered and a.hits[0].entry.id == "ret-1" and a.mode == "vector" and a.degraded
    assert [c for c, _ in a.trace.fallbacks] == [FallbackCause.BM25_MISSING] and a.hits[0].scores.bm25 is None


def test_unreadable_build_gives_canned_handoff(settings, built, make_engine):
    (built.path / "manifest.json").write_text("nope", encoding="utf-8")
    a = make_engine(settings).ask("怎么退货")
    assert a.mode == "canned" and a.handoff.reason.startswith("index-unavailable")
    assert a.handoff.code == HandoffReason.INDEX_UNAVAILABLE


def test_reranker_reorders_and_failure_degrades(settings, built, make_engine):
    rr = KeywordReranker()
    a = make_engine(settings, reranker=rr).ask("钱包付款方式")
    assert a.mode == "rerank" and a.hits[0].entry.id == "pay-1" and a.hits[0].scores.rerank == 0.9
    assert a.hits[0].score == 0.9 and a.hits[0].ranked_by == "rerank" and a.decision.score == 0.9
    assert rr.calls == 1
    b = make_engine(settings, reranker=KeywordReranker(fail=True)).ask("钱包付款方式")
    assert b.mode == "vector" and b.degraded and any("reranker failed" in n for n in b.notes)
    assert [c for c, _ in b.trace.fallbacks] == [FallbackCause.RERANKER_ERROR] and b.hits[0].ranked_by == "fused"


def test_thresholds_are_per_score_kind(settings, built, make_engine):
    strict_rerank = settings.updated(decide={"threshold_rerank": 0.95})
    a = make_engine(strict_rerank, reranker=KeywordReranker()).ask("钱包付款方式")
    assert not a.answered and "threshold_rerank" in a.handoff.reason
    # The same question without a reranker is judged by the vector threshold instead.
    assert make_engine(strict_rerank).ask("支持哪些付款方式？").answered


def test_unexpected_error_still_gets_a_handoff(settings, built, monkeypatch, make_engine):
    eng = make_engine(settings)

    def boom(*a, **k):
        raise KeyError("a bug in grouping")

    monkeypatch.setattr("kbsearch.retrieve.candidates.group_rows", boom)
    a = eng.ask("如何申请退货？")
    assert a.mode == "canned" and a.degraded and a.handoff.reason == "internal-error: KeyError"
    assert a.trace.unexpected == "KeyError: 'a bug in grouping'"


def test_build_from_another_embedder_is_served_from_bm25(settings, built, make_engine):
    eng = make_engine(settings, embedder=HashEmbedder(dim=32))  # the build was embedded at dim 64
    a = eng.ask("如何申请退货？")
    assert a.mode == "bm25" and a.degraded and any("rebuild-index" in n for n in a.notes)
    assert [c for c, _ in a.trace.fallbacks] == [FallbackCause.MODEL_MISMATCH]
    status = eng.status()
    assert not status["ready"] and "dim 64 (build) != 32 (service)" in status["kbs"]["default"]["vector"]


def test_corrupt_new_build_keeps_old_one_without_rereading(settings, built, monkeypatch, make_engine):
    import kbsearch.service.builds as q

    eng = make_engine(settings)
    entries = SMALL_KB[:2]
    second = build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    (second.path / "entries.jsonl").write_text("{}\n", encoding="utf-8")
    calls = []
    real = q.load_build
    monkeypatch.setattr(q, "load_build", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        a = eng.ask("如何申请退货？")
        assert a.index_version == built.build_id and a.answered
    assert len(calls) == 1


def test_bm25_fallback_uses_its_own_threshold(settings, built, make_engine):
    (built.path / "vectors.faiss").write_bytes(b"\x00")
    strict = settings.updated(decide={"threshold_bm25": 0.99, "threshold_vector": 0.0})
    a = make_engine(strict).ask("退货怎么申请")
    assert a.mode == "bm25" and not a.answered and "threshold_bm25" in a.handoff.reason
    assert make_engine(settings).ask("退货怎么申请").answered  # same question, default BM25 threshold


def test_no_candidates_with_healthy_reranker_is_not_degraded(settings, built, make_engine):
    # A KB whose only entry has expired since ingest: the reranker has nothing to judge.
    build_index(settings, "old", [SMALL_KB[4]], [one_chunk(SMALL_KB[4])], HashEmbedder(dim=64), {})
    b = make_engine(settings, reranker=KeywordReranker()).ask("双十一活动规则", kb="old")
    assert b.hits == () and not b.answered and not b.degraded and b.handoff.code == HandoffReason.ALL_EXPIRED
    assert b.handoff.reason == "all-expired: 1 FAQs found, none valid today"
    # Nothing found at all is another reason: a BM25-only KB asked words it has never seen.
    none = make_engine(settings.updated(retrieve={"first_stage": "bm25"})).ask("zzzz qqqq")
    assert none.handoff.code == HandoffReason.NO_CANDIDATES and none.decision.score is None


def test_candidate_bm25_scores_match_full_scoring(settings, built, make_engine):
    eng = make_engine(settings)
    a = eng.ask("退货 password shipping", top_k=4)
    b = eng.builds.get("default")
    raw, bound = b.bm25.scores("退货 password shipping")
    for h in a.hits:
        full = max(raw[r] for r in b.faq_rows[h.entry.id]) / bound
        assert h.scores.bm25 == pytest.approx(min(full, 1.0), abs=1e-5)


def test_bm25_first_stage_is_not_degraded(settings, built, make_engine):
    eng = make_engine(settings.updated(retrieve={"first_stage": "bm25"}))
    a = eng.ask("退货怎么申请")
    assert a.mode == "bm25" and not a.degraded and a.hits[0].entry.id == "ret-1"
    assert a.hits[0].scores.vector is None


def test_hybrid_fuses_by_reciprocal_rank(settings, built, make_engine):
    s = settings.updated(retrieve={"first_stage": "hybrid", "rrf_k": 60})
    eng = make_engine(s)
    a = eng.ask("退货 shipping", top_k=4, explain=True)
    trace = a.explain
    vec_rank = {r["id"]: i for i, r in enumerate(trace["vector"], start=1)}
    bm_rank = {r["id"]: i for i, r in enumerate(trace["bm25"], start=1)}
    for r in trace["fused"]:
        expected = sum(1.0 / (60 + ranks[r["id"]]) for ranks in (vec_rank, bm_rank) if r["id"] in ranks)
        assert r["score"] == pytest.approx(expected)
    assert [r["id"] for r in trace["fused"]] == list(a.candidates)
    # Every hit carries an exact vector score (the deciding score), even if BM25 alone found it.
    b = eng.builds.get("default")
    q = eng.embedder.embed_queries(["退货 shipping"])[0]
    for h in a.hits:
        sims = b.vectors.similarity(q, b.faq_rows[h.entry.id])
        assert h.scores.vector == pytest.approx(float(sims.max()), abs=1e-5)
    assert a.mode == "vector" and trace["decision"]["score_kind"] == "vector"


def test_fused_ranks_by_the_linear_fusion_of_all_rows(settings, built, make_engine):
    """The default first stage: each FAQ's fused score recomputed here from its rows must match."""
    s = settings.updated(retrieve={"first_stage": "fused", "fused_answer_weight": 0.35, "fused_bm25_weight": 0.1,
                                       "fused_variant_k": 5, "fused_variant_weight": 1.0})
    assert Settings().retrieve.first_stage == "fused"  # the default
    eng = make_engine(s)
    question = "退货 shipping"
    a = eng.ask(question, top_k=4, explain=True)
    b = eng.builds.get("default")
    q = eng.embedder.embed_queries([question])[0]
    fused = a.explain["fused"]
    assert fused and [r["id"] for r in fused] == list(a.candidates)
    assert [r["score"] for r in fused] == sorted((r["score"] for r in fused), reverse=True)
    for r in fused:
        rows = b.faq_rows[r["id"]]
        cos = b.vectors.similarity(q, rows)
        bm = b.bm25.normalised_scores_for(question, rows)
        chunk = np.array([b.rows[i].kind == "chunk" for i in rows])
        q_side = np.sort(cos[~chunk])[::-1]
        expected = ((q_side[0] + q_side[:5].mean()) / 2 + 0.35 * cos[chunk].max() + 0.1 * bm.max())
        assert r["score"] == pytest.approx(float(expected), abs=1e-5)
        assert r["vector"] == pytest.approx(float(cos.max()), abs=1e-5)  # the deciding score stays the cosine
    # BM25-only finds are part of the candidate set too.
    assert {r["id"] for r in a.explain["bm25"]} <= {r["id"] for r in fused}
    assert a.mode == "vector" and a.explain["decision"]["score_kind"] == "vector"


def test_fused_with_zero_weights_ranks_like_the_question_rows(settings, built, make_engine):
    s = settings.updated(retrieve={"first_stage": "fused", "fused_answer_weight": 0.0, "fused_bm25_weight": 0.0,
                                       "fused_variant_weight": 0.0})
    eng = make_engine(s)
    b = eng.builds.get("default")
    q = eng.embedder.embed_queries(["When will my parcel arrive"])[0]
    a = eng.ask("When will my parcel arrive", top_k=4, explain=True)
    for r in a.explain["fused"]:
        rows = [i for i in b.faq_rows[r["id"]] if b.rows[i].kind != "chunk"]
        assert r["score"] == pytest.approx(float(b.vectors.similarity(q, rows).max()), abs=1e-5)


@pytest.mark.parametrize(("fields", "kinds"), [("question", {"question", "variant"}), ("answer", {"chunk"})])
def test_vector_fields_limits_the_rows_matched(settings, built, fields, kinds, make_engine):
    # vector_top_k 2 < the 9 rows: the restricted search must look past rows of the other kind, not
    # filter a top-k taken over all rows (which would leave too few, or no, candidates).
    eng = make_engine(settings.updated(retrieve={"first_stage": "vector", "vector_fields": fields, "vector_top_k": 2},
                                           rerank={"top_k": 2}))
    b = eng.builds.get("default")
    for question in ("如何申请退货？", "Standard shipping takes 3-5 working days", "云杉钱包"):
        a = eng.ask(question, top_k=4, explain=True)
        assert len(a.explain["vector"]) == 2 and {r["matched"] for r in a.explain["vector"]} <= kinds
        q = eng.embedder.embed_queries([question])[0]
        allowed = [i for i, r in enumerate(b.rows) if r.kind in kinds]
        best = max(allowed, key=lambda i: float(b.vectors.similarity(q, [i])[0]))
        assert a.explain["vector"][0]["id"] == b.rows[best].faq_id


def test_explain_names_the_rule(settings, built, make_engine):
    eng = make_engine(settings)
    off = eng.ask("量子色动力学的渐近自由", explain=True)
    assert off.explain["decision"]["rule"].startswith("below-threshold")
    assert off.explain["decision"]["threshold"] == settings.decide.threshold_vector
    assert off.explain["vector"] and off.explain["vector"][0]["matched"] in {"question", "variant", "chunk"}
    assert eng.ask("如何申请退货？").explain is None  # only on request


def test_precomputed_query_vector_gives_the_same_answer(settings, built, make_engine):
    eng = make_engine(settings)
    q = eng.embedder.embed_queries(["How long does shipping take?"])[0]
    a, b = eng.ask("How long does shipping take?"), eng.ask("How long does shipping take?", query_vector=q)
    assert [h.entry.id for h in a.hits] == [h.entry.id for h in b.hits]
    assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits])


class RecordingReranker(KeywordReranker):
    def __init__(self):
        super().__init__()
        self.docs: list[str] = []

    def score(self, query, docs):
        self.docs += docs
        return super().score(query, docs)


@pytest.mark.parametrize("doc", ["faq", "question"])
def test_rerank_doc_chooses_what_the_reranker_reads(settings, built, doc, make_engine):
    rr = RecordingReranker()
    eng = make_engine(settings.updated(rerank={"doc": doc}), reranker=rr)
    a = eng.ask("When will my parcel arrive?", top_k=4)
    b = eng.builds.get("default")
    assert rr.docs and a.mode == "rerank"
    questions = {t for e in b.entries.values() for t in (e.question, *e.variants)}
    if doc == "question":
        assert set(rr.docs) <= questions and "When will my parcel arrive?" in rr.docs  # the matched variant
    else:
        assert all("\n" in d or d not in questions for d in rr.docs)  # question + answer, or an answer chunk
        assert any(b.entries["en-ship"].answer in d for d in rr.docs)
