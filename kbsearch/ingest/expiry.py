"""Drop entries outside their validity window and flag answers that declare an old dated policy.

* ``valid_until`` before the ingest day, or ``valid_from`` after it: the entry is excluded (and listed
  in the report as expired). The query path checks validity again at serving time.
* Text that declares a dated policy (``2024年新规``, ``2023年起``, ``自2022年3月1日起``, ``effective until
  2023-12-31``, ``as of January 2022``, ``valid through 2023``, ``2021 policy``, ...) whose date is more
  than ``ingest.policy_max_age_days`` before the ingest day: the entry is kept with the flag
  ``dated-policy:<date>`` (``2023``, ``2022-01`` or ``2023-12-31``, as precise as the text). A year
  alone counts from 1 January, a month from its first day. Question and answer are both scanned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import unicodedata

from kbsearch.ingest.report import EntryNote
from kbsearch.types import FaqEntry

_MONTHS = {
    name: i
    for i, names in enumerate(
        [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",),
         ("june", "jun"), ("july", "jul"), ("august", "aug"), ("september", "sept", "sep"),
         ("october", "oct"), ("november", "nov"), ("december", "dec")],
        start=1,
    )
    for name in names
}
_MONTH = r"(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_Y = r"(?:19|20)\d{2}(?!\d)"
_ZH_DATE = rf"{_Y}\s*年(?:\s*\d{{1,2}}\s*月(?:\s*\d{{1,2}}\s*[日号])?)?"
_NUM_DATE = rf"{_Y}[-/.]\d{{1,2}}(?:[-/.]\d{{1,2}})?(?!\d)"
_EN_DATE = (
    rf"(?:{_NUM_DATE}|{_MONTH}\s+(?:\d{{1,2}}(?:st|nd|rd|th)?,?\s+)?{_Y}|\d{{1,2}}\s+{_MONTH},?\s+{_Y}|{_Y})"
)

#: Each pattern has a ``date`` group; the text around it is what makes it a policy statement.
_POLICY_PATTERNS = [
    re.compile(
        rf"(?<!\d)(?P<date>{_ZH_DATE}|{_NUM_DATE})\s*"
        r"(?:起|开始|以来|新规|新政|新版|版本|政策|规定|规则|标准|调整|执行|生效|实施|之前|以前|止|截止|为止)"
    ),
    re.compile(rf"(?:自|从|截至|截止|截止到|截止至|有效期至|有效期到|有效至)\s*(?P<date>{_ZH_DATE}|{_NUM_DATE})"),
    re.compile(
        r"\b(?:effective(?:\s+(?:from|until|through|as\s+of|on|since))?|valid\s+(?:from|until|through|thru|till|to)"
        r"|in\s+effect\s+(?:from|until|since|through)|as\s+of|since|starting(?:\s+(?:in|from|on))?"
        r"|beginning(?:\s+(?:in|on))?|until|through|till)\s+(?:the\s+end\s+of\s+)?"
        rf"(?P<date>{_EN_DATE})",
        re.I,
    ),
    re.compile(rf"\b(?P<date>{_Y})\s+(?:policy|policies|rules|regulations|guidelines|terms)\b", re.I),
]


def _parse_declared(text: str) -> tuple[dt.date, str] | None:
    """A matched date text -> ``(first day it denotes, label as precise as the text)``."""
    text = text.strip().lower()
    nums = [int(n) for n in re.findall(r"\d+", text)]
    month_name = re.search(_MONTH, text, re.I) if re.search(r"[a-z]", text) else None
    if month_name:
        month = _MONTHS[month_name.group(0).rstrip(".")]
        year = nums[-1]
        day = nums[0] if len(nums) == 2 else None
    else:
        year, month, day = [*nums, None, None][:3]
    try:
        first = dt.date(year, month or 1, day or 1)
    except ValueError:
        return None
    label = f"{year}" if month is None else f"{year}-{month:02d}" if day is None else first.isoformat()
    return first, label


def dated_policies(text: str) -> list[tuple[dt.date, str, str]]:
    """Find dated-policy declarations in a text.

    Returns:
        ``(date, label, matched text)`` for each declaration, in order of appearance.
    """
    text = unicodedata.normalize("NFKC", text)
    found: dict[int, tuple[dt.date, str, str]] = {}
    for pattern in _POLICY_PATTERNS:
        for m in pattern.finditer(text):
            parsed = _parse_declared(m.group("date"))
            if parsed and m.start("date") not in found:
                found[m.start("date")] = (*parsed, m.group(0))
    return [found[k] for k in sorted(found)]


def policy_flags(entry: FaqEntry, today: dt.date, max_age_days: int) -> list[tuple[str, str]]:
    """Return ``(flag, reason)`` for each dated policy in the entry older than ``max_age_days``."""
    out: dict[str, str] = {}
    for day, label, matched in dated_policies(f"{entry.question}\n{entry.answer}"):
        age = (today - day).days
        if age > max_age_days:
            out.setdefault(
                f"dated-policy:{label}",
                f"declares a dated policy {matched.strip()!r} ({age} days old > {max_age_days})",
            )
    return list(out.items())


def filter_valid(entries: list[FaqEntry], today: dt.date) -> tuple[list[FaqEntry], list[EntryNote]]:
    """Split entries into those valid on ``today`` and those outside their window.

    Returns:
        ``(kept entries in input order, one note per excluded entry)``.
    """
    kept: list[FaqEntry] = []
    expired: list[EntryNote] = []
    for e in entries:
        if e.valid_until is not None and e.valid_until < today:
            expired.append(EntryNote(e.id, e.source, f"valid_until {e.valid_until} is before {today}"))
        elif e.valid_from is not None and e.valid_from > today:
            expired.append(EntryNote(e.id, e.source, f"valid_from {e.valid_from} is after {today} (not yet valid)"))
        else:
            kept.append(e)
    return kept, expired


def flag_dated(
    entries: list[FaqEntry], today: dt.date, max_age_days: int
) -> tuple[list[FaqEntry], list[EntryNote]]:
    """Add ``dated-policy:<date>`` flags to entries declaring a policy older than ``max_age_days``.

    Run on the final (deduplicated) entries so that every flag in the report names a kept entry.

    Returns:
        ``(entries with flags added, one note per flagged entry)``.
    """
    out: list[FaqEntry] = []
    flagged: list[EntryNote] = []
    for e in entries:
        flags = policy_flags(e, today, max_age_days)
        if flags:
            e = dataclasses.replace(e, flags=tuple(dict.fromkeys((*e.flags, *(f for f, _ in flags)))))
            flagged.append(EntryNote(e.id, e.source, "; ".join(reason for _, reason in flags)))
        out.append(e)
    return out, flagged
