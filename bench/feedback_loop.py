"""The learning loop, measured: what attaching answered questions to their FAQs buys on questions not attached.

Usage:
    python bench/feedback_loop.py [--set unionpay_faq] [--queries queries_dev.jsonl] [--seed 42]
                                  [--home DIR] [--limit N] [--write-docs]

1. Ingests the set's ``kb.jsonl`` through the real command (``kbsearch.cli.main([... "ingest" ...])``) into
   a fresh temporary home with the current settings (KBSEARCH_* apply; by default e5-small, the fused first
   stage and the ``kb`` reranker, which ingest trains when the KB has variants), timed.
2. Splits the labelled questions in two halves with a seeded shuffle: A (the questions operators label)
   and B (the questions measured).
3. Before: top-1 on B as the settings serve it (the KB reranker as its self-check set it, on with its blend
   weight or off) and with the first stage only (``rerank.backend = none``).
4. Attaches every A question to its first gold FAQ the way an operator does: a ``question,faq_id`` CSV
   through ``ReviewDesk.import_labels`` (what the dashboard's bulk import and ``kbsearch review import``
   call), then ``ReviewDesk.publish``: an incremental build that embeds only the new variant rows. Timed.
5. After: B again, served right after the publish (the KB's existing reranker, or none, over the new build)
   and first stage only; then the KB reranker is retrained on the new build as the next ingest or
   ``rebuild-index`` would (``train_kb_reranker``: the new variants change its pairs, so it trains again
   and self-checks again) and B is measured once more. Where a self-check switches the reranker off, the
   top-1 it would have given is measured too ("forced on").

Questions run through ``QueryEngine.ask`` (the function behind ``POST /ask``) with B's embeddings
computed once in batches, and are scored by ``kbsearch.eval``'s ``score_answers``: top-1 = the gold
contains the first result's id. Prints a markdown table (top-1 before / after / gain per configuration),
the seconds of each step, which share of the gain the first stage and the KB reranker each bring, the
questions that flipped right -> wrong and wrong -> right (with an exact McNemar p), and how many B
questions have an exact or near duplicate among the A questions (which would flatter the gain).
``--write-docs`` also replaces the marked block of docs/quality.md (``bench/quality_report.py`` keeps it).
``--home DIR`` works in DIR and keeps it; an existing build of the KB there is reused (no ingest), as long
as no decision was recorded for it yet (the "before" figures would not be "before").
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import platform
import random
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kbsearch.config import Settings
from kbsearch.embed import make_embedder
from kbsearch.embed.base import Embedder
from kbsearch.eval import EvalQuery, load_queries
from kbsearch.eval.run import ConfigResult, embed_questions, hit_ids, score_answers
from kbsearch.finetune.kb import sign_test_p
from kbsearch.rerank import make_rerank_planner
from kbsearch.rerank.base import RerankPlanner
from kbsearch.service.query import QueryEngine

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- feedback_loop:start -->", "<!-- feedback_loop:end -->"
HEADING = "## The learning loop (bench/feedback_loop.py)"
#: rapidfuzz ratio (0-100) on normalised texts at or above which two questions count as near duplicates.
NEAR_DUPLICATE = 90


@dataclass(frozen=True)
class Measured:
    """One configuration's figures on the measured half, and which of its questions it got right at top-1."""

    label: str
    result: ConfigResult
    right: tuple[bool, ...]
    reranker: str  # what served the second stage, in a few words
    why: str  # the planner's full account of it (why a KB reranker is off)
    seconds: float


def describe_reranker(planner: RerankPlanner, kb_dir: Path) -> tuple[str, str]:
    """What serves ``kb_dir``'s second stage: a few words, and the planner's full account."""
    state = planner.describe(kb_dir)
    if state is None:  # one shared model (or none) for every KB
        return planner.model_id, planner.model_id
    if state.on:
        short = f"KB reranker{' forced' if 'forced' in planner.model_id else ''} on, blend weight {state.weight}"
    else:
        short = "KB reranker trained, off by its self-check" if planner.forced().describe(kb_dir).on else "no KB reranker"
    return short, str(state)


@dataclass(frozen=True)
class Flips:
    """Questions whose top-1 changed between two runs of the same questions, and the exact McNemar p."""

    right_to_wrong: int
    wrong_to_right: int

    @property
    def p(self) -> float:
        """Two-sided exact McNemar (sign test on the discordant questions)."""
        lo, hi = sorted((self.right_to_wrong, self.wrong_to_right))
        return min(1.0, 2 * sign_test_p(hi, lo))

    def __str__(self) -> str:
        return (f"wrong -> right {self.wrong_to_right}, right -> wrong {self.right_to_wrong} "
                f"(net {self.wrong_to_right - self.right_to_wrong:+d}, exact McNemar p {self.p:.2g})")


