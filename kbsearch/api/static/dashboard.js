/*
 * kbsearch operator dashboard (issue 12).
 *
 * Vanilla ES2020 with no dependencies and no build step, served by the kbsearch server at
 * /dashboard/static/dashboard.js. It talks only to /admin/* on the same origin; the session is an
 * HttpOnly cookie set by POST /admin/login, and any 401 brings back the login panel.
 *
 * Layout of this file: I18N dictionary -> state -> DOM/format helpers -> api() -> one
 * load/render pair per section (SECTIONS) -> SVG charts -> actions (attach, out of scope, draft,
 * undo, publish, import, rules) -> event wiring -> boot.
 *
 * Safety: h() and s() build elements and only ever insert text as text nodes, and nothing here
 * assigns innerHTML, so questions typed by end users (and any other server text) cannot inject
 * markup. No inline handlers or style attributes are used, so a strict CSP works.
 */
"use strict";

/* ------------------------------------------------------------------------------------------ */
/* I18N: every label on the page. {name} is replaced by t(key, {name: value}).               */
/* ------------------------------------------------------------------------------------------ */

const I18N = {
  en: {
    "doc.title": "kbsearch · Operator dashboard",
    "title": "Operator dashboard",
    "a11y.skip": "Skip to content",
    "ctl.kb": "Knowledge base",
    "ctl.range": "Time range",
    "ctl.refresh": "Refresh",
    "ctl.logout": "Log out",
    "ctl.lang": "Switch language / 切换语言",
    "range.1h": "Last hour",
    "range.24h": "Last 24 hours",
    "range.7d": "Last 7 days",
    "range.30d": "Last 30 days",
    "range.all": "All time",
    "common.loading": "Loading…",
    "common.none": "None",
    "common.cancel": "Cancel",
    "common.dismiss": "Dismiss",
    "common.yes": "yes",
    "common.no": "no",
    "err.network": "Network error: the server could not be reached.",
    "err.http": "Request failed (HTTP {status}).",
    "err.load": "Could not load: {msg}",
    "err.render": "Could not display this section (see the browser console).",
    "login.title": "Sign in",
    "login.hint": "Enter an operator key to open the dashboard.",
    "login.key": "Operator key",
    "login.submit": "Sign in",
    "login.empty": "Enter the operator key.",
    "login.wrong": "Wrong key.",
    "login.noCookie": "Signed in, but the browser did not keep the session cookie (a Secure cookie needs HTTPS).",
    "sec.overview": "Overview",
    "sec.handoff": "Hand-off rate over time",
    "sec.latency": "Latency over time",
    "sec.scores": "Top-1 score distribution",
    "sec.faqs": "FAQs",
    "sec.gaps": "Knowledge gaps",
    "sec.hit": "Hit test",
    "sec.log": "Question log",
    "sec.review": "Review and publish",
    "sec.rules": "Hand-off rules",
    "stat.total": "Volume",
    "stat.answered": "Answered",
    "stat.handoff": "Handed off",
    "stat.handoffRate": "Hand-off rate",
    "stat.degradedRate": "Degraded rate",
    "stat.cannedRate": "Canned rate",
    "stat.p50": "P50 latency",
    "stat.p95": "P95 latency",
    "stat.feedback": "Helpful / unhelpful",
    "stat.ofTotal": "{v} of volume",
    "stat.line": "alert line {v}",
    "stat.questions": "{n} questions",
    "stat.clicked": "{n} clicked a result",
    "stat.overLine": "above the line",
    "overview.modes": "Mode mix",
    "overview.reasons": "Hand-off reasons",
    "mix.key": "Code",
    "mix.count": "Count",
    "mix.share": "Share",
    "chart.handoffRate": "Hand-off rate",
    "chart.degradedRate": "Degraded rate",
    "chart.handoffLine": "alert line {v}",
    "chart.p50": "P50",
    "chart.p95": "P95",
    "chart.latencyLine": "alert line {v}",
    "chart.n": "{n} questions",
    "empty.noData": "No data in this time range",
    "scores.hint": "The deciding score of each question's top FAQ, by score kind. Answered questions stack under handed-off ones; the dashed line is the kind's threshold.",
    "scores.histTitle": "Top-1 {kind} scores",
    "scores.caption": "threshold {thr} · {n} questions",
    "scores.answered": "Answered",
    "scores.handedOff": "Handed off",
    "scores.threshold": "threshold {v}",
    "scores.binTip": "{lo} – {hi}: {a} answered, {h} handed off",
    "scores.none": "No scores in this time range.",
    "faqs.top": "Most asked",
    "faqs.weak": "Weak answers",
    "faqs.weakHint": "Helped or clicked under {rate} with at least {views} views.",
    "faqs.col.id": "FAQ id",
    "faqs.col.question": "Question",
    "faqs.col.views": "Views",
    "faqs.col.help": "Helpful rate",
    "faqs.col.click": "Click rate",
    "faqs.helpTip": "👍 {h} / 👎 {u}",
    "faqs.clickTip": "{n} clicks",
    "faqs.none": "No FAQs in this time range.",
    "gaps.hint": "Handed-off and unhelpful questions grouped by meaning. Attach a whole cluster to an FAQ, mark it out of scope, or draft a new FAQ from it.",
    "gaps.summary": "{q} questions grouped into {n} clusters ({alg}).",
    "gaps.none": "No knowledge gaps in this time range.",
    "gaps.questions": "questions",
    "gaps.showAll": "Show all {n}",
    "gaps.showFewer": "Show fewer",
    "gaps.nearest": "Nearest FAQs:",
    "gaps.useFaq": "Use this FAQ id",
    "gaps.attachLabel": "Attach all to FAQ id",
    "gaps.attach": "Attach all to FAQ",
    "act.attach": "Attach",
    "act.oos": "Out of scope",
    "act.draft": "Draft FAQ",
    "act.draftNew": "Draft new FAQ",
    "act.needFaq": "Enter an FAQ id to attach to.",
    "picker.placeholder": "FAQ id…",
    "done.attach": "Attached {n} question(s) to {faq}; pending until published.",
    "done.out_of_scope": "Marked {n} question(s) out of scope; pending until published.",
    "done.draft": "Drafted a new FAQ from {n} question(s); pending until published.",
    "done.undo": "Decision #{id} undone.",
    "done.publish": "Published build {build}.",
    "done.import": "Import finished: {msg}",
    "done.rules": "Hand-off rules saved ({n} phrases).",
    "hit.label": "Question to test",
    "hit.placeholder": "Type a customer question, e.g. 钱包余额怎么提现到银行卡？",
    "hit.ask": "Ask",
    "hit.mode": "mode {mode}",
    "hit.answer": "Answer",
    "hit.handoff": "Hand-off",
    "hit.decision": "Decision",
    "hit.scoreKind": "Score kind",
    "hit.score": "Score",
    "hit.threshold": "Threshold",
    "hit.margin": "Margin",
    "hit.thresholdSource": "Threshold source",
    "hit.rule": "Rule",
    "hit.results": "Results",
    "hit.timings": "Timings (ms)",
    "hit.notes": "Notes",
    "hit.spans": "Stages",
    "hit.stages": "Candidates by stage",
    "hit.otherExplain": "Other explain fields",
    "hit.raw": "Raw response",
    "hit.col.name": "Stage",
    "hit.col.ms": "ms",
    "hit.col.outcome": "Outcome",
    "hit.col.code": "Code",
    "hit.col.candidates": "Candidates",
    "hit.col.detail": "Detail",
    "hit.noExplain": "The response has no explain section.",
    "hit.empty": "Enter a question to test.",
    "badge.answered": "answered",
    "badge.handedOff": "handed off",
    "badge.degraded": "degraded",
    "log.status": "Status",
    "log.status.all": "All",
    "log.status.answered": "Answered",
    "log.status.handed_off": "Handed off",
    "log.status.unhelpful": "Unhelpful",
    "log.q": "Search",
    "log.q.placeholder": "Words in the question",
    "log.from": "From",
    "log.to": "To",
    "log.apply": "Apply",
    "log.export": "Export",
    "log.col.time": "Time",
    "log.col.question": "Question",
    "log.col.outcome": "Outcome",
    "log.col.top": "Top FAQ",
    "log.col.mode": "Mode",
    "log.col.latency": "Latency",
    "log.col.feedback": "Feedback",
    "log.col.actions": "Actions",
    "log.none": "No questions match.",
    "log.range": "{a}–{b} of {n}",
    "log.prev": "‹ Previous",
    "log.next": "Next ›",
    "log.attachLabel": "Attach this question to FAQ id",
    "fb.helpful": "helpful",
    "fb.unhelpful": "unhelpful",
    "fb.clicked": "clicked {id}",
    "review.export": "Export decisions",
    "review.import": "Import labels (CSV, JSONL or XLSX with columns question, faq_id)",
    "review.importSubmit": "Import",
    "review.importNeedFile": "Choose a file first.",
    "review.imported": "{n} decision(s) imported.",
    "review.importErrors": "{n} row(s) skipped: {list}",
    "review.publish": "Publish {n} pending",
    "review.publishedResult": "Build {build}: {applied} decision(s) applied, {embedded} rows embedded, {reused} reused, {s} s.",
    "review.col.id": "#",
    "review.col.action": "Action",
    "review.col.question": "Question(s)",
    "review.col.faq": "FAQ id",
    "review.col.who": "Who",
    "review.col.when": "When",
    "review.col.state": "State",
    "review.state.pending": "pending",
    "review.state.published": "published in build {build}",
    "review.state.undone": "undone",
    "review.undo": "Undo",
    "review.none": "No decisions yet.",
    "review.draftOf": "new FAQ: {q}",
    "action.attach": "attach to FAQ",
    "action.out_of_scope": "out of scope",
    "action.draft": "draft FAQ",
    "rules.hint": "Questions containing any of these phrases go straight to a human. One phrase per line.",
    "rules.label": "Hand-off phrases, one per line",
    "rules.save": "Save rules",
    "rules.default": "These are the built-in default phrases.",
    "rules.custom": "Custom phrases for this knowledge base ({n}).",
    "draft.title": "Draft a new FAQ",
    "draft.source": "From {n} question(s).",
    "draft.question": "Question",
    "draft.answer": "Answer",
    "draft.section": "Section",
    "draft.submit": "Save draft",
    "draft.needFields": "Question and answer are required.",
    "mode.rerank": "reranked",
    "mode.vector": "vector",
    "mode.bm25": "keyword (BM25)",
    "mode.canned": "canned hand-off",
    "mode.fused": "fused",
    "mode.hybrid": "hybrid",
    "reason.below-threshold": "score below threshold",
    "reason.ambiguous": "too close to call",
    "reason.no-candidates": "no candidates",
    "reason.all-expired": "all candidates expired",
    "reason.backend-failure": "backend failure",
    "reason.index-unavailable": "index unavailable",
    "reason.internal-error": "internal error",
    "reason.human-requested": "asked for a person",
    "reason.unhelpful": "marked unhelpful",
    "kind.vector": "vector",
    "kind.rerank": "rerank",
    "kind.bm25": "BM25",
  },
  zh: {
    "doc.title": "kbsearch · 运营看板",
    "title": "运营看板",
    "a11y.skip": "跳到正文",
    "ctl.kb": "知识库",
    "ctl.range": "时间范围",
    "ctl.refresh": "刷新",
    "ctl.logout": "退出登录",
    "ctl.lang": "切换语言 / Switch language",
    "range.1h": "最近 1 小时",
    "range.24h": "最近 24 小时",
    "range.7d": "最近 7 天",
    "range.30d": "最近 30 天",
    "range.all": "全部",
    "common.loading": "加载中…",
    "common.none": "无",
    "common.cancel": "取消",
    "common.dismiss": "关闭",
    "common.yes": "是",
    "common.no": "否",
    "err.network": "网络错误：无法连接服务器。",
    "err.http": "请求失败（HTTP {status}）。",
    "err.load": "加载失败：{msg}",
    "err.render": "此区块无法显示（详见浏览器控制台）。",
    "login.title": "登录",
    "login.hint": "请输入运营密钥以打开看板。",
    "login.key": "运营密钥",
    "login.submit": "登录",
    "login.empty": "请输入运营密钥。",
    "login.wrong": "密钥错误。",
    "login.noCookie": "已登录，但浏览器没有保存会话 Cookie（Secure Cookie 需要 HTTPS）。",
    "sec.overview": "总览",
    "sec.handoff": "转人工率趋势",
    "sec.latency": "延迟趋势",
    "sec.scores": "Top-1 得分分布",
    "sec.faqs": "FAQ",
    "sec.gaps": "知识缺口",
    "sec.hit": "命中测试",
    "sec.log": "问题日志",
    "sec.review": "审核与发布",
    "sec.rules": "转人工规则",
    "stat.total": "提问量",
    "stat.answered": "已回答",
    "stat.handoff": "转人工",
    "stat.handoffRate": "转人工率",
    "stat.degradedRate": "降级率",
    "stat.cannedRate": "兜底回复率",
    "stat.p50": "P50 延迟",
    "stat.p95": "P95 延迟",
    "stat.feedback": "有用 / 无用",
    "stat.ofTotal": "占提问量 {v}",
    "stat.line": "警戒线 {v}",
    "stat.questions": "{n} 个问题",
    "stat.clicked": "{n} 次点击结果",
    "stat.overLine": "超过警戒线",
    "overview.modes": "检索模式分布",
    "overview.reasons": "转人工原因",
    "mix.key": "代码",
    "mix.count": "次数",
    "mix.share": "占比",
    "chart.handoffRate": "转人工率",
    "chart.degradedRate": "降级率",
    "chart.handoffLine": "警戒线 {v}",
    "chart.p50": "P50",
    "chart.p95": "P95",
    "chart.latencyLine": "警戒线 {v}",
    "chart.n": "{n} 个问题",
    "empty.noData": "此时间范围内没有数据",
    "scores.hint": "每个问题 Top-1 FAQ 的判定得分，按得分类型分开。已回答的堆叠在下方，转人工的在上方；虚线为该类型的阈值。",
    "scores.histTitle": "Top-1 {kind} 得分",
    "scores.caption": "阈值 {thr} · {n} 个问题",
    "scores.answered": "已回答",
    "scores.handedOff": "转人工",
    "scores.threshold": "阈值 {v}",
    "scores.binTip": "{lo} – {hi}：已回答 {a}，转人工 {h}",
    "scores.none": "此时间范围内没有得分数据。",
    "faqs.top": "热门问题",
    "faqs.weak": "效果欠佳的答案",
    "faqs.weakHint": "有用率或点击率低于 {rate}，且浏览不少于 {views} 次。",
    "faqs.col.id": "FAQ 编号",
    "faqs.col.question": "问题",
    "faqs.col.views": "浏览",
    "faqs.col.help": "有用率",
    "faqs.col.click": "点击率",
    "faqs.helpTip": "👍 {h} / 👎 {u}",
    "faqs.clickTip": "{n} 次点击",
    "faqs.none": "此时间范围内没有 FAQ 数据。",
    "gaps.hint": "转人工和被评为无用的问题按语义分组。可将整组归入某个 FAQ、标为超出范围，或据此起草新 FAQ。",
    "gaps.summary": "{q} 个问题，分为 {n} 组（{alg}）。",
    "gaps.none": "此时间范围内没有知识缺口。",
    "gaps.questions": "个问题",
    "gaps.showAll": "显示全部 {n} 个",
    "gaps.showFewer": "收起",
    "gaps.nearest": "最接近的 FAQ：",
    "gaps.useFaq": "使用此 FAQ 编号",
    "gaps.attachLabel": "整组归入的 FAQ 编号",
    "gaps.attach": "整组归入 FAQ",
    "act.attach": "归入",
    "act.oos": "超出范围",
    "act.draft": "起草 FAQ",
    "act.draftNew": "起草新 FAQ",
    "act.needFaq": "请输入要归入的 FAQ 编号。",
    "picker.placeholder": "FAQ 编号…",
    "done.attach": "已将 {n} 个问题归入 {faq}，发布后生效。",
    "done.out_of_scope": "已将 {n} 个问题标为超出范围，发布后生效。",
    "done.draft": "已根据 {n} 个问题起草新 FAQ，发布后生效。",
    "done.undo": "已撤销决定 #{id}。",
    "done.publish": "已发布构建 {build}。",
    "done.import": "导入完成：{msg}",
    "done.rules": "转人工规则已保存（{n} 条）。",
    "hit.label": "要测试的问题",
    "hit.placeholder": "输入一个客户问题，例如：钱包余额怎么提现到银行卡？",
    "hit.ask": "测试",
    "hit.mode": "模式 {mode}",
    "hit.answer": "答案",
    "hit.handoff": "转人工",
    "hit.decision": "判定",
    "hit.scoreKind": "得分类型",
    "hit.score": "得分",
    "hit.threshold": "阈值",
    "hit.margin": "间隔",
    "hit.thresholdSource": "阈值来源",
    "hit.rule": "规则",
    "hit.results": "结果",
    "hit.timings": "耗时（毫秒）",
    "hit.notes": "说明",
    "hit.spans": "各阶段",
    "hit.stages": "各阶段候选",
    "hit.otherExplain": "其他 explain 字段",
    "hit.raw": "原始响应",
    "hit.col.name": "阶段",
    "hit.col.ms": "毫秒",
    "hit.col.outcome": "结果",
    "hit.col.code": "代码",
    "hit.col.candidates": "候选",
    "hit.col.detail": "详情",
    "hit.noExplain": "响应中没有 explain 部分。",
    "hit.empty": "请输入要测试的问题。",
    "badge.answered": "已回答",
    "badge.handedOff": "转人工",
    "badge.degraded": "降级",
    "log.status": "状态",
    "log.status.all": "全部",
    "log.status.answered": "已回答",
    "log.status.handed_off": "转人工",
    "log.status.unhelpful": "无用反馈",
    "log.q": "搜索",
    "log.q.placeholder": "问题中的词语",
    "log.from": "起始日期",
    "log.to": "结束日期",
    "log.apply": "应用",
    "log.export": "导出",
    "log.col.time": "时间",
    "log.col.question": "问题",
    "log.col.outcome": "结果",
    "log.col.top": "Top FAQ",
    "log.col.mode": "模式",
    "log.col.latency": "延迟",
    "log.col.feedback": "反馈",
    "log.col.actions": "操作",
    "log.none": "没有匹配的问题。",
    "log.range": "第 {a}–{b} 条，共 {n} 条",
    "log.prev": "‹ 上一页",
    "log.next": "下一页 ›",
    "log.attachLabel": "将此问题归入的 FAQ 编号",
    "fb.helpful": "有用",
    "fb.unhelpful": "无用",
    "fb.clicked": "点击了 {id}",
    "review.export": "导出决定",
    "review.import": "导入标注（CSV、JSONL 或 XLSX，列为 question、faq_id）",
    "review.importSubmit": "导入",
    "review.importNeedFile": "请先选择文件。",
    "review.imported": "已导入 {n} 条决定。",
    "review.importErrors": "跳过 {n} 行：{list}",
    "review.publish": "发布 {n} 条待发布",
    "review.publishedResult": "构建 {build}：应用 {applied} 条决定，新嵌入 {embedded} 行，复用 {reused} 行，用时 {s} 秒。",
    "review.col.id": "#",
    "review.col.action": "操作",
    "review.col.question": "问题",
    "review.col.faq": "FAQ 编号",
    "review.col.who": "操作人",
    "review.col.when": "时间",
    "review.col.state": "状态",
    "review.state.pending": "待发布",
    "review.state.published": "已发布于构建 {build}",
    "review.state.undone": "已撤销",
    "review.undo": "撤销",
    "review.none": "暂无决定。",
    "review.draftOf": "新 FAQ：{q}",
    "action.attach": "归入 FAQ",
    "action.out_of_scope": "超出范围",
    "action.draft": "起草 FAQ",
    "rules.hint": "包含以下任一短语的问题直接转人工。每行一个短语。",
    "rules.label": "转人工短语，每行一个",
    "rules.save": "保存规则",
    "rules.default": "当前为内置默认短语。",
    "rules.custom": "此知识库的自定义短语（{n} 条）。",
    "draft.title": "起草新 FAQ",
    "draft.source": "来自 {n} 个问题。",
    "draft.question": "问题",
    "draft.answer": "答案",
    "draft.section": "分类",
    "draft.submit": "保存草稿",
    "draft.needFields": "问题和答案为必填项。",
    "mode.rerank": "重排序",
    "mode.vector": "向量",
    "mode.bm25": "关键词（BM25）",
    "mode.canned": "兜底转人工",
    "mode.fused": "融合",
    "mode.hybrid": "混合",
    "reason.below-threshold": "得分低于阈值",
    "reason.ambiguous": "候选过于接近",
    "reason.no-candidates": "没有候选",
    "reason.all-expired": "候选均已过期",
    "reason.backend-failure": "后端故障",
    "reason.index-unavailable": "索引不可用",
    "reason.internal-error": "内部错误",
    "reason.human-requested": "用户要求转人工",
    "reason.unhelpful": "被评为无用",
    "kind.vector": "向量",
    "kind.rerank": "重排序",
    "kind.bm25": "BM25",
  },
};

