"""Incremental publish (``publish_changes``): equal to a full build of the same entries, embedding only new rows.

Differential: the incremental build is compared with a full ``build_index`` of the final entries, on
both vector backends (entries, chunks, rows in order, vectors, manifest, answers).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.errors import BadInputError, IndexCorruptError
from kbsearch.index.builder import build_index, rebuild_index
from kbsearch.index.faiss_backend import FaissIndex
from kbsearch.index.incremental import BuildChanges, publish_changes
from kbsearch.index.numpy_backend import NumpyIndex
from kbsearch.index.store import Build, active_build_id, load_build
from kbsearch.ingest.chunk import chunk_entries
from kbsearch.types import FaqEntry
from support import SMALL_KB, entry

BACKENDS = ("faiss", "numpy")
BASE = SMALL_KB[:4]
GIFT = entry("gift-1", "礼品卡怎么用？",
             "## 绑定\n在「我的-礼品卡」输入卡号和密码完成绑定，绑定后余额进入礼品卡账户，不能转赠他人。\n\n"
             "## 使用\n下单结算时勾选礼品卡抵扣，可与优惠券同时使用，不足部分用其他方式支付。",
             section="支付", variants=("礼品卡如何使用",))
QUESTIONS = ("能用信用卡付款吗", "退货流程是什么", "礼品卡能转赠吗", "shipping time", "password 忘了")


class Recording(HashEmbedder):
    """The hash fake, recording every text it embeds; ``fail`` makes embedding raise (after ``load()``)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(dim=64)
        self.texts: list[str] = []
        self.fail = fail

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.fail:
            raise OSError("embedding backend went away")
        self.texts += texts
        return super()._embed(texts)


