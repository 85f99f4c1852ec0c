"""Embedding backend for any sentence-transformers model (Qwen3-Embedding in production, e5, ...).

``SentenceTransformerEmbedder`` wraps ``sentence_transformers.SentenceTransformer``: the model's own
saved modules decide tokenisation and pooling (last-token for Qwen3-Embedding, mean for e5), while
this class owns what a retrieval index depends on and must record: the query and document prompts
(passed explicitly on every call, so a prompt saved in the model folder never silently applies), the
Matryoshka output dimension (truncate, then L2-normalise), the token limit and the device. torch and
sentence-transformers are imported in :meth:`SentenceTransformerEmbedder.load`, never at import.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kbsearch.errors import BackendError, BadInputError, MissingDependencyError, NotFoundError, NotReadyError
from kbsearch.devices import check_device, looks_like_path, quiet_model_loading, resolve_device

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)



class EmbedderNotLoadedError(NotReadyError, AttributeError):
    """Raised by an embedder's verbs and ``dim`` before ``load()``.

    A :class:`~kbsearch.errors.NotReadyError` for callers (HTTP 503); also an ``AttributeError`` so that
    ``hasattr(embedder, "dim")``, and with it ``isinstance(embedder, Embedder)`` on Python 3.11, report
    the value as absent instead of raising.
    """


def qwen3_query_prompt(instruction: str) -> str:
    """Return Qwen3-Embedding's query prompt, ``"Instruct: {instruction}\\nQuery:"``.

    The model card's format is ``Instruct: {task}\\nQuery:{query}``: the query follows the colon with no
    space, and documents get no prompt at all.

    Args:
        instruction: The one-sentence task description; blank means no prompt (plain ST models).

    Returns:
        The prompt to put before every query, or ``""`` for a blank instruction.
    """
    instruction = instruction.strip()
    return f"Instruct: {instruction}\nQuery:" if instruction else ""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as float32 with every row scaled to unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


class SentenceTransformerEmbedder:
    """Embeds texts with a sentence-transformers model, prompting queries and documents separately.

    One class serves every prompt convention: Qwen3-Embedding uses
    ``query_prompt=qwen3_query_prompt(instruction)`` and ``document_prompt=""``; e5 models use
    ``"query: "`` / ``"passage: "``. Pooling (last-token or mean) comes from the model's own saved
    sentence-transformers configuration. Outputs are float32 and L2-normalised; with ``dim`` set they
    are truncated to the first ``dim`` components first (Matryoshka), then renormalised.

    Attributes:
        model_id: What manifests record as the model's identity (``model`` unless overridden).
        model: The hub id or local folder loaded.
        query_prompt: Text put before every query.
        document_prompt: Text put before every document.
        batch_size: Texts per forward pass.
        max_seq_length: Token limit per text (prompt included); longer texts are truncated.
        device: The requested device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        backend: The backend name recorded by :meth:`describe`.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        query_prompt: str = "",
        document_prompt: str = "",
        dim: int | None = None,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        device: str = "auto",
        model_id: str | None = None,
        backend: str = "sentence-transformers",
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Validate the arguments; loads nothing (see :meth:`load`).

        Args:
            model: Hub id (``Qwen/Qwen3-Embedding-4B``) or local folder of a sentence-transformers model.
            query_prompt: Prepended to every query (e.g. ``qwen3_query_prompt(...)`` or ``"query: "``).
            document_prompt: Prepended to every document (``""`` for Qwen3, ``"passage: "`` for e5).
            dim: Matryoshka output dimension; None keeps the model's native dimension.
            batch_size: Texts per forward pass.
            max_seq_length: Token limit per text; None keeps the model's own limit. Capped at the
                model's position limit when larger.
            device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
            model_id: Identity recorded in manifests; defaults to ``str(model)``.
            backend: Backend name recorded by :meth:`describe`.
            local_files_only: Never contact the model hub (the model must be cached or local).
            model_kwargs: Extra keyword arguments for the transformers model (e.g. ``{"dtype": "bfloat16"}``).

        Raises:
            BadInputError: An argument is out of range.
        """
        if not str(model).strip():
            raise BadInputError("model must name a hub id or a local folder")
        if dim is not None and dim < 1:
            raise BadInputError(f"dim must be positive or None, got {dim}")
        if batch_size < 1:
            raise BadInputError(f"batch_size must be positive, got {batch_size}")
        if max_seq_length is not None and max_seq_length < 1:
            raise BadInputError(f"max_seq_length must be positive or None, got {max_seq_length}")
        check_device(device)
        self.model = str(model)
        self.model_id = model_id or self.model
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.device = device
        self.backend = backend
        self._requested_dim = dim
        self._local_files_only = local_files_only
        self._model_kwargs = dict(model_kwargs or {})
        self._st: SentenceTransformer | None = None
        self._native_dim: int | None = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """True once :meth:`load` has succeeded."""
        return self._st is not None

    @property
    def dim(self) -> int:
        """Output dimension (after Matryoshka truncation).

        Raises:
            EmbedderNotLoadedError: Before :meth:`load`.
        """
        if self._dim is None:
            raise EmbedderNotLoadedError(f"embedder {self.model_id!r} is not loaded; call load() first")
        return self._dim

    def load(self) -> None:
        """Load the model onto the device (idempotent, thread-safe).

        Raises:
            NotFoundError: ``model`` is a local path that does not exist.
            MissingDependencyError: sentence-transformers (or torch) is not installed.
            BadInputError: ``dim`` exceeds the model's native dimension.
            BackendError: The model exists but could not be loaded (corrupt, unsupported, hub unreachable).
        """
        with self._lock:
            if self._st is not None:
                return
            st = self._load_model()
            native = st.get_embedding_dimension()
            if native is None:
                raise BackendError(f"model {self.model_id!r} does not report an embedding dimension")
            if self._requested_dim is not None and self._requested_dim > native:
                raise BadInputError(
                    f"embedding dim {self._requested_dim} exceeds the native dimension {native} of {self.model_id!r}"
                )
            self._apply_max_seq_length(st)
            self._native_dim = native
            self._dim = self._requested_dim or native
            self._st = st

    def _load_model(self) -> SentenceTransformer:
        if looks_like_path(self.model) and not Path(self.model).expanduser().is_dir():
            raise NotFoundError(f"embedding model folder not found: {self.model}")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingDependencyError(
                "the sentence-transformers backend needs `pip install sentence-transformers`"
            ) from exc
        device = resolve_device(self.device)
        quiet_model_loading()
        path = str(Path(self.model).expanduser()) if looks_like_path(self.model) else self.model
        try:
            return SentenceTransformer(
                path,
                device=device,
                local_files_only=self._local_files_only,
                model_kwargs=self._model_kwargs or None,
            )
        except (OSError, ValueError, RuntimeError, KeyError, ImportError) as exc:
            raise BackendError(f"could not load embedding model {self.model!r} on {device}: {exc}") from exc

    def _apply_max_seq_length(self, st: SentenceTransformer) -> None:
        if self.max_seq_length is None:
            return
        limit = self.max_seq_length
        config = getattr(getattr(st[0], "model", None), "config", None)
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int) and limit > positions:
            logger.warning(
                "max_seq_length %d exceeds %s's %d positions; using %d", limit, self.model_id, positions, positions
            )
            limit = positions
        st.max_seq_length = limit

    # --- the verbs -------------------------------------------------------------------------------

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Embed user questions with the query prompt.

        Args:
            texts: The questions.

        Returns:
            ``(len(texts), dim)`` float32, rows L2-normalised.

        Raises:
            NotReadyError: Before :meth:`load`.
            BadInputError: An item is not a string.
            BackendError: The model failed (e.g. out of memory).
        """
        return self._embed(texts, self.query_prompt)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed index rows with the document prompt.

        Args:
            texts: The texts to index.

        Returns:
            ``(len(texts), dim)`` float32, rows L2-normalised.

        Raises:
            NotReadyError: Before :meth:`load`.
            BadInputError: An item is not a string.
            BackendError: The model failed (e.g. out of memory).
        """
        return self._embed(texts, self.document_prompt)

    def _encoder_for(self, n_texts: int) -> Any:
        """The model object that embeds a call of ``n_texts`` texts (the loaded model; see E5SmallEmbedder)."""
        return self._st

    def _embed(self, texts: list[str], prompt: str) -> np.ndarray:
        if self._st is None or self._dim is None:
            raise EmbedderNotLoadedError(f"embedder {self.model_id!r} is not loaded; call load() first")
        if not all(isinstance(t, str) for t in texts):
            raise BadInputError("texts must be strings")
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        st = self._encoder_for(len(texts))
        try:
            # prompt="" (not None) so a default prompt saved in the model folder never applies.
            raw = st.encode(
                list(texts),
                prompt=prompt,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(f"embedding with {self.model_id!r} failed: {exc}") from exc
        vectors = np.asarray(raw, dtype=np.float32)
        if self._dim < vectors.shape[1]:
            vectors = vectors[:, : self._dim]
        return l2_normalize(vectors)

    def describe(self) -> dict[str, Any]:
        """What a build manifest records about this embedder.

        Returns:
            ``model_id``, ``backend``, ``dim`` (None until loaded), ``native_dim`` (None until loaded),
            ``query_prompt``, ``document_prompt``, ``max_seq_length`` (the effective limit once loaded),
            ``normalized`` (always True).
        """
        max_len = self._st.max_seq_length if self._st is not None else self.max_seq_length
        return {
            "model_id": self.model_id,
            "backend": self.backend,
            "dim": self._dim,
            "native_dim": self._native_dim,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "max_seq_length": max_len,
            "normalized": True,
        }