const LANG_KEY = "kbsearch.dashboard.lang";
const RANGE_HOURS = {"1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30, "all": null};
const LOG_LIMIT = 50;
const EXAMPLES_SHOWN = 5;
const KIND_ORDER = ["rerank", "vector", "bm25"];
const DEFAULT_LINES = {handoff: 0.15, latency_ms: 300, low_rate: 0.1, min_views: 20};

/* ------------------------------------------------------------------------------------------ */
/* State                                                                                      */
/* ------------------------------------------------------------------------------------------ */

const state = {
  lang: initialLang(),
  me: null,            // GET /admin/api/me
  kb: null,
  range: "24h",
  since: null,         // ISO-8601 UTC, fixed at each full refresh so all sections share one window
  data: {},            // last good response per section
  errors: {},          // last error message per section
  seq: {},             // request counter per section: late responses of superseded requests are dropped
  log: {status: "", q: "", from: "", to: "", offset: 0},
  expandedGaps: new Set(),
  hit: null,           // last hit-test response
  draftTarget: null,   // {questions, requestIds} the draft dialog is for
  rulesShown: null,    // the rules response whose phrases are in the textarea
};

function initialLang() {
  let saved = null;
  try { saved = window.localStorage.getItem(LANG_KEY); } catch (_) { /* storage may be disabled */ }
  if (saved === "zh" || saved === "en") return saved;
  return (navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en";
}

function t(key, vars) {
  const text = I18N[state.lang][key] ?? I18N.en[key] ?? key;
  if (!vars) return text;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/** The label for key, or null when neither language has one (unknown codes are shown bare). */
function tOptional(key) {
  return I18N[state.lang][key] ?? I18N.en[key] ?? null;
}

/* ------------------------------------------------------------------------------------------ */
/* DOM and formatting helpers                                                                 */
/* ------------------------------------------------------------------------------------------ */

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "testid") el.setAttribute("data-testid", value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));  // strings become text nodes
  }
  return el;
}

