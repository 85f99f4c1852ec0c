"""Split long answers into chunks at their own headings, else paragraphs, else sentences.

An answer of at most ``ingest.chunk_max_chars`` characters is one chunk. A longer one is cut:

1. at its own heading lines: markdown ``#``..``######``, ``【标题】``, ``一、``, ``（一）``, ``1.``/``1、``/``1)``,
   ``Step 1:``, ``第一步``/``第1条``;
2. sections still too long at blank lines, then line breaks, then sentence ends (``。！？；.!?;``), then
   clause marks and spaces, and as a last resort every ``chunk_max_chars`` characters;
3. the pieces are packed back together in order, up to an even share of the answer (so a 310-character
   answer gives two chunks of ~155, not 300 + 10) and never above ``chunk_max_chars``; a section is not
   added to a chunk when that would take the chunk past the even share, so chunks prefer to start at
   headings, while runs of tiny sections (a numbered list) are still packed together.

No text is lost: chunk bodies are consecutive slices of the answer (each stripped of surrounding
whitespace), so their concatenation is the answer minus whitespace at the cuts. Each chunk's ``text``
is ``【section】question`` (just the question when there is no section), a newline, the chunk's own
heading when the body does not already start with it (a continuation of a long section), then the body.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import pairwise

from kbsearch.types import Chunk, FaqEntry

_HEADING = re.compile(
    r"^[ \t]*(?:"
    r"#{1,6}[ \t]+\S.*"
    r"|【[^】\n]{1,40}】.*"
    r"|[一二三四五六七八九十百]{1,3}[、.．][ \t]*\S.*"
    r"|[(（][一二三四五六七八九十\d]{1,3}[)）][ \t]*\S.*"
    r"|\d{1,2}(?:[、)）]|[.．](?!\d))[ \t]*\S.*"
    r"|step[ \t]*\d{1,2}[ \t]*[:：.\-].*"
    r"|第[一二三四五六七八九十百\d]{1,3}[步条章节部分][ \t:：、].*"
    r")$",
    re.M | re.I,
)
#: A heading line longer than this still starts a section, but is body text, not a heading label.
HEADING_MAX_CHARS = 60
_SEPARATORS = [
    re.compile(r"\n[ \t]*\n"),
    re.compile(r"\n"),
    re.compile(r"(?<=[。！？!?；;])|(?<=\.)(?=\s)"),
    re.compile(r"(?<=[，、,：:])|(?<=\s)(?=\S)"),
]


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    heading: str
    starts_section: bool


def heading_label(line: str) -> str:
    """The label of a heading line: ``## 退货`` -> ``退货``; ``【条件】7天内`` -> ``【条件】``; too long -> ``""``."""
    line = line.strip()
    bracket = re.match(r"【[^】]*】", line)
    if bracket:
        return bracket.group(0)
    line = re.sub(r"^#{1,6}\s+", "", line)
    return line if len(line) <= HEADING_MAX_CHARS else ""


def _atoms(text: str, start: int, end: int, limit: int, level: int = 0) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` into consecutive spans of at most ``limit`` characters."""
    if end - start <= limit:
        return [(start, end)]
    if level == len(_SEPARATORS):
        return [(i, min(i + limit, end)) for i in range(start, end, limit)]
    cuts = sorted({m.end() for m in _SEPARATORS[level].finditer(text, start, end) if start < m.end() < end})
    if not cuts:
        return _atoms(text, start, end, limit, level + 1)
    out: list[tuple[int, int]] = []
    bounds = [start, *cuts, end]
    for a, b in pairwise(bounds):
        out.extend(_atoms(text, a, b, limit, level + 1))
    return out


def split_answer(answer: str, max_chars: int) -> list[tuple[str, int, int, bool]]:
    """Cut an answer into chunk spans.

    Args:
        answer: The answer text.
        max_chars: ``ingest.chunk_max_chars``.

    Returns:
        ``(heading, start, end, body_starts_with_heading)`` per chunk, consecutive and covering the
        whole answer; ``heading`` is ``""`` when the chunk's section has none.
    """
    if len(answer) <= max_chars:
        return [("", 0, len(answer), False)]
    starts = [(m.start(), heading_label(m.group(0))) for m in _HEADING.finditer(answer)]
    if not starts or starts[0][0] > 0:
        starts.insert(0, (0, ""))
    pieces: list[_Piece] = []
    for (s, heading), (e, _) in pairwise([*starts, (len(answer), "")]):
        for i, (a, b) in enumerate(_atoms(answer, s, e, max_chars)):
            pieces.append(_Piece(a, b, heading, i == 0))
    target = math.ceil(len(answer) / math.ceil(len(answer) / max_chars))
    spans: list[tuple[str, int, int, bool]] = []
    first: _Piece | None = None
    end = 0
    for p in pieces:
        if first is not None:
            size, grown = end - first.start, p.end - first.start
            if grown > max_chars or size >= target or (p.starts_section and grown > target):
                spans.append((first.heading, first.start, end, first.starts_section and bool(first.heading)))
                first = None
        if first is None:
            first = p
        end = p.end
    assert first is not None
    spans.append((first.heading, first.start, end, first.starts_section and bool(first.heading)))
    return spans


def chunk_entry(entry: FaqEntry, max_chars: int) -> list[Chunk]:
    """Chunk one entry's answer (see the module docstring); whitespace-only pieces are dropped."""
    title = f"【{entry.section}】{entry.question}" if entry.section else entry.question
    chunks: list[Chunk] = []
    for heading, start, end, has_heading in split_answer(entry.answer, max_chars):
        body = entry.answer[start:end].strip()
        if not body:
            continue
        lines = [title] if has_heading or not heading else [title, heading]
        text = "\n".join([*lines, body])
        chunks.append(Chunk(faq_id=entry.id, ordinal=len(chunks), heading=heading, text=text, body=body))
    return chunks


def chunk_entries(entries: list[FaqEntry], max_chars: int) -> list[Chunk]:
    """Chunk every entry, in entry order."""
    return [c for e in entries for c in chunk_entry(e, max_chars)]
