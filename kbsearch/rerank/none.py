"""The ``none`` reranker: the stage is switched off and the vector score decides.

``NoReranker`` exists so the query path always holds a ``Reranker`` and never a ``None``: it checks
``enabled`` and skips the stage. Nothing about it can fail at startup, so a service configured without
a reranker never reports "reranker not ready".
"""

from __future__ import annotations

from typing import Any

from kbsearch.errors import BackendError


class NoReranker:
    """A reranker that is switched off (``rerank_backend = "none"``).

    ``enabled`` is False, ``load()`` does nothing, and ``score()`` must not be called: it raises
    ``BackendError``, the category the query path already treats as "reranker unavailable, rank by
    the vector score", so even a caller that forgets to check ``enabled`` degrades instead of
    inventing scores.
    """

    enabled: bool = False
    model_id: str = "none"

    def load(self) -> None:
        """Do nothing: there is no model (idempotent by construction)."""

    def score(self, query: str, docs: list[str]) -> list[float]:
        """Refuse to score: the stage is disabled.

        Raises:
            BackendError: always; check ``enabled`` before calling.
        """
        raise BackendError(
            "reranking is disabled (rerank_backend='none'); check Reranker.enabled before calling score()"
        )

    def describe(self) -> dict[str, Any]:
        """Return ``{"backend": "none", "enabled": False, "model_id": "none"}``."""
        return {"backend": "none", "enabled": False, "model_id": self.model_id}
