"""Versioned builds on disk and the atomic pointer that says which one is served.

Layout under ``Settings.home``::

    <kb>/ACTIVE                    the active build id (replaced atomically with os.replace)
    <kb>/.lock                     the writer lock (``kbsearch.index.lock``): one writer per KB
    <kb>/builds/<build_id>/        one immutable directory per build:
        manifest.json              model, dimension, prompts, vector backend and index kind, counts, sha256 of every file
        entries.jsonl chunks.jsonl rows.jsonl vectors.faiss (or .npy) bm25.bin report.json

A build is written into ``builds/.tmp-<id>``, fsynced, and renamed into place only when complete, then
ACTIVE is swapped (a fsynced temp pointer renamed over it, then the KB folder fsynced). A crash at any
point leaves the previous build served; the next writer removes the leftovers (``kbsearch.index.lock``,
whose lock every write here holds). Loading verifies the checksums. Messages name builds and files
relative to the KB, never absolute paths: they reach ``/readyz`` and hand-off reasons.

A milvus build keeps its vectors in a Milvus collection outside the directory (``milvus.json`` says where):
``swap_active`` moves the KB's Milvus alias to it before ACTIVE (``factory.publish_vector_index``), and
``prune_builds`` drops a deleted build's collection before its directory (``factory.drop_vector_index``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbsearch.checksum import sha256_file
from kbsearch.codes import FallbackCause
from kbsearch.config import KB_NAME_PATTERN
from kbsearch.errors import IndexCorruptError, KbsearchError, NotFoundError
from kbsearch.index.base import RecallCheck, VectorIndex
from kbsearch.index.durable import fsync_path, fsync_tree, write_text_atomic
from kbsearch.index.factory import VECTOR_FILES, drop_vector_index, load_vector_index, publish_vector_index
from kbsearch.index.lock import writer_lock
from kbsearch.index.manifest import BM25_FILE, REPORT_FILE, IndexManifest, VectorIndexInfo
from kbsearch.lexical.bm25 import BM25Index
from kbsearch.types import Chunk, FaqEntry, IndexRow

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"
BUILD_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
"""Build ids: a folder name under ``builds/`` (never a path, never hidden), whatever ``ACTIVE`` says."""


def _write_jsonl(path: Path, items: list[dict[str, Any]]) -> None:
    with open(path, "x", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")


def _parse_jsonl(data: bytes) -> list[Any]:
    """The records of JSON lines as ``_write_jsonl`` writes them: one ``json.loads`` of them all as an array
    (a record never holds a raw newline), 3.5× faster than one call per line on 100k rows; anything else
    (blank lines) is parsed line by line."""
    text = data.decode("utf-8").strip()
    try:
        return list(json.loads("[" + text.replace("\n", ",") + "]"))
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def new_build_id(now: dt.datetime | None = None) -> str:
    """A unique build id that sorts by time, e.g. ``20261122T101500Z-1a2b3c``.

    The suffix is the microsecond in 5 hex digits and one random digit, so builds made within one second
    still sort in the order they were made ("the newest build" is the greatest id).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + f"-{now.microsecond:05x}{uuid.uuid4().int % 16:x}"


def build_time(build_id: str) -> dt.datetime | None:
    """When ``new_build_id`` made ``build_id`` (UTC, to the microsecond); None for an id it did not make."""
    match = re.fullmatch(r"(\d{8}T\d{6}Z)-([0-9a-f]{5})[0-9a-f]", build_id)
    if match is None:
        return None
    try:
        made = dt.datetime.strptime(match[1], "%Y%m%dT%H%M%SZ")
        return made.replace(microsecond=int(match[2], 16), tzinfo=dt.timezone.utc)
    except ValueError:  # not a date, or more than 999999 microseconds
        return None


def active_build_id(kb_dir: Path) -> str | None:
    """The build id ACTIVE points to, or None when the KB has no ACTIVE file (never published).

    Raises:
        IndexCorruptError: ACTIVE is empty, unreadable or not a build id (e.g. a path).
    """
    try:
        value = (kb_dir / ACTIVE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"the ACTIVE pointer of knowledge base {kb_dir.name!r} is unreadable "
                                f"({type(exc).__name__})") from exc
    if not re.fullmatch(BUILD_ID_PATTERN, value):
        raise IndexCorruptError(f"the ACTIVE pointer of knowledge base {kb_dir.name!r} is "
                                + ("empty" if not value else f"not a build id: {value[:80]!r}"))
    return value


def build_ids(kb_dir: Path) -> list[str]:
    """Ids of the KB's complete builds (renamed into place, with a manifest), newest first (ids sort by time)."""
    folder = kb_dir / "builds"
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if re.fullmatch(BUILD_ID_PATTERN, p.name)
                   and (p / MANIFEST).is_file()), reverse=True)


