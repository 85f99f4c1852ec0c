"""BM25 top-1 with character n-grams vs jieba words, on the Chinese benchmark sets, in one run.

Usage:
    python bench/bm25_tokenizers.py [--benchmarks ../shared/benchmarks]

Indexes the same rows the service indexes (question, variants, answer chunks; kb.jsonl through the
real ingest pipeline) and ranks FAQs by their best row, as the BM25 fallback path does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from kbsearch.config import Settings
from kbsearch.index.builder import make_rows
from kbsearch.ingest import run_ingest
from kbsearch.lexical.bm25 import BM25Index

REPO = Path(__file__).resolve().parents[1]
SETS = [("unionpay_faq", "kb.jsonl", "queries_dev.jsonl"), ("afqmc", "kb_dev.jsonl", "queries_dev.jsonl")]


def top1(index: BM25Index, rows, queries) -> float:
    hits = 0
    for q in queries:
        raw, _ = index.scores(q["query"])
        best = rows[int(np.argmax(raw))].faq_id if raw.max() > 0 else None
        hits += best in q["gold"]
    return hits / len(queries)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default=str(REPO.parent / "shared" / "benchmarks"))
    args = p.parse_args()
    out = []
    for name, kb, qfile in SETS:
        root = Path(args.benchmarks) / name
        with tempfile.TemporaryDirectory() as home:
            ingested = run_ingest([root / kb], Settings(home=Path(home), ingest={"dedupe": False}).ingest,
                                  answers_from_questions=True)  # afqmc is an intent set: no answers
        rows = make_rows(ingested.entries, ingested.chunks)
        queries = [json.loads(x) for x in (root / qfile).read_text(encoding="utf-8").splitlines() if x.strip()]
        queries = [q for q in queries if q["gold"]]
        for tok in ("char", "jieba"):
            t = time.perf_counter()
            index = BM25Index.build([r.text for r in rows], tokenizer=tok)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            score = top1(index, rows, queries)
            per_q = (time.perf_counter() - t) * 1000 / len(queries)
            out.append({"set": name, "tokenizer": tok, "queries": len(queries), "top1": round(score, 4),
                        "build_s": round(build_s, 2), "ms_per_query": round(per_q, 2)})
            print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main()
