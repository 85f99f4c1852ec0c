"""``kbsearch eval``: quality figures for every first-stage/reranker configuration, measured in one run."""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.config import FIRST_STAGES, Settings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError
from kbsearch.rerank.base import RerankPlanner
from kbsearch.rerank.plan import SharedRerankPlanner
from kbsearch.service.query import QueryEngine
from kbsearch.types import Answer, Hit


@dataclass(frozen=True)
class EvalQuery:
    """One labelled question: ``gold`` lists the FAQ ids that answer it; empty = should hand off."""

    qid: str
    query: str
    gold: tuple[str, ...]


def load_queries(path: Path, limit: int = 0) -> list[EvalQuery]:
    """Read a ``queries_*.jsonl`` file (``{"qid", "query", "gold"}`` per line).

    Raises:
        BadInputError: naming the file and line of a malformed record.
    """
    out: list[EvalQuery] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read queries: {exc}") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(EvalQuery(qid=str(d.get("qid", n)), query=str(d["query"]), gold=tuple(d.get("gold") or ())))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInputError(f"{path}:{n}: not a query record ({exc})") from exc
    return out[:limit] if limit else out


def prepare_benchmark(bench_dir: Path, settings: Settings, kb: str, embedder: Embedder,
                      progress: bool = False) -> dict[str, Any]:
    """Ingest a benchmark folder's ``kb.jsonl`` (or ``kb_*.jsonl``) into ``kb`` and build its index.

    Returns the ingest report (as JSON) with the build id added.
    """
    from kbsearch.index.builder import build_index
    from kbsearch.ingest import run_ingest

    kb_files = sorted(bench_dir.glob("kb*.jsonl"))
    if not kb_files:
        raise BadInputError(f"{bench_dir}: no kb.jsonl (or kb_*.jsonl) to ingest")
    # benchmark KBs of intent datasets (banking77, clinc150, afqmc) have no answers: the question is the answer
    ingested = run_ingest(kb_files[:1], settings.ingest, progress=progress, answers_from_questions=True)
    built = build_index(settings, kb, ingested.entries, ingested.chunks, embedder, ingested.report.to_json(),
                        progress=progress)
    out = {**ingested.report.to_json(), "build_id": built.build_id, "build_seconds": built.seconds}
    if settings.rerank.backend == "kb" and settings.kb_reranker.max_variants > 0:
        from kbsearch.finetune.kb import train_kb_reranker

        trained = train_kb_reranker(settings, kb, progress=progress,
                                    say=lambda line: print(line, file=sys.stderr) if progress else None)
        out["kb_reranker"] = {"seconds": round(trained.seconds, 1), "trained": trained.trained,
                              "self_check": trained.self_check}
    return out


