"""Request and response models of the HTTP API: pydantic lives here, at the edge, and nowhere else."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kbsearch.config import KB_NAME_PATTERN
from kbsearch.types import Answer


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must contain a non-whitespace character")
    return v


#: A user-supplied text: 1..2000 characters, not only whitespace.
UserText = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_not_blank)]


class AskRequest(BaseModel):
    """Body of ``POST /ask``."""

    model_config = ConfigDict(extra="forbid")

    question: UserText = Field(..., description="The user's question.")
    top_k: int | None = Field(None, ge=1, le=20, description="How many results to return (default: Settings.top_k, 3).")
    kb: str | None = Field(None, pattern=KB_NAME_PATTERN,
                           description="Knowledge base name (default: Settings.default_kb, 'default').")
    explain: bool = Field(False, description="Return every stage's candidates, scores and the deciding rule.")



class ResultScores(BaseModel):
    """Every stage's score for one result (null where the stage did not score it)."""

    vector: float | None
    bm25: float | None
    rerank: float | None


class Result(BaseModel):
    """One FAQ in the result list."""

    id: str
    question: str
    answer: str
    section: str
    score: float
    scores: ResultScores
    merged_ids: list[str]
    matched: str = Field(description="Which index row matched best: question, variant or chunk.")


class HandoffOut(BaseModel):
    """Why the question goes to a human, and the message for the user."""

    reason: str
    message: str


class SimilarityRequest(BaseModel):
    """Body of ``POST /similarity``."""

    model_config = ConfigDict(extra="forbid")

    a: UserText = Field(..., description="First text.")
    b: UserText = Field(..., description="Second text.")


class SimilarityResponse(BaseModel):
    """Body of the ``POST /similarity`` response: the pair model's judgement."""

    similar: bool
    score: float = Field(..., description="P(same meaning) from the pair model, compared with pair_threshold.")
    threshold: float
    model: str


class AskResponse(BaseModel):
    """Body of the ``POST /ask`` response."""

    answered: bool
    answer: str | None
    results: list[Result]
    handoff: HandoffOut | None
    mode: Literal["rerank", "vector", "bm25", "canned"]
    degraded: bool
    request_id: str
    index_version: str
    timings_ms: dict[str, float]
    notes: list[str]
    explain: dict[str, Any] | None = Field(
        None, description="With explain=true: first_stage, vector/bm25/fused/rerank candidates "
        "(id, score, matched row kind, chunk, text) and decision (score_kind, score, threshold, rule).")

    @classmethod
    def from_answer(cls, a: Answer, request_id: str) -> AskResponse:
        """Render a library ``Answer``."""
        results = [
            Result(id=h.entry.id, question=h.entry.question, answer=h.entry.answer, section=h.entry.section,
                   score=h.score, scores=ResultScores(vector=h.scores.vector, bm25=h.scores.bm25,
                                                      rerank=h.scores.rerank),
                   merged_ids=list(h.entry.merged_ids), matched=h.matched.kind)
            for h in a.hits
        ]
        best = a.best
        return cls(
            answered=a.answered, answer=best.entry.answer if best else None, results=results,
            handoff=HandoffOut(reason=a.handoff.reason, message=a.handoff.message) if a.handoff else None,
            mode=a.mode, degraded=a.degraded, request_id=request_id, index_version=a.index_version,
            timings_ms=a.timings_ms, notes=list(a.notes), explain=a.explain,
        )
