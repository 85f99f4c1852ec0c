"""Service stage: the one query function (``QueryEngine.ask``) shared by the API and the CLI."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from kbsearch.config import Settings
from kbsearch.service.query import QueryEngine


def make_engine(settings: Settings, clock: Callable[[], dt.date] = dt.date.today) -> QueryEngine:
    """Build a QueryEngine with the embedder and reranker the settings name (nothing loaded yet)."""
    from kbsearch.embed import make_embedder
    from kbsearch.rerank import make_reranker

    return QueryEngine(settings, make_embedder(settings), make_reranker(settings), clock=clock)


__all__ = ["QueryEngine", "make_engine"]
