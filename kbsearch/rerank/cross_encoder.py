"""Rerankers backed by sentence-transformers' ``CrossEncoder``: Qwen3-Reranker and generic cross-encoders.

Both backends load through ``sentence_transformers.CrossEncoder`` (v6) and return probabilities in
[0, 1], whatever activation a checkpoint saved, so ``decide.threshold_rerank`` means the same thing
for every model:

* ``Qwen3Reranker`` (``rerank_backend = "qwen3"``): the official Qwen3-Reranker checkpoints are causal
  LMs. ST v6 sees ``*ForCausalLM`` in the config, loads the LM with left padding and only the last
  position's logits, and appends a ``LogitScore`` module whose output is ``logit("yes") - logit("no")``;
  ``sigmoid`` of that difference is exactly the official ``softmax([no, yes])[yes]``. A text pair is
  turned into chat messages (role ``query``, role ``document``; a ``prompt`` becomes a ``system``
  message) and rendered with the tokenizer's chat template, restoring the template's suffix when
  truncation cut it off. We load with our own chat template (``QWEN3_CHAT_TEMPLATE``) that renders
  the official prompt byte for byte with the instruction taken from the system message, so the format
  does not depend on whichever template a checkpoint happens to ship.
* ``CrossEncoderReranker`` (``rerank_backend = "cross-encoder"``): any sequence-classification
  cross-encoder; one label -> ``sigmoid(logit)``, two labels -> ``softmax(logits)[1]``.

Constructors only validate; ``load()`` imports torch and sentence-transformers and loads the weights.
Errors from those libraries are mapped to ``kbsearch.errors`` here.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from kbsearch.config import DEFAULT_QWEN3_RERANK_INSTRUCTION
from kbsearch.errors import BackendError, BadInputError, MissingDependencyError, NotReadyError
from kbsearch.devices import check_device, check_model_path, quiet_model_loading, resolve_device

if TYPE_CHECKING:
    import torch
    from sentence_transformers import CrossEncoder


QWEN3_SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
"""The system prompt Qwen3-Reranker was trained with (model card)."""

QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
"""The model card's instruction when none is given; used only if a render carries no system message."""

_QWEN3_PREFIX = f"<|im_start|>system\n{QWEN3_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
_QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _build_qwen3_chat_template() -> str:
    # One Jinja expression with JSON-quoted literals instead of template text: Jinja drops a template's
    # final newline and the trim/lstrip block options eat whitespace, and the official suffix ends in
    # "\n\n". Contents are concatenated with ``+`` (not ``~``) so a non-string content fails loudly.
    def pick(role: str) -> str:
        return f"messages | selectattr('role', 'eq', '{role}') | map(attribute='content') | first"

    lit = json.dumps
    return (
        "{%- set instruction = " + pick("system") + " | default(" + lit(QWEN3_DEFAULT_INSTRUCTION) + ") -%}"
        "{%- set query = " + pick("query") + " -%}"
        "{%- set document = " + pick("document") + " -%}"
        "{{- " + lit(_QWEN3_PREFIX + "<Instruct>: ") + " + instruction + " + lit("\n<Query>: ") + " + query + "
        + lit("\n<Document>: ") + " + document + " + lit(_QWEN3_SUFFIX) + " -}}"
    )


QWEN3_CHAT_TEMPLATE = _build_qwen3_chat_template()
"""Chat template that renders ST's messages for one pair (``system`` = instruction, ``query``,
``document``) as the official Qwen3-Reranker input, pieces joined with no separator:
``<|im_start|>system\\n{QWEN3_SYSTEM_PROMPT}<|im_end|>\\n<|im_start|>user\\n``, then
``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}``, then
``<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n``.
"""


