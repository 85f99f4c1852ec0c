"""``IndexManifest``: what a build directory holds and how it was made, as a typed value.

Written as ``manifest.json`` into every build (model id, dimension, prompts, vector backend and index kind,
counts, sha256 of every data file). ``from_json`` also reads manifests of earlier releases, which had no
``format`` and recorded the FAISS index as ``{"type": "faiss.IndexFlatIP", ...}``, or had no
``vector_index.kind`` (every build before HNSW was flat).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kbsearch.errors import IndexCorruptError
from kbsearch.index.base import FLAT, RecallCheck
from kbsearch.index.factory import VECTOR_FILES

FORMAT = 2
"""Manifest format written by this release (1 = the untyped manifests before ``vector_index.backend``)."""

ENTRY_FILES = ("entries.jsonl", "chunks.jsonl", "rows.jsonl")
BM25_FILE = "bm25.bin"
"""The BM25 file of this release's builds; earlier builds recorded no ``bm25.file`` and hold ``bm25.json``."""
LEGACY_BM25_FILE = "bm25.json"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class VectorIndexInfo:
    """Which vector index backend wrote the build, into which file, and which kind of index it is.

    Attributes:
        backend: ``faiss`` or ``numpy``.
        file: The index file in the build directory.
        metric: Always ``inner_product`` (cosine over normalised vectors).
        normalised: Whether the vectors are L2-normalised.
        kind: ``flat`` (exact) or ``hnsw`` (approximate), chosen by the build's size.
        params: The kind's parameters (HNSW: ``m``, ``ef_construction``, ``ef_search``).
        recall_check: The build-time check of an approximate index against exact search (also present on a
            flat build that fell back from HNSW); None when no approximate index was tried.
    """

    backend: str = "faiss"
    file: str = VECTOR_FILES["faiss"]
    metric: str = "inner_product"
    normalised: bool = True
    kind: str = FLAT
    params: dict[str, int] = field(default_factory=dict)
    recall_check: RecallCheck | None = None


@dataclass(frozen=True)
class IndexManifest:
    """A build's manifest.

    Attributes:
        build_id: The build's id (the directory name).
        kb: The knowledge base.
        created_at: ISO timestamp (UTC).
        dimension: Vector dimension.
        counts: ``entries``, ``chunks``, ``rows``.
        checksums: sha256 of every data file, by file name.
        embedder: The embedder's ``describe()`` (model id, dimension, prompts): a build is refused by a
            service whose embedder differs.
        model_id: The embedding model's id.
        row_prompts: Prompt used per row kind (``query`` or ``document``).
        vector_index: The vector backend and its file.
        bm25: The BM25 library, variant, tokenizer and parameters.
        format: Manifest format (``FORMAT``).
    """

    build_id: str
    kb: str
    created_at: str
    dimension: int
    counts: dict[str, int]
    checksums: dict[str, str]
    embedder: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""
    row_prompts: dict[str, str] = field(default_factory=dict)
    vector_index: VectorIndexInfo = VectorIndexInfo()
    bm25: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def bm25_file(self) -> str:
        """The build's BM25 file (``bm25.file``; builds of earlier releases: ``LEGACY_BM25_FILE``)."""
        return str(self.bm25.get("file") or LEGACY_BM25_FILE)

    @property
    def data_files(self) -> tuple[str, ...]:
        """Every file the checksums cover."""
        return (*ENTRY_FILES, self.vector_index.file, self.bm25_file, REPORT_FILE)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IndexManifest:
        """Parse a manifest, this release's or an earlier one's.

        Raises:
            IndexCorruptError: a required field is missing or of the wrong type.
        """
        try:
            vi = dict(d.get("vector_index") or {})
            backend = vi.get("backend") or "faiss"  # format 1 wrote FAISS only
            check = vi.get("recall_check")
            info = VectorIndexInfo(backend=backend, file=vi.get("file") or VECTOR_FILES.get(backend, ""),
                                   metric=vi.get("metric", "inner_product"), normalised=bool(vi.get("normalised", True)),
                                   kind=str(vi.get("kind") or FLAT),  # builds before HNSW were all flat
                                   params={str(k): int(v) for k, v in dict(vi.get("params") or {}).items()},
                                   recall_check=None if check is None else RecallCheck.from_json(dict(check)))
            return cls(build_id=str(d["build_id"]), kb=str(d.get("kb", "")), created_at=str(d.get("created_at", "")),
                       dimension=int(d["dimension"]), counts={k: int(v) for k, v in dict(d["counts"]).items()},
                       checksums={str(k): str(v) for k, v in dict(d["checksums"]).items()},
                       embedder=dict(d.get("embedder") or {}), model_id=str(d.get("model_id", "")),
                       row_prompts=dict(d.get("row_prompts") or {}), vector_index=info, bm25=dict(d.get("bm25") or {}),
                       format=int(d.get("format", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"manifest is malformed: {type(exc).__name__}: {exc}") from exc
