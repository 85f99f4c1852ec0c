"""kbsearch: customer-service FAQ retrieval that answers from the knowledge base or hands off to a human.

One package per stage: ``ingest`` (files -> FaqEntry -> Chunk), ``embed`` (texts -> vectors), ``index``
(the vector index behind one interface, versioned builds), ``lexical`` (BM25), ``retrieve`` (the first
stages), ``rerank`` (rerankers and the per-KB plan), ``decide`` (answer or hand off), ``telemetry`` (the
trace of each question, metrics, logs), ``service`` (the one query function), ``api`` (HTTP); beside
them ``finetune`` and ``eval``, which build on the serving code, and ``cli``. Shared values live in
``kbsearch.types``, the outcome codes in ``kbsearch.codes``, settings in ``kbsearch.config``, errors in
``kbsearch.errors``.
"""

__version__ = "0.1.0"