@pytest.fixture(params=BACKENDS)
def s(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The shared test settings on one vector backend, with short chunks (so GIFT has two)."""
    return settings.updated(index={"backend": request.param}, ingest={"chunk_max_chars": 50})


def _full_build(s: Settings, kb: str, entries: list[FaqEntry]) -> Build:
    build_index(s, kb, entries, chunk_entries(entries, s.ingest.chunk_max_chars), HashEmbedder(dim=64), {"kept": 4})
    return load_build(s.kb_dir(kb), device="cpu")


def _all_vectors(build: Build) -> np.ndarray:
    assert build.vectors is not None
    return build.vectors.vectors(list(range(len(build.rows))))


def _report(build: Build) -> dict:
    return json.loads((build.path / "report.json").read_text(encoding="utf-8"))


ADD = BuildChanges(
    add_variants={"pay-1": ["能用信用卡付款吗", " 支持哪些付款方式？ ", "能用信用卡付款吗", "  "],  # 1 new, 3 skipped
                  "ret-1": ["怎么退货", " 退货流程是什么 "], "gift-1": ["礼品卡能转赠吗"]},  # 1 + 1 new, 1 skipped
    add_entries=[GIFT],
    add_chunks=chunk_entries([GIFT], 50),
)
FINAL = [dataclasses.replace(BASE[0], variants=("怎么退货", "退货流程是什么")),
         dataclasses.replace(BASE[1], variants=("能用信用卡付款吗",)),
         *BASE[2:],
         dataclasses.replace(GIFT, variants=("礼品卡如何使用", "礼品卡能转赠吗"))]


def test_incremental_equals_full_build(s, make_engine):
    """Differential: add variants and an entry incrementally == a full build of the final entries."""
    _full_build(s, "inc", BASE)
    result = publish_changes(s, "inc", HashEmbedder(dim=64), ADD)
    inc, full = load_build(s.kb_dir("inc"), device="cpu"), _full_build(s, "full", FINAL)
    assert result.build_id == inc.build_id and result.rows == len(inc.rows)
    assert list(inc.entries.values()) == FINAL == list(full.entries.values())
    assert list(inc.chunks.values()) == list(full.chunks.values())
    assert inc.rows == full.rows  # same rows, same order
    np.testing.assert_allclose(_all_vectors(inc), _all_vectors(full), atol=1e-6)
    for field in ("dimension", "counts", "embedder", "model_id", "row_prompts", "vector_index", "bm25"):
        assert getattr(inc.manifest, field) == getattr(full.manifest, field), field
    assert inc.manifest.vector_index.backend == s.index.backend
    engine = make_engine(s)
    for q in QUESTIONS:
        a, b = engine.ask(q, kb="inc", top_k=5), engine.ask(q, kb="full", top_k=5)
        assert [(h.entry.id, round(h.score, 6)) for h in a.hits] == [(h.entry.id, round(h.score, 6)) for h in b.hits], q
        assert a.answered == b.answered
    assert engine.ask("礼品卡能转赠吗", kb="inc").hits[0].entry.id == "gift-1"


def test_only_new_rows_are_embedded(s):
    base = _full_build(s, "default", BASE)
    emb = Recording()
    result = publish_changes(s, "default", emb, ADD, report={"decisions": [7, 8]})
    new_rows = [r for r in load_build(s.kb_dir("default"), device="cpu").rows if r not in set(base.rows)]
    assert sorted(emb.texts) == sorted(r.text for r in new_rows)
    assert "怎么退货" not in emb.texts and GIFT.question in emb.texts  # an old variant is reused, the new entry embedded
    assert (result.embedded, result.reused) == (len(new_rows), len(base.rows)) == (7, len(base.rows))
    assert set(result.seconds) == {"load_build", "model_load", "embed", "index", "write"}
    report = _report(load_build(s.kb_dir("default"), device="cpu"))
    assert report["decisions"] == [7, 8]
    inc = report["incremental"]
    assert inc["from_build"] == base.build_id and inc["reembedded_all"] is None
    assert inc["rows"] == {"embedded": 7, "reused": len(base.rows), "dropped": 0}
    assert inc["changes"] == {"entries_added": 1, "entries_removed": 0, "variants_added": 3, "variants_skipped": 4,
                              "variants_removed": 0, "variants_not_found": 0}


def test_undo_embeds_nothing_and_restores_the_build(s):
    base = _full_build(s, "default", BASE)
    publish_changes(s, "default", HashEmbedder(dim=64), ADD)
    emb = Recording()
    undo = BuildChanges(remove_variants={"pay-1": ["能用信用卡付款吗"], "ret-1": ["退货流程是什么", "never added"]},
                        remove_entries=["gift-1"])
    result = publish_changes(s, "default", emb, undo)
    assert emb.texts == [] and (result.embedded, result.reused) == (0, len(base.rows))
    back = load_build(s.kb_dir("default"), device="cpu")
    assert back.entries == base.entries and back.rows == base.rows and back.chunks == base.chunks
    np.testing.assert_allclose(_all_vectors(back), _all_vectors(base), atol=1e-6)
    report = _report(back)
    assert report["incremental"]["changes"]["variants_removed"] == 2
    assert report["incremental"]["changes"]["variants_not_found"] == 1
    assert report["incremental"]["rows"]["dropped"] == 7
    assert report["ingest_report"]["kept"] == 4  # the ingest report is carried along, flat, publish after publish


def test_replacing_an_entry_reembeds_only_its_changed_rows(s):
    _full_build(s, "default", BASE)
    emb = Recording()
    edited = dataclasses.replace(BASE[3], answer="Click 'Forgot password' and follow the e-mail.")
    publish_changes(s, "default", emb, BuildChanges(remove_entries=["en-pw"], add_entries=[edited],
                                                    add_chunks=chunk_entries([edited], 50)))
    assert emb.texts == [c.text for c in chunk_entries([edited], 50)]  # its question row is reused
    assert list(load_build(s.kb_dir("default"), device="cpu").entries.values())[-1] == edited


def test_failed_embedding_leaves_active_untouched(s):
    base = _full_build(s, "default", BASE)
    with pytest.raises(OSError, match="went away"):
        publish_changes(s, "default", Recording(fail=True), ADD)
    assert active_build_id(s.kb_dir("default")) == base.build_id
    assert [p.name for p in (s.kb_dir("default") / "builds").iterdir()] == [base.build_id]  # no half-written build
    assert load_build(s.kb_dir("default"), device="cpu").rows == base.rows


@pytest.mark.parametrize("changes, named", [
    (BuildChanges(add_variants={"nope-1": ["x"]}), "nope-1"),
    (BuildChanges(remove_variants={"gone-2": ["x"]}), "gone-2"),
    (BuildChanges(remove_entries=["nope-3"]), "nope-3"),
    (BuildChanges(remove_entries=["ret-1"], add_variants={"ret-1": ["x"]}), "ret-1"),  # removed first
    (BuildChanges(add_entries=[BASE[0]], add_chunks=chunk_entries([BASE[0]], 300)), "already exists"),
    (BuildChanges(add_entries=[GIFT]), "no chunk"),
    (BuildChanges(add_chunks=chunk_entries([GIFT], 50)), "gift-1"),
    (BuildChanges(add_variants={"pay-1": "能用信用卡付款吗"}), "not one string"),
])
def test_bad_changes_are_refused_naming_the_problem(settings, changes, named):
    base = _full_build(settings, "default", BASE)
    emb = Recording()
    with pytest.raises(BadInputError, match=named):
        publish_changes(settings, "default", emb, changes)
    assert emb.texts == [] and active_build_id(settings.kb_dir("default")) == base.build_id


def test_removing_every_entry_is_refused(settings):
    _full_build(settings, "default", BASE)
    with pytest.raises(BadInputError, match="every entry"):
        publish_changes(settings, "default", HashEmbedder(dim=64), BuildChanges(remove_entries=[e.id for e in BASE]))


@pytest.mark.parametrize("embedder, changed", [
    (HashEmbedder(dim=32), {}),
    (HashEmbedder(dim=64), {"embed": {"question_rows_as": "document"}}),
])
def test_build_embedded_differently_is_refused(settings, embedder, changed):
    base = _full_build(settings, "default", BASE)
    with pytest.raises(IndexCorruptError, match="rebuild-index"):
        publish_changes(settings.updated(**changed), "default", embedder, ADD)
    assert active_build_id(settings.kb_dir("default")) == base.build_id


def test_index_without_stored_vectors_reembeds_everything(s, monkeypatch):
    base = _full_build(s, "default", BASE)

    def no_vectors(self, rows):
        raise NotImplementedError("compressed")

    monkeypatch.setattr(FaissIndex if s.index.backend == "faiss" else NumpyIndex, "vectors", no_vectors)
    emb = Recording()
    result = publish_changes(s, "default", emb, ADD)
    monkeypatch.undo()
    assert (result.embedded, result.reused) == (result.rows, 0) and len(emb.texts) == result.rows
    assert "cannot give its stored vectors" in _report(load_build(s.kb_dir("default")))["incremental"]["reembedded_all"]
    full = _full_build(s, "full", FINAL)
    np.testing.assert_allclose(_all_vectors(load_build(s.kb_dir("default"), device="cpu")), _all_vectors(full),
                               atol=1e-6)
    assert base.build_id != result.build_id


def test_unreadable_vector_index_reembeds_everything(settings):
    base = _full_build(settings, "default", BASE)
    (base.path / "vectors.faiss").write_bytes(b"\x00" * 64)  # fails its checksum: the build loads without vectors
    result = publish_changes(settings, "default", HashEmbedder(dim=64), ADD)
    assert result.reused == 0 and result.embedded == result.rows
    assert "did not load" in _report(load_build(settings.kb_dir("default")))["incremental"]["reembedded_all"]


def test_rebuild_after_publish_keeps_the_ingest_report_flat(settings):
    _full_build(settings, "default", BASE)
    published = publish_changes(settings, "default", HashEmbedder(dim=64), ADD)
    rebuilt = rebuild_index(settings, "default", HashEmbedder(dim=64))
    report = _report(load_build(settings.kb_dir("default")))
    assert report["rebuilt_from"] == published.build_id and report["ingest_report"]["kept"] == 4
    assert (rebuilt.embedded, rebuilt.reused) == (rebuilt.rows, 0)


def test_embed_rows_hands_the_model_large_calls_and_keeps_each_rows_vector():
    """Ingest hands the embedder EMBED_CALL_ROWS rows per call (it sorts them by length itself), queries and
    documents apart, and every row gets the vector of its own text with its own prompt."""
    from kbsearch.embed.fake import HashEmbedder
    from kbsearch.index.builder import EMBED_CALL_ROWS, embed_rows
    from kbsearch.types import IndexRow

    calls: list[tuple[str, int]] = []

    class Recording(HashEmbedder):
        def embed_queries(self, texts):
            calls.append(("query", len(texts)))
            return super().embed_queries(texts)

        def embed_documents(self, texts):
            calls.append(("document", len(texts)))
            return super().embed_documents(texts)

    n = 2 * EMBED_CALL_ROWS
    rows = [IndexRow(faq_id=f"f{i}", kind="chunk" if i % 3 == 0 else "variant", text=f"text {i} " * (i % 7 + 1))
            for i in range(n)]
    emb = Recording(dim=32)
    emb.load()
    vectors = embed_rows(emb, rows, batch_size=32)
    queries, docs = sum(r.kind != "chunk" for r in rows), sum(r.kind == "chunk" for r in rows)
    assert calls == [("query", EMBED_CALL_ROWS), ("query", queries - EMBED_CALL_ROWS), ("document", docs)]
    for i in (0, 1, n - 1):
        own = (emb.embed_documents if rows[i].kind == "chunk" else emb.embed_queries)([rows[i].text])[0]
        calls.pop()
        assert (vectors[i] == own).all()
