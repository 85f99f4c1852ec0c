"""``rerank.backend = "kb"``: each knowledge base's own reranker, as serving sees it.

``kbsearch ingest`` trains a KB's cross-encoder from its variants and self-checks it
(``kbsearch.finetune.kb``). On disk, beside the KB's builds::

    <kb>/rerankers/ACTIVE          the key of the model in use
    <kb>/rerankers/SKIP            why the KB has none (no variants, training failed), when it has none
    <kb>/rerankers/<key>/          the model folder, its card (``card.CARD``) holding the self-check

``KbRerankPlanner`` reads that per KB (one stat per question; re-read when the folder changes) and plans
the KB's model with the blend weight its self-check chose, or no reranker when the check did not pass,
and says why. The model itself is a ``CrossEncoderReranker`` like any other backend.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from kbsearch.config import RerankDoc, RerankSettings
from kbsearch.errors import BackendError, KbsearchError
from kbsearch.rerank.base import RerankPlan, RerankState
from kbsearch.rerank.card import read_card
from kbsearch.rerank.cross_encoder import CrossEncoderReranker

RERANKERS = "rerankers"
"""Folder of a KB's trained rerankers, beside its builds."""

ACTIVE = "ACTIVE"
"""File in ``RERANKERS`` naming the key of the reranker in use."""

SKIP = "SKIP"
"""File in ``RERANKERS`` saying why the KB has no reranker in use (e.g. no variants)."""

KB_RERANKER_DOC: RerankDoc = "question"
"""What a KB reranker reads per candidate: the matched question or variant, as it trained."""


def _self_check(path: Path) -> dict[str, Any] | None:
    """The self-check on a model folder's card (``{}`` when it has none); None when the card is missing or unreadable."""
    card = read_card(path)
    if card is None:
        return None
    check = card.get("self_check")
    return check if isinstance(check, dict) else {}


def kb_reranker_weight(path: Path) -> float:
    """The blend weight a KB reranker's self-check chose (1.0 for a card from before blending, or a bad value)."""
    weight = (_self_check(path) or {}).get("weight", 1.0)
    return float(weight) if isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0 else 1.0


def active_kb_reranker(kb_dir: Path, *, force: bool = False) -> tuple[Path | None, str]:
    """The folder of ``kb_dir``'s reranker in use, or None and why there is none (never raises for bad files).

    ``force`` returns the trained model even when its self-check said not to use it (evaluation).
    """
    folder = Path(kb_dir) / RERANKERS
    try:
        key = (folder / ACTIVE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        try:
            return None, (folder / SKIP).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None, "no KB reranker trained yet (kbsearch ingest trains one when the KB has variants)"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", key):
        return None, "KB reranker off: its ACTIVE pointer is not a model key"
    check = _self_check(folder / key)
    if check is None:
        return None, f"KB reranker {key} is incomplete or damaged (no readable model card)"
    if not check.get("use", False) and not force:
        return None, f"KB reranker off: {check.get('reason', 'its self-check did not pass')}"
    return folder / key, "ok"


class _Models:
    """Loaded KB models by folder, shared by a planner and its forced twin."""

    def __init__(self, settings: RerankSettings, max_length: int, device: str) -> None:
        self.settings, self.max_length, self.device = settings, max_length, device
        self.loaded: dict[Path, CrossEncoderReranker] = {}
        self.lock = threading.Lock()

    def get(self, path: Path) -> CrossEncoderReranker:
        model = self.loaded.get(path)
        if model is None:
            with self.lock:
                model = self.loaded.get(path)
                if model is None:
                    model = CrossEncoderReranker(str(path), batch_size=self.settings.batch_size,
                                                 max_length=self.max_length, device=self.device)
                    try:
                        model.load()
                    except KbsearchError as exc:  # a broken folder is this KB's backend failure, not bad input
                        raise BackendError(f"KB reranker {path.name} failed to load: {exc}") from exc
                    self.loaded[path] = model
        return model


class KbRerankPlanner:
    """Plans each KB's own reranker (see the module docstring).

    Args:
        settings: The ``rerank`` group (batch size).
        max_length: Tokens per pair, as the KB rerankers trained (``kb_reranker.max_length``).
        device: Where the models run.
        force: Use a KB's model even where its self-check switched it off (``forced()``).
    """

    enabled = True

    def __init__(self, settings: RerankSettings, max_length: int, device: str = "auto", *, force: bool = False,
                 _models: _Models | None = None) -> None:
        self.force = force
        self.model_id = "kb (forced)" if force else "kb"
        self._models = _models or _Models(settings, max_length, device)
        self._args = (settings, max_length, device)
        self._resolved: dict[Path, tuple[int, tuple[Path | None, str], float]] = {}  # kb dir -> (mtime, answer, weight)

    def load(self) -> None:
        """Nothing to load up front: each KB's model loads on its first question."""

    def _resolve(self, kb_dir: Path) -> tuple[Path | None, str, float]:
        """``active_kb_reranker`` and the blend weight, re-read only when the rerankers folder changes
        (training switches models by replacing files in it): one stat per question."""
        try:
            mtime = (Path(kb_dir) / RERANKERS).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        cached = self._resolved.get(kb_dir)
        if cached is None or cached[0] != mtime:
            path, why = active_kb_reranker(kb_dir, force=self.force)
            cached = (mtime, (path, why), kb_reranker_weight(path) if path is not None else 0.0)
            self._resolved[kb_dir] = cached
        (path, why), weight = cached[1], cached[2]
        return path, why, weight

    def plan(self, kb_dir: Path) -> RerankPlan:
        """The KB's model with its self-check's weight, or none and why.

        Raises:
            BackendError: the KB's model failed to load.
        """
        path, why, weight = self._resolve(kb_dir)
        if path is None:
            return RerankPlan(None, KB_RERANKER_DOC, 0.0, why, "KB reranker", "none")
        return RerankPlan(self._models.get(path), KB_RERANKER_DOC, weight, "ok", "KB reranker", self.model_id)

    def forced(self) -> KbRerankPlanner:
        """This planner ignoring the self-checks, sharing the loaded models."""
        return KbRerankPlanner(*self._args, force=True, _models=self._models)

    def describe(self, kb_dir: Path) -> RerankState:
        """The KB's model folder and weight, or why the KB has no reranker."""
        path, why, weight = self._resolve(kb_dir)
        return (RerankState(True, f"{RERANKERS}/{path.name}", weight, "ok") if path is not None
                else RerankState(False, "none", None, why))