/** An HTML element; children are nodes or strings (inserted as text, never parsed). */
function h(tag, attrs, ...children) { return build(document.createElement(tag), attrs, children); }

/** An SVG element, same conventions as h(). */
function s(tag, attrs, ...children) { return build(document.createElementNS(SVG_NS, tag), attrs, children); }

const arr = (v) => (Array.isArray(v) ? v : []);
const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const pad2 = (n) => String(n).padStart(2, "0");

function fmtInt(n) { return isNum(n) ? Math.round(n).toLocaleString("en-US") : "—"; }
function fmtPct(r, digits = 1) { return isNum(r) ? `${(r * 100).toFixed(digits)}%` : "—"; }
function fmtMs(v) { return isNum(v) ? `${v < 10 ? v.toFixed(1) : Math.round(v)} ms` : "—"; }
/** Scores in tables: fixed 3 decimals so columns line up. */
function fmtScore(v) { return isNum(v) ? v.toFixed(3) : "—"; }
/** Numbers in labels: up to 3 decimals, trailing zeros dropped (0.89, 0.355). */
function fmtNum(v) { return isNum(v) ? String(Number(v.toFixed(3))) : "—"; }

/** Parses a server timestamp; one without an offset is taken as UTC. */
function parseTime(iso) {
  if (typeof iso !== "string") return new Date(NaN);
  const hasZone = /(?:[zZ]|[+-]\d\d:?\d\d)$/.test(iso) || !/\d[T ]\d/.test(iso);
  return new Date(hasZone ? iso : `${iso}Z`);
}

/** Local time as YYYY-MM-DD HH:mm[:ss]. */
function fmtTime(iso, seconds = true) {
  const d = parseTime(iso);
  if (Number.isNaN(d.getTime())) return iso ? String(iso) : "—";
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
  const time = `${pad2(d.getHours())}:${pad2(d.getMinutes())}${seconds ? `:${pad2(d.getSeconds())}` : ""}`;
  return `${date} ${time}`;
}

function isoUtc(date) { return date.toISOString().replace(/\.\d{3}Z$/, "Z"); }

/** Local midnight of a YYYY-MM-DD value from a date input, plus extraDays. */
function localDay(value, extraDays = 0) {
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d + extraDays);
}

/** A value of unknown shape, as short text. */
function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toFixed(4)));
  if (typeof v === "boolean") return v ? t("common.yes") : t("common.no");
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

function urlWith(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  return url.pathname + url.search;
}

function errorBox(message) { return h("div", {class: "error", role: "alert"}, message); }
function muted(text) { return h("span", {class: "muted"}, text); }

function outcomeBadge(answered) {
  return answered
    ? h("span", {class: "badge badge-ok", testid: "outcome"}, t("badge.answered"))
    : h("span", {class: "badge badge-warn", testid: "outcome"}, t("badge.handedOff"));
}

function codeWithLabel(prefix, code) {
  const label = tOptional(`${prefix}.${code}`);
  return [h("code", {}, code), label && label !== code ? h("span", {class: "muted"}, ` ${label}`) : null];
}

function legend(items) {
  return h("ul", {class: "legend"}, items.map((it) =>
    h("li", {}, h("span", {class: `swatch ${it.cls}${it.dashed ? " dashed" : ""}`, "aria-hidden": "true"}), it.label)));
}