def knowledge_bases(home: Path) -> list[str]:
    """Names of the KBs under ``home`` that were ever published (a valid name and an ACTIVE file), sorted."""
    if not Path(home).is_dir():
        return []
    return sorted(p.name for p in Path(home).iterdir() if re.fullmatch(KB_NAME_PATTERN, p.name) and (p / ACTIVE).is_file())


def swap_active(kb_dir: Path, build_id: str, *, token: str = "") -> None:
    """Point ACTIVE at ``build_id`` atomically and durably, holding the KB's writer lock.

    A milvus build's alias is moved to its collection first (``token``: the server's), so a failure leaves
    both ACTIVE and the alias on the previous build.

    Raises:
        NotFoundError: no complete build ``build_id``.
        KbBusyError: another writer holds the lock.
        IndexCorruptError: the build's manifest is malformed. BackendError: Milvus did not move the alias.
    """
    if not re.fullmatch(BUILD_ID_PATTERN, build_id) or not (kb_dir / "builds" / build_id / MANIFEST).is_file():
        raise NotFoundError(f"knowledge base {kb_dir.name!r} has no build {build_id[:80]!r}")
    with writer_lock(kb_dir, "swap ACTIVE"):
        vi = read_manifest(kb_dir, build_id).vector_index
        publish_vector_index(vi.backend, kb_dir / "builds" / build_id / vi.file, token=token)
        write_text_atomic(kb_dir / ACTIVE, build_id + "\n")


def write_build(
    kb_dir: Path,
    *,
    entries: list[FaqEntry],
    chunks: list[Chunk],
    rows: list[IndexRow],
    vectors: VectorIndex,
    bm25: BM25Index,
    report: dict[str, Any],
    manifest: dict[str, Any],
    keep: int = 3,
    build_id: str | None = None,
    recall_check: RecallCheck | None = None,
    token: str = "",
) -> str:
    """Write a complete build, activate it, prune old builds, and return its id (holding the KB's writer lock).

    Every file and the build folder are fsynced before the folder is renamed into place and ACTIVE moves.

    Args:
        kb_dir: The KB's directory (created if needed).
        entries, chunks, rows: What the build serves; ``rows[i]`` is vector ``i`` and BM25 doc ``i``.
        vectors, bm25: The indexes over ``rows``.
        report: The ingest report (saved as report.json).
        manifest: ``IndexManifest`` fields describing how the build was made (``embedder``, ``model_id``,
            ``row_prompts``, ``bm25``); the id, counts, vector backend, index kind and parameters, and checksums
            are added here.
        keep: How many builds to keep after the swap (the active one always stays).
        build_id: Explicit id (tests); default a new timestamped id.
        recall_check: The recall check of an approximate ``vectors`` (or of the one it fell back from), recorded
            in the manifest's ``vector_index``.
        token: The Milvus server's token, for a milvus build's alias swap and the drop of pruned builds' collections.

    Raises:
        KbBusyError: another writer holds the KB's lock.
    """
    if len(rows) != len(vectors) or len(rows) != len(bm25):
        raise ValueError(f"rows ({len(rows)}), vectors ({len(vectors)}) and bm25 ({len(bm25)}) disagree")
    build_id = build_id or new_build_id()
    with writer_lock(kb_dir, "write a build", create=True):
        _write_complete(kb_dir, build_id, entries, chunks, rows, vectors, bm25, report, manifest, recall_check)
        swap_active(kb_dir, build_id, token=token)
        prune_builds(kb_dir, keep, token=token)
    return build_id


