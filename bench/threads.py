"""e5-small with 1 vs 2 torch threads, at 1 and 4 concurrent callers, side by side in one run.

The model work of a question on the default serving path, each workload repeated by every caller (a thread):

* ``embed, own call``: ``embed_queries`` on one question per call, each caller its own call (how the vector
  workers embedded before cross-request batching);
* ``embed, batched``: through one ``QuestionBatcher``, as the vector path does now (one model thread embeds
  every question waiting in one call);
* ``rerank 10 pairs``: an e5-small cross-encoder scoring 10 (question, question) pairs of
  ``kb_reranker.max_length`` tokens, the shape of a KB's own reranker (its classifier head is untrained
  here, which costs the same);
* ``question``: embed (batched), then rerank.

Each thread count runs in its own process, configured by ``kbsearch.devices.configure_torch_threads`` as
``kbsearch serve`` does before loading models: torch's inter-op pool can be sized once per process, and a
thread keeps the intra-op count it first ran with. Questions: the dev queries of unionpay_faq (Chinese) and
banking77 (English) from ``../shared/benchmarks``, interleaved. Rounds alternate the thread counts; each cell
is the median over rounds. Prints figures, not pass/fail; ``torch_threads_for`` in ``kbsearch/devices.py``
chose "auto" from them.

    .venv/bin/python bench/threads.py                                  # threads 1,2; callers 1,4; 3 rounds of 6 s
    .venv/bin/python bench/threads.py --threads 1,2,4 --callers 1,2,4 --seconds 10 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kbsearch.config import Settings  # noqa: E402
from kbsearch.devices import configure_torch_threads, usable_cpus  # noqa: E402
from kbsearch.retrieve.batching import QuestionBatcher  # noqa: E402

BENCHMARKS = REPO.parent / "shared" / "benchmarks"


def questions() -> list[str]:
    """unionpay_faq's and banking77's dev queries, interleaved (Chinese, English, Chinese, ...)."""
    sets = []
    for name in ("unionpay_faq", "banking77"):
        lines = (BENCHMARKS / name / "queries_dev.jsonl").read_text(encoding="utf-8").splitlines()
        sets.append([json.loads(line)["query"] for line in lines])
    return [q for pair in zip(*sets, strict=False) for q in pair]


def measure(threads: int, callers: list[int], seconds: float) -> dict[str, dict[int, dict[str, float]]]:
    """In this process: configure torch, load the models, and run each workload at each caller count."""
    configure_torch_threads(threads)
    from kbsearch.embed.e5_small import E5_SMALL_DIRNAME, E5SmallEmbedder
    from kbsearch.rerank.cross_encoder import CrossEncoderReranker

    settings = Settings()
    emb = E5SmallEmbedder(settings.model_cache, device="cpu")
    emb.load()
    reranker = CrossEncoderReranker(str(settings.model_cache / E5_SMALL_DIRNAME), batch_size=settings.rerank.batch_size,
                                    max_length=settings.kb_reranker.max_length, device="cpu")
    reranker.load()
    qs = questions()
    batcher = QuestionBatcher(emb.embed_queries, settings.retrieve.question_batch)

    def rerank(i: int) -> None:
        reranker.score(qs[i % len(qs)], [qs[(i + k) % len(qs)] for k in range(1, 11)])

    workloads: dict[str, Callable[[int], object]] = {
        "embed, own call": lambda i: emb.embed_queries([qs[i % len(qs)]]),
        "embed, batched": lambda i: batcher.embed(qs[i % len(qs)]),
        "rerank 10 pairs": rerank,
        "question": lambda i: (batcher.embed(qs[i % len(qs)]), rerank(i)),
    }
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name, call in workloads.items():
        for i in range(10):
            call(i)  # warm up
        out[name] = {}
        for n in callers:
            stop = time.perf_counter() + seconds

            def run(first: int, n: int = n, stop: float = stop, call: Callable[[int], object] = call) -> list[float]:
                took, i = [], first
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    call(i)
                    took.append(time.perf_counter() - t)
                    i += n
                return took

            started = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:  # new threads: they start with the configured thread count
                took = [t for part in pool.map(run, range(n)) for t in part]
            wall = time.perf_counter() - started
            q = statistics.quantiles(took, n=100)
            out[name][n] = {"qps": len(took) / wall, "p50": q[49] * 1000, "p95": q[94] * 1000}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="torch thread counts to compare")
    ap.add_argument("--callers", default="1,4", help="concurrent callers")
    ap.add_argument("--seconds", type=float, default=6.0, help="per cell")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (thread counts alternate within each)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    callers = [int(c) for c in args.callers.split(",")]
    if args.child:
        print(json.dumps(measure(args.child, callers, args.seconds)))
        return
    threads = [int(t) for t in args.threads.split(",")]
    runs: dict[int, list[dict[str, dict[str, dict[str, float]]]]] = {t: [] for t in threads}
    for r in range(args.rounds):
        for t in threads if r % 2 == 0 else reversed(threads):
            cmd = [sys.executable, __file__, "--child", str(t), "--callers", args.callers,
                   "--seconds", str(args.seconds)]
            runs[t].append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    print(f"e5-small, {usable_cpus()} CPUs, {platform.machine()}, {args.rounds} x {args.seconds:g} s per cell "
          "(median over rounds); calls/s over all callers, latency per call")
    head = [f"{t} thread{'s' * (t > 1)}: calls/s  p50 / p95 ms" for t in threads]
    print("workload            callers | " + " | ".join(head))
    for name in runs[threads[0]][0]:
        for n in callers:
            cells = []
            for t, h in zip(threads, head, strict=True):
                med = {k: statistics.median(run[name][str(n)][k] for run in runs[t]) for k in ("qps", "p50", "p95")}
                cells.append(f"{med['qps']:8.1f}  {med['p50']:6.1f} / {med['p95']:6.1f}".ljust(len(h)))
            print(f"{name:<19} {n:>7} | " + " | ".join(cells))

if __name__ == "__main__":
    main()
