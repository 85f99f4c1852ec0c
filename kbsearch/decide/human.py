"""Hand-off rules operators control: the user asks for a person (转人工, speak to a human), we hand off at once.

Each KB has a list of phrases (``<kb>/handoff_rules.json``, ``{"phrases": [...]}``, edited from the
dashboard; ``DEFAULT_PHRASES`` when there is no file, and when the file is malformed, which is logged:
a bad file never fails a question). ``HumanRequestMatcher`` checks a question against them two ways:

- **words**: after normalising (NFKC, case-folded, punctuation and spaces dropped) a phrase occurs in
  a clause of the question *and that clause is nothing but the request*: what is left once the matched
  phrases and ``FILLER_WORDS`` (pronouns, polite words, request verbs, particles: 我要, 帮我, 一下, 吗,
  please, can I, talk to) are taken out is empty. So 转人工, 我要转人工客服, 人工客服！！, "please, agent
  please" and 转人工，我的问题解决不了 match, while 人工客服的工作时间是几点 (工作时间, 几点 are left: a
  question about the service hours), 投诉电话是多少 and "When can I talk to a person?" do not, and go to
  retrieval like any question. An empty-leftover rule rather than a length limit: 人工客服的工作时间是几点
  and 转人工我的问题解决不了 leave the same number of characters; only the words left tell them apart.
- **meaning**: the cosine between the question's embedding (the one retrieval made) and a phrase's
  reaches ``decide.human_request_similarity`` *and* beats the best FAQ's cosine (the phrases compete with
  the FAQs, as if they were one more FAQ whose answer is the hand-off). Both conditions are needed with
  e5-small, whose cosines are compressed: 人工客服几点上班 is 0.961 from 人工客服 and 我要退款 0.934 from
  我要投诉, above any threshold that still lets paraphrases through (能帮我接一下人工吗 0.949, let me talk
  to someone 0.955), but each is closer still to the FAQ that answers it (1.000, 0.945).

Phrases are embedded once per KB rules (with the engine's embedder) and kept until the file changes; the
file is re-read when its mtime changes (one ``stat`` per question and check), as the dashboard edits it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kbsearch.codes import HandoffReason
from kbsearch.config import DecideSettings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError, KbsearchError, NotFoundError
from kbsearch.index.durable import write_text_atomic
from kbsearch.types import Candidate, Decision

log = logging.getLogger(__name__)

RULES_FILE = "handoff_rules.json"
"""The KB's hand-off rules, beside its builds."""
MAX_PHRASES = 200
"""Most phrases a KB's rules may hold."""
MAX_PHRASE_CHARS = 100
"""Longest phrase, in characters after stripping."""

DEFAULT_PHRASES: tuple[str, ...] = (
    "转人工", "人工", "人工客服", "人工服务", "找人工", "接人工", "转接人工", "真人", "真人客服", "我要投诉", "投诉",
    "speak to a human", "talk to a human", "speak to a person", "talk to a person", "speak to someone",
    "talk to someone", "human", "human agent", "live agent", "real person", "agent please",
    "customer service representative", "representative", "I want to complain", "file a complaint",
)
"""The phrases a KB without its own rules hands off on, in Chinese and English."""

