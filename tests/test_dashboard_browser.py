"""The operator dashboard in a real browser (Playwright driving Debian's chromium, headless) against a real
``kbsearch serve`` on the sample KB with the embedded e5-small model.

A scripted replay of questions with known outcomes (answered, handed off, some with negative feedback) goes
through ``/ask`` and ``/feedback``; the page must show exactly that volume, hand-off rate and those counts,
a score histogram holding every question, and a knowledge-gap cluster made of the handed-off questions. Then
the operator attaches one handed-off question to an FAQ from the page and publishes; asking it again is
answered with that FAQ. Screenshots go to ``$KBSEARCH_TEST_SCREENSHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from debian import CHROMIUM_ARGS, chromium_and_playwright
from servers import get, post, running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

KEY = "browser-test-key-0123456789"
#: Paraphrases of sample-KB FAQs (docs/sample_questions.md): answered with these ids.
ANSWERED = [("云杉钱包里的余额怎么提现到我的银行卡？", "zh-019"), ("怎样用银行卡往云杉钱包里充钱？", "zh-018"),
            ("电子发票的抬头开错了，能重新开一张吗？", "zh-036"), ("How can I cancel a return I requested by mistake?", "en-003"),
            ("Do you deliver orders to other countries like Australia?", "en-029"),
            ("How does picking up a parcel from a Spruce Locker work?", "en-007")]
#: Not covered by the KB: handed off. The three weather questions form one knowledge gap.
WEATHER = ["明天上海会下雨吗？", "上海明天下雨吗", "明天上海天气怎么样"]
UNCOVERED = "能不能用比特币买东西"  # the operator attaches it to zh-014 (payment methods)
TARGET = "zh-014"


def test_dashboard_shows_the_replay_and_closes_the_loop(ingested_home, tmp_path):
    chromium, sync_playwright = chromium_and_playwright()
    home = tmp_path / "home"
    shutil.copytree(ingested_home[0], home)
    shots = Path(os.environ.get("KBSEARCH_TEST_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KBSEARCH_HOME": str(home), "KBSEARCH_ADMIN_KEYS": f"ops:{KEY}",
           "KBSEARCH_QUESTIONLOG__FLUSH_INTERVAL_S": "0.05",
           # the loop under test is the first stage's: a KB reranker trained in the background after the publish
           # could start serving mid-test (timing-dependent) and, as of 2026-12-02, may rank zh-012 above the
           # FAQ the question was just attached to verbatim (a known weakness, in the session note)
           "KBSEARCH_KB_RERANKER__AUTO_TRAIN": "false",
           # a log of its own: the shared home's log holds what other tests asked
           "KBSEARCH_QUESTIONLOG__URL": f"sqlite:///{tmp_path / 'questions.db'}"}
    with running_server(env) as base:
        # -- the replay, with outcomes known in advance ------------------------------------------
        answers = {}
        for q, _ in ANSWERED:
            answers[q] = post(base + "/ask", {"question": q})[1]
        for q in [*WEATHER, UNCOVERED]:
            answers[q] = post(base + "/ask", {"question": q})[1]
        for q, want in ANSWERED:
            assert answers[q]["answered"] and answers[q]["results"][0]["id"] == want, (q, answers[q]["results"][:1])
        for q in [*WEATHER, UNCOVERED]:
            assert not answers[q]["answered"] and answers[q]["handoff"]["code"] == "below-threshold", q
        unhelpful = [answers[q]["request_id"] for q, _ in ANSWERED[:2]]
        for rid in unhelpful:
            assert post(base + "/feedback", {"request_id": rid, "helpful": False})[0] == 200
        assert post(base + "/feedback", {"request_id": answers[ANSWERED[2][0]]["request_id"], "helpful": True})[0] == 200
        total, handed = len(answers), len(WEATHER) + 1
        kinds: dict[str, list[bool]] = {}
        for a in answers.values():
            kinds.setdefault(a["decision"]["score_kind"], []).append(a["answered"])

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000}, locale="en-US")
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/dashboard")
            # -- log in once with the operator key ----------------------------------------------
            page.get_by_test_id("login-key").fill("not-the-key-0123456789")
            page.get_by_test_id("login-submit").click()
            page.get_by_test_id("login-error").wait_for()
            page.get_by_test_id("login-key").fill(KEY)
            page.get_by_test_id("login-submit").click()
            stat = lambda tid: page.get_by_test_id(tid)  # noqa: E731
            from playwright.sync_api import expect

            expect(stat("stat-total")).to_have_text(str(total), timeout=30_000)
            expect(stat("stat-answered")).to_have_text(str(total - handed))
            expect(stat("stat-handoff")).to_have_text(str(handed))
            expect(stat("stat-handoff-rate")).to_have_text(f"{100 * handed / total:.1f}%")
            expect(stat("stat-handoff-rate")).to_have_attribute("data-over-line", "true")  # 40% > the 15% line
            expect(stat("stat-unhelpful")).to_have_text(str(len(unhelpful)))
            expect(stat("stat-helpful")).to_have_text("1")
            expect(page.get_by_test_id("reason-mix")).to_contain_text("below-threshold")
            # -- the score histogram holds every question, by kind, answered vs handed off ----------
            for kind, outcomes in kinds.items():
                hist = page.get_by_test_id(f"score-hist-{kind}")
                expect(hist).to_be_visible()
                bins = hist.get_by_test_id("score-bin")
                got_answered = sum(int(bins.nth(i).get_attribute("data-answered")) for i in range(bins.count()))
                got_handed = sum(int(bins.nth(i).get_attribute("data-handed-off")) for i in range(bins.count()))
                assert (got_answered, got_handed) == (sum(outcomes), len(outcomes) - sum(outcomes)), kind
            # -- a knowledge gap made of the weather questions ------------------------------------
            gap = page.get_by_test_id("gap-cluster").filter(has_text=WEATHER[0])
            expect(gap).to_have_count(1, timeout=60_000)
            expect(gap.get_by_test_id("gap-size")).to_have_text(str(len(WEATHER)))
            for q in WEATHER:
                expect(gap).to_contain_text(q)
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
            # -- the hit test: every stage, and a request for a person handed off by the KB's rules ------
            page.get_by_test_id("hit-question").fill("转人工")
            page.get_by_test_id("hit-ask").click()
            expect(page.get_by_test_id("hit-handoff")).to_contain_text("human-requested", timeout=30_000)
            expect(page.get_by_test_id("hit-spans")).to_contain_text("decide")
            # -- attach the uncovered question to an FAQ from the question log, then publish --------
            page.get_by_test_id("log-status").select_option("handed_off")
            page.get_by_test_id("log-apply").click()
            row = page.get_by_test_id("log-row").filter(has_text=UNCOVERED)
            expect(row).to_have_count(1)
            row.get_by_test_id("row-attach-faq").fill(TARGET)
            row.get_by_test_id("row-attach").click()
            publish = page.get_by_test_id("publish")
            expect(publish).to_have_attribute("data-pending", "1")
            publish.click()
            expect(page.get_by_test_id("publish-result")).to_have_attribute(
                "data-build-id", re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$"), timeout=60_000)
            page.get_by_test_id("review").screenshot(path=str(shots / "review.png"))
            build_id = page.get_by_test_id("publish-result").get_attribute("data-build-id")
            assert errors == []
            browser.close()

        overview = get(base + "/admin/api/overview", {"Authorization": f"Bearer {KEY}"})
        assert overview["total"] == total  # the hit test was not counted as traffic
        again = post(base + "/ask", {"question": UNCOVERED})[1]
        assert again["answered"] and again["results"][0]["id"] == TARGET
    assert again["index_version"] == build_id, (again["index_version"], build_id)
