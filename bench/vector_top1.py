"""Vector-only top-1 on a ../shared/benchmarks set, through the same query function as POST /ask.

Usage:
    python bench/vector_top1.py unionpay_faq queries_dev.jsonl [--limit N] [--backend e5-small]

Ingests the benchmark's kb.jsonl with the real ingest pipeline into a temporary KBSEARCH_HOME, builds
the index with the configured embedder, then asks every query through ``QueryEngine.ask`` with the
reranker off, and prints top-1, recall@3 (over the returned results), the answered share, and latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from kbsearch.config import Settings
from kbsearch.embed import make_embedder
from kbsearch.index.builder import build_index
from kbsearch.ingest import run_ingest
from kbsearch.service import make_engine

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("queries")
    p.add_argument("--benchmarks", default=str(REPO.parent / "shared" / "benchmarks"))
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--backend", default="e5-small")
    p.add_argument("--question-rows-as", default="query", choices=["query", "document"])
    args = p.parse_args()
    root = Path(args.benchmarks) / args.dataset
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), embed={"backend": args.backend, "question_rows_as": args.question_rows_as},
                            rerank={"backend": "none"}, ingest={"dedupe": False}, decide={"top_k": 3})
        t0 = time.perf_counter()
        ingested = run_ingest([root / "kb.jsonl"], settings.ingest, answers_from_questions=True)  # intent sets too
        built = build_index(settings, "bench", ingested.entries, ingested.chunks, make_embedder(settings), {})
        build_s = time.perf_counter() - t0
        engine = make_engine(settings)
        engine.load()
        queries = [json.loads(line) for line in (root / args.queries).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        queries = [q for q in queries if q["gold"]]
        if args.limit:
            queries = queries[: args.limit]
        top1 = r3 = answered = 0
        lat = []
        for q in queries:
            t = time.perf_counter()
            a = engine.ask(q["query"], kb="bench", top_k=3)
            lat.append((time.perf_counter() - t) * 1000)
            ids = [h.entry.id for h in a.hits]
            gold = set(q["gold"])
            top1 += bool(ids) and ids[0] in gold
            r3 += bool(gold & set(ids))
            answered += a.answered
        n = len(queries)
        lat.sort()
        print(json.dumps({
            "dataset": args.dataset, "queries": n, "backend": args.backend,
            "question_rows_as": args.question_rows_as, "rows": built.rows,
            "entries": len(ingested.entries), "top1": round(top1 / n, 4), "recall@3": round(r3 / n, 4),
            "answered_share": round(answered / n, 4), "build_seconds": round(build_s, 1),
            "latency_ms_p50": round(statistics.median(lat), 1), "latency_ms_p95": round(lat[int(0.95 * (n - 1))], 1),
        }, indent=2))


if __name__ == "__main__":
    main()
