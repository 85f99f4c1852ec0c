"""Near-duplicates merge into one canonical entry; questions that differ in a key term never do."""

from __future__ import annotations

import datetime as dt

import pytest

from kbsearch.config import IngestSettings, Settings
from kbsearch.ingest.dedupe import DedupePolicy, Deduper, QuestionKey, compare_questions
from kbsearch.types import FaqEntry

SETTINGS = Settings().ingest


def entry(i: str, question: str, answer: str | None = None, **kw) -> FaqEntry:
    return FaqEntry(id=i, question=question, answer=answer or question, source=f"t:{i}", **kw)


def same(a: str, b: str) -> bool:
    policy = DedupePolicy()
    return compare_questions(QuestionKey.of(a, policy), QuestionKey.of(b, policy), SETTINGS.dedupe_confirm_ratio)[0]


@pytest.mark.parametrize(
    ("a", "b"),
    [("如何退货？", "如何退货?"), ("如何 退货", "如何退货"), ("ＡＰＰ怎么下载", "app怎么下载"),
     ("请问如何退货呢", "如何退货"), ("我的花呗怎么用不了", "花呗怎么用不了啊"),
     ("How do I reset my password?", "how do i reset my password"),
     ("How can I reset my password", "How do I reset my password?"),
     ("What does renters insurance typically cover?", "What does renters insurance cover?"),
     ("Can I cancel my orders?", "can i cancel my order"),
     ("What are the best Medigap policies?", "What is the best Medigap policy?"),
     ("Is long-term care insurance tax-free?", "Is Long Term Care Insurance Tax Free?"),
     ("How quickly are refunds paid?", "How quick are refunds paid?")],
)
def test_near_duplicates_are_the_same_question(a: str, b: str) -> None:
    assert same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [("花呗怎么还款", "借呗怎么还款"), ("别人可以帮我还借呗的款吗", "别人可以帮我还花呗的款吗"),
     ("为什么不能用花呗", "为什么能用花呗"), ("怎么变成商家收款", "怎么变成商家收款了"),
     ("如何申请退款", "如何申请退货"), ("为什么在线支付报错1000075", "为什么在线支付报错1000051"),
     ("How much is life insurance for a 70 year old?", "How much is life insurance for a 80 year old?"),
     ("Does homeowners insurance cover mold?", "Does homeowners insurance cover pool?"),
     ("Why can't I log in?", "Why can I log in?"), ("How do I activate my card?", "How do I deactivate my card?"),
     ("Where to buy disability insurance?", "Why buy disability insurance?"),
     ("Can I apply online?", "Can I app online?")],
)
def test_key_term_differences_are_never_the_same_question(a: str, b: str) -> None:
    assert not same(a, b)


def test_similar_but_different_questions_are_reported_for_review() -> None:
    entries = [entry("h", "蚂蚁花呗账单分期以后不能提前还款，提示系统繁忙请稍后再试"), entry("j", "蚂蚁借呗账单分期以后不能提前还款，提示系统繁忙请稍后再试")]
    result = Deduper(SETTINGS).dedupe(entries)
    assert result.entries == entries and not result.merged
    (note,) = result.possible_duplicates
    assert (note.a[0], note.b[0]) == ("h", "j") and "'花' vs '借'" in note.reason


def test_merge_picks_longest_answer_and_keeps_questions_as_variants() -> None:
    entries = [
        entry("a", "如何退货？", "七天内可退。", variants=("退货流程",), tags=("售后",)),
        entry("other", "如何换货？", "联系客服。"),
        entry("b", "如何退货", "七天内可退。需保持商品完好。", variants=("怎么退货",), tags=("退货",)),
        entry("c", "请问如何退货呢", "七天内可退", variants=("退货流程",)),
    ]
    result = Deduper(SETTINGS).dedupe(entries)
    assert [e.id for e in result.entries] == ["b", "other"]  # canonical sits where the earliest member was
    canon = result.entries[0]
    assert canon.answer == "七天内可退。需保持商品完好。" and canon.question == "如何退货"
    assert canon.variants == ("怎么退货", "如何退货？", "退货流程", "请问如何退货呢")
    assert canon.merged_ids == ("a", "c")
    assert canon.tags == ("退货", "售后")
    (cluster,) = result.merged
    assert cluster.canonical_id == "b" and [m[0] for m in cluster.members] == ["b", "a", "c"]


