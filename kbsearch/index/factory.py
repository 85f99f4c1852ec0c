"""Pick the vector index backend by name (``IndexSettings.backend`` for new builds, the manifest's for loading),
and the kind of index a new build gets by its size.

Each backend names its file in a build directory; heavy libraries (faiss, pymilvus) are imported only by
the backend that needs them. ``milvus`` keeps its vectors in a Milvus collection (``milvus_backend``): a new
build is told where by a ``MilvusTarget``, a loaded one reads it from its ``milvus.json``, and the store calls
``publish_vector_index`` / ``drop_vector_index`` when a build is published or deleted (no-ops for the
file backends). ``build_index_by_size`` gives a FAISS build of more than
``IndexSettings.approximate_above_rows`` rows an HNSW index instead of the exact flat one, once a
recall check on the build's own vectors says it finds what exact search finds (``IndexChoice`` says
which kind, why, and what the check measured).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kbsearch.config import IndexSettings
from kbsearch.errors import BadInputError
from kbsearch.index.base import FLAT, RecallCheck, VectorIndex, check_vectors

if TYPE_CHECKING:
    from kbsearch.index.milvus_backend import MilvusTarget

#: Backend name -> the file its index is saved as inside a build directory (milvus: where its collection is).
VECTOR_FILES = {"faiss": "vectors.faiss", "numpy": "vectors.npy", "milvus": "milvus.json"}

SERVER_BACKENDS = frozenset({"milvus"})
"""Backends whose vectors live on a server rather than in the build's file: an index that did not load may
load on a later try (the server was down), where a file that did not load is damaged."""

RECALL_K = 50
"""The recall check's k: the rows the service takes from the vector index (``RetrieveSettings.vector_top_k``)."""
RECALL_QUERIES = 200
"""Rows of the build used as the recall check's queries (all of them in a smaller build)."""
RECALL_SEED = 0
"""Seed of the recall check's sample, so a build's check can be repeated."""
EF_SEARCH_MAX = 1024
"""The recall check doubles efSearch up to this before it falls back to the flat index."""


def _backend(name: str) -> type:
    if name == "faiss":
        from kbsearch.index.faiss_backend import FaissIndex

        return FaissIndex
    if name == "numpy":
        from kbsearch.index.numpy_backend import NumpyIndex

        return NumpyIndex
    if name == "milvus":
        from kbsearch.index.milvus_backend import MilvusIndex

        return MilvusIndex
    raise BadInputError(f"unknown vector index backend {name!r}; expected one of {sorted(VECTOR_FILES)}")


def build_vector_index(backend: str, vectors: np.ndarray, device: str = "cpu", *,
                       milvus: MilvusTarget | None = None) -> VectorIndex:
    """A new exact ``backend`` index over ``vectors`` (``device`` ``cpu`` for a build that is only saved).

    Args:
        milvus: Where the milvus backend creates the build's collection (required for it, ignored by the others).

    Raises:
        BadInputError: unknown backend, ``vectors`` is not a non-empty matrix, or milvus without a target.
        BackendError: Milvus failed.
    """
    if backend == "milvus":
        return _backend(backend).build(vectors, device=device, target=milvus)
    return _backend(backend).build(vectors, device=device)


def load_vector_index(backend: str, path: Path, device: str = "auto", *, token: str = "") -> VectorIndex:
    """Load a ``backend`` index saved at ``path`` (on the GPU where the backend, the kind and ``device`` allow).

    Args:
        token: The Milvus server's token (``IndexSettings.milvus_token``), for the milvus backend.

    Raises:
        BadInputError: unknown backend.
        IndexCorruptError: the file is missing or unreadable (milvus: or its collection is gone).
        BackendError: the milvus backend cannot reach its server.
    """
    if backend == "milvus":
        return _backend(backend).load(path, device=device, token=token)
    return _backend(backend).load(path, device=device)


def publish_vector_index(backend: str, path: Path, *, token: str = "") -> None:
    """What publishing the build whose index is saved at ``path`` takes besides the ``ACTIVE`` swap: for milvus,
    moving the KB's alias to the build's collection; nothing for the file backends.

    Raises:
        IndexCorruptError: milvus: ``path`` is unreadable. BackendError: milvus: the alias could not be moved.
    """
    if backend == "milvus":
        from kbsearch.index import milvus_backend

        milvus_backend.publish(path, token=token)


def drop_vector_index(backend: str, path: Path, *, token: str = "") -> None:
    """Free what the index saved at ``path`` holds outside its build directory, before the directory is deleted:
    for milvus, its collection; nothing for the file backends.

    Raises:
        IndexCorruptError: milvus: ``path`` is unreadable. BackendError: milvus: the collection could not be dropped.
    """
    if backend == "milvus":
        from kbsearch.index import milvus_backend

        milvus_backend.drop(path, token=token)


