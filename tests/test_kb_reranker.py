"""The ``kb`` reranker: each KB's own cross-encoder, trained from its variants, used only if it helps."""

from __future__ import annotations

import json

import pytest

from kbsearch.codes import FallbackCause
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.finetune.kb import MAX_P, self_check, sign_test_p, train_kb_reranker
from kbsearch.index.durable import write_text_atomic
from kbsearch.index.builder import build_index
from kbsearch.rerank import make_rerank_planner
from kbsearch.rerank.blend import BLEND_WEIGHTS
from kbsearch.rerank.kb import ACTIVE, MIN_VARIANTS, RERANKERS, SKIP, KbRerankPlanner, active_kb_reranker
from kbsearch.service.query import QueryEngine
from support import entry, one_chunk

TOPICS = {
    "退款": ["怎么申请退款", "退款多久到账", "退款进度在哪里看", "申请退款的入口", "退钱要几天", "如何退款"],
    "密码": ["忘记登录密码怎么办", "如何重置密码", "密码找回", "改密码在哪里", "登录密码忘了", "密码怎么修改"],
    "发票": ["怎么开发票", "发票在哪里下载", "电子发票怎么开", "补开发票", "发票抬头填错了", "如何申请发票"],
    "物流": ["快递到哪了", "怎么查物流", "包裹一直没更新", "物流信息在哪看", "快递单号在哪", "查询配送进度"],
    "会员": ["会员怎么开通", "会员有什么权益", "会员续费", "取消会员自动续费", "会员到期时间", "会员积分怎么用"],
    "地址": ["修改收货地址", "地址写错了", "怎么改地址", "新增收货地址", "默认地址设置", "删除地址"],
    "优惠券": ["优惠券怎么用", "优惠券过期了", "领取优惠券", "优惠券不能用", "优惠券在哪", "满减券使用规则"],
    "客服": ["怎么联系客服", "人工客服电话", "客服工作时间", "在线客服入口", "投诉客服", "转人工"],
    "账号": ["注销账号", "账号被冻结", "换绑手机号", "账号安全", "实名认证", "账号申诉"],
}


#: The seeded self-check of the topics' KB reranker trained on e5-small: (use, weight, wins, losses). On these
#: 23 unseen variants no blend weight changes a single top-1 answer, so the smallest weight is kept and the
#: model stays off.
SEEDED_CHECK = (False, 0.1, 0, 0)


def _kb(tmp_path, variants: bool = True, model_cache=None, **knobs) -> Settings:
    settings = Settings(home=tmp_path / "home", embed={"backend": "hash"}, kb_reranker={"epochs": 1, **knobs},
                        **({"model_cache": model_cache} if model_cache else {}))
    entries = [entry(f"t{i}", qs[0], f"{t}：请在App里按提示操作。", variants=tuple(qs[1:]) if variants else ())
               for i, (t, qs) in enumerate(TOPICS.items())]
    build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    return settings


def _engine(settings: Settings, force: bool = False) -> QueryEngine:
    """An engine with the configured (kb) planner, or its forced twin (a KB's model even where its check failed)."""
    planner = make_rerank_planner(settings)
    engine = QueryEngine(settings, HashEmbedder(dim=64), planner.forced() if force else planner)
    engine.load()
    return engine


def test_self_check_uses_the_reranker_only_when_it_clearly_beats_the_first_stage():
    held = [("a", "q1", {"b": "doc b", "a": "doc a"}, {"b": 0.9, "a": 0.8}),
            ("b", "q2", {"b": "doc b", "a": "doc a"}, {"b": 0.9, "a": 0.8})] * 5

    def oracle(q, docs):
        own = "doc a" if q == "q1" else "doc b"
        return [1.0 if d == own else 0.0 for d in docs]

    good = self_check(oracle, held, top_k=10)  # right on 5 variants where the first stage is wrong, wrong on none
    assert good["first_stage_top1"] == 0.5 and good["reranked_top1"] == 1.0
    assert (good["wins"], good["losses"], good["p"]) == (5, 0, 0.0312) and good["use"] is True
    tie = self_check(lambda q, docs: [1.0, 0.0], held, top_k=10)  # always the first-stage order
    assert tie["reranked_top1"] == tie["first_stage_top1"] == 0.5 and tie["use"] is False
    assert "does not clearly help" in tie["reason"]
    # A few more right answers than the first stage are within noise: not enough to switch the model on.
    few = self_check(oracle, held[:8], top_k=10)
    assert few["reranked_top1"] > few["first_stage_top1"] and few["wins"] == 4 and few["use"] is False
    # The window is the reranker's: with top_k 1 it can only agree with the first stage.
    assert self_check(oracle, held, top_k=1)["use"] is False
    # The held-out share and the variants outside the training sample are told apart in the reason.
    assert "10 unseen variants (4 held out, 6 outside the training sample)" in self_check(oracle, held, 10, held_out=4)["reason"]


