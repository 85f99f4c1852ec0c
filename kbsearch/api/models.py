"""Request and response models of the HTTP API: pydantic lives here, at the edge, and nowhere else."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from kbsearch.codes import HandoffReason
from kbsearch.config import KB_NAME_PATTERN
from kbsearch.types import Answer

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""What an ``X-Request-ID`` may be: up to 128 letters, digits and ``. _ : -`` (it is echoed and logged)."""


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must contain a non-whitespace character")
    return _unicode(v)


def _unicode(v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return v


#: A chatbot-side identifier: 1..128 printable characters.
ContextId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$"), AfterValidator(_unicode)]

#: A user-supplied text: 1..2000 characters, not only whitespace.
UserText = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_not_blank)]


class AskRequest(BaseModel):
    """Body of ``POST /ask``."""

    model_config = ConfigDict(extra="forbid")

    question: UserText = Field(..., description="The user's question.")
    top_k: int | None = Field(None, ge=1, le=20, description="How many results to return (default: decide.top_k, 3).")
    kb: str | None = Field(None, pattern=KB_NAME_PATTERN,
                           description="Knowledge base name (default: the default_kb setting, 'default').")
    explain: bool = Field(False, description="Return every stage's candidates, scores and the deciding rule "
                          "(needs an operator key).")
    session_id: ContextId | None = Field(None, description="The chatbot's conversation id (recorded in the question log).")
    user_id: ContextId | None = Field(None, description="The chatbot's user id (recorded in the question log).")
    channel: ContextId | None = Field(None, description="Where the user asked: app, web, wechat, ... (recorded).")
    metadata: dict[Annotated[str, Field(max_length=64)], str | int | float | bool | None] | None = Field(
        None, max_length=20, description="Up to 20 small context values from the chatbot backend (recorded).")

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        for key, value in v.items():
            _unicode(key)
            if isinstance(value, str) and len(_unicode(value)) > 256:
                raise ValueError(f"metadata[{key[:64]!r}] is longer than 256 characters")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"metadata[{key[:64]!r}] must be a finite number")
        return v

    def context(self) -> dict[str, Any]:
        """The chatbot's context fields that were given (for the question log)."""
        ctx = {k: getattr(self, k) for k in ("session_id", "user_id", "channel", "metadata")}
        return {k: v for k, v in ctx.items() if v is not None}



class ResultScores(BaseModel):
    """Every stage's score for one result (null where the stage did not score it)."""

    vector: float | None = Field(description="Best row cosine.")
    bm25: float | None = Field(description="Best normalised BM25 row score.")
    fused: float | None = Field(description="The first stage's fusion score (linear for fused, reciprocal-rank for hybrid).")
    rerank: float | None = Field(description="The reranker's probability.")


class Result(BaseModel):
    """One FAQ in the result list."""

    id: str
    question: str
    answer: str
    section: str
    score: float = Field(description="The score this result was ranked by (its kind is ranked_by).")
    ranked_by: Literal["fused", "rrf", "vector", "bm25", "rerank", "blend"] = Field(
        description="What score is: the linear fusion, reciprocal-rank fusion, vector, BM25, the reranker, or its "
        "blend with the first stage.")
    scores: ResultScores
    merged_ids: list[str]
    matched: str = Field(description="Which index row matched best: question, variant or chunk.")


class HandoffOut(BaseModel):
    """Why the question goes to a human, and the message for the user."""

    code: HandoffReason = Field(description="The reason as a code.")
    reason: str = Field(description="The reason for people (starts with the code).")
    message: str