def flips(before: Measured, after: Measured) -> Flips:
    """Count the questions ``after`` gets right that ``before`` got wrong, and the reverse."""
    pairs = list(zip(before.right, after.right, strict=True))
    return Flips(right_to_wrong=sum(b and not a for b, a in pairs), wrong_to_right=sum(a and not b for b, a in pairs))


def say(line: str) -> None:
    """Progress on stderr (stdout carries the report)."""
    print(line, file=sys.stderr, flush=True)


def ingest(home: Path, kb_file: Path, kb: str) -> float:
    """``kbsearch --home HOME ingest KB_FILE --kb KB`` through the CLI's own code; returns the seconds it took.

    Raises:
        SystemExit: the command failed (its exit code).
    """
    from kbsearch.cli import main as cli_main

    t0 = time.perf_counter()
    rc = cli_main(["--home", str(home), "ingest", str(kb_file), "--kb", kb])
    if rc != 0:
        raise SystemExit(f"kbsearch ingest exited with {rc}")
    return time.perf_counter() - t0


def split_halves(queries: Sequence[EvalQuery], seed: int) -> tuple[list[EvalQuery], list[EvalQuery]]:
    """A seeded shuffle cut in two: (A, B), A taking the odd one out."""
    shuffled = list(queries)
    random.Random(seed).shuffle(shuffled)
    cut = (len(shuffled) + 1) // 2
    return shuffled[:cut], shuffled[cut:]


def labels_csv(questions: Sequence[EvalQuery], served: dict[str, str]) -> bytes:
    """A ``question,faq_id`` CSV attaching each question to its first gold FAQ (as the build serves that id:
    a gold FAQ that dedupe merged into another is attached to the one that stands for it)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["question", "faq_id"])
    for q in questions:
        if q.gold:
            w.writerow([q.query, served.get(q.gold[0], q.gold[0])])
    return buf.getvalue().encode("utf-8")


def measure(label: str, settings: Settings, kb: str, queries: Sequence[EvalQuery], qvecs: np.ndarray,
            embedder: Embedder, planner: RerankPlanner) -> Measured:
    """Ask every question through a fresh ``QueryEngine`` (the active build, as a server would load it) and score it.

    Args:
        qvecs: The questions' embeddings (``embed_questions``), reused by every configuration.
        planner: Which reranker serves (a planner re-reads the KB's reranker folder when it changes).
    """
    t0 = time.perf_counter()
    engine = QueryEngine(settings, embedder, planner)
    engine.load(kb)
    try:
        merged = {m: e.id for e in engine.builds.get(kb).entries.values() for m in e.merged_ids}
        answers = [engine.ask(q.query, kb=kb, top_k=10, query_vector=v) for q, v in zip(queries, qvecs, strict=True)]
    finally:
        engine.close()
    right = tuple(bool(a.hits) and bool(hit_ids(a.hits[0]) & set(q.gold)) for q, a in zip(queries, answers))
    short, why = describe_reranker(planner, settings.kb_dir(kb))
    result = score_answers(label, settings.retrieve.first_stage, planner.model_id, list(queries), answers, merged)
    seconds = time.perf_counter() - t0
    say(f"  {label}: top-1 {result.top1:.3f} ({seconds:.0f} s; {why})")
    return Measured(label, result, right, short, why, seconds)


def measure_phase(phase: str, settings: Settings, kb: str, queries: Sequence[EvalQuery], qvecs: np.ndarray,
                  embedder: Embedder, planner: RerankPlanner, *, first_stage: bool = True) -> dict[str, Measured]:
    """The default serving (``default``), optionally the first stage alone (``first``), and where the KB's
    trained reranker is switched off by its self-check, that reranker forced on (``forced``)."""
    say(f"{phase}:")
    out = {"default": measure(f"{phase}, default", settings, kb, queries, qvecs, embedder, planner)}
    if first_stage:
        none = make_rerank_planner(settings.updated(rerank={"backend": "none"}))
        out["first"] = measure(f"{phase}, first stage only", settings, kb, queries, qvecs, embedder, none)
    kb_dir, forced = settings.kb_dir(kb), planner.forced()
    served, trained = planner.describe(kb_dir), forced.describe(kb_dir)
    if served is not None and trained is not None and not served.on and trained.on:
        out["forced"] = measure(f"{phase}, KB reranker forced on", settings, kb, queries, qvecs, embedder, forced)
    return out


def _normalise(text: str) -> str:
    """NFKC, lower case, without whitespace and punctuation (？ vs ?, a trailing 。)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch).startswith("P")))


