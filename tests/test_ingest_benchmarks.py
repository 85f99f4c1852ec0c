"""Ingest against the shared real-data benchmarks: as-is loading, speed, and the dedupe guard.

Needs ``../shared/benchmarks`` next to the repository (or ``KBSEARCH_BENCHMARKS``); skipped without it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from rapidfuzz import fuzz

from kbsearch.config import Settings
from kbsearch.ingest import IngestResult, run_ingest
from kbsearch.ingest.dedupe import DedupePolicy, Deduper, QuestionKey, compare_questions
from kbsearch.types import FaqEntry


def _benchmarks() -> Path | None:
    here = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
    if here.is_dir():
        return here
    env = os.environ.get("KBSEARCH_BENCHMARKS")
    return Path(env) if env and Path(env).is_dir() else None


BENCH = _benchmarks()
pytestmark = [
    pytest.mark.benchmarks,
    pytest.mark.skipif(BENCH is None, reason="no benchmark data: ../shared/benchmarks or KBSEARCH_BENCHMARKS"),
]
KB_FILES = sorted([*BENCH.glob("*/kb.jsonl"), *BENCH.glob("*/kb_*.jsonl")]) if BENCH else []
SETTINGS = Settings().ingest
TODAY = dt.date(2025, 6, 1)
_cache: dict[Path, tuple[IngestResult, float]] = {}


def ingested(path: Path) -> tuple[IngestResult, float]:
    """Ingest a benchmark KB once per test session; returns the result and its wall-clock seconds."""
    if path not in _cache:
        start = time.perf_counter()
        result = run_ingest([path], SETTINGS, today=TODAY, answers_from_questions=True)  # intent sets: answer null
        _cache[path] = (result, time.perf_counter() - start)
    return _cache[path]


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("path", KB_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_benchmark_kb_ingests_as_is(path: Path) -> None:
    rows = read_jsonl(path)
    result, _ = ingested(path)
    report = result.report
    assert not report.file_errors and not report.rejected and not report.notes
    assert report.rows_read == report.loaded == len(rows)
    assert report.answers_from_question == sum(r["answer"] is None for r in rows)
    report.check()
    # every input id survives, as an entry or as a merged id of one; every phrasing stays reachable
    kept = {e.id: e for e in result.entries}
    owner = {m: e for e in result.entries for m in (e.id, *e.merged_ids)}
    assert set(owner) == {r["id"] for r in rows}
    for r in rows:
        e = owner[r["id"]]
        phrasings = {e.question, *e.variants}
        assert r["question"].strip() in phrasings and {v.strip() for v in r["variants"]} <= phrasings
        if r["answer"] is not None and r["id"] in kept:
            assert e.answer == r["answer"].strip()
        if r["meta"].get("subject"):
            assert e.section == r["meta"]["subject"]
    assert {c.faq_id for c in result.chunks} == set(kept)


@pytest.mark.parametrize("name", ["afqmc/kb_dev.jsonl", "clinc150/kb.jsonl"])
def test_ingest_is_fast(name: str) -> None:
    path = BENCH / name
    result, seconds = ingested(path)
    print(f"{name}: {seconds:.2f}s, stages {result.report.stage_seconds}")
    assert seconds < 30, "ingest of a benchmark KB must take seconds, not minutes"
    if name.startswith("clinc150"):  # 15,000 variants, of which 14 repeat their own question
        distinct = sum(len({v.strip() for v in r["variants"]} - {r["question"]}) for r in read_jsonl(path))
        assert sum(len(e.variants) for e in result.entries) == distinct == 14_986


def _swap_pairs() -> list[tuple[str, str]]:
    """afqmc label-0 pairs that become (nearly) equal when 借呗 and 花呗 are swapped in one sentence."""
    policy = DedupePolicy()
    out = []
    for split in ("dev", "train"):
        for r in read_jsonl(BENCH / "afqmc" / f"pairs_{split}.jsonl"):
            a, b = r["a"], r["b"]
            if r["label"] != 0 or ("借呗" in a) == ("借呗" in b):
                continue
            kb = QuestionKey.of(b, policy).key
            best = max(
                fuzz.ratio(QuestionKey.of(a.replace(x, y), policy).key, kb)
                for x, y in (("借呗", "花呗"), ("花呗", "借呗"))
            )
            if best >= 80:
                out.append((a, b))
    return out


def test_afqmc_jiebei_huabei_pairs_never_merge() -> None:
    pairs = _swap_pairs()
    assert len(pairs) >= 10, "expected the afqmc 借呗/花呗 must-not-merge pairs"
    policy = DedupePolicy()
    assert not [p for p in pairs if compare_questions(QuestionKey.of(p[0], policy), QuestionKey.of(p[1], policy),
                                                      SETTINGS.dedupe_confirm_ratio)[0]]
    # the whole dedupe (LSH candidates, confirm, guard, merge) over all of them at once
    texts = list(dict.fromkeys(t for p in pairs for t in p))
    entries = [FaqEntry(id=f"s{i}", question=t, answer=t) for i, t in enumerate(texts)]
    # ... plus a punctuation/width/particle variant of each, which must merge with its original
    variants = [FaqEntry(id=f"v{i}", question="请问" + t.replace("吗", "") + "？", answer=t) for i, t in enumerate(texts)]
    result = Deduper(SETTINGS).dedupe(entries + variants)
    clusters = [{m[1] for m in c.members} for c in result.merged]
    assert not [p for p in pairs if any(p[0] in c and p[1] in c for c in clusters)]
    assert len(result.merged) == len(texts) and all(len(c) == 2 for c in clusters)


def test_afqmc_dev_pairs_merge_precision() -> None:
    policy = DedupePolicy()
    merged = {0: 0, 1: 0}
    rows = read_jsonl(BENCH / "afqmc" / "pairs_dev.jsonl")
    for r in rows:
        a, b = QuestionKey.of(r["a"], policy), QuestionKey.of(r["b"], policy)
        if compare_questions(a, b, SETTINGS.dedupe_confirm_ratio)[0]:
            merged[r["label"]] += 1
    print(f"afqmc dev pairs: {len(rows)}; would merge label-1 {merged[1]}, label-0 {merged[0]}")
    assert merged[0] == 0


def test_insuranceqa_shared_answer_groups_caught() -> None:
    rows = read_jsonl(BENCH / "insuranceqa_dedupe" / "shared_answer_groups.jsonl")
    groups = {tuple(g["question_ids"]): g["texts"] for g in rows}  # the file repeats some groups
    texts = {qid: t for ids, ts in groups.items() for qid, t in zip(ids, ts, strict=True)}
    entries = [FaqEntry(id=qid, question=t, answer=t) for qid, t in texts.items()]
    result = Deduper(SETTINGS).dedupe(entries)
    cluster_of = {m[0]: c.canonical_id for c in result.merged for m in c.members}
    caught = sum(1 for ids in groups if len({cluster_of.get(i, i) for i in ids}) < len(ids))
    print(f"insuranceqa: {caught} of {len(groups)} distinct shared-answer groups have a merge")
    assert caught >= 100
