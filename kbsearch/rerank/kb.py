"""``rerank.backend = "kb"``: each knowledge base's own reranker, as serving sees it.

A KB's cross-encoder is trained from its variants and self-checked by ``kbsearch train-reranker``
(``kbsearch.finetune.kb``), which ingest, a rebuild, a review publish and ``kbsearch serve`` start in
the background when the KB's model does not cover its build (``request_training``). On disk, beside
the KB's builds::

    <kb>/rerankers/ACTIVE          the key of the model in use
    <kb>/rerankers/SKIP            why the KB has none (no variants, training failed), when it has none
    <kb>/rerankers/TRAINING        who is training it now, for which build (while a training runs)
    <kb>/rerankers/<key>/          the model folder: its card (``card.CARD``) holding the self-check, and
                                   ``FAQS``: a digest of each FAQ's question and variants it trained on

**A model covers a build** when at most ``kb_reranker.retrain_share`` of the FAQs differ between the
two (added, removed, or with another question or variants): a few edits keep the model, and a build
that changed more is served by its first stage until a model trained on it is in place. Whether a
model serves a build is decided from the two alone, at every question, so no moment pairs a new build
with a model trained for something else, whatever order the files were written in or where a writer
was killed.

``KbRerankPlanner`` reads that per KB (one stat per question; re-read when the folder changes or the
build does) and plans the KB's model with the blend weight its self-check chose, or no reranker when
the check did not pass or the model does not cover the build, and says why. The model itself is a
``CrossEncoderReranker`` like any other backend.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kbsearch.config import RerankDoc, RerankSettings, Settings
from kbsearch.errors import BackendError, KbsearchError
from kbsearch.index.store import load_entries
from kbsearch.rerank.base import RerankPlan, RerankState
from kbsearch.rerank.card import read_card
from kbsearch.rerank.cross_encoder import CrossEncoderReranker
from kbsearch.types import FaqEntry

log = logging.getLogger(__name__)

RERANKERS = "rerankers"
"""Folder of a KB's trained rerankers, beside its builds."""

ACTIVE = "ACTIVE"
"""File in ``RERANKERS`` naming the key of the reranker in use."""

SKIP = "SKIP"
"""File in ``RERANKERS`` saying why the KB has no reranker in use (e.g. no variants)."""

TRAINING = "TRAINING"
"""File in ``RERANKERS`` saying who trains the KB's model now (JSON: pid, build, since), while it runs."""

FAQS = "faqs.json"
"""File in a model folder: the build it trained on and ``faq_digests`` of that build's entries."""

TRAIN_LOG = "train.log"
"""File in ``RERANKERS``: what background trainings printed."""

KB_RERANKER_DOC: RerankDoc = "question"
"""What a KB reranker reads per candidate: the matched question or variant, as it trained."""

MIN_VARIANTS = 40
"""Fewer variants than this: no KB reranker (20 held out for the check, the rest to train on)."""


def faq_digests(entries: Iterable[FaqEntry]) -> dict[str, str]:
    """FAQ id -> a digest of what a KB reranker learns from it (its question and variants)."""
    return {e.id: hashlib.blake2b(json.dumps([e.question, *e.variants], ensure_ascii=False).encode("utf-8"),
                                  digest_size=8).hexdigest() for e in entries}


def changed_faqs(trained: dict[str, str], serving: dict[str, str]) -> int:
    """How many FAQs differ between two ``faq_digests``: added, removed, or with another question or variants."""
    return len(trained.keys() ^ serving.keys()) + sum(trained[k] != serving[k] for k in trained.keys() & serving.keys())