@dataclass(frozen=True)
class Overlap:
    """How many measured (B) questions have a twin among the attached (A) ones."""

    exact: int
    normalised: int
    near: int  # rapidfuzz ratio >= NEAR_DUPLICATE on normalised texts
    near_same_gold: int  # ... attached to one of the B question's gold FAQs
    near_same_gold_ids: frozenset[str]  # their qids


def overlap(a: Sequence[EvalQuery], b: Sequence[EvalQuery]) -> Overlap:
    """Exact, normalised and near duplicates of B's questions among A's (each B question counted once)."""
    from rapidfuzz import fuzz, process

    a_text = {q.query for q in a}
    a_norm = [_normalise(q.query) for q in a]
    b_norm = [_normalise(q.query) for q in b]
    scores = process.cdist(b_norm, a_norm, scorer=fuzz.ratio, dtype=np.uint8, workers=1)
    near = scores >= NEAR_DUPLICATE
    same_gold = {q.qid for i, q in enumerate(b)
                 if any(a[j].gold and a[j].gold[0] in q.gold for j in np.flatnonzero(near[i]))}
    return Overlap(exact=sum(q.query in a_text for q in b), normalised=sum(n in set(a_norm) for n in b_norm),
                   near=int(near.any(axis=1).sum()), near_same_gold=len(same_gold), near_same_gold_ids=frozenset(same_gold))


def _f(v: float) -> str:
    return f"{v:.3f}"


def _gain(before: float, after: float) -> str:
    return f"{after - before:+.3f}"


def render(*, kb: str, qfile: str, seed: int, a: Sequence[EvalQuery], b: Sequence[EvalQuery], before: dict[str, Measured],
           published: dict[str, Measured], retrained: dict[str, Measured] | None, timings: dict[str, str],
           dup: Overlap) -> str:
    """The report as markdown: the table, the seconds, the split of the gain, the flips, the duplicates."""
    n = len(b)
    lines = [(f"{kb} ({qfile}): {len(a) + len(b)} questions, shuffled with seed {seed}: half A ({len(a)}) attached to "
              f"their gold FAQs as variants, half B ({n}) measured. Top-1 on half B:"), "",
             "| configuration | top-1 before | top-1 after | gain |", "|---|---|---|---|"]
    b0, p = before["default"], published["default"]
    lines.append(f"| (a) default serving, right after the publish (before: {b0.reranker}; after: {p.reranker}) "
                 f"| {_f(b0.result.top1)} | {_f(p.result.top1)} | {_gain(b0.result.top1, p.result.top1)} |")
    f0, f1 = before["first"], published["first"]
    lines.append(f"| (b) first stage only (`{f0.result.first_stage}`, rerank backend `none`) | {_f(f0.result.top1)} | "
                 f"{_f(f1.result.top1)} | {_gain(f0.result.top1, f1.result.top1)} |")
    if retrained is not None:
        r = retrained["default"]
        lines.append(f"| (c) default serving after retraining the KB reranker on the new build ({r.reranker}) | "
                     f"{_f(b0.result.top1)} | {_f(r.result.top1)} | {_gain(b0.result.top1, r.result.top1)} |")
    forced = (retrained or {}).get("forced")
    if forced is not None:
        lines.append(f"| (c') the retrained KB reranker forced on despite its self-check | {_f(b0.result.top1)} | "
                     f"{_f(forced.result.top1)} | {_gain(b0.result.top1, forced.result.top1)} |")
    if "forced" in before:
        lines.append(f"| before: the KB reranker forced on despite its self-check | {_f(before['forced'].result.top1)} "
                     "| - | - |")
    lines += ["", "The KB reranker, as the planner accounts for it:", "", f"- before: {b0.why}",
              f"- right after the publish: {p.why}"]
    if retrained is not None:
        lines.append(f"- after the retrain: {retrained['default'].why}")
    lines += ["", "Seconds: " + "; ".join(f"{k} {v}" for k, v in timings.items()) + ".", ""]
    lines += _shares(before, published, retrained)
    lines += ["", (f"Questions of half B whose top-1 changed (default serving; {n} questions, a flip is 1/{n} = "
                   f"{1 / n:.4f} of top-1):"), "",
              f"- before -> right after the publish: {flips(b0, p)}"]
    if retrained is not None:
        lines.append(f"- before -> after the retrain: {flips(b0, retrained['default'])}")
        lines.append(f"- right after the publish -> after the retrain: {flips(p, retrained['default'])}")
    lines.append(f"- first stage only, before -> after: {flips(f0, f1)}")
    if retrained is not None:
        key = "forced" if "forced" in retrained else "default"
        lines.append(f"- after the publish, first stage only -> the retrained KB reranker{' forced on' if key == 'forced' else ''} "
                     f"(same build: what the reranker changes): {flips(f1, retrained[key])}")
    last = "after the retrain" if retrained is not None else "right after the publish"
    wins = [q.qid for q, was, now in zip(b, b0.right, (retrained or published)["default"].right) if now and not was]
    lines += ["", (f"Duplicates: {dup.exact} of the {n} half-B questions have an exact duplicate among half A's texts, "
                   f"{dup.normalised} after normalising (NFKC, case, whitespace and punctuation), {dup.near} a near "
                   f"duplicate (rapidfuzz ratio >= {NEAR_DUPLICATE}), {dup.near_same_gold} of them attached to one of "
                   f"the B question's gold FAQs; {len(dup.near_same_gold_ids & set(wins))} of the {len(wins)} questions "
                   f"that went wrong -> right (before -> {last}) are among those.")]
    return "\n".join(lines)


