"""The vector-index seam: one contract battery every backend (and FAISS's HNSW kind) passes, FAISS and Milvus
(milvus-lite, in a temporary folder) against the numpy oracle, the factory, and a whole build served through the
query path on each backend."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest

from kbsearch.errors import BadInputError, IndexCorruptError
from kbsearch.index import VectorIndex, build_vector_index, load_vector_index
from kbsearch.index.factory import VECTOR_FILES
from kbsearch.index.factory import recall_at_k
from kbsearch.index.faiss_backend import FaissIndex, HnswParams, gpu_available
from kbsearch.index.numpy_backend import NumpyIndex

BACKENDS = sorted(VECTOR_FILES)
#: Every (backend, kind) the contract covers: FAISS builds HNSW above ``IndexSettings.approximate_above_rows``.
INDEXES = [(b, "flat") for b in BACKENDS] + [("faiss", "hnsw")]


@pytest.fixture(scope="module")
def milvus_target(tmp_path_factory):
    """One milvus-lite database for the module (opening one costs ~0.5 s); every build gets its own collection."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kbsearch.index.milvus_backend import MilvusTarget

    return MilvusTarget(uri=str(tmp_path_factory.mktemp("milvus") / "contract.db"))


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- the contract every backend passes -------------------------------------------------------------------


@pytest.fixture(params=INDEXES, ids="-".join)
def spec(request) -> tuple[str, str]:
    return request.param


@pytest.fixture()
def make(spec, request) -> Callable[[np.ndarray], VectorIndex]:
    """Builds ``spec``'s index over given vectors (milvus: a new collection in the module's milvus-lite)."""
    backend, kind = spec
    if kind == "hnsw":
        return lambda vectors: FaissIndex.build(vectors, device="cpu", hnsw=HnswParams())
    if backend == "milvus":
        target = request.getfixturevalue("milvus_target")
        return lambda vectors: build_vector_index(backend, vectors, milvus=target)
    return lambda vectors: build_vector_index(backend, vectors)


def test_contract_search(spec, make):
    rng = np.random.default_rng(0)
    base = _unit(rng, 40, 16)
    index = make(base)
    assert isinstance(index, VectorIndex) and (index.backend, index.kind) == spec and index.dim == 16 and len(index) == 40
    queries = _unit(rng, 3, 16)
    scores, rows = index.search(queries, 100)  # k larger than the index is clamped
    assert scores.shape == rows.shape == (3, 40)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert all(sorted(r) == list(range(40)) for r in rows.tolist())  # every row once
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, rows, axis=1), atol=1e-5)
    one = index.search(queries[0], 5)  # a single vector is one query
    assert one[1].shape == (1, 5)


def test_contract_vectors_and_similarity(spec, make):
    rng = np.random.default_rng(1)
    base = _unit(rng, 30, 8)
    index = make(base)
    rows = [3, 0, 29, 3]
    np.testing.assert_allclose(index.vectors(rows), base[rows], atol=1e-7)
    assert index.vectors([]).shape == (0, 8)
    q = _unit(rng, 1, 8)[0]
    np.testing.assert_allclose(index.similarity(q, rows), base[rows] @ q, atol=1e-6)
    # The self-check searches with stored vectors: a row finds itself first.
    scores, found = index.search(index.vectors([7, 12]), 1)
    assert found[:, 0].tolist() == [7, 12] and np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_contract_refuses_bad_input(spec, make):
    index = make(np.eye(4, dtype=np.float32))
    with pytest.raises(BadInputError, match="dimension"):
        index.search(np.ones((1, 3), dtype=np.float32), 1)
    with pytest.raises(BadInputError):
        make(np.zeros((0, 4), dtype=np.float32))