/** A table from column headers and rows of cells (cells are anything h() accepts). */
function table(attrs, headers, rows, emptyText) {
  return h("table", {class: "table", ...attrs},
    h("thead", {}, h("tr", {}, headers.map((hd) => h("th", {scope: "col", class: hd.cls || null}, hd.label)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", {colspan: headers.length, class: "empty"}, emptyText))));
}

function kvList(pairs) {
  return h("dl", {class: "kv"}, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/* ------------------------------------------------------------------------------------------ */
/* api(): the one way to call the server                                                     */
/* ------------------------------------------------------------------------------------------ */

class ApiError extends Error {
  constructor(status, message) { super(message); this.name = "ApiError"; this.status = status; }
}

/** The server's error as one line: FastAPI's detail (string or list of {loc, msg}) or error. */
function errorMessage(status, body) {
  const detail = obj(body).detail;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((e) => {
      const loc = arr(e && e.loc).filter((p) => p !== "body").join(".");
      const msg = e && typeof e === "object" ? (e.msg ?? JSON.stringify(e)) : String(e);
      return loc ? `${loc}: ${msg}` : msg;
    }).join("; ");
  }
  if (typeof obj(body).error === "string" && obj(body).error) return obj(body).error;
  return t("err.http", {status});
}

/**
 * Calls the server with the session cookie and returns the parsed JSON body.
 * Options: method, query (null/"" values dropped), json (sent as JSON), form (FormData),
 * authRedirect (false for the login call itself). Throws ApiError; a 401 also shows the login panel.
 */
async function api(path, {method = "GET", query = null, json, form, authRedirect = true} = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: {"Accept": "application/json", "X-Requested-With": "kbsearch-dashboard"},
  };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;  // the browser sets the multipart boundary
  }
  let res;
  try {
    res = await fetch(urlWith(path, query), init);
  } catch (_) {
    throw new ApiError(0, t("err.network"));
  }
  const text = await res.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch (_) { body = null; }
  }
  if (res.status === 401 && authRedirect) showLogin();
  if (!res.ok) throw new ApiError(res.status, errorMessage(res.status, body));
  return body ?? {};
}

/* ------------------------------------------------------------------------------------------ */
/* Sections: each has the element(s) it renders into, a loader and a renderer                 */
/* ------------------------------------------------------------------------------------------ */

const lines = () => ({...DEFAULT_LINES, ...obj(state.me && state.me.lines)});
const windowQuery = (extra) => ({kb: state.kb, since: state.since, ...extra});
const bucketFor = (range) => (RANGE_HOURS[range] !== null && RANGE_HOURS[range] <= 48 ? "hour" : "day");

const SECTIONS = {
  overview: {
    mounts: ["overview-body"],
    load: () => api("/admin/api/overview", {query: windowQuery()}),
    render: renderOverview,
  },
  timeseries: {
    mounts: ["handoff-body", "latency-body"],
    load: () => api("/admin/api/timeseries", {query: windowQuery({bucket: bucketFor(state.range)})}),
    render: renderTimeseries,
  },
  scores: {
    mounts: ["scores-body"],
    load: () => api("/admin/api/scores", {query: windowQuery()}),
    render: renderScores,
  },
  faqs: {
    mounts: ["faqs-body"],
    load: () => api("/admin/api/faqs", {query: windowQuery()}),
    render: renderFaqs,
  },
  gaps: {
    mounts: ["gaps-body"],
    load: () => api("/admin/api/gaps", {query: windowQuery()}),
    render: renderGaps,
  },
  log: {
    mounts: ["log-body"],
    load: () => api("/admin/api/questions", {query: logQuery(state.log, {limit: LOG_LIMIT, offset: state.log.offset})}),
    render: renderLog,
  },
  review: {
    mounts: ["review-body"],
    load: () => api("/admin/api/decisions", {query: {kb: state.kb, include_undone: "true"}}),
    render: renderReview,
  },
  rules: {
    mounts: ["rules-note"],
    load: () => api("/admin/api/rules", {query: {kb: state.kb}}),
    render: renderRules,
  },
};

async function loadSection(name) {
  const section = SECTIONS[name];
  const seq = (state.seq[name] = (state.seq[name] || 0) + 1);
  for (const id of section.mounts) {
    const mount = $(id);
    mount.setAttribute("aria-busy", "true");
    if (!(name in state.data) && !state.errors[name]) mount.replaceChildren(muted(t("common.loading")));
  }
  try {
    const data = await section.load();
    if (seq !== state.seq[name]) return;
    state.data[name] = data;
    state.errors[name] = null;
  } catch (err) {
    if (seq !== state.seq[name] || err.status === 401) return;  // superseded, or the login panel took over
    state.errors[name] = err.message;
  } finally {
    if (seq === state.seq[name]) section.mounts.forEach((id) => $(id).removeAttribute("aria-busy"));
  }
  renderSection(name);
}

function renderSection(name) {
  const section = SECTIONS[name];
  if (state.errors[name]) {
    section.mounts.forEach((id) => $(id).replaceChildren(errorBox(t("err.load", {msg: state.errors[name]}))));
    return;
  }
  if (!(name in state.data)) return;
  try {
    section.render(state.data[name]);
  } catch (err) {
    console.error(`dashboard: rendering ${name} failed`, err);
    section.mounts.forEach((id) => $(id).replaceChildren(errorBox(t("err.render"))));
  }
}

function refresh(...names) { return Promise.all(names.map(loadSection)); }

function refreshAll() {
  const hours = RANGE_HOURS[state.range];
  state.since = hours === null ? null : isoUtc(new Date(Date.now() - hours * 3600 * 1000));
  updateExportLinks();
  return refresh(...Object.keys(SECTIONS));
}

function rerenderAll() {
  Object.keys(SECTIONS).forEach(renderSection);
  renderHit();
}

/* ---- 1. Overview ---- */

function tile(labelKey, value, testid, {sub = null, subTestid = null, alert = false} = {}) {
  return h("div", {class: `tile${alert ? " tile-alert" : ""}`},
    h("div", {class: "tile-label"}, t(labelKey)),
    h("div", {class: `tile-value${alert ? " alert" : ""}`, testid, "data-over-line": alert ? "true" : null,
      title: alert ? t("stat.overLine") : null}, value),
    alert ? h("span", {class: "sr-only"}, t("stat.overLine")) : null,
    sub !== null ? h("div", {class: "tile-sub", testid: subTestid}, sub) : null);
}

function mixTable(testid, titleKey, counts, labelPrefix) {
  const entries = Object.entries(obj(counts)).filter(([, v]) => isNum(v)).sort((a, b) => b[1] - a[1]);
  const total = entries.reduce((sum, [, v]) => sum + v, 0);
  return h("div", {class: "mix"},
    h("h3", {}, t(titleKey)),
    table({testid, class: "table compact"},
      [{label: t("mix.key")}, {label: t("mix.count"), cls: "num"}, {label: t("mix.share"), cls: "num"}],
      entries.map(([key, count]) => h("tr", {"data-key": key},
        h("th", {scope: "row"}, codeWithLabel(labelPrefix, key)),
        h("td", {class: "num"}, fmtInt(count)),
        h("td", {class: "num muted"}, fmtPct(total ? count / total : null)))),
      t("common.none")));
}

function renderOverview(d) {
  const L = lines();
  const fb = obj(d.feedback);
  const lat = obj(d.latency_ms);
  const handoffAlert = isNum(d.handoff_rate) && d.handoff_rate > L.handoff;
  const p95Alert = isNum(lat.p95) && lat.p95 > L.latency_ms;
  $("overview-body").replaceChildren(
    h("div", {class: "tiles"},
      tile("stat.total", fmtInt(d.total), "stat-total"),
      tile("stat.answered", fmtInt(d.answered), "stat-answered",
        {sub: d.total ? t("stat.ofTotal", {v: fmtPct(d.answered / d.total)}) : null}),
      tile("stat.handoff", fmtInt(d.handed_off), "stat-handoff"),
      tile("stat.handoffRate", fmtPct(d.handoff_rate), "stat-handoff-rate",
        {sub: t("stat.line", {v: fmtPct(L.handoff, 0)}), alert: handoffAlert}),
      tile("stat.degradedRate", fmtPct(d.degraded_rate), "stat-degraded-rate",
        {sub: t("stat.questions", {n: fmtInt(d.degraded)})}),
      tile("stat.cannedRate", fmtPct(d.canned_rate), "stat-canned-rate",
        {sub: t("stat.questions", {n: fmtInt(d.canned)})}),
      tile("stat.p50", fmtMs(lat.p50), "stat-p50"),
      tile("stat.p95", fmtMs(lat.p95), "stat-p95", {sub: t("stat.line", {v: fmtMs(L.latency_ms)}), alert: p95Alert}),
      h("div", {class: "tile"},
        h("div", {class: "tile-label"}, t("stat.feedback")),
        h("div", {class: "tile-value"},
          h("span", {testid: "stat-helpful", "aria-label": t("fb.helpful")}, fmtInt(fb.helpful)),
          h("span", {class: "tile-sep", "aria-hidden": "true"}, " / "),
          h("span", {testid: "stat-unhelpful", "aria-label": t("fb.unhelpful")}, fmtInt(fb.unhelpful))),
        h("div", {class: "tile-sub", testid: "stat-clicked"}, t("stat.clicked", {n: fmtInt(fb.clicked)})))),
    h("div", {class: "mixes"},
      mixTable("mode-mix", "overview.modes", d.modes, "mode"),
      mixTable("reason-mix", "overview.reasons", d.reasons, "reason")));
}

/* ---- 2 and 3. Time series ---- */

function renderTimeseries(d) {
  const L = lines();
  const points = arr(d.points)
    .map((p) => ({...p, time: parseTime(p.t).getTime()}))
    .filter((p) => Number.isFinite(p.time))
    .sort((a, b) => a.time - b.time);
  const bucket = d.bucket === "day" ? "day" : "hour";
  $("handoff-body").replaceChildren(lineChart({
    testid: "chart-handoff", title: t("sec.handoff"), points, bucket, cap: 1,
    series: [
      {key: "handoff_rate", label: t("chart.handoffRate"), cls: "s-handoff"},
      {key: "degraded_rate", label: t("chart.degradedRate"), cls: "s-degraded"},
    ],
    format: (v) => fmtPct(v),
    axisFormat: (v) => fmtPct(v, Math.round(v * 1000) % 10 ? 1 : 0),
    ref: {value: L.handoff, label: t("chart.handoffLine", {v: fmtPct(L.handoff, 0)})},
  }));
  $("latency-body").replaceChildren(lineChart({
    testid: "chart-latency", title: t("sec.latency"), points, bucket, cap: Infinity,
    series: [
      {key: "p50_ms", label: t("chart.p50"), cls: "s-p50"},
      {key: "p95_ms", label: t("chart.p95"), cls: "s-p95"},
    ],
    format: fmtMs,
    axisFormat: (v) => String(Math.round(v)),
    ref: {value: L.latency_ms, label: t("chart.latencyLine", {v: fmtMs(L.latency_ms)})},
  }));
}

/* ---- 4. Score histograms ---- */

function renderScores(d) {
  const kinds = obj(d.kinds);
  const names = Object.keys(kinds).sort((a, b) => {
    const ia = KIND_ORDER.indexOf(a), ib = KIND_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  if (!names.length) {
    $("scores-body").replaceChildren(muted(t("scores.none")));
    return;
  }
  const thresholds = obj(state.me && state.me.thresholds);
  $("scores-body").replaceChildren(h("div", {class: "hists"}, names.map((kind) => {
    const info = obj(kinds[kind]);
    const threshold = isNum(info.threshold) ? info.threshold : thresholds[kind];
    const n = arr(info.bins).reduce((sum, b) => sum + (b.answered || 0) + (b.handed_off || 0), 0);
    return h("figure", {class: "hist", "data-kind": kind},
      h("figcaption", {},
        h("strong", {}, tOptional(`kind.${kind}`) ?? kind), " ",
        muted(t("scores.caption", {thr: fmtNum(threshold), n: fmtInt(n)}))),
      histogram(kind, arr(info.bins), threshold),
      legend([
        {cls: "s-answered", label: t("scores.answered")},
        {cls: "s-handedoff", label: t("scores.handedOff")},
        {cls: "ref", label: t("scores.threshold", {v: fmtNum(threshold)}), dashed: true},
      ]));
  })));
}

/* ---- 5. FAQs ---- */

function faqTable(testid, rows, markLow) {
  const low = lines().low_rate;
  const rateCell = (rate, title) => h("td", {
    class: `num${markLow && isNum(rate) && rate < low ? " low" : ""}`, title,
  }, fmtPct(rate));
  return h("div", {class: "table-scroll"}, table({testid},
    [
      {label: t("faqs.col.id")}, {label: t("faqs.col.question")}, {label: t("faqs.col.views"), cls: "num"},
      {label: t("faqs.col.help"), cls: "num"}, {label: t("faqs.col.click"), cls: "num"},
    ],
    rows.map((r) => h("tr", {testid: "faq-row", "data-faq-id": r.faq_id},
      h("td", {}, h("code", {}, r.faq_id ?? "—")),
      h("td", {class: "q"}, r.question ?? ""),
      h("td", {class: "num"}, fmtInt(r.views)),
      rateCell(r.help_rate, t("faqs.helpTip", {h: fmtInt(r.helpful), u: fmtInt(r.unhelpful)})),
      rateCell(r.click_rate, t("faqs.clickTip", {n: fmtInt(r.clicks)})))),
    t("faqs.none")));
}

function renderFaqs(d) {
  const L = lines();
  $("faqs-body").replaceChildren(h("div", {class: "two-col"},
    h("div", {}, h("h3", {}, t("faqs.top")), faqTable("faq-top", arr(d.top), false)),
    h("div", {},
      h("h3", {}, t("faqs.weak")),
      h("p", {class: "muted small"}, t("faqs.weakHint", {rate: fmtPct(L.low_rate, 0), views: fmtInt(L.min_views)})),
      faqTable("faq-weak", arr(d.weak), true))));
}

/* ---- 6. Knowledge gaps ---- */

function faqPicker(testid, value, label, onEnter) {
  return h("input", {
    type: "text", class: "faq-picker", list: "faq-suggest", testid, value: value || null,
    "aria-label": label, placeholder: t("picker.placeholder"), autocomplete: "off", spellcheck: "false",
    maxlength: 200,
    onkeydown: (ev) => { if (ev.key === "Enter") { ev.preventDefault(); onEnter(); } },
  });
}

function gapCard(cluster) {
  const questions = arr(cluster.questions);
  const nearest = arr(cluster.nearest);
  const target = {
    questions: questions.map((q) => q.question ?? ""),
    requestIds: questions.map((q) => q.request_id).filter(Boolean),
  };
  const attachBtn = h("button", {type: "button", class: "btn btn-small", testid: "gap-attach"}, t("gaps.attach"));
  const picker = faqPicker("gap-attach-faq", nearest.length ? nearest[0].faq_id : "", t("gaps.attachLabel"),
    () => attachBtn.click());
  attachBtn.addEventListener("click", () => attach(attachBtn, picker.value, target));

  let expanded = state.expandedGaps.has(cluster.id);
  const items = questions.map((q, i) => h("li", {class: i >= EXAMPLES_SHOWN ? "extra" : null, hidden: i >= EXAMPLES_SHOWN && !expanded},
    h("span", {class: "q"}, q.question ?? ""), q.reason ? [" ", h("code", {class: "reason"}, q.reason)] : null));
  let toggle = null;
  if (questions.length > EXAMPLES_SHOWN) {
    toggle = h("button", {type: "button", class: "link", testid: "gap-show-all", "aria-expanded": String(expanded)},
      expanded ? t("gaps.showFewer") : t("gaps.showAll", {n: questions.length}));
    toggle.addEventListener("click", () => {
      expanded = !expanded;
      if (expanded) state.expandedGaps.add(cluster.id); else state.expandedGaps.delete(cluster.id);
      items.forEach((li, i) => { if (i >= EXAMPLES_SHOWN) li.hidden = !expanded; });
      toggle.setAttribute("aria-expanded", String(expanded));
      toggle.textContent = expanded ? t("gaps.showFewer") : t("gaps.showAll", {n: questions.length});
    });
  }

  const reasons = {};
  questions.forEach((q) => { if (q.reason) reasons[q.reason] = (reasons[q.reason] || 0) + 1; });

  return h("article", {class: "gap", testid: "gap-cluster", "data-cluster-id": cluster.id},
    h("header", {class: "gap-head"},
      h("span", {class: "gap-size", testid: "gap-size"}, fmtInt(isNum(cluster.size) ? cluster.size : questions.length)),
      muted(t("gaps.questions")),
      h("span", {class: "gap-reasons"}, Object.entries(reasons).map(([code, n]) =>
        h("span", {class: "badge", title: tOptional(`reason.${code}`) ?? code}, `${code} ×${n}`)))),
    h("ol", {class: "gap-examples"}, items),
    toggle,
    nearest.length ? h("div", {class: "gap-nearest", testid: "gap-nearest"},
      muted(t("gaps.nearest")),
      h("ul", {}, nearest.map((n) => h("li", {},
        h("button", {
          type: "button", class: "chip", title: t("gaps.useFaq"), "data-faq-id": n.faq_id,
          onclick: () => { picker.value = n.faq_id ?? ""; picker.focus(); },
        }, h("code", {}, n.faq_id ?? "—"), " ", h("span", {}, n.question ?? ""), " ",
        h("span", {class: "score"}, fmtScore(n.score))))))) : null,
    h("div", {class: "gap-actions"},
      picker, attachBtn,
      h("button", {
        type: "button", class: "btn btn-small", testid: "gap-oos",
        onclick: (ev) => runAction(ev.currentTarget, () => decide("out_of_scope", target)),
      }, t("act.oos")),
      h("button", {
        type: "button", class: "btn btn-small", testid: "gap-draft",
        onclick: () => openDraft(target),
      }, t("act.draftNew"))));
}

function renderGaps(d) {
  const clusters = arr(d.clusters);
  const clustered = isNum(d.clustered) ? d.clustered : clusters.reduce((sum, c) => sum + (c.size || 0), 0);
  $("gaps-body").replaceChildren(
    h("p", {class: "muted small", testid: "gaps-summary"},
      t("gaps.summary", {q: fmtInt(clustered), n: fmtInt(clusters.length), alg: d.algorithm ?? "?"})),
    clusters.length ? h("div", {class: "gap-list"}, clusters.map(gapCard)) : muted(t("gaps.none")));
}

/* ---- 7. Hit test ---- */

/** A table of objects whose keys are not known in advance; preferred keys first. */
function objectTable(rows, preferred) {
  const keys = [];
  for (const k of preferred) if (rows.some((r) => k in obj(r))) keys.push(k);
  for (const r of rows) for (const k of Object.keys(obj(r))) if (!keys.includes(k)) keys.push(k);
  return h("div", {class: "table-scroll tall"}, table({class: "table compact"},
    keys.map((k) => ({label: k})),
    rows.map((r) => h("tr", {}, keys.map((k) => {
      const v = obj(r)[k];
      return h("td", {class: typeof v === "number" ? "num" : null}, k === "score" || k.endsWith("_score") ? (isNum(v) ? fmtScore(v) : fmtValue(v)) : fmtValue(v));
    }))),
    t("common.none")));
}

function renderHit() {
  const mount = $("hit-result");
  const r = state.hit;
  if (!r) { mount.replaceChildren(); return; }
  const results = arr(r.results);
  const decision = obj(r.decision);
  const explain = obj(r.explain);
  const handoff = r.handoff && typeof r.handoff === "object" ? r.handoff : null;
  const parts = [];

  parts.push(h("div", {class: "hit-head"},
    outcomeBadge(Boolean(r.answered)),
    r.mode ? h("span", {class: "badge"}, t("hit.mode", {mode: r.mode})) : null,
    r.degraded ? h("span", {class: "badge badge-warn"}, t("badge.degraded")) : null,
    r.request_id ? muted(`request_id ${r.request_id}`) : null,
    r.index_version ? muted(`index ${r.index_version}`) : null));

  if (r.answered) {
    const top = results[0];
    parts.push(h("h3", {}, t("hit.answer")), h("div", {class: "hit-answer", testid: "hit-answer"},
      top ? h("div", {class: "hit-answer-q"}, h("code", {}, top.id ?? ""), " ", top.question ?? "") : null,
      h("p", {class: "answer"}, r.answer ?? (top && top.answer) ?? "")));
  }
  if (handoff) {
    parts.push(h("h3", {}, t("hit.handoff")), h("div", {class: "hit-handoff", testid: "hit-handoff"},
      h("code", {}, handoff.code ?? ""), " ", handoff.reason ?? "",
      handoff.message ? h("p", {class: "answer"}, handoff.message) : null));
  }

  const known = ["score_kind", "score", "threshold", "margin", "threshold_source", "rule"];
  parts.push(h("h3", {}, t("hit.decision")), kvList([
    [t("hit.scoreKind"), fmtValue(decision.score_kind)],
    [t("hit.score"), isNum(decision.score) ? fmtScore(decision.score) : fmtValue(decision.score)],
    [t("hit.threshold"), isNum(decision.threshold) ? fmtScore(decision.threshold) : fmtValue(decision.threshold)],
    [t("hit.margin"), fmtValue(decision.margin)],
    [t("hit.thresholdSource"), fmtValue(decision.threshold_source)],
    [t("hit.rule"), fmtValue(decision.rule)],
    ...Object.entries(decision).filter(([k]) => !known.includes(k)).map(([k, v]) => [k, fmtValue(v)]),
  ]));

  if (results.length) {
    parts.push(h("h3", {}, t("hit.results")), objectTable(results.map((x) => {
      const {answer, scores, ...rest} = obj(x);  // the answer is long; per-kind scores get their own columns
      const flat = {...rest};
      for (const [k, v] of Object.entries(obj(scores))) flat[`${k}_score`] = v;
      return flat;
    }), ["id", "question", "section", "score", "ranked_by"]));
  }

  const timings = obj(r.timings_ms);
  if (Object.keys(timings).length) {
    parts.push(h("h3", {}, t("hit.timings")), kvList(Object.entries(timings).map(([k, v]) => [k, fmtValue(v)])));
  }
  const notes = arr(r.notes);
  if (notes.length) parts.push(h("h3", {}, t("hit.notes")), h("ul", {class: "notes"}, notes.map((n) => h("li", {}, fmtValue(n)))));

  if (!r.explain) {
    parts.push(muted(t("hit.noExplain")));
  } else {
    const spans = arr(explain.spans);
    if (spans.length) {
      parts.push(h("h3", {}, t("hit.spans")), h("div", {class: "table-scroll"}, table({class: "table compact", testid: "hit-spans"},
        [
          {label: t("hit.col.name")}, {label: t("hit.col.ms"), cls: "num"}, {label: t("hit.col.outcome")},
          {label: t("hit.col.code")}, {label: t("hit.col.candidates"), cls: "num"}, {label: t("hit.col.detail")},
        ],
        spans.map((sp) => {
          const c = obj(sp);
          const cands = Array.isArray(c.candidates) ? c.candidates.length : c.candidates;
          return h("tr", {"data-span": c.name},
            h("td", {}, h("code", {}, fmtValue(c.name))),
            h("td", {class: "num"}, isNum(c.ms) ? c.ms.toFixed(1) : "—"),
            h("td", {}, fmtValue(c.outcome)),
            h("td", {}, c.code ? h("code", {}, fmtValue(c.code)) : "—"),
            h("td", {class: "num"}, fmtValue(cands)),
            h("td", {class: "detail"}, c.detail === undefined ? "—" : fmtValue(c.detail)));
        }),
        t("common.none"))));
    }
    const stages = obj(explain.stages);
    const stageNames = Object.keys(stages);
    if (stageNames.length) {
      parts.push(h("h3", {}, t("hit.stages")), stageNames.map((name) => {
        const cands = arr(stages[name]);
        return h("details", {class: "stage", open: true, "data-stage": name, testid: `hit-stage-${name}`},
          h("summary", {}, h("code", {}, name), ` (${cands.length})`),
          objectTable(cands, ["rank", "id", "score", "question", "matched", "row"]));
      }));
    }
    const other = Object.fromEntries(Object.entries(explain).filter(([k]) => k !== "spans" && k !== "stages"));
    if (Object.keys(other).length) {
      parts.push(h("details", {class: "raw"}, h("summary", {}, t("hit.otherExplain")), h("pre", {}, JSON.stringify(other, null, 2))));
    }
  }
  parts.push(h("details", {class: "raw"}, h("summary", {}, t("hit.raw")), h("pre", {}, JSON.stringify(r, null, 2))));
  mount.replaceChildren(...parts.flat());
}

/* ---- 8. Question log ---- */

function readLogForm() {
  return {status: $("log-status").value, q: $("log-q").value, from: $("log-from").value, to: $("log-to").value, offset: 0};
}

/** Query for the log and its export: the date filters (local days, `to` inclusive) override the range. */
function logQuery(filters, extra) {
  return {
    kb: state.kb,
    since: filters.from ? isoUtc(localDay(filters.from)) : state.since,
    until: filters.to ? isoUtc(localDay(filters.to, 1)) : null,
    status: filters.status || null,
    q: filters.q.trim() || null,
    ...extra,
  };
}

function updateExportLinks() {
  const query = logQuery(readLogForm(), {});
  for (const format of ["csv", "jsonl"]) {
    $(`export-${format}`).href = urlWith("/admin/api/export", {...query, format});
    $(`decisions-export-${format}`).href = urlWith("/admin/api/decisions/export", {kb: state.kb, format});
  }
}

function feedbackCell(r) {
  const out = [];
  if (r.helpful === true) out.push(h("span", {title: t("fb.helpful"), "aria-label": t("fb.helpful"), "data-feedback": "helpful"}, "👍"));
  if (r.helpful === false) out.push(h("span", {title: t("fb.unhelpful"), "aria-label": t("fb.unhelpful"), "data-feedback": "unhelpful"}, "👎"));
  if (r.clicked_id) out.push(h("span", {class: "clicked", "data-feedback": "clicked"}, t("fb.clicked", {id: r.clicked_id})));
  return out.length ? out : muted("—");
}

function logRow(r) {
  const target = {questions: [r.question ?? ""], requestIds: r.request_id ? [r.request_id] : []};
  const attachBtn = h("button", {type: "button", class: "btn btn-small", testid: "row-attach"}, t("act.attach"));
  const picker = faqPicker("row-attach-faq", r.top_id, t("log.attachLabel"), () => attachBtn.click());
  attachBtn.addEventListener("click", () => attach(attachBtn, picker.value, target));
  return h("tr", {testid: "log-row", "data-request-id": r.request_id},
    h("td", {class: "nowrap", title: r.ts ?? null}, fmtTime(r.ts)),
    h("td", {class: "q"},
      h("div", {}, r.question ?? ""),
      h("div", {class: "muted small"}, [r.lang, r.request_id].filter(Boolean).join(" · ")),
      r.review ? h("span", {class: "badge badge-review", testid: "row-review"}, r.review) : null),
    h("td", {},
      outcomeBadge(Boolean(r.answered)),
      r.reason ? [" ", h("code", {class: "reason", title: tOptional(`reason.${r.reason}`)}, r.reason)] : null,
      r.degraded ? [" ", h("span", {class: "badge badge-warn"}, t("badge.degraded"))] : null),
    h("td", {class: "top"}, r.top_id
      ? [h("code", {}, r.top_id), " ", h("span", {}, r.top_question ?? ""), " ",
        h("span", {class: "score", title: r.score_kind ?? null}, fmtScore(r.top_score), r.score_kind ? ` ${r.score_kind}` : "")]
      : muted("—")),
    h("td", {}, r.mode ?? "—"),
    h("td", {class: "num nowrap"}, fmtMs(r.latency_ms)),
    h("td", {class: "nowrap"}, feedbackCell(r)),
    h("td", {class: "row-actions"},
      h("div", {class: "inline"}, picker, attachBtn),
      h("div", {class: "inline"},
        h("button", {
          type: "button", class: "btn btn-small", testid: "row-oos",
          onclick: (ev) => runAction(ev.currentTarget, () => decide("out_of_scope", target)),
        }, t("act.oos")),
        h("button", {type: "button", class: "btn btn-small", testid: "row-draft", onclick: () => openDraft(target)},
          t("act.draft")))));
}

function renderLog(d) {
  const rows = arr(d.rows);
  const total = isNum(d.total) ? d.total : rows.length;
  const offset = state.log.offset;
  const goTo = (newOffset) => { state.log.offset = Math.max(0, newOffset); loadSection("log"); };
  $("log-body").replaceChildren(
    h("div", {class: "table-scroll"}, table({testid: "log-table", class: "table log-table"},
      ["log.col.time", "log.col.question", "log.col.outcome", "log.col.top", "log.col.mode", "log.col.latency",
        "log.col.feedback", "log.col.actions"].map((k) => ({label: t(k), cls: k === "log.col.latency" ? "num" : null})),
      rows.map(logRow),
      t("log.none"))),
    h("div", {class: "pager"},
      h("span", {class: "muted", testid: "log-count"},
        rows.length ? t("log.range", {a: fmtInt(offset + 1), b: fmtInt(offset + rows.length), n: fmtInt(total)}) : ""),
      h("button", {type: "button", class: "btn btn-small", testid: "log-prev", disabled: offset <= 0,
        onclick: () => goTo(offset - LOG_LIMIT)}, t("log.prev")),
      h("button", {type: "button", class: "btn btn-small", testid: "log-next", disabled: offset + rows.length >= total,
        onclick: () => goTo(offset + LOG_LIMIT)}, t("log.next"))));
}

/* ---- 9. Review ---- */

function decisionState(dec) {
  if (dec.state === "published") return t("review.state.published", {build: dec.build_id ?? "?"});
  if (dec.state === "undone") return `${t("review.state.undone")}${dec.undone_at ? ` ${fmtTime(dec.undone_at, false)}` : ""}`;
  if (dec.state === "pending") return t("review.state.pending");
  return fmtValue(dec.state);
}

function decisionRow(dec) {
  const questions = Array.isArray(dec.questions) ? dec.questions : [dec.question].filter((q) => q !== null && q !== undefined);
  const draft = obj(dec.draft);
  return h("tr", {testid: "decision-row", "data-decision-id": dec.id, "data-state": dec.state, class: dec.state === "undone" ? "undone" : null},
    h("td", {class: "num"}, fmtValue(dec.id)),
    h("td", {}, tOptional(`action.${dec.action}`) ?? fmtValue(dec.action)),
    h("td", {class: "q"},
      questions.map((q) => h("div", {}, fmtValue(q))),
      draft.question ? h("div", {class: "muted small"}, t("review.draftOf", {q: draft.question})) : null),
    h("td", {}, dec.faq_id ? h("code", {}, dec.faq_id) : "—"),
    h("td", {}, fmtValue(dec.actor)),
    h("td", {class: "nowrap", title: dec.created_at ?? null}, fmtTime(dec.created_at, false)),
    h("td", {}, h("span", {class: `badge state-${dec.state}`, testid: "decision-state"}, decisionState(dec))),
    h("td", {}, dec.state === "undone" ? null : h("button", {
      type: "button", class: "btn btn-small", testid: "decision-undo",
      onclick: (ev) => runAction(ev.currentTarget, async () => {
        await api(`/admin/api/decisions/${encodeURIComponent(dec.id)}/undo`, {method: "POST"});
        toast(t("done.undo", {id: dec.id}));
        return ["review", "log", "gaps"];
      }),
    }, t("review.undo"))));
}

function renderReview(d) {
  const decisions = arr(d.decisions).slice().sort((a, b) => (b.id ?? 0) - (a.id ?? 0));
  const pending = isNum(d.pending) ? d.pending : decisions.filter((x) => x.state === "pending").length;
  const publish = $("publish");
  publish.textContent = t("review.publish", {n: pending});
  publish.dataset.pending = String(pending);
  publish.disabled = pending === 0;
  $("review-body").replaceChildren(h("div", {class: "table-scroll"}, table({testid: "decisions-table"},
    ["review.col.id", "review.col.action", "review.col.question", "review.col.faq", "review.col.who",
      "review.col.when", "review.col.state"].map((k) => ({label: t(k)})).concat([{label: ""}]),
    decisions.map(decisionRow),
    t("review.none"))));
}

/* ---- 10. Hand-off rules ---- */

function renderRules(d) {
  const phrases = arr(d.phrases);
  if (state.rulesShown !== d) {  // a language switch re-renders; keep the operator's unsaved edits
    $("rules-text").value = phrases.join("\n");
    state.rulesShown = d;
  }
  $("rules-note").replaceChildren(d.default ? t("rules.default") : t("rules.custom", {n: phrases.length}));
  $("rules-note").dataset.default = String(Boolean(d.default));
}

/* ------------------------------------------------------------------------------------------ */
/* SVG charts                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/** Round tick values from 0 to at least max (at most cap); integer steps when asked. */
function niceTicks(max, count = 5, cap = Infinity, integer = false) {
  if (!(max > 0)) max = integer ? count : 1;
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  if (integer) step = Math.max(1, Math.ceil(step));
  const top = Math.min(Math.ceil(max / step - 1e-9) * step, cap);
  const ticks = [];
  for (let i = 0; i * step <= top + step * 1e-6; i++) ticks.push(Number((i * step).toFixed(10)));
  if (ticks[ticks.length - 1] < top - step * 1e-6) ticks.push(top);
  return ticks;
}

/** Round tick values inside [lo, hi]. */
function rangeTicks(lo, hi, count = 6) {
  const raw = (hi - lo) / count;
  if (!(raw > 0)) return [lo];
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-6; v += step) ticks.push(Number(v.toFixed(10)));
  return ticks;
}

function timeTick(ms, bucket, span) {
  const d = new Date(ms);
  const day = `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
  if (bucket === "day") return day;
  const time = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return span <= 24 * 3600 * 1000 ? time : `${day} ${time}`;
}

const LINE_BOX = {w: 640, h: 240, l: 50, r: 18, t: 16, b: 30};

/**
 * A line chart with a dashed reference line. o: {testid, title, points [{time, <series keys>, total}],
 * bucket, series [{key, label, cls}], format, axisFormat, cap, ref {value, label}}.
 * Null values break a line rather than dropping to zero.
 */
function lineChart(o) {
  const {w, h: H, l, r, t: top, b} = LINE_BOX;
  const root = s("svg", {
    class: "chart", viewBox: `0 0 ${w} ${H}`, role: "img", "aria-label": o.title, testid: o.testid,
  }, s("title", {}, o.title));
  const wrap = h("div", {class: "chart-wrap"}, root,
    legend([...o.series, {cls: "ref", label: o.ref.label, dashed: true}]));
  const pts = o.points;
  if (!pts.length) {
    root.append(s("text", {x: w / 2, y: H / 2, class: "chart-empty", "text-anchor": "middle"}, t("empty.noData")));
    return wrap;
  }
  const values = pts.flatMap((p) => o.series.map((se) => p[se.key])).filter(isNum);
  const ticks = niceTicks(Math.max(o.ref.value * 1.25, ...values), 5, o.cap);
  const yMax = ticks[ticks.length - 1];
  const t0 = pts[0].time;
  const span = pts[pts.length - 1].time - t0;
  const X = (ms) => (span > 0 ? l + ((ms - t0) / span) * (w - l - r) : l + (w - l - r) / 2);
  const Y = (v) => top + (1 - Math.min(v, yMax) / yMax) * (H - top - b);

  for (const tv of ticks) {
    root.append(
      s("line", {x1: l, x2: w - r, y1: Y(tv), y2: Y(tv), class: "grid"}),
      s("text", {x: l - 6, y: Y(tv) + 4, class: "axis", "text-anchor": "end"}, o.axisFormat(tv)));
  }
  const tickCount = Math.min(6, pts.length);
  const seen = new Set();
  for (let i = 0; i < tickCount; i++) {
    const idx = tickCount === 1 ? 0 : Math.round((i * (pts.length - 1)) / (tickCount - 1));
    if (seen.has(idx)) continue;
    seen.add(idx);
    const anchor = tickCount > 1 && i === 0 ? "start" : tickCount > 1 && i === tickCount - 1 ? "end" : "middle";
    root.append(s("text", {x: X(pts[idx].time), y: H - b + 18, class: "axis", "text-anchor": anchor},
      timeTick(pts[idx].time, o.bucket, span)));
  }
  root.append(s("line", {x1: l, x2: w - r, y1: Y(0), y2: Y(0), class: "axis-line"}));

  const refY = Y(o.ref.value);
  root.append(
    s("line", {x1: l, x2: w - r, y1: refY, y2: refY, class: "ref", "data-value": o.ref.value}),
    s("text", {x: w - r - 4, y: refY - 5 < top + 8 ? refY + 13 : refY - 5, class: "ref-label", "text-anchor": "end"}, o.ref.label));

  for (const se of o.series) {
    const g = s("g", {class: `series ${se.cls}`, "data-series": se.key});
    let d = "";
    let penDown = false;
    for (const p of pts) {
      const v = p[se.key];
      if (!isNum(v)) { penDown = false; continue; }
      d += `${penDown ? "L" : "M"}${X(p.time).toFixed(1)},${Y(v).toFixed(1)}`;
      penDown = true;
    }
    if (d) g.append(s("path", {d, class: "line"}));
    for (const p of pts) {
      const v = p[se.key];
      if (!isNum(v)) continue;
      const when = o.bucket === "day" ? fmtTime(p.t, false).slice(0, 10) : fmtTime(p.t, false);
      g.append(s("circle", {cx: X(p.time).toFixed(1), cy: Y(v).toFixed(1), r: pts.length > 60 ? 1.6 : 2.8, class: "dot"},
        s("title", {}, `${when} · ${se.label} ${o.format(v)} · ${t("chart.n", {n: fmtInt(p.total)})}`)));
    }
    root.append(g);
  }
  return wrap;
}

const HIST_BOX = {w: 560, h: 220, l: 44, r: 18, t: 26, b: 30};

/** A stacked histogram (answered below, handed off above) with the threshold as a vertical line. */
function histogram(kind, rawBins, threshold) {
  const {w, h: H, l, r, t: top, b} = HIST_BOX;
  const title = t("scores.histTitle", {kind: tOptional(`kind.${kind}`) ?? kind});
  const root = s("svg", {
    class: "chart hist-chart", viewBox: `0 0 ${w} ${H}`, role: "img", "aria-label": title,
    testid: `score-hist-${kind}`, "data-threshold": isNum(threshold) ? threshold : null,
  }, s("title", {}, title));
  const bins = rawBins.filter((bn) => isNum(bn.lo) && isNum(bn.hi)).sort((a, c) => a.lo - c.lo);
  if (!bins.length) {
    root.append(s("text", {x: w / 2, y: H / 2, class: "chart-empty", "text-anchor": "middle"}, t("empty.noData")));
    return root;
  }
  let x0 = bins[0].lo;
  let x1 = bins[bins.length - 1].hi;
  if (isNum(threshold)) { x0 = Math.min(x0, threshold); x1 = Math.max(x1, threshold); }
  const padX = (x1 - x0) * 0.02 || 0.01;
  x0 -= padX; x1 += padX;
  const totals = bins.map((bn) => (bn.answered || 0) + (bn.handed_off || 0));
  const yTicks = niceTicks(Math.max(...totals), 4, Infinity, true);
  const yMax = yTicks[yTicks.length - 1];
  const X = (v) => l + ((v - x0) / (x1 - x0)) * (w - l - r);
  const Y = (v) => top + (1 - v / yMax) * (H - top - b);

  for (const tv of yTicks) {
    root.append(
      s("line", {x1: l, x2: w - r, y1: Y(tv), y2: Y(tv), class: "grid"}),
      s("text", {x: l - 6, y: Y(tv) + 4, class: "axis", "text-anchor": "end"}, fmtInt(tv)));
  }
  for (const xv of rangeTicks(x0, x1, 6)) {
    root.append(s("text", {x: X(xv), y: H - b + 18, class: "axis", "text-anchor": "middle"}, fmtNum(xv)));
  }
  root.append(s("line", {x1: l, x2: w - r, y1: Y(0), y2: Y(0), class: "axis-line"}));

  for (const bn of bins) {
    const answered = bn.answered || 0;
    const handedOff = bn.handed_off || 0;
    const bx = X(bn.lo) + 0.5;
    const bw = Math.max(1, X(bn.hi) - X(bn.lo) - 1);
    root.append(s("g", {
      class: "bin", testid: "score-bin",
      "data-lo": bn.lo, "data-hi": bn.hi, "data-answered": answered, "data-handed-off": handedOff,
    },
    s("title", {}, t("scores.binTip", {lo: fmtNum(bn.lo), hi: fmtNum(bn.hi), a: fmtInt(answered), h: fmtInt(handedOff)})),
    s("rect", {x: bx, y: top, width: bw, height: H - top - b, class: "bin-hit"}),
    answered ? s("rect", {x: bx, y: Y(answered), width: bw, height: Y(0) - Y(answered), class: "bar-answered"}) : null,
    handedOff ? s("rect", {x: bx, y: Y(answered + handedOff), width: bw, height: Y(answered) - Y(answered + handedOff), class: "bar-handoff"}) : null));
  }

  if (isNum(threshold)) {
    const tx = X(threshold);
    const anchor = tx > w - r - 60 ? "end" : tx < l + 60 ? "start" : "middle";
    root.append(
      s("line", {x1: tx, x2: tx, y1: top - 4, y2: H - b, class: "ref threshold", "data-value": threshold}),
      s("text", {x: tx, y: top - 9, class: "ref-label", "text-anchor": anchor},
        t("scores.threshold", {v: fmtNum(threshold)})));
  }
  return root;
}

/* ------------------------------------------------------------------------------------------ */
/* Actions                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/** Shows a result or an error in the status line; it stays until replaced or dismissed. */
function toast(message, kind = "ok") {
  const box = $("status-box");
  $("status").textContent = message;
  $("status").dataset.kind = kind;
  box.dataset.kind = kind;
  box.hidden = false;
}

/**
 * Runs one operator action with its button disabled; errors go to the status line. fn may return
 * the names of sections to reload afterwards (after the button is enabled again, so a re-render
 * that disables it, like "Publish 0 pending", wins).
 */
async function runAction(button, fn) {
  if (button) button.disabled = true;
  let sections = [];
  try {
    sections = (await fn()) || [];
  } catch (err) {
    if (err.status !== 401) toast(err.message || String(err), "error");
  } finally {
    if (button) button.disabled = false;
  }
  if (sections.length) await refresh(...sections);
}

async function postDecision(action, target, faqId = null, draft = null) {
  const res = await api("/admin/api/decisions", {
    method: "POST",
    json: {kb: state.kb, action, questions: target.questions, request_ids: target.requestIds, faq_id: faqId, draft},
  });
  const n = arr(res.decisions).length || target.questions.length;
  toast(t(`done.${action}`, {n, faq: faqId ?? ""}));
}

const AFTER_DECISION = ["log", "gaps", "review"];

async function decide(action, target, faqId = null) {
  await postDecision(action, target, faqId);
  return AFTER_DECISION;
}

function attach(button, faqId, target) {
  const id = (faqId || "").trim();
  if (!id) { toast(t("act.needFaq"), "error"); return; }
  runAction(button, () => decide("attach", target, id));
}

function openDraft(target) {
  state.draftTarget = target;
  $("draft-question").value = target.questions[0] ?? "";
  $("draft-answer").value = "";
  $("draft-section").value = "";
  $("draft-source").textContent = t("draft.source", {n: target.questions.length});
  $("draft-error").hidden = true;
  $("draft-dialog").showModal();
  $("draft-answer").focus();
}

async function submitDraft(ev) {
  ev.preventDefault();
  const question = $("draft-question").value.trim();
  const answer = $("draft-answer").value.trim();
  const section = $("draft-section").value.trim();
  const error = $("draft-error");
  if (!question || !answer) {
    error.textContent = t("draft.needFields");
    error.hidden = false;
    return;
  }
  const button = $("draft-submit");
  button.disabled = true;
  try {
    await postDecision("draft", state.draftTarget, null, {question, answer, section: section || null});
    $("draft-dialog").close();
  } catch (err) {
    // The dialog is modal, so the error is shown inside it rather than in the status line.
    if (err.status !== 401) { error.textContent = err.message; error.hidden = false; }
    else $("draft-dialog").close();
    return;
  } finally {
    button.disabled = false;
  }
  await refresh(...AFTER_DECISION);
}

function publish(ev) {
  runAction(ev.currentTarget, async () => {
    const res = await api("/admin/api/publish", {method: "POST", json: {kb: state.kb}});
    $("publish-result").textContent = t("review.publishedResult", {
      build: res.build_id ?? "?", applied: fmtInt(res.applied), embedded: fmtInt(res.embedded_rows),
      reused: fmtInt(res.reused_rows), s: isNum(res.seconds) ? res.seconds.toFixed(1) : "—",
    });
    $("publish-result").dataset.buildId = res.build_id ?? "";
    toast(t("done.publish", {build: res.build_id ?? "?"}));
    return ["review", "log", "gaps", "faqs"];
  });
}

function importSummary(res) {
  const n = isNum(res.imported) ? res.imported : arr(res.decisions).length;
  const problems = arr(res.errors ?? res.rejected ?? res.skipped);
  let msg = t("review.imported", {n: fmtInt(n)});
  if (problems.length) {
    const list = problems.slice(0, 5).map((p) => {
      if (typeof p !== "object" || p === null) return String(p);
      const where = p.line ?? p.row;
      return [where !== undefined ? `#${where}` : "", p.reason ?? p.msg ?? p.detail ?? JSON.stringify(p)].filter(Boolean).join(" ");
    }).join("; ");
    msg += ` ${t("review.importErrors", {n: fmtInt(problems.length), list})}`;
  }
  return msg;
}

