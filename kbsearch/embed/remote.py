"""Embedding backend ``openai``: a model server's OpenAI-compatible ``/v1/embeddings`` (sglang, vLLM, TEI,
Infinity), so the API process holds no model and the model scales on its own GPU box.

The server only runs the model: ``OpenAIEmbedder`` owns what an index depends on, as the in-process
backends do. It puts the prompts before the texts itself (Qwen3's ``Instruct: ...\\nQuery:`` on questions,
or e5's ``query: `` / ``passage: ``), truncates to ``dim`` (Matryoshka) and L2-normalises, and records the
model id, dimension and prompts in ``describe()``, so a build is refused by a service whose model or
prompts differ, as with a local model. ``load()`` asks the server once, to learn the dimension.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from kbsearch.embed.st import EmbedderNotLoadedError, l2_normalize
from kbsearch.errors import BackendError, BadInputError
from kbsearch.modelserver import ModelServerClient

DIMENSION_PROBE = "dimension probe"
"""The text ``load()`` embeds to learn the server's dimension."""


class OpenAIEmbedder:
    """Embeds texts by POSTing them to ``{base_url}/embeddings`` in batches.

    Args:
        base_url: The server's API root, up to and including ``/v1``.
        model: The model name the server serves (recorded as ``model_id``).
        query_prompt: Put before every question.
        document_prompt: Put before every index row.
        dim: Matryoshka dimension: sent as ``dimensions`` and applied here (truncate, renormalise); None = native.
        batch_size: Texts per request.
        api_key: Bearer token (empty: none).
        timeout_s: One request's timeout.
        max_retries: Retries of a request answered 429/5xx or cut off.
        transport: An ``httpx`` transport instead of the network (tests).

    Raises:
        BadInputError: ``base_url`` is not an http(s) URL, or a limit is out of range.
    """

    backend = "openai"

    def __init__(self, base_url: str, model: str, *, query_prompt: str = "", document_prompt: str = "",
                 dim: int | None = None, batch_size: int = 32, api_key: str = "", timeout_s: float = 30.0,
                 max_retries: int = 3, transport: Any = None) -> None:
        if not model.strip():
            raise BadInputError("embed.model must name the model the server serves")
        if dim is not None and dim < 1:
            raise BadInputError(f"dim must be positive or None, got {dim}")
        if batch_size < 1:
            raise BadInputError(f"batch_size must be positive, got {batch_size}")
        self.client = ModelServerClient(base_url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries,
                                        what="embedding server", transport=transport)
        self.model_id = model
        self.query_prompt, self.document_prompt = query_prompt, document_prompt
        self.batch_size = batch_size
        self._requested_dim = dim
        self._native_dim: int | None = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Output dimension (after truncation).

        Raises:
            EmbedderNotLoadedError: Before :meth:`load`.
        """
        if self._dim is None:
            raise EmbedderNotLoadedError(f"embedder {self.model_id!r} is not loaded; call load() first")
        return self._dim

    def load(self) -> None:
        """Ask the server for one vector to learn its dimension (idempotent, thread-safe).

        Raises:
            BackendError: the server cannot be reached or answers wrongly.
            BadInputError: ``dim`` exceeds what the server returns.
        """
        with self._lock:
            if self._dim is not None:
                return
            native = self._request([DIMENSION_PROBE]).shape[1]
            if self._requested_dim is not None and self._requested_dim > native:
                raise BadInputError(f"embedding dim {self._requested_dim} exceeds the {native} dimensions "
                                    f"{self.model_id!r} returns")
            self._native_dim, self._dim = native, self._requested_dim or native

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Embed user questions with the query prompt; ``(len(texts), dim)`` float32, rows L2-normalised.

        Raises:
            NotReadyError: before :meth:`load`.
            BadInputError: an item is not a string.
            BackendError: the server failed.
        """
        return self._embed(texts, self.query_prompt)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed index rows with the document prompt; ``(len(texts), dim)`` float32, rows L2-normalised.

        Raises:
            NotReadyError: before :meth:`load`.
            BadInputError: an item is not a string.
            BackendError: the server failed.
        """
        return self._embed(texts, self.document_prompt)

    def _embed(self, texts: list[str], prompt: str) -> np.ndarray:
        if self._dim is None:
            raise EmbedderNotLoadedError(f"embedder {self.model_id!r} is not loaded; call load() first")
        if not all(isinstance(t, str) for t in texts):
            raise BadInputError("texts must be strings")
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        parts = [self._request([prompt + t for t in texts[i:i + self.batch_size]])
                 for i in range(0, len(texts), self.batch_size)]
        vectors = np.concatenate(parts)
        if vectors.shape[1] < self._dim:
            raise BackendError(f"embedding server returned {vectors.shape[1]} dimensions for {self.model_id!r}, "
                               f"{self._dim} expected")
        return l2_normalize(vectors[:, : self._dim])

    def _request(self, inputs: list[str]) -> np.ndarray:
        """One ``/embeddings`` call: the vectors of ``inputs`` in their order (the answer says each one's index)."""
        payload: dict[str, Any] = {"model": self.model_id, "input": inputs, "encoding_format": "float"}
        if self._requested_dim is not None:
            payload["dimensions"] = self._requested_dim
        answer = self.client.post("/embeddings", payload)
        try:
            data = sorted(answer["data"], key=lambda d: int(d["index"]))
            vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"embedding server answered an unexpected body: {str(answer)[:200]}") from exc
        if vectors.ndim != 2 or len(vectors) != len(inputs) or [int(d["index"]) for d in data] != list(range(len(inputs))):
            raise BackendError(f"embedding server returned {len(data)} vectors of shape {vectors.shape} for "
                               f"{len(inputs)} texts")
        if not np.isfinite(vectors).all():
            raise BackendError("embedding server returned non-finite values")
        return vectors

    def describe(self) -> dict[str, Any]:
        """What a build manifest records: ``model_id``, ``backend``, ``dim``, ``native_dim``, the prompts,
        ``base_url`` (for people: a build moves between servers of the same model), ``normalized``."""
        return {
            "model_id": self.model_id,
            "backend": self.backend,
            "dim": self._dim,
            "native_dim": self._native_dim,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "max_seq_length": None,
            "base_url": self.client.base_url,
            "normalized": True,
        }
