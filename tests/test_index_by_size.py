"""The vector index's kind follows the build's size: exact flat up to ``approximate_above_rows``, HNSW above it
once a recall check against exact search passes (else efSearch is raised, else the build falls back to flat);
the choice is recorded in the manifest and the build report, survives save/load, and older manifests load as flat.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kbsearch.config import IndexSettings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.index import factory
from kbsearch.index.builder import build_index
from kbsearch.index.factory import build_index_by_size, load_vector_index
from kbsearch.index.faiss_backend import FaissIndex, HnswParams, gpu_available
from kbsearch.index.numpy_backend import NumpyIndex
from kbsearch.index.store import MANIFEST, load_build
from support import entry, one_chunk

SMALL_THRESHOLD = 200


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _entries(n: int) -> list:
    """``n`` FAQ entries with distinct words: a question, two variants and one answer chunk each (4 rows)."""
    rng = np.random.default_rng(7)
    vocab = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(400)]

    def words(i: int, salt: str) -> str:
        return " ".join([*rng.choice(vocab, 3), f"{salt}{i}"])

    return [entry(f"faq-{i}", words(i, "q"), words(i, "a"), variants=(words(i, "v"), words(i, "w")))
            for i in range(n)]


@pytest.fixture()
def large(settings):
    """Settings with a small threshold, and 150 entries (600 rows) built under them with the hash fake."""
    s = settings.updated(index={"approximate_above_rows": SMALL_THRESHOLD})
    entries = _entries(150)
    built = build_index(s, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=128), {})
    return s, entries, built


def test_a_build_above_the_threshold_gets_hnsw_recorded_and_checked(large):
    s, _, built = large
    assert built.rows == 600 > SMALL_THRESHOLD
    choice = built.vector_index
    assert choice is not None and choice.kind == "hnsw" and "600 rows > approximate_above_rows 200" in choice.reason
    assert choice.recall_check is not None and choice.recall_check.recall >= 0.99
    assert (choice.recall_check.k, choice.recall_check.queries) == (50, 200)
    build = load_build(s.kb_dir("default"), device="cpu")
    vi = build.manifest.vector_index
    assert (vi.backend, vi.kind, vi.file) == ("faiss", "hnsw", "vectors.faiss")
    assert vi.params == {"m": s.index.hnsw_m, "ef_construction": s.index.hnsw_ef_construction,
                         "ef_search": s.index.hnsw_ef_search}
    assert vi.recall_check == choice.recall_check
    report = json.loads((built.path / "report.json").read_text(encoding="utf-8"))
    assert report["vector_index"]["kind"] == "hnsw" and report["vector_index"]["recall_check"]["recall"] >= 0.99
    assert report["vector_index"]["reason"] == choice.reason


def test_a_loaded_hnsw_build_finds_each_row_as_exact_search_does(large):
    """Save/load round trip: the loaded index is HNSW with its efSearch, and its top-1 on the build's own rows
    equals the exact oracle's (every row finds itself); stored vectors and similarity() stay exact."""
    s, _, built = large
    build = load_build(s.kb_dir("default"), device="auto")  # no GPU here; on one, HNSW stays on the CPU
    index = build.vectors
    assert isinstance(index, FaissIndex) and index.kind == "hnsw" and not index.on_gpu
    assert index.params()["ef_search"] == build.manifest.vector_index.params["ef_search"]
    everything = index.vectors(list(range(len(index))))
    assert len(np.unique(everything, axis=0)) == len(everything)  # distinct rows: top-1 is unambiguous
    oracle = NumpyIndex(everything)
    scores, rows = index.search(everything, 1)
    exact_scores, exact_rows = oracle.search(everything, 1)
    np.testing.assert_array_equal(rows[:, 0], exact_rows[:, 0])
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(everything)))
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    some = [0, 17, 599, 17]
    np.testing.assert_allclose(index.similarity(everything[3], some), everything[some] @ everything[3], atol=1e-6)


