"""``FaissIndex``: FAISS inner-product search, exact (``IndexFlatIP``) or approximate (``IndexHNSWFlat``).

The vectors are L2-normalised, so inner product = cosine. Which kind a build gets is decided by its size
when it is built (``factory.build_index_by_size``) and read back from the file when it is loaded. An
exact index is copied to the GPU for search with ``device`` ``auto`` (or ``cuda``) when faiss-gpu sees a
CUDA device; the CPU copy is kept for ``vectors()`` and ``save()``. faiss has no GPU HNSW, so an HNSW
index is always searched on the CPU (well under a millisecond per question at 100k rows). HNSW keeps its
vectors uncompressed (its ``storage`` is a flat index), so ``vectors()``, ``similarity()`` and
``exact_search()`` stay exact for either kind. Files are written only into a fresh build directory,
never over a live index (``faiss.write_index`` truncates first).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.errors import BackendError, BadInputError, IndexCorruptError, MissingDependencyError
from kbsearch.index.base import FLAT, check_queries, check_vectors

log = logging.getLogger(__name__)

HNSW = "hnsw"
"""Approximate search on a graph of the vectors (``faiss.IndexHNSWFlat``, inner product)."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a hard dependency
        raise MissingDependencyError("faiss is not installed: pip install faiss-cpu (or kbsearch[gpu])") from exc
    return faiss


_search_threads: int | None = None  # None: faiss's default (OpenMP: one per core)
_thread_state = threading.local()


def set_search_threads(threads: int | None) -> None:
    """OpenMP threads each search uses, in whatever thread it runs (``kbsearch serve`` sets it with torch's).

    OpenMP's thread count is per calling thread, so it is applied in each searching thread on its first
    search after a change. One query at a time is what the service searches, and splitting one flat
    search over the cores that are also running the model and the other questions costs more than it
    gains: at 100k rows on 2 busy cores, 60 ms p50 with 2 threads against 13.6 ms with 1
    (``bench/index_by_size.py --sizes 100000 --kinds flat --threads 1|2``).
    """
    global _search_threads
    _search_threads = threads


def _apply_search_threads() -> None:
    if _search_threads is not None and getattr(_thread_state, "threads", None) != _search_threads:
        _faiss().omp_set_num_threads(_search_threads)
        _thread_state.threads = _search_threads


@contextlib.contextmanager
def _search_errors() -> Iterator[None]:
    """Map faiss's C++ errors (raised as RuntimeError) to ``BackendError``: the query path falls back to BM25."""
    try:
        yield
    except RuntimeError as exc:
        raise BackendError(f"FAISS search failed: {exc}", FallbackCause.VECTOR_ERROR) from exc


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one CUDA device."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class HnswParams:
    """The HNSW graph's parameters (``IndexSettings.hnsw_m``, ``hnsw_ef_construction``, ``hnsw_ef_search``).

    Attributes:
        m: Neighbours per node (``M``; twice that on the bottom layer).
        ef_construction: Candidates kept while inserting a vector (a better graph for a slower build).
        ef_search: Candidates kept while searching (at least ``k`` are always kept).
    """

    m: int = 32
    ef_construction: int = 64
    ef_search: int = 128


