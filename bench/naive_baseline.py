"""kbsearch against the naive baseline (``bench/naive_app.py``: FastAPI + FAISS, same model, same build) at 1 and
16 clients, side by side in one run: requests/s, p50, and the server's CPU per request and cores busy.

What it answers: how much of 16 clients ÷ 1 client is the plumbing's, and how much the machine's. When one
question alone already keeps most of the cores busy (ONNX Runtime spreads its forward pass over the intra-op
threads), no server can multiply its throughput by more than the idle cores plus what batching saves.

    .venv/bin/python bench/naive_baseline.py --home /tmp/perf/home-10000 --kb kb10000   # a bench/perf.py --work KB

It prints the table and writes it to ``docs/naive_baseline.md`` (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]
from loadgen import drive, percentile  # noqa: E402
from perf import Server, corpus  # noqa: E402

from kbsearch.index.store import active_build_id  # noqa: E402


def level(server: Server, clients: int, seconds: float, queries: list[str], kb: str) -> dict:
    proc = psutil.Process(server.proc.pid)
    c0, t0 = proc.cpu_times(), time.perf_counter()
    lv = drive(server.base, clients, seconds, queries, kb)
    c1, wall = proc.cpu_times(), time.perf_counter() - t0
    used = c1.user + c1.system - c0.user - c0.system
    return {"rps": len(lv.ok_ms) / seconds, "p50": percentile(lv.ok_ms, 0.5), "cores": used / wall,
            "cpu_ms": used / max(1, len(lv.ok_ms)) * 1000, "bad": len(lv.errors) + lv.degraded
            + sum(c for s, c in lv.statuses.items() if s != 200)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True, help="a KBSEARCH_HOME holding --kb")
    ap.add_argument("--kb", required=True)
    ap.add_argument("--seconds", type=float, default=15.0, help="per load level")
    ap.add_argument("--no-write", action="store_true", help="print only; do not rewrite docs/naive_baseline.md")
    args = ap.parse_args()
    _, _, queries = corpus()
    build = args.home / args.kb / "builds" / str(active_build_id(args.home / args.kb))
    env = {**os.environ, "KBSEARCH_HOME": str(args.home), "KBSEARCH_DEFAULT_KB": args.kb,
           "KBSEARCH_KB_RERANKER__AUTO_TRAIN": "false"}
    naive = [sys.executable, str(Path(__file__).with_name("naive_app.py")), "--build", str(build)]
    servers = {"kbsearch (ONNX Runtime)": None, "naive (ONNX Runtime)": naive + ["--runtime", "onnx"],
               "naive (torch)": naive + ["--runtime", "torch"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in servers.items():
            server = Server(env, Path(tmp) / "server.log", cmd)
            try:
                drive(server.base, 1, 2.0, queries, args.kb)  # warm up
                one, many = (level(server, n, args.seconds, queries, args.kb) for n in (1, 16))
            finally:
                server.close()
            rows.append(f"| {name} | {one['rps']:.1f} | {one['p50']:.0f} | {one['cores']:.2f} | {one['cpu_ms']:.0f} | "
                        f"{many['rps']:.1f} | {many['p50']:.0f} | {many['cores']:.2f} | {many['cpu_ms']:.0f} | "
                        f"**{many['rps'] / one['rps']:.2f}×** | {one['bad'] + many['bad']} |")
            print(rows[-1], flush=True)
    table = "\n".join([
        f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}. Command: `.venv/bin/python bench/naive_baseline.py {' '.join(sys.argv[1:])}` "
        f"({sum(1 for _ in open(build / 'rows.jsonl', encoding='utf-8')):,} index rows). {args.seconds:g} s per level; "
        "CPU is the server process's (the load generator runs beside it on the same cores).", "",
        "| server | 1 client req/s | p50 ms | cores | CPU ms/req | 16 clients req/s | p50 ms | cores | CPU ms/req "
        "| 16 ÷ 1 | errors + degraded |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows])
    print("\n" + table)
    if not args.no_write:
        doc = Path(__file__).resolve().parents[1] / "docs" / "naive_baseline.md"
        doc.write_text("# kbsearch against a naive FastAPI + FAISS app\n\nWritten by `bench/naive_baseline.py` (its "
                       "docstring says what it measures); regenerate it with that script rather than editing it.\n\n"
                       + table + "\n", encoding="utf-8")
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
