"""Train a knowledge base's own reranker from its variants (``rerank_backend = "kb"``, ``kbsearch train-reranker``).

Training never holds up an ingest or the service: it runs as its own command, which ingest and the
others start in the background once the new build is live (``kbsearch.rerank.kb.request_training``).
One training per KB at a time (a lock in the rerankers folder; the next one waits, then trains only
what is still not covered). It trains only when the KB's model does not cover the active build (a
few changed FAQs keep the model: ``kb_reranker.retrain_share``), and a killed training resumes from
its last checkpoint (``kb_reranker.checkpoint_every_s``) when run again on the same build.

The sampled variants are split by phrasing (seeded): most train, a held-out share is the dev split of
``finetune`` (early stopping, dev F1). The **self-check** runs on variants the model never trained on:
that held-out share plus up to ``kb_reranker_check_variants`` of the KB's variants outside the training
sample (a variant-rich KB has many). For each, its stored vector searches the build with its own row
excluded; the first stage's answer is the best FAQ found, the reranked answer is the best of the first
``rerank_top_k`` FAQs by ``blend`` of the first-stage score and the trained model's, for each weight in
``BLEND_WEIGHTS``. The best weight is kept, and the model is used for the KB only when it wins
significantly: on the variants where the two answers differ in being right, a one-sided sign test must
give p < ``MAX_P``, so a reranker that does not clearly help is not switched on. The self-check ranks by
plain vector similarity (the stored vectors), not the full ``fused`` first stage; ``kbsearch eval``
measures the real pair.

Models are cached by a hash of their training pairs, recipe and base: re-ingesting the same
variants reuses the model instead of training again.

A trainer is the only writer of the rerankers folder, and it switches models by replacing ``ACTIVE``;
it does not take the KB's writer lock, so ingest and publishes go on while it trains.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbsearch.config import RerankDoc, Settings
from kbsearch.errors import BadInputError
from kbsearch.finetune.pairs import Pair, kb_pairs
from kbsearch.finetune.train import Recipe, finetune
from kbsearch.index.durable import fsync_path, fsync_tree, write_text_atomic
from kbsearch.index.lock import writer_lock
from kbsearch.rerank.blend import BLEND_WEIGHTS, blend
from kbsearch.rerank.card import CARD, read_card
from kbsearch.rerank.kb import (ACTIVE, FAQS, KB_RERANKER_DOC, MIN_VARIANTS, RERANKERS, SKIP, TRAINING, covers,
                                faq_digests, trained_kb_reranker)
from kbsearch.rerank.text import reranker_text
from kbsearch.retrieve.grouping import group_rows

#: Share of the sampled variants held out for the dev split and the self-check (at least 20 phrasings).
CHECK_SHARE = 0.15

#: The blend is used only when it beats the first stage with a one-sided sign test at this level, on the
#: variants where exactly one of the two is right. A gain of one or two variants is within noise: on the
#: sample KB (36 held out) a +1 blend moved one of its 25 sample paraphrases to the wrong FAQ.
MAX_P = 0.05


def _rule(weights: tuple[float, ...]) -> str:
    return f"blend weights {list(weights)}, sign test p < {MAX_P}"


#: What a stored self-check was decided by; a cached model whose check says otherwise is checked again.
CHECK_RULE = _rule(BLEND_WEIGHTS)


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided sign test: P(at least ``wins`` of ``wins + losses`` fair coin flips), 1.0 when there are none."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


#: How long a training waits for another training of the same KB (they take minutes) before giving up.
TRAIN_WAIT_S = 6 * 3600.0


@dataclass
class KbRerankerResult:
    """What ``train_kb_reranker`` did: the model folder (None when skipped) and its self-check."""

    folder: Path | None
    trained: bool  # False when a cached model was reused (or nothing was trained)
    seconds: float
    self_check: dict[str, Any]
    covered: str | None = None  # the model in place already covered the build: why (nothing was trained)

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder) if self.folder else None, "trained": self.trained,
                "seconds": round(self.seconds, 1), "covered": self.covered, "self_check": self.self_check}


Mined = tuple[str, str, dict[str, str], dict[str, float]]


def mine_variants(build: Any, rows: list[int], negatives: int, doc: RerankDoc) -> list[Mined]:
    """For each variant row: ``(faq_id, text, docs, scores)`` with ``docs`` = FAQ id -> the text the reranker
    reads (``kbsearch.rerank.text``, as the query path shows it), in the order the variant's stored vector
    ranks them (its own row excluded), its own FAQ included, and ``scores`` = FAQ id -> that vector
    similarity (the first-stage score; absent for its own FAQ when the search did not reach it).
    """
    k = min(len(build.rows), 64 + 8 * negatives)
    sims, hits = build.vectors.search(build.vectors.vectors(rows), k)
    out = []
    for r, found, found_sims in zip(rows, hits, sims):
        grouped = group_rows(found, found_sims, build.row_faq,
                             keep=lambda h, r=r: h != r and build.rows[h].faq_id in build.entries)
        own = build.rows[r].faq_id
        docs = {faq: reranker_text(build.entries[faq], build.rows[row], doc, build.chunks) for faq, row, _ in grouped}
        docs.setdefault(own, reranker_text(build.entries[own], None, doc, build.chunks))
        out.append((own, build.rows[r].text, docs, {faq: score for faq, _, score in grouped}))
    return out


def variant_rows(build: Any, max_variants: int, seed: int) -> list[int]:
    """Row numbers of the build's variants (of entries it serves); a seeded sample of ``max_variants``."""
    rows = [i for i, r in enumerate(build.rows) if r.kind == "variant" and r.faq_id in build.entries]
    if 0 < max_variants < len(rows):
        rows = sorted(random.Random(seed).sample(rows, max_variants))
    return rows


