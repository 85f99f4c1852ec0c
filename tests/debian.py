"""Find a command-line tool a test needs, installing its Debian package when that is possible.

CI starts on a fresh Debian machine, where tools such as ``promtool`` (package ``prometheus``) are
not installed. As root with ``apt-get`` available, :func:`ensure_binary` installs the package;
otherwise (or when the install fails) the calling test is skipped with the reason, or fails when
``KBSEARCH_TEST_REQUIRE_TOOLS=1`` (``.ci/run`` sets it: in CI a missing tool is an error, not a skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

APT_TIMEOUT_S = 900


def _apt(apt_get: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``apt-get ARGS`` non-interactively, waiting up to 5 minutes for the dpkg lock."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt_get, "-o", "DPkg::Lock::Timeout=300", *args]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(cmd, 124, stdout="", stderr=f"timed out after {exc.timeout} s")


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it where the tools are required (CI)."""
    if os.environ.get("KBSEARCH_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(reason + " (KBSEARCH_TEST_REQUIRE_TOOLS=1)")
    pytest.skip(reason)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 5) -> str:
    """The last few lines of a process's output, for a skip reason."""
    return " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])


def ensure_binary(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian ``package`` first when it is missing.

    Returns ``shutil.which(binary)`` when the binary is on PATH. Otherwise, when running as root
    with ``apt-get`` available, runs ``apt-get install -y --no-install-recommends PACKAGE``
    (DEBIAN_FRONTEND=noninteractive) and, if that fails (e.g. stale package lists on a fresh
    machine), ``apt-get update`` and the install again. Calls ``pytest.skip`` with the reason when
    the binary cannot be found or installed.
    """
    path = shutil.which(binary)
    if path:
        return path
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable(f"{binary} not found on PATH; install Debian package {package!r} (not root, so not installing it)")
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        _unavailable(f"{binary} not found on PATH and apt-get is not available to install {package!r}")
    install = ("install", "-y", "--no-install-recommends", package)
    proc = _apt(apt_get, *install)
    if proc.returncode != 0:
        update = _apt(apt_get, "update")
        if update.returncode != 0:
            _unavailable(f"{binary} not found; apt-get update failed (exit {update.returncode}): {_tail(update)}")
        proc = _apt(apt_get, *install)
    path = shutil.which(binary)
    if path is None:
        _unavailable(f"{binary} not found; apt-get install {package} failed (exit {proc.returncode}): {_tail(proc)}")
    return path


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
"""Debian's chromium headless as root on a closed network: no sandbox (root), and none of the background
connections it would try (and have refused, many at a time) at every start."""


def chromium_and_playwright():
    """(Debian's chromium, Playwright's ``sync_playwright``) for a browser test; skips, or fails under
    ``KBSEARCH_TEST_REQUIRE_TOOLS=1``, when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    return ensure_binary("chromium", "chromium"), sync_playwright
