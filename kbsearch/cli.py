"""The ``kbsearch`` command line: thin subcommands over the library.

Exit codes: 0 ok, 1 unexpected error, 2 bad input, 3 corrupt index, 4 not found, 5 backend failure,
6 not ready, 7 missing dependency, 8 busy: another writer holds the KB (see ``kbsearch.errors``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from kbsearch.config import FIRST_STAGES, Settings
from kbsearch.errors import BadInputError, KbsearchError

if TYPE_CHECKING:
    from kbsearch.review.desk import ReviewDesk


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "home", None):
        overrides["home"] = Path(args.home)
    api = {k: v for k in ("host", "port") if (v := getattr(args, k, None))}
    if api:
        overrides["api"] = api
    return Settings(**overrides)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """``_ingest`` holding the KB's writer lock throughout (a second writer waits, then exits 8); a dry run takes none."""
    from kbsearch.index.lock import kb_writer

    if args.dry_run:
        return _ingest(args, settings)
    with kb_writer(settings, args.kb or settings.default_kb, "kbsearch ingest", create=True):
        return _ingest(args, settings)


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    """Parse, validate, dedupe, filter and chunk the files, then build and activate a new index.

    More rejected rows than ``--max-rejects`` (or any unreadable file) builds nothing and exits 2 after the
    report; ``--dry-run`` stops after the report either way.
    """
    from kbsearch.embed import make_embedder
    from kbsearch.index.builder import build_index
    from kbsearch.ingest import check_rejects, run_ingest

    kb = args.kb or settings.default_kb
    settings.kb_dir(kb)  # a bad name fails before any work
    max_rejects = 0 if args.strict else args.max_rejects
    if max_rejects is None:
        max_rejects = settings.ingest.max_rejects
    result = run_ingest([Path(p) for p in args.paths], settings.ingest, progress=True,
                        answers_from_questions=True if args.answers_from_questions else None)
    print(result.report.render(), file=sys.stderr)
    if args.dry_run:
        if args.json:
            print(json.dumps({"kb": kb, "dry_run": True, "entries": len(result.entries), "chunks": len(result.chunks),
                              "report": result.report.to_json()}, ensure_ascii=False, indent=2))
        else:
            print(f"dry run for kb {kb!r}: {len(result.entries)} entries, {len(result.chunks)} chunks; nothing built")
        check_rejects(result.report, max_rejects)
        return 0
    try:
        check_rejects(result.report, max_rejects)
    except BadInputError as exc:
        raise BadInputError(f"{exc}: nothing built, the active build (if any) is unchanged") from None
    if not result.entries:
        raise BadInputError("no entry was kept: nothing to index (the active build, if any, is unchanged)")
    entries, chunks, desk = result.entries, result.chunks, _review_desk(settings)
    report = result.report.to_json()
    if desk is not None:  # the operators' decisions survive a re-ingest
        entries, chunks, notes = desk.overlay(kb, entries, chunks)
        report["review"] = {"entries_added": len(entries) - len(result.entries), "notes": notes}
        for note in notes:
            print(f"review: {note}", file=sys.stderr)
    print(f"embedding {len(entries)} entries with the {settings.embed.backend} model…", file=sys.stderr)
    built = build_index(settings, kb, entries, chunks, make_embedder(settings), report, progress=True)
    if desk is not None:
        desk.mark_built(kb, built.build_id)
    for stage, seconds in built.seconds.items():
        result.report.add_stage(stage, seconds)
    reranker = _request_training(settings, kb, entries)
    summary = {"kb": kb, "build_id": built.build_id, "path": str(built.path), "rows": built.rows,
               "report": result.report.to_json(), "kb_reranker": reranker,
               "vector_index": built.vector_index.to_json() if built.vector_index else None}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        times = ", ".join(f"{k} {v:.1f}s" for k, v in built.seconds.items())
        print(f"built {built.build_id} for kb {kb!r}: {built.rows} index rows ({times})")
        if built.vector_index is not None:
            print(f"vector index: {built.vector_index.reason}")
        print(f"report saved to {built.path / 'report.json'}")
    return 0


