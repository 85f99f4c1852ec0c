"""Regenerate docs/quality.md: every held-in benchmark through ``kbsearch eval``'s code, in one run.

Usage:
    python bench/quality_report.py [--benchmarks ../shared/benchmarks] [--out docs/quality.md] [--limit N]

For each set it ingests the KB into a temporary home with the current settings (KBSEARCH_* apply),
runs ``run_eval`` (bm25, vector, hybrid, fused; each with the reranker when one is configured), then
plain vector again matching only question/variant rows and only answer chunks (which fields to match),
and for clinc150 also calibrates the hand-off threshold on the same questions first and reports the
calibrated figures. A summary table says whether the default beats both BM25 and vector-only. Nothing here is typed by hand: the page is overwritten with what was measured, except the block between
``<!-- feedback_loop:start -->`` and ``<!-- feedback_loop:end -->``, which ``bench/feedback_loop.py --write-docs``
writes: it is carried over from the old page as it is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

from kbsearch.config import Settings
from kbsearch.embed import make_embedder
from kbsearch.eval import load_queries, prepare_benchmark, run_eval
from kbsearch.eval.calibrate import calibrate
from kbsearch.index.store import load_build
from kbsearch.rerank import make_rerank_planner

REPO = Path(__file__).resolve().parents[1]
#: The block bench/feedback_loop.py owns in the page (markers included); kept when the page is regenerated.
KEPT_START, KEPT_END = "<!-- feedback_loop:start -->", "<!-- feedback_loop:end -->"
SETS = [  # (folder, queries file, calibrate first)
    ("unionpay_faq", "queries_dev.jsonl", False),
    ("banking77", "queries_dev.jsonl", False),
    ("clinc150", "queries_val.jsonl", True),
    ("stackfaq", "queries_all.jsonl", False),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default=str(REPO.parent / "shared" / "benchmarks"))
    p.add_argument("--out", default=str(REPO / "docs" / "quality.md"))
    p.add_argument("--limit", type=int, default=0, help="only the first N queries of each set (smoke runs)")
    p.add_argument("--sets", nargs="+", choices=[name for name, _, _ in SETS], default=None,
                   help="only these sets (default: all; a partial run's page says which it measured)")
    args = p.parse_args()
    started = time.perf_counter()
    base = Settings()
    embedder, planner = make_embedder(base), make_rerank_planner(base)
    sections: list[str] = []
    summary: list[tuple] = []
    for name, qfile, calibrate_first in SETS:
        if args.sets and name not in args.sets:
            continue
        bench = Path(args.benchmarks) / name
        with tempfile.TemporaryDirectory(prefix="kbsearch-quality-") as home:
            settings = base.updated(home=Path(home))
            print(f"{name}: ingesting…", file=sys.stderr, flush=True)
            ingest = prepare_benchmark(bench, settings, "eval", embedder)
            queries = load_queries(bench / qfile, limit=args.limit)
            extra = ""
            if calibrate_first:
                cal = calibrate(settings, "eval", queries, embedder, planner)
                extra = ("\nCalibrated on the same questions (`kbsearch calibrate`, target answered-precision "
                         f"{cal.target_precision:.2f}): threshold_{cal.score_kind} = "
                         f"{cal.threshold if cal.threshold is None else round(cal.threshold, 4)}, answered-precision "
                         f"{_f(cal.answered_precision)}, coverage {_f(cal.coverage)}, out-of-scope handed off "
                         f"{_f(cal.oos_handoff_rate)}. The table below uses that threshold for the configuration "
                         "it was calibrated for (the default first stage) and the global settings for the others.\n")
            report = run_eval(settings, "eval", queries, embedder, planner, dataset=name, queries_file=qfile,
                              ingest=ingest, progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
            fields = []
            chunk_rows = len(load_build(settings.kb_dir("eval"), device="cpu").rows_of_kind("chunk"))
            for which in ("question", "answer") if chunk_rows else ("question",):
                only = run_eval(settings.updated(retrieve={"vector_fields": which}), "eval", queries, embedder,
                                planner, first_stages=("vector",))
                fields.append((f"vector, {which} rows only", only.results[0]))
            if not chunk_rows:
                fields.append(("vector, answer rows only: none indexed (the KB has no answer text)", None))
        sections.append(_section(report, ingest, extra, fields))
        by = {r.name: r.top1 for r in report.results}
        first = max(r.top1 for r in report.results if r.reranker == "none")
        summary.append((name, qfile, by.get("bm25"), by.get("vector"), first, by.get(report.default),
                        report.default_beats_baselines(), by.get(report.default + "-forced"),
                        (ingest.get("kb_reranker") or {}).get("self_check", {}).get("reason", "-")))
    header = f"""# Retrieval quality

