"""Merge near-duplicate FAQ entries, without ever merging questions that differ in a key term.

Questions are compared in three forms (see ``QuestionKey``): the *key* (NFKC width folding,
lowercase, punctuation and whitespace removed), the *core* tokens (the key's tokens minus noise:
politeness, particles, articles, auxiliaries, pronouns; ``DedupePolicy``), and the core key.

Candidates: MinHash-LSH (datasketch) over character shingles (``ingest.dedupe_shingle``) of the core
key, so Chinese needs no word segmentation. Entries with equal core keys are candidates of each other.

Confirmation, per candidate pair:

1. equal keys or equal core keys (they differ only by punctuation/width/case/noise words): same;
2. else rapidfuzz ``ratio`` of the core keys must reach ``ingest.dedupe_confirm_ratio``, and then the
   *key-term guard* must pass: every token that differs between the two core token sequences must be an
   inflection of its counterpart (``card``/``cards``, ``apply``/``applied``). Any other differing content
   token (a CJK character such as 借 vs 花, a digit, an English word such as ``car``/``auto``) refuses
   the merge; such pairs are listed in the report as *possible duplicates* for a person to review.

This is deliberately conservative: a wrong merge silently loses an FAQ (its question then answers with
another entry's answer), while a missed merge costs only a duplicate row. Negations are never noise.

Merging (same question, established above): entries merge only when they also share section and
validity window, and their answers are compatible: equal after normalisation, one contained in the
other, or one entry has no answer of its own (answer == question, as in intent data). Otherwise both are
kept and the pair is reported as a *conflict*, because a support team wants to see two different
answers to one question rather than lose one. The canonical entry of a merge is the one with the longest
answer (an entry's own answer counts, answer == question counts as none), ties going to the earliest in
input order; it keeps its id and fields, takes the other members' questions and variants as variants,
their ids as ``merged_ids``, and the union of tags and flags. It sits where the earliest member was.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from rapidfuzz import fuzz

from kbsearch.config import IngestSettings
from kbsearch.ingest.report import MergedCluster, PairNote
from kbsearch.types import FaqEntry

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_CONTRACTIONS = [
    (re.compile(r"\bcan't\b"), "can not"), (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"n't\b"), " not"), (re.compile(r"'re\b"), " are"), (re.compile(r"'m\b"), " am"),
    (re.compile(r"'ll\b"), " will"), (re.compile(r"'ve\b"), " have"), (re.compile(r"'d\b"), " would"),
    (re.compile(r"'s\b"), ""),
]

DEFAULT_NOISE_WORDS: frozenset[str] = frozenset(
    # articles, politeness, hedges, auxiliaries/modals of asking, personal pronouns
    "a an the please pls plz hi hello hey thanks thank kindly exactly typically usually really actually "
    "generally normally basically just ever currently do does did can could will would is are am be "
    "i you me my your we our us".split()
)
DEFAULT_NOISE_PHRASES_ZH: tuple[str, ...] = (
    "我想问一下", "想问一下", "请问一下", "问一下", "请问", "麻烦", "您好", "你好", "一下",
)
DEFAULT_NOISE_CHARS_ZH: frozenset[str] = frozenset("吗呢啊吧呀哦嘛哈啦的我你您")
#: Never noise, whatever a policy says: dropping one would turn a question into its opposite.
NEGATIONS: frozenset[str] = frozenset({"not", "no", "never", "without", "cannot", "nor", "none", *"不没未无非别勿否"})


@dataclass(frozen=True)
class DedupePolicy:
    """What counts as noise when comparing questions (everything else is content).

    Attributes:
        noise_words: Latin-script tokens ignored when comparing (lowercase).
        noise_phrases_zh: Chinese phrases removed before tokenising (longest first is safest).
        noise_chars_zh: Single CJK characters ignored when comparing (particles).

    Raises:
        ValueError: When a negation is declared noise.
    """

    noise_words: frozenset[str] = DEFAULT_NOISE_WORDS
    noise_phrases_zh: tuple[str, ...] = DEFAULT_NOISE_PHRASES_ZH
    noise_chars_zh: frozenset[str] = DEFAULT_NOISE_CHARS_ZH

    def __post_init__(self) -> None:
        bad = NEGATIONS & (self.noise_words | self.noise_chars_zh)
        bad |= {n for n in NEGATIONS for p in self.noise_phrases_zh if n in p}
        if bad:
            raise ValueError(f"negations cannot be noise: {sorted(bad)}")


@dataclass(frozen=True)
class QuestionKey:
    """The comparison forms of one question.

    Attributes:
        key: Folded text without punctuation or whitespace.
        core: Content tokens (CJK characters, latin words, numbers) with noise removed.
        core_key: ``"".join(core)``, or ``key`` when the question is all noise.
    """

    key: str
    core: tuple[str, ...]
    core_key: str

    @classmethod
    def of(cls, question: str, policy: DedupePolicy) -> QuestionKey:
        """Build the forms of ``question`` under ``policy``."""
        text = unicodedata.normalize("NFKC", question).lower().replace("\u2019", "'")
        for pattern, repl in _CONTRACTIONS:
            text = pattern.sub(repl, text)
        key = "".join(_TOKEN.findall(text)) or text.strip()
        for phrase in policy.noise_phrases_zh:
            text = text.replace(phrase, " ")
        core = tuple(
            t for t in _TOKEN.findall(text) if t not in policy.noise_words and t not in policy.noise_chars_zh
        )
        return cls(key, core, "".join(core) or key)


#: (suffix, replacement, shortest stem left); "ly" needs 4 so that apply/early keep their "ly".
_SUFFIXES = (("ies", "y", 3), ("ing", "", 3), ("ed", "", 3), ("es", "", 3), ("ly", "", 4), ("s", "", 3))


def _stem(token: str) -> str:
    """Strip one inflectional suffix from a latin word (tokens shorter than 4 stay as they are)."""
    if len(token) < 4 or not token.isascii() or not token.isalpha():
        return token
    for suffix, repl, shortest in _SUFFIXES:
        if token.endswith(suffix) and len(token) - len(suffix) + len(repl) >= shortest:
            return token[: -len(suffix)] + repl
    return token


def key_term_difference(a: QuestionKey, b: QuestionKey) -> str | None:
    """Return the first content difference between two questions, or None when there is none.

    Differences between inflections of one word (``policy``/``policies``) are not content.
    """
    matcher = difflib.SequenceMatcher(a=a.core, b=b.core, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        left, right = a.core[i1:i2], b.core[j1:j2]
        if op == "replace" and len(left) == len(right) and all(
            _stem(x) == _stem(y) for x, y in zip(left, right, strict=True)
        ):
            continue
        return f"differs in {' '.join(left) or '(nothing)'!r} vs {' '.join(right) or '(nothing)'!r}"
    return None


def compare_questions(a: QuestionKey, b: QuestionKey, confirm_ratio: float) -> tuple[bool, str | None]:
    """Decide whether two questions are the same question.

    Args:
        a: One question's forms.
        b: The other's.
        confirm_ratio: Minimum rapidfuzz ratio (0-100) of the core keys.

    Returns:
        ``(True, None)`` for the same question; ``(False, reason)`` when similar enough to review but
        kept apart by the key-term guard; ``(False, None)`` when not similar.
    """
    if a.key == b.key or a.core_key == b.core_key:
        return True, None
    if fuzz.ratio(a.core_key, b.core_key) < confirm_ratio:
        return False, None
    diff = key_term_difference(a, b)
    return diff is None, diff


@dataclass
class DedupeResult:
    """Entries after merging, and what happened.

    Attributes:
        entries: Canonical and untouched entries, in order of each one's earliest member.
        merged: One cluster per merge.
        conflicts: Same question, kept apart because answer, section or validity differ.
        possible_duplicates: Similar questions the key-term guard kept apart.
    """

    entries: list[FaqEntry]
    merged: list[MergedCluster] = field(default_factory=list)
    conflicts: list[PairNote] = field(default_factory=list)
    possible_duplicates: list[PairNote] = field(default_factory=list)


def _no_answer(e: FaqEntry) -> bool:
    return e.answer == e.question


def _answer_rank(e: FaqEntry, pos: int) -> tuple[int, int]:
    return (-1 if _no_answer(e) else len(e.answer), -pos)


def _incompatibility(a: FaqEntry, b: FaqEntry, policy: DedupePolicy) -> str | None:
    """Why two same-question entries cannot merge, or None when they can."""
    if a.section != b.section:
        return f"same question, different sections {a.section!r} / {b.section!r}"
    if (a.valid_from, a.valid_until) != (b.valid_from, b.valid_until):
        return "same question, different validity windows"
    if _no_answer(a) or _no_answer(b):
        return None
    sa, sb = _clause_keys(a.answer, policy), _clause_keys(b.answer, policy)
    if sa <= sb or sb <= sa:
        return None
    return "same question, different answers"


_CLAUSE_END = re.compile(r"(?<=[。！？!?；;，、：:\n])|(?<=[.,])\s")


def _clause_keys(answer: str, policy: DedupePolicy) -> frozenset[str]:
    """Normalised clauses of an answer. Two answers are compatible when one's clauses are all among the
    other's: whole clauses, so "可以。" is not found inside "不可以，…" (a substring test would be)."""
    parts = (QuestionKey.of(p, policy).key for p in _CLAUSE_END.split(answer))
    return frozenset(k for k in parts if k)


