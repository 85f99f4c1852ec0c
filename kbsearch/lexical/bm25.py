"""BM25 over the same index rows as the vector index: the fallback path and a lexical signal.

The scores are rank-bm25's ``BM25Okapi`` (its idf, with negative idfs floored at ``epsilon`` times the
average idf; an empty row counts as one placeholder token), computed from an inverted index instead of
a Python loop over every row for every question term: the rows' term weights are stored column by
column (a CSC sparse matrix, as plain arrays), so a question touches only the rows that share a term
with it. ``tests/test_bm25.py`` checks the scores against rank-bm25 itself and a textbook formula.

Persisted without pickle: ``bm25.bin`` holds a small JSON header (parameters, vocabulary, array
layout) and the arrays, which load memory-mapped. Builds of earlier releases stored the tokenised rows
as JSON (``bm25.json``, format 1); those still load (their weights are computed at load).

Scores are also reported normalised to [0, 1] by the query's upper bound ``sum(idf(t) * (k1 + 1))``
over its known terms, so one threshold means the same thing for short and long questions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.errors import IndexCorruptError
from kbsearch.lexical.tokenize import TokenizerName, get_tokenizer

FORMAT_VERSION = 2
"""``bm25.bin``: header + arrays. Format 1 was the tokenised rows as JSON (``bm25.json``)."""

FILE = "bm25.bin"
"""The file this release writes (``LEGACY_FILE`` is read too)."""

LEGACY_FILE = "bm25.json"

MAGIC = b"KBSBM25\x00"

EPSILON = 0.25
"""rank-bm25's floor for negative idfs, as a share of the average idf."""

