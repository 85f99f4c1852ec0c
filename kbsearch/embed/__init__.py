"""Embedding stage: texts in, L2-normalised float32 vectors out (see ``base.Embedder``)."""

from kbsearch.embed.base import Embedder
from kbsearch.embed.factory import make_embedder

__all__ = ["Embedder", "make_embedder"]
