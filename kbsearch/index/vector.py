"""Vector indexes: inner product over L2-normalised vectors (= cosine).

``FaissIndex`` is the real backend (exact ``IndexFlatIP``; moved to the GPU when a CUDA device and
faiss-gpu are present). ``NumpyIndex`` is the brute-force oracle with the same interface, used in
differential tests and as the in-tree fake. Files are written only into a fresh build directory, never
over a live index (``faiss.write_index`` truncates first).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from kbsearch.errors import IndexCorruptError, MissingDependencyError

Device = Literal["auto", "cpu", "cuda"]


@runtime_checkable
class VectorIndex(Protocol):
    """Exact top-k inner-product search over a fixed set of vectors (row ``i`` = vector ``i``)."""

    dim: int

    def __len__(self) -> int:
        """Number of vectors."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores, rows)``, each ``(len(queries), min(k, len))``, best first."""
        ...

    def save(self, path: Path) -> None:
        """Write the index to a new file at ``path``."""
        ...


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, dim) matrix, got shape {vectors.shape}")
    return np.ascontiguousarray(vectors, dtype=np.float32)


class NumpyIndex:
    """Brute-force numpy index: the oracle the FAISS backend is tested against."""

    def __init__(self, vectors: np.ndarray):
        self._v = _check_vectors(vectors)
        self.dim = self._v.shape[1]

    def __len__(self) -> int:
        return self._v.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`VectorIndex`."""
        k = min(k, len(self))
        sims = np.asarray(queries, dtype=np.float32) @ self._v.T
        rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, rows, axis=1), rows

    def save(self, path: Path) -> None:
        """Write the vectors as ``.npy``."""
        with open(path, "xb") as fh:
            np.save(fh, self._v)

    @classmethod
    def load(cls, path: Path) -> NumpyIndex:
        """Read vectors written by :meth:`save`."""
        try:
            return cls(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"vector file {path} is unreadable: {exc}") from exc


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a hard dependency
        raise MissingDependencyError("faiss is not installed: pip install faiss-cpu (or kbsearch[gpu])") from exc
    return faiss


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one CUDA device."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissIndex:
    """Exact FAISS inner-product index, on the GPU when asked for (or ``auto``) and available.

    Args:
        index: A ``faiss.Index`` (CPU) holding the vectors.
        device: ``cpu``, ``cuda`` (error if unavailable) or ``auto``.
    """

    def __init__(self, index, device: Device = "auto"):
        faiss = _faiss()
        self.dim = index.d
        self._cpu = index
        self.on_gpu = False
        # FAISS GPU indexes are not thread-safe, even for search; CPU search is.
        self._search_lock: threading.Lock | contextlib.nullcontext = contextlib.nullcontext()
        want_gpu = device == "cuda" or (device == "auto" and gpu_available())
        if want_gpu:
            if not gpu_available():
                raise MissingDependencyError("device=cuda but faiss has no GPU support or sees no CUDA device")
            self._res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.on_gpu = True
            self._search_lock = threading.Lock()
        else:
            self._index = index

    @classmethod
    def build(cls, vectors: np.ndarray, device: Device = "auto") -> FaissIndex:
        """Build an exact index over ``vectors`` (rows should be L2-normalised)."""
        faiss = _faiss()
        v = _check_vectors(vectors)
        index = faiss.IndexFlatIP(v.shape[1])
        index.add(v)
        return cls(index, device=device)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`VectorIndex`."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} does not match the index dimension {self.dim}")
        with self._search_lock:
            scores, rows = self._index.search(q, min(k, len(self)))
        return scores, rows

    def vectors(self, rows: list[int]) -> np.ndarray:
        """The stored vectors of ``rows``, ``(len(rows), dim)``."""
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._cpu.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def similarity(self, query: np.ndarray, rows: list[int]) -> np.ndarray:
        """Inner products of one query vector with the given rows (exact, from the stored vectors)."""
        return self.vectors(rows) @ np.asarray(query, dtype=np.float32).reshape(-1)

    def save(self, path: Path) -> None:
        """Write the (CPU copy of the) index to ``path``, which must not exist yet."""
        if path.exists():
            raise FileExistsError(f"refusing to overwrite {path}: builds are written to fresh directories")
        _faiss().write_index(self._cpu, str(path))

    @classmethod
    def load(cls, path: Path, device: Device = "auto") -> FaissIndex:
        """Read an index written by :meth:`save`.

        Raises:
            IndexCorruptError: when the file is missing or not a FAISS index.
        """
        faiss = _faiss()
        if not path.is_file():
            raise IndexCorruptError(f"vector index {path} is missing")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexCorruptError(f"vector index {path} is unreadable: {exc}") from exc
        return cls(index, device=device)
