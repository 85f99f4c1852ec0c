"""Pick the vector index backend by name: ``IndexSettings.backend`` for new builds, the manifest's for loading.

Each backend names its file in a build directory; heavy libraries (faiss) are imported only by the
backend that needs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kbsearch.errors import BadInputError
from kbsearch.index.base import VectorIndex

#: Backend name -> the file its index is saved as inside a build directory.
VECTOR_FILES = {"faiss": "vectors.faiss", "numpy": "vectors.npy"}


def _backend(name: str) -> type:
    if name == "faiss":
        from kbsearch.index.faiss_backend import FaissIndex

        return FaissIndex
    if name == "numpy":
        from kbsearch.index.numpy_backend import NumpyIndex

        return NumpyIndex
    raise BadInputError(f"unknown vector index backend {name!r}; expected one of {sorted(VECTOR_FILES)}")


def build_vector_index(backend: str, vectors: np.ndarray, device: str = "cpu") -> VectorIndex:
    """A new ``backend`` index over ``vectors`` (``device`` ``cpu`` for a build that is only saved).

    Raises:
        BadInputError: unknown backend, or ``vectors`` is not a non-empty matrix.
    """
    return _backend(backend).build(vectors, device=device)


def load_vector_index(backend: str, path: Path, device: str = "auto") -> VectorIndex:
    """Load a ``backend`` index saved at ``path`` (on the GPU where the backend and ``device`` allow).

    Raises:
        BadInputError: unknown backend.
        IndexCorruptError: the file is missing or unreadable.
    """
    return _backend(backend).load(path, device=device)