@dataclass
class ConfigResult:
    """The figures of one configuration."""

    name: str
    first_stage: str
    reranker: str
    queries: int
    in_scope: int
    out_of_scope: int
    top1: float
    recall_at_3: float
    recall_at_50: float
    mrr_at_10: float
    answered_precision: float | None
    coverage: float
    oos_handoff_rate: float | None
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Every configuration's figures, with what was measured, where and when."""

    dataset: str
    queries_file: str
    settings: dict[str, Any]
    results: list[ConfigResult]
    embed_ms_per_query: float
    machine: str
    date: str
    seconds: float
    ingest: dict[str, Any] | None = None
    default: str = ""  # the configuration the settings serve (first stage, +rerank when one is configured)

    def default_beats_baselines(self) -> bool | None:
        """Whether the default's top-1 beats both plain BM25 and vector-only (None if one is missing)."""
        by = {r.name: r.top1 for r in self.results}
        if self.default not in by or "bm25" not in by or "vector" not in by or self.default in ("bm25", "vector"):
            return None
        return by[self.default] > max(by["bm25"], by["vector"])

    def rerank_beats_first_stage(self) -> bool | None:
        """Whether the default's reranked top-1 beats every first stage alone (None without a reranked run)."""
        by = {r.name: r.top1 for r in self.results}
        first = [r.top1 for r in self.results if r.reranker == "none"]
        if "+rerank" not in self.default or self.default not in by or not first:
            return None
        return by[self.default] > max(first)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)

    def render(self) -> str:
        """A fixed-width table, one row per configuration."""
        w = max([16] + [len(r.name) + 3 for r in self.results])
        head = (f"{'config':<{w}}{'top1':>7}{'R@3':>7}{'R@50':>7}{'MRR@10':>8}{'ans.prec':>9}{'cover':>7}"
                f"{'OOS h/o':>8}{'p50 ms':>8}{'p95 ms':>8}")
        lines = [f"{self.dataset} ({self.queries_file}): {self.results[0].queries if self.results else 0} queries, "
                 f"{self.machine}, {self.date}", head, "-" * len(head)]

        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        for r in self.results:
            total = r.latency_ms.get("total", {})
            name = r.name + (" *" if r.name == self.default else "")
            lines.append(f"{name:<{w}}{f(r.top1):>7}{f(r.recall_at_3):>7}{f(r.recall_at_50):>7}{f(r.mrr_at_10):>8}"
                         f"{f(r.answered_precision):>9}{f(r.coverage):>7}{f(r.oos_handoff_rate):>8}"
                         f"{total.get('p50', 0):>8.1f}{total.get('p95', 0):>8.1f}")
        lines.append(f"question embedding (batched, shared by all configs): {self.embed_ms_per_query:.1f} ms/query; "
                     "p50/p95 exclude it")
        beats = self.default_beats_baselines()
        if self.default:
            verdict = "" if beats is None else f"; top-1 beats both bm25 and vector: {'yes' if beats else 'NO'}"
            lines.append(f"* the default configuration ({self.default}){verdict}")
        rerank = self.rerank_beats_first_stage()
        if rerank is not None:
            lines.append(f"reranked top-1 beats the best first stage alone: {'yes' if rerank else 'NO'}")
        return "\n".join(lines)


def embed_questions(embedder: Embedder, queries: list[EvalQuery], batch_size: int) -> np.ndarray:
    """All questions' embeddings, in batches: computed once and passed to every ``ask`` call."""
    return np.concatenate([embedder.embed_queries([q.query for q in queries[i : i + batch_size]])
                           for i in range(0, len(queries), batch_size)])


def hit_ids(hit: Hit) -> set[str]:
    """A hit answers for its own id and every id dedupe merged into it."""
    return {hit.entry.id, *hit.entry.merged_ids}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p95": round(float(np.percentile(arr, 95)), 2)}


def score_answers(name: str, first_stage: str, reranker: str, queries: list[EvalQuery], answers: list[Answer],
                  merged: dict[str, str]) -> ConfigResult:
    """Turn answers into figures.

    Args:
        merged: Maps every merged-away FAQ id to the id that now stands for it (for recall@50, where
            only candidate ids are known).
    """
    inscope = [(q, a) for q, a in zip(queries, answers) if q.gold]
    oos = [a for q, a in zip(queries, answers) if not q.gold]
    top1 = r3 = r50 = 0
    rr = 0.0
    answered = correct_answered = 0
    for q, a in inscope:
        gold = set(q.gold)
        ranks = [i for i, h in enumerate(a.hits[:10], start=1) if hit_ids(h) & gold]
        first = ranks[0] if ranks else None
        top1 += first == 1
        r3 += first is not None and first <= 3
        rr += 1.0 / first if first else 0.0
        r50 += bool({merged.get(g, g) for g in gold} & set(a.candidates[:50]))
        if a.answered:
            answered += 1
            correct_answered += first == 1
    oos_answered = sum(a.answered for a in oos)
    n_in = len(inscope)
    all_answered = answered + oos_answered
    stages: dict[str, list[float]] = {}
    for a in answers:
        for stage, ms in a.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    return ConfigResult(
        name=name, first_stage=first_stage, reranker=reranker, queries=len(queries), in_scope=n_in,
        out_of_scope=len(oos),
        top1=top1 / n_in if n_in else 0.0, recall_at_3=r3 / n_in if n_in else 0.0,
        recall_at_50=r50 / n_in if n_in else 0.0, mrr_at_10=rr / n_in if n_in else 0.0,
        answered_precision=correct_answered / all_answered if all_answered else None,
        coverage=answered / n_in if n_in else 0.0,
        oos_handoff_rate=(len(oos) - oos_answered) / len(oos) if oos else None,
        latency_ms={k: _percentiles(v) for k, v in sorted(stages.items())},
    )


