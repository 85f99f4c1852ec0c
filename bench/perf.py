"""Performance by knowledge-base size, measured side by side in one run and written to ``docs/performance.md``.

For each size (index rows: ~1k, ~10k, ~100k by default) a KB is made from the shared benchmarks' texts
(questions, variants and answers of every benchmark KB, Chinese and English; once those run out, two
random texts joined, so every entry is distinct and dedupe keeps it), ingested by the real CLI into its
own home, and served by a real ``kbsearch serve`` on loopback. Printed per size:

- ingest: rows, seconds, embedding rows/s inside ingest next to the bare model's rows/s on the same texts;
- cold start (process start to ``/readyz`` 200; in brackets, the part a new process spends importing what the
  server imports: kbsearch, FastAPI, onnxruntime, FAISS, tokenizers; torch too with embed.runtime=torch) and the
  server's RSS after the load;
- ``/ask`` at 1, 4 and 16 clients (the benchmarks' held-out questions): requests/s, p50/p95/p99 and the
  answers degraded; the median of each stage's time (``timings_ms``);
- the bare path in this process: embed one question + FAISS top-50, p50/p95, and /ask p50 ÷ that p50;
- BM25 only (a second server with ``retrieve.first_stage=bm25``), 1 client: p50/p95.

The KB reranker is not trained (``kb_reranker.auto_train=false``): these are the first stage's figures.

    .venv/bin/python bench/perf.py                         # 1k, 10k, 100k rows; writes docs/performance.md
    .venv/bin/python bench/perf.py --sizes 1000 --seconds 5 --no-write
    .venv/bin/python bench/perf.py --work /tmp/perf   # keeps the KBs; a rerun serves them again without ingesting
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from loadgen import drive, percentile  # noqa: E402

BENCHMARKS = REPO.parent / "shared" / "benchmarks"
CLI = [sys.executable, "-m", "kbsearch.cli"]


def corpus() -> tuple[list[str], list[str], list[str]]:
    """(distinct question-like texts, distinct answers, held-out questions) of the shared benchmarks."""
    texts, answers, queries = set(), set(), []
    for kb in sorted(BENCHMARKS.glob("*/kb*.jsonl")):
        for line in kb.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.update(t for t in [row.get("question"), *(row.get("variants") or [])] if t)
            if row.get("answer"):
                answers.add(row["answer"])
    for qf in sorted(BENCHMARKS.glob("*/queries*.jsonl")):
        queries += [json.loads(line)["query"] for line in qf.read_text(encoding="utf-8").splitlines()[:200]]
    return sorted(texts), sorted(answers), queries


def kb_rows(rows: int, texts: list[str], answers: list[str], seed: int = 0, answer_chars: int = 0) -> list[dict]:
    """FAQ entries of about ``rows`` index rows: a question, 2 variants and a one-chunk answer each (4 rows).

    ``answer_chars`` > 0 cuts each answer to that many characters (ingest time grows with the answers'
    length; the query path does not depend on it)."""
    rng = random.Random(seed)
    pool = texts[:]
    rng.shuffle(pool)
    seen = set(pool)

    def text(i: int) -> str:
        while i >= len(pool):
            t = f"{rng.choice(texts)} {rng.choice(texts)}"
            if t not in seen:
                seen.add(t)
                pool.append(t)
        return pool[i]

    return [{"id": f"e{i}", "question": text(3 * i), "variants": [text(3 * i + 1), text(3 * i + 2)],
             "answer": f"{answers[i % len(answers)][:answer_chars or None]}（条目 {i}）"} for i in range(max(1, rows // 4))]


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """``kbsearch serve`` (or ``cmd`` + ``--port``) on a free loopback port; ``cold_start_s`` until ``/readyz`` answered 200."""

    def __init__(self, env: dict[str, str], log: Path, cmd: list[str] | None = None) -> None:
        self.port = _port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen((cmd or CLI + ["serve"]) + ["--port", str(self.port)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {log}")
            try:
                if httpx.get(self.base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.cold_start_s = time.perf_counter() - t0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


SEE_ALSO = """
Other backends, each measured side by side with the default by its own script:

- The Milvus vector backend against FAISS (search and similarity latency, one query at a time, 10k and 100k rows):
  `bench/milvus_vs_faiss.py`, in [milvus.md](milvus.md#latency-against-faiss).
- Models on a model server (Infinity, OpenAI-compatible) against in process: `bench/remote_models.py`, in
  [remote_models.md](remote_models.md).
"""
"""What ``docs/performance.md`` ends with: where the other backends' figures are."""

IMPORTS = "import kbsearch.cli; from kbsearch.api.app import create_app; import onnxruntime, faiss, tokenizers"
"""What ``kbsearch serve`` imports before it can answer with e5-small on ONNX Runtime (the CPU default): torch and
transformers are not imported unless a model needs them."""
TORCH_IMPORTS = "; import torch, transformers, sentence_transformers"
"""What it imports besides with ``embed.runtime=torch``."""


def imports_s(env: dict[str, str]) -> float:
    """Seconds a new Python process takes to import what the server imports (best of 3, warm page cache)."""
    code = IMPORTS + (TORCH_IMPORTS if env.get("KBSEARCH_EMBED__RUNTIME") == "torch" else "")
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def bare_path(home: Path, kb: str, queries: list[str], cache: str, runtime: str = "auto") -> tuple[list[float], float]:
    """Embed one question + FAISS top-50 in this process: ms per question, and the bare model's rows/s."""
    from kbsearch.embed.e5_small import E5SmallEmbedder
    from kbsearch.index.store import load_build

    emb = E5SmallEmbedder(Path(cache), device="cpu", runtime=runtime)
    emb.load()
    build = load_build(home / kb, device="cpu")
    for q in queries[:5]:
        build.vectors.search(emb.embed_queries([q]), 50)
    ms = []
    for q in queries:
        t = time.perf_counter()
        build.vectors.search(emb.embed_queries([q]), 50)
        ms.append((time.perf_counter() - t) * 1000)
    texts = [r.text for r in build.rows[:2000]]
    t = time.perf_counter()
    emb._encoder_for(len(texts)).encode(texts, prompt=emb.query_prompt, batch_size=emb.batch_size, show_progress_bar=False)
    return ms, len(texts) / (time.perf_counter() - t)


def measure(rows: int, seconds: float, clients: list[int], data: tuple, work: Path, env: dict[str, str],
            answer_chars: int = 0) -> dict:
    texts, answers, queries = data
    home, kb = work / f"home-{rows}", f"kb{rows}"
    faqs = work / f"faqs-{rows}.jsonl"
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kb_rows(rows, texts, answers, answer_chars=answer_chars))
    env = {**env, "KBSEARCH_HOME": str(home), "KBSEARCH_DEFAULT_KB": kb}
    reuse = (faqs.is_file() and faqs.read_text(encoding="utf-8") == text and (home / kb / "ACTIVE").is_file()
             and (work / f"ingest-{rows}.json").is_file())
    if reuse:  # --work: the same KB was ingested there before; serve that build (no ingest figures this run)
        summary = json.loads((work / f"ingest-{rows}.json").read_text(encoding="utf-8"))
        ingest_s = embed_s = float("nan")
    else:
        faqs.write_text(text, encoding="utf-8")
        shutil.rmtree(home, ignore_errors=True)
        t = time.perf_counter()
        ingest = subprocess.run(CLI + ["ingest", str(faqs), "--kb", kb, "--json"], env=env, capture_output=True,
                                text=True, check=True)
        ingest_s = time.perf_counter() - t
        (work / f"ingest-{rows}.json").write_text(ingest.stdout, encoding="utf-8")
        summary = json.loads(ingest.stdout)
        embed_s = summary["report"]["stage_seconds"].get("embed") or float("nan")
    out = {"rows": summary["rows"], "entries": summary["report"].get("kept"), "ingest_s": ingest_s,
           "ingest_rows_s": summary["rows"] / embed_s, "reused": reuse, "levels": {}}
    out["imports_s"] = imports_s(env)
    server = Server(env, work / f"serve-{rows}.log")
    try:
        out["cold_start_s"] = server.cold_start_s
        drive(server.base, 1, 2.0, queries, kb)  # warm up
        for n in clients:
            level = drive(server.base, n, seconds, queries, kb)
            out["levels"][n] = {
                "rps": len(level.ok_ms) / seconds, "p50": percentile(level.ok_ms, 0.5), "p95": percentile(level.ok_ms, 0.95),
                "p99": percentile(level.ok_ms, 0.99), "degraded": level.degraded, "other": sum(
                    c for s, c in level.statuses.items() if s != 200) + len(level.errors),
                "stages": {k: percentile(v, 0.5) for k, v in level.stages_ms.items()}}
        out["rss_mb"] = _rss_mb(server.proc.pid)
    finally:
        server.close()
    bm25 = Server({**env, "KBSEARCH_RETRIEVE__FIRST_STAGE": "bm25"}, work / f"serve-bm25-{rows}.log")
    try:
        drive(bm25.base, 1, 1.0, queries, kb)
        level = drive(bm25.base, 1, seconds, queries, kb)
        out["bm25"] = {"p50": percentile(level.ok_ms, 0.5), "p95": percentile(level.ok_ms, 0.95)}
    finally:
        bm25.close()
    # the same mix of questions the clients draw from (the first 200 would be one benchmark's, all short)
    bare_ms, bare_rows_s = bare_path(home, kb, random.Random(0).sample(queries, min(200, len(queries))),
                                     env["KBSEARCH_MODEL_CACHE"], env.get("KBSEARCH_EMBED__RUNTIME", "auto"))
    out["bare"] = {"p50": percentile(bare_ms, 0.5), "p95": percentile(bare_ms, 0.95)}
    out["bare_rows_s"] = bare_rows_s
    return out