def test_sign_test_counts_only_the_variants_where_the_two_answers_differ():
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(1, 0) == 0.5 and sign_test_p(5, 0) == 1 / 32
    assert sign_test_p(3, 3) > 0.5 and sign_test_p(0, 4) == 1.0
    # Net +5 is not enough when the reranker also loses one (8/128 = 0.0625), net +7 of 9 is.
    assert sign_test_p(6, 1) == 8 / 128 and sign_test_p(6, 1) > MAX_P > sign_test_p(8, 1)


def test_self_check_picks_the_blend_weight_where_the_reranker_alone_would_hurt():
    docs = {"b": "doc b", "a": "doc a", "c": "doc c"}
    held = [("a", "near tie", docs, {"b": 0.90, "a": 0.89, "c": 0.50}),  # first stage wrong by a hair
            ("b", "clear", docs, {"b": 0.90, "a": 0.70, "c": 0.60})] * 5  # first stage right by a margin
    probs = {"near tie": [0.5, 0.6, 0.9], "clear": [0.4, 0.5, 0.5]}  # alone, the reranker misses both

    check = self_check(lambda q, d: probs[q], held, top_k=10)
    assert check["by_weight"]["1.0"] == 0.0 and check["first_stage_top1"] == 0.5
    assert check["weight"] == 0.2 and check["reranked_top1"] == 1.0 and check["use"] is True
    assert "blend weight 0.2" in check["reason"]
    # Blending is on standardised scores: rescaling the first stage's scores changes nothing.
    scaled = [(o, t, d, {k: 40 * v - 7 for k, v in sims.items()}) for o, t, d, sims in held]
    assert self_check(lambda q, d: probs[q], scaled, top_k=10)["by_weight"] == check["by_weight"]


def test_active_kb_reranker_explains_every_state(tmp_path):
    kb_dir = tmp_path / "kb"
    assert active_kb_reranker(kb_dir)[0] is None and "no KB reranker trained yet" in active_kb_reranker(kb_dir)[1]
    folder = kb_dir / RERANKERS
    folder.mkdir(parents=True)
    (folder / SKIP).write_text("no KB reranker: the KB has 3 variants\n")
    assert active_kb_reranker(kb_dir) == (None, "no KB reranker: the KB has 3 variants")
    (folder / ACTIVE).write_text("k1\n")
    assert "incomplete" in active_kb_reranker(kb_dir)[1]
    (folder / "k1").mkdir()
    card = folder / "k1" / "kbsearch_pair_model.json"
    card.write_text(json.dumps({"self_check": {"use": False, "reason": "reranked 0.2 vs first stage 0.6"}}))
    assert active_kb_reranker(kb_dir) == (None, "KB reranker off: reranked 0.2 vs first stage 0.6")
    assert active_kb_reranker(kb_dir, force=True) == (folder / "k1", "ok")
    card.write_text(json.dumps({"self_check": {"use": True}}))
    assert active_kb_reranker(kb_dir) == (folder / "k1", "ok")


def test_kb_reranker_is_the_default_backend():
    assert Settings().rerank.backend == "kb" and isinstance(make_rerank_planner(Settings()), KbRerankPlanner)


def test_a_kb_without_enough_variants_gets_no_reranker_and_says_why(tmp_path):
    settings = _kb(tmp_path, variants=False)
    result = train_kb_reranker(settings, "default", progress=False, say=lambda line: None)
    assert result.folder is None and not result.trained
    assert f"at least {MIN_VARIANTS}" in (settings.kb_dir("default") / RERANKERS / SKIP).read_text()
    engine = _engine(settings)
    answer = engine.ask("怎么申请退款")
    assert answer.mode == "vector" and answer.answered
    assert any(f"needs at least {MIN_VARIANTS}" in n and "stage skipped" in n for n in answer.notes)
    assert f"needs at least {MIN_VARIANTS}" in engine.status()["kbs"]["default"]["reranker"]