def _dtype_for(device: str) -> torch.dtype:
    import torch

    # Half precision on GPU (bf16 where supported: same range as fp32, so no logit overflow); fp32 on
    # CPU, also for checkpoints whose config says bf16 (transformers v5 would otherwise keep it).
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class _CrossEncoderBackend:
    """Shared loading, device/dtype choice, batching and error mapping of the CrossEncoder backends.

    Subclasses say which kwargs the ``CrossEncoder`` gets, what a loaded model must look like, which
    ``predict`` kwargs to pass, and how raw scores become probabilities.
    """

    backend: ClassVar[str]

    def __init__(self, model_id: str, *, batch_size: int = 16, max_length: int = 512, device: str = "auto") -> None:
        if not isinstance(model_id, str) or not model_id.strip():
            raise BadInputError("reranker model id/path must be a non-empty string")
        if batch_size < 1:
            raise BadInputError(f"rerank batch_size must be >= 1, got {batch_size}")
        if max_length < 16:
            raise BadInputError(f"rerank max_length must be >= 16 tokens, got {max_length}")
        check_device(device)
        self.model_id = model_id
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._model: CrossEncoder | None = None
        self._resolved_device: str | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether ``load()`` has completed."""
        return self._model is not None

    def load(self) -> None:
        """Load the model onto the configured device (idempotent and thread-safe).

        Raises:
            NotFoundError: ``model_id`` is a local path that does not exist.
            MissingDependencyError: torch / sentence-transformers (or a library they need) is missing.
            BackendError: the library failed to load the model (bad files, Hub unreachable), or CUDA was
                requested but is absent.
            BadInputError: the model loaded but is the wrong kind for this backend.
        """
        with self._lock:
            if self._model is not None:
                return
            check_model_path(self.model_id, "rerank_model")
            try:
                from sentence_transformers import CrossEncoder
            except ImportError as exc:
                raise MissingDependencyError(
                    f"rerank_backend={self.backend!r} needs torch and sentence-transformers: {exc}"
                ) from exc
            device = resolve_device(self.device)
            quiet_model_loading()
            try:
                model = CrossEncoder(
                    self.model_id,
                    device=device,
                    max_length=self.max_length,
                    model_kwargs={"dtype": _dtype_for(device)},
                    **self._load_kwargs(),
                )
            except ImportError as exc:
                raise MissingDependencyError(f"loading reranker {self.model_id!r} needs: {exc}") from exc
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise BackendError(f"could not load reranker model {self.model_id!r}: {exc}") from exc
            self._check_model(model)
            self._model, self._resolved_device = model, device

    def score(self, query: str, docs: list[str]) -> list[float]:
        """Return one probability in [0, 1] per doc, in the order given (``[]`` for no docs).

        Raises:
            NotReadyError: ``load()`` has not run.
            BadInputError: the query or a doc is not a string.
            BackendError: inference failed (out of memory, a broken template, ...).
        """
        model = self._model
        if model is None:
            raise NotReadyError(f"reranker {self.model_id!r} is not loaded; call load() at startup")
        if not isinstance(query, str) or not all(isinstance(doc, str) for doc in docs):
            raise BadInputError("the query and the docs to rerank must be strings")
        if not docs:
            return []
        import torch

        try:
            raw = model.predict(
                [(query, doc) for doc in docs],
                batch_size=self.batch_size,
                activation_fn=torch.nn.Identity(),  # probabilities are computed below, whatever was saved
                convert_to_tensor=True,
                show_progress_bar=False,
                **self._predict_kwargs(),
            )
        # Mapped so the query path sees "reranker down" and falls back to the vector ranking; TypeError
        # is what a chat template fed non-string content raises.
        except (RuntimeError, ValueError, OSError, TypeError) as exc:
            raise BackendError(f"reranker {self.model_id!r} failed: {type(exc).__name__}: {exc}") from exc
        return self._probabilities(raw.float().cpu())

    def describe(self) -> dict[str, Any]:
        """What the manifest/readiness report records: backend, model, limits, device, load state."""
        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "device": self._resolved_device or self.device,
            "loaded": self.loaded,
        }

    # --- hooks ---------------------------------------------------------------------------------
    def _load_kwargs(self) -> dict[str, Any]:
        return {}

    def _check_model(self, model: CrossEncoder) -> None:
        """Raise (``BadInputError`` for the wrong kind of model) when it cannot give this backend's probability."""

    def _predict_kwargs(self) -> dict[str, Any]:
        return {}

    def _probabilities(self, raw: torch.Tensor) -> list[float]:
        raise NotImplementedError


def _logit_score_modules(model: CrossEncoder) -> list[Any]:
    from sentence_transformers.cross_encoder.modules import LogitScore

    return [module for module in model if isinstance(module, LogitScore)]


