"""What the reranker adds per question, at several candidate counts, measured in one run.

Usage:
    python bench/rerank_latency.py --kb NAME --queries FILE [--model DIR] [--counts 10,20,50] [--limit 100]

For each question, the served first stage (reranker off) picks the candidates; then the reranker
scores the top k of them, for every k in ``--counts``, as the query path would (the ``kb`` reranker
reads the matched question or variant). ``--model`` defaults to the KB's own trained reranker
(``indexes/<kb>/rerankers``, its self-check ignored). Prints p50/p95/max milliseconds per question
and the ratio to the smallest count, plus the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from kbsearch.config import Settings
from kbsearch.eval import load_queries
from kbsearch.rerank.cross_encoder import CrossEncoderReranker
from kbsearch.rerank.kb import KB_RERANKER_DOC, active_kb_reranker
from kbsearch.rerank.text import reranker_text
from kbsearch.service import make_engine
from kbsearch.service.query import QueryEngine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kb", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--model", default="")
    p.add_argument("--counts", default="10,20,50")
    p.add_argument("--limit", type=int, default=100)
    args = p.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    settings = Settings(rerank={"backend": "none", "top_k": max(counts)}, retrieve={"vector_top_k": max(50, *counts)})
    model_dir = args.model or str(active_kb_reranker(settings.kb_dir(args.kb), force=True)[0] or "")
    if not model_dir:
        raise SystemExit(f"no reranker for kb {args.kb!r}: pass --model DIR")
    model = CrossEncoderReranker(model_dir, batch_size=settings.rerank.batch_size,
                                 max_length=settings.kb_reranker.max_length, device=settings.device)
    model.load()
    engine: QueryEngine = make_engine(settings)
    engine.load(args.kb)
    queries = load_queries(Path(args.queries), limit=args.limit)
    times: dict[int, list[float]] = {k: [] for k in counts}
    scored: dict[int, list[int]] = {k: [] for k in counts}  # a KB can offer fewer FAQs than k
    for q in queries:
        answer = engine.ask(q.query, kb=args.kb, top_k=max(counts), explain=True)
        rows = {h.entry.id: h for h in answer.hits}
        # What the kb reranker reads (KB_RERANKER_DOC = question): the matched question or variant.
        docs = [reranker_text(rows[i].entry, rows[i].matched, KB_RERANKER_DOC, {})
                for i in answer.candidates[: max(counts)] if i in rows]
        for k in counts:
            t = time.perf_counter()
            model.score(q.query, docs[:k])
            times[k].append((time.perf_counter() - t) * 1000)
            scored[k].append(len(docs[:k]))
    engine.close()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"reranker {model_dir} on kb {args.kb!r}, {len(queries)} questions, {platform.machine()} {cores} CPU, "
          f"device {settings.device}")
    base = float(np.percentile(times[counts[0]], 95))
    for k in counts:
        t = np.array(times[k])
        print(f"  {k:>3} candidates (mean {np.mean(scored[k]):4.1f} scored): p50 {np.percentile(t, 50):7.1f} ms  p95 {np.percentile(t, 95):7.1f} ms  "
              f"max {t.max():7.1f} ms  (p95 x{np.percentile(t, 95) / base:.1f} of {counts[0]})")


if __name__ == "__main__":
    main()
