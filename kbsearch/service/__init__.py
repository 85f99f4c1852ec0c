"""Service stage: the one query function (``QueryEngine.ask``) the API, the CLI and eval share.

``query.QueryEngine`` orchestrates retrieve -> rerank -> decide with the fallback chain and a trace per
question; ``parts.EngineParts`` builds its stages from the settings groups, loads them and reports
readiness; ``builds.BuildCache`` keeps each KB's active build loaded and checks it was embedded like the
service; ``similarity.PairJudge`` answers ``POST /similarity``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from kbsearch.config import Settings
from kbsearch.service.query import QueryEngine
from kbsearch.telemetry.trace import Trace


def make_engine(settings: Settings, clock: Callable[[], dt.date] = dt.date.today,
                observers: Sequence[Callable[[Trace], None]] = ()) -> QueryEngine:
    """A QueryEngine with the embedder and reranker planner the settings name (nothing loaded yet)."""
    from kbsearch.embed import make_embedder
    from kbsearch.rerank import make_rerank_planner

    return QueryEngine(settings, make_embedder(settings), make_rerank_planner(settings), clock=clock, observers=observers)


__all__ = ["QueryEngine", "make_engine"]