function submitImport(ev) {
  ev.preventDefault();
  const input = $("import-file");
  const result = $("import-result");
  const file = input.files && input.files[0];
  if (!file) { result.textContent = t("review.importNeedFile"); return; }
  const form = new FormData();
  form.append("file", file, file.name);
  runAction(ev.submitter || null, async () => {
    try {
      const res = await api("/admin/api/decisions/import", {method: "POST", query: {kb: state.kb}, form});
      const msg = importSummary(res);
      result.textContent = msg;
      result.dataset.kind = "ok";
      toast(t("done.import", {msg}));
      input.value = "";
      return ["review", "log", "gaps"];
    } catch (err) {
      result.textContent = err.message;
      result.dataset.kind = "error";
      throw err;
    }
  });
}

function saveRules(ev) {
  ev.preventDefault();
  const phrases = [...new Set($("rules-text").value.split("\n").map((p) => p.trim()).filter(Boolean))];
  runAction(ev.submitter || null, async () => {
    const res = await api("/admin/api/rules", {method: "PUT", json: {kb: state.kb, phrases}});
    state.data.rules = res;
    state.errors.rules = null;
    renderSection("rules");
    toast(t("done.rules", {n: arr(res.phrases).length}));
  });
}

function submitHit(ev) {
  ev.preventDefault();
  const question = $("hit-question").value.trim();
  if (!question) { $("hit-result").replaceChildren(muted(t("hit.empty"))); return; }
  const mount = $("hit-result");
  runAction(ev.submitter || null, async () => {
    mount.setAttribute("aria-busy", "true");
    try {
      state.hit = await api("/admin/api/hit-test", {method: "POST", json: {question, kb: state.kb}});
      renderHit();
    } catch (err) {
      if (err.status !== 401) mount.replaceChildren(errorBox(err.message));
      throw err;
    } finally {
      mount.removeAttribute("aria-busy");
    }
  });
}

