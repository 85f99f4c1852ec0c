"""The trace of one question: a span per stage, the fallbacks taken, the notes and the decision.

A ``Trace`` is filled in by the thread answering the question (stages call ``span()`` or ``record()``)
and read once it is finished. Work done in the vector worker thread is timed there and recorded by
the asking thread, so a worker that outlives its timeout never writes into a finished trace.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kbsearch.codes import FallbackCause, HandoffReason

if TYPE_CHECKING:
    from kbsearch.types import Candidate, Decision, Hit, Mode

Outcome = Literal["ok", "error", "timeout", "skipped"]


def new_request_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Span:
    """One stage of one question.

    Attributes:
        name: The stage: ``embed``, ``vector``, ``bm25``, ``fuse``, ``rerank`` or ``decide``.
        ms: Wall-clock milliseconds.
        outcome: ``ok``, ``error``, ``timeout`` or ``skipped``.
        code: The fallback cause (or hand-off reason, for ``decide``) when there is one.
        candidates: How many candidate FAQs (or rows, for ``vector``/``bm25`` searches) the stage produced.
        detail: What happened, for people (an error message, a reranker's name and weight).
    """

    name: str
    ms: float
    outcome: Outcome = "ok"
    code: str | None = None
    candidates: int | None = None
    detail: str = ""


class _Open:
    """A span being timed (the context manager ``Trace.span`` returns): set ``candidates``/``detail`` on it;
    ``fail()`` marks the outcome. An exception escaping it marks the span ``error`` and propagates."""

    __slots__ = ("trace", "name", "t0", "candidates", "detail", "outcome", "code")

    def __init__(self, trace: Trace, name: str) -> None:
        self.trace, self.name = trace, name
        self.candidates: int | None = None
        self.detail = ""
        self.outcome: Outcome = "ok"
        self.code: str | None = None

    def fail(self, outcome: Outcome, code: str | None, detail: str) -> None:
        """Mark the span as not ok, with its code and what happened."""
        self.outcome, self.code, self.detail = outcome, code, detail

    def __enter__(self) -> _Open:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, Exception) and self.outcome == "ok":
            self.fail("error", getattr(exc, "cause", None), f"{type(exc).__name__}: {exc}")
        self.trace.record(self.name, (time.perf_counter() - self.t0) * 1000, self.outcome, self.code, self.candidates,
                          self.detail)


@dataclass
class Trace:
    """Everything recorded about one question.

    Attributes:
        request_id: The chatbot's ``X-Request-ID`` or a fresh id.
        kb: The knowledge base asked.
        question: The question (only written to the log when ``telemetry.log_questions`` is on).
        first_stage: The configured first stage.
        spans: One per stage that ran (or was skipped), in order.
        fallbacks: ``(cause, detail)`` of each fallback taken.
        notes: Remarks for people, built from the codes (e.g. ``vector path failed, BM25 used: ...``).
        explain: Whether ``explain`` was asked for: only then are the stages' candidates kept.
        stages: Each stage's candidates (``vector``, ``bm25``, ``fused``, ``rerank``), for ``explain``.
        rerank_weight: The blend weight of the reranker that ran (None when none ran).
        decision: How the question was decided (set when finished).
        mode: Which score decided (set when finished).
        degraded: Whether a fallback answered.
        unexpected: ``ExceptionType: message`` of a bug that ended in the canned hand-off.
        index_version: The build that served the question.
        results: The results returned (set when finished; the question log stores the top ones).
        context: The chatbot's context fields (session_id, user_id, channel, metadata), for the question log.
    """

    request_id: str = field(default_factory=new_request_id)
    kb: str = ""
    question: str = field(default="", repr=False)
    first_stage: str = ""
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    spans: list[Span] = field(default_factory=list)
    fallbacks: list[tuple[FallbackCause, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    explain: bool = False
    stages: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)
    rerank_weight: float | None = None
    decision: Decision | None = None
    mode: Mode | None = None
    degraded: bool = False
    unexpected: str | None = None
    index_version: str = ""
    total_ms: float | None = None
    results: tuple[Hit, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def span(self, name: str) -> _Open:
        """Time a stage: ``with trace.span("bm25") as span: ...``; an exception escaping it marks the span
        ``error`` (and propagates)."""
        return _Open(self, name)

    def record(self, name: str, ms: float, outcome: Outcome = "ok", code: str | None = None,
               candidates: int | None = None, detail: str = "") -> None:
        """Add a finished span."""
        self.spans.append(Span(name, ms, outcome, str(code) if code is not None else None, candidates, detail))

    def keep(self, stage: str, candidates: Iterable[Candidate]) -> None:
        """Keep a stage's candidates for ``explain`` (nothing is kept otherwise: an answer holds its trace,
        and a batch evaluation holds thousands of answers)."""
        if self.explain:
            self.stages[stage] = tuple(candidates)

    def fallback(self, cause: FallbackCause, detail: str, note: str) -> None:
        """Record a fallback: its code, and the note people read (``note: detail``)."""
        self.fallbacks.append((cause, detail))
        self.notes.append(f"{note}: {detail}" if detail else note)
        self.degraded = True

    def finish(self, mode: Mode, decision: Decision, results: tuple[Hit, ...] = ()) -> None:
        """Close the trace: the total time, the mode, the decision and the results returned."""
        self.mode, self.decision, self.results = mode, decision, results
        self.total_ms = (time.perf_counter() - self._t0) * 1000

    @property
    def answered(self) -> bool:
        """Whether the question was answered (False until finished)."""
        return self.decision is not None and self.decision.reason is None

    @property
    def reason(self) -> HandoffReason | None:
        """The hand-off reason (None when answered or unfinished)."""
        return self.decision.reason if self.decision is not None else None

    def timings_ms(self) -> dict[str, float]:
        """Milliseconds per stage (a stage that ran twice is summed) and ``total``, rounded to 0.01 ms."""
        out: dict[str, float] = {}
        for s in self.spans:
            out[s.name] = out.get(s.name, 0.0) + s.ms
        if self.total_ms is not None:
            out["total"] = self.total_ms
        return {k: round(v, 2) for k, v in out.items()}