FILLER_WORDS: tuple[str, ...] = (
    # Chinese: pronouns, polite words, request verbs, measure words and particles.
    "我", "我们", "你", "你们", "您", "要", "想", "想要", "需要", "请", "麻烦", "帮", "帮我", "帮忙", "给", "给我",
    "让", "叫", "找", "接", "转", "转接", "联系", "连接", "跟", "和", "与", "对话", "说话", "聊", "聊聊", "沟通",
    "一下", "一个", "个", "位", "一位", "直接", "马上", "立刻", "立即", "现在", "赶紧", "赶快", "快", "快点", "急",
    "可以", "可不可以", "能", "能不能", "能否", "行不行", "好不好", "吗", "吧", "呢", "啊", "呀", "哦", "嗯", "了",
    "的", "在", "在吗", "在不在", "有", "有没有", "没有", "是", "还是", "怎么", "怎样", "如何", "你好", "您好",
    "谢谢", "感谢", "好的", "客服", "服务",
    # English: pronouns, request verbs, politeness; contractions split at the apostrophe (I'd -> i d).
    "i", "me", "my", "we", "us", "you", "your", "please", "pls", "plz", "can", "could", "would", "will", "may",
    "want", "wanna", "need", "like", "let", "get", "give", "put", "connect", "transfer", "speak", "talk", "chat",
    "with", "to", "a", "an", "the", "through", "now", "right", "just", "immediately", "asap", "hi", "hello",
    "hey", "ok", "okay", "thanks", "thank", "yes", "how", "do", "is", "there", "am", "be", "some", "someone",
    "somebody", "real", "live", "actual", "d", "m", "ll", "s", "t", "re", "ve", "customer", "service", "support",
)
"""Words that may surround a phrase in a question that is only the request (see the module docstring)."""

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_LATIN = rf"[^\W_{_CJK}]"  # a word character that is not CJK: Latin letters, digits
_SPACE_BY_CJK = re.compile(rf"(?<=[{_CJK}]) | (?=[{_CJK}])")
_CLAUSES = re.compile(r"[,.;:!?\n。、…]+")  # after NFKC: full-width ，！？；： are ASCII

How = Literal["words", "meaning"]
"""How a hand-off phrase matched."""


def normalise(text: str) -> str:
    """NFKC, case-folded, every run of punctuation, symbols and spaces one space, and no space next to a
    CJK character (Chinese has none between words; English keeps them to tell words apart)."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = " ".join("".join(ch if unicodedata.category(ch)[0] in "LN" else " " for ch in t).split())
    return _SPACE_BY_CJK.sub("", t)


def _pattern(words: Iterable[str]) -> re.Pattern[str]:
    """One pattern matching any of the normalised ``words``, longest first; Latin words only as whole words."""
    alts = []
    for w in sorted(set(words), key=len, reverse=True):
        start = rf"(?<!{_LATIN})" if re.match(_LATIN, w) else ""
        end = rf"(?!{_LATIN})" if re.match(_LATIN, w[-1]) else ""
        alts.append(start + re.escape(w) + end)
    return re.compile("|".join(alts))


_FILLER = _pattern(normalise(w) for w in FILLER_WORDS)


@functools.lru_cache(maxsize=256)
def _compiled(phrases: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """Each phrase with its pattern, longest (normalised) first; cached per phrase list (there are few)."""
    normalised = sorted(((p, n) for p in phrases if (n := normalise(p))), key=lambda t: len(t[1]), reverse=True)
    return tuple((p, _pattern([n])) for p, n in normalised)


def words_match(question: str, phrases: Sequence[str]) -> str | None:
    """The longest of ``phrases`` in the first clause of ``question`` that is nothing but a request for a person,
    or None.

    A clause (the question split at sentence punctuation: 转人工，我的问题解决不了 has two) is a request when a
    phrase occurs in it (both normalised) and nothing is left once every phrase that occurs and the
    ``FILLER_WORDS`` are taken out.
    """
    compiled = _compiled(tuple(phrases))
    for clause in _CLAUSES.split(unicodedata.normalize("NFKC", question)):
        q = normalise(clause)
        found = [(p, pattern) for p, pattern in compiled if pattern.search(q)]
        if not found:
            continue
        rest = q
        for _, pattern in found:  # longest first, so 人工客服 goes before the 人工 inside it
            rest = pattern.sub(" ", rest)
        if not _FILLER.sub(" ", rest).strip():
            return found[0][0]
    return None


@dataclass(frozen=True)
class HandoffRules:
    """A KB's hand-off phrases.

    Attributes:
        phrases: The phrases, as the operator wrote them (stripped, no duplicates).
        source: Where they came from: ``default``, ``handoff_rules.json``, or ``default (...)`` with why
            the file was not used.
    """

    phrases: tuple[str, ...]
    source: str

    @property
    def is_default(self) -> bool:
        """True for ``DEFAULT_PHRASES``: the KB has no rules file, or a malformed one."""
        return self.source.startswith("default")


@dataclass(frozen=True)
class HumanMatch:
    """The user asked for a person: which phrase matched, how, and how closely.

    Attributes:
        phrase: The phrase of the KB's rules that matched.
        how: ``words`` (the question is the phrase and filler words) or ``meaning`` (embedding cosine).
        score: 1.0 for words; the cosine for meaning.
        detail: For meaning, the threshold and the best FAQ's cosine it beat ("" for words).
    """

    phrase: str
    how: How
    score: float
    detail: str = ""

    @property
    def note(self) -> str:
        """For the trace's notes, e.g. ``asked for a person: words match on "转人工"``."""
        note = f'asked for a person: {self.how} match on "{self.phrase}"'
        return f"{note} ({self.detail})" if self.detail else note

    @property
    def rule(self) -> str:
        """The decision's rule, e.g. ``human-requested: words "转人工"``."""
        rule = f'{HandoffReason.HUMAN_REQUESTED}: {self.how} "{self.phrase}"'
        return f"{rule} ({self.detail})" if self.detail else rule


