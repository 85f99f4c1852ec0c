"""kbsearch: customer-service FAQ retrieval that answers from the knowledge base or hands off to a human.

The question path, stage by stage (one package each):
``ingest`` (files -> FaqEntry -> Chunk), ``embed`` (texts -> vectors), ``index`` (FAISS builds and the
active-build pointer), ``lexical`` (BM25), ``rerank`` (cross-encoders), ``service`` (the one query
function), ``api`` (HTTP) and ``cli``. Shared values live in ``kbsearch.types``, settings in
``kbsearch.config``, errors in ``kbsearch.errors``.
"""

__version__ = "0.1.0"
