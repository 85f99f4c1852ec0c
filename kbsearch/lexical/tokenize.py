"""Tokenisers for BM25 that work on Chinese, English and the two mixed.

Latin-script text is split into lower-cased words; CJK runs are cut either into characters plus
character bigrams (``char``: no dictionary, robust to typos and new product names) or into jieba
search-mode words (``jieba``). Both are NFKC-normalised first so full-width letters and digits match
their half-width forms.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Literal

TokenizerName = Literal["char", "jieba"]

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{_CJK}]")


def normalise(text: str) -> str:
    """NFKC (width folding) and lower-case."""
    return unicodedata.normalize("NFKC", text).lower()


def has_cjk(text: str) -> bool:
    """True when the text contains at least one CJK ideograph."""
    return _IS_CJK.search(text) is not None


def char_tokens(text: str) -> list[str]:
    """Words for Latin runs; characters and character bigrams for CJK runs."""
    out: list[str] = []
    for run in _RUN.findall(normalise(text)):
        if _IS_CJK.match(run):
            out.extend(run)
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
        else:
            out.append(run)
    return out


def jieba_tokens(text: str) -> list[str]:
    """Words for Latin runs; jieba search-mode words for CJK runs."""
    import jieba  # heavy dictionary load: only when this tokeniser is chosen

    out: list[str] = []
    for run in _RUN.findall(normalise(text)):
        if _IS_CJK.match(run):
            out.extend(w for w in jieba.cut_for_search(run) if w.strip())
        else:
            out.append(run)
    return out


def get_tokenizer(name: TokenizerName) -> Callable[[str], list[str]]:
    """Return the tokeniser called ``name``.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "char":
        return char_tokens
    if name == "jieba":
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        return jieba_tokens
    raise ValueError(f"unknown BM25 tokenizer {name!r} (expected 'char' or 'jieba')")
