"""The first stages' pure parts, on frozen values: grouping rows into FAQs, the linear fusion and reciprocal-rank
fusion (each checked against the arithmetic done here by hand)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kbsearch.retrieve.fusion import LinearWeights, linear_fusion, reciprocal_rank_fusion
from kbsearch.retrieve.grouping import group_rows
from kbsearch.types import Candidate, IndexRow
from support import entry

ROWS = [IndexRow("a", "question", "qa"), IndexRow("a", "variant", "va"), IndexRow("a", "chunk", "ca", 0),
        IndexRow("b", "question", "qb"), IndexRow("b", "chunk", "cb", 0), IndexRow("c", "question", "qc")]
ENTRIES = {f: entry(f, f"q{f}", f"answer {f}") for f in "abc"}


def cand(faq: str, row: int, **scores) -> Candidate:
    return Candidate(entry=ENTRIES[faq], row=ROWS[row], **scores)


def test_group_rows_keeps_the_best_row_per_faq_in_rank_order():
    row_faq = [r.faq_id for r in ROWS]
    got = group_rows(np.array([1, 3, 0, -1, 5, 4]), np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), row_faq)
    assert got == [("a", 1, pytest.approx(0.9)), ("b", 3, pytest.approx(0.8)), ("c", 5, pytest.approx(0.5))]
    # ``keep`` drops rows (the self-check leaves a variant's own row out), -1 padding is skipped
    got = group_rows([1, 0, 3], [0.9, 0.7, 0.8], row_faq, keep=lambda r: r != 1)
    assert [(f, r) for f, r, _ in got] == [("b", 3), ("a", 0)]


def test_linear_fusion_by_hand():
    w = LinearWeights(answer=0.35, bm25=0.1, variant_k=5, variant_weight=1.0)
    cands = [cand("a", 0, vector=0.5), cand("b", 3)]
    spans = [[0, 1, 2], [3, 4]]
    sims = np.array([0.8, 0.9, 0.6, 0.7, 0.95], dtype=np.float32)
    bm25 = np.array([0.1, 0.3, 0.2, 0.0, 0.5], dtype=np.float32)
    out = linear_fusion(cands, spans, sims, bm25, ROWS, w)
    a_score = (0.9 + (0.9 + 0.8) / 2) / 2 + 0.35 * 0.6 + 0.1 * 0.3
    b_score = (0.7 + 0.7) / 2 + 0.35 * 0.95 + 0.1 * 0.5
    assert [c.entry.id for c in out] == ["a", "b"] and a_score > b_score
    a, b = out
    assert b.fusion == pytest.approx(b_score, abs=1e-6) and a.fusion == pytest.approx(a_score, abs=1e-6)
    assert (b.rank, b.ranked_by) == (b.fusion, "fused")
    # the vector score becomes the best row cosine (here an answer chunk), and that row is the match
    assert b.vector == pytest.approx(0.95) and b.row == ROWS[4] and a.vector == pytest.approx(0.9) and a.row == ROWS[1]
    assert cands[0].vector == 0.5  # the inputs are frozen values: nothing was changed in place
    # BM25 failed: the vector sides rank alone and the BM25 score stays unknown
    alone = linear_fusion(cands, spans, sims, None, ROWS, w)
    assert alone[0].bm25 is None and alone[0].fusion == pytest.approx(a_score - 0.1 * 0.3, abs=1e-6)


def test_reciprocal_rank_fusion_by_hand():
    vec = [cand("a", 0, vector=0.9), cand("b", 3, vector=0.8)]
    lex = [cand("c", 5, bm25=0.7), cand("a", 2, bm25=0.6)]
    out = reciprocal_rank_fusion([(vec, 1.0), (lex, 2.0)], k=60, vector_of={"c": 0.3})
    want = {"a": 1 / 61 + 2 / 62, "b": 1 / 62, "c": 2 / 61}
    assert [c.entry.id for c in out] == sorted(want, key=lambda f: -want[f])
    for c in out:
        assert c.fusion == pytest.approx(want[c.entry.id]) and c.ranked_by == "rrf" and c.rank == c.fusion
    by = {c.entry.id: c for c in out}
    # a FAQ keeps the row of the first list it is in, and gets each list's score
    assert by["a"].row == ROWS[0] and (by["a"].vector, by["a"].bm25) == (0.9, 0.6)
    assert by["c"].vector == 0.3 and by["b"].bm25 is None  # BM25-only finds get their exact vector score


def test_candidates_are_frozen():
    c = cand("a", 0, vector=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.vector = 0.9  # type: ignore[misc]
    assert c.first_stage_score == 0.5 and dataclasses.replace(c, fusion=1.2).first_stage_score == 1.2


def test_the_fast_constructors_make_the_same_values_as_the_dataclass():
    # Candidate.found / evolve skip __init__ on the hot path; they must stay equal to the plain constructor
    # and dataclasses.replace (a field added to Candidate without a default would break this)
    for kind in ("vector", "bm25"):
        fast = Candidate.found(ENTRIES["a"], ROWS[1], kind, 0.75)
        assert fast == Candidate(ENTRIES["a"], ROWS[1], **{kind: 0.75}, rank=0.75, ranked_by=kind)
        assert vars(fast).keys() == {f.name for f in dataclasses.fields(Candidate)}
        changes = {"fusion": 1.5, "rank": 1.5, "ranked_by": "fused"}
        assert fast.evolve(**changes) == dataclasses.replace(fast, **changes)
        assert fast.evolve(**changes) is not fast and fast.fusion is None  # a copy; the original is unchanged
        with pytest.raises(dataclasses.FrozenInstanceError):
            fast.rank = 0.0  # type: ignore[misc]


def _reference_linear_fusion(cands, spans, sims, bm25, rows, w):
    """linear_fusion as it was written before it was vectorised: one small numpy computation per FAQ."""
    is_chunk = np.array([rows[r].kind == "chunk" for span in spans for r in span], dtype=bool)
    out, start = [], 0
    for c, span in zip(cands, spans):
        part = slice(start, start + len(span))
        start += len(span)
        if not span:
            out.append(c.evolve(fusion=-np.inf, rank=-np.inf, ranked_by="fused"))
            continue
        cos, chunk = sims[part], is_chunk[part]
        best = int(np.argmax(cos))
        q_side = np.sort(cos[~chunk])[::-1] if (~chunk).any() else np.sort(cos)[::-1]
        q_score = (q_side[0] + w.variant_weight * q_side[: w.variant_k].mean()) / (1 + w.variant_weight)
        a_score = cos[chunk].max() if chunk.any() else q_side[0]
        bm = float(bm25[part].max()) if bm25 is not None else c.bm25
        fused = float(q_score + w.answer * a_score + w.bm25 * (bm or 0.0))
        out.append(c.evolve(vector=float(cos[best]), row=rows[span[best]], bm25=bm, fusion=fused, rank=fused,
                            ranked_by="fused"))
    return sorted(out, key=lambda c: (-(c.fusion or 0.0), -(c.vector or 0.0)))


@pytest.mark.parametrize("seed", range(40))
def test_linear_fusion_equals_the_per_faq_reference(seed):
    """Random candidate sets (FAQs with only chunks, only questions, empty spans, more variants than
    variant_k, tied cosines, BM25 failed or not): the same scores, best rows and ranking as the reference."""
    rng = np.random.default_rng(seed)
    rows, spans, cands = [], [], []
    for f in range(int(rng.integers(1, 60))):
        faq = f"f{f}"
        kinds = list(rng.choice(["question", "variant", "chunk"], size=int(rng.integers(0, 12)), p=[0.2, 0.5, 0.3]))
        if seed % 5 == 0 and f % 3 == 0:
            kinds = ["chunk"] * len(kinds)
        spans.append(list(range(len(rows), len(rows) + len(kinds))))
        rows += [IndexRow(faq, k, f"{faq}{i}", i if k == "chunk" else None) for i, k in enumerate(kinds)]
        cands.append(Candidate(entry=entry(faq, faq, "a"), row=rows[-1] if kinds else IndexRow(faq, "question", faq),
                               bm25=None if f % 4 else float(rng.random())))
    n_rows = sum(len(s) for s in spans)
    ties = seed % 2 == 0  # coarse cosines: equal values within a FAQ, where the first best row must win
    sims = (np.round(rng.random(n_rows), 1) if ties else rng.random(n_rows)).astype(np.float32)
    bm25 = None if seed % 3 == 0 else rng.random(n_rows).astype(np.float32)
    w = LinearWeights(answer=float(rng.random()), bm25=float(rng.random()), variant_k=int(rng.integers(1, 7)),
                      variant_weight=float(rng.random() * 2))
    got = linear_fusion(cands, spans, sims, bm25, rows, w)
    want = _reference_linear_fusion(cands, spans, sims, bm25, rows, w)
    by_id = {c.entry.id: c for c in got}
    assert len(got) == len(want) == len(cands) and set(by_id) == {c.entry.id for c in want}
    for ref in want:
        c = by_id[ref.entry.id]
        assert (c.row, c.ranked_by, c.bm25 is None) == (ref.row, ref.ranked_by, ref.bm25 is None)
        assert c.vector == pytest.approx(ref.vector, abs=1e-6) and c.fusion == pytest.approx(ref.fusion, abs=1e-6)
        assert c.rank == c.fusion and (ref.bm25 is None or c.bm25 == pytest.approx(ref.bm25, abs=1e-6))
    # the same ranking wherever the reference's scores are not within float noise of each other
    keys = [(-(c.fusion or 0.0), -(c.vector or 0.0)) for c in want]
    clear = [i for i in range(len(want)) if all(abs(keys[i][0] - keys[j][0]) > 1e-5 for j in range(len(want)) if j != i)]
    assert len(clear) > len(want) // 2
    assert [got[i].entry.id for i in clear] == [want[i].entry.id for i in clear]
