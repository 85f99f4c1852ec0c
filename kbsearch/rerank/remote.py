"""Rerank backend ``remote``: a model server's rerank endpoint, so the API process holds no reranker.

Two request shapes are spoken. ``cohere`` is the Jina/Cohere one that vLLM and Infinity serve at
``/v1/rerank``: ``{model, query, documents}`` answered ``{results: [{index, relevance_score}]}``. ``tei`` is
text-embeddings-inference's ``/rerank``: ``{query, texts}`` answered ``[{index, score}]``. Both servers apply
the model's activation, so scores are probabilities compared with ``decide.threshold_rerank`` like a local
cross-encoder's; a score outside [0, 1] (a server configured for raw logits) is refused, not silently
thresholded.
"""

from __future__ import annotations

from typing import Any, Literal

from kbsearch.errors import BackendError, BadInputError, NotReadyError
from kbsearch.modelserver import ModelServerClient

SCORE_SLACK = 1e-4
"""How far outside [0, 1] a probability may stray (float16 rounding on the server) before it is refused."""


class RemoteReranker:
    """Scores (question, document) pairs on a model server.

    Args:
        base_url: The server's API root (``http://vllm:8000/v1`` for cohere, ``http://tei:8080`` for tei).
        model: The model name sent to the server (cohere), and the ``model_id`` recorded.
        api: ``cohere`` or ``tei`` (the module docstring).
        batch_size: Documents per request.
        api_key: Bearer token (empty: none).
        timeout_s: One request's timeout.
        max_retries: Retries of a request answered 429/5xx or cut off.
        transport: An ``httpx`` transport instead of the network (tests).

    Raises:
        BadInputError: an argument is out of range.
    """

    backend = "remote"

    def __init__(self, base_url: str, model: str, *, api: Literal["cohere", "tei"] = "cohere", batch_size: int = 16,
                 api_key: str = "", timeout_s: float = 10.0, max_retries: int = 2, transport: Any = None) -> None:
        if api not in ("cohere", "tei"):
            raise BadInputError(f"rerank.remote_api must be 'cohere' or 'tei', got {api!r}")
        if batch_size < 1:
            raise BadInputError(f"rerank batch_size must be >= 1, got {batch_size}")
        if not model.strip():
            raise BadInputError("rerank.model must name the model the server serves")
        self.client = ModelServerClient(base_url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries,
                                        what="rerank server", transport=transport)
        self.model_id, self.api, self.batch_size = model, api, batch_size
        self._loaded = False

    @property
    def loaded(self) -> bool:
        """Whether ``load()`` has reached the server."""
        return self._loaded

    def load(self) -> None:
        """Score one pair, so that readiness says whether the server answers (idempotent).

        Raises:
            BackendError: the server cannot be reached or answers wrongly.
        """
        if not self._loaded:
            self._request("ping", ["pong"])
            self._loaded = True

    def score(self, query: str, docs: list[str]) -> list[float]:
        """One probability per doc, in the order given (``[]`` for no docs).

        Raises:
            NotReadyError: ``load()`` has not run.
            BadInputError: the query or a doc is not a string.
            BackendError: the server failed or answered wrongly.
        """
        if not self._loaded:
            raise NotReadyError(f"reranker {self.model_id!r} is not loaded; call load() at startup")
        if not isinstance(query, str) or not all(isinstance(doc, str) for doc in docs):
            raise BadInputError("the query and the docs to rerank must be strings")
        scores: list[float] = []
        for i in range(0, len(docs), self.batch_size):
            scores.extend(self._request(query, docs[i:i + self.batch_size]))
        return scores

    def _request(self, query: str, docs: list[str]) -> list[float]:
        if self.api == "cohere":
            answer = self.client.post("/rerank", {"model": self.model_id, "query": query, "documents": docs,
                                                  "top_n": len(docs), "return_documents": False})
            items, key = (answer.get("results") if isinstance(answer, dict) else None), "relevance_score"
        else:
            answer = self.client.post("/rerank", {"query": query, "texts": docs, "raw_scores": False,
                                                  "truncate": True})
            items, key = answer, "score"
        try:
            by_index = {int(item["index"]): float(item[key]) for item in items}
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"rerank server answered an unexpected body: {str(answer)[:200]}") from exc
        if sorted(by_index) != list(range(len(docs))):
            raise BackendError(f"rerank server scored {sorted(by_index)[:10]} of {len(docs)} documents")
        scores = [by_index[i] for i in range(len(docs))]
        if any(not (-SCORE_SLACK <= s <= 1 + SCORE_SLACK) for s in scores):
            raise BackendError(f"rerank server returned scores outside [0, 1] ({min(scores):.3g}..{max(scores):.3g}): "
                               "configure it to return probabilities (TEI: raw_scores false)")
        return [min(1.0, max(0.0, s)) for s in scores]

    def describe(self) -> dict[str, Any]:
        """What readiness records: backend, model, API shape, server, batch size, load state."""
        return {"backend": self.backend, "model_id": self.model_id, "api": self.api,
                "base_url": self.client.base_url, "batch_size": self.batch_size, "loaded": self.loaded}
