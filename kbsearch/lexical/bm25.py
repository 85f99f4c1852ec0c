"""BM25 over the same index rows as the vector index: the fallback path and a lexical signal.

Backed by rank-bm25's ``BM25Okapi``. Persisted without pickle: the tokenised corpus and parameters go
to JSON, and loading rebuilds the (cheap) statistics. Scores are also reported normalised to [0, 1]
by the query's upper bound ``sum(idf(t) * (k1 + 1))`` over its known terms, so one threshold means
the same thing for short and long questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.errors import BackendError, IndexCorruptError
from kbsearch.lexical.tokenize import TokenizerName, get_tokenizer

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LexicalHits:
    """Top rows of one BM25 query: row ids, raw scores and normalised scores, best first.

    ``all_normalised`` holds the normalised score of every row (index = row id), computed in the same
    pass, so a caller that needs other rows' scores does not score the query again.
    """

    rows: np.ndarray
    raw: np.ndarray
    normalised: np.ndarray
    all_normalised: np.ndarray


class BM25Index:
    """A BM25 index over a list of texts, row ``i`` = text ``i``.

    Args:
        tokenized: The tokenised corpus.
        tokenizer: Name of the tokeniser used for the corpus (queries use the same one).
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    def __init__(self, tokenized: list[list[str]], tokenizer: TokenizerName = "char", k1: float = 1.5, b: float = 0.75):
        if not tokenized:
            raise ValueError("BM25Index needs at least one document")
        if k1 <= 0 or not 0 <= b <= 1:
            raise ValueError(f"invalid BM25 parameters k1={k1}, b={b}")
        from rank_bm25 import BM25Okapi

        self.tokenizer_name: TokenizerName = tokenizer
        self._tokenize = get_tokenizer(tokenizer)
        self._tokenized = tokenized
        # rank-bm25 divides by zero on an all-empty corpus; an empty row gets a placeholder token.
        self._bm25 = BM25Okapi([t or ["\x00"] for t in tokenized], k1=k1, b=b)
        self.k1 = k1
        self.b = b

    @classmethod
    def build(cls, texts: list[str], tokenizer: TokenizerName = "char", k1: float = 1.5, b: float = 0.75) -> BM25Index:
        """Tokenise ``texts`` and build the index."""
        tok = get_tokenizer(tokenizer)
        return cls([tok(t) for t in texts], tokenizer=tokenizer, k1=k1, b=b)

    def __len__(self) -> int:
        return len(self._tokenized)

    def _bound(self, terms: list[str]) -> float:
        return float(sum(max(self._bm25.idf.get(t, 0.0), 0.0) for t in terms) * (self.k1 + 1))

    def scores(self, query: str) -> tuple[np.ndarray, float]:
        """Return raw BM25 scores for every row, and the query's upper bound (0 when no term is known).

        Raises:
            BackendError: rank-bm25 failed (cause ``bm25-error``).
        """
        terms = self._tokenize(query)
        try:
            return np.asarray(self._bm25.get_scores(terms), dtype=np.float32), self._bound(terms)
        except (ArithmeticError, ValueError, IndexError, TypeError) as exc:  # rank-bm25's internals
            raise BackendError(f"BM25 scoring failed: {type(exc).__name__}: {exc}", FallbackCause.BM25_ERROR) from exc

    def normalised_scores_for(self, query: str, rows: list[int]) -> np.ndarray:
        """Normalised scores (raw / the query's upper bound, in [0, 1]) of the given rows only.

        Cheaper than scoring every row: the vector path uses it to show the BM25 score of its
        candidates.

        Raises:
            BackendError: rank-bm25 failed (cause ``bm25-error``).
        """
        terms = self._tokenize(query)
        bound = self._bound(terms)
        if bound <= 0 or not rows:
            return np.zeros(len(rows), dtype=np.float32)
        try:
            raw = np.asarray(self._bm25.get_batch_scores(terms, rows), dtype=np.float32)
        except (ArithmeticError, ValueError, IndexError, TypeError) as exc:  # rank-bm25's internals
            raise BackendError(f"BM25 scoring failed: {type(exc).__name__}: {exc}", FallbackCause.BM25_ERROR) from exc
        return np.clip(raw / bound, 0.0, 1.0)

    def search(self, query: str, k: int) -> LexicalHits:
        """Return the ``k`` best rows for ``query`` (rows with score 0 are left out)."""
        raw, bound = self.scores(query)
        k = min(k, len(raw))
        top = np.argpartition(-raw, k - 1)[:k]
        top = top[np.argsort(-raw[top], kind="stable")]
        top = top[raw[top] > 0]
        every = np.clip(raw / bound, 0.0, 1.0) if bound > 0 else np.zeros(len(raw))
        every = every.astype(np.float32)
        return LexicalHits(rows=top, raw=raw[top], normalised=every[top], all_normalised=every)

    def save(self, path: Path) -> None:
        """Write the index as JSON to ``path`` (a new file; builds never overwrite live files)."""
        payload = {"format": FORMAT_VERSION, "tokenizer": self.tokenizer_name, "k1": self.k1, "b": self.b,
                   "docs": self._tokenized}
        with open(path, "x", encoding="utf-8") as fh:  # a new file in a fresh build directory, never a live one
            json.dump(payload, fh, ensure_ascii=False)

    @classmethod
    def load(cls, path: Path) -> BM25Index:
        """Read an index written by :meth:`save`.

        Raises:
            IndexCorruptError: when the file is missing or malformed.
        """
        try:
            payload: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") != FORMAT_VERSION:
                raise ValueError(f"unknown format {payload.get('format')!r}")
            return cls(payload["docs"], tokenizer=payload["tokenizer"], k1=payload["k1"], b=payload["b"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"BM25 index {path.name} is unreadable: {exc}") from exc
