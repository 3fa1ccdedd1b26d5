"""The code version stamped on every commit: the git commit of the checkout (and whether it had uncommitted
changes) and the versions of the packages whose behaviour shapes the data."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("cptdata", "torch", "transformers", "pyspark", "deltalake", "dagster", "mlflow", "numpy", "scipy")
GIT_COMMIT_ENV = "CPTDATA_GIT_COMMIT"  # where there is no .git (a container image): set at build time


@functools.cache
def code_record() -> dict[str, object]:
    """``{"git_commit", "git_dirty", "packages"}`` for this process (computed once: the code does not change
    under a running process, and a commit must not pay for a ``git`` call)."""
    commit, dirty = _git(Path(__file__).resolve().parents[2])
    if commit is None:
        commit, dirty = os.environ.get(GIT_COMMIT_ENV) or "unknown", None
    return {"git_commit": commit, "git_dirty": dirty, "packages": {name: _version(name) for name in PACKAGES}}


def _git(folder: Path) -> tuple[str | None, bool | None]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
