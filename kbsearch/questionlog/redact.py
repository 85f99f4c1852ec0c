"""Masking personal data in a question before the question log stores it.

``redact`` replaces e-mail addresses with ``[email]``, Chinese resident ID numbers with ``[id]``, bank
card and account numbers (13-19 digits, grouped or not) with ``[card]``, phone numbers (Chinese mobiles
and landlines, ``+``-prefixed international and North American numbers) with ``[phone]``, and any other
run of 7 or more digits (order, account and member numbers may be personal) with ``[number]``. Short
numbers stay: amounts (500元), dates (2024-05-01), times (9:00-18:00), counts (3 days).

Chinese text has no spaces between words, so the patterns bound numbers with digit lookarounds
(``(?<![0-9])...(?![0-9])``) rather than ``\\b`` (which sees no boundary between 电话 and 138...). Matching
runs on a folded copy of the text in which every character maps to exactly one character (full-width
digits, letters, ``＋``, ``＠``, ``－`` and the ideographic space to their ASCII forms; dashes to ``-``), so
a match's span is also its span in the original, and the text around a mask is returned as written. The
rules run in order, each on what the previous ones left: e-mail first (its local part may be a phone
number), the ID before cards (an ID is 18 digits, or 17 and an X), ``+``-prefixed phones before cards
(``+8613812345678`` is 13 digits), cards before the other phones (``0212 3456 7890`` inside a card looks
like a landline), and the catch-all ``[number]`` last. Pure and stdlib-only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63"), "-")

# A day of a month, and a month, as they appear inside a resident ID's birth date.
_DATE = r"(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_DATE_SHORT = r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"


@dataclass(frozen=True)
class Rule:
    """One kind of personal data: a pattern on the folded text and the placeholder it becomes.

    Attributes:
        placeholder: What a match is replaced with (``[phone]``, ...).
        pattern: The pattern, matched against the folded text (ASCII digits only).
        accept: Further check on a match (e.g. its digit count); None accepts every match.
    """

    placeholder: str
    pattern: re.Pattern[str]
    accept: Callable[[str], bool] | None = None


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


RULES: tuple[Rule, ...] = (
    Rule("[email]", re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._%+-]*[A-Za-z0-9_%+-])?@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    # 18-digit resident ID (6-digit region, birth date, 3-digit sequence, check digit or X), also written 6 8 4;
    # then the 15-digit first-generation ID (2-digit year).
    Rule("[id]", re.compile(rf"(?<![0-9])[1-9]\d{{5}}([ -]?){_DATE}\1\d{{3}}[0-9Xx](?![0-9A-Za-z])")),
    Rule("[id]", re.compile(rf"(?<![0-9])[1-9]\d{{5}}{_DATE_SHORT}\d{{3}}(?![0-9])")),
    # Any number written with a leading + (a country code): +86 138 1234 5678, +1 (415) 555-0132, (+86)138...
    Rule("[phone]", re.compile(r"\(?\+\d(?:[ ().-]{0,2}\d){6,14}(?![0-9])")),
    # Cards and accounts: 13-19 digits in one run, or in groups of 3-6 split by single spaces or dashes.
    Rule("[card]", re.compile(r"(?<![0-9+])(?:\d{13,19}|\d{4,6}(?:[ -]\d{3,6}){2,4})(?![0-9])"),
         accept=lambda m: 13 <= _digits(m) <= 19),
    # Chinese mobiles: 138 1234 5678, 138-1234-5678, 13812345678.
    Rule("[phone]", re.compile(r"(?<![0-9])1[3-9]\d(?:[ -]?\d{4}){2}(?![0-9])")),
    # Chinese landlines with an area code: 010-12345678, (0755) 8888 6666, 0755-88886666.
    Rule("[phone]", re.compile(r"(?<![0-9])(?:\(0\d{2,3}\)|0\d{2,3})[ -]?\d{3,4}[ -]?\d{4}(?![0-9])")),
    # North American numbers: 415-555-0132, (415) 555-0132, 1-800-555-0199, 415.555.0132.
    Rule("[phone]", re.compile(r"(?<![0-9])(?:1[ .-])?(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .-]?\d{3}[ .-]\d{4}(?![0-9])")),
    Rule("[number]", re.compile(r"(?<![0-9])\d{7,}(?![0-9])")),
)
"""The rules ``redact`` applies, in order (see the module docstring for why this order)."""


def fold(text: str) -> str:
    """``text`` with each character replaced by its NFKC form when that is one character (so ``１３８`` reads
    ``138`` and ``＠`` reads ``@``) and typographic dashes by ``-``; always the same length as ``text``."""
    out = []
    for ch in text.translate(_DASHES):
        n = unicodedata.normalize("NFKC", ch) if not ch.isascii() else ch
        out.append(n if len(n) == 1 else ch)
    return "".join(out)


def _apply(rule: Rule, folded: str, original: str) -> tuple[str, str]:
    """Replace ``rule``'s matches in both texts (the same spans: ``fold`` keeps lengths)."""
    parts_f: list[str] = []
    parts_o: list[str] = []
    last = 0
    for m in rule.pattern.finditer(folded):
        if rule.accept is not None and not rule.accept(m.group(0)):
            continue
        parts_f += [folded[last:m.start()], rule.placeholder]
        parts_o += [original[last:m.start()], rule.placeholder]
        last = m.end()
    if not parts_f:
        return folded, original
    return "".join(parts_f) + folded[last:], "".join(parts_o) + original[last:]


def redact(text: str) -> str:
    """``text`` with e-mail addresses, ID numbers, card and account numbers, phone numbers and other long
    numbers replaced by ``[email]``, ``[id]``, ``[card]``, ``[phone]`` and ``[number]``.

    Everything else is returned exactly as written (full-width punctuation included).
    """
    folded, original = fold(text), text
    for rule in RULES:
        folded, original = _apply(rule, folded, original)
    return original
