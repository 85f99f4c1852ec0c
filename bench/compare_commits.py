"""Quality and per-question latency of this checkout against an earlier commit, side by side in one run.

Usage:
    python bench/compare_commits.py --base COMMIT [--home DIR] [--limit 600] [--rounds 2] [--json OUT]

The earlier commit is checked out into a temporary git worktree. Each benchmark set's KB is ingested
once, by the earlier commit's ``kbsearch ingest`` (its KB reranker trained as it would be), into one
home both checkouts then read: the same builds, the same trained rerankers, the same questions. Then
``kbsearch eval --kb SET`` runs with each checkout's code (``PYTHONPATH``), alternating the order each
round (base, head, head, base, ...) so that a drifting machine load falls on both. Both use this
interpreter and its installed libraries. Prints, per set and configuration, top-1 / recall@3 /
recall@50 / MRR@10 of both (they must agree) and the median over rounds of each side's per-question
p50 and p95 latency, with the ratio head / base.

``--home`` reuses a home already ingested by the base commit (skips the ingest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = [("unionpay_faq", "queries_dev.jsonl"), ("banking77", "queries_dev.jsonl"),
        ("clinc150", "queries_val.jsonl"), ("stackfaq", "queries_all.jsonl")]
FIGURES = ("top1", "recall_at_3", "recall_at_50", "mrr_at_10")


def _run(code: Path, args: list[str], home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "KBSEARCH_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "kbsearch.cli", *args], env=env, check=True, cwd=code,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the earlier commit")
    p.add_argument("--benchmarks", default=str(REPO.parent / "shared" / "benchmarks"))
    p.add_argument("--home", help="a home the base commit already ingested every set into (KB named as the set)")
    p.add_argument("--limit", type=int, default=600, help="questions per set (0 = all)")
    p.add_argument("--rounds", type=int, default=2, help="eval runs per checkout and set")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kbsearch-compare-"))
    base = work / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base], check=True,
                   capture_output=True)
    try:
        home = Path(args.home) if args.home else work / "home"
        results: dict = {}
        for name, qfile in SETS:
            bench = Path(args.benchmarks) / name
            if not args.home:
                print(f"{name}: ingesting with {args.base}…", file=sys.stderr, flush=True)
                _run(base, ["ingest", str(sorted(bench.glob("kb*.jsonl"))[0]), "--kb", name], home)
            runs: dict[str, list[dict]] = {"base": [], "head": []}
            for r in range(args.rounds):
                order = [("base", base), ("head", REPO)] if r % 2 == 0 else [("head", REPO), ("base", base)]
                for side, code in order:
                    out = work / f"{name}-{side}-{r}.json"
                    _run(code, ["eval", "--kb", name, "--queries", str(bench / qfile), "--limit", str(args.limit),
                                "--json", str(out)], home)
                    runs[side].append({c["name"]: c for c in json.loads(out.read_text())["results"]})
                    print(f"{name} round {r} {side} done", file=sys.stderr, flush=True)
            results[name] = runs
        print(render(results, args))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)


def render(results: dict, args: argparse.Namespace) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"base {args.base} vs head (this checkout), {args.limit or 'all'} questions per set, {args.rounds} rounds "
             f"each, {platform.machine()} {cores} CPU, Python {platform.python_version()}", "",
             "| set | config | top-1 base / head | R@3 | R@50 | MRR@10 | p50 ms base / head (ratio) | p95 ms base / head |",
             "|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for name, runs in results.items():
        for config in runs["base"][0]:
            b, h = runs["base"][0][config], runs["head"][0].get(config)
            if h is None:
                lines.append(f"| {name} | {config} | only in base | | | | | |")
                continue
            figs = [f"{b[f]:.3f} / {h[f]:.3f}" + ("" if abs(b[f] - h[f]) <= 0.002 else " DIFFERS") for f in FIGURES]

            def lat(side: str, q: str) -> float:
                return statistics.median(run[config]["latency_ms"]["total"][q] for run in runs[side])

            ratio = lat("head", "p50") / lat("base", "p50")
            worst = max(worst, ratio)
            lines.append(f"| {name} | {config} | {' | '.join(figs)} | {lat('base', 'p50'):.1f} / {lat('head', 'p50'):.1f} "
                         f"({ratio:.2f}) | {lat('base', 'p95'):.1f} / {lat('head', 'p95'):.1f} |")
    lines += ["", f"worst p50 ratio head / base: {worst:.2f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