Generated by `python bench/quality_report.py` on {dt.date.today().isoformat()} on {platform.machine()}, \
{_cores()} CPU cores, Python {platform.python_version()}, in {time.perf_counter() - started:.0f} s. \
Do not edit by hand: run the script again.

Configuration: embed_backend `{base.embed.backend}`, vector index `{base.index.backend}`, rerank_backend `{base.rerank.backend}`, default first stage \
`{base.retrieve.first_stage}`, question rows embedded as `{base.embed.question_rows_as}`, vector_top_k {base.retrieve.vector_top_k}, \
RRF k {base.retrieve.rrf_k} with BM25 weight {base.retrieve.rrf_bm25_weight}, threshold_vector {base.decide.threshold_vector}, \
threshold_bm25 {base.decide.threshold_bm25}, threshold_rerank {base.decide.threshold_rerank}.

Metrics: top-1, recall@3 and MRR@10 over in-scope questions; recall@50 = the gold FAQ is among the first-stage \
candidates (what a reranker gets to see); answered-precision = right answers / all answers (an answered \
out-of-scope question is wrong); coverage = in-scope questions answered; OOS h/o = out-of-scope questions handed \
off. Latency per question excludes the batched question embedding, which is reported separately.

First-stage scoring (`fused`, the default): every FAQ among the vector and BM25 candidates is scored from all its rows as question side + {base.retrieve.fused_answer_weight} × best answer-chunk cosine + {base.retrieve.fused_bm25_weight} × best normalised BM25, where the question side is (best + {base.retrieve.fused_variant_weight} × mean of the best {base.retrieve.fused_variant_k}) / (1 + {base.retrieve.fused_variant_weight}) over its question and variant cosines. `vector` ranks by the best row cosine alone. These weights were chosen on these same dev sets: the figures are dev figures.

## Summary: top-1, the default configuration (`{base.retrieve.first_stage}`, reranker `{base.rerank.backend}`) against plain BM25 and vector-only, same run

| set | bm25 | vector | best first stage | default | default beats both | reranker if forced on | kb reranker self-check |
|---|---|---|---|---|---|---|---|
""" + "\n".join(f"| {n} ({q}) | {_f(b)} | {_f(v)} | {_f(fs)} | {_f(d)} | {'yes' if beats else 'NO'} | {_f(forced)} | {why} |"
                for n, q, b, v, fs, d, beats, forced, why in summary) + """

With `rerank_backend` `kb`, each KB's own cross-encoder is trained from its variants at ingest and used only when it \
clearly beats the first stage (sign test) on variants it never trained on (self-check); "reranker if forced on" is the top-1 it would have given \
where the self-check switched it off, measured in the same run. A KB with no variants gets no reranker.
"""
    out = Path(args.out)
    out.write_text(header + "\n".join(sections) + _kept_block(out), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


def _kept_block(page: Path) -> str:
    """The feedback-loop block of the page as it is now (markers included, after a blank line), or "" when it has none."""
    try:
        old = page.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    start, end = old.find(KEPT_START), old.find(KEPT_END)
    return f"\n{old[start:end + len(KEPT_END)]}\n" if 0 <= start < end else ""


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _section(report, ingest, extra: str, fields: list) -> str:
    rows = ["| config | top-1 | R@3 | R@50 | MRR@10 | answered-precision | coverage | OOS h/o | p50 ms | p95 ms |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.results:
        total = r.latency_ms.get("total", {})
        rows.append(f"| {r.name} | {_f(r.top1)} | {_f(r.recall_at_3)} | {_f(r.recall_at_50)} | {_f(r.mrr_at_10)} | "
                    f"{_f(r.answered_precision)} | {_f(r.coverage)} | {_f(r.oos_handoff_rate)} | "
                    f"{total.get('p50', 0):.1f} | {total.get('p95', 0):.1f} |")
    both = next(r for r in report.results if r.name == "vector")
    rows += ["", "Which fields to match (plain vector ranking, same questions):", "",
             "| rows matched | top-1 | R@3 | MRR@10 |", "|---|---|---|---|",
             f"| vector, question and answer rows (both) | {_f(both.top1)} | {_f(both.recall_at_3)} | "
             f"{_f(both.mrr_at_10)} |"]
    rows += [f"| {label} | {_f(r.top1)} | {_f(r.recall_at_3)} | {_f(r.mrr_at_10)} |" if r else f"| {label} | - | - | - |"
             for label, r in fields]
    first = report.results[0]
    return (f"\n## {report.dataset} ({report.queries_file})\n\n{first.in_scope} in-scope and {first.out_of_scope} "
            f"out-of-scope questions; KB: {ingest['kept']} entries kept, {ingest['chunks']} chunks. Question "
            f"embedding {report.embed_ms_per_query:.1f} ms/question (batched).\n{extra}\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