def validate_phrases(phrases: object) -> tuple[str, ...]:
    """The phrases stripped and without duplicates (same normalised form: the first one kept).

    Raises:
        BadInputError: not a list of strings, fewer than 1 or more than ``MAX_PHRASES``, or a phrase that is
            empty, longer than ``MAX_PHRASE_CHARS`` or only punctuation (the message names it).
    """
    if isinstance(phrases, (str, bytes)) or not isinstance(phrases, Sequence):
        raise BadInputError(f"hand-off phrases must be a list of strings, got {type(phrases).__name__}")
    out: dict[str, str] = {}
    for p in phrases:
        if not isinstance(p, str):
            raise BadInputError(f"hand-off phrase {p!r} is not a string")
        s = p.strip()
        if not 1 <= len(s) <= MAX_PHRASE_CHARS:
            raise BadInputError(f"hand-off phrase {p!r} must be 1 to {MAX_PHRASE_CHARS} characters, got {len(s)}")
        if not normalise(s):
            raise BadInputError(f"hand-off phrase {p!r} has no letters or digits")
        out.setdefault(normalise(s), s)
    if not 1 <= len(out) <= MAX_PHRASES:
        raise BadInputError(f"hand-off rules need 1 to {MAX_PHRASES} distinct phrases, got {len(out)}")
    return tuple(out.values())


def load_rules(kb_dir: Path) -> HandoffRules:
    """The KB's hand-off rules: its ``handoff_rules.json``, else ``DEFAULT_PHRASES``.

    A file that cannot be read or fails validation is logged and the defaults are used (never raises for it).
    """
    path = kb_dir / RULES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise BadInputError(f"expected an object with \"phrases\", got {type(data).__name__}")
        return HandoffRules(validate_phrases(data.get("phrases")), RULES_FILE)
    except FileNotFoundError:
        return HandoffRules(DEFAULT_PHRASES, "default")
    except (OSError, ValueError, BadInputError) as exc:  # ValueError: bad JSON or bad UTF-8
        log.warning("hand-off rules %s are malformed, the defaults are used: %s", path, exc)
        return HandoffRules(DEFAULT_PHRASES, f"default ({RULES_FILE} is malformed: {exc})")


def save_rules(kb_dir: Path, phrases: Sequence[str]) -> HandoffRules:
    """Validate ``phrases`` and make them the KB's hand-off rules (atomically and durably: ``write_text_atomic``).

    Raises:
        BadInputError: see ``validate_phrases``. NotFoundError: ``kb_dir`` does not exist.
    """
    rules = HandoffRules(validate_phrases(phrases), RULES_FILE)
    if not kb_dir.is_dir():
        raise NotFoundError(f"knowledge base {kb_dir.name!r} does not exist")
    write_text_atomic(kb_dir / RULES_FILE, json.dumps({"phrases": list(rules.phrases)}, ensure_ascii=False, indent=2))
    return rules