@pytest.mark.slow
def test_kb_reranker_trains_on_the_real_base_checks_itself_and_is_cached(tmp_path, e5_cache):
    """Real e5-small training on the topics' variants (seeded): one definite self-check outcome, then caching,
    re-checking, and serving by the card (blend weight, off, and the model alone)."""
    settings = _kb(tmp_path, max_variants=42, model_cache=e5_cache)  # of 45: 3 are left for the check only
    lines: list[str] = []
    first = train_kb_reranker(settings, "default", progress=False, say=lines.append)
    assert first.trained and first.folder is not None and first.folder.parent.name == RERANKERS
    card = json.loads((first.folder / "kbsearch_pair_model.json").read_text())
    check = card["self_check"]
    assert card["complete"] and (check["variants"], check["held_out"]) == (23, 20)
    assert (check["use"], check["weight"], check["wins"], check["losses"]) == SEEDED_CHECK
    assert check["p"] == round(sign_test_p(check["wins"], check["losses"]), 4)
    assert set(check["by_weight"]) == {str(w) for w in BLEND_WEIGHTS}
    assert "kb 'default'" in card["data"][0] and "20 held-out variants" in card["data"][1]
    assert "3 variants outside the training sample" in card["data"][1]
    assert (settings.kb_dir("default") / RERANKERS / ACTIVE).read_text().strip() == first.folder.name
    assert any("KB reranker trained" in line for line in lines)

    again = train_kb_reranker(settings, "default", progress=False, say=lines.append)
    assert again.folder == first.folder and not again.trained and again.self_check == check
    # Fewer check variants: the cached model is checked again on them, not trained again.
    fewer = settings.updated(kb_reranker={"check_variants": 1})
    rechecked = train_kb_reranker(fewer, "default", progress=False, say=lines.append)
    assert rechecked.folder == first.folder and not rechecked.trained and rechecked.self_check["variants"] == 21
    card = json.loads((first.folder / "kbsearch_pair_model.json").read_text())

    # Served as the card says: the seeded check switched it off, so the stage is skipped and the notes say why ...
    answer = _engine(settings).ask("退款多久能到账")
    assert answer.mode == "vector" and any("KB reranker off" in n for n in answer.notes) and "rerank" not in answer.timings_ms
    # ... and forced on, the trained cross-encoder reranks, blended at the weight its check chose.
    forced = _engine(settings, force=True).ask("退款多久能到账", explain=True)
    assert forced.explain["rerank_weight"] == card["self_check"]["weight"] and forced.hits[0].scores.rerank is not None
    assert forced.mode == "vector" and any("blended" in n for n in forced.notes) and forced.hits[0].ranked_by == "blend"

    def served(weight: float):
        card["self_check"].update(use=True, weight=weight)
        (first.folder / "kbsearch_pair_model.json").write_text(json.dumps(card))
        return _engine(settings).ask("退款多久能到账", explain=True)

    alone = served(1.0)
    assert alone.mode == "rerank" and all(0.0 <= h.score <= 1.0 for h in alone.hits)
    assert alone.hits[0].ranked_by == "rerank" and alone.decision.score == alone.hits[0].scores.rerank
    blended = served(0.3)
    assert blended.mode == "vector" and blended.explain["rerank_weight"] == 0.3
    assert any("KB reranker blended with the vector score (weight 0.3)" in n for n in blended.notes)
    assert blended.decision.score == blended.hits[0].scores.vector and blended.hits[0].scores.rerank is not None
    # A running service picks up a re-checked weight when the rerankers folder changes (as training does).
    engine = _engine(settings)
    assert engine.ask("退款多久能到账").mode == "vector"
    card["self_check"]["weight"] = 1.0
    (first.folder / "kbsearch_pair_model.json").write_text(json.dumps(card))
    write_text_atomic(settings.kb_dir("default") / RERANKERS / ACTIVE, first.folder.name + "\n")
    assert engine.ask("退款多久能到账").mode == "rerank"


