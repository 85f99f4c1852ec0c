"""The decision rule: each hand-off reason, its code and its text, and the score kind that decides."""

from __future__ import annotations

import pytest

from kbsearch.codes import CANNED, HandoffReason
from kbsearch.decide import canned, decide, handoff_for
from kbsearch.config import DecideSettings
from kbsearch.types import Candidate, IndexRow
from support import entry


def cands(*scores: tuple[float | None, float | None]) -> list[Candidate]:
    return [Candidate(entry=entry(f"f{i}", "q", "a"), row=IndexRow(f"f{i}", "question", "q"), vector=v, rerank=r)
            for i, (v, r) in enumerate(scores)]


def test_answered_below_threshold_and_ambiguous():
    ranked = cands((0.93, 0.4), (0.91, 0.2))
    ok = decide(ranked, "vector", 0.9)
    assert ok.answered and ok.reason is None and ok.rule == "answered"
    assert (ok.score, ok.gap, ok.threshold, ok.threshold_source) == (0.93, pytest.approx(0.02), 0.9, "setting")
    low = decide(ranked, "rerank", 0.5)
    assert low.reason == HandoffReason.BELOW_THRESHOLD and low.score == 0.4
    assert low.rule == "below-threshold: rerank score 0.400 < threshold_rerank 0.500"
    close = decide(ranked, "vector", 0.9, margin=0.05, source="calibrated 2026-11-20")
    assert close.reason == HandoffReason.AMBIGUOUS and close.rule.startswith("ambiguous: top-1/top-2 vector margin 0.020")
    assert decide(cands((0.93, None)), "vector", 0.9, margin=0.05).answered  # one candidate: no margin to judge


def test_nothing_to_rank_tells_no_find_from_all_expired():
    assert decide([], "vector", 0.9).reason == HandoffReason.NO_CANDIDATES
    expired = decide([], "bm25", 0.3, found=4)
    assert expired.reason == HandoffReason.ALL_EXPIRED and expired.score is None and "4 FAQs found" in expired.rule


def test_a_score_a_stage_did_not_give_counts_as_zero():
    assert decide(cands((None, None)), "vector", 0.0).answered and decide(cands((None, None)), "vector", 0.01).reason


def test_canned_and_the_handoff_message_language():
    d = canned(HandoffReason.BACKEND_FAILURE, "vector and BM25 unavailable")
    assert d.score_kind is None and d.rule == "backend-failure: vector and BM25 unavailable" and d.reason in CANNED
    s = DecideSettings()
    zh = handoff_for("余额怎么提现 to card", d.reason, d.rule, s)
    assert zh.message == s.handoff_message_zh and zh.code == HandoffReason.BACKEND_FAILURE
    assert handoff_for("How do I withdraw?", d.reason, d.rule, s).message == s.handoff_message_en
