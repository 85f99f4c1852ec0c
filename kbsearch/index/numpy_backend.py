"""``NumpyIndex``: brute-force inner products in numpy, the oracle every other backend is compared with.

Exact and dependency-free; fine for small KBs and for tests. Saved as ``.npy`` (no pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kbsearch.errors import BadInputError, IndexCorruptError
from kbsearch.index.base import FLAT, check_queries, check_vectors


class NumpyIndex:
    """Brute-force numpy index over ``vectors`` (rows should be L2-normalised).

    Raises:
        BadInputError: ``vectors`` is not a non-empty 2-D matrix.
    """

    backend = "numpy"
    kind = FLAT

    def __init__(self, vectors: np.ndarray):
        self._v = check_vectors(vectors)
        self.dim = self._v.shape[1]

    @classmethod
    def build(cls, vectors: np.ndarray, device: str = "cpu") -> NumpyIndex:
        """The index over ``vectors`` (``device`` is accepted for the factory and ignored: numpy runs on the CPU)."""
        return cls(vectors)

    def __len__(self) -> int:
        return self._v.shape[0]

    def params(self) -> dict[str, int]:
        """See :class:`~kbsearch.index.base.VectorIndex` (a flat index has none)."""
        return {}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`~kbsearch.index.base.VectorIndex`."""
        q = check_queries(queries, self.dim)
        k = min(k, len(self))
        sims = q @ self._v.T
        rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, rows, axis=1), rows

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """See :class:`~kbsearch.index.base.VectorIndex`."""
        return self._v[np.asarray(rows, dtype=np.int64)] if len(rows) else np.zeros((0, self.dim), np.float32)

    def similarity(self, query: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """See :class:`~kbsearch.index.base.VectorIndex`."""
        return self.vectors(rows) @ np.asarray(query, dtype=np.float32).reshape(-1)

    def save(self, path: Path) -> None:
        """Write the vectors as ``.npy`` to a new file."""
        with open(path, "xb") as fh:
            np.save(fh, self._v)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> NumpyIndex:
        """Read vectors written by :meth:`save`.

        Raises:
            IndexCorruptError: the file is missing or not a float matrix.
        """
        if not Path(path).is_file():
            raise IndexCorruptError(f"vector index {path.name} is missing")
        try:
            return cls(np.load(path, allow_pickle=False))
        except (OSError, ValueError, BadInputError) as exc:
            raise IndexCorruptError(f"vector file {path.name} is unreadable: {exc}") from exc
