"""Long answers split at their own headings, else paragraphs/sentences; no text is ever lost."""

from __future__ import annotations

import math
import re
from itertools import pairwise

import pytest

from kbsearch.ingest.chunk import chunk_entry, split_answer
from kbsearch.types import Chunk, FaqEntry

MAX = 120


def entry(answer: str, section: str = "退货政策", question: str = "如何退货？") -> FaqEntry:
    return FaqEntry(id="rt", question=question, answer=answer, section=section)


def check_invariants(e: FaqEntry, chunks: list[Chunk], max_chars: int) -> None:
    """Coverage, order, size, ordinals and prefix: what every chunking must satisfy."""
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    assert squash("".join(c.body for c in chunks)) == squash(e.answer)
    pos = 0
    for c in chunks:
        found = e.answer.find(c.body, pos)
        assert found >= pos, f"chunk {c.ordinal} is not the next slice of the answer"
        pos = found + len(c.body)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.faq_id == e.id for c in chunks)
    assert all(len(c.body) <= max_chars for c in chunks) or len(e.answer) <= max_chars
    title = f"【{e.section}】{e.question}" if e.section else e.question
    assert all(c.text.startswith(title + "\n") and c.text.endswith(c.body) for c in chunks)


def test_short_answer_is_one_chunk_with_prefix() -> None:
    e = entry("七天内可退。")
    (c,) = chunk_entry(e, MAX)
    assert c == Chunk(faq_id="rt", ordinal=0, heading="", text="【退货政策】如何退货？\n七天内可退。", body="七天内可退。")


def test_no_section_prefix_is_the_question() -> None:
    (c,) = chunk_entry(entry("Within 7 days.", section="", question="How do I return?"), MAX)
    assert c.text == "How do I return?\nWithin 7 days."


SECTIONED = {
    "markdown": "## 退货条件\n" + "商品需完好，" * 12 + "\n## 退货流程\n" + "登录后申请，" * 12 + "\n### 运费\n" + "买家承担。" * 10,
    "brackets": "【退货条件】" + "商品需完好，" * 12 + "\n【退货流程】" + "登录后申请，" * 12 + "\n【运费】" + "买家承担。" * 10,
    "chinese-numbers": "一、退货条件\n" + "商品需完好，" * 12 + "\n二、退货流程\n" + "登录后申请，" * 12 + "\n三、运费\n" + "买家承担。" * 10,
    "steps": "Step 1: open your orders\n" + "Find the order. " * 5
    + "\nStep 2: request a return\n" + "Fill in the form. " * 5
    + "\nStep 3: ship it\n" + "Use the label. " * 5,
    "numbered": "1. 退货条件\n" + "商品需完好，" * 12 + "\n2. 退货流程\n" + "登录后申请，" * 12 + "\n3. 运费\n" + "买家承担。" * 10,
}


@pytest.mark.parametrize("style", sorted(SECTIONED))
def test_splits_at_own_headings(style: str) -> None:
    e = entry(SECTIONED[style])
    chunks = chunk_entry(e, MAX)
    check_invariants(e, chunks, MAX)
    assert len(chunks) == 3
    headings = [c.heading for c in chunks]
    assert headings in (["退货条件", "退货流程", "运费"], ["【退货条件】", "【退货流程】", "【运费】"],
                        ["一、退货条件", "二、退货流程", "三、运费"], ["1. 退货条件", "2. 退货流程", "3. 运费"],
                        ["Step 1: open your orders", "Step 2: request a return", "Step 3: ship it"])
    # each chunk body starts with its own heading line, so the heading is not repeated in the text
    assert all(c.text.count(c.heading) == 1 for c in chunks)


def test_paragraphs_when_there_are_no_headings() -> None:
    paragraphs = ["第一段" + "内容" * 30, "第二段" + "内容" * 30, "第三段" + "内容" * 30]
    e = entry("\n\n".join(paragraphs))
    chunks = chunk_entry(e, MAX)
    check_invariants(e, chunks, MAX)
    assert [c.body for c in chunks] == paragraphs and all(c.heading == "" for c in chunks)


def test_long_single_line_chinese_splits_at_sentences() -> None:
    sentences = [f"第{i}句说明退货的一个细节，请仔细阅读。" for i in range(20)]
    e = entry("".join(sentences))
    chunks = chunk_entry(e, MAX)
    check_invariants(e, chunks, MAX)
    assert all(c.body.endswith("。") for c in chunks)  # never cut inside a sentence


def test_text_without_any_break_is_cut_hard_but_kept() -> None:
    e = entry("退" * 500)
    chunks = chunk_entry(e, MAX)
    check_invariants(e, chunks, MAX)
    assert len(chunks) == 5


def test_chunks_are_balanced_not_full_plus_crumb() -> None:
    e = entry("".join(f"这是第{i:02d}句话。" for i in range(40)))  # 320 chars, 8 each
    sizes = [len(c.body) for c in chunk_entry(e, 300)]
    assert len(sizes) == 2 and min(sizes) >= 140


def test_continuation_of_a_long_section_repeats_its_heading() -> None:
    e = entry("## 退货条件\n" + "\n\n".join(["商品需完好，吊牌齐全。" * 6] * 3))
    chunks = chunk_entry(e, MAX)
    check_invariants(e, chunks, MAX)
    assert len(chunks) == 3 and all(c.heading == "退货条件" for c in chunks)
    assert chunks[0].text.startswith("【退货政策】如何退货？\n## 退货条件\n")
    assert chunks[1].text.startswith("【退货政策】如何退货？\n退货条件\n商品需完好")


def test_tiny_sections_are_merged() -> None:
    answer = "\n".join(f"{i}. 第{i}步" for i in range(1, 30))  # 29 tiny numbered sections, 242 chars
    e = entry(answer)
    chunks = chunk_entry(e, MAX)
    check_invariants(e, chunks, MAX)
    assert len(chunks) == math.ceil(len(answer) / MAX)  # as few chunks as the size limit allows


def test_spans_cover_the_answer_exactly() -> None:
    answer = SECTIONED["markdown"] + "\n\n" + "尾段。" * 50
    spans = split_answer(answer, MAX)
    assert spans[0][1] == 0 and spans[-1][2] == len(answer)
    assert all(a[2] == b[1] for a, b in pairwise(spans))