def _review_desk(settings: Settings) -> ReviewDesk | None:
    """The operators' review desk on the question-log database (None when the question log is off)."""
    if not settings.questionlog.enabled:
        return None
    from kbsearch.questionlog.db import open_database
    from kbsearch.review.desk import ReviewDesk

    return ReviewDesk(settings, open_database(settings.database_url))


def _request_training(settings: Settings, kb: str, entries: object = None) -> str | None:
    """Once a new build is live: start the KB reranker's training in the background if it needs one, and say so."""
    from kbsearch.rerank.kb import request_training

    started = request_training(settings, kb, entries)  # type: ignore[arg-type]
    if started:
        print(f"{started}; the new build is served meanwhile (`kbsearch train-reranker` runs it here)",
              file=sys.stderr)
    return started


def cmd_train_reranker(args: argparse.Namespace, settings: Settings) -> int:
    """Train the KB's own reranker on its active build, unless the model in place covers it."""
    from kbsearch.finetune.kb import train_kb_reranker

    kb = args.kb or settings.default_kb
    settings.kb_dir(kb)
    if args.background:  # started by request_training: yield the CPU to the service
        os.nice(10)
    done = train_kb_reranker(settings, kb, force=args.force, progress=not args.background,
                             say=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(done.to_json(), ensure_ascii=False, indent=2))
    return 0


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Re-embed the active build's entries into a new build and swap it in."""
    from kbsearch.embed import make_embedder
    from kbsearch.index.builder import rebuild_index
    from kbsearch.index.lock import kb_writer

    kb = args.kb or settings.default_kb
    with kb_writer(settings, kb, "kbsearch rebuild-index"):
        built = rebuild_index(settings, kb, make_embedder(settings), progress=True)
        print(f"rebuilt kb {kb!r} as {built.build_id}: {built.rows} index rows")
    _request_training(settings, kb)
    return 0


def cmd_builds(args: argparse.Namespace, settings: Settings) -> int:
    """A KB's builds: list them (``*`` = active), show one (JSON), or roll back to one."""
    from kbsearch.index import history

    kb = args.kb or settings.default_kb
    if args.builds_action == "show":
        print(json.dumps(history.show_build(settings, kb, args.build_id), ensure_ascii=False, indent=2))
    elif args.builds_action == "rollback":
        done = history.rollback(settings, kb, args.build_id)
        print(f"kb {kb!r} serves build {done.build_id}" + (f" (was {done.previous})" if done.changed else " (already did)"))
        desk = _review_desk(settings)  # the decisions' states follow the build now served
        for line in desk.after_rollback(kb).notes() if desk is not None else ():
            print(line)
        _request_training(settings, kb)
    elif args.json:
        print(json.dumps([b.to_json() for b in history.list_builds(settings, kb)], ensure_ascii=False, indent=2))
    else:
        for b in history.list_builds(settings, kb):
            detail = b.error or f"{b.created_at}  {b.entries:>6} entries  {b.rows:>7} rows  {b.model}"
            print(f"{'*' if b.active else ' '} {b.build_id}  {detail}")
    return 0


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    """Ask one question through the same query function the API uses."""
    from kbsearch.api.models import AskResponse
    from kbsearch.service import make_engine

    engine = make_engine(settings)
    engine.load(args.kb)
    try:
        engine.active_build(args.kb or settings.default_kb)  # a corrupt index exits 3, not a canned hand-off
        answer = engine.ask(args.question, kb=args.kb, top_k=args.top_k, explain=args.explain)
    finally:
        engine.close()
    if args.json:
        print(AskResponse.from_answer(answer).model_dump_json(indent=2))
        return 0
    flag = " (degraded)" if answer.degraded else ""
    if answer.answered:
        best = answer.hits[0]
        print(f"[{best.entry.id}] {best.entry.question}  ({answer.mode} {answer.decision.score:.3f}){flag}")
        print(best.entry.answer)
    else:
        assert answer.handoff is not None
        print(f"HAND-OFF ({answer.handoff.reason}){flag}: {answer.handoff.message}")
    if len(answer.hits) > (1 if answer.answered else 0):
        print("\ncandidates:")
        for h in answer.hits:
            print(f"  {h.score:.3f}  [{h.entry.id}] {h.entry.question}  ({h.ranked_by})")
    for note in answer.notes:
        print(f"note: {note}")
    if answer.explain is not None:
        print(render_explain(answer.explain))
    return 0


