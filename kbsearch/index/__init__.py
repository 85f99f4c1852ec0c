"""Index stage: the vector index behind one interface, and versioned builds on disk.

``base.VectorIndex`` is what the query path and the KB reranker's self-check use (search, stored vectors,
similarity of given rows); ``factory`` picks the backend (``faiss``, with GPU when present, or ``numpy``,
the brute-force oracle) by name, and the kind of index by the build's size (exact flat, or HNSW above
``IndexSettings.approximate_above_rows`` once it passes a recall check). ``builder`` turns entries into index rows, embeds them and writes a
build; ``store`` keeps every build in its own directory with a typed ``manifest`` and publishes it by an
atomic, fsynced pointer swap (``durable``), holding the KB's writer lock (``lock``: one writer per KB);
``history`` lists a KB's builds and rolls back to one.
"""

from kbsearch.index.base import VectorIndex
from kbsearch.index.factory import build_vector_index, load_vector_index

__all__ = ["VectorIndex", "build_vector_index", "load_vector_index"]