def test_ties_go_to_the_earliest_entry() -> None:
    entries = [entry("x", "Reset password?", "Use the link."), entry("y", "reset password", "Use the link.")]
    result = Deduper(SETTINGS).dedupe(entries)
    (canon,) = result.entries
    assert canon.id == "x" and canon.variants == ("reset password",) and canon.merged_ids == ("y",)


def test_intent_entries_without_answers_merge_and_keep_a_real_answer() -> None:
    entries = [entry("i", "card arrival"), entry("f", "Card arrival?", "Cards arrive in 5 days.")]
    result = Deduper(SETTINGS).dedupe(entries)
    (canon,) = result.entries
    assert (canon.id, canon.answer, canon.merged_ids) == ("f", "Cards arrive in 5 days.", ("i",))


@pytest.mark.parametrize(
    ("b_kwargs", "reason"),
    [({"answer": "请联系客服。"}, "different answers"),
     ({"section": "花呗"}, "different sections"),
     ({"valid_until": dt.date(2099, 1, 1)}, "different validity windows")],
)
def test_same_question_with_incompatible_answer_section_or_window_is_a_conflict(b_kwargs: dict, reason: str) -> None:
    a = entry("a", "如何退款？", "七天内原路退回。")
    b = entry("b", "如何退款", **{"answer": "七天内原路退回。", **b_kwargs})
    result = Deduper(SETTINGS).dedupe([a, b])
    assert result.entries == [a, b] and not result.merged
    (conflict,) = result.conflicts
    assert (conflict.a[0], conflict.b[0]) == ("a", "b") and reason in conflict.reason


def test_conflicting_member_stays_while_compatible_ones_merge() -> None:
    entries = [entry("a", "如何退款？", "七天内退回。"), entry("b", "如何退款", "请联系客服。"), entry("c", "如何退款呢", "七天内退回。")]
    result = Deduper(SETTINGS).dedupe(entries)
    assert [e.id for e in result.entries] == ["a", "b"]
    assert result.entries[0].merged_ids == ("c",) and len(result.conflicts) == 1


def test_dedupe_can_be_switched_off() -> None:
    entries = [entry("a", "如何退货？"), entry("b", "如何退货")]
    assert Deduper(IngestSettings(dedupe=False)).dedupe(entries).entries == entries


def test_negations_cannot_be_declared_noise() -> None:
    with pytest.raises(ValueError, match="negations"):
        DedupePolicy(noise_words=frozenset({"the", "not"}))
    with pytest.raises(ValueError, match="negations"):
        DedupePolicy(noise_chars_zh=frozenset("吗不"))


def test_lsh_finds_candidates_among_many_entries() -> None:
    # the duplicate pair is far apart in a KB of distinct questions: only the LSH brings them together
    entries = [entry(f"n{i}", f"第{i}号商品的保修期是多久") for i in range(300)]
    entries.insert(10, entry("dup1", "会员积分怎么兑换礼品？"))
    entries.append(entry("dup2", "会员积分怎么兑换礼品"))
    result = Deduper(SETTINGS).dedupe(entries)
    assert [c.canonical_id for c in result.merged] == ["dup1"]
    assert len(result.entries) == 301


def test_negated_answer_is_a_conflict_not_a_merge(tmp_path) -> None:
    """"可以。" is a substring of "不可以，…": the answers contradict each other and must not merge."""
    from kbsearch.ingest import run_ingest

    path = tmp_path / "kb.jsonl"
    path.write_text(
        '{"id": "y", "question": "定制商品可以退货吗？", "answer": "可以。"}\n'
        '{"id": "n", "question": "定制商品可以退货吗", "answer": "不可以，定制商品不支持七天无理由退货。"}\n'
        '{"id": "p", "question": "怎么退货？", "answer": "七天内可退。"}\n'
        '{"id": "q", "question": "怎么退货", "answer": "七天内可退，需保持商品完好。"}\n',
        "utf-8",
    )
    result = run_ingest([path], SETTINGS)
    ids = {e.id for e in result.entries}
    assert {"y", "n"} <= ids and len(result.report.conflicts) == 1
    assert "q" in ids and "p" not in ids  # a clause-level excerpt still merges (longest answer kept)
