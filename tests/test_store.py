"""Versioned builds: atomic activation, checksums, pruning, and a failed build never touching the live one."""

from __future__ import annotations

import datetime as dt
import json
import os
import re

import numpy as np
import pytest

from kbsearch.errors import IndexCorruptError, NotFoundError
from kbsearch.index.builder import make_rows
from kbsearch.index.manifest import IndexManifest
from kbsearch.index.store import active_build_id, build_time, load_build, new_build_id, swap_active, write_build
from kbsearch.index.faiss_backend import FaissIndex
from kbsearch.lexical.bm25 import BM25Index
from support import SMALL_KB, one_chunk


def _write(kb_dir, build_id, keep=3, vectors=None):
    entries = SMALL_KB[:4]
    chunks = [one_chunk(e) for e in entries]
    rows = make_rows(entries, chunks)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((len(rows), 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return write_build(kb_dir, entries=entries, chunks=chunks, rows=rows,
                       vectors=vectors or FaissIndex.build(v, device="cpu"),
                       bm25=BM25Index.build([r.text for r in rows]), report={"kept": 4},
                       manifest={"model_id": "test"}, keep=keep, build_id=build_id)


def test_make_rows_covers_question_variants_chunks():
    rows = make_rows(SMALL_KB[:1], [one_chunk(SMALL_KB[0])])
    assert [(r.kind, r.faq_id) for r in rows] == [("question", "ret-1"), ("variant", "ret-1"), ("chunk", "ret-1")]
    assert rows[1].text == "怎么退货" and rows[2].chunk == 0


def test_write_activate_and_load(tmp_path):
    kb = tmp_path / "shop"
    bid = _write(kb, "b1")
    assert active_build_id(kb) == "b1"
    build = load_build(kb)
    manifest = json.loads((kb / "builds" / "b1" / "manifest.json").read_text())
    assert manifest["counts"] == {"entries": 4, "chunks": 4, "rows": len(build.rows)}
    assert manifest["dimension"] == 8 and manifest["model_id"] == "test" and set(manifest["checksums"]) >= {
        "vectors.faiss", "bm25.bin", "entries.jsonl"}
    assert bid == build.build_id and set(build.entries) == {"ret-1", "pay-1", "en-ship", "en-pw"}
    assert build.vectors is not None and build.bm25 is not None


def test_swap_and_prune_keep_active(tmp_path):
    kb = tmp_path / "shop"
    for i in range(4):
        _write(kb, f"b{i}", keep=2)
    assert sorted(p.name for p in (kb / "builds").iterdir()) == ["b2", "b3"]
    swap_active(kb, "b2")
    assert load_build(kb).build_id == "b2"
    with pytest.raises(NotFoundError):
        swap_active(kb, "nope")


def test_failed_build_leaves_active_untouched(tmp_path):
    kb = tmp_path / "shop"
    _write(kb, "good")

    class Exploding(FaissIndex):
        def save(self, path):
            raise OSError("disk full")

    n_rows = len(make_rows(SMALL_KB[:4], [one_chunk(e) for e in SMALL_KB[:4]]))
    v = np.random.default_rng(0).standard_normal((n_rows, 8)).astype(np.float32)
    boom = Exploding(FaissIndex.build(v, device="cpu")._cpu, device="cpu")
    with pytest.raises(OSError):
        _write(kb, "bad", vectors=boom)
    assert active_build_id(kb) == "good"
    assert [p.name for p in (kb / "builds").iterdir()] == ["good"]  # temp dir cleaned up
    assert load_build(kb).build_id == "good"


def test_checksum_detects_tampering(tmp_path):
    kb = tmp_path / "shop"
    _write(kb, "b1")
    # Corrupt vectors: recorded on the build, entries still load (BM25 can serve).
    (kb / "builds" / "b1" / "vectors.faiss").write_bytes(b"garbage")
    build = load_build(kb)
    assert build.vectors is None and "checksum" in build.vector_error and build.bm25 is not None
    # Corrupt entries: the build cannot serve at all.
    with open(kb / "builds" / "b1" / "entries.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{}\n")
    with pytest.raises(IndexCorruptError, match="checksum"):
        load_build(kb)


def test_unknown_kb(tmp_path):
    with pytest.raises(NotFoundError):
        load_build(tmp_path / "nothing")


def test_manifest_is_typed_and_names_the_vector_backend(tmp_path):
    kb = tmp_path / "shop"
    _write(kb, "b1")
    m = load_build(kb).manifest
    assert isinstance(m, IndexManifest) and m.format == 2
    assert (m.vector_index.backend, m.vector_index.file) == ("faiss", "vectors.faiss")
    assert set(m.checksums) == set(m.data_files) and m.counts["entries"] == 4


def test_a_manifest_of_an_earlier_release_still_loads(tmp_path):
    """Builds written before the typed manifest (no format, FAISS named by type) keep serving after an upgrade."""
    kb = tmp_path / "shop"
    _write(kb, "b1")
    path = kb / "builds" / "b1" / "manifest.json"
    old = json.loads(path.read_text())
    for key in ("format",):
        old.pop(key)
    old["vector_index"] = {"type": "faiss.IndexFlatIP", "metric": "inner_product", "normalised": True}
    path.write_text(json.dumps(old))
    build = load_build(kb)
    assert build.manifest.format == 1 and build.manifest.vector_index.backend == "faiss" and build.vectors is not None
    path.write_text(json.dumps({"build_id": "b1"}))  # no counts, no checksums: unreadable, and said so
    with pytest.raises(IndexCorruptError, match="manifest is malformed"):
        load_build(kb)


def test_build_files_and_folders_are_fsynced_before_active_moves(tmp_path, monkeypatch):
    """Crash safety: every file of the build and the build folder reach the disk before the folder is renamed,
    the rename before ACTIVE names it, and ACTIVE's own rename right after (the parent folders are fsynced)."""
    kb = tmp_path / "shop"
    _write(kb, "b1")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", f"{a} -> {b}")), real_replace(a, b))[1])
    _write(kb, "b2")
    tmp, final = str(kb / "builds" / ".tmp-b2"), str(kb / "builds" / "b2")
    rename = events.index(("replace", f"{tmp} -> {final}"))
    pointer = next(i for i, (kind, what) in enumerate(events) if kind == "replace" and what.endswith(f"{kb}/ACTIVE"))
    synced_before = {what for kind, what in events[:rename] if kind == "fsync"}
    assert {f"{tmp}/{p.name}" for p in (kb / "builds" / "b2").iterdir()} | {tmp} <= synced_before
    assert ("fsync", str(kb / "builds")) in events[rename:pointer]  # the rename is durable before ACTIVE moves
    assert ("fsync", str(kb)) in events[pointer:]  # and ACTIVE's rename right after
    assert active_build_id(kb) == "b2"


def test_leftovers_of_a_killed_writer_are_cleaned_by_the_next_writer(tmp_path):
    kb = tmp_path / "shop"
    _write(kb, "b1")
    (kb / "builds" / ".tmp-b2").mkdir()
    (kb / "builds" / ".tmp-b2" / "entries.jsonl").write_text("{}\n")
    (kb / ".ACTIVE.1a2b3c4d").write_text("b2")
    (kb / "thresholds.json").write_text("{}")  # not a leftover
    _write(kb, "b3")
    assert sorted(p.name for p in (kb / "builds").iterdir()) == ["b1", "b3"]
    assert sorted(p.name for p in kb.iterdir()) == [".lock", "ACTIVE", "builds", "thresholds.json"]


def test_active_must_name_a_build(tmp_path):
    """An ACTIVE pointer that is empty or a path is corrupt state (exit 3), not 'no KB' and never a path to follow."""
    kb = tmp_path / "shop"
    _write(kb, "b1")
    for bad in ("", "\n", "../../etc", "/etc/passwd", ".tmp-b1"):
        (kb / "ACTIVE").write_text(bad)
        with pytest.raises(IndexCorruptError, match="ACTIVE pointer") as exc:
            load_build(kb)
        assert str(tmp_path) not in str(exc.value)
    with pytest.raises(NotFoundError):
        swap_active(kb, "../b1")
    swap_active(kb, "b1")  # the repair
    assert load_build(kb).build_id == "b1"


def test_corrupt_build_messages_name_no_paths(tmp_path):
    kb = tmp_path / "shop"
    _write(kb, "b1")
    (kb / "builds" / "b1" / "vectors.faiss").write_bytes(b"garbage")
    (kb / "builds" / "b1" / "bm25.bin").unlink()
    build = load_build(kb)
    assert "vectors.faiss fails its checksum" in build.vector_error and "bm25.bin is missing" in build.bm25_error
    (kb / "builds" / "b1" / "manifest.json").write_text('{"build_id": "b1", "dimen')  # truncated
    with pytest.raises(IndexCorruptError, match="b1: its manifest is not valid JSON") as exc:
        load_build(kb)
    assert all(str(tmp_path) not in m for m in (str(exc.value), build.vector_error, build.bm25_error))


def test_new_build_ids_sort_in_the_order_they_were_made():
    ids = [new_build_id() for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", i) for i in ids)


def test_build_time_reads_back_when_an_id_was_made():
    now = dt.datetime(2026, 12, 2, 6, 7, 8, 999_999, tzinfo=dt.timezone.utc)
    assert build_time(new_build_id(now)) == now
    assert [build_time(i) for i in ("b1", "20261399T000000Z-000000", "20261202T060708Z-fffff0")] == [None] * 3


def test_json_lines_parse_as_one_array_and_line_by_line_alike():
    from kbsearch.index.store import _parse_jsonl

    records = [{"text": "line one\nline two", "n": 1}, {"text": "逗号，, comma", "n": 2}, {"text": "", "n": 3}]
    written = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    assert _parse_jsonl(written) == records and _parse_jsonl(b"") == []
    # blank lines (never written by the build, possible in a hand-edited file) fall back to one line at a time
    assert _parse_jsonl(written.replace(b"\n", b"\n\n", 1) + b"\r\n") == records
    with pytest.raises(ValueError):
        _parse_jsonl(written + b"{not json}\n")