_EMPTY = "\x00"  # an empty row's placeholder token (rank-bm25 divides by zero on an all-empty corpus)
_ALIGN = 64


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

    Build it with ``build`` (texts) or ``from_tokens`` (tokenised rows); ``load`` reads a saved one.

    Args:
        vocab: The terms, term ``j`` = column ``j``.
        idf: Each term's idf (floored as rank-bm25 does).
        indptr, rows, weights: The term weights by column (CSC): the rows holding term ``j`` are
            ``rows[indptr[j]:indptr[j + 1]]``, with weights ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``.
        n_rows: How many rows.
        tokenizer: Name of the tokeniser used for the rows (queries use the same one).
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    def __init__(self, vocab: Sequence[str], idf: np.ndarray, indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray,
                 n_rows: int, tokenizer: TokenizerName = "char", k1: float = 1.5, b: float = 0.75) -> None:
        if n_rows < 1:
            raise ValueError("BM25Index needs at least one document")
        if len(idf) != len(vocab) or len(indptr) != len(vocab) + 1 or len(rows) != len(weights) or indptr[-1] != len(rows):
            raise ValueError("BM25Index arrays disagree in length")
        self.tokenizer_name: TokenizerName = tokenizer
        self._tokenize = get_tokenizer(tokenizer)
        self._terms = {t: j for j, t in enumerate(vocab)}
        self._vocab = list(vocab)
        self._idf, self._indptr, self._rows, self._weights = idf, indptr, rows, weights
        self._n = n_rows
        self.k1, self.b = k1, b

    @classmethod
    def build(cls, texts: list[str], tokenizer: TokenizerName = "char", k1: float = 1.5, b: float = 0.75) -> BM25Index:
        """Tokenise ``texts`` and build the index."""
        tok = get_tokenizer(tokenizer)
        return cls.from_tokens([tok(t) for t in texts], tokenizer=tokenizer, k1=k1, b=b)

    @classmethod
    def from_tokens(cls, tokenized: list[list[str]], tokenizer: TokenizerName = "char", k1: float = 1.5,
                    b: float = 0.75) -> BM25Index:
        """Build the index from tokenised rows (numpy throughout, one pass over the tokens to number them)."""
        if not tokenized:
            raise ValueError("BM25Index needs at least one document")
        if k1 <= 0 or not 0 <= b <= 1:
            raise ValueError(f"invalid BM25 parameters k1={k1}, b={b}")
        docs = [t or [_EMPTY] for t in tokenized]
        terms: dict[str, int] = {}
        ids = np.fromiter((terms.setdefault(t, len(terms)) for d in docs for t in d), dtype=np.int64)
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        n, v = len(docs), len(terms)
        row_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
        # (term, row) pairs with their counts, sorted by term then row: the CSC order
        pairs, tf = np.unique(ids * n + row_of, return_counts=True)
        term_of, row_ids = pairs // n, (pairs % n).astype(np.int32)
        df = np.bincount(term_of, minlength=v)
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        idf[idf < 0] = EPSILON * idf.mean()
        dl = lengths.astype(np.float64)
        norm = k1 * (1 - b + b * dl / dl.mean())
        tf = tf.astype(np.float64)
        weights = (idf[term_of] * tf * (k1 + 1) / (tf + norm[row_ids])).astype(np.float32)
        indptr = np.zeros(v + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        return cls(list(terms), idf, indptr, row_ids, weights, n, tokenizer=tokenizer, k1=k1, b=b)

    def __len__(self) -> int:
        return self._n

    def _query(self, terms: list[str]) -> tuple[list[tuple[int, int]], float]:
        """The query's known terms as (column, how often it occurs), and its upper bound."""
        counts: dict[int, int] = {}
        for t in terms:
            j = self._terms.get(t)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        bound = float(sum(max(float(self._idf[j]), 0.0) * c for j, c in counts.items()) * (self.k1 + 1))
        return list(counts.items()), bound

    def scores(self, query: str) -> tuple[np.ndarray, float]:
        """Return raw BM25 scores for every row, and the query's upper bound (0 when no term is known).

        Only the rows that share a term with the query are touched (the rest stay 0).
        """
        return self._scores_of_terms(self._tokenize(query))

    def _scores_of_terms(self, tokens: list[str]) -> tuple[np.ndarray, float]:
        terms, bound = self._query(tokens)
        out = np.zeros(self._n, dtype=np.float32)
        for j, count in terms:
            lo, hi = self._indptr[j], self._indptr[j + 1]
            out[self._rows[lo:hi]] += count * self._weights[lo:hi]  # a row occurs once per column
        return out, bound

    def normalised_scores_for(self, query: str, rows: list[int]) -> np.ndarray:
        """Normalised scores (raw / the query's upper bound, in [0, 1]) of the given rows only."""
        raw, bound = self.scores(query)
        if bound <= 0 or not rows:
            return np.zeros(len(rows), dtype=np.float32)
        return np.clip(raw[np.asarray(rows, dtype=np.int64)] / bound, 0.0, 1.0).astype(np.float32)

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
        """Write the index to ``path`` (a new file; builds never overwrite live files): ``MAGIC``, the
        header's length (uint64), the JSON header, then each array at a 64-byte aligned offset."""
        arrays = {"idf": np.ascontiguousarray(self._idf, dtype="<f8"),
                  "indptr": np.ascontiguousarray(self._indptr, dtype="<i8"),
                  "rows": np.ascontiguousarray(self._rows, dtype="<i4"),
                  "weights": np.ascontiguousarray(self._weights, dtype="<f4")}
        layout: dict[str, list[Any]] = {}
        offset = 0
        for name, a in arrays.items():
            layout[name] = [a.dtype.str, len(a), offset]
            offset += -(-a.nbytes // _ALIGN) * _ALIGN
        header = json.dumps({"format": FORMAT_VERSION, "tokenizer": self.tokenizer_name, "k1": self.k1, "b": self.b,
                             "n_rows": self._n, "vocab": self._vocab, "arrays": layout},
                            ensure_ascii=False).encode("utf-8")
        start = -(-(len(MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN
        with open(path, "xb") as fh:  # a new file in a fresh build directory, never a live one
            fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for name, a in arrays.items():
                fh.seek(start + layout[name][2])
                fh.write(a.tobytes())
            fh.truncate(start + offset)

    @classmethod
    def load(cls, path: Path) -> BM25Index:
        """Read an index written by :meth:`save` (its arrays memory-mapped), or a format-1 ``bm25.json``.

        Raises:
            IndexCorruptError: when the file is missing or malformed.
        """
        try:
            with open(path, "rb") as fh:
                magic = fh.read(len(MAGIC))
                if magic != MAGIC:
                    return cls._load_legacy(path)
                (size,) = struct.unpack("<Q", fh.read(8))
                header: dict[str, Any] = json.loads(fh.read(size).decode("utf-8"))
            if header.get("format") != FORMAT_VERSION:
                raise ValueError(f"unknown format {header.get('format')!r}")
            start = -(-(len(MAGIC) + 8 + size) // _ALIGN) * _ALIGN
            arrays = {name: np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=start + offset, shape=(count,))
                      if count else np.zeros(0, dtype=np.dtype(dtype))
                      for name, (dtype, count, offset) in header["arrays"].items()}
            return cls(header["vocab"], arrays["idf"], arrays["indptr"], arrays["rows"], arrays["weights"],
                       int(header["n_rows"]), tokenizer=header["tokenizer"], k1=header["k1"], b=header["b"])
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            raise IndexCorruptError(f"BM25 index {path.name} is unreadable: {exc}") from exc

    @classmethod
    def _load_legacy(cls, path: Path) -> BM25Index:
        """A format-1 file: the tokenised rows as JSON; the weights are computed from them."""
        payload: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != 1:
            raise ValueError(f"unknown format {payload.get('format')!r}")
        return cls.from_tokens(payload["docs"], tokenizer=payload["tokenizer"], k1=payload["k1"], b=payload["b"])