def run_eval(settings: Settings, kb: str, queries: list[EvalQuery], embedder: Embedder, planner: RerankPlanner, *,
             dataset: str = "", queries_file: str = "", first_stages: tuple[str, ...] = FIRST_STAGES,
             ingest: dict[str, Any] | None = None, progress: Callable[[str], None] | None = None) -> EvalReport:
    """Evaluate ``queries`` against ``kb`` under every configuration, in one run.

    Args:
        settings: The base settings; each configuration overrides ``retrieve.first_stage`` (and the reranker).
        kb: An ingested knowledge base under ``settings.home``.
        queries: Labelled questions (gold ``[]`` = should hand off).
        embedder, planner: Loaded once and shared by every configuration. Where the planner's KB reranker
            is switched off by its self-check, a ``+rerank-forced`` configuration measures it anyway.
        first_stages: Which first stages to compare.
        ingest: The ingest report, stored with the figures.
        progress: Called with a line of text after each configuration.
    """
    if not queries:
        raise BadInputError("no queries to evaluate")
    t0 = time.perf_counter()
    embedder.load()
    planner.load()
    te = time.perf_counter()
    qvecs = embed_questions(embedder, queries, settings.embed.batch_size)
    embed_ms = (time.perf_counter() - te) * 1000 / len(queries)
    # (name suffix, reranker name, planner); reranked configurations run on the default first stage only.
    rerankers: list[tuple[str, str, RerankPlanner]] = [("", "none", SharedRerankPlanner(None))]
    if planner.enabled:
        rerankers.append(("+rerank", planner.model_id, planner))
        kb_dir, forced = settings.kb_dir(kb), planner.forced()
        served, trained = planner.describe(kb_dir), forced.describe(kb_dir)
        if served is not None and trained is not None and not served.on and trained.on:
            # Served without the stage (its self-check failed): measure what it would have done.
            rerankers.append(("+rerank-forced", forced.model_id, forced))
    results: list[ConfigResult] = []
    merged: dict[str, str] | None = None
    for stage in first_stages:
        for suffix, rname, rr in rerankers:
            if suffix and stage != settings.retrieve.first_stage:
                continue
            cfg = settings.updated(retrieve={"first_stage": stage})
            engine = QueryEngine(cfg, embedder, rr)
            engine.load(kb)
            if merged is None:
                merged = {m: e.id for e in engine.active_build(kb).entries.values() for m in e.merged_ids}
            answers = [engine.ask(q.query, kb=kb, top_k=10, query_vector=v) for q, v in zip(queries, qvecs)]
            engine.close()
            name = stage + suffix
            results.append(score_answers(name, stage, rname, queries, answers, merged))
            if progress:
                progress(f"{name}: top1 {results[-1].top1:.3f}")
    snapshot = {k: v for k, v in settings.model_dump(mode="json").items()
                if k in ("embed", "index", "retrieve", "rerank", "kb_reranker", "decide", "ingest")}
    return EvalReport(dataset=dataset, queries_file=queries_file, settings=snapshot, results=results,
                      embed_ms_per_query=round(embed_ms, 2),
                      machine=f"{platform.machine()} {_cpu_count()} CPU, {platform.python_implementation()} "
                              f"{platform.python_version()}",
                      date=dt.date.today().isoformat(), seconds=round(time.perf_counter() - t0, 1), ingest=ingest,
                      default=settings.retrieve.first_stage + ("+rerank" if planner.enabled else ""))


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