def covers(model: Path, digests: dict[str, str], retrain_share: float) -> tuple[bool, str]:
    """Whether the model folder ``model`` covers a build with ``digests`` (module docstring), and why."""
    try:
        data = json.loads((model / FAQS).read_text(encoding="utf-8"))
        trained, build = dict(data["faqs"]), str(data["build"])
    except FileNotFoundError:  # trained before coverage was recorded: it served whatever build was active
        return True, "trained before coverage was recorded"
    except (ValueError, KeyError, TypeError):
        return False, "its record of the FAQs it trained on is unreadable"
    changed, total = changed_faqs(trained, digests), max(len(trained), len(digests), 1)
    if changed <= retrain_share * total:
        return True, f"trained on build {build}; {changed} of {total} FAQs changed since"
    return False, (f"trained on build {build}; {changed} of {total} FAQs changed since (more than "
                   f"kb_reranker.retrain_share {retrain_share}), so it waits for a model trained on this build")


def training_now(folder: Path) -> str | None:
    """Who trains the KB's model now (from ``TRAINING``), or None when nobody does."""
    try:
        data = json.loads((folder / TRAINING).read_text(encoding="utf-8"))
        pid, build, since = int(data["pid"]), data.get("build"), data.get("since")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no such process: a killed trainer's note
        return None
    if state in ("Z", "X"):  # dead, not yet reaped
        return None
    return f"training for build {build} since {since} (pid {pid})"


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


