"""BM25 at scale, measured side by side: rank-bm25's ``BM25Okapi`` (what builds of earlier releases used) and
``kbsearch.lexical.bm25`` (an inverted index over the same scores), on the same rows and questions.

Rows are the texts of the shared benchmarks (questions, variants and answers of every KB, Chinese and
English), grown to the sizes asked for by joining two random texts (distinct rows, so nothing is a
copy). Questions are the benchmarks' held-out queries. Printed per size: build seconds, load seconds
(rank-bm25 rebuilds from the tokenised rows, as format 1 did; the new file is memory-mapped), search
p50/p95 per question, the speed-up, and the largest score difference between the two.

    .venv/bin/python bench/bm25_scale.py                      # 1k, 10k, 100k rows
    .venv/bin/python bench/bm25_scale.py --sizes 1000 30000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kbsearch.lexical.bm25 import BM25Index  # noqa: E402
from kbsearch.lexical.tokenize import get_tokenizer  # noqa: E402

BENCHMARKS = REPO.parent / "shared" / "benchmarks"


def texts_and_queries() -> tuple[list[str], list[str]]:
    """Every KB text (question, variants, answer) and every held-out query of the shared benchmarks."""
    texts, queries = [], []
    for kb in sorted(BENCHMARKS.glob("*/kb*.jsonl")):
        for line in kb.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row.get("question") or "", *(row.get("variants") or []), row.get("answer") or ""]
    for qf in sorted(BENCHMARKS.glob("*/queries*.jsonl")):
        queries += [json.loads(line).get("query", "") for line in qf.read_text(encoding="utf-8").splitlines()[:100]]
    return sorted({t for t in texts if t}), [q for q in queries if q]


def rows_of(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` distinct rows: the texts themselves, then random pairs of them joined."""
    rng = random.Random(seed)
    rows = list(texts[:n])
    seen = set(rows)
    while len(rows) < n:
        t = f"{rng.choice(texts)} {rng.choice(texts)}"
        if t not in seen:
            seen.add(t)
            rows.append(t)
    return rows


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def measure(size: int, texts: list[str], queries: list[str]) -> dict[str, float]:
    from rank_bm25 import BM25Okapi

    tok = get_tokenizer("char")
    rows = rows_of(texts, size)
    tokenized = [tok(r) for r in rows]
    t0 = time.perf_counter()
    old = BM25Okapi([t or ["\x00"] for t in tokenized], k1=1.5, b=0.75)
    old_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = BM25Index.from_tokens(tokenized)
    new_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        new.save(Path(tmp) / "bm25.bin")
        t0 = time.perf_counter()
        loaded = BM25Index.load(Path(tmp) / "bm25.bin")
        new_load = time.perf_counter() - t0
        old_ms, new_ms, worst = [], [], 0.0
        for q in queries:
            terms = tok(q)
            t0 = time.perf_counter()
            a = np.asarray(old.get_scores(terms), dtype=np.float32)
            np.argpartition(-a, min(50, len(a) - 1))[:50]
            old_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            loaded.search(q, 50)
            new_ms.append((time.perf_counter() - t0) * 1000)
            b = loaded.scores(q)[0]
            worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))))
    return {"rows": size, "old_build_s": old_build, "new_build_s": new_build, "new_load_s": new_load,
            "old_p50": pct(old_ms, 50), "old_p95": pct(old_ms, 95), "new_p50": pct(new_ms, 50), "new_p95": pct(new_ms, 95),
            "worst": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200, help="questions per size")
    args = ap.parse_args()
    texts, queries = texts_and_queries()
    queries = random.Random(1).sample(queries, min(args.queries, len(queries)))
    print(f"# BM25 at scale ({platform.machine()}, {platform.python_version()}); {len(texts)} distinct benchmark texts, "
          f"{len(queries)} questions\n")
    print("| rows | build s: rank-bm25 / new | new load s (mmap) | search p50 / p95 ms: rank-bm25 | new | p50 speed-up | max rel. score diff |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = measure(size, texts, queries)
        print(f"| {r['rows']:,} | {r['old_build_s']:.2f} / {r['new_build_s']:.2f} | {r['new_load_s']:.3f} | "
              f"{r['old_p50']:.1f} / {r['old_p95']:.1f} | {r['new_p50']:.2f} / {r['new_p95']:.2f} | "
              f"{r['old_p50'] / r['new_p50']:.0f}× | {r['worst']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
