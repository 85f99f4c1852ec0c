"""Turn raw records into ``FaqEntry`` values, rejecting bad rows with a reason each.

A row is rejected for: an empty question; an empty answer (with ``answers_from_questions``, the option for
intent datasets, an empty or missing answer is the question instead); a date that does not
parse (``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY.MM.DD``, ``YYYY年M月D日``, ISO datetimes; XLSX date cells;
``valid_until`` may also say it has no end: 长期有效, 永久, ... see ``NO_END_DATE``);
``valid_from`` after ``valid_until``; a field of the wrong shape; or an id already used by an earlier row
with different content (the later row is rejected and the message names the earlier one). A row that
repeats an earlier row's id *and* content exactly is folded and counted as an identical repeat.

Rows without an id get ``"faq-" + sha1(question + "\\x1f" + answer)[:12]`` over NFKC-folded,
whitespace-collapsed text: the same content always gets the same id, across runs and file formats.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kbsearch.ingest.parse import RawRecord, split_list
from kbsearch.ingest.report import Problem
from kbsearch.types import FaqEntry

_DATE = re.compile(
    r"^(\d{4})\s*(?:[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{1,2})|年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]?)"
    r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)


#: ``valid_until`` values that mean "no end date" (compared NFKC-folded, lowercased, without spaces).
NO_END_DATE = frozenset({"长期有效", "长期", "永久", "永久有效", "无期限", "无限期", "長期有效", "長期", "無期限",
                         "permanent", "never", "noexpiry"})


class RowError(ValueError):
    """A record cannot become an entry; the message is the reason shown in the report."""


def parse_date(value: Any) -> dt.date | None:
    """Parse a date field; empty values give None.

    Args:
        value: A string in one of the accepted forms, a ``date``/``datetime``, or None/"".

    Returns:
        The date, or None when the value is empty.

    Raises:
        RowError: When the value is not a date in an accepted form (or not a real calendar day).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = unicodedata.normalize("NFKC", str(value)).strip()
    match = _DATE.match(text)
    try:
        if match:
            y, m, d, zm, zd = match.groups()
            return dt.date(int(y), int(m or zm), int(d or zd))
        return dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise RowError(f"unparseable date {str(value)!r}") from None


def _updated_at(value: Any) -> str | None:
    """``updated_at`` keeps its time when it has one; stored as an ISO string."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and ":" in value:
        try:
            return dt.datetime.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass  # e.g. "2024/01/05 10:00": parse_date keeps the day
    day = parse_date(value)
    return day.isoformat() if day else None


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        raise RowError(f"{name} must be text, got a JSON {type(value).__name__}")
    return str(value).strip()


def _text_list(value: Any, name: str) -> tuple[str, ...]:
    """A list (or ``|``/line-separated text) -> stripped, non-empty, exact duplicates removed, in order."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = split_list(value)
    if not isinstance(value, list):
        raise RowError(f"{name} must be a list or '|'-separated text, got {type(value).__name__}")
    items = (_text(v, name) for v in value)
    return tuple(dict.fromkeys(v for v in items if v))


def _light_norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def derived_id(question: str, answer: str) -> str:
    """The stable id of an entry that has none: ``faq-`` + 12 hex of sha1 over its content."""
    digest = hashlib.sha1(f"{_light_norm(question)}\x1f{_light_norm(answer)}".encode()).hexdigest()
    return f"faq-{digest[:12]}"


@dataclass
class Validated:
    """The outcome of validation.

    Attributes:
        entries: Distinct valid entries in input order.
        rejected: Rejected rows with reasons.
        identical_repeats: Rows folded because they repeat an earlier row's id and content.
        answers_from_question: Entries whose empty answer was filled with the question.
    """

    entries: list[FaqEntry] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    identical_repeats: int = 0
    answers_from_question: int = 0


def _no_end(value: Any) -> bool:
    """Whether a ``valid_until`` value says the entry never expires (``长期有效``, ``永久``, ...)."""
    return isinstance(value, str) and "".join(unicodedata.normalize("NFKC", value).lower().split()) in NO_END_DATE


def to_entry(record: RawRecord, *, answers_from_questions: bool) -> tuple[FaqEntry, bool]:
    """Build the entry of one record.

    A ``heading`` (MaxKB's 分段标题) is the question when the row has none, otherwise one more variant.

    Args:
        record: The parsed row.
        answers_from_questions: An empty or missing answer is the question (intent datasets) instead of
            a rejection.

    Returns:
        ``(entry, answer_filled)``, where ``answer_filled`` says the empty answer became the question.

    Raises:
        RowError: With the reason the row is rejected.
    """
    f = record.fields
    question = _text(f.get("question"), "question")
    heading = _text(f.get("heading"), "heading")
    if not question:
        question, heading = heading, ""
    if not question:
        raise RowError("empty question")
    answer = _text(f.get("answer"), "answer")
    filled = not answer and answers_from_questions
    if filled:
        answer = question
    if not answer:
        raise RowError("empty answer")
    dates = {}
    for name in ("valid_from", "valid_until"):
        value = f.get(name)
        try:
            dates[name] = None if name == "valid_until" and _no_end(value) else parse_date(value)
        except RowError as e:
            raise RowError(f"{name}: {e}") from None
    if dates["valid_from"] and dates["valid_until"] and dates["valid_from"] > dates["valid_until"]:
        raise RowError(f"valid_from {dates['valid_from']} is after valid_until {dates['valid_until']}")
    try:
        updated_at = _updated_at(f.get("updated_at"))
    except RowError as e:
        raise RowError(f"updated_at: {e}") from None
    listed = _text_list(f.get("variants"), "variants") + ((heading,) if heading else ())
    variants = tuple(v for v in dict.fromkeys(listed) if v != question)
    entry = FaqEntry(
        id=_text(f.get("id"), "id") or derived_id(question, answer),
        question=question,
        answer=answer,
        variants=variants,
        section=_text(f.get("section"), "section"),
        valid_from=dates["valid_from"],
        valid_until=dates["valid_until"],
        updated_at=updated_at,
        tags=_text_list(f.get("tags"), "tags"),
        source=record.location,
    )
    return entry, filled


def validate(
    records: Iterable[RawRecord], *, answers_from_questions: bool, tick: Callable[[int], object] | None = None
) -> Validated:
    """Validate records in order; ids are checked across every file of the run.

    Args:
        records: Parsed records, in input order.
        answers_from_questions: Fill an empty/missing answer with the question instead of rejecting
            (intent datasets).
        tick: Called with 1 per record (progress bars).

    Returns:
        The valid entries, the rejections and the counts (see ``Validated``).
    """
    out = Validated()
    first: dict[str, FaqEntry] = {}
    for record in records:
        if tick is not None:
            tick(1)
        try:
            entry, filled = to_entry(record, answers_from_questions=answers_from_questions)
        except RowError as e:
            out.rejected.append(Problem(record.file, record.line, str(e)))
            continue
        earlier = first.get(entry.id)
        if earlier is None:
            first[entry.id] = entry
            out.entries.append(entry)
            out.answers_from_question += filled
        elif dataclasses.replace(earlier, source="") == dataclasses.replace(entry, source=""):
            out.identical_repeats += 1
        else:
            derived = "" if record.fields.get("id") else " (id derived from question+answer)"
            out.rejected.append(Problem(
                record.file, record.line,
                f"id {entry.id!r}{derived} already used by {earlier.source} with different content",
            ))
    return out
