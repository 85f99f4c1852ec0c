"""Run a ``RerankPlan`` over the ranked candidates: score the window, then reorder it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kbsearch.errors import BackendError
from kbsearch.rerank.base import RerankPlan
from kbsearch.rerank.blend import blend
from kbsearch.rerank.text import reranker_text
from kbsearch.types import Candidate, Chunk


def rerank_candidates(plan: RerankPlan, question: str, cands: Sequence[Candidate],
                      chunks: Mapping[tuple[str, int], Chunk], window: int) -> list[Candidate]:
    """The first ``window`` candidates scored by ``plan.reranker`` and reordered, then the rest unchanged.

    With ``plan.weight`` >= 1 the window is ordered by the reranker's probability (ties: the vector score);
    below 1 by ``blend`` of the first-stage score and the probability (ties keep the first-stage order).

    Raises:
        BackendError: the reranker failed, or returned a score count that does not match.
    """
    assert plan.reranker is not None
    head = list(cands[:window])
    probs = plan.reranker.score(question, [reranker_text(c.entry, c.row, plan.doc, chunks) for c in head])
    if len(probs) != len(head):
        raise BackendError(f"reranker {plan.reranker.model_id!r} returned {len(probs)} scores for {len(head)} documents")
    scored = [c.evolve(rerank=float(p)) for c, p in zip(head, probs)]
    if plan.weight >= 1.0:
        ordered = sorted(scored, key=lambda c: (-(c.rerank or 0.0), -(c.vector or 0.0)))
        ordered = [c.evolve(rank=c.rerank or 0.0, ranked_by="rerank") for c in ordered]
    else:
        keys = blend([c.first_stage_score for c in scored], [c.rerank or 0.0 for c in scored], plan.weight)
        order = sorted(range(len(scored)), key=lambda i: -keys[i])  # stable: ties keep the first-stage order
        ordered = [scored[i].evolve(rank=keys[i], ranked_by="blend") for i in order]
    return ordered + list(cands[len(head):])