@dataclass(frozen=True)
class IndexChoice:
    """Which kind of vector index a build got, why, and what its recall check measured.

    Attributes:
        kind: ``flat`` or ``hnsw``: what was built and saved.
        reason: Why, in words (for the build report).
        params: The index's parameters (``VectorIndex.params()``).
        recall_check: The approximate index's recall check (kept, or fallen back from); None when none was tried.
    """

    kind: str
    reason: str
    params: dict[str, int] = field(default_factory=dict)
    recall_check: RecallCheck | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the build report's ``vector_index``)."""
        return dataclasses.asdict(self)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k an approximate search found, from the two searches' ``(queries, k)`` scores.

    A found row counts when its score reaches the exact k-th score (less 1e-5), so rows tied with the
    k-th best (the same text on several rows) count whichever of them was returned. Scores are exact inner
    products in both searches; a row the search did not reach (-inf padding) never counts.
    """
    hits = (found >= exact[:, -1:] - 1e-5).sum(axis=1)
    return float(np.minimum(hits, exact.shape[1]).sum() / exact.size)


def build_index_by_size(settings: IndexSettings, vectors: np.ndarray, *,
                        milvus: MilvusTarget | None = None) -> tuple[VectorIndex, IndexChoice]:
    """A new index over ``vectors`` on the CPU, of the kind its size calls for, and why it is that kind.

    The flat (exact) index up to ``settings.approximate_above_rows`` rows, and always for the numpy
    backend (the oracle) and the milvus backend (a ``FLAT`` collection at ``milvus``). Above, a FAISS HNSW
    index (``settings.hnsw_*``), checked against exact search with
    ``RECALL_QUERIES`` of the build's own rows (seeded sample) as queries: its recall@``RECALL_K`` must
    reach ``settings.approximate_min_recall``; while it does not, efSearch is doubled (up to
    ``EF_SEARCH_MAX``), and if it never does, the build gets the flat index after all.

    Raises:
        BadInputError: unknown backend, or ``vectors`` is not a non-empty matrix.
        BackendError: Milvus failed.
    """
    v = check_vectors(vectors)
    n, limit = v.shape[0], settings.approximate_above_rows
    if settings.backend != "faiss" or n <= limit:
        index = build_vector_index(settings.backend, v, milvus=milvus)
        why = (f"{settings.backend} backend: always exact" if settings.backend != "faiss"
               else f"{n} rows <= approximate_above_rows {limit}: exact search")
        return index, IndexChoice(kind=index.kind, reason=why, params=index.params())
    from kbsearch.index.faiss_backend import FaissIndex, HnswParams

    hnsw = FaissIndex.build(v, device="cpu", hnsw=HnswParams(m=settings.hnsw_m,
                                                             ef_construction=settings.hnsw_ef_construction,
                                                             ef_search=settings.hnsw_ef_search))
    sample = np.sort(np.random.default_rng(RECALL_SEED).choice(n, size=min(RECALL_QUERIES, n), replace=False))
    queries = v[sample]
    exact_scores, _ = hnsw.exact_search(queries, RECALL_K)
    tried: dict[int, float] = {}
    ef, want = settings.hnsw_ef_search, settings.approximate_min_recall
    while True:
        hnsw.set_ef_search(ef)
        recall = recall_at_k(hnsw.approximate_search(queries, RECALL_K)[0], exact_scores)
        tried[ef] = round(recall, 4)
        if recall >= want or ef >= max(EF_SEARCH_MAX, settings.hnsw_ef_search):
            break
        ef = min(2 * max(ef, RECALL_K), EF_SEARCH_MAX)  # a search keeps at least k candidates whatever efSearch says
    check = RecallCheck(recall=round(recall, 4), k=min(RECALL_K, n), queries=len(sample), tried=tried)
    if recall >= want:
        raised = f" (efSearch raised from {settings.hnsw_ef_search})" if ef != settings.hnsw_ef_search else ""
        return hnsw, IndexChoice(kind=hnsw.kind, params=hnsw.params(), recall_check=check, reason=(
            f"{n} rows > approximate_above_rows {limit}: HNSW, recall@{RECALL_K} {recall:.4f} >= {want} at "
            f"efSearch {ef}{raised}"))
    del hnsw  # free the graph before the flat copy is made
    flat = build_vector_index("faiss", v)
    return flat, IndexChoice(kind=FLAT, params=flat.params(), recall_check=check, reason=(
        f"{n} rows > approximate_above_rows {limit}, but HNSW recall@{RECALL_K} stayed below {want} "
        f"(best {max(tried.values()):.4f}, efSearch up to {ef}): fell back to exact search"))