def trained_kb_reranker(kb_dir: Path) -> tuple[Path | None, str]:
    """The folder ``ACTIVE`` names when it holds a complete model (used or not), or None and why not."""
    folder = Path(kb_dir) / RERANKERS
    try:
        key = (folder / ACTIVE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        try:
            return None, (folder / SKIP).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None, "no KB reranker trained yet (kbsearch train-reranker trains one when the KB has variants)"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", key):
        return None, "KB reranker off: its ACTIVE pointer is not a model key"
    if _self_check(folder / key) is None:
        return None, f"KB reranker {key} is incomplete or damaged (no readable model card)"
    return folder / key, "ok"


def active_kb_reranker(kb_dir: Path, *, force: bool = False, digests: Callable[[], dict[str, str]] | None = None,
                       retrain_share: float = 0.0) -> tuple[Path | None, str]:
    """The folder of ``kb_dir``'s reranker in use, or None and why there is none (never raises for bad files).

    ``force`` returns the trained model even when its self-check said not to use it (evaluation).
    ``digests`` (giving ``faq_digests`` of the build served; called only when a model exists) also
    requires the model to cover that build.
    """
    path, why = trained_kb_reranker(kb_dir)
    if path is None:
        now = training_now(Path(kb_dir) / RERANKERS)
        return None, why + (f"; {now}" if now else "")
    if digests is not None:
        covered, how = covers(path, digests(), retrain_share)
        if not covered:
            now = training_now(path.parent)
            return None, f"KB reranker off: {how}" + (f"; {now}" if now else "")
    check = _self_check(path) or {}
    if not check.get("use", False) and not force:
        return None, f"KB reranker off: {check.get('reason', 'its self-check did not pass')}"
    return path, "ok"


def request_training(settings: Settings, kb: str, entries: Iterable[FaqEntry] | None = None) -> str | None:
    """Start ``kbsearch train-reranker`` for ``kb`` in the background when its model may not cover the build.

    No start when the active model covers the active build's entries (``entries``, when the caller has
    them at hand) or they hold fewer than ``MIN_VARIANTS`` variants and that was recorded. The
    trainer runs in its own session at a lower CPU priority, logs to ``rerankers/train.log``, waits
    for one already training the KB, and trains only what is not covered by then. Off unless the KB
    reranker backend is configured with ``kb_reranker.auto_train``. Returns what was started, or None.
    """
    knobs = settings.kb_reranker
    if settings.rerank.backend != "kb" or not knobs.auto_train or knobs.max_variants == 0:
        return None
    kb_dir = settings.kb_dir(kb)
    if entries is None:
        try:
            entries = load_entries(kb_dir)
        except KbsearchError:  # no readable build: the trainer says why
            entries = None
    if entries is not None:
        entries = list(entries)
        if sum(len(e.variants) for e in entries) < MIN_VARIANTS and (kb_dir / RERANKERS / SKIP).exists():
            return None
        path, _ = trained_kb_reranker(kb_dir)
        if path is not None and covers(path, faq_digests(entries), knobs.retrain_share)[0]:
            return None
    folder = kb_dir / RERANKERS
    folder.mkdir(parents=True, exist_ok=True)
    logfile = folder / TRAIN_LOG
    if logfile.exists() and logfile.stat().st_size > 1_000_000:  # keep the newest runs' lines only
        logfile.unlink(missing_ok=True)
    with open(logfile, "a", encoding="utf-8") as out:
        out.write(f"--- {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} started for kb {kb!r}\n")
        out.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "kbsearch.cli", "--home", str(settings.home), "train-reranker", "--kb", kb,
             "--background"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    log.info("KB reranker training for %r started in the background (pid %s)", kb, proc.pid)
    return f"the KB reranker of {kb!r} trains in the background (pid {proc.pid}, log {RERANKERS}/{TRAIN_LOG})"


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
                 retrain_share: float = 0.0, _models: _Models | None = None) -> None:
        self.force = force
        self.model_id = "kb (forced)" if force else "kb"
        self.retrain_share = retrain_share
        self._models = _models or _Models(settings, max_length, device)
        self._args = (settings, max_length, device)
        # kb dir -> (folder mtime, build id, (path, why), weight); and the digests of each KB's build served
        self._resolved: dict[Path, tuple[int, str | None, tuple[Path | None, str], float]] = {}
        self._digests: dict[Path, tuple[str, dict[str, str]]] = {}

    def load(self) -> None:
        """Nothing to load up front: each KB's model loads on its first question."""

    def _build_digests(self, kb_dir: Path, build: Any) -> dict[str, str]:
        """``faq_digests`` of the build served for ``kb_dir``, computed once per build."""
        cached = self._digests.get(kb_dir)
        if cached is None or cached[0] != build.build_id:
            cached = (build.build_id, faq_digests(build.entries.values()))
            self._digests[kb_dir] = cached
        return cached[1]

    def _resolve(self, kb_dir: Path, build: Any) -> tuple[Path | None, str, float]:
        """``active_kb_reranker`` for ``build`` (None: coverage not checked) and the blend weight, re-read
        only when the rerankers folder changes (training switches models by replacing files in it) or
        the build does: one stat per question."""
        try:
            mtime = (Path(kb_dir) / RERANKERS).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        build_id = build.build_id if build is not None else None
        cached = self._resolved.get(kb_dir)
        if cached is None or cached[0] != mtime or cached[1] != build_id:
            digests = (lambda: self._build_digests(kb_dir, build)) if build is not None else None
            path, why = active_kb_reranker(kb_dir, force=self.force, digests=digests, retrain_share=self.retrain_share)
            cached = (mtime, build_id, (path, why), kb_reranker_weight(path) if path is not None else 0.0)
            self._resolved[kb_dir] = cached
        (path, why), weight = cached[2], cached[3]
        return path, why, weight

    def plan(self, kb_dir: Path, build: Any = None) -> RerankPlan:
        """The KB's model with its self-check's weight, or none and why (``build``: the build served, which
        the model must cover; None skips that check).

        Raises:
            BackendError: the KB's model failed to load.
        """
        path, why, weight = self._resolve(kb_dir, build)
        if path is None:
            return RerankPlan(None, KB_RERANKER_DOC, 0.0, why, "KB reranker", "none")
        return RerankPlan(self._models.get(path), KB_RERANKER_DOC, weight, "ok", "KB reranker", self.model_id)

    def forced(self) -> KbRerankPlanner:
        """This planner ignoring the self-checks, sharing the loaded models."""
        return KbRerankPlanner(*self._args, force=True, retrain_share=self.retrain_share, _models=self._models)

    def describe(self, kb_dir: Path, build: Any = None) -> RerankState:
        """The KB's model folder and weight, or why the KB has no reranker (``build`` as in ``plan``)."""
        path, why, weight = self._resolve(kb_dir, build)
        return (RerankState(True, f"{RERANKERS}/{path.name}", weight, "ok") if path is not None
                else RerankState(False, "none", None, why))
