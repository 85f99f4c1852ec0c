"""Flat vs approximate vector indexes by build size: what ``IndexSettings.approximate_above_rows`` is chosen from.

For each size, the same vectors go into the exact flat index and the HNSW index as kbsearch builds them
(``factory.build_index_by_size``, recall check included), and into an IVF index (``faiss.IndexIVFFlat``,
nlist = 4 sqrt(n), nprobe doubled from 8 until the same check passes; tried, not used). Printed side by
side: build seconds, search p50/p95 per question (k=50, one query at a time, as the service asks),
recall@50 against the flat index on held-out questions and on the build check's sample of the build's own
rows, and the index's size in bytes (its serialised form, about what it holds in memory).

The vectors are synthetic, because embedding 100k real rows takes most of an hour on 2 cores: clustered
random vectors, 384-dim and L2-normalised, built like e5-small's: a direction every text shares, a topic
(200 rows), an FAQ (8 rows: its question, variants and chunks) and the row's own part, each drawn with a
decaying spectrum (scale k^-0.35 over the dimensions, in a random basis). The parameters were set so that
the figures e5-small gives the clinc150 build (15,136 rows) come out alike: cosine of two random rows
0.800 +- 0.027 (e5: 0.799 +- 0.029); of a row and its nearest, 10th and 50th neighbour 0.966 / 0.906 /
0.891 (0.962 / 0.926 / 0.895); principal components for 50/80/90 % of the variance 36 / 129 / 213
(39 / 139 / 213). The held-out questions are further rows of the same FAQs (a paraphrase is a new row of
an FAQ the index holds). Uniform random vectors would be harder for HNSW than real embeddings, and
tighter clusters easier; this is meant to be neither.

    .venv/bin/python bench/index_by_size.py                          # 10k, 50k, 100k rows
    .venv/bin/python bench/index_by_size.py --sizes 10000 50000 100000 200000   # the README's figures
    .venv/bin/python bench/index_by_size.py --threads 2              # faiss's default on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kbsearch.config import IndexSettings  # noqa: E402
from kbsearch.index.factory import RECALL_K, RECALL_QUERIES, RECALL_SEED, build_index_by_size, recall_at_k  # noqa: E402
from kbsearch.index.faiss_backend import FaissIndex  # noqa: E402

DIM = 384
HELD_OUT = 300
ROWS_PER_FAQ = 8
ROWS_PER_TOPIC = 200
SHARED, TOPIC, FAQ, OWN = 0.80, 0.08, 0.08, 0.04  # variance of each part (they add up to 1)
DECAY = 0.35


def clustered_vectors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` L2-normalised ``DIM``-dim rows, ``ROWS_PER_FAQ`` per FAQ and ``ROWS_PER_TOPIC`` per topic (see above)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
    scale = (np.arange(1, DIM + 1) ** -DECAY).astype(np.float32)
    scale /= np.sqrt((scale**2).sum())

    def part(m: int) -> np.ndarray:
        return (rng.standard_normal((m, DIM)).astype(np.float32) * scale) @ basis

    shared = rng.standard_normal(DIM).astype(np.float32)
    shared /= np.linalg.norm(shared)
    faq = np.arange(n) // ROWS_PER_FAQ
    topic = faq * ROWS_PER_FAQ // ROWS_PER_TOPIC
    topics, faqs = part(int(topic[-1]) + 1), part(int(faq[-1]) + 1)
    x = (np.sqrt(SHARED) * shared + np.sqrt(TOPIC) * topics[topic] + np.sqrt(FAQ) * faqs[faq]
         + np.sqrt(OWN) * part(n))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def saved_bytes(index: FaissIndex) -> int:
    """The size of ``index``'s file in a build (about what it holds in memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "vectors.faiss")
        return (Path(tmp) / "vectors.faiss").stat().st_size


