"""The build serving each KB: its active build, reloaded when the ``ACTIVE`` pointer moves.

Bad state on disk never takes a KB down. A build the cache holds keeps serving when ``ACTIVE`` is
deleted, emptied or garbled, or names a build that does not load (remembered, so a broken build is not
re-read on every question). With nothing held yet (a server starting), an active build that does not load
is replaced by the newest build on disk that does. Either way ``problems()`` says why the KB is not served
from the build ``ACTIVE`` names, without file-system paths: it reaches ``/readyz`` and ``/metrics``.

A build "does not load" when its manifest or entry data is missing, malformed or fails its checksums, or
when neither its vector index nor its BM25 index loads (it could only answer with the canned hand-off). A
build with one index left still serves, degraded. A build embedded with another model, dimension or prompts
than the service's has its vector index refused (cause ``model-mismatch``): it is served from BM25 until
``kbsearch rebuild-index``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from kbsearch.codes import FallbackCause
from kbsearch.config import kb_dir as _kb_dir
from kbsearch.embed.base import Embedder
from kbsearch.errors import IndexCorruptError, KbsearchError, NotFoundError
from kbsearch.index.builder import embedder_differences
from kbsearch.index.factory import SERVER_BACKENDS, load_vector_index
from kbsearch.index.store import Build, active_build_id, build_ids, load_build

log = logging.getLogger(__name__)


class BuildCache:
    """The build serving each KB, by KB name.

    Args:
        home: The directory holding every KB.
        embedder: The service's embedder; its ``describe()`` is compared with each build's.
        device: Where vector indexes are loaded (``auto`` = the GPU when one is present).
        milvus_token: The Milvus server's token, for builds whose vectors live there.
    """

    def __init__(self, home: Path, embedder: Embedder, device: str = "auto", milvus_token: str = "") -> None:
        self.home, self.embedder, self.device = Path(home), embedder, device
        self._milvus_token = milvus_token
        self.embedder_ready = False  # set once the embedder has loaded: only then can a build be checked
        self._builds: dict[str, Build] = {}
        self._dirs: dict[str, Path] = {}
        self._failed: dict[str, str | None] = {}  # kb -> the active build id that did not load (None: a bad pointer)
        self._problems: dict[str, str] = {}  # kb -> why it is not served from the build ACTIVE names
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

    def problems(self) -> dict[str, str]:
        """Why a KB is served from another build than the one ``ACTIVE`` names, or has no build at all, by KB."""
        return dict(self._problems)

    def get(self, kb: str) -> Build:
        """The build serving ``kb``: its active build, reloaded when ACTIVE has moved (see the module docstring).

        Raises:
            NotFoundError: the KB does not exist (it has no ACTIVE file and nothing is held).
            IndexCorruptError: nothing is held and no build of the KB loads.
        """
        kb_dir = self.kb_dir(kb)
        current = self._builds.get(kb)
        try:
            active, pointer_error = active_build_id(kb_dir), None
        except IndexCorruptError as exc:
            active, pointer_error = None, str(exc)
        if current is not None:
            if active == current.build_id:
                if kb in self._problems:  # repaired
                    self._problems.pop(kb, None)
                    self._failed.pop(kb, None)
                return current
            if active is None:  # ACTIVE deleted, emptied or garbled under a running server: keep what we hold
                if kb not in self._failed or self._failed[kb] is not None:  # noticed once
                    self._failed[kb] = None
                    self._note(kb, f"{pointer_error or 'the ACTIVE pointer is missing'}; still serving build {current.build_id}")
                return current
            if self._failed.get(kb) == active:
                return current
        elif active is None and pointer_error is None:
            raise NotFoundError(f"unknown knowledge base {kb!r}")
        elif kb in self._failed and self._failed[kb] == active:  # nothing loads: not retried until ACTIVE moves
            raise IndexCorruptError(self._problems.get(kb, f"knowledge base {kb!r}: no build loads"))
        with self._lock:
            return self._reload(kb, kb_dir, active, pointer_error or "")

    def _reload(self, kb: str, kb_dir: Path, active: str | None, why: str) -> Build:
        """Load ``active`` (under the lock); when it does not load, keep the held build or fall back."""
        current = self._builds.get(kb)
        if current is not None and active is not None and active in (current.build_id, self._failed.get(kb)):
            return current  # another thread did it
        if active is not None:
            try:
                return self._install(kb, self._load_usable(kb_dir, active))
            except IndexCorruptError as exc:
                why = str(exc)
        if current is not None:
            self._failed[kb] = active
            self._note(kb, f"{why}; still serving build {current.build_id}")
            return current
        return self._fall_back(kb, kb_dir, active, why)

    def _fall_back(self, kb: str, kb_dir: Path, active: str | None, why: str) -> Build:
        """Nothing held and the active build does not load: serve the newest build that does.

        Raises:
            IndexCorruptError: no build of the KB loads.
        """
        for build_id in build_ids(kb_dir):
            if build_id == active:
                continue
            try:
                build = self._install(kb, self._load_usable(kb_dir, build_id))
            except IndexCorruptError as exc:
                log.warning("knowledge base %r: earlier build does not load either: %s", kb, exc)
                continue
            self._failed[kb] = active
            self._note(kb, f"{why}; serving the newest good build {build_id} instead")
            return build
        self._failed[kb] = active
        self._note(kb, f"{why}; no other build of the KB loads")
        raise IndexCorruptError(self._problems[kb])

    def _load_usable(self, kb_dir: Path, build_id: str) -> Build:
        """``load_build``, refusing a build neither of whose indexes loads (it could only hand off)."""
        build = load_build(kb_dir, build_id, device=self.device, token=self._milvus_token)
        if build.vectors is None and build.bm25 is None:
            raise IndexCorruptError(f"build {build_id}: neither index loads ({build.vector_error}; {build.bm25_error})")
        return build

    def _install(self, kb: str, build: Build) -> Build:
        self._check_embedder(build)
        self._builds[kb] = build
        self._failed.pop(kb, None)
        self._problems.pop(kb, None)
        return build

    def _note(self, kb: str, why: str) -> None:
        """Record (and log, once per change) why ``kb`` is not served from the build ACTIVE names."""
        if self._problems.get(kb) != why:
            log.error("knowledge base %r: %s", kb, why)
            self._problems[kb] = why

    def retry_vectors(self) -> list[str]:
        """Load again the vector index of each held build whose index lives on a server (Milvus) and did not
        load (the server was down when the build loaded); returns the KBs whose index loaded now.

        A file-backed index that did not load is corrupt or missing, which a retry does not mend: only a new
        build does (the cache loads it when ``ACTIVE`` moves).
        """
        loaded = []
        with self._lock:
            for kb, build in self._builds.items():
                vi = build.manifest.vector_index
                if build.vectors is not None or vi.backend not in SERVER_BACKENDS:
                    continue
                try:
                    index = load_vector_index(vi.backend, build.path / vi.file, device=self.device,
                                              token=self._milvus_token)
                except KbsearchError as exc:
                    build.vector_error = str(exc)
                    continue
                build.vectors, build.vector_error, build.vector_cause = index, None, None
                self._check_embedder(build)
                if build.vectors is not None:
                    loaded.append(kb)
        return loaded

    def check_loaded(self) -> None:
        """Check every held build against the embedder, which has just loaded (builds loaded before went unchecked)."""
        with self._lock:
            for build in self._builds.values():
                self._check_embedder(build)

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