def cmd_similar(args: argparse.Namespace, settings: Settings) -> int:
    """Judge whether two texts mean the same with the configured pair model (as POST /similarity)."""
    from kbsearch.service.similarity import PairJudge

    judge = PairJudge(settings.pair, settings.device)
    judge.load()
    similar, score = judge.judge(args.a, args.b)
    if args.json:
        print(json.dumps({"similar": similar, "score": score, "threshold": judge.threshold, "model": judge.model_id}))
    else:
        print(f"{'similar' if similar else 'not similar'} (P = {score:.3f}, threshold {judge.threshold})")
    return 0


def cmd_finetune(args: argparse.Namespace, settings: Settings) -> int:
    """Train a pair model from labelled pairs and/or a KB's variants; write a cross-encoder folder."""
    from kbsearch.finetune import Recipe, collect_pairs, default_base, finetune

    recipe = Recipe(base=args.base or default_base(settings), method=args.method, max_length=args.max_length,
                    lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                    device=args.device or settings.device, max_train_pairs=args.max_train_pairs,
                    early_stop_patience=args.patience, freeze_embeddings=not args.train_embeddings,
                    balance=args.balance, save_half=args.fp16)
    if args.lora_r:
        recipe.lora_r = args.lora_r
    recipe.check()
    train, dev, recipe.data = collect_pairs(settings, [Path(p) for p in args.pairs or []],
                                            Path(args.dev) if args.dev else None, args.dev_share, args.kb,
                                            args.negatives, args.seed)
    print(f"training on {len(train)} pairs, dev {len(dev)} pairs, base {recipe.base}", file=sys.stderr)
    result = finetune(recipe, train, dev, Path(args.out), log_line=lambda line: print(line, file=sys.stderr))
    b = result.best
    print(f"wrote {result.out} ({result.method}, best epoch {result.best_epoch} of {result.epochs_run}, "
          f"{result.seconds:.0f} s): dev accuracy {b.accuracy:.4f}, F1 {b.f1:.4f}, macro F1 {b.macro_f1:.4f}")
    return 0


