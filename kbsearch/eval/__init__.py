"""Evaluation stage: run labelled questions through the query function and measure retrieval quality.

``run_eval`` asks every query through ``QueryEngine.ask`` (the function behind ``POST /ask``) once per
configuration (first stage bm25 / vector / hybrid / fused, each with and without the reranker when one is
configured), with the question embeddings computed once in batches and passed in, and reports top-1,
recall@3, recall@50 (did the gold reach the rerank stage), MRR@10, answered-precision, coverage, the
hand-off rate on out-of-scope questions and per-stage latency.
"""

from kbsearch.eval.run import (
    ConfigResult,
    EvalQuery,
    EvalReport,
    load_queries,
    prepare_benchmark,
    run_eval,
)

__all__ = ["ConfigResult", "EvalQuery", "EvalReport", "load_queries", "prepare_benchmark", "run_eval"]
