"""A knowledge base's builds as an operator sees them: list them, show one, roll back to one.

Used by ``kbsearch builds list|show|rollback`` and ``/admin/api/builds``. A KB keeps its newest
``index.keep_builds`` builds on disk (and always the active one); any of them can be made active again.
Rolling back loads the build in full first (checksums, entries, both indexes), so ACTIVE never moves to a
build that cannot serve, then moves ACTIVE atomically, holding the KB's writer lock like any other write.
A running server picks the build up on its next question, as it does a new one. Nothing here names a
file-system path: the admin API returns it as is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbsearch.config import Settings
from kbsearch.errors import IndexCorruptError, NotFoundError, without_paths
from kbsearch.index.lock import kb_writer
from kbsearch.index.manifest import REPORT_FILE
from kbsearch.index.store import active_build_id, build_ids, load_build, read_manifest, swap_active


@dataclass(frozen=True)
class BuildSummary:
    """One build of a KB, as ``builds list`` shows it.

    Attributes:
        build_id: The build's id (sortable by time).
        created_at: When it was written (ISO, UTC); empty when its manifest is unreadable.
        entries, rows: FAQ entries and index rows in it.
        model: The embedding model it was made with.
        active: Whether ``ACTIVE`` names it.
        error: Why its manifest is unreadable (it cannot be rolled back to), or None.
    """

    build_id: str
    created_at: str
    entries: int
    rows: int
    model: str
    active: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Rollback:
    """What ``rollback`` did: the build now active, the one before (None when ACTIVE was unreadable), and
    whether ACTIVE moved (False when the build was already active)."""

    kb: str
    build_id: str
    previous: str | None
    changed: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def list_builds(settings: Settings, kb: str) -> list[BuildSummary]:
    """Every complete build of ``kb`` on disk, newest first, the active one marked.

    Raises:
        BadInputError: an invalid KB name. NotFoundError: no such KB.
    """
    kb_dir = _existing(settings, kb)
    active = _active_or_none(kb_dir)
    return [_summary(kb_dir, build_id, active) for build_id in build_ids(kb_dir)]


def show_build(settings: Settings, kb: str, build_id: str) -> dict[str, Any]:
    """One build of ``kb``: whether it is active, its manifest, and its report's counts and stage times.

    Raises:
        BadInputError: an invalid KB name. NotFoundError: no such KB or build.
        IndexCorruptError: the build's manifest is unreadable.
    """
    kb_dir = _existing_build(settings, kb, build_id)
    manifest = read_manifest(kb_dir, build_id)
    try:
        report = json.loads((kb_dir / "builds" / build_id / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    return without_paths({"kb": kb, "build_id": build_id, "active": build_id == _active_or_none(kb_dir),
                          "manifest": manifest.to_json(),
                          "report": report_summary(report) if isinstance(report, dict) else "unreadable"})


def rollback(settings: Settings, kb: str, build_id: str) -> Rollback:
    """Make ``build_id`` the active build of ``kb`` again, once it has loaded in full (holding the writer lock).

    Raises:
        BadInputError: an invalid KB name. NotFoundError: no such KB or build.
        IndexCorruptError: the build does not load, or one of its indexes does not (nothing changes).
        KbBusyError: another writer held the KB's lock for the whole wait.
    """
    kb_dir = _existing_build(settings, kb, build_id)
    with kb_writer(settings, kb, f"rollback to {build_id}"):
        build = load_build(kb_dir, build_id, device="cpu", token=settings.index.milvus_token)
        broken = [f"{name}: {error}" for name, error in (("vector index", build.vector_error),
                                                          ("BM25 index", build.bm25_error)) if error]
        if broken:
            raise IndexCorruptError(f"build {build_id} cannot be rolled back to: {'; '.join(broken)}")
        previous = _active_or_none(kb_dir)
        if previous != build_id:
            swap_active(kb_dir, build_id, token=settings.index.milvus_token)
    return Rollback(kb, build_id, previous, changed=previous != build_id)


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """A build report's counts, times and ids: its scalars and nested objects, without lists (rows, files)."""
    return {key: report_summary(value) if isinstance(value, dict) else value for key, value in report.items()
            if isinstance(value, (dict, str, int, float, bool)) or value is None}


def _summary(kb_dir: Path, build_id: str, active: str | None) -> BuildSummary:
    try:
        m = read_manifest(kb_dir, build_id)
    except IndexCorruptError as exc:
        return BuildSummary(build_id, "", 0, 0, "", build_id == active, str(exc))
    return BuildSummary(build_id, m.created_at, m.counts.get("entries", 0), m.counts.get("rows", 0),
                        without_paths(m.model_id), build_id == active)


def _existing(settings: Settings, kb: str) -> Path:
    kb_dir = settings.kb_dir(kb)
    if not kb_dir.is_dir():
        raise NotFoundError(f"unknown knowledge base {kb!r}")
    return kb_dir


def _existing_build(settings: Settings, kb: str, build_id: str) -> Path:
    kb_dir = _existing(settings, kb)
    if build_id not in build_ids(kb_dir):
        raise NotFoundError(f"knowledge base {kb!r} has no build {build_id[:80]!r} (`kbsearch builds list` shows them)")
    return kb_dir


def _active_or_none(kb_dir: Path) -> str | None:
    """What ACTIVE names, or None when it is missing or unreadable (a rollback repairs it)."""
    try:
        return active_build_id(kb_dir)
    except IndexCorruptError:
        return None
