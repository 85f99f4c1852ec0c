"""FAISS against the numpy brute-force oracle, persistence, and refusal to overwrite live files."""

from __future__ import annotations

import numpy as np
import pytest

from kbsearch.errors import IndexCorruptError
from kbsearch.index.vector import FaissIndex, NumpyIndex, VectorIndex


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", [FaissIndex.build, NumpyIndex])
def test_contract(backend):
    rng = np.random.default_rng(0)
    index = backend(_unit(rng, 40, 16))
    assert isinstance(index, VectorIndex)
    scores, rows = index.search(_unit(rng, 3, 16), 100)  # k larger than the index is clamped
    assert scores.shape == rows.shape == (3, 40)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_faiss_equals_bruteforce():
    rng = np.random.default_rng(1)
    base, queries = _unit(rng, 500, 32), _unit(rng, 20, 32)
    fs, fr = FaissIndex.build(base, device="cpu").search(queries, 10)
    ns, nr = NumpyIndex(base).search(queries, 10)
    np.testing.assert_array_equal(fr, nr)
    np.testing.assert_allclose(fs, ns, rtol=1e-5, atol=1e-5)


def test_save_load_and_no_overwrite(tmp_path):
    rng = np.random.default_rng(2)
    index = FaissIndex.build(_unit(rng, 10, 8), device="cpu")
    index.save(tmp_path / "v.faiss")
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "v.faiss")
    again = FaissIndex.load(tmp_path / "v.faiss", device="cpu")
    q = _unit(rng, 1, 8)
    np.testing.assert_array_equal(index.search(q, 5)[1], again.search(q, 5)[1])


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "bad.faiss").write_bytes(b"definitely not faiss")
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(tmp_path / "bad.faiss", device="cpu")
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(tmp_path / "none.faiss", device="cpu")


def test_dimension_mismatch_is_an_error():
    index = FaissIndex.build(np.eye(4, dtype=np.float32), device="cpu")
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones((1, 3), dtype=np.float32), 1)


@pytest.mark.gpu
def test_gpu_index_matches_cpu():
    from kbsearch.index.vector import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA device with faiss-gpu here")
    rng = np.random.default_rng(3)
    base, queries = _unit(rng, 1000, 64), _unit(rng, 10, 64)
    g = FaissIndex.build(base, device="cuda")
    assert g.on_gpu
    np.testing.assert_array_equal(g.search(queries, 5)[1], FaissIndex.build(base, device="cpu").search(queries, 5)[1])