def test_the_query_path_answers_from_an_hnsw_build(large, make_engine):
    """Unfiltered search (fused, vector) and filtered search (vector over question rows only: similarity())."""
    s, entries, _ = large
    for retrieve in ({"first_stage": "fused"}, {"first_stage": "vector"},
                     {"first_stage": "vector", "vector_fields": "question"}):
        engine = make_engine(s.updated(retrieve=retrieve), embedder=HashEmbedder(dim=128))
        for e in entries[::37]:
            answer = engine.ask(e.variants[1], top_k=3)
            assert not answer.degraded and answer.hits[0].entry.id == e.id, (retrieve, e.id)


def test_a_build_at_or_below_the_threshold_stays_flat(settings):
    entries = _entries(50)
    s = settings.updated(index={"approximate_above_rows": 200})  # exactly 200 rows: not above
    built = build_index(s, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=128), {})
    assert built.rows == 200 and built.vector_index is not None and built.vector_index.kind == "flat"
    assert built.vector_index.recall_check is None and "<= approximate_above_rows 200" in built.vector_index.reason
    build = load_build(s.kb_dir("default"), device="cpu")
    vi = build.manifest.vector_index
    assert (vi.kind, vi.params, vi.recall_check) == ("flat", {}, None)
    assert isinstance(build.vectors, FaissIndex) and build.vectors.kind == "flat"
    report = json.loads((built.path / "report.json").read_text(encoding="utf-8"))
    assert report["vector_index"]["kind"] == "flat" and report["vector_index"]["recall_check"] is None


def test_the_numpy_backend_is_always_exact():
    index, choice = build_index_by_size(IndexSettings(backend="numpy", approximate_above_rows=1),
                                        _unit(np.random.default_rng(0), 300, 16))
    assert isinstance(index, NumpyIndex) and choice.kind == "flat" and choice.recall_check is None


def test_a_manifest_without_the_index_kind_loads_as_flat(built, settings):
    """Builds of earlier releases recorded no kind (they were all flat) and keep loading."""
    path = built.path / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key in ("kind", "params", "recall_check"):
        manifest["vector_index"].pop(key)
    path.write_text(json.dumps(manifest), encoding="utf-8")  # the checksums cover the data files, not the manifest
    build = load_build(settings.kb_dir("default"), device="cpu")
    vi = build.manifest.vector_index
    assert (vi.backend, vi.kind, vi.params, vi.recall_check) == ("faiss", "flat", {}, None)
    assert build.vectors is not None and build.vectors.kind == "flat"


def _recalls(monkeypatch, values: list[float]) -> None:
    """Make the recall check measure ``values`` in turn (the last one from then on)."""
    seen = iter(values)
    last = [values[-1]]

    def fake(found: np.ndarray, exact: np.ndarray) -> float:
        last[0] = next(seen, last[0])
        return last[0]

    monkeypatch.setattr(factory, "recall_at_k", fake)


def test_low_recall_raises_ef_search_until_the_check_passes(monkeypatch, tmp_path):
    _recalls(monkeypatch, [0.97, 0.985, 0.995])
    vectors = _unit(np.random.default_rng(1), 400, 16)
    index, choice = build_index_by_size(IndexSettings(approximate_above_rows=SMALL_THRESHOLD), vectors)
    assert choice.kind == index.kind == "hnsw" and index.params()["ef_search"] == 512
    assert choice.recall_check is not None and choice.recall_check.tried == {128: 0.97, 256: 0.985, 512: 0.995}
    assert "efSearch 512 (efSearch raised from 128)" in choice.reason
    index.save(tmp_path / "vectors.faiss")  # the raised efSearch is what the service searches with
    assert load_vector_index("faiss", tmp_path / "vectors.faiss", device="cpu").params()["ef_search"] == 512


