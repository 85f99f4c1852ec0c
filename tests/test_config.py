"""Settings: defaults, KBSEARCH_* environment, the TOML file, and refusal of unsafe values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kbsearch.config import Settings


def test_defaults_are_the_embedded_model_with_the_kb_reranker(monkeypatch):
    for var in ("KBSEARCH_CONFIG", "KBSEARCH_HOME", "KBSEARCH_EMBED_BACKEND", "KBSEARCH_RERANK_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.home == Path("indexes") and s.embed_backend == "e5-small" and s.rerank_backend == "kb"
    assert (s.vector_top_k, s.top_k) == (50, 3)
    assert s.kb_dir("shop") == Path("indexes/shop")


def test_env_and_toml_with_env_winning(tmp_path, monkeypatch):
    toml = tmp_path / "kbsearch.toml"
    toml.write_text('home = "/srv/kb"\nthreshold_vector = 0.8\nvector_top_k = 40\n', encoding="utf-8")
    monkeypatch.setenv("KBSEARCH_CONFIG", str(toml))
    monkeypatch.setenv("KBSEARCH_VECTOR_TOP_K", "60")
    s = Settings()
    assert s.home == Path("/srv/kb") and s.threshold_vector == 0.8 and s.vector_top_k == 60
    assert Settings(vector_top_k=70).vector_top_k == 70  # explicit arguments win over both


@pytest.mark.parametrize("kwargs,field", [
    ({"vector_top_k": 10, "rerank_top_k": 20}, "rerank_top_k"),
    ({"threshold_rerank": 1.5}, "threshold_rerank"),
    ({"default_kb": "../x"}, "default_kb"),
    ({"handoff_message_zh": "  "}, "handoff_message_zh"),
    ({"embed_backend": "word2vec"}, "embed_backend"),
    ({"no_such_setting": 1}, "no_such_setting"),
])
def test_unsafe_values_are_refused(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        Settings(**kwargs)