def render_explain(trace: dict) -> str:
    """Hit-testing as text: each stage's top candidates with scores, then the deciding rule."""
    lines = [f"\nfirst stage: {trace.get('first_stage', '-')}"]
    for stage in ("vector", "bm25", "fused", "rerank"):
        rows = trace.get(stage)
        if not rows:
            continue
        lines.append(f"{stage}:")
        for r in rows[:10]:
            where = f" via {r['matched']}" + (f" #{r['chunk']}" if r.get("chunk", -1) >= 0 else "") if "matched" in r else ""
            lines.append(f"  {r['score']:.4f}  [{r['id']}]{where}")
    d = trace.get("decision", {})
    lines.append(f"decision: {d.get('rule')} (score kind {d.get('score_kind')}, threshold {d.get('threshold')})")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    """Measure retrieval quality on labelled queries, every first stage side by side."""
    import tempfile

    from kbsearch.embed import make_embedder
    from kbsearch.eval import load_queries, prepare_benchmark, run_eval
    from kbsearch.rerank import make_rerank_planner

    stages = tuple(s.strip() for s in args.first_stages.split(",") if s.strip())
    bad = [s for s in stages if s not in FIRST_STAGES]
    if bad or not stages:
        raise BadInputError(f"--first-stages takes {', '.join(FIRST_STAGES)}; got {args.first_stages!r}")
    embedder, planner = make_embedder(settings), make_rerank_planner(settings)
    with tempfile.TemporaryDirectory(prefix="kbsearch-eval-") as tmp:
        ingest = None
        if args.path:
            bench = Path(args.path)
            if not bench.is_dir():
                raise BadInputError(f"{bench}: not a benchmark folder (kb.jsonl + queries_*.jsonl)")
            queries_path = bench / args.queries if args.queries else _only_queries_file(bench)
            settings = settings.updated(home=Path(tmp))
            kb, dataset = "eval", bench.name
            print(f"ingesting {bench} into a temporary KB…", file=sys.stderr)
            ingest = prepare_benchmark(bench, settings, kb, embedder, progress=True)
        else:
            if not args.queries or not args.kb:
                raise BadInputError("give a benchmark folder, or --kb NAME with --queries FILE")
            queries_path, kb, dataset = Path(args.queries), args.kb, args.kb
        queries = load_queries(queries_path, limit=args.limit)
        report = run_eval(settings, kb, queries, embedder, planner, dataset=dataset,
                          queries_file=queries_path.name, first_stages=stages, ingest=ingest,
                          progress=lambda line: print(line, file=sys.stderr))
    print(report.render())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
        print(f"figures saved to {args.json}")
    return 0


def cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    """Choose the KB's hand-off threshold from labelled questions and store it with the KB (exit 2 when a lower
    threshold comes from too few questions and ``--force`` is not given; 5 when no threshold meets the targets)."""
    from kbsearch.embed import make_embedder
    from kbsearch.eval import load_queries
    from kbsearch.eval.calibrate import calibrate
    from kbsearch.rerank import make_rerank_planner

    kb = args.kb or settings.default_kb
    queries = load_queries(Path(args.queries), limit=args.limit)
    result = calibrate(settings, kb, queries, make_embedder(settings), make_rerank_planner(settings),
                       target=args.target, min_oos_handoff=args.min_oos_handoff,
                       margins=_floats(args.margins, "--margins"), store=not args.dry_run, force=args.force)
    print(result.render())
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    if result.stored:
        print(f"stored in {settings.kb_dir(kb) / 'thresholds.json'}; /ask on {kb!r} uses it from the next question")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
    if result.threshold is None:
        return 5
    return 2 if result.refused and not args.dry_run else 0


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise BadInputError(f"{option} takes comma-separated numbers, got {text!r}") from exc
    if not values or any(v < 0 for v in values):
        raise BadInputError(f"{option} takes non-negative numbers, got {text!r}")
    return values


