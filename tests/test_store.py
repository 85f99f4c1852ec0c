"""Versioned builds: atomic activation, checksums, pruning, and a failed build never touching the live one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kbsearch.errors import IndexCorruptError, NotFoundError
from kbsearch.index.builder import make_rows
from kbsearch.index.manifest import IndexManifest
from kbsearch.index.store import active_build_id, load_build, swap_active, write_build
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
        "vectors.faiss", "bm25.json", "entries.jsonl"}
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
