"""The ``VectorIndex`` interface: what the query path and the KB reranker's self-check need of a vector index.

Every backend (``numpy_backend.NumpyIndex``, the brute-force oracle; ``faiss_backend.FaissIndex``) stores
L2-normalised float32 vectors, row ``i`` = ``IndexRow`` ``i`` of the build, and answers inner products
(= cosine). Backends are chosen by ``IndexSettings.backend`` through ``factory``, recorded in the build
manifest, and always loaded with the backend that wrote them. A backend may build an approximate
``kind`` of index for large builds (FAISS: HNSW above ``IndexSettings.approximate_above_rows``); its
``search`` is then approximate, while ``vectors`` and ``similarity`` stay exact. All of them pass the
same contract tests (``tests/test_vector_index.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kbsearch.errors import BadInputError

FLAT = "flat"
"""The exact kind of index: every query compared with every vector."""


@dataclass(frozen=True)
class RecallCheck:
    """How much of what exact search finds an approximate index found, measured when its build was made.

    Attributes:
        recall: recall@``k`` at the last efSearch tried (the one kept, unless the build fell back to flat).
        k: Results compared per query.
        queries: Rows of the build used as queries.
        tried: ``{efSearch: recall}`` for each efSearch tried, in order.
    """

    recall: float
    k: int
    queries: int
    tried: dict[int, float]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RecallCheck:
        """Parse what ``dataclasses.asdict`` wrote (JSON turns the ``tried`` keys into strings).

        Raises:
            KeyError, TypeError, ValueError: a field is missing or of the wrong type.
        """
        return cls(recall=float(d["recall"]), k=int(d["k"]), queries=int(d["queries"]),
                   tried={int(ef): float(r) for ef, r in dict(d.get("tried") or {}).items()})


@runtime_checkable
class VectorIndex(Protocol):
    """Inner-product search over a fixed set of vectors (row ``i`` = vector ``i``).

    Attributes:
        backend: The backend's name as settings and manifests spell it (``faiss``, ``numpy``).
        kind: ``flat`` (exact search) or an approximate kind (``hnsw``), as the manifest records it.
        dim: The vectors' dimension.
    """

    backend: str
    kind: str
    dim: int

    def __len__(self) -> int:
        """Number of vectors."""
        ...

    def params(self) -> dict[str, int]:
        """The index kind's parameters, as the manifest records them (empty for ``flat``)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores, rows)``, each ``(len(queries), min(k, len))``, best first (approximate for an
        approximate ``kind``: the rows found are the best of what it reached, their scores exact).

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
