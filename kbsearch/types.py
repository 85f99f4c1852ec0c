"""The values that flow between stages: frozen dataclasses, no behaviour beyond (de)serialisation.

Ingest produces ``FaqEntry`` values, chunking turns them into ``Chunk`` values, the indexes are built
over ``IndexRow`` values (one per text to match: a question, a variant, an answer chunk), and the
query path passes ``Candidate`` values (one per FAQ) from stage to stage and returns ``Hit`` values inside
an ``Answer``, with the ``Decision`` that answered or handed off. Pydantic lives only at the HTTP edge
(``kbsearch.api.models``); these are what the library passes around.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kbsearch.codes import HandoffReason

if TYPE_CHECKING:
    from kbsearch.telemetry.trace import Trace

RowKind = Literal["question", "variant", "chunk"]
Mode = Literal["rerank", "vector", "bm25", "canned"]
"""Which score decided: the kind of the deciding score, or ``canned`` when nothing was ranked."""
ScoreKind = Literal["rerank", "vector", "bm25"]
"""A score with its own threshold."""
RankKind = Literal["fused", "rrf", "vector", "bm25", "rerank", "blend"]
"""What a list of candidates is ordered by: the linear fusion (first stage ``fused``), reciprocal-rank fusion
(``hybrid``), the vector or BM25 score, the reranker alone, or its blend with the first stage."""


def _date_or_none(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value) if value else None


@dataclass(frozen=True)
class FaqEntry:
    """One normalised FAQ entry as accepted by ingest.

    Attributes:
        id: The FAQ id from the input (or a stable id derived from the content).
        question: The canonical question.
        answer: The answer text (for intent datasets with no answer: the question).
        variants: Other phrasings of the question, canonical order, no duplicates.
        section: The section/category the entry belongs to ("" when none).
        valid_from: First day the entry may be served, or None.
        valid_until: Last day the entry may be served, or None.
        updated_at: When the source says the entry was last updated (ISO string), or None.
        tags: Free-form labels.
        source: Where the entry came from, ``file:line`` (or ``file:row``), for reports.
        merged_ids: Ids of near-duplicate entries dedupe merged into this one.
        flags: Warnings attached at ingest (e.g. ``dated-policy:2023``); the entry is still served.
    """

    id: str
    question: str
    answer: str
    variants: tuple[str, ...] = ()
    section: str = ""
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None
    updated_at: str | None = None
    tags: tuple[str, ...] = ()
    source: str = ""
    merged_ids: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    def is_valid_on(self, day: dt.date) -> bool:
        """Return True when the entry may be served on ``day`` (validity window inclusive)."""
        if self.valid_from is not None and day < self.valid_from:
            return False
        if self.valid_until is not None and day > self.valid_until:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (dates as ISO strings, tuples as lists)."""
        d = dataclasses.asdict(self)
        for key in ("valid_from", "valid_until"):
            d[key] = d[key].isoformat() if d[key] else None
        for key in ("variants", "tags", "merged_ids", "flags"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FaqEntry:
        """Inverse of :meth:`to_json`."""
        return cls(
            id=d["id"],
            question=d["question"],
            answer=d["answer"],
            variants=tuple(d.get("variants") or ()),
            section=d.get("section") or "",
            valid_from=_date_or_none(d.get("valid_from")),
            valid_until=_date_or_none(d.get("valid_until")),
            updated_at=d.get("updated_at"),
            tags=tuple(d.get("tags") or ()),
            source=d.get("source") or "",
            merged_ids=tuple(d.get("merged_ids") or ()),
            flags=tuple(d.get("flags") or ()),
        )


@dataclass(frozen=True)
class Chunk:
    """A piece of an answer, prefixed with its section and question title.

    Attributes:
        faq_id: The FAQ id the chunk belongs to.
        ordinal: Position of the chunk within its FAQ's answer (0-based).
        heading: The answer's own sub-heading for this chunk ("" when the answer has none).
        text: The chunk text as indexed and shown, e.g. ``【退货政策】如何退货？\\n…``.
        body: The chunk's part of the answer without the prefix.
    """

    faq_id: str
    ordinal: int
    heading: str
    text: str
    body: str

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Chunk:
        """Inverse of :meth:`to_json`."""
        return cls(**d)


@dataclass(frozen=True)
class IndexRow:
    """One text in the vector and BM25 indexes; row ``i`` of the index is ``rows[i]``.

    Attributes:
        faq_id: The FAQ id a match on this row counts for.
        kind: ``question`` (the canonical question), ``variant`` or ``chunk`` (an answer chunk).
        text: The text embedded and tokenised for this row.
        chunk: For ``chunk`` rows, the chunk's ordinal; -1 otherwise.
    """

    faq_id: str
    kind: RowKind
    text: str
    chunk: int = -1

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IndexRow:
        """Inverse of :meth:`to_json`."""
        return cls(**d)


@dataclass(frozen=True)
class Candidate:
    """One FAQ on its way through the stages: the row that matched best and each stage's score so far.

    Attributes:
        entry: The FAQ entry.
        row: The index row that matched best (question, variant or answer chunk).
        vector: Best row cosine (None when the vector path did not score it).
        bm25: Best normalised BM25 row score (None when BM25 did not score it).
        fusion: The first stage's fused score: linear fusion (``fused``) or reciprocal-rank fusion (``hybrid``).
        rerank: The reranker's probability (None outside the rerank window or without a reranker).
        rank: The score the current order was made by (its kind is ``ranked_by``).
        ranked_by: What ``rank`` is.
    """

    entry: FaqEntry
    row: IndexRow
    vector: float | None = None
    bm25: float | None = None
    fusion: float | None = None
    rerank: float | None = None
    rank: float = 0.0
    ranked_by: RankKind = "vector"

    @classmethod
    def found(cls, entry: FaqEntry, row: IndexRow, kind: Literal["vector", "bm25"], score: float) -> Candidate:
        """A FAQ as a search found it: its best row, whose ``kind`` score is also its rank.

        Equal to ``Candidate(entry, row, vector=score, rank=score, ranked_by="vector")`` (for ``kind`` vector),
        built without ``__init__``: the first stage makes one per FAQ found, for every question.
        """
        new = object.__new__(cls)
        d = dict(_CANDIDATE_DEFAULTS, entry=entry, row=row, rank=score, ranked_by=kind)
        d[kind] = score
        object.__setattr__(new, "__dict__", d)
        return new

    def evolve(self, **changes: Any) -> Candidate:
        """A copy with ``changes`` (like ``dataclasses.replace``, without re-running ``__init__``: this is the
        query path's innermost loop, and the fields are already checked values)."""
        new = object.__new__(Candidate)
        d = self.__dict__.copy()
        d.update(changes)
        object.__setattr__(new, "__dict__", d)
        return new

    @property
    def first_stage_score(self) -> float:
        """The score the first stage ranked this FAQ by: the fusion, else the vector score, else BM25 (0 if none)."""
        for score in (self.fusion, self.vector, self.bm25):
            if score is not None and math.isfinite(score):
                return float(score)
        return 0.0

    def score_of(self, kind: ScoreKind) -> float:
        """This FAQ's score of a deciding kind (0.0 when that stage did not score it)."""
        value = {"rerank": self.rerank, "vector": self.vector, "bm25": self.bm25}[kind]
        return float(value) if value is not None else 0.0


_CANDIDATE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Candidate) if f.default is not dataclasses.MISSING}