class FaissIndex:
    """FAISS inner-product index (flat or HNSW), on the GPU when asked for (or ``auto``), available and flat.

    Args:
        index: A CPU ``faiss.IndexFlatIP`` or ``faiss.IndexHNSWFlat`` holding the vectors.
        device: ``cpu``, ``cuda`` (error if unavailable) or ``auto``.

    Attributes:
        kind: ``FLAT`` or ``HNSW``, from ``index``.
        on_gpu: Whether searches run on the GPU.

    Raises:
        MissingDependencyError: ``device`` is ``cuda`` but faiss has no GPU support or sees no device.
    """

    backend = "faiss"

    def __init__(self, index: Any, device: str = "auto"):
        faiss = _faiss()
        self.dim = index.d
        self._cpu = index
        self.kind = HNSW if isinstance(index, faiss.IndexHNSW) else FLAT
        # Exhaustive search over the same vectors: the index itself, or the flat storage under the HNSW graph.
        self._exact = faiss.downcast_index(index.storage) if self.kind == HNSW else index
        self.on_gpu = False
        # FAISS GPU indexes are not thread-safe, even for search; CPU search is.
        self._search_lock: threading.Lock | contextlib.nullcontext[None] = contextlib.nullcontext()
        want_gpu = device == "cuda" or (device == "auto" and gpu_available())
        if want_gpu and not gpu_available():
            raise MissingDependencyError("device=cuda but faiss has no GPU support or sees no CUDA device")
        if want_gpu and self.kind == FLAT:
            self._res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.on_gpu = True
            self._search_lock = threading.Lock()
        else:
            if want_gpu:
                log.info("HNSW vector index searched on the CPU: faiss has no GPU HNSW")
            self._index = index

    @classmethod
    def build(cls, vectors: np.ndarray, device: str = "auto", hnsw: HnswParams | None = None) -> FaissIndex:
        """Build an index over ``vectors`` (rows should be L2-normalised): exact, or HNSW with ``hnsw``'s parameters."""
        faiss = _faiss()
        v = check_vectors(vectors)
        if hnsw is None:
            index = faiss.IndexFlatIP(v.shape[1])
        else:
            index = faiss.IndexHNSWFlat(v.shape[1], hnsw.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = hnsw.ef_construction
            index.hnsw.efSearch = hnsw.ef_search
        index.add(v)
        return cls(index, device=device)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def params(self) -> dict[str, int]:
        """The index's parameters as the manifest records them: ``m``, ``ef_construction``, ``ef_search`` for HNSW."""
        if self.kind != HNSW:
            return {}
        graph = self._cpu.hnsw
        return {"m": int(graph.nb_neighbors(1)), "ef_construction": int(graph.efConstruction),
                "ef_search": int(graph.efSearch)}

    def set_ef_search(self, ef_search: int) -> None:
        """Set an HNSW index's ``efSearch`` (saved with it). For the build's recall check, before it is served.

        Raises:
            BadInputError: the index is not HNSW, or ``ef_search`` < 1.
        """
        if self.kind != HNSW:
            raise BadInputError(f"efSearch applies to an HNSW index, not to a {self.kind} one")
        if ef_search < 1:
            raise BadInputError(f"efSearch must be at least 1, got {ef_search}")
        self._cpu.hnsw.efSearch = ef_search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`~kbsearch.index.base.VectorIndex`.

        An HNSW query whose graph walk reached fewer than ``k`` rows is answered by exact search instead,
        so no result is ever padded with -1 (rare with the default parameters; the recall check counts it).
        """
        q = check_queries(queries, self.dim)
        k = min(k, len(self))
        with _search_errors():
            scores, rows = self._search(q, k)
            short = np.flatnonzero((rows < 0).any(axis=1))
            if len(short):
                scores[short], rows[short] = self._exact.search(q[short], k)
        return scores, rows

    def approximate_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, but an HNSW index's graph search alone: rows it did not reach are -1, with a
        score of -3.4e38. What the build's recall check measures; for a flat index the same as :meth:`search`.
        """
        q = check_queries(queries, self.dim)
        with _search_errors():
            return self._search(q, min(k, len(self)))

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, but exhaustive over the stored vectors whatever the kind (on the CPU).

        What the build's recall check compares an HNSW index with; costs a flat search.
        """
        q = check_queries(queries, self.dim)
        with _search_errors():
            return self._exact.search(q, min(k, len(self)))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _apply_search_threads()
        if self.kind == HNSW:  # efSearch below k would return fewer than k rows: search at least k candidates
            ef = max(int(self._cpu.hnsw.efSearch), k)
            return self._index.search(q, k, params=_faiss().SearchParametersHNSW(efSearch=ef))
        with self._search_lock:
            return self._index.search(q, k)

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
