"""The values that flow between stages: frozen dataclasses, no behaviour beyond (de)serialisation.

Ingest produces ``FaqEntry`` values, chunking turns them into ``Chunk`` values, the indexes are built
over ``IndexRow`` values (one per text to match: a question, a variant, an answer chunk), and the
query path returns ``Hit`` values grouped per FAQ id inside an ``Answer``. Pydantic lives only at the
HTTP edge (``kbsearch.api.models``); these are what the library passes around.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

RowKind = Literal["question", "variant", "chunk"]
Mode = Literal["rerank", "vector", "bm25", "canned"]


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
class Scores:
    """The scores one FAQ got at each stage (None where the stage did not run or did not see it)."""

    vector: float | None = None
    bm25: float | None = None
    rerank: float | None = None


@dataclass(frozen=True)
class Hit:
    """One FAQ in a result list, with the row that matched best and its scores.

    Attributes:
        entry: The FAQ entry.
        score: The score the final ranking used (its kind is the answer's ``mode``).
        scores: Every stage's score for this FAQ.
        matched: The index row that matched best (question, variant or answer chunk).
    """

    entry: FaqEntry
    score: float
    scores: Scores
    matched: IndexRow


@dataclass(frozen=True)
class Handoff:
    """Why the service hands the question to a human, and what to tell the user."""

    reason: str
    message: str


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
        timings_ms: Milliseconds per stage.
        notes: Human-readable remarks, e.g. that the reranker is switched off.
        candidates: Every first-stage candidate FAQ id, in first-stage order (for recall measurements).
        explain: With ``explain``: each stage's candidates and scores, and the rule that decided.
    """

    answered: bool
    hits: tuple[Hit, ...]
    handoff: Handoff | None
    mode: Mode
    degraded: bool
    index_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    explain: dict[str, Any] | None = None

    @property
    def best(self) -> Hit | None:
        """The top hit when the question was answered, else None."""
        return self.hits[0] if self.answered and self.hits else None
