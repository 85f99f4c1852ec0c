"""Build the configured first stage and the BM25 fallback over one vector search and one BM25 search."""

from __future__ import annotations

from kbsearch.config import RetrieveSettings
from kbsearch.retrieve.base import FirstStage
from kbsearch.retrieve.fusion import LinearFusionStage, RrfStage
from kbsearch.retrieve.lexical import Bm25Search, Bm25Stage
from kbsearch.retrieve.vector import VectorSearch, VectorStage


def make_first_stage(settings: RetrieveSettings, vector: VectorSearch, bm25: Bm25Search) -> FirstStage:
    """The stage ``retrieve.first_stage`` names: ``fused``, ``hybrid``, ``vector`` or ``bm25``."""
    stages: dict[str, FirstStage] = {
        "fused": LinearFusionStage(vector, bm25, settings),
        "hybrid": RrfStage(vector, bm25, settings),
        "vector": VectorStage(vector),
        "bm25": Bm25Stage(bm25),
    }
    return stages[settings.first_stage]
