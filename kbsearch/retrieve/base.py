"""The first-stage interface: a question in, ranked candidate FAQs out (``FirstStage.retrieve``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kbsearch.types import Candidate, ScoreKind

if TYPE_CHECKING:
    from kbsearch.index.store import Build
    from kbsearch.telemetry.trace import Trace


@dataclass(frozen=True)
class Query:
    """A question as the stages see it.

    Attributes:
        text: The user's question.
        today: The day entries must be valid on.
        vector: Its embedding when the caller already has it (batched evaluation); None embeds it here.
    """

    text: str
    today: dt.date
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Retrieval:
    """What a first stage found.

    Attributes:
        candidates: One per FAQ valid today, best first; each ``rank`` is what the list is ordered by.
        score_kind: The score that decides the hand-off when no reranker decides: ``vector`` (whatever
            ranked, so ``threshold_vector`` means the same in every mode) or ``bm25`` on the BM25 path.
        found: FAQs found before the validity filter (``found > 0`` with no candidate: all expired).
        query_vector: The question's embedding the stage searched with (None on the BM25 path), so later
            steps (the hand-off rules' meaning match) need not embed the question again.
    """

    candidates: tuple[Candidate, ...]
    score_kind: ScoreKind
    found: int = 0
    query_vector: np.ndarray | None = field(default=None, compare=False, repr=False)


class FirstStage(Protocol):
    """One way of finding and ranking candidate FAQs (``retrieve.first_stage`` names it)."""

    name: str

    def retrieve(self, query: Query, build: Build, trace: Trace) -> Retrieval:
        """Candidates for ``query`` from ``build``, recording a span per step in ``trace``.

        Raises:
            KbsearchError: the stage cannot answer (its ``cause`` says why); the query path falls back.
        """
        ...
