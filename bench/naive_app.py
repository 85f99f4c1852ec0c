"""The naive baseline: FastAPI + FAISS on the same e5-small and the same build as a kbsearch server.

Each question is embedded alone in FastAPI's thread pool and searched in FAISS; the best row's FAQ is the
answer. No batching, BM25, fusion, hand-off, question log, metrics or admission control: the plumbing a
real service adds is what ``bench/naive_baseline.py`` measures it against.

    .venv/bin/python bench/naive_app.py --build HOME/KB/builds/ID --port 8100 [--runtime torch]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import faiss
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from kbsearch.devices import configure_torch_threads, usable_cpus
from kbsearch.embed.e5_small import E5SmallEmbedder

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--build", type=Path, required=True, help="a build folder (vectors.faiss, rows.jsonl, entries.jsonl)")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
args = ap.parse_args()
configure_torch_threads(usable_cpus())
cache = Path(os.environ.get("KBSEARCH_MODEL_CACHE", Path.home() / ".cache" / "kbsearch" / "models"))
model = E5SmallEmbedder(cache, device="cpu", runtime=args.runtime, threads=usable_cpus())
model.load()
index = faiss.read_index(str(args.build / "vectors.faiss"))
row_faq = [json.loads(line)["faq_id"] for line in open(args.build / "rows.jsonl", encoding="utf-8")]
answers = {e["id"]: e["answer"] for e in map(json.loads, open(args.build / "entries.jsonl", encoding="utf-8"))}
app = FastAPI()


class Ask(BaseModel):
    question: str
    kb: str | None = None


@app.post("/ask")
def ask(body: Ask) -> dict:
    scores, rows = index.search(model.embed_queries([body.question]), 50)
    faq = row_faq[int(rows[0][0])]
    return {"id": faq, "answer": answers[faq], "score": float(scores[0][0]), "degraded": False}


@app.get("/healthz")
@app.get("/readyz")
def ready() -> dict:
    return {"status": "ok"}


uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