def _write_complete(kb_dir: Path, build_id: str, entries: list[FaqEntry], chunks: list[Chunk], rows: list[IndexRow],
                    vectors: VectorIndex, bm25: BM25Index, report: dict[str, Any], manifest: dict[str, Any],
                    recall_check: RecallCheck | None) -> None:
    """Write the build into ``builds/.tmp-<id>``, fsync it, and rename it to ``builds/<id>`` (see ``write_build``)."""
    builds = kb_dir / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    tmp = builds / f".tmp-{build_id}"
    tmp.mkdir()
    try:
        _write_jsonl(tmp / "entries.jsonl", [e.to_json() for e in entries])
        _write_jsonl(tmp / "chunks.jsonl", [c.to_json() for c in chunks])
        _write_jsonl(tmp / "rows.jsonl", [r.to_json() for r in rows])
        info = VectorIndexInfo(backend=vectors.backend, file=VECTOR_FILES[vectors.backend], kind=vectors.kind,
                               params=vectors.params(), recall_check=recall_check)
        vectors.save(tmp / info.file)
        bm25.save(tmp / BM25_FILE)
        manifest = {**manifest, "vector_index": info, "bm25": {**dict(manifest.get("bm25") or {}), "file": BM25_FILE}}
        (tmp / REPORT_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        full = IndexManifest(
            build_id=build_id, kb=kb_dir.name,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            dimension=vectors.dim, counts={"entries": len(entries), "chunks": len(chunks), "rows": len(rows)},
            checksums={}, **manifest)
        full = dataclasses.replace(full, checksums={name: sha256_file(tmp / name) for name in full.data_files})
        (tmp / MANIFEST).write_text(json.dumps(full.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
        fsync_tree(tmp)  # the data is on disk before any name points at it
        os.replace(tmp, builds / build_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(builds)  # ... and so is the rename, before ACTIVE names the build


def prune_builds(kb_dir: Path, keep: int, *, token: str = "") -> list[str]:
    """Delete all but the newest ``keep`` builds (never the active one); return the deleted ids.

    A milvus build's collection is dropped first (``token``: the server's); when Milvus cannot drop it, the
    build is kept (and logged), so the next prune tries again instead of leaving the collection behind.
    Call holding the KB's writer lock (``write_build`` does).
    """
    active = active_build_id(kb_dir)
    builds = sorted((p for p in (kb_dir / "builds").iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.name, reverse=True)
    deleted = []
    for p in builds[keep:]:
        if p.name != active:
            try:
                vi = read_manifest(kb_dir, p.name).vector_index
                drop_vector_index(vi.backend, p / vi.file, token=token)
            except IndexCorruptError:
                pass  # no readable manifest or index record: nothing outside the folder is known to free
            except KbsearchError as exc:
                log.warning("build %s of kb %r kept: its vector index could not be freed: %s", p.name, kb_dir.name, exc)
                continue
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p.name)
    return deleted


@dataclass
class Build:
    """A loaded build: everything the query path needs for one KB.

    Attributes:
        build_id: The build's id (reported as ``index_version``).
        path: The build directory.
        manifest: The parsed manifest.
        entries: FAQ entries by id.
        chunks: Chunks by ``(faq_id, ordinal)``.
        rows: Index rows, row ``i`` = vector ``i`` = BM25 doc ``i``.
        vectors: The vector index, or None when it failed to load or was refused (the service then runs on BM25).
        vector_error: Why the vector index is missing, when it is.
        vector_cause: The fallback code for that (index missing, corrupt, or embedded by another model).
        bm25: The BM25 index, or None when it failed to load.
        bm25_error: Why the BM25 index is missing, when it is.
        faq_rows: Row numbers of each FAQ id (its question, variants and chunks).
    """

    build_id: str
    path: Path
    manifest: IndexManifest
    entries: dict[str, FaqEntry]
    chunks: dict[tuple[str, int], Chunk]
    rows: list[IndexRow]
    vectors: VectorIndex | None
    vector_error: str | None
    bm25: BM25Index | None
    bm25_error: str | None
    faq_rows: dict[str, list[int]]
    vector_cause: FallbackCause | None = None
    _kind_rows: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)
    _row_faq: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def row_faq(self) -> list[str]:
        """The FAQ id of every row (row ``i`` -> ``rows[i].faq_id``); cached."""
        if self._row_faq is None:
            self._row_faq = [r.faq_id for r in self.rows]
        return self._row_faq

    def rows_of_kind(self, kind: str) -> list[int]:
        """Row numbers of answer chunks (``"chunk"``) or of questions and variants (``"question"``); cached."""
        if kind not in self._kind_rows:
            want_chunk = kind == "chunk"
            self._kind_rows[kind] = [i for i, r in enumerate(self.rows) if (r.kind == "chunk") == want_chunk]
        return self._kind_rows[kind]


def _load_part(loader: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return loader(), None
    except KbsearchError as exc:  # corrupt, an unknown backend, or a device that is not there
        return None, str(exc)


def read_manifest(kb_dir: Path, build_id: str) -> IndexManifest:
    """The parsed manifest of build ``build_id``.

    Raises:
        IndexCorruptError: the build has no readable, well-formed manifest (incomplete, deleted or damaged).
    """
    if not re.fullmatch(BUILD_ID_PATTERN, build_id):
        raise IndexCorruptError(f"{build_id[:80]!r} is not a build id")
    try:
        raw = json.loads((kb_dir / "builds" / build_id / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"build {build_id} has no manifest (incomplete or deleted)") from exc
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"build {build_id}: its manifest is not valid JSON ({type(exc).__name__})") from exc
    if not isinstance(raw, dict):
        raise IndexCorruptError(f"build {build_id}: its manifest is not a JSON object")
    try:
        return IndexManifest.from_json(raw)
    except IndexCorruptError as exc:
        raise IndexCorruptError(f"build {build_id}: {exc}") from exc


def _verified(path: Path, name: str, manifest: IndexManifest, digest: Future[str] | None = None) -> Path:
    """``path / name`` once its sha256 (``digest``, or computed now) matches the manifest's."""
    p = path / name
    if not p.is_file():
        raise IndexCorruptError(f"build {manifest.build_id}: {name} is missing")
    try:
        actual = digest.result() if digest is not None else sha256_file(p)
    except OSError as exc:
        raise IndexCorruptError(f"build {manifest.build_id}: {name} cannot be read ({exc})") from exc
    if manifest.checksums.get(name) != actual:
        raise IndexCorruptError(f"build {manifest.build_id}: {name} fails its checksum (the file changed after the build)")
    return p


def _read_verified(path: Path, name: str, manifest: IndexManifest, parse: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """The records of a verified JSONL file of the build, parsed (the file is read once, hashed and parsed)."""
    p = path / name
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"build {manifest.build_id}: {name} is missing") from exc
    except OSError as exc:
        raise IndexCorruptError(f"build {manifest.build_id}: {name} cannot be read ({exc})") from exc
    if manifest.checksums.get(name) != hashlib.sha256(data).hexdigest():
        raise IndexCorruptError(f"build {manifest.build_id}: {name} fails its checksum (the file changed after the build)")
    try:
        return [parse(d) for d in _parse_jsonl(data)]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexCorruptError(f"build {manifest.build_id}: {name} is malformed ({type(exc).__name__})") from exc


def load_entries(kb_dir: Path, build_id: str | None = None) -> list[FaqEntry]:
    """The FAQ entries of a build (the active one by default), checksum-verified, without loading its indexes.

    Raises:
        NotFoundError: the KB has no active build. IndexCorruptError: see ``load_build``.
    """
    build_id = build_id or _active_or_not_found(kb_dir)
    manifest = read_manifest(kb_dir, build_id)
    return _read_verified(kb_dir / "builds" / build_id, "entries.jsonl", manifest, FaqEntry.from_json)


def _active_or_not_found(kb_dir: Path) -> str:
    build_id = active_build_id(kb_dir)
    if build_id is None:
        raise NotFoundError(f"knowledge base {kb_dir.name!r} has no active build")
    return build_id


def load_build(kb_dir: Path, build_id: str | None = None, device: str = "auto", *, token: str = "") -> Build:
    """Load a build (the active one by default), verifying every file's checksum (``token``: a Milvus server's).

    The entries, chunks and rows must be intact (else ``IndexCorruptError``); a missing or corrupt
    vector or BM25 index is recorded on the ``Build`` instead, so the service can still answer from
    the other one.

    Raises:
        NotFoundError: no such KB, or it has no active build.
        IndexCorruptError: the ACTIVE pointer, the manifest or the entry data is missing, malformed or fails
            its checksum.
    """
    build_id = build_id or _active_or_not_found(kb_dir)
    path = kb_dir / "builds" / build_id
    manifest = read_manifest(kb_dir, build_id)
    vi = manifest.vector_index
    # The index files are hashed in threads (hashlib lets go of the GIL) while this one parses the JSON lines.
    with ThreadPoolExecutor(2, thread_name_prefix="kbsearch-verify") as pool:
        digests = {name: pool.submit(sha256_file, path / name) for name in (vi.file, manifest.bm25_file)
                   if (path / name).is_file()}
        entries = _read_verified(path, "entries.jsonl", manifest, FaqEntry.from_json)
        chunks = _read_verified(path, "chunks.jsonl", manifest, Chunk.from_json)
        rows = _read_verified(path, "rows.jsonl", manifest, IndexRow.from_json)
        vectors, vector_error = _load_part(lambda: load_vector_index(
            vi.backend, _verified(path, vi.file, manifest, digests.get(vi.file)), device=device, token=token))
        bm25, bm25_error = _load_part(lambda: BM25Index.load(
            _verified(path, manifest.bm25_file, manifest, digests.get(manifest.bm25_file))))
    for name, idx in (("vector", vectors), ("bm25", bm25)):
        if idx is not None and len(idx) != len(rows):
            raise IndexCorruptError(f"build {build_id}: {name} index has {len(idx)} rows, rows.jsonl {len(rows)}")
    return Build(
        build_id=build_id,
        path=path,
        manifest=manifest,
        entries={e.id: e for e in entries},
        chunks={(c.faq_id, c.ordinal): c for c in chunks},
        rows=rows,
        vectors=vectors,
        vector_error=vector_error,
        vector_cause=None if vectors is not None else (
            FallbackCause.INDEX_MISSING if not (path / vi.file).is_file() else FallbackCause.INDEX_CORRUPT),
        bm25=bm25,
        bm25_error=bm25_error,
        faq_rows=_faq_rows(rows),
    )


def _faq_rows(rows: list[IndexRow]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        out.setdefault(r.faq_id, []).append(i)
    return out