def test_recall_that_never_passes_falls_back_to_flat_and_says_so(monkeypatch):
    _recalls(monkeypatch, [0.95])
    vectors = _unit(np.random.default_rng(2), 400, 16)
    index, choice = build_index_by_size(IndexSettings(approximate_above_rows=SMALL_THRESHOLD), vectors)
    assert index.kind == choice.kind == "flat" and choice.params == {}
    assert choice.recall_check is not None and list(choice.recall_check.tried) == [128, 256, 512, 1024]
    assert "fell back to exact search" in choice.reason and "below 0.99" in choice.reason


def test_the_real_recall_check_on_a_poor_graph_falls_back():
    """No fake: a 4-neighbour graph over 3,000 random 32-dim rows cannot find every exact top-50 row."""
    settings = IndexSettings(approximate_above_rows=SMALL_THRESHOLD, approximate_min_recall=1.0, hnsw_m=4,
                             hnsw_ef_construction=8, hnsw_ef_search=4)
    index, choice = build_index_by_size(settings, _unit(np.random.default_rng(0), 3000, 32))
    assert index.kind == "flat" and choice.recall_check is not None and choice.recall_check.recall < 1.0
    assert list(choice.recall_check.tried) == [4, 100, 200, 400, 800, 1024]  # a search keeps >= k=50 candidates


def test_recall_counts_ties_at_the_kth_score_and_never_padding():
    exact = np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    assert factory.recall_at_k(np.array([[0.9, 0.8, 0.7]], dtype=np.float32), exact) == 1.0
    assert factory.recall_at_k(np.array([[0.9, 0.7, 0.7]], dtype=np.float32), exact) == 1.0  # a tie at the 3rd
    assert factory.recall_at_k(np.array([[0.9, 0.8, -3.4e38]], dtype=np.float32), exact) == pytest.approx(2 / 3)


def test_an_hnsw_query_that_reaches_too_few_rows_is_answered_exactly(monkeypatch):
    """HNSW pads a walk that reached fewer than k rows with -1; search never returns them (row -1 = the last row)."""
    base = _unit(np.random.default_rng(3), 500, 16)
    index = FaissIndex.build(base, device="cpu", hnsw=HnswParams())
    real = index._search

    def padded(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = real(q, k)
        scores[0, -3:], rows[0, -3:] = -3.4e38, -1
        return scores, rows

    monkeypatch.setattr(index, "_search", padded)
    queries = base[:2]
    scores, rows = index.search(queries, 10)
    assert (rows >= 0).all()
    exact_scores, exact_rows = index.exact_search(queries, 10)
    np.testing.assert_array_equal(rows[0], exact_rows[0])
    np.testing.assert_allclose(scores[0], exact_scores[0], atol=1e-6)
    assert (index.approximate_search(queries, 10)[1][0, -3:] == -1).all()


def test_ef_search_applies_to_hnsw_only():
    from kbsearch.errors import BadInputError

    flat = FaissIndex.build(np.eye(4, dtype=np.float32), device="cpu")
    with pytest.raises(BadInputError, match="HNSW"):
        flat.set_ef_search(64)
    hnsw = FaissIndex.build(np.eye(4, dtype=np.float32), device="cpu", hnsw=HnswParams())
    with pytest.raises(BadInputError, match="at least 1"):
        hnsw.set_ef_search(0)


@pytest.mark.gpu
def test_hnsw_stays_on_the_cpu_with_a_gpu():
    """faiss has no GPU HNSW: with device=cuda the HNSW index is searched on the CPU, a flat one on the GPU."""
    if not gpu_available():
        pytest.skip("no CUDA device with faiss-gpu here")
    base = _unit(np.random.default_rng(4), 1000, 32)
    hnsw = FaissIndex.build(base, device="cuda", hnsw=HnswParams())
    assert hnsw.kind == "hnsw" and not hnsw.on_gpu
    flat = FaissIndex.build(base, device="cuda")
    assert flat.on_gpu
    np.testing.assert_array_equal(hnsw.search(base[:20], 1)[1], flat.search(base[:20], 1)[1])