@dataclass(frozen=True)
class Scores:
    """The scores one FAQ got at each stage (None where the stage did not run or did not see it)."""

    vector: float | None = None
    bm25: float | None = None
    rerank: float | None = None
    fused: float | None = None


@dataclass(frozen=True)
class Hit:
    """One FAQ in a result list, with the row that matched best and its scores.

    Attributes:
        entry: The FAQ entry.
        score: The score this result was ranked by (its kind is ``ranked_by``); the score that decided the
            hand-off is ``Answer.decision.score``.
        ranked_by: What ``score`` is (``fused``, ``rrf``, ``vector``, ``bm25``, ``rerank`` or ``blend``).
        scores: Every stage's score for this FAQ.
        matched: The index row that matched best (question, variant or answer chunk).
    """

    entry: FaqEntry
    score: float
    scores: Scores
    matched: IndexRow
    ranked_by: RankKind = "vector"

    @classmethod
    def of(cls, c: Candidate) -> Hit:
        """The result a candidate becomes."""
        return cls(entry=c.entry, score=float(c.rank), ranked_by=c.ranked_by, matched=c.row,
                   scores=Scores(vector=c.vector, bm25=c.bm25, rerank=c.rerank, fused=c.fusion))


@dataclass(frozen=True)
class Handoff:
    """Why the service hands the question to a human, and what to tell the user.

    Attributes:
        code: The reason as a code (also a metric label and a log field).
        reason: The reason for people; starts with the code, e.g. ``below-threshold: vector score 0.84 < 0.89``.
        message: What the user is told, in the question's language.
    """

    code: HandoffReason
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """How the answer-or-hand-off was decided.

    Attributes:
        score_kind: The kind of the deciding score (None for the canned hand-off).
        score: The top FAQ's deciding score (None when there is no candidate).
        gap: The top FAQ's deciding score minus the second's (None with fewer than two).
        threshold: The threshold it was compared with (None for the canned hand-off).
        margin: The calibrated top-1/top-2 margin rule (0 = none).
        threshold_source: ``setting``, ``calibrated <date>``, or why a calibration was not used.
        reason: Why the question was handed off; None when it was answered.
        rule: The rule that decided, for people (``answered`` or the hand-off reason).
    """

    score_kind: ScoreKind | None
    score: float | None
    gap: float | None
    threshold: float | None
    margin: float
    threshold_source: str
    reason: HandoffReason | None
    rule: str

    @property
    def answered(self) -> bool:
        """True when the question is answered."""
        return self.reason is None