/* FAQ id suggestions: one shared <datalist>, refilled from /admin/api/entries as the user types. */
let suggestTimer = 0;
let suggestSeq = 0;

function suggestFaqs(text) {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(async () => {
    const seq = ++suggestSeq;
    let res;
    try {
      res = await api("/admin/api/entries", {query: {kb: state.kb, q: text.trim(), limit: 20}});
    } catch (_) {
      return;  // suggestions are a convenience; the attach call itself reports real errors
    }
    if (seq !== suggestSeq) return;
    $("faq-suggest").replaceChildren(...arr(res.entries).map((e) =>
      h("option", {value: e.faq_id}, [e.question, e.section].filter(Boolean).join(" · "))));
  }, 200);
}

/* ------------------------------------------------------------------------------------------ */
/* Login, language, wiring, boot                                                              */
/* ------------------------------------------------------------------------------------------ */

function resetData() {
  state.data = {};
  state.errors = {};
  state.hit = null;
  state.rulesShown = null;
  state.expandedGaps.clear();
  $("faq-suggest").replaceChildren();
  $("publish-result").textContent = "";
  $("import-result").textContent = "";
}

function showLogin() {
  if (!$("login").hidden) return;  // several calls may fail with 401 at once
  resetData();
  $("dashboard").hidden = true;
  $("controls").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = true;
  if ($("draft-dialog").open) $("draft-dialog").close();
  $("login-key").focus();
}