def render(results: list[dict], args: argparse.Namespace, env: dict[str, str]) -> str:
    settings = ", ".join(f"{k.removeprefix('KBSEARCH_')}={v}" for k, v in sorted(env.items())
                         if k.startswith("KBSEARCH_") and k not in ("KBSEARCH_HOME", "KBSEARCH_MODEL_CACHE"))
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d')}. Command: `.venv/bin/python bench/perf.py {' '.join(sys.argv[1:])}`. "
             f"Settings: {settings or 'defaults'}; e5-small on the CPU, fused first stage, no KB reranker trained. "
             f"{args.seconds:g} s per load level. Answers "
             f"{f'cut to {args.answer_chars} characters' if args.answer_chars else 'whole'}.", "",
             "| rows | ingest s | ingest rows/s (bare model) | cold start s (imports) | RSS MB | clients | req/s | /ask p50 / p95 / p99 ms "
             "| degraded | bare embed+search p50 / p95 ms | /ask p50 ÷ bare p50 | BM25-only p50 / p95 ms | stage medians ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for i, (n, lv) in enumerate(r["levels"].items()):
            ingest = (f"reused | – ({r['bare_rows_s']:.0f})" if r.get("reused") else
                      f"{r['ingest_s']:.0f} | {r['ingest_rows_s']:.0f} ({r['bare_rows_s']:.0f})")
            head = (f"| {r['rows']:,} | {ingest} | "
                    f"{r['cold_start_s']:.1f} ({r['imports_s']:.1f}) | {r['rss_mb']:.0f} |") if i == 0 else "| | | | | |"
            bare = f"{r['bare']['p50']:.1f} / {r['bare']['p95']:.1f}" if i == 0 else ""
            ratio = f"{lv['p50'] / r['bare']['p50']:.2f}" if n == 1 else ""
            bm25 = f"{r['bm25']['p50']:.1f} / {r['bm25']['p95']:.1f}" if i == 0 else ""
            stages = ", ".join(f"{k} {v:.1f}" for k, v in sorted(lv["stages"].items()) if k != "total")
            refused = f" (+{lv['other']} not 200)" if lv["other"] else ""
            lines.append(f"{head} {n} | {lv['rps']:.1f}{refused} | {lv['p50']:.0f} / {lv['p95']:.0f} / {lv['p99']:.0f} | "
                         f"{lv['degraded']} | {bare} | {ratio} | {bm25} | {stages} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000], help="index rows per KB")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=15.0, help="per load level")
    ap.add_argument("--answer-chars", type=int, default=0, help="cut answers to this many characters (0 = whole)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not rewrite docs/performance.md")
    ap.add_argument("--set", nargs="*", default=[], metavar="KBSEARCH_X=Y", help="settings for the servers")
    ap.add_argument("--work", type=Path, help="keep the KBs in this folder and serve a size's earlier build there "
                    "when its FAQ file is the same (ingest is then not measured: 'reused'); default: a temporary folder")
    args = ap.parse_args()
    data = corpus()
    cache = os.environ.get("KBSEARCH_MODEL_CACHE", str(Path.home() / ".cache" / "kbsearch" / "models"))
    env = {**os.environ, "KBSEARCH_KB_RERANKER__AUTO_TRAIN": "false", "KBSEARCH_MODEL_CACHE": cache,
           **dict(s.split("=", 1) for s in args.set)}
    results = []
    with tempfile.TemporaryDirectory(prefix="kbsearch-perf-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for rows in args.sizes:
            results.append(measure(rows, args.seconds, args.clients, data, work, env, args.answer_chars))
            print(render(results, args, {k: v for k, v in env.items() if k.startswith("KBSEARCH_")}), flush=True)
    table = render(results, args, {k: v for k, v in env.items() if k.startswith("KBSEARCH_")})
    if not args.no_write:
        doc = REPO / "docs" / "performance.md"
        doc.write_text("# Performance by knowledge-base size\n\nWritten by `bench/perf.py` (its docstring says what each "
                       "column measures); regenerate it with that script rather than editing it.\n\n" + table + "\n"
                       + SEE_ALSO, encoding="utf-8")
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