@dataclass(frozen=True)
class Answer:
    """The result of one question, as the API and the CLI render it.

    Attributes:
        answered: True when the top hit cleared its threshold.
        hits: Ranked results (also present on a hand-off, for the human agent).
        handoff: Set when the question goes to a human.
        mode: Which score decided: ``rerank``, ``vector``, ``bm25`` or ``canned``.
        degraded: True when a fallback path answered.
        index_version: The build id that served the question ("" when none was loaded).
        decision: The deciding score, its threshold and the rule.
        trace: The question's trace (spans, fallbacks, notes): the source of ``timings_ms`` and ``explain``.
        candidates: Every first-stage candidate FAQ id, in first-stage order (for recall measurements).
        explain: With ``explain``: each stage's candidates and scores, the spans and the rule that decided.
    """

    answered: bool
    hits: tuple[Hit, ...]
    handoff: Handoff | None
    mode: Mode
    degraded: bool
    index_version: str
    decision: Decision
    trace: Trace
    candidates: tuple[str, ...] = ()
    explain: dict[str, Any] | None = None

    @property
    def request_id(self) -> str:
        """The request id the trace was made for."""
        return self.trace.request_id

    @property
    def timings_ms(self) -> dict[str, float]:
        """Milliseconds per stage and ``total``, from the trace."""
        return self.trace.timings_ms()

    @property
    def notes(self) -> tuple[str, ...]:
        """Remarks for people (fallbacks, a reranker skipped and why), from the trace."""
        return tuple(self.trace.notes)

    @property
    def best(self) -> Hit | None:
        """The top hit when the question was answered, else None."""
        return self.hits[0] if self.answered and self.hits else None