function showDashboard() {
  $("login").hidden = true;
  $("fatal").hidden = true;
  $("dashboard").hidden = false;
  $("controls").hidden = false;
}

function showFatal(message) {
  $("fatal").textContent = message;
  $("fatal").hidden = false;
}

/** Loads /me and the whole dashboard. Returns false when the session is missing (login shown). */
async function start() {
  let me;
  try {
    me = await api("/admin/api/me");
  } catch (err) {
    if (err.status !== 401) showFatal(t("err.load", {msg: err.message}));
    return err.status !== 401;
  }
  state.me = me;
  const kbs = arr(me.kbs);
  if (!kbs.includes(state.kb)) state.kb = me.default_kb ?? kbs[0] ?? "default";
  $("kb-select").replaceChildren(...(kbs.length ? kbs : [state.kb]).map((kb) =>
    h("option", {value: kb, selected: kb === state.kb}, kb)));
  showDashboard();
  await refreshAll();
  return true;
}

async function submitLogin(ev) {
  ev.preventDefault();
  const key = $("login-key").value;
  const error = $("login-error");
  if (!key) { error.textContent = t("login.empty"); error.hidden = false; return; }
  const button = ev.submitter || null;
  if (button) button.disabled = true;
  try {
    await api("/admin/login", {method: "POST", json: {key}, authRedirect: false});
  } catch (err) {
    error.textContent = err.status === 401 ? t("login.wrong") : err.message;
    error.hidden = false;
    return;
  } finally {
    if (button) button.disabled = false;
  }
  $("login-key").value = "";
  error.hidden = true;
  if (!(await start())) {
    error.textContent = t("login.noCookie");
    error.hidden = false;
  }
}

