"""The bundled e5-small under torch, ONNX Runtime fp32 and ONNX Runtime int8, side by side in one run.

The default CPU runtime (``embed.runtime``) was chosen from this script's figures. Printed per runtime:

- agreement with torch: the minimum and mean cosine between each runtime's vector and torch's, over
  held-out questions of every benchmark (``query: ``) and answers (``passage: ``);
- speed: questions/s embedding one question per call (the service at one client) and 16 per call (a
  busy service's batches), and answers/s at ingest's batching (all at once, sorted by length);
- retrieval: vector top-1 (best row cosine per FAQ: question, variant and answer rows) on the held-in
  sets small enough to embed here in a minute (unionpay_faq, stackfaq, clinc150), and its change from torch.

int8 is ONNX Runtime's dynamic quantisation (``quantize_dynamic``, QInt8 weights) of the fp32 export,
made in a temporary folder. Threads: every usable CPU for both runtimes.

    .venv/bin/python bench/onnx_runtime.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BENCHMARKS = REPO.parent / "shared" / "benchmarks"
SETS = [("unionpay_faq", "queries_dev.jsonl"), ("stackfaq", "queries_all.jsonl"), ("clinc150", "queries_val.jsonl")]


def held_out_questions(n: int) -> list[str]:
    qs = [json.loads(line)["query"] for f in sorted(BENCHMARKS.glob("*/queries*.jsonl"))
          for line in f.read_text(encoding="utf-8").splitlines()]
    return random.Random(0).sample(qs, n)


def top1(embed_q, embed_d, name: str, qfile: str) -> float:
    """Vector top-1 on a held-in set: each question's FAQ = the FAQ of its best row (question, variants, answer)."""
    rows, owner = [], []
    for line in (BENCHMARKS / name / "kb.jsonl").read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        for t in [e["question"], *(e.get("variants") or [])]:
            rows.append(("q", t))
            owner.append(e["id"])
        if e.get("answer") and e["answer"] != e["question"]:
            rows.append(("d", e["answer"]))
            owner.append(e["id"])
    qv = [i for i, (k, _) in enumerate(rows) if k == "q"]
    dv = [i for i, (k, _) in enumerate(rows) if k == "d"]
    vecs = np.zeros((len(rows), 384), dtype=np.float32)
    vecs[qv] = embed_q([rows[i][1] for i in qv])
    if dv:
        vecs[dv] = embed_d([rows[i][1] for i in dv])
    queries = [json.loads(line) for line in (BENCHMARKS / name / qfile).read_text(encoding="utf-8").splitlines()]
    queries = [q for q in queries if q.get("gold")]
    best = (embed_q([q["query"] for q in queries]) @ vecs.T).argmax(axis=1)
    return float(np.mean([owner[b] in q["gold"] for b, q in zip(best, queries)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=320)
    ap.add_argument("--no-top1", action="store_true", help="skip the retrieval check (speed and agreement only)")
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from kbsearch.devices import configure_torch_threads, usable_cpus
    from kbsearch.embed.e5_small import E5SmallEmbedder
    from kbsearch.embed.onnx import ONNX_FILE, OnnxEncoder, export_bert_onnx

    threads = usable_cpus()
    configure_torch_threads(threads)
    cache = Path(os.environ.get("KBSEARCH_MODEL_CACHE", Path.home() / ".cache" / "kbsearch" / "models"))
    torch_emb = E5SmallEmbedder(cache, device="cpu", runtime="torch")
    onnx_emb = E5SmallEmbedder(cache, device="cpu", runtime="onnx", threads=threads)
    torch_emb.load()
    onnx_emb.load()
    folder = Path(torch_emb.model)
    tmp = Path(tempfile.mkdtemp(prefix="kbsearch-int8-"))
    for f in folder.iterdir():  # the tokenizer files beside an int8 copy of the export
        if f.is_file():
            (tmp / f.name).symlink_to(f)
    plain = Path(tempfile.mkdtemp(prefix="kbsearch-fp32-"))
    for f in folder.iterdir():  # torch's plain export (the folder's is ONNX Runtime's optimised graph)
        if f.is_file():
            (plain / f.name).symlink_to(f)
    export_bert_onnx(plain, optimize=False)
    (tmp / "onnx").mkdir()
    t = time.perf_counter()
    quantize_dynamic(str(plain / ONNX_FILE), str(tmp / ONNX_FILE), weight_type=QuantType.QInt8)
    quant_s = time.perf_counter() - t
    shutil.rmtree(plain)
    int8_emb = E5SmallEmbedder(cache, device="cpu", runtime="onnx", threads=threads)
    int8_emb.load()
    int8_emb._st = OnnxEncoder(tmp, threads=threads, optimized=False)  # same embedder, int8 weights
    runtimes = {"torch": torch_emb, "onnx fp32": onnx_emb, "onnx int8": int8_emb}

    qs = held_out_questions(args.questions)
    docs = [json.loads(line).get("answer") or "" for line in
            (BENCHMARKS / "unionpay_faq" / "kb.jsonl").read_text(encoding="utf-8").splitlines()][:256]
    ref_q, ref_d = torch_emb.embed_queries(qs), torch_emb.embed_documents(docs)
    results = {}
    for name, emb in runtimes.items():
        r = results[name] = {}
        cos = np.concatenate([(emb.embed_queries(qs) * ref_q).sum(1), (emb.embed_documents(docs) * ref_d).sum(1)])
        r["cos_min"], r["cos_mean"] = float(cos.min()), float(cos.mean())
        for batch in (1, 16):
            for i in range(0, 32, batch):
                emb.embed_queries(qs[i : i + batch])
            t = time.perf_counter()
            for i in range(0, len(qs), batch):
                emb.embed_queries(qs[i : i + batch])
            r[f"q{batch}"] = len(qs) / (time.perf_counter() - t)
        t = time.perf_counter()
        emb.embed_documents(docs)
        r["docs"] = len(docs) / (time.perf_counter() - t)
        if not args.no_top1:
            r["top1"] = {s: top1(emb.embed_queries, emb.embed_documents, s, qf) for s, qf in SETS}
        print(name, json.dumps(r), flush=True)

    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{time.strftime('%Y-%m-%d')}. Threads {threads}. {len(qs)} held-out questions, {len(docs)} unionpay answers; "
          f"int8 quantisation took {quant_s:.0f} s.\n")
    head = "| runtime | cosine to torch min / mean | 1 question per call, q/s | 16 per call, q/s | answers/s (ingest batching) |"
    sets = [] if args.no_top1 else [s for s, _ in SETS]
    print(head + "".join(f" {s} top-1 (Δ torch) |" for s in sets))
    print("|---" * (5 + len(sets)) + "|")
    base = results["torch"]
    for name, r in results.items():
        line = (f"| {name} | {r['cos_min']:.5f} / {r['cos_mean']:.5f} | {r['q1']:.1f} ({r['q1'] / base['q1']:.2f}×) | "
                f"{r['q16']:.1f} ({r['q16'] / base['q16']:.2f}×) | {r['docs']:.1f} ({r['docs'] / base['docs']:.2f}×) |")
        line += "".join(f" {r['top1'][s]:.3f} ({r['top1'][s] - base['top1'][s]:+.3f}) |" for s in sets)
        print(line)


if __name__ == "__main__":
    main()
