"""``explain``: a question's trace as hit-testing shows it (``POST /ask`` with ``explain``, ``kbsearch ask --explain``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from kbsearch.telemetry.trace import Trace
from kbsearch.types import Candidate


def _row(c: Candidate, score: float | None) -> dict[str, Any]:
    return {"id": c.entry.id, "score": score, "matched": c.row.kind, "chunk": c.row.chunk, "text": c.row.text[:200]}


def render_explain(trace: Trace) -> dict[str, Any]:
    """Each stage's candidates with their scores and matched rows, the spans, the fallbacks and the decision."""
    stages = trace.stages
    out: dict[str, Any] = {"request_id": trace.request_id, "first_stage": trace.first_stage,
                           "vector": [_row(c, c.vector) for c in stages.get("vector", ())],
                           "bm25": [_row(c, c.bm25) for c in stages.get("bm25", ())]}
    if "fused" in stages:
        out["fused"] = [{"id": c.entry.id, "score": c.fusion, "vector": c.vector, "bm25": c.bm25} for c in stages["fused"]]
    if "rerank" in stages:
        out["rerank"] = [{"id": c.entry.id, "score": c.rerank} for c in stages["rerank"]]
        out["rerank_weight"] = trace.rerank_weight
    d = trace.decision
    if d is not None:
        out["decision"] = {"score_kind": d.score_kind or "canned", "score": d.score, "gap": d.gap,
                           "threshold": d.threshold, "margin": d.margin, "threshold_source": d.threshold_source,
                           "reason": d.reason, "rule": d.rule}
    out["spans"] = [dataclasses.asdict(s) for s in trace.spans]
    out["fallbacks"] = [{"cause": cause, "detail": detail} for cause, detail in trace.fallbacks]
    return out
