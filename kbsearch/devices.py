"""Where models run and where they come from: one place for the rules both model backends share.

``device`` settings are ``auto`` (CUDA when torch sees one), ``cpu``, ``cuda`` or ``cuda:N``. Model
names are hub ids (``name`` or ``org/name``) or local paths; a path that does not exist is reported
before any hub lookup (which would otherwise retry for a long time on an offline machine). How many
CPU threads torch gives each model call is set once per process (:func:`configure_torch_threads`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from kbsearch.errors import BackendError, BadInputError, MissingDependencyError, NotFoundError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

logger = logging.getLogger(__name__)


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
    if device == "cpu" or (device == "auto" and "torch" not in sys.modules and not _gpu_driver_present()):
        return "cpu"
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard dependency
        raise MissingDependencyError("torch is required for model backends") from exc
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise BackendError(f"device {device!r} requested, but torch sees no CUDA device")
    return device


_GPU_DRIVER_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def _gpu_driver_present() -> bool:
    """False only where torch cannot see a GPU: Linux without an NVIDIA, AMD (ROCm) or WSL GPU driver's
    device nodes. Lets ``auto`` resolve to the CPU without importing torch (3.5 s of a server's start)."""
    return sys.platform != "linux" or any(os.path.exists(p) for p in _GPU_DRIVER_NODES)


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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def torch_threads_for(setting: int, cpus: int | None = None) -> int:
    """The thread count the ``torch_threads`` setting means on this machine.

    Args:
        setting: ``Settings.torch_threads``: a positive count is used as is; 0 means auto.
        cpus: Usable CPUs; defaults to :func:`usable_cpus`.

    Returns:
        ``setting`` when positive; for auto, every usable CPU. The service's embedding model runs on one
        thread, one batch at a time (``kbsearch.retrieve.batching``), so its calls never overlap: on 2
        cores (``bench/batching.py``, unionpay_faq, e5-small, no reranker) 2 threads answered 62.6
        questions/s at one client (p50 15.4 ms) and 113 at 16, against 40.1 (24.8 ms) and 84 with 1 thread. A KB
        reranker's calls do overlap (one per question in flight); ``bench/threads.py`` measured 1
        thread 12% ahead at 4 rerank-heavy questions at once, 2 threads ahead for a lone one.
    """
    if setting > 0:
        return setting
    return cpus or usable_cpus()


def configure_torch_threads(threads: int) -> None:
    """Give torch ``threads`` intra-op threads and as many inter-op threads, for the whole process.

    Call it once, before any model loads or runs: a thread that has already run a torch operation keeps
    the intra-op count it started with, and the inter-op pool can be sized only before its first use
    (torch raises ``RuntimeError`` after that; the size already in place is kept, with a warning when it
    differs). Environment variables (``OMP_NUM_THREADS``) are left alone, so child processes such as
    the background reranker training keep torch's default of one thread per core.

    torch is not imported for this: when it is not imported yet, the count is applied the moment
    something first imports it (an import hook), before any of its operations can run. A server whose
    models all run on ONNX Runtime (the CPU default) then never imports torch at start (about 3.5 s
    and 200 MB on 2 cores), and one that loads a torch model later still gets the configured threads.

    Args:
        threads: A positive count (see :func:`torch_threads_for`).

    Raises:
        BadInputError: ``threads`` is not positive.
    """
    if threads < 1:
        raise BadInputError(f"torch threads must be positive, got {threads}")
    if "torch" in sys.modules:
        _apply_torch_threads(sys.modules["torch"], threads)
        return
    for finder in [f for f in sys.meta_path if isinstance(f, _OnTorchImport)]:
        sys.meta_path.remove(finder)
    sys.meta_path.insert(0, _OnTorchImport(threads))


class _OnTorchImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first ``import torch`` it wraps torch's own loader so that the thread
    counts are applied right after torch's ``__init__`` ran, then steps out of ``sys.meta_path``."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "torch":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        load, threads = spec.loader.exec_module, self.threads

        def exec_module(module: ModuleType) -> None:
            load(module)
            _apply_torch_threads(module, threads)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _apply_torch_threads(torch: Any, threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        if torch.get_num_interop_threads() != threads:
            logger.warning("torch's inter-op pool was already in use with %d threads; keeping it (wanted %d)",
                           torch.get_num_interop_threads(), threads)
    logger.info("torch: %d intra-op and %d inter-op threads", torch.get_num_threads(), torch.get_num_interop_threads())
