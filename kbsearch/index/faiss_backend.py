"""``FaissIndex``: exact FAISS inner-product search (``IndexFlatIP``), on the GPU when one is present.

The vectors are L2-normalised, so inner product = cosine. With ``device`` ``auto`` (or ``cuda``) and
faiss-gpu seeing a CUDA device, the index is copied to the GPU for search; the CPU copy is kept for
``vectors()`` and ``save()``. Files are written only into a fresh build directory, never over a live
index (``faiss.write_index`` truncates first).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.errors import BackendError, BadInputError, IndexCorruptError, MissingDependencyError
from kbsearch.index.base import check_queries, check_vectors


def _faiss() -> Any:
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

    Raises:
        MissingDependencyError: ``device`` is ``cuda`` but faiss has no GPU support or sees no device.
    """

    backend = "faiss"

    def __init__(self, index: Any, device: str = "auto"):
        faiss = _faiss()
        self.dim = index.d
        self._cpu = index
        self.on_gpu = False
        # FAISS GPU indexes are not thread-safe, even for search; CPU search is.
        self._search_lock: threading.Lock | contextlib.nullcontext[None] = contextlib.nullcontext()
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
    def build(cls, vectors: np.ndarray, device: str = "auto") -> FaissIndex:
        """Build an exact index over ``vectors`` (rows should be L2-normalised)."""
        faiss = _faiss()
        v = check_vectors(vectors)
        index = faiss.IndexFlatIP(v.shape[1])
        index.add(v)
        return cls(index, device=device)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`~kbsearch.index.base.VectorIndex`."""
        q = check_queries(queries, self.dim)
        try:
            with self._search_lock:
                return self._index.search(q, min(k, len(self)))
        except RuntimeError as exc:  # faiss reports its C++ errors as RuntimeError
            raise BackendError(f"FAISS search failed: {exc}", FallbackCause.VECTOR_ERROR) from exc

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """See :class:`~kbsearch.index.base.VectorIndex`."""
        if not len(rows):
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            return self._cpu.reconstruct_batch(np.asarray(rows, dtype=np.int64))
        except RuntimeError as exc:  # faiss refuses a row out of range
            raise BadInputError(f"rows out of range 0..{len(self) - 1}: {exc}") from exc

    def similarity(self, query: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """See :class:`~kbsearch.index.base.VectorIndex`."""
        return self.vectors(rows) @ np.asarray(query, dtype=np.float32).reshape(-1)

    def save(self, path: Path) -> None:
        """Write the (CPU copy of the) index to ``path``, which must not exist yet."""
        if path.exists():
            raise FileExistsError(f"refusing to overwrite {path}: builds are written to fresh directories")
        _faiss().write_index(self._cpu, str(path))

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> FaissIndex:
        """Read an index written by :meth:`save`.

        Raises:
            IndexCorruptError: the file is missing or not a FAISS index.
        """
        faiss = _faiss()
        if not path.is_file():
            raise IndexCorruptError(f"vector index {path.name} is missing")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexCorruptError(f"vector index {path.name} is unreadable: {exc}") from exc
        return cls(index, device=device)