class DecisionOut(BaseModel):
    """The score that decided the answer-or-hand-off, by kind, and what it was compared with."""

    score_kind: Literal["rerank", "vector", "bm25"] | None = Field(description="null for the canned hand-off.")
    score: float | None = Field(description="The top FAQ's deciding score (null without candidates).")
    threshold: float | None
    margin: float = Field(description="The calibrated top-1/top-2 margin rule (0 = none).")
    threshold_source: str
    rule: str = Field(description="'answered' or the hand-off reason.")


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
    mode: Literal["rerank", "vector", "bm25", "canned"] = Field(
        description="Which score kind decided (canned: nothing could rank; the canned hand-off).")
    decision: DecisionOut
    degraded: bool
    request_id: str
    index_version: str
    timings_ms: dict[str, float]
    notes: list[str]
    explain: dict[str, Any] | None = Field(
        None, description="With explain=true: first_stage, vector/bm25/fused/rerank candidates "
        "(id, score, matched row kind, chunk, text), the spans (name, ms, outcome, code, candidates), the "
        "fallbacks (cause, detail) and decision (score_kind, score, threshold, reason, rule).")

    @classmethod
    def from_answer(cls, a: Answer) -> AskResponse:
        """Render a library ``Answer``."""
        results = [
            Result(id=h.entry.id, question=h.entry.question, answer=h.entry.answer, section=h.entry.section,
                   score=h.score, ranked_by=h.ranked_by,
                   scores=ResultScores(vector=h.scores.vector, bm25=h.scores.bm25, fused=h.scores.fused,
                                       rerank=h.scores.rerank),
                   merged_ids=list(h.entry.merged_ids), matched=h.matched.kind)
            for h in a.hits
        ]
        best, d = a.best, a.decision
        return cls(
            answered=a.answered, answer=best.entry.answer if best else None, results=results,
            handoff=HandoffOut(code=a.handoff.code, reason=a.handoff.reason, message=a.handoff.message) if a.handoff else None,
            mode=a.mode, degraded=a.degraded, request_id=a.request_id, index_version=a.index_version,
            decision=DecisionOut(score_kind=d.score_kind, score=d.score, threshold=d.threshold, margin=d.margin,
                                 threshold_source=d.threshold_source, rule=d.rule),
            timings_ms=a.timings_ms, notes=list(a.notes), explain=a.explain,
        )


class FeedbackRequest(BaseModel):
    """Body of ``POST /feedback``: what the user did with an answer (a repeat replaces the earlier feedback)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(..., pattern=REQUEST_ID_PATTERN, description="The request_id of the /ask answer.")
    helpful: bool | None = Field(None, description="Thumbs up (true) or down (false); null when not given.")
    clicked_id: str | None = Field(None, min_length=1, max_length=256, description="The result the user clicked.")
    comment: str | None = Field(None, max_length=2000, description="Free text from the user.")


class FeedbackResponse(BaseModel):
    """Result of ``POST /feedback``."""

    request_id: str
    updated: bool = Field(description="True when this replaced earlier feedback on the same request.")


class LoginRequest(BaseModel):
    """Body of ``POST /admin/login``."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(..., min_length=1, max_length=512)


class DraftIn(BaseModel):
    """A new FAQ drafted from logged questions."""

    model_config = ConfigDict(extra="forbid")

    question: UserText
    answer: Annotated[str, Field(min_length=1, max_length=20_000), AfterValidator(_not_blank)]
    section: str = Field("", max_length=256)
    id: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^\s]+$")


class DecisionRequest(BaseModel):
    """Body of ``POST /admin/api/decisions``: one action on some logged questions (or a gap cluster)."""

    model_config = ConfigDict(extra="forbid")

    kb: str = Field(..., pattern=KB_NAME_PATTERN)
    action: Literal["attach", "out_of_scope", "draft"]
    questions: list[UserText] = Field(default_factory=list, max_length=1000)
    request_ids: list[Annotated[str, Field(pattern=REQUEST_ID_PATTERN)] | None] = Field(default_factory=list, max_length=1000)
    faq_id: str | None = Field(None, min_length=1, max_length=256)
    draft: DraftIn | None = None


class KbRequest(BaseModel):
    """A body naming one knowledge base."""

    model_config = ConfigDict(extra="forbid")

    kb: str = Field(..., pattern=KB_NAME_PATTERN)


class HitTestRequest(KbRequest):
    """Body of ``POST /admin/api/hit-test``."""

    question: UserText


class RulesRequest(KbRequest):
    """Body of ``PUT /admin/api/rules``: the KB's hand-off phrases."""

    phrases: list[Annotated[str, Field(max_length=100)]] = Field(..., max_length=200)
