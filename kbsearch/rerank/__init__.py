"""Rerank stage: score (question, candidate text) pairs; higher is better (see ``base.Reranker``)."""

from kbsearch.rerank.base import Reranker
from kbsearch.rerank.factory import make_reranker

__all__ = ["Reranker", "make_reranker"]
