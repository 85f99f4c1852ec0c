"""Settings: groups, defaults, KBSEARCH_<GROUP>__<FIELD> environment, the TOML file, the flat names of earlier
releases, and refusal of unsafe values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from kbsearch.config import LEGACY_NAMES, Settings
from kbsearch.errors import BadInputError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for var in list(os.environ):
        if var.startswith("KBSEARCH_"):
            monkeypatch.delenv(var)


def test_defaults_are_the_embedded_model_with_the_kb_reranker():
    s = Settings()
    assert s.home == Path("indexes") and s.embed.backend == "e5-small" and s.rerank.backend == "kb"
    assert (s.retrieve.vector_top_k, s.decide.top_k, s.retrieve.first_stage, s.index.backend) == (50, 3, "fused", "faiss")
    assert s.kb_dir("shop") == Path("indexes/shop")
    # Limits that used to be hard-coded are settings now.
    assert (s.retrieve.workers, s.pair.batch_size) == (4, 8)
    assert (s.kb_reranker.lr, s.kb_reranker.batch_size, s.kb_reranker.seed) == (1e-4, 32, 42)
    assert s.telemetry.log_questions is False and s.telemetry.log_format == "json"


def test_env_groups_and_toml_with_env_winning(tmp_path, monkeypatch):
    toml = tmp_path / "kbsearch.toml"
    toml.write_text('home = "/srv/kb"\n[decide]\nthreshold_vector = 0.8\n[retrieve]\nvector_top_k = 40\nfirst_stage = "bm25"\n',
                    encoding="utf-8")
    monkeypatch.setenv("KBSEARCH_CONFIG", str(toml))
    monkeypatch.setenv("KBSEARCH_RETRIEVE__VECTOR_TOP_K", "60")
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    s = Settings()
    assert s.home == Path("/srv/kb") and s.decide.threshold_vector == 0.8 and s.retrieve.vector_top_k == 60
    assert s.retrieve.first_stage == "bm25" and s.embed.backend == "hash"  # a group merges across sources
    explicit = Settings(retrieve={"vector_top_k": 70})
    assert explicit.retrieve.vector_top_k == 70 and explicit.retrieve.first_stage == "bm25"  # explicit wins


def test_the_flat_names_of_earlier_releases_still_work(tmp_path, monkeypatch, caplog):
    toml = tmp_path / "old.toml"
    toml.write_text("rerank_top_k = 7\nhandoff_message_en = 'One moment please.'\n", encoding="utf-8")
    monkeypatch.setenv("KBSEARCH_CONFIG", str(toml))
    monkeypatch.setenv("KBSEARCH_THRESHOLD_VECTOR", "0.8")
    monkeypatch.setenv("KBSEARCH_EMBED_BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_KB_RERANKER_MAX_VARIANTS", "0")
    monkeypatch.setattr("kbsearch.config._warned", set())  # warned once per process
    with caplog.at_level(logging.WARNING, logger="kbsearch.config"):
        s = Settings()
    assert (s.decide.threshold_vector, s.embed.backend, s.kb_reranker.max_variants) == (0.8, "hash", 0)
    assert (s.rerank.top_k, s.decide.handoff_message_en) == (7, "One moment please.")
    assert "KBSEARCH_DECIDE__THRESHOLD_VECTOR" in caplog.text  # the warning names the new name
    # The new name wins over the old one.
    monkeypatch.setenv("KBSEARCH_DECIDE__THRESHOLD_VECTOR", "0.7")
    assert Settings().decide.threshold_vector == 0.7


def test_every_legacy_name_maps_to_a_real_field():
    s = Settings()
    for old, (group, field) in LEGACY_NAMES.items():
        assert hasattr(getattr(s, group), field), old


def test_updated_validates_and_merges_groups(tmp_path):
    s = Settings(decide={"top_k": 2})
    t = s.updated(retrieve={"first_stage": "hybrid"}, home=tmp_path)
    assert (t.retrieve.first_stage, t.retrieve.vector_top_k, t.decide.top_k, t.home) == ("hybrid", 50, 2, tmp_path)
    assert s.retrieve.first_stage == "fused"  # the original is unchanged (frozen)
    with pytest.raises(ValidationError, match="rerank.top_k must not exceed"):
        s.updated(rerank={"top_k": 100})


@pytest.mark.parametrize("kwargs,field", [
    ({"retrieve": {"vector_top_k": 10}, "rerank": {"top_k": 20}}, "rerank.top_k"),
    ({"decide": {"threshold_rerank": 1.5}}, "threshold_rerank"),
    ({"default_kb": "../x"}, "default_kb"),
    ({"decide": {"handoff_message_zh": "  "}}, "handoff_message_zh"),
    ({"embed": {"backend": "word2vec"}}, "backend"),
    ({"index": {"backend": "annoy"}}, "backend"),
    ({"retrieve": {"workers": 0}}, "workers"),
    ({"no_such_setting": 1}, "no_such_setting"),
    ({"embed": {"no_such_field": 1}}, "no_such_field"),
])
def test_unsafe_values_are_refused(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        Settings(**kwargs)


@pytest.mark.parametrize("name", ["../etc", ".", "a/b", "x" * 65, "shop\n"])
def test_kb_names_that_could_leave_home_are_refused(name):
    with pytest.raises(BadInputError, match="invalid knowledge base name"):
        Settings().kb_dir(name)
