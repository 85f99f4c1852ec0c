"""The architecture as tests: import-linter's contracts in pyproject.toml hold, and they catch a violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from support import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_rerank_imports_nothing_from_finetune():
    graph = grimp.build_graph("kbsearch")
    for serving in ("kbsearch.rerank", "kbsearch.service", "kbsearch.api", "kbsearch.retrieve"):
        assert not graph.chain_exists(importer=serving, imported="kbsearch.finetune", as_packages=True), serving
    # and the reverse direction exists: training builds on the serving code, not the other way round
    assert graph.chain_exists(importer="kbsearch.finetune", imported="kbsearch.rerank", as_packages=True)


def test_a_serving_module_importing_training_code_breaks_the_contracts(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "kbsearch", copy / "kbsearch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    base = copy / "kbsearch" / "rerank" / "base.py"
    base.write_text(base.read_text(encoding="utf-8") + "\nfrom kbsearch.finetune.train import Recipe  # noqa\n",
                    encoding="utf-8")
    result = _lint(copy)
    assert result.returncode == 1 and "2 broken" in result.stdout, result.stdout + result.stderr
    assert "kbsearch.rerank.base -> kbsearch.finetune.train" in result.stdout
