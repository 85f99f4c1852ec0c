"""Rerank stage: score (question, candidate text) pairs, and decide per KB which reranker runs.

``base.Reranker`` is the model interface (Qwen3-Reranker and any CrossEncoder, ``cross_encoder``; each KB's
own trained model is one of those); ``text`` says what a reranker reads per candidate; ``blend`` mixes its
scores with the first stage's. A ``RerankPlanner`` (``plan.SharedRerankPlanner`` for one model or none,
``kb.KbRerankPlanner`` for each KB's own) answers, per KB, which reranker runs with which weight, or none
and why; ``factory.make_rerank_planner`` builds the configured one.
"""

from kbsearch.rerank.base import Reranker, RerankPlan, RerankPlanner
from kbsearch.rerank.factory import make_rerank_planner

__all__ = ["RerankPlan", "RerankPlanner", "Reranker", "make_rerank_planner"]
