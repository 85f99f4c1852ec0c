"""The Embedder interface every embedding backend implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors.

    Queries and documents are embedded by separate verbs because models prompt them differently
    (Qwen3: an instruction on queries only; e5: ``query: `` / ``passage: ``). Constructors are cheap;
    ``load()`` loads weights and is idempotent.
    """

    model_id: str

    @property
    def dim(self) -> int:
        """Output dimension (after any Matryoshka truncation). Valid after ``load()``."""
        ...

    def load(self) -> None:
        """Load the model (idempotent)."""
        ...

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Embed user questions; returns ``(len(texts), dim)`` float32, rows L2-normalised."""
        ...

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed index rows; returns ``(len(texts), dim)`` float32, rows L2-normalised."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a build manifest records about this embedder (model id, dim, prompts, ...)."""
        ...