def test_contract_save_load_and_no_overwrite(spec, make, tmp_path):
    rng = np.random.default_rng(2)
    backend = spec[0]
    index = make(_unit(rng, 10, 8))
    path = tmp_path / VECTOR_FILES[backend]
    index.save(path)
    with pytest.raises(FileExistsError):
        index.save(path)
    again = load_vector_index(backend, path, device="cpu")
    assert (again.kind, again.params()) == (index.kind, index.params())
    q = _unit(rng, 2, 8)
    np.testing.assert_array_equal(index.search(q, 5)[1], again.search(q, 5)[1])
    np.testing.assert_allclose(index.search(q, 5)[0], again.search(q, 5)[0], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_contract_corrupt_and_missing_files(backend, tmp_path):
    (tmp_path / "bad").write_bytes(b"definitely not an index")
    with pytest.raises(IndexCorruptError):
        load_vector_index(backend, tmp_path / "bad", device="cpu")
    with pytest.raises(IndexCorruptError, match="missing"):
        load_vector_index(backend, tmp_path / "none", device="cpu")


def test_factory_refuses_an_unknown_backend():
    with pytest.raises(BadInputError, match="unknown vector index backend 'annoy'"):
        build_vector_index("annoy", np.eye(2, dtype=np.float32))


# --- FAISS against the oracle -----------------------------------------------------------------------------


def test_faiss_equals_numpy_bruteforce():
    rng = np.random.default_rng(3)
    base, queries = _unit(rng, 2000, 32), _unit(rng, 50, 32)
    fs, fr = FaissIndex.build(base, device="cpu").search(queries, 10)
    ns, nr = NumpyIndex(base).search(queries, 10)
    np.testing.assert_array_equal(fr, nr)
    np.testing.assert_allclose(fs, ns, rtol=1e-5, atol=1e-5)


def test_milvus_equals_numpy_bruteforce(milvus_target):
    """Differential: milvus-lite's FLAT collection against the oracle, the same rows in the same order."""
    rng = np.random.default_rng(3)
    base, queries = _unit(rng, 2000, 32), _unit(rng, 50, 32)
    ms, mr = build_vector_index("milvus", base, milvus=milvus_target).search(queries, 10)
    ns, nr = NumpyIndex(base).search(queries, 10)
    np.testing.assert_array_equal(mr, nr)
    np.testing.assert_allclose(ms, ns, rtol=1e-5, atol=1e-5)


def test_hnsw_finds_what_numpy_bruteforce_finds():
    """Differential, approximate: HNSW's top-10 against the oracle's on fresh queries (uniform random vectors,
    harder for a graph than real embeddings), recall >= 0.99 with the default parameters."""
    rng = np.random.default_rng(3)
    base, queries = _unit(rng, 2000, 32), _unit(rng, 50, 32)
    hs, _ = FaissIndex.build(base, device="cpu", hnsw=HnswParams()).search(queries, 10)
    ns, _ = NumpyIndex(base).search(queries, 10)
    assert recall_at_k(hs, ns) >= 0.99


def test_same_answers_on_every_backend(tmp_path):
    """A whole build on each backend (milvus: milvus-lite at <home>/milvus.db), asked the same questions: same
    results and scores."""
    from conftest import TODAY
    from kbsearch.config import Settings
    from kbsearch.embed.fake import HashEmbedder
    from kbsearch.index.builder import build_index
    from kbsearch.index.store import load_build
    from kbsearch.rerank.plan import SharedRerankPlanner
    from kbsearch.service.query import QueryEngine
    from support import SMALL_KB, one_chunk

    backends = [b for b in BACKENDS if b != "milvus" or importlib.util.find_spec("pymilvus")]
    answers = {}
    for backend in backends:
        s = Settings(home=tmp_path / backend, embed={"backend": "hash"}, index={"backend": backend},
                     decide={"threshold_vector": 0.5})
        built = build_index(s, "default", SMALL_KB[:4], [one_chunk(e) for e in SMALL_KB[:4]], HashEmbedder(dim=64), {})
        manifest = load_build(s.kb_dir("default")).manifest
        assert manifest.vector_index.backend == backend and (built.path / VECTOR_FILES[backend]).is_file()
        for stage in ("vector", "fused"):  # (hybrid ranks by rank: equal cosines may be listed in either order)
            engine = QueryEngine(s.updated(retrieve={"first_stage": stage}), HashEmbedder(dim=64),
                                 SharedRerankPlanner(None), clock=lambda: TODAY)
            engine.load()
            for q in ("如何申请退货？", "shipping time", "password 忘了"):
                a = engine.ask(q, top_k=4)
                by_score: dict[float, set[str]] = {}  # equal scores may come back in either order
                for h in a.hits:
                    by_score.setdefault(round(h.score, 5), set()).add(h.entry.id)
                answers.setdefault((stage, q), []).append((sorted(by_score.items(), reverse=True), a.answered))
            engine.close()
    for key, (first, *others) in answers.items():
        assert len(others) == len(backends) - 1 and all(other == first for other in others), key


@pytest.mark.gpu
def test_gpu_index_matches_cpu():
    if not gpu_available():
        pytest.skip("no CUDA device with faiss-gpu here")
    rng = np.random.default_rng(3)
    base, queries = _unit(rng, 1000, 64), _unit(rng, 10, 64)
    g = FaissIndex.build(base, device="cuda")
    assert g.on_gpu
    np.testing.assert_array_equal(g.search(queries, 5)[1], FaissIndex.build(base, device="cpu").search(queries, 5)[1])