def self_check(score: Callable[[str, list[str]], list[float]], check: list[Mined], top_k: int,
               weights: tuple[float, ...] = BLEND_WEIGHTS, held_out: int | None = None) -> dict[str, Any]:
    """Top-1 of the first stage and of the reranked top ``top_k`` on variants the model did not train on,
    per blend weight (``held_out``: how many of ``check`` are the dev split; the rest were never sampled).

    The best weight is kept (the smallest among ties); ``use`` when, on the variants where exactly one
    of the two answers is right, the blend wins with a one-sided sign test p < ``MAX_P``.
    """
    first: list[bool] = []
    right: dict[float, list[bool]] = {w: [] for w in weights}
    for own, text, docs, sims in check:
        ids = list(docs)[:top_k]
        first.append(ids[0] == own)
        probs = score(text, [docs[f] for f in ids])
        floor = min(sims.values(), default=0.0)  # own FAQ beyond the search: ranked last
        for w in weights:
            keys = blend([sims.get(f, floor) for f in ids], probs, w)
            right[w].append(ids[max(range(len(ids)), key=lambda i: keys[i])] == own)
    n = len(check)
    weight = max(weights, key=lambda w: (sum(right[w]), -w))
    wins = sum(r and not f for r, f in zip(right[weight], first))
    losses = sum(f and not r for r, f in zip(right[weight], first))
    p = sign_test_p(wins, losses)
    use = p < MAX_P
    held = n if held_out is None else held_out
    where = f"{n} held-out variants" if held == n else f"{n} unseen variants ({held} held out, {n - held} outside the training sample)"
    return {"rule": _rule(weights),
            "variants": n, "held_out": held, "top_k": top_k, "first_stage_top1": round(sum(first) / n, 4),
            "reranked_top1": round(sum(right[weight]) / n, 4), "weight": weight, "use": use,
            "wins": wins, "losses": losses, "p": round(p, 4),
            "by_weight": {str(w): round(sum(right[w]) / n, 4) for w in weights},
            "reason": (f"reranked top-1 {sum(right[weight]) / n:.3f} (blend weight {weight}) vs first stage {sum(first) / n:.3f} "
                       f"on {where}; right where the first stage was wrong on {wins}, the reverse on {losses} "
                       f"(sign test p {p:.3f})" + ("" if use else f": the reranker does not clearly help this KB (needs p < {MAX_P})"))}


def _skip(folder: Path, reason: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / SKIP, reason + "\n")
    (folder / ACTIVE).unlink(missing_ok=True)
    _prune(folder, keep=None)