async function logout() {
  try {
    await api("/admin/logout", {method: "POST", authRedirect: false});
  } catch (_) {
    /* the session is dropped locally either way */
  }
  state.me = null;
  showLogin();
}

function applyI18n() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("doc.title");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      el.setAttribute(attr, t(key));
    }
  }
  for (const el of document.querySelectorAll("#lang-toggle [data-lang]")) {
    el.classList.toggle("active", el.dataset.lang === state.lang);
  }
  $("lang-toggle").dataset.lang = state.lang;
}

function setLang(lang) {
  state.lang = lang;
  try { window.localStorage.setItem(LANG_KEY, lang); } catch (_) { /* not remembered, still switched */ }
  applyI18n();
  rerenderAll();
  if ($("draft-dialog").open) $("draft-source").textContent = t("draft.source", {n: state.draftTarget.questions.length});
}

function wire() {
  $("lang-toggle").addEventListener("click", () => setLang(state.lang === "zh" ? "en" : "zh"));
  $("login-form").addEventListener("submit", submitLogin);
  $("logout").addEventListener("click", logout);
  $("kb-select").addEventListener("change", (ev) => {
    state.kb = ev.target.value;
    state.log.offset = 0;
    state.rulesShown = null;
    state.expandedGaps.clear();
    $("faq-suggest").replaceChildren();
    $("publish-result").textContent = "";
    refreshAll();
  });
  $("range-select").addEventListener("change", (ev) => {
    state.range = ev.target.value in RANGE_HOURS ? ev.target.value : "24h";
    state.log.offset = 0;
    refreshAll();
  });
  $("refresh").addEventListener("click", (ev) => {
    const button = ev.currentTarget;
    button.disabled = true;
    refreshAll().finally(() => { button.disabled = false; });
  });
  $("log-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.log = readLogForm();
    loadSection("log");
  });
  $("log-filters").addEventListener("input", updateExportLinks);
  $("log-filters").addEventListener("change", updateExportLinks);
  $("hit-form").addEventListener("submit", submitHit);
  $("publish").addEventListener("click", publish);
  $("import-form").addEventListener("submit", submitImport);
  $("rules-form").addEventListener("submit", saveRules);
  $("draft-form").addEventListener("submit", submitDraft);
  $("draft-form").addEventListener("input", () => { $("draft-error").hidden = true; });
  $("draft-cancel").addEventListener("click", () => $("draft-dialog").close());
  $("status-close").addEventListener("click", () => { $("status-box").hidden = true; });
  document.addEventListener("input", (ev) => {
    if (ev.target.classList && ev.target.classList.contains("faq-picker")) suggestFaqs(ev.target.value);
  });
  document.addEventListener("focusin", (ev) => {
    if (ev.target.classList && ev.target.classList.contains("faq-picker")) suggestFaqs(ev.target.value);
  });
}

function boot() {
  applyI18n();
  wire();
  start();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
else boot();
