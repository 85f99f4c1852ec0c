"""Pick the reranker backend named by ``Settings.rerank_backend``.

Building a reranker is cheap and imports neither torch nor sentence-transformers; the caller runs
``load()`` at startup.
"""

from __future__ import annotations

from kbsearch.config import Settings
from kbsearch.errors import BadInputError
from kbsearch.rerank.base import Reranker
from kbsearch.rerank.cross_encoder import CrossEncoderReranker, Qwen3Reranker
from kbsearch.rerank.kb import KbReranker
from kbsearch.rerank.none import NoReranker


def make_reranker(settings: Settings) -> Reranker:
    """Return the (not yet loaded) reranker that ``settings`` configure.

    ``none`` -> ``NoReranker`` (``enabled`` False); ``kb`` -> ``KbReranker`` (each KB's own trained
    model); ``qwen3`` -> ``Qwen3Reranker`` with
    ``rerank_instruction``; ``cross-encoder`` -> ``CrossEncoderReranker``. Both model backends take
    ``rerank_model``, ``rerank_batch_size``, ``rerank_max_length`` and ``device``.

    Raises:
        BadInputError: unknown backend name, or a setting the backend rejects.
    """
    backend = settings.rerank_backend
    if backend == "none":
        return NoReranker()
    if backend == "kb":
        return KbReranker(settings)
    limits = {
        "batch_size": settings.rerank_batch_size,
        "max_length": settings.rerank_max_length,
        "device": settings.device,
    }
    if backend == "qwen3":
        return Qwen3Reranker(settings.rerank_model, settings.rerank_instruction, **limits)
    if backend == "cross-encoder":
        return CrossEncoderReranker(settings.rerank_model, **limits)
    raise BadInputError(f"unknown rerank_backend {backend!r}; expected 'none', 'kb', 'qwen3' or 'cross-encoder'")