def _prune(folder: Path, keep: str | None) -> None:
    """One model per KB on disk: remove the others (a served one is already loaded in memory)."""
    for old in folder.iterdir():
        if old.is_dir() and old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def train_kb_reranker(settings: Settings, kb: str, *, progress: bool = True, force: bool = False,
                      say: Callable[[str], None] = print) -> KbRerankerResult:
    """Train (or reuse) ``kb``'s reranker from the active build's variants and switch it in, unless the
    model in place covers the build (``force``: check that, and train, anyway).

    A KB without variants gets no reranker (``SKIP`` records why). The model is switched in
    (``ACTIVE``) only when complete, with the digests of the build it trained on (``FAQS``); its card
    holds the self-check, and the query path uses it only when that check passed and it covers the
    build served. Holds the rerankers folder's lock throughout (waiting for a training already
    running); ``TRAINING`` says who trains, for which build, meanwhile.

    Raises:
        BadInputError: the KB has no build.
        KbBusyError: another training held the lock for all of ``TRAIN_WAIT_S``.
    """
    from kbsearch.index.store import active_build_id

    kb_dir = settings.kb_dir(kb)
    if active_build_id(kb_dir) is None:
        raise BadInputError(f"knowledge base {kb!r} has no build: run kbsearch ingest first")
    folder = kb_dir / RERANKERS
    with writer_lock(folder, "KB reranker training", timeout_s=TRAIN_WAIT_S, create=True):
        try:
            return _train_kb_reranker(settings, kb, progress=progress, force=force, say=say)
        finally:
            (folder / TRAINING).unlink(missing_ok=True)


def _train_kb_reranker(settings: Settings, kb: str, *, progress: bool, force: bool,
                       say: Callable[[str], None]) -> KbRerankerResult:
    """``train_kb_reranker`` once the lock is held."""
    from kbsearch.embed.e5_small import materialize_e5_small
    from kbsearch.index.store import load_build
    from kbsearch.rerank.cross_encoder import CrossEncoderReranker

    t0 = time.perf_counter()
    kb_dir = settings.kb_dir(kb)
    folder = kb_dir / RERANKERS
    build = load_build(kb_dir, device="cpu")
    knobs = settings.kb_reranker
    seed = knobs.seed
    digests = faq_digests(build.entries.values())
    current, _ = trained_kb_reranker(kb_dir)
    if current is not None and not force and _recorded_recipe(current) == _recipe(settings):
        covered, how = covers(current, digests, knobs.retrain_share)
        if covered:
            check = (read_card(current) or {}).get("self_check", {})
            say(f"the KB reranker {current.name} of {kb!r} covers build {build.build_id} ({how}): nothing to train")
            return KbRerankerResult(current, False, time.perf_counter() - t0, check, covered=how)
    write_text_atomic(folder / TRAINING, json.dumps({
        "pid": os.getpid(), "build": build.build_id,
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}) + "\n")
    rows = variant_rows(build, knobs.max_variants, seed) if build.vectors is not None else []
    if build.vectors is None or len(rows) < MIN_VARIANTS:
        why = (f"vector index unavailable ({build.vector_error})" if build.vectors is None
               else f"the KB has {len(rows)} variants; a KB reranker needs at least {MIN_VARIANTS} to train and check")
        _skip(folder, f"no KB reranker: {why}")
        return KbRerankerResult(None, False, time.perf_counter() - t0, {"use": False, "reason": why})

    mined = mine_variants(build, rows, knobs.negatives, KB_RERANKER_DOC)
    random.Random(seed).shuffle(mined)
    n_check = max(20, int(len(mined) * CHECK_SHARE))
    held_out, train_variants = mined[:n_check], mined[n_check:]
    train, dev = kb_pairs(train_variants, knobs.negatives), kb_pairs(held_out, knobs.negatives)
    # The check also reads variants outside the training sample: a variant-rich KB has many, and a
    # check on more variants decides on/off with less noise (about 0.1 s each on 2 CPU cores).
    unused = sorted(set(variant_rows(build, 0, seed)) - set(rows))
    extra = sorted(random.Random(seed).sample(unused, min(len(unused), knobs.check_variants)))
    check_set = held_out + (mine_variants(build, extra, knobs.negatives, KB_RERANKER_DOC) if extra else [])
    base = str(materialize_e5_small(settings.model_cache))
    recipe = Recipe(base=base, method="full", lr=knobs.lr, batch_size=knobs.batch_size, epochs=knobs.epochs, balance=True,
                    max_length=knobs.max_length, early_stop_patience=knobs.epochs, save_half=True,
                    seed=seed, device=settings.device,
                    data=[f"kb {kb!r} build {build.build_id}: {len(train_variants)} variants -> {len(train)} pairs "
                          f"({knobs.negatives} vector-ranked hard negatives each)",
                          f"dev: {len(held_out)} held-out variants -> {len(dev)} pairs; self-check: those and "
                          f"{len(extra)} variants outside the training sample"])
    key = _key(train, dev, recipe, settings.rerank.top_k)
    out = folder / key
    card = read_card(out)
    trained = False

    def check_model(path: Path) -> dict[str, Any]:
        model = CrossEncoderReranker(str(path), batch_size=settings.rerank.batch_size,
                                     max_length=knobs.max_length, device=settings.device)
        model.load()
        return self_check(model.score, check_set, settings.rerank.top_k, held_out=len(held_out))

    if card is None or not card.get("complete") or "self_check" not in card:
        shutil.rmtree(out, ignore_errors=True)
        tmp = folder / f".training-{key}"  # kept when killed: the next run on these pairs resumes it
        say(f"training the KB reranker for {kb!r} on build {build.build_id}: {len(train)} pairs from "
            f"{len(train_variants)} variants, {recipe.epochs} epochs (set KBSEARCH_KB_RERANKER__MAX_VARIANTS=0 to skip)")
        try:
            result = finetune(recipe, train, dev, tmp, progress=progress, log_line=say,
                              checkpoint_every_s=knobs.checkpoint_every_s)
            check = check_model(tmp)
        except Exception as exc:  # the build is already served: a failed reranker must not fail the ingest
            shutil.rmtree(tmp, ignore_errors=True)
            why = f"training failed: {type(exc).__name__}: {exc}"
            _skip(folder, f"no KB reranker: {why}")
            say(f"KB reranker for {kb!r} not trained ({why}); the KB is served by its first stage")
            return KbRerankerResult(None, False, time.perf_counter() - t0, {"use": False, "reason": why})
        card = json.loads((tmp / CARD).read_text(encoding="utf-8"))
        card["self_check"] = check
        card["seconds"] = result.seconds
        write_text_atomic(tmp / CARD, json.dumps(card, ensure_ascii=False, indent=2) + "\n")
        fsync_tree(tmp)
        os.replace(tmp, out)
        fsync_path(folder)
        trained = True
    elif card["self_check"].get("rule") != CHECK_RULE or card["self_check"].get("variants") != len(check_set):
        # checked by another rule or on other variants: check again, no retraining
        card["self_check"] = check_model(out)
        write_text_atomic(out / CARD, json.dumps(card, ensure_ascii=False, indent=2) + "\n")
    check = card["self_check"]
    write_text_atomic(out / FAQS, json.dumps({"build": build.build_id, "recipe": _recipe(settings), "faqs": digests}) + "\n")
    write_text_atomic(folder / ACTIVE, key + "\n")
    (folder / SKIP).unlink(missing_ok=True)
    _prune(folder, keep=key)
    say(f"KB reranker {'trained' if trained else 'reused'} ({out}): {check['reason']}; "
        f"{'in use' if check['use'] else 'not used'}")
    return KbRerankerResult(out, trained, time.perf_counter() - t0, check)


