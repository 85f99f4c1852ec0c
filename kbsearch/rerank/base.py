"""The Reranker interface every second-stage backend implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Reranker(Protocol):
    """Scores how well each candidate text answers a question.

    ``enabled`` is False for the ``none`` backend: the query path then skips the stage, ranks by the
    vector score, and says so in the response. Scores of enabled rerankers are probabilities in
    [0, 1] (Qwen3: P(yes); generic cross-encoders: their sigmoid/softmax output), compared with
    ``Settings.threshold_rerank``.
    """

    enabled: bool
    model_id: str

    def load(self) -> None:
        """Load the model (idempotent)."""
        ...

    def score(self, query: str, docs: list[str]) -> list[float]:
        """Return one probability per doc, in the order given."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the manifest/readiness report records about this reranker."""
        ...