def per_query_ms(search, queries: np.ndarray, threads: int) -> tuple[float, float]:
    """p50 and p95 of one ``search(query, RECALL_K)`` at a time, in ms, with ``threads`` faiss threads (after 10
    warm-up queries); the thread count is put back afterwards (builds use every core, as ingest does)."""
    import faiss

    every = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        for q in queries[:10]:
            search(q[None, :], RECALL_K)
        times = []
        for q in queries:
            t0 = time.perf_counter()
            search(q[None, :], RECALL_K)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        faiss.omp_set_num_threads(every)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def ivf_index(base: np.ndarray, check: np.ndarray, exact_check: np.ndarray, min_recall: float) -> tuple[object, int, float]:
    """An ``IndexIVFFlat`` over ``base`` with the smallest nprobe (8, 16, ... 256) whose check recall reaches
    ``min_recall``; returns it, nprobe and that recall."""
    import faiss

    nlist = int(4 * np.sqrt(len(base)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(base)
    ivf.add(base)
    nprobe = 8
    while True:
        ivf.nprobe = nprobe
        recall = recall_at_k(ivf.search(check, RECALL_K)[0], exact_check)
        if recall >= min_recall or nprobe >= 256:
            return ivf, nprobe, recall
        nprobe *= 2


def measure(size: int, kinds: list[str], threads: int) -> list[dict[str, object]]:
    """One table row per index kind for a build of ``size`` rows."""
    settings = IndexSettings()
    data = clustered_vectors(size + HELD_OUT)
    rng = np.random.default_rng(1)
    held = np.zeros(size + HELD_OUT, dtype=bool)
    held[rng.choice(size + HELD_OUT, HELD_OUT, replace=False)] = True
    base, questions = data[~held], data[held]
    flat = FaissIndex.build(base, device="cpu")
    exact = flat.search(questions, RECALL_K)[0]
    sample = np.sort(np.random.default_rng(RECALL_SEED).choice(size, RECALL_QUERIES, replace=False))
    check = base[sample]
    exact_check = flat.search(check, RECALL_K)[0]
    out: list[dict[str, object]] = []
    if "flat" in kinds:
        t0 = time.perf_counter()
        FaissIndex.build(base, device="cpu")
        built = time.perf_counter() - t0
        out.append({"index": "flat", "build_s": built, "ms": per_query_ms(flat.search, questions, threads), "recall": 1.0,
                    "check": 1.0, "bytes": saved_bytes(flat), "note": "exact"})
    if "hnsw" in kinds:
        t0 = time.perf_counter()
        hnsw, choice = build_index_by_size(settings.model_copy(update={"approximate_above_rows": 1}), base)
        built = time.perf_counter() - t0
        assert isinstance(hnsw, FaissIndex) and choice.recall_check is not None
        p = hnsw.params()
        out.append({"index": hnsw.kind, "build_s": built, "ms": per_query_ms(hnsw.search, questions, threads),
                    "recall": recall_at_k(hnsw.search(questions, RECALL_K)[0], exact),
                    "check": choice.recall_check.recall, "bytes": saved_bytes(hnsw),
                    "note": f"M={p.get('m')} efC={p.get('ef_construction')} efS={p.get('ef_search')}"
                    if hnsw.kind == "hnsw" else "fell back to flat"})
    if "ivf" in kinds:
        import faiss

        t0 = time.perf_counter()
        ivf, nprobe, check_recall = ivf_index(base, check, exact_check, settings.approximate_min_recall)
        built = time.perf_counter() - t0
        out.append({"index": "ivf", "build_s": built, "ms": per_query_ms(ivf.search, questions, threads),
                    "recall": recall_at_k(ivf.search(questions, RECALL_K)[0], exact), "check": check_recall,
                    "bytes": int(faiss.serialize_index(ivf).size), "note": f"nlist={ivf.nlist} nprobe={nprobe}"})
    return out


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"], choices=["flat", "hnsw", "ivf"])
    ap.add_argument("--threads", type=int, default=1,
                    help="faiss (OpenMP) threads while searching; builds use every core (default 1)")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {faiss.omp_get_max_threads()} faiss threads available, "
          f"faiss {faiss.__version__}; search with {args.threads} thread(s); k={RECALL_K}, {HELD_OUT} held-out "
          f"questions one at a time; check = recall@{RECALL_K} on {RECALL_QUERIES} of the build's own rows; "
          f"load average {os.getloadavg()[0]:.2f}")
    header = (f"{'rows':>8}  {'index':<5}  {'build s':>8}  {'p50 ms':>7}  {'p95 ms':>7}  {'recall@50':>9}  "
              f"{'check':>6}  {'MB':>7}  note")
    print(header)
    for size in args.sizes:
        for r in measure(size, args.kinds, args.threads):
            p50, p95 = r["ms"]  # type: ignore[misc]
            print(f"{size:>8}  {r['index']:<5}  {r['build_s']:>8.2f}  {p50:>7.2f}  {p95:>7.2f}  {r['recall']:>9.4f}  "
                  f"{r['check']:>6.4f}  {r['bytes'] / 1e6:>7.1f}  {r['note']}", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
