"""Benchmarks of nix-hive: run them as modules from the repository root (see the Makefile)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_compiled: set[Path] = set()


def as_installed(code: Path) -> dict[str, str]:
    """This environment, to run the nix-hive of checkout `code` as an installed one runs: its
    modules compiled to bytecode once (pip and Nix install them so), and Python allowed to
    read it. Without this, a shell with PYTHONDONTWRITEBYTECODE set (as CI machines often
    have) compiles every module at every start: 0.5 s and more on a loaded 2-core machine,
    measured as nix-hive's own time."""
    code = code.resolve()
    if code not in _compiled:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "hive")], check=True,
                       stdout=subprocess.DEVNULL)
        _compiled.add(code)
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@contextmanager
def worktree(rev: str | None, where: Path) -> Iterator[dict[str, Path]]:
    """The checkouts to measure: this one ("nix-hive"), and with `rev` (`--baseline`) that git
    revision's, as a worktree at `where`, removed after."""
    from tests.constants import REPO

    codes = {"nix-hive": REPO}
    if rev:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(where), rev], check=True)
        codes[rev] = where
    try:
        yield codes
    finally:
        if rev:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)], check=False)
