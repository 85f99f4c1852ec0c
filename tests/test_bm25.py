"""BM25: tokenisers for Chinese/English, scores against a reference implementation, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kbsearch.errors import IndexCorruptError
from kbsearch.lexical.bm25 import BM25Index
from kbsearch.lexical.tokenize import char_tokens, get_tokenizer, has_cjk, jieba_tokens

DOCS = ["如何申请退货？", "退货运费谁承担", "How do I return an item?", "Shipping takes 3-5 days",
        "云杉钱包怎么充值", "ＦＵＬＬ－ＷＩＤＴＨ text"]


def reference_bm25(docs: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75,
                   eps: float = 0.25) -> list[float]:
    """Textbook Okapi BM25 with rank-bm25's idf floor, written independently."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df: dict[str, int] = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    idf = {t: math.log(n - f + 0.5) - math.log(f + 0.5) for t, f in df.items()}
    floor = eps * sum(idf.values()) / len(idf)
    idf = {t: (v if v >= 0 else floor) for t, v in idf.items()}
    out = []
    for d in docs:
        s = 0.0
        for q in query:
            tf = d.count(q)
            s += idf.get(q, 0.0) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return out


def test_char_tokens_mix_cjk_ngrams_and_words():
    assert char_tokens("我的Order到了吗") == ["我", "的", "我的", "order", "到", "了", "吗", "到了", "了吗"]
    assert char_tokens("ＡＢＣ１２３") == ["abc123"]  # full-width folded by NFKC
    assert has_cjk("退货") and not has_cjk("refund")


def test_jieba_tokens_cut_words():
    toks = jieba_tokens("如何申请退货 refund")
    assert "退货" in toks and "refund" in toks
    with pytest.raises(ValueError):
        get_tokenizer("nope")  # type: ignore[arg-type]


@pytest.mark.parametrize("query", ["退货", "how to return an item", "钱包充值", "full-width"])
def test_scores_match_reference(query):
    index = BM25Index.build(DOCS)
    tok = [char_tokens(d) for d in DOCS]
    raw, bound = index.scores(query)
    np.testing.assert_allclose(raw, reference_bm25(tok, char_tokens(query)), rtol=1e-5, atol=1e-6)
    assert bound > 0


def test_search_orders_and_normalises():
    index = BM25Index.build(DOCS)
    hits = index.search("怎么申请退货", 3)
    assert hits.rows[0] == 0
    assert list(hits.raw) == sorted(hits.raw, reverse=True)
    assert ((hits.normalised > 0) & (hits.normalised <= 1)).all()
    assert len(index.search("量子力学", 3).rows) == 0  # no shared term: nothing returned


@pytest.mark.parametrize("query", ["怎么申请退货", "shipping 退货", "量子力学"])
def test_search_also_returns_every_rows_normalised_score(query):
    """The fused ranking reads other rows' scores from the search: they equal a separate scoring pass."""
    index = BM25Index.build(DOCS)
    hits = index.search(query, 2)
    everything = list(range(len(DOCS)))
    assert hits.all_normalised.shape == (len(DOCS),)
    np.testing.assert_allclose(hits.all_normalised, index.normalised_scores_for(query, everything), atol=1e-6)
    np.testing.assert_array_equal(hits.normalised, hits.all_normalised[hits.rows])


def test_save_load_roundtrip_and_corruption(tmp_path):
    index = BM25Index.build(DOCS)
    index.save(tmp_path / "bm25.bin")
    again = BM25Index.load(tmp_path / "bm25.bin")
    assert isinstance(again._weights, np.memmap) and isinstance(again._rows, np.memmap)  # mapped, not read
    for q in ("退货", "how to return an item", "量子力学"):
        np.testing.assert_array_equal(index.scores(q)[0], again.scores(q)[0])
        assert index.scores(q)[1] == again.scores(q)[1]
    raw = (tmp_path / "bm25.bin").read_bytes()
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "torn.bin").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "header.bin").write_bytes(raw[:12])
    for name in ("bad.json", "torn.bin", "header.bin", "missing.bin"):
        with pytest.raises(IndexCorruptError):
            BM25Index.load(tmp_path / name)


def test_a_format_1_file_of_an_earlier_release_still_loads(tmp_path):
    """Builds of earlier releases stored the tokenised rows as JSON: the same scores come from them."""
    import json

    tok = [char_tokens(d) for d in DOCS]
    (tmp_path / "bm25.json").write_text(json.dumps({"format": 1, "tokenizer": "char", "k1": 1.5, "b": 0.75, "docs": tok}),
                                        encoding="utf-8")
    old = BM25Index.load(tmp_path / "bm25.json")
    np.testing.assert_array_equal(old.scores("退货运费")[0], BM25Index.build(DOCS).scores("退货运费")[0])


def _corpus(n: int, seed: int) -> list[list[str]]:
    """Rows of 0-30 tokens from a skewed vocabulary (some terms in most rows: negative idfs), repeats included."""
    rng = np.random.default_rng(seed)
    vocab = [f"t{i}" for i in range(400)] + ["退", "货", "退货", "the", "a"]
    p = np.array([1.0 / (i + 1) for i in range(len(vocab))])
    p /= p.sum()
    return [list(rng.choice(vocab, size=rng.integers(0, 31), p=p)) for _ in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scores_equal_rank_bm25_on_a_larger_corpus(seed):
    """The differential test against rank-bm25 itself (the previous implementation): every row's score on
    queries with repeated, common (negative-idf), rare and unknown terms, and empty rows in the corpus."""
    from rank_bm25 import BM25Okapi

    docs = _corpus(3000, seed)
    ours = BM25Index.from_tokens(docs)
    theirs = BM25Okapi([d or ["\x00"] for d in docs], k1=1.5, b=0.75)
    rng = np.random.default_rng(seed + 100)
    queries = [list(rng.choice(sum(docs[:50], []), size=int(rng.integers(1, 12)))) for _ in range(20)]
    queries += [["t0", "t0", "t1"], ["unknown", "t399"], ["退货", "退", "货"]]
    for q in queries:
        raw, bound = ours._scores_of_terms(q)
        np.testing.assert_allclose(raw, theirs.get_scores(q), rtol=2e-6, atol=1e-5)
        assert bound == pytest.approx(sum(max(theirs.idf.get(t, 0.0), 0.0) for t in q) * 2.5, rel=1e-9)
