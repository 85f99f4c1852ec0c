"""The loaded active build of each KB, reloaded when its ``ACTIVE`` pointer moves.

A new build that is corrupt is remembered and not re-read on every question while the previous one keeps
serving. A build embedded with another model, dimension or prompts than the service's has its vector
index refused (cause ``model-mismatch``): it is served from BM25 until ``kbsearch rebuild-index``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from kbsearch.codes import FallbackCause
from kbsearch.config import kb_dir as _kb_dir
from kbsearch.embed.base import Embedder
from kbsearch.errors import IndexCorruptError, NotFoundError
from kbsearch.index.builder import embedder_differences
from kbsearch.index.store import Build, active_build_id, load_build

log = logging.getLogger(__name__)


class BuildCache:
    """Active builds by KB name.

    Args:
        home: The directory holding every KB.
        embedder: The service's embedder; its ``describe()`` is compared with each build's.
        device: Where vector indexes are loaded (``auto`` = the GPU when one is present).
    """

    def __init__(self, home: Path, embedder: Embedder, device: str = "auto") -> None:
        self.home, self.embedder, self.device = Path(home), embedder, device
        self.embedder_ready = False  # set once the embedder has loaded: only then can a build be checked
        self._builds: dict[str, Build] = {}
        self._dirs: dict[str, Path] = {}
        self._failed: dict[str, str] = {}  # kb -> id of an active build that failed to load
        self._lock = threading.Lock()

    def kb_dir(self, kb: str) -> Path:
        """The KB's directory (the name is validated once, then remembered)."""
        path = self._dirs.get(kb)
        if path is None:
            path = self._dirs.setdefault(kb, _kb_dir(self.home, kb)) if len(self._dirs) < 10_000 else _kb_dir(self.home, kb)
        return path

    def loaded(self) -> dict[str, Build]:
        """The builds loaded so far, by KB."""
        return dict(self._builds)

    def get(self, kb: str) -> Build:
        """The loaded active build of ``kb``, reloaded when ACTIVE has moved.

        Raises:
            NotFoundError: the KB does not exist or has no active build.
            IndexCorruptError: the active build is unreadable and no earlier build is loaded.
        """
        kb_dir = self.kb_dir(kb)
        active = active_build_id(kb_dir)
        if active is None:
            raise NotFoundError(f"unknown knowledge base {kb!r}")
        current = self._builds.get(kb)
        if current is not None and (current.build_id == active or self._failed.get(kb) == active):
            return current
        with self._lock:
            current = self._builds.get(kb)
            if current is not None and (current.build_id == active or self._failed.get(kb) == active):
                return current
            try:
                fresh = load_build(kb_dir, active, device=self.device)
            except IndexCorruptError:
                if current is not None:
                    # Remembered, so a broken build is not re-read (and re-hashed) on every question.
                    self._failed[kb] = active
                    log.exception("new build %s of %r is corrupt; still serving %s", active, kb, current.build_id)
                    return current
                raise
            self._check_embedder(fresh)
            self._failed.pop(kb, None)
            self._builds[kb] = fresh
            return fresh

    def _check_embedder(self, build: Build) -> None:
        """Refuse the vector index of a build made with another model, dimension or prompts.

        Query vectors from a different model land in another space: the search would return confident
        nonsense, or fail on the dimension.
        """
        if not self.embedder_ready or build.vectors is None:
            return
        built, serving = build.manifest.embedder, self.embedder.describe()
        diff = embedder_differences(built, serving)
        if diff:
            detail = ", ".join(f"{k} {b!r} (build) != {v!r} (service)" for k, (b, v) in diff.items())
            build.vectors = None
            build.vector_cause = FallbackCause.MODEL_MISMATCH
            build.vector_error = f"build {build.build_id} was embedded differently: {detail}; run `kbsearch rebuild-index`"
            log.error(build.vector_error)
