"""``SharedRerankPlanner``: one reranker (or none) for every knowledge base.

``rerank.backend`` ``qwen3`` and ``cross-encoder`` serve every KB with one model, read the text
``rerank.doc`` names and decide with its score (weight 1); ``none`` plans no reranker, and the
first-stage score decides.
"""

from __future__ import annotations

from pathlib import Path

from kbsearch.config import RerankDoc
from kbsearch.rerank.base import Reranker, RerankPlan


class SharedRerankPlanner:
    """The same plan for every KB.

    Args:
        reranker: The model, or None for ``rerank.backend = none``.
        doc: What it reads per candidate.
    """

    def __init__(self, reranker: Reranker | None, doc: RerankDoc = "faq") -> None:
        self.reranker = reranker
        self.enabled = reranker is not None
        self.model_id = reranker.model_id if reranker is not None else "none"
        self._plan = (RerankPlan(reranker, doc, 1.0, "ok", "reranker", self.model_id) if reranker is not None
                      else RerankPlan(None, doc, 1.0, "none", "reranker", "none"))

    def load(self) -> None:
        """Load the model (nothing to do without one).

        Raises:
            KbsearchError: the model failed to load.
        """
        if self.reranker is not None:
            self.reranker.load()

    def plan(self, kb_dir: Path, build: object = None) -> RerankPlan:
        """The one plan."""
        return self._plan

    def forced(self) -> SharedRerankPlanner:
        """This planner: a shared model has no self-check to override."""
        return self

    def describe(self, kb_dir: Path, build: object = None) -> None:
        """None: the reranker is not per KB (readiness reports it once)."""
        return None