@dataclass
class _Loaded:
    """One KB's rules as the matcher keeps them: the file's identity, the rules, the phrases' embeddings."""

    stamp: tuple[int, int, int] | None
    rules: HandoffRules
    vectors: np.ndarray | None = None


def human_requested(decision: Decision, match: HumanMatch) -> Decision:
    """``decision`` (its scores kept, for explain) turned into the hand-off the user asked for."""
    return dataclasses.replace(decision, reason=HandoffReason.HUMAN_REQUESTED, rule=match.rule)


class HumanRequestMatcher:
    """Checks questions against each KB's hand-off rules, by words and by meaning (see the module docstring).

    Args:
        embedder: The question embedder (the phrases are embedded with it, like the questions).
        settings: The ``decide`` group (``human_request_similarity``).
    """

    def __init__(self, embedder: Embedder, settings: DecideSettings) -> None:
        self.embedder, self.settings = embedder, settings
        self._kbs: dict[Path, _Loaded] = {}
        self._lock = threading.Lock()

    def rules(self, kb_dir: Path) -> HandoffRules:
        """The KB's rules, re-read when its file changes."""
        return self._loaded(kb_dir).rules

    def by_words(self, kb_dir: Path, question: str) -> HumanMatch | None:
        """The match when the question is only a request for a person (``words_match``), else None."""
        phrase = words_match(question, self._loaded(kb_dir).rules.phrases)
        return HumanMatch(phrase, "words", 1.0) if phrase is not None else None

    def by_meaning(self, kb_dir: Path, vector: np.ndarray | None, cands: Sequence[Candidate]) -> HumanMatch | None:
        """The closest phrase when its cosine with ``vector`` reaches ``human_request_similarity`` and beats every
        candidate FAQ's vector score, else None (also with no vector: the BM25 path, or when the phrases cannot
        be embedded, which is logged).

        Args:
            vector: The question's L2-normalised embedding (from the same embedder), or None.
            cands: The first stage's candidates (their ``vector`` is the FAQ's best row cosine).
        """
        if vector is None:
            return None
        loaded = self._loaded(kb_dir)
        if loaded.vectors is None:
            try:
                loaded.vectors = self.embedder.embed_queries(list(loaded.rules.phrases))
            except KbsearchError as exc:  # the question is still answered; only the meaning match is skipped
                log.warning("cannot embed the hand-off phrases of %s: %s", kb_dir.name, exc)
                return None
        if loaded.vectors.shape[1] != vector.shape[-1]:
            return None
        sims = loaded.vectors @ vector.reshape(-1)
        best = int(np.argmax(sims))
        score = float(sims[best])
        faq = max((c.vector for c in cands if c.vector is not None), default=None)
        threshold = self.settings.human_request_similarity
        if score < threshold or (faq is not None and score <= faq):
            return None
        faq_text = f", best FAQ {faq:.3f}" if faq is not None else ""
        return HumanMatch(loaded.rules.phrases[best], "meaning", score,
                          f"cosine {score:.3f} >= {threshold:.3f}{faq_text}")

    def _loaded(self, kb_dir: Path) -> _Loaded:
        path = kb_dir / RULES_FILE
        try:
            st = path.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:  # unreadable folder: load_rules logs it and falls back to the defaults
            log.warning("cannot stat %s: %s", path, exc)
            stamp = None
        cached = self._kbs.get(kb_dir)
        if cached is None or cached.stamp != stamp:
            with self._lock:
                cached = self._kbs.get(kb_dir)
                if cached is None or cached.stamp != stamp:
                    cached = self._kbs[kb_dir] = _Loaded(stamp, load_rules(kb_dir))
        return cached