@pytest.mark.slow
def test_eval_shows_the_served_and_the_forced_kb_reranker(tmp_path, e5_cache):
    from kbsearch.eval import run_eval
    from kbsearch.eval.run import EvalQuery

    settings = _kb(tmp_path, model_cache=e5_cache)
    folder = train_kb_reranker(settings, "default", progress=False, say=lambda line: None).folder
    card_path = folder / "kbsearch_pair_model.json"
    card = json.loads(card_path.read_text())
    queries = [EvalQuery(qid=str(i), query=qs[1] + "？", gold=(f"t{i}",)) for i, qs in enumerate(TOPICS.values())]

    def names(use: bool) -> dict:
        card["self_check"]["use"] = use
        card_path.write_text(json.dumps(card))
        report = run_eval(settings, "default", queries, HashEmbedder(dim=64), make_rerank_planner(settings),
                          first_stages=("vector", "fused"))
        return {r.name: r for r in report.results}

    off = names(False)
    assert set(off) == {"vector", "fused", "fused+rerank", "fused+rerank-forced"}
    assert off["fused+rerank"].top1 == off["fused"].top1 and off["fused+rerank-forced"].reranker == "kb (forced)"
    assert "rerank" in off["fused+rerank-forced"].latency_ms and "rerank" not in off["fused+rerank"].latency_ms
    on = names(True)
    assert set(on) == {"vector", "fused", "fused+rerank"} and "rerank" in on["fused+rerank"].latency_ms
    # kbsearch eval makes the reranker before it moves to a temporary home: the KB's folder must come from
    # the engine's settings, not the reranker's (it used to skip the stage there as "not trained yet").
    elsewhere = make_rerank_planner(settings.updated(home=tmp_path / "elsewhere"))
    report = run_eval(settings, "default", queries, HashEmbedder(dim=64), elsewhere, first_stages=("fused",))
    assert "rerank" in {r.name: r for r in report.results}["fused+rerank"].latency_ms


def test_a_kb_model_that_fails_to_load_degrades_to_the_first_stage(tmp_path):
    settings = _kb(tmp_path)
    folder = settings.kb_dir("default") / RERANKERS
    (folder / "broken").mkdir(parents=True)
    (folder / "broken" / "kbsearch_pair_model.json").write_text(json.dumps({"self_check": {"use": True}}))
    (folder / ACTIVE).write_text("broken\n")
    answer = _engine(settings).ask("怎么申请退款")
    assert answer.degraded and answer.mode == "vector" and answer.answered
    assert any("reranker failed" in n for n in answer.notes)
    assert [c for c, _ in answer.trace.fallbacks] == [FallbackCause.RERANKER_ERROR]


def test_a_failed_training_keeps_the_kb_served_without_a_reranker(tmp_path, monkeypatch, e5_cache):
    import kbsearch.finetune.kb as kb_module

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    settings = _kb(tmp_path, model_cache=e5_cache)
    monkeypatch.setattr(kb_module, "finetune", boom)
    lines: list[str] = []
    result = train_kb_reranker(settings, "default", progress=False, say=lines.append)
    assert result.folder is None and "training failed: RuntimeError: out of memory" in result.self_check["reason"]
    folder = settings.kb_dir("default") / RERANKERS
    assert not (folder / ACTIVE).exists() and not [p for p in folder.iterdir() if p.is_dir()]
    assert "out of memory" in active_kb_reranker(settings.kb_dir("default"))[1]
    assert any("served by its first stage" in line for line in lines)
    answer = _engine(settings).ask("怎么申请退款")
    assert answer.answered and answer.mode == "vector" and not answer.degraded


# --- coverage: which builds a trained model serves, and when training is started -----------------------


def _fake_model(settings: Settings, key: str, trained_on, *, use: bool = True) -> None:
    """A model folder as training leaves it (card with a self-check, FAQS of the build it trained on), made
    ACTIVE; no weights (the planner's coverage decision never loads them)."""
    from kbsearch.finetune.kb import _recipe
    from kbsearch.rerank.kb import FAQS, faq_digests

    folder = settings.kb_dir("default") / RERANKERS / key
    folder.mkdir(parents=True)
    (folder / "kbsearch_pair_model.json").write_text(json.dumps({"complete": True, "self_check": {"use": use, "weight": 0.5}}))
    (folder / FAQS).write_text(json.dumps({"build": trained_on.build_id, "recipe": _recipe(settings),
                                           "faqs": faq_digests(trained_on.entries.values())}))
    write_text_atomic(folder.parent / ACTIVE, key + "\n")


def _rebuild(settings: Settings, edited: int):
    """A new build of the topics' KB with the questions of the first ``edited`` FAQs changed."""
    entries = [entry(f"t{i}", qs[0] + ("（新）" if i < edited else ""), f"{t}：请在App里按提示操作。", variants=tuple(qs[1:]))
               for i, (t, qs) in enumerate(TOPICS.items())]
    build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    from kbsearch.index.store import load_build
    return load_build(settings.kb_dir("default"), device="cpu")


