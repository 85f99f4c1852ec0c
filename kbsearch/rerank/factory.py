"""Build the reranker planner ``RerankSettings.backend`` names.

Building is cheap and imports neither torch nor sentence-transformers; the caller runs ``load()`` at startup.
"""

from __future__ import annotations

from kbsearch.config import Settings
from kbsearch.errors import BadInputError
from kbsearch.rerank.base import RerankPlanner
from kbsearch.rerank.cross_encoder import CrossEncoderReranker, Qwen3Reranker
from kbsearch.rerank.kb import KbRerankPlanner
from kbsearch.rerank.plan import SharedRerankPlanner
from kbsearch.rerank.remote import RemoteReranker


def make_rerank_planner(settings: Settings) -> RerankPlanner:
    """The (not yet loaded) planner that ``settings.rerank`` configures.

    ``none`` -> no reranker; ``kb`` -> each KB's own trained model (``kb_reranker.max_length``);
    ``qwen3`` -> ``Qwen3Reranker`` with ``rerank.instruction``; ``cross-encoder`` -> ``CrossEncoderReranker``.
    Both model backends take ``rerank.model``, ``rerank.batch_size``, ``rerank.max_length`` and ``device``.
    ``remote`` -> ``RemoteReranker`` on ``rerank.base_url`` (``remote_api``, ``model``, ``batch_size``, timeouts).

    Raises:
        BadInputError: unknown backend, or a setting the backend rejects.
    """
    r = settings.rerank
    if r.backend == "none":
        return SharedRerankPlanner(None, r.doc)
    if r.backend == "kb":
        return KbRerankPlanner(r, settings.kb_reranker.max_length, settings.device,
                               retrain_share=settings.kb_reranker.retrain_share)
    limits = {"batch_size": r.batch_size, "max_length": r.max_length, "device": settings.device}
    if r.backend == "qwen3":
        return SharedRerankPlanner(Qwen3Reranker(r.model, r.instruction, **limits), r.doc)
    if r.backend == "cross-encoder":
        return SharedRerankPlanner(CrossEncoderReranker(r.model, **limits), r.doc)
    if r.backend == "remote":
        return SharedRerankPlanner(RemoteReranker(r.base_url, r.model, api=r.remote_api, batch_size=r.batch_size,
                                                  api_key=r.api_key, timeout_s=r.timeout_s,
                                                  max_retries=r.max_retries), r.doc)
    raise BadInputError(f"unknown rerank backend {r.backend!r}; expected 'none', 'kb', 'qwen3', 'cross-encoder' "
                        "or 'remote'")