def _recipe(settings: Settings) -> str:
    """What a model's training and check were decided by, besides the FAQs: a model made by other knobs (another
    seed, sample size, check size, rule...) does not count as covering a build, so changing them retrains or
    re-checks (which reuses the model when its pairs are the same)."""
    knobs = settings.kb_reranker.model_dump(exclude={"auto_train", "retrain_share", "checkpoint_every_s"})
    return hashlib.sha256(json.dumps([knobs, settings.rerank.top_k, CHECK_RULE], sort_keys=True).encode()).hexdigest()[:16]


def _recorded_recipe(model: Path) -> str | None:
    try:
        return json.loads((model / FAQS).read_text(encoding="utf-8")).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None


def _key(train: list[Pair], dev: list[Pair], recipe: Recipe, top_k: int) -> str:
    """A stable id of what a KB reranker is trained from and how (the cache key)."""
    from kbsearch.embed.e5_small import E5_SMALL_MODEL_ID

    h = hashlib.sha256()
    for p in train + [Pair("", "", 0)] + dev:  # a separator row, so moving a pair between splits changes the key
        h.update(json.dumps([p.a, p.b, p.label], ensure_ascii=False).encode("utf-8"))
    knobs = {k: v for k, v in vars(recipe).items() if k not in ("base", "data", "device")}
    h.update(json.dumps([knobs, E5_SMALL_MODEL_ID, top_k], sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:16]