def test_a_model_serves_the_builds_it_covers_and_is_off_for_a_build_that_changed_too_much(tmp_path):
    """9 FAQs; retrain_share 0.2: one edited FAQ (1/9) keeps the model, two (2/9) switch it off for that build,
    at once and with the reason, and rolling back to a covered build serves it again. Nothing is loaded."""
    from kbsearch.index.store import load_build

    settings = _kb(tmp_path, retrain_share=0.2)
    kb_dir = settings.kb_dir("default")
    first = load_build(kb_dir, device="cpu")
    _fake_model(settings, "k1", first)
    planner = make_rerank_planner(settings)
    assert planner.describe(kb_dir, first).on
    assert planner.describe(kb_dir, _rebuild(settings, edited=1)).on
    too_many = _rebuild(settings, edited=2)
    state = planner.describe(kb_dir, too_many)
    assert not state.on and "2 of 9 FAQs changed since" in state.why and "retrain_share 0.2" in state.why
    assert f"trained on build {first.build_id}" in state.why
    assert planner.describe(kb_dir, first).on  # decided per build served: the old build is still covered
    assert planner.describe(kb_dir).on  # no build given: coverage not checked (eval's account of the model)
    engine = _engine(settings)
    answer = engine.ask("怎么申请退款")  # the engine serves the newest build: first stage only, and says why
    assert answer.mode == "vector" and any("2 of 9 FAQs changed since" in n for n in answer.notes)
    assert "2 of 9 FAQs changed since" in engine.status()["kbs"]["default"]["reranker"]


def test_training_is_not_repeated_for_a_covered_build_and_request_training_starts_only_what_is_needed(tmp_path, monkeypatch):
    from kbsearch.index.store import load_build
    from kbsearch.rerank import kb as kb_module

    settings = _kb(tmp_path, retrain_share=0.2, auto_train=True)
    kb_dir = settings.kb_dir("default")
    first = load_build(kb_dir, device="cpu")
    _fake_model(settings, "k1", first, use=False)
    _rebuild(settings, edited=1)
    lines: list[str] = []
    done = train_kb_reranker(settings, "default", progress=False, say=lines.append)  # no base model needed: nothing trains
    assert not done.trained and done.folder == kb_dir / RERANKERS / "k1" and "1 of 9 FAQs changed since" in done.covered
    assert any("nothing to train" in line for line in lines)
    assert not (kb_dir / RERANKERS / "TRAINING").exists()
    # a model made by other knobs does not count as covering: changing them retrains or re-checks
    from kbsearch.finetune.kb import _recipe
    assert _recipe(settings.updated(kb_reranker={"seed": 7})) != _recipe(settings)
    assert _recipe(settings.updated(kb_reranker={"retrain_share": 0.5})) == _recipe(settings)

    started: list[list[str]] = []

    class FakePopen:  # records the command instead of training (the real start is tested in test_kb_reranker_background)
        pid = 4242

        def __init__(self, cmd, **kw):
            started.append(cmd)
            assert kw["start_new_session"] and kw["stdin"] is not None

    monkeypatch.setattr(kb_module.subprocess, "Popen", FakePopen)
    assert kb_module.request_training(settings, "default") is None and not started  # covered: nothing started
    _rebuild(settings, edited=3)
    note = kb_module.request_training(settings, "default")
    assert note and "pid 4242" in note and started[0][-6:] == ["--home", str(settings.home), "train-reranker", "--kb",
                                                                "default", "--background"]
    from kbsearch.cli import build_parser
    args = build_parser().parse_args(started[0][3:])  # what the child runs parses
    assert (args.home, args.command, args.kb, args.background) == (str(settings.home), "train-reranker", "default", True)
    assert "started for kb 'default'" in (kb_dir / RERANKERS / "train.log").read_text()
    assert kb_module.request_training(settings.updated(kb_reranker={"auto_train": False}), "default") is None
    assert kb_module.request_training(settings.updated(rerank={"backend": "none"}), "default") is None
    assert len(started) == 1


def test_a_kb_without_a_model_says_a_training_is_running(tmp_path):
    import os

    from kbsearch.rerank.kb import TRAINING

    settings = _kb(tmp_path)
    folder = settings.kb_dir("default") / RERANKERS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAINING).write_text(json.dumps({"pid": os.getpid(), "build": "b1", "since": "2026-12-02T08:00:00+00:00"}))
    path, why = active_kb_reranker(settings.kb_dir("default"))
    assert path is None and "no KB reranker trained yet" in why and f"training for build b1 since 2026-12-02T08:00:00+00:00 (pid {os.getpid()})" in why
    (folder / TRAINING).write_text(json.dumps({"pid": 2 ** 22 + 7, "build": "b1", "since": "x"}))  # a killed trainer's note
    assert "training for" not in active_kb_reranker(settings.kb_dir("default"))[1]