class Qwen3Reranker(_CrossEncoderBackend):
    """Qwen3-Reranker: P(yes) that the document meets the instruction for the query.

    Args:
        model_id: Hub id or local directory of an official Qwen3-Reranker (causal LM) checkpoint.
        instruction: The ``<Instruct>`` text (``rerank.instruction``); must not be empty.
        batch_size: Pairs per forward pass.
        max_length: Tokens per rendered pair; longer documents are cut, the prompt's tail is kept.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        BadInputError: an argument is out of range or the instruction is empty.
    """

    backend: ClassVar[str] = "qwen3"

    def __init__(
        self,
        model_id: str,
        instruction: str = DEFAULT_QWEN3_RERANK_INSTRUCTION,
        *,
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "auto",
    ) -> None:
        super().__init__(model_id, batch_size=batch_size, max_length=max_length, device=device)
        # ST only adds the system message for a non-empty prompt; an empty one would silently fall
        # back to the model card's web-search instruction.
        if not instruction or not instruction.strip():
            raise BadInputError("the Qwen3 rerank instruction must not be empty (rerank.instruction)")
        self.instruction = instruction

    def describe(self) -> dict[str, Any]:
        """Base fields plus the instruction, the prompt format and what the score means."""
        return super().describe() | {
            "instruction": self.instruction,
            "format": "qwen3-reranker-official",
            "score": "P(yes) = sigmoid(logit(yes) - logit(no))",
        }

    def _load_kwargs(self) -> dict[str, Any]:
        return {"processor_kwargs": {"chat_template": QWEN3_CHAT_TEMPLATE}}

    def _check_model(self, model: CrossEncoder) -> None:
        logit_scores = _logit_score_modules(model)
        if model.num_labels != 1 or (logit_scores and logit_scores[-1].false_token_id is None):
            raise BadInputError(
                f"{self.model_id!r} does not score yes-vs-no; rerank_backend='qwen3' needs a Qwen3-Reranker "
                "checkpoint (causal LM with 'yes'/'no' tokens)"
            )
        if getattr(model.tokenizer, "chat_template", None) != QWEN3_CHAT_TEMPLATE:
            raise BackendError(f"{self.model_id!r}: the Qwen3 reranker chat template was not applied on load")

    def _predict_kwargs(self) -> dict[str, Any]:
        return {"prompt": self.instruction}  # rendered as the system message -> <Instruct>

    def _probabilities(self, raw: torch.Tensor) -> list[float]:
        import torch

        return torch.sigmoid(raw).tolist()


class CrossEncoderReranker(_CrossEncoderBackend):
    """Any sequence-classification cross-encoder, scored as a probability.

    One output label: ``sigmoid(logit)``. Two labels: ``softmax(logits)[1]`` (label 1 = relevant).
    The activation a checkpoint saved (e.g. ``Identity`` for ms-marco models) is ignored on purpose.

    Args:
        model_id: Hub id or local directory of the cross-encoder.
        batch_size: Pairs per forward pass.
        max_length: Tokens per (query, doc) pair; longer pairs are truncated.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        BadInputError: an argument is out of range.
    """

    backend: ClassVar[str] = "cross-encoder"

    def describe(self) -> dict[str, Any]:
        """Base fields plus the label count (None before ``load()``) and what the score means."""
        num_labels = self._model.num_labels if self._model is not None else None
        return super().describe() | {
            "num_labels": num_labels,
            "score": {None: None, 1: "sigmoid(logit)", 2: "softmax(logits)[1]"}[num_labels],
        }

    def _check_model(self, model: CrossEncoder) -> None:
        if _logit_score_modules(model):
            raise BadInputError(
                f"{self.model_id!r} is a causal-LM reranker; use rerank_backend='qwen3' for Qwen3-Reranker"
            )
        if model.num_labels not in (1, 2):
            raise BadInputError(
                f"{self.model_id!r} has {model.num_labels} output labels; a reranker needs 1 (relevance "
                "logit) or 2 (irrelevant, relevant)"
            )

    def _probabilities(self, raw: torch.Tensor) -> list[float]:
        import torch

        if raw.ndim == 1:
            return torch.sigmoid(raw).tolist()
        return torch.softmax(raw, dim=-1)[:, 1].tolist()
