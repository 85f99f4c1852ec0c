"""Vector search latency, FAISS flat against Milvus (milvus-lite, or a server), side by side in one run.

For each size it builds the same random unit vectors (384 dimensions, e5-small's) into a FAISS flat index and
into a Milvus ``FLAT`` collection through kbsearch's own backends (``kbsearch.index``), then times, one query
at a time as the service asks them (fresh random unit queries, the same for both):

- ``search``: the top ``k`` (50, ``RetrieveSettings.vector_top_k``);
- ``similarity``: the cosines of 40 given rows (the fused first stage's scoring of its candidates' rows:
  FAISS reads them from memory, Milvus fetches them by primary key);

and checks that both return the same rows. FAISS runs on 1 thread, as ``kbsearch serve`` sets it. The table is
written between the ``<!-- milvus_vs_faiss:start -->`` and ``<!-- milvus_vs_faiss:end -->`` markers of
``docs/milvus.md`` (the rest of the page is kept).

With ``--bm25 <benchmark folder>`` it instead compares lexical search on that set (``kb.jsonl``, ``queries_dev.jsonl``):
top-1 of kbsearch's BM25 (``char`` and ``jieba`` tokenizers) and of Milvus's built-in BM25 function with its
``jieba`` analyzer (k1 1.5, b 0.75, as ours), over the same rows (each entry's question, variants and answer, the
best row per FAQ), and how often their top-1 FAQs agree. It prints; nothing is written.

Usage:
    nice -n 10 .venv/bin/python bench/milvus_vs_faiss.py [--sizes 10000 100000] [--queries 200] [--uri URI] [--no-write]
    nice -n 10 .venv/bin/python bench/milvus_vs_faiss.py --bm25 ../shared/benchmarks/unionpay_faq
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kbsearch.index import build_vector_index
from kbsearch.index.faiss_backend import set_search_threads
from kbsearch.index.milvus_backend import MilvusTarget

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "milvus.md"
START, END = "<!-- milvus_vs_faiss:start -->", "<!-- milvus_vs_faiss:end -->"
DIM, SIMILARITY_ROWS = 384, 40


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ms(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50) * 1000), float(np.percentile(seconds, 95) * 1000)


def measure(rows: int, queries: int, k: int, target: MilvusTarget) -> dict:
    """Build both indexes over the same ``rows`` vectors and time ``queries`` single searches and similarities."""
    rng = np.random.default_rng(rows)
    base, qs = _unit(rng, rows), _unit(rng, queries)
    picks = [np.sort(rng.choice(rows, SIMILARITY_ROWS, replace=False)).tolist() for _ in range(queries)]
    out: dict = {"rows": rows}
    indexes = {}
    for backend in ("faiss", "milvus"):
        t0 = time.perf_counter()
        indexes[backend] = build_vector_index(backend, base, milvus=target if backend == "milvus" else None)
        out[f"{backend}_build_s"] = time.perf_counter() - t0
    found = {}
    for backend, index in indexes.items():
        index.search(qs[:1], k)  # warm-up
        search, similarity, rows_found = [], [], []
        for q, pick in zip(qs, picks):
            t0 = time.perf_counter()
            rows_found.append(index.search(q, k)[1][0])
            search.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            index.similarity(q, pick)
            similarity.append(time.perf_counter() - t0)
        out[f"{backend}_search"], out[f"{backend}_similarity"] = _ms(search), _ms(similarity)
        found[backend] = np.array(rows_found)
    out["same_rows"] = float((found["faiss"] == found["milvus"]).all(axis=1).mean())
    indexes["milvus"].drop()
    return out


def bm25_agreement(bench: Path) -> None:
    """Print top-1 and top-1 agreement of kbsearch's BM25 and Milvus's BM25 function on ``bench`` (see the docstring)."""
    import json

    from pymilvus import DataType, Function, FunctionType, MilvusClient

    from kbsearch.lexical.bm25 import BM25Index

    kb = [json.loads(line) for line in (bench / "kb.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    qs = [json.loads(line) for line in (bench / "queries_dev.jsonl").read_text(encoding="utf-8").splitlines()
          if line.strip()]
    rows = [(e["id"], t) for e in kb for t in (e["question"], *e.get("variants", []), e["answer"])]
    faq = [f for f, _ in rows]
    top1: dict[str, list[str | None]] = {}
    for tokenizer in ("char", "jieba"):
        index = BM25Index.build([t for _, t in rows], tokenizer=tokenizer)
        top1[f"kbsearch {tokenizer}"] = [next((faq[r] for r in index.search(q["query"], 1).rows), None) for q in qs]
    with tempfile.TemporaryDirectory(prefix="kbsearch-bm25-") as tmp:
        client = MilvusClient(str(Path(tmp) / "bm25.db"))
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True,
                         analyzer_params={"tokenizer": "jieba"})
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                     output_field_names=["sparse"]))
        params = client.prepare_index_params()
        params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                         params={"bm25_k1": 1.5, "bm25_b": 0.75})
        client.create_collection("bm25", schema=schema, index_params=params)
        client.insert("bm25", [{"row": i, "text": t} for i, (_, t) in enumerate(rows)])
        client.flush("bm25")
        client.load_collection("bm25")
        found, seconds = [], []
        for q in qs:
            t0 = time.perf_counter()
            hits = client.search("bm25", data=[q["query"]], anns_field="sparse", limit=1, output_fields=["row"])[0]
            seconds.append(time.perf_counter() - t0)
            found.append(faq[hits[0]["row"]] if len(hits) else None)
        top1["milvus jieba"] = found
    gold = [set(q["gold"]) for q in qs]
    print(f"{bench.name}: {len(qs)} questions, {len(rows)} rows; Milvus BM25 search p50 {_ms(seconds)[0]:.1f} ms")
    for name, got in top1.items():
        print(f"| {name} | top-1 {np.mean([f in g for f, g in zip(got, gold)]):.3f} |")
    names = list(top1)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"top-1 agreement {a} / {b}: {np.mean([x == y for x, y in zip(top1[a], top1[b])]):.3f}")


def render(results: list[dict], args: argparse.Namespace, where: str) -> str:
    lines = [
        f"Measured by `bench/milvus_vs_faiss.py` on {dt.date.today()} on {platform.machine()}, {os.cpu_count()} cores "
        f"(shared), Python {platform.python_version()}; Milvus: {where}. Command: "
        f"`nice -n 10 .venv/bin/python bench/milvus_vs_faiss.py --sizes {' '.join(map(str, args.sizes))} "
        f"--queries {args.queries}`. Random unit vectors, {DIM} dimensions; one query at a time, k={args.k}; FAISS flat on "
        f"1 thread; Milvus `FLAT` with `IP`. `similarity` = cosines of {SIMILARITY_ROWS} given rows (the fused stage's "
        "scoring). `same rows` = share of queries whose top-k rows are identical in the same order.",
        "",
        "| rows | FAISS search p50 / p95 ms | Milvus search p50 / p95 ms | FAISS similarity p50 / p95 ms | "
        "Milvus similarity p50 / p95 ms | same rows | build s FAISS / Milvus |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['faiss_search'][0]:.2f} / {r['faiss_search'][1]:.2f} | "
            f"{r['milvus_search'][0]:.2f} / {r['milvus_search'][1]:.2f} | "
            f"{r['faiss_similarity'][0]:.3f} / {r['faiss_similarity'][1]:.3f} | "
            f"{r['milvus_similarity'][0]:.2f} / {r['milvus_similarity'][1]:.2f} | {r['same_rows']:.3f} | "
            f"{r['faiss_build_s']:.2f} / {r['milvus_build_s']:.1f} |")
    return "\n".join(lines)


def write(table: str) -> None:
    """Put ``table`` between the markers of ``docs/milvus.md`` (appended with them when the page has none)."""
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Milvus backend\n"
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--uri", default="", help="a Milvus server (http://host:19530); default: milvus-lite in a temp folder")
    ap.add_argument("--no-write", action="store_true", help=f"print only; do not rewrite the table in {DOC.name}")
    ap.add_argument("--bm25", type=Path, help="compare Milvus's BM25 with kbsearch's on this benchmark folder instead")
    args = ap.parse_args()
    if args.bm25:
        bm25_agreement(args.bm25)
        return
    set_search_threads(1)
    with tempfile.TemporaryDirectory(prefix="kbsearch-milvus-") as tmp:
        uri = args.uri or str(Path(tmp) / "bench.db")
        target = MilvusTarget(uri=uri, prefix="kbsearch_bench")
        where = f"server at {uri}" if args.uri else "milvus-lite (embedded, in-process gRPC), a local .db"
        results = []
        for rows in args.sizes:
            print(f"{rows} rows…", file=sys.stderr, flush=True)
            results.append(measure(rows, args.queries, args.k, target))
            print(render(results, args, where), flush=True)
    if not args.no_write:
        write(render(results, args, where))
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