class Deduper:
    """Finds and merges near-duplicate entries (see the module docstring for the rules).

    Args:
        settings: Uses ``dedupe``, ``dedupe_num_perm``, ``dedupe_shingle``, ``dedupe_lsh_threshold``
            and ``dedupe_confirm_ratio``.
        policy: What counts as noise; the default suits Chinese and English FAQs.
    """

    def __init__(self, settings: IngestSettings, policy: DedupePolicy | None = None) -> None:
        self.settings = settings
        self.policy = policy or DedupePolicy()

    def _shingles(self, text: str) -> list[bytes]:
        k = self.settings.dedupe_shingle
        if len(text) <= k:
            return [text.encode()]
        return list(dict.fromkeys(text[i : i + k].encode() for i in range(len(text) - k + 1)))

    def similar_key_pairs(
        self, keys: list[QuestionKey], on_key: Callable[[int], object] | None = None
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
        """Compare distinct question keys through MinHash-LSH candidates.

        Args:
            keys: Distinct questions (no two with the same core key).
            on_key: Called with each key's index once its MinHash is indexed (progress bars).

        Returns:
            ``(same pairs, kept-apart pairs with the reason)``, as indexes into ``keys`` (i < j).
        """
        from datasketch import MinHash, MinHashLSH

        s = self.settings
        lsh = MinHashLSH(threshold=s.dedupe_lsh_threshold, num_perm=s.dedupe_num_perm)
        hashes = []
        shingles = (self._shingles(k.core_key) for k in keys)
        for i, m in enumerate(MinHash.generator(shingles, num_perm=s.dedupe_num_perm)):
            lsh.insert(i, m, check_duplication=False)
            hashes.append(m)
            if on_key is not None:
                on_key(i)
        same: list[tuple[int, int]] = []
        apart: list[tuple[int, int, str]] = []
        for i, m in enumerate(hashes):
            for j in sorted(lsh.query(m)):
                if j <= i:
                    continue
                ok, why = compare_questions(keys[i], keys[j], s.dedupe_confirm_ratio)
                if ok:
                    same.append((i, j))
                elif why:
                    apart.append((i, j, why))
        return same, apart

    def dedupe(self, entries: list[FaqEntry], tick: Callable[[int], object] | None = None) -> DedupeResult:
        """Merge near-duplicate entries.

        Args:
            entries: Valid, in-window entries in input order.
            tick: Called with the number of entries each step covers (progress bars).

        Returns:
            The merged entries and the clusters, conflicts and possible duplicates found.
        """
        if not self.settings.dedupe or len(entries) < 2:
            return DedupeResult(list(entries))
        by_core: dict[str, list[int]] = {}
        keys: list[QuestionKey] = []
        for pos, e in enumerate(entries):
            qk = QuestionKey.of(e.question, self.policy)
            if qk.core_key not in by_core:
                keys.append(qk)
            by_core.setdefault(qk.core_key, []).append(pos)
        on_key = None if tick is None else (lambda i: tick(len(by_core[keys[i].core_key])))
        same, apart = self.similar_key_pairs(keys, on_key)

        parent = list(range(len(keys)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j in same:
            parent[find(j)] = find(i)
        clusters: dict[int, list[int]] = {}
        for k, qk in enumerate(keys):
            clusters.setdefault(find(k), []).extend(by_core[qk.core_key])

        result = DedupeResult([])
        replace: dict[int, FaqEntry | None] = {}  # position -> merged entry (None: folded away)
        for positions in clusters.values():
            if len(positions) > 1:
                self._merge_cluster(entries, sorted(positions), replace, result)
        for pos, e in enumerate(entries):
            kept = replace.get(pos, e)
            if kept is not None:
                result.entries.append(kept)
        first = [by_core[k.core_key][0] for k in keys]
        result.possible_duplicates = [
            PairNote((entries[first[i]].id, entries[first[i]].question),
                     (entries[first[j]].id, entries[first[j]].question), why)
            for i, j, why in apart
        ]
        return result

    def _merge_cluster(
        self, entries: list[FaqEntry], positions: list[int], replace: dict[int, FaqEntry | None], result: DedupeResult
    ) -> None:
        """Split one same-question cluster into compatible groups and merge each group."""
        groups: list[list[int]] = []  # each: positions, the best answer (the canonical) first
        for pos in positions:
            e = entries[pos]
            for g in groups:
                if _incompatibility(entries[g[0]], e, self.policy) is None:
                    g.append(pos)
                    g.sort(key=lambda p: _answer_rank(entries[p], p), reverse=True)
                    break
            else:
                if groups:
                    rep = entries[groups[0][0]]
                    why = _incompatibility(rep, e, self.policy) or ""
                    result.conflicts.append(PairNote((rep.id, rep.question), (e.id, e.question), why))
                groups.append([pos])
        for g in groups:
            if len(g) < 2:
                continue
            canon, others = entries[g[0]], [entries[p] for p in sorted(g[1:])]
            variants = [canon.question]
            for v in (*canon.variants, *(x for o in others for x in (o.question, *o.variants))):
                variants.append(v)
            merged_ids = (*canon.merged_ids, *(i for o in others for i in (o.id, *o.merged_ids)))
            merged = dataclasses.replace(
                canon,
                variants=tuple(dict.fromkeys(variants))[1:],
                merged_ids=tuple(dict.fromkeys(merged_ids)),
                tags=tuple(dict.fromkeys(t for x in (canon, *others) for t in x.tags)),
                flags=tuple(dict.fromkeys(f for x in (canon, *others) for f in x.flags)),
            )
            for p in g:
                replace[p] = None
            replace[min(g)] = merged
            result.merged.append(MergedCluster(canon.id, tuple((x.id, x.question) for x in (canon, *others))))