def _shares(before: dict[str, Measured], published: dict[str, Measured],
            retrained: dict[str, Measured] | None) -> list[str]:
    """Which part of the default's gain the first stage brings and which the KB reranker, in words."""
    fs0, fs1 = before["first"].result.top1, published["first"].result.top1
    d0 = before["default"].result.top1
    first_gain = fs1 - fs0
    out = []
    for when, after in (("right after the publish", published),
                        *((("after the retrain", retrained),) if retrained is not None else ())):
        total = after["default"].result.top1 - d0
        reranker = total - first_gain  # the change in what the reranker adds over the first stage
        if abs(total) < 1e-9:
            out.append(f"- {when}: no gain ({d0:.3f} -> {d0:.3f}); the first stage alone moved {first_gain:+.3f}.")
            continue
        out.append(f"- {when}: default gain {total:+.3f}; the first stage alone gains {first_gain:+.3f} "
                   f"({first_gain / total:.0%} of it) and the KB reranker's contribution over the first stage changes "
                   f"by {reranker:+.3f} ({reranker / total:.0%}); served with: {after['default'].reranker}.")
    if retrained is not None and "forced" in retrained:
        f = retrained["forced"].result.top1
        out.append("- the retrained reranker's self-check kept it off (above), so every point of the gain served "
                   f"comes from the first stage; forced on anyway it would give {f:.3f} ({f - fs1:+.3f} over the first "
                   "stage alone after the publish).")
    return ["Where the gain comes from:", "", *out]


def write_docs(path: Path, block: str) -> None:
    """Replace the marked block of ``path`` (markers included) with ``block``, or append it when unmarked."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def docs_block(report: str, command: str, seconds: float) -> str:
    """The docs/quality.md block: heading, how and where it was measured, what it means, the report."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"""{START}
{HEADING}

Generated by `{command}` on {dt.date.today().isoformat()} on {platform.machine()}, {cores} CPU cores, \
Python {platform.python_version()}, torch {torch.__version__}, in {seconds:.0f} s. This block is written by that \
script and carried over unchanged by `bench/quality_report.py`: run the script again rather than editing it.

What it measures: whether the operators' loop pays off on questions nobody labelled. The labelled questions are \
split in two halves (seeded shuffle); every half-A question is attached to its gold FAQ through the review desk \
(`ReviewDesk.import_labels`, the dashboard's bulk import, then `publish`, an incremental build that embeds only \
the new variant rows), and top-1 is measured on half B before and after, through `QueryEngine.ask`: as served by \
default, with the first stage only, and after the KB's own reranker is retrained on the new variants as the next \
ingest would. The halves are disjoint, but questions about one FAQ resemble each other: the duplicate counts at \
the end say how many half-B questions have a twin in half A.

