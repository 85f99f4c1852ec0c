"""Where models run and where they come from: one place for the rules both model backends share.

``device`` settings are ``auto`` (CUDA when torch sees one), ``cpu``, ``cuda`` or ``cuda:N``. Model
names are hub ids (``name`` or ``org/name``) or local paths; a path that does not exist is reported
before any hub lookup (which would otherwise retry for a long time on an offline machine).
"""

from __future__ import annotations

import re
from pathlib import Path

from kbsearch.errors import BackendError, BadInputError, MissingDependencyError, NotFoundError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str) -> None:
    """Raise ``BadInputError`` unless ``device`` is auto, cpu, cuda or cuda:N."""
    if not DEVICE_RE.match(device):
        raise BadInputError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def resolve_device(device: str) -> str:
    """Turn the ``device`` setting into a torch device string.

    Returns:
        ``cuda`` for ``auto`` when torch sees a CUDA device, ``cpu`` for ``auto`` without one, else
        ``device`` unchanged.

    Raises:
        BadInputError: ``device`` is none of the accepted forms.
        BackendError: CUDA was asked for explicitly but torch sees none (torch itself would raise a
            bare AssertionError later).
        MissingDependencyError: torch is not installed.
    """
    check_device(device)
    if device == "cpu":
        return device
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard dependency
        raise MissingDependencyError("torch is required for model backends") from exc
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise BackendError(f"device {device!r} requested, but torch sees no CUDA device")
    return device


def looks_like_path(model: str) -> bool:
    """True when ``model`` can only be a local path (absolute, ``./``, ``~``, deeper than org/name)."""
    return (
        model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or "\\" in model
        or Path(model).expanduser().exists()
    )


def check_model_path(model: str, setting: str) -> None:
    """Raise ``NotFoundError`` naming ``setting`` when ``model`` is a local path that does not exist."""
    if looks_like_path(model) and not Path(model).expanduser().exists():
        raise NotFoundError(f"model path {model!r} does not exist (Settings.{setting})")


def quiet_model_loading() -> None:
    """Silence transformers' per-load "Loading weights" progress bar (it floods service logs)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        return
    hf_logging.disable_progress_bar()