def _only_queries_file(bench: Path) -> Path:
    files = sorted(bench.glob("queries_*.jsonl"))
    if len(files) != 1:
        raise BadInputError(f"{bench}: name the queries file with --queries (found {[f.name for f in files]})")
    return files[0]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP API with uvicorn."""
    from kbsearch.api.app import create_app
    from kbsearch.api.server import serve
    from kbsearch.devices import configure_torch_threads, torch_threads_for
    from kbsearch.index.faiss_backend import set_search_threads
    from kbsearch.telemetry.logs import configure_logging

    configure_logging(settings.telemetry)
    threads = torch_threads_for(settings.torch_threads)
    configure_torch_threads(threads)  # before any model loads
    set_search_threads(threads)  # FAISS's OpenMP threads per search, the same count
    app = create_app(settings)
    base = f"http://{settings.api.host}:{settings.api.port}"
    print(
        f"kbsearch serving kb {settings.default_kb!r} from {settings.home} on {base}\n"
        f"  ask:    curl -s {base}/ask -H 'content-type: application/json' "
        f"-d '{{\"question\": \"怎么申请退货？\"}}'\n"
        f"  docs:   {base}/docs    ready: {base}/readyz    metrics: {base}/metrics",
        flush=True,
    )
    if settings.dashboard.enabled:
        key = app.state.guard.generated_admin_key
        note = (f"operator key for this run: {key} (set KBSEARCH_ADMIN_KEYS to choose your own)" if key
                else "log in with a KBSEARCH_ADMIN_KEYS key")
        print(f"  dashboard: {base}/dashboard    {note}", flush=True)
    serve(app, settings.api)
    return 0


def cmd_review(args: argparse.Namespace, settings: Settings) -> int:
    """Operator decisions from the command line: list, attach, out-of-scope, draft, undo, import, export, publish."""
    import getpass

    from kbsearch.review.desk import Draft

    kb = args.kb or settings.default_kb
    settings.kb_dir(kb)
    desk = _review_desk(settings)
    if desk is None:
        raise BadInputError("the question log is off (KBSEARCH_QUESTIONLOG__ENABLED=false): no decisions to review")
    actor = args.actor or getpass.getuser()
    action = args.review_action
    if action == "list":
        rows = [d.to_json() for d in desk.list(kb, include_undone=args.all)]
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        for d in rows if not args.json else ():
            print(f"{d['id']:>6}  {d['state']:<9} {d['action']:<12} {d['faq_id'] or '-':<20} {d['question']}  "
                  f"({d['actor']}, {d['created_at'][:19]})")
        return 0
    if action == "undo":
        d = desk.undo(args.id, actor=actor)
        print(f"decision {d.id} undone; publish to take it out of the served build")
        return 0
    if action == "publish":
        from kbsearch.embed import make_embedder

        done = desk.publish(kb, make_embedder(settings))
        if done.build_id is None:
            print("nothing to publish")
        else:
            b = done.build
            print(f"published {done.build_id} for kb {kb!r}: {done.applied} decisions applied, {done.removed} removed; "
                  f"{b.embedded} rows embedded, {b.reused} reused ({sum(b.seconds.values()):.1f}s)")
            _request_training(settings, kb)
        return 0
    if action == "export":
        text = desk.export(kb, args.format)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    if action == "import":
        path = Path(args.file)
        if not path.is_file():
            raise BadInputError(f"{path}: no such file")
        done = desk.import_labels(kb, path.name, path.read_bytes(), actor=actor)
        for line in done.rejected:
            print(f"rejected: {line}", file=sys.stderr)
        print(f"stored {len(done.decisions)} attach decisions, rejected {len(done.rejected)} rows; "
              f"run `kbsearch review publish` to serve them")
        return 2 if done.rejected and not done.decisions else 0
    draft = Draft(question=args.question, answer=args.answer, section=args.section or "", id=args.id) if action == "draft" else None
    made = desk.decide(kb, action.replace("-", "_"), args.questions, actor=actor, faq_id=getattr(args, "faq", None), draft=draft)
    print(f"stored {len(made)} decisions ({', '.join(str(d.id) for d in made)}); {desk.pending(kb)} pending: "
          "run `kbsearch review publish` to serve them")
    return 0


def _non_negative(text: str) -> int:
    """An argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="kbsearch", description=__doc__.splitlines()[0])
    p.add_argument("--home", help="state directory (default: $KBSEARCH_HOME or ./indexes)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ingest", help="load FAQ files into a new index build")
    s.add_argument("paths", nargs="+", help="FAQ files or directories (jsonl, json, csv, tsv, xlsx, md)")
    s.add_argument("--kb", help="knowledge base name (default: default)")
    s.add_argument("--max-rejects", type=_non_negative, metavar="N",
                   help="build without up to N rejected rows; more builds nothing and exits 2 (default 0)")
    s.add_argument("--strict", action="store_true", help="the same as --max-rejects 0")
    s.add_argument("--dry-run", action="store_true",
                   help="parse, validate, dedupe and chunk, print the report, build nothing (exit code as a build)")
    s.add_argument("--answers-from-questions", action="store_true",
                   help="an intent dataset: files need no answer column and an empty answer is the question")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("rebuild-index", help="re-embed the active build into a new build")
    s.add_argument("--kb", help="knowledge base name (default: default)")
    s.set_defaults(func=cmd_rebuild)

    s = sub.add_parser("train-reranker", help="train the KB's own reranker on its active build (when not covered)")
    s.add_argument("--kb", help="knowledge base name (default: default)")
    s.add_argument("--force", action="store_true", help="train even when the model in place covers the build")
    s.add_argument("--background", action="store_true", help=argparse.SUPPRESS)  # started by ingest & co: niced
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_train_reranker)

    s = sub.add_parser("builds", help="a KB's builds: list them, show one, roll back to one")
    s.add_argument("--kb", help="knowledge base name (default: default)")
    bs = s.add_subparsers(dest="builds_action", required=True)
    for name, text in (("list", "the builds on disk, newest first (* = active)"),
                       ("show", "one build's manifest and report summary (JSON)"),
                       ("rollback", "make another build on disk active again (loaded in full first)")):
        b = bs.add_parser(name, help=text)
        b.add_argument("--kb", default=argparse.SUPPRESS, help="knowledge base name (default: default)")
        if name == "list":
            b.add_argument("--json", action="store_true")
        else:
            b.add_argument("build_id")
    s.set_defaults(func=cmd_builds)

    s = sub.add_parser("review", help="operator decisions on logged questions, and publishing them")
    s.add_argument("--kb", help="knowledge base name (default: default)")
    s.add_argument("--actor", help="who is deciding (default: the login name)")
    rs = s.add_subparsers(dest="review_action", required=True)
    r = rs.add_parser("list", help="the decisions, newest first")
    r.add_argument("--all", action="store_true", help="include undone ones")
    r.add_argument("--json", action="store_true")
    r = rs.add_parser("attach", help="attach questions to an FAQ as new variants")
    r.add_argument("--faq", required=True, help="the FAQ id")
    r.add_argument("questions", nargs="+")
    r = rs.add_parser("out-of-scope", help="mark questions as not for the knowledge base")
    r.add_argument("questions", nargs="+")
    r = rs.add_parser("draft", help="draft a new FAQ (the questions become its variants)")
    r.add_argument("--question", required=True)
    r.add_argument("--answer", required=True)
    r.add_argument("--section")
    r.add_argument("--id", help="the new FAQ's id (default: op-<random>)")
    r.add_argument("questions", nargs="*")
    r = rs.add_parser("undo", help="undo a decision")
    r.add_argument("id", type=int)
    r = rs.add_parser("import", help="attach labelled questions in bulk (CSV/TSV/JSONL/XLSX: question, faq_id)")
    r.add_argument("file")
    r = rs.add_parser("export", help="the FAQs the decisions touch, in an ingest format")
    r.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    r.add_argument("--out", help="file to write (default: stdout)")
    rs.add_parser("publish", help="publish pending decisions as a new build (only new rows are embedded)")
    s.set_defaults(func=cmd_review)

    s = sub.add_parser("eval", help="measure retrieval quality on labelled queries")
    s.add_argument("path", nargs="?", help="benchmark folder (kb.jsonl + queries_*.jsonl), ingested into a temp KB")
    s.add_argument("--queries", help="queries file (in the folder, or a path with --kb)")
    s.add_argument("--kb", help="evaluate an already-ingested knowledge base instead of a benchmark folder")
    s.add_argument("--first-stages", default=",".join(FIRST_STAGES), help="configurations to compare")
    s.add_argument("--limit", type=int, default=0, help="only the first N queries")
    s.add_argument("--json", help="also write the figures as JSON to this file")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("calibrate", help="choose and store a KB's hand-off threshold from labelled questions")
    s.add_argument("--kb", help="knowledge base name (default: default)")
    s.add_argument("--queries", required=True, help="labelled questions (queries_*.jsonl; gold [] = out of scope)")
    s.add_argument("--target", type=float, default=0.90, help="answered-precision to reach (default 0.90)")
    s.add_argument("--min-oos-handoff", type=float, default=0.80,
                   help="share of out-of-scope questions that must be handed off, when there are any (default 0.80)")
    s.add_argument("--margins", default="0",
                   help="top-1/top-2 margins to try as an extra hand-off rule, e.g. 0,0.01,0.02 (default 0: none)")
    s.add_argument("--limit", type=int, default=0, help="only the first N questions")
    s.add_argument("--dry-run", action="store_true", help="print the curve without storing the threshold")
    s.add_argument("--force", action="store_true",
                   help="store a lower threshold even from fewer than 100 in-scope and 20 out-of-scope questions")
    s.add_argument("--json", help="also write the curve and decision as JSON to this file")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("serve", help="run the HTTP API")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("ask", help="ask one question")
    s.add_argument("question")
    s.add_argument("--kb", help="knowledge base name (default: default)")
    s.add_argument("--top-k", type=int, default=None, choices=range(1, 21), metavar="1..20",
                   help="results to return (default 3)")
    s.add_argument("--json", action="store_true", help="print the API's JSON response")
    s.add_argument("--explain", action="store_true", help="show every stage's candidates and the deciding rule")
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("similar", help="do two texts mean the same? (the pair model, as POST /similarity)")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--json", action="store_true", help="print the API's JSON response")
    s.set_defaults(func=cmd_similar)

    s = sub.add_parser("finetune", help="train a pair model (cross-encoder) for reranking and /similarity")
    s.add_argument("--pairs", action="append", help="labelled pairs: .jsonl/.csv with a,b,label "
                   "(AFQMC's sentence1,sentence2,label as is); repeatable")
    s.add_argument("--kb", help="also train on this KB's variants, with first-stage hard negatives")
    s.add_argument("--negatives", type=int, default=3, help="hard negatives per variant (default 3)")
    s.add_argument("--dev", help="dev pairs file (default: a seeded hold-out of the training pairs)")
    s.add_argument("--dev-share", type=float, default=0.1, help="hold-out share without --dev (default 0.1)")
    s.add_argument("--out", required=True, help="output model folder (must not exist or be empty)")
    s.add_argument("--base", help="base model folder or hub id (default: the bundled e5-small)")
    s.add_argument("--method", choices=("auto", "lora", "full"), default="auto",
                   help="LoRA (peft) or full fine-tuning; auto = LoRA above 300M parameters")
    s.add_argument("--lora-r", type=int, default=0, help="LoRA rank (default 8)")
    s.add_argument("--max-length", type=int, default=64)
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 1e-4 for LoRA, the reference recipe; 3e-5 for full fine-tuning)")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--patience", type=int, default=3, help="early stop after this many epochs without dev F1 gain")
    s.add_argument("--max-train-pairs", type=int, default=0, help="train on a seeded sample of this many pairs")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--train-embeddings", action="store_true",
                   help="full method: also train the token embeddings (frozen by default: faster, and they "
                   "are most of e5-small's parameters)")
    s.add_argument("--balance", action="store_true",
                   help="weight positive pairs by negatives/positives in the loss (imbalanced data, e.g. AFQMC)")
    s.add_argument("--fp16", action="store_true", help="save the final weights in fp16 (half the disk)")
    s.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the device setting)")
    s.set_defaults(func=cmd_finetune)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kbsearch`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args)
        return args.func(args, settings)
    except ValidationError as exc:
        print(f"kbsearch: invalid settings: {exc}", file=sys.stderr)
        return 2
    except KbsearchError as exc:
        print(f"kbsearch: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"kbsearch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