{report}
{END}"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default=str(REPO.parent / "shared" / "benchmarks"))
    p.add_argument("--set", default="unionpay_faq", help="benchmark folder (also the KB's name)")
    p.add_argument("--queries", default="queries_dev.jsonl")
    p.add_argument("--seed", type=int, default=42, help="seed of the A/B split")
    p.add_argument("--home", help="work in this home and keep it (default: a temporary one)")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions (smoke runs)")
    p.add_argument("--write-docs", action="store_true", help="replace the feedback-loop block of docs/quality.md")
    p.add_argument("--docs", default=str(REPO / "docs" / "quality.md"))
    args = p.parse_args()
    started = time.perf_counter()
    bench, kb = Path(args.benchmarks) / args.set, args.set
    with tempfile.TemporaryDirectory(prefix="kbsearch-loop-") as tmp:
        home = Path(args.home).resolve() if args.home else Path(tmp)
        report = run(args, bench, kb, home)
    print(report)
    if args.write_docs:
        write_docs(Path(args.docs), docs_block(report, _command(args, p), time.perf_counter() - started))
        say(f"wrote the feedback-loop block of {args.docs}")


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The command line that reproduces this run (options left at their defaults omitted, ``--home`` too)."""
    parts = ["python bench/feedback_loop.py"]
    for name in ("set", "queries", "seed", "limit"):
        if getattr(args, name) != parser.get_default(name):
            parts.append(f"--{name} {getattr(args, name)}")
    return " ".join([*parts, "--write-docs"])


def run(args: argparse.Namespace, bench: Path, kb: str, home: Path) -> str:
    """Every step of the loop in ``home``; returns the report."""
    from kbsearch.finetune.kb import train_kb_reranker
    from kbsearch.index.store import active_build_id
    from kbsearch.questionlog.db import open_database
    from kbsearch.review.desk import ReviewDesk, active_entries

    settings = Settings().updated(home=home)
    desk = ReviewDesk(settings, open_database(settings.database_url))
    timings: dict[str, str] = {}
    if desk.list(kb, limit=1):  # an ingest would overlay them, and "before" would not be before
        raise SystemExit(f"{home}: knowledge base {kb!r} already has review decisions: use a fresh --home")
    if active_build_id(settings.kb_dir(kb)) is None:
        say(f"ingesting {bench / 'kb.jsonl'} into {home} (kb {kb!r})…")
        timings["ingest (`kbsearch ingest`, its KB reranker step included)"] = f"{ingest(home, bench / 'kb.jsonl', kb):.0f}"
    else:
        timings["ingest"] = "skipped (reused the build in --home)"

    a, b = split_halves(load_queries(bench / args.queries, limit=args.limit), args.seed)
    embedder, planner = make_embedder(settings), make_rerank_planner(settings)
    embedder.load()
    planner.load()
    qvecs = embed_questions(embedder, b, settings.embed.batch_size)
    before = measure_phase("before", settings, kb, b, qvecs, embedder, planner)

    entries = active_entries(settings.kb_dir(kb))
    served = {i: i for i in entries} | {m: e.id for e in entries.values() for m in e.merged_ids}
    t0 = time.perf_counter()
    imported = desk.import_labels(kb, "half_a.csv", labels_csv(a, served), actor="bench")
    t1 = time.perf_counter()
    done = desk.publish(kb, embedder)
    t2 = time.perf_counter()
    if done.build is None:
        raise SystemExit("nothing was published")
    for line in imported.rejected[:5]:
        say(f"rejected: {line}")
    build = done.build
    timings["import of half A"] = (f"{t1 - t0:.1f} ({len(imported.decisions)} attach decisions, "
                                   f"{len(imported.rejected)} rows rejected)")
    timings["publish"] = (f"{t2 - t1:.1f} ({build.embedded} rows embedded, {build.reused} reused; "
                          + ", ".join(f"{k} {v:.1f}" for k, v in build.seconds.items()) + ")")
    published = measure_phase("after the publish", settings, kb, b, qvecs, embedder, planner)

    retrained: dict[str, Measured] | None = None
    if settings.rerank.backend == "kb" and settings.kb_reranker.max_variants > 0:
        say("retraining the KB reranker on the new build…")
        t0 = time.perf_counter()
        trained = train_kb_reranker(settings, kb, progress=False, say=say)
        timings["retrain of the KB reranker"] = (f"{time.perf_counter() - t0:.0f} "
                                                 f"({'trained' if trained.trained else 'reused a cached model'}, "
                                                 "self-check included; "
                                                 f"{'in use' if trained.self_check.get('use') else 'off'})")
        # the build did not change: the first stage alone is the one measured after the publish
        retrained = measure_phase("after the retrain", settings, kb, b, qvecs, embedder, planner, first_stage=False)
    else:
        timings["retrain"] = f"none (rerank backend {settings.rerank.backend!r}, no KB reranker to train)"
    return render(kb=kb, qfile=args.queries, seed=args.seed, a=a, b=b, before=before, published=published,
                  retrained=retrained, timings=timings, dup=overlap(a, b))


if __name__ == "__main__":
    main()
