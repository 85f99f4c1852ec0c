"""The ``VectorIndex`` interface: what the query path and the KB reranker's self-check need of a vector index.

Every backend (``numpy_backend.NumpyIndex``, the brute-force oracle; ``faiss_backend.FaissIndex``) stores
L2-normalised float32 vectors, row ``i`` = ``IndexRow`` ``i`` of the build, and answers inner products
(= cosine). Backends are chosen by ``IndexSettings.backend`` through ``factory``, recorded in the build
manifest, and always loaded with the backend that wrote them. All of them pass the same contract tests
(``tests/test_vector_index.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from kbsearch.errors import BadInputError


@runtime_checkable
class VectorIndex(Protocol):
    """Exact inner-product search over a fixed set of vectors (row ``i`` = vector ``i``).

    Attributes:
        backend: The backend's name as settings and manifests spell it (``faiss``, ``numpy``).
        dim: The vectors' dimension.
    """

    backend: str
    dim: int

    def __len__(self) -> int:
        """Number of vectors."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores, rows)``, each ``(len(queries), min(k, len))``, best first.

        Raises:
            BadInputError: the queries' dimension is not ``dim``.
            BackendError: the backend failed.
        """
        ...

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``rows``, ``(len(rows), dim)`` float32."""
        ...

    def similarity(self, query: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """Inner products of one query vector with the given rows (exact, from the stored vectors)."""
        ...

    def save(self, path: Path) -> None:
        """Write the index to a new file at ``path`` (never over an existing one).

        Raises:
            FileExistsError: ``path`` exists (builds are written into fresh directories).
        """
        ...


def check_vectors(vectors: np.ndarray) -> np.ndarray:
    """A non-empty ``(n, dim)`` float32 C-contiguous copy of ``vectors``.

    Raises:
        BadInputError: not a non-empty 2-D matrix.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise BadInputError(f"expected a non-empty (n, dim) matrix, got shape {vectors.shape}")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """``queries`` as a ``(n, dim)`` float32 C-contiguous matrix.

    Raises:
        BadInputError: the dimension is not ``dim``.
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.shape[1] != dim:
        raise BadInputError(f"query dimension {q.shape[1]} does not match the index dimension {dim}")
    return q
