"""A deterministic, dependency-free fake embedder for tests of the other stages.

``HashEmbedder`` is feature hashing of n-grams of *units*: after NFKC and lower-casing, a unit is a
Latin word or digit run (``password``, ``2024``) or any other single word character (``退``, ``货``);
punctuation and spaces only separate units. Each unigram and bigram of units adds +1 or -1 (a second
hash bit) to one of ``dim`` buckets and the row is L2-normalised. So identical texts score exactly 1,
texts sharing words or Chinese characters score high, and unrelated texts score about 0: the signs
cancel, and English texts are not pulled together by the letters every English text shares. The same
text gives the same vector in every process (blake2b, not Python's salted ``hash``). It honours the
Embedder contract, including that embedding before ``load()`` fails, so a service test run on it
catches a missing ``load()`` call.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import numpy as np

from kbsearch.embed.st import l2_normalize
from kbsearch.errors import BadInputError, NotReadyError

HASH_MODEL_ID = "kbsearch/hash-ngram-v1"
"""The model id manifests record for :class:`HashEmbedder`."""
_UNIT = re.compile(r"[0-9a-z\u00c0-\u024f]+|[^\W_]")
_EMPTY_TOKEN = "\x00empty"  # what a text without units hashes, so its row is a unit vector too


class HashEmbedder:
    """Embeds texts as L2-normalised signed counts of hashed unit n-grams (see the module docstring).

    Queries and documents are embedded identically (no prompts), so a query equal to a document scores
    cosine 1.0.

    Attributes:
        model_id: ``kbsearch/hash-ngram-v1``.
        ngram_range: Smallest and largest n-gram length, in units.
    """

    def __init__(self, dim: int = 64, ngram_range: tuple[int, int] = (1, 2)) -> None:
        """Validate the arguments (nothing to load).

        Args:
            dim: Output dimension (number of hash buckets).
            ngram_range: ``(min_n, max_n)`` n-gram lengths, in units.

        Raises:
            BadInputError: ``dim`` or ``ngram_range`` is out of range.
        """
        if dim < 1:
            raise BadInputError(f"dim must be positive, got {dim}")
        lo, hi = ngram_range
        if not 1 <= lo <= hi:
            raise BadInputError(f"ngram_range must satisfy 1 <= min <= max, got {ngram_range}")
        self.model_id = HASH_MODEL_ID
        self.ngram_range = (lo, hi)
        self._dim = dim
        self._loaded = False

    @property
    def dim(self) -> int:
        """Output dimension (known before :meth:`load`)."""
        return self._dim

    @property
    def is_loaded(self) -> bool:
        """True once :meth:`load` has been called."""
        return self._loaded

    def load(self) -> None:
        """Mark the embedder ready (idempotent; there are no weights)."""
        self._loaded = True

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Embed questions; returns ``(len(texts), dim)`` float32, rows L2-normalised.

        Raises:
            NotReadyError: Before :meth:`load`.
            BadInputError: An item is not a string.
        """
        return self._embed(texts)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed index rows; returns ``(len(texts), dim)`` float32, rows L2-normalised.

        Raises:
            NotReadyError: Before :meth:`load`.
            BadInputError: An item is not a string.
        """
        return self._embed(texts)

    def describe(self) -> dict[str, Any]:
        """Return what a build manifest records: model id, backend, dim, n-gram range, (empty) prompts."""
        return {
            "model_id": self.model_id,
            "backend": "hash",
            "dim": self._dim,
            "native_dim": self._dim,
            "query_prompt": "",
            "document_prompt": "",
            "max_seq_length": None,
            "ngram_range": list(self.ngram_range),
            "normalized": True,
        }

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not self._loaded:
            raise NotReadyError("HashEmbedder is not loaded; call load() first")
        if not all(isinstance(t, str) for t in texts):
            raise BadInputError("texts must be strings")
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._row(self._ngrams(text))
        return l2_normalize(out)

    def _ngrams(self, text: str) -> list[str]:
        units = _UNIT.findall(unicodedata.normalize("NFKC", text).lower())
        lo, hi = self.ngram_range
        grams = [" ".join(units[i : i + n]) for n in range(lo, hi + 1) for i in range(len(units) - n + 1)]
        return grams or [_EMPTY_TOKEN]

    def _row(self, grams: list[str]) -> np.ndarray:
        row = np.zeros(self._dim, dtype=np.float32)
        for gram in grams:
            h = int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "little")
            row[h % self._dim] += 1.0 if h >> 63 else -1.0
        if not row.any():  # every bucket's signs cancelled (rare): never return a zero row
            return self._row([_EMPTY_TOKEN])
        return row
