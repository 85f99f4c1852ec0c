"""The ``Reranker`` interface every second-stage model implements, and the ``RerankPlan`` the query path follows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kbsearch.config import RerankDoc


@runtime_checkable
class Reranker(Protocol):
    """Scores how well each candidate text answers a question.

    Scores are probabilities in [0, 1] (Qwen3: P(yes); cross-encoders: their sigmoid/softmax output),
    compared with ``DecideSettings.threshold_rerank`` when the rerank score decides. Each KB's own
    trained model is a ``CrossEncoderReranker`` like any other.
    """

    model_id: str

    def load(self) -> None:
        """Load the model (idempotent)."""
        ...

    def score(self, query: str, docs: list[str]) -> list[float]:
        """Return one probability per doc, in the order given.

        Raises:
            BackendError: inference failed.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """What the readiness report records about this reranker."""
        ...


@dataclass(frozen=True)
class RerankPlan:
    """Which reranker runs for one KB, reading what, with which weight, or none and why.

    Attributes:
        reranker: The model (None: the stage is skipped for this KB).
        doc: What it reads per candidate (``kbsearch.rerank.text``).
        weight: Blend weight with the first stage; 1.0 = the reranker's order alone, and its score decides.
            Below 1 it only reorders the window and the first-stage score still decides.
        why: ``ok``, or why no reranker runs.
        label: How notes name it (``reranker``, ``KB reranker``).
        model_id: What a calibration records as the reranker (``none`` when none runs).
    """

    reranker: Reranker | None
    doc: RerankDoc = "faq"
    weight: float = 1.0
    why: str = "ok"
    label: str = "reranker"
    model_id: str = "none"


@dataclass(frozen=True)
class RerankState:
    """What serves a KB's second stage, for readiness and the build-info metric.

    Attributes:
        on: Whether a reranker runs for the KB.
        model: The model (a KB reranker's folder) or ``none``.
        weight: Its blend weight (None when off).
        why: ``ok`` or why none runs.
    """

    on: bool
    model: str
    weight: float | None
    why: str

    def __str__(self) -> str:
        return f"ok: {self.model} (blend weight {self.weight})" if self.on else self.why


class RerankPlanner(Protocol):
    """Decides, per KB, which reranker runs with which blend weight (or none, and why).

    Attributes:
        model_id: The configured backend as calibrations and eval name it (``none``, ``kb``, a model id).
        enabled: False when no KB can get a reranker (``rerank.backend = none``).
    """

    model_id: str
    enabled: bool

    def load(self) -> None:
        """Load what is shared by every KB (idempotent).

        Raises:
            KbsearchError: the model failed to load (the query path then serves without it and says why).
        """
        ...

    def plan(self, kb_dir: Path, build: Any = None) -> RerankPlan:
        """The plan for the KB stored in ``kb_dir`` serving ``build`` (a KB's own model loads on its first
        plan, and serves only a build it covers; None: not checked against a build).

        Raises:
            BackendError: the KB's model failed to load.
        """
        ...

    def forced(self) -> RerankPlanner:
        """The same planner using a KB's own model even where its self-check switched it off (eval)."""
        ...

    def describe(self, kb_dir: Path, build: Any = None) -> RerankState | None:
        """Which model serves the KB (serving ``build``, as in ``plan``) with which weight, or why none does;
        None when that is not per KB.

        Cheap (no model loads): readiness and the build-info metric call it.
        """
        ...
