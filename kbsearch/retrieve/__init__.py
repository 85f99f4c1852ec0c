"""Retrieve stage: find the candidate FAQs of a question and rank them (the first stage).

Each first stage implements ``base.FirstStage.retrieve`` (question in, one ``Candidate`` per FAQ valid
today out, best first): ``vector`` (question embedding + vector index, best row per FAQ), ``bm25``,
``fused`` (the default: a linear fusion of each FAQ's question, answer and BM25 scores) and ``hybrid``
(reciprocal-rank fusion of the two lists). The fusions are pure functions in ``fusion``; ``grouping``
collapses rows into FAQs for serving and training alike. A failing vector path raises with a cause code,
and the query path falls back to the BM25 stage.
"""

from kbsearch.retrieve.base import FirstStage, Query, Retrieval
from kbsearch.retrieve.factory import make_first_stage
from kbsearch.retrieve.lexical import Bm25Search, Bm25Stage
from kbsearch.retrieve.vector import VectorSearch

__all__ = ["Bm25Search", "Bm25Stage", "FirstStage", "Query", "Retrieval", "VectorSearch", "make_first_stage"]
