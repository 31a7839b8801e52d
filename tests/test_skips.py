"""No test passes by being skipped (issue 30, item 1): a test that needs what this machine lacks
fails, saying why, unless NIX_HIVE_ALLOW_SKIP names the need (tests/conftest.py), and the
matrix fails a release whose run skipped anything but what it allows (tests/matrix.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import matrix
from tests.conftest import ALLOW_SKIP, REPO, allowed_skips

SUITE = """
import pytest

from tests.conftest import needs, skip_unless


@needs("chromium", "chromium is not installed")
def test_in_a_browser():
    pass


@needs("lab", None)
def test_on_the_lab():
    pass


def test_learns_it_has_no_lab():
    skip_unless("lab", "the lab needs root")


@pytest.mark.skip(reason="for no named reason")
def test_skipped_for_no_need():
    pass


@pytest.mark.xfail(strict=True, reason="a known bug")
def test_a_known_bug():
    assert False
"""


def run(directory: Path, allow: str | None, workers: str = "0") -> tuple[int, list[str]]:
    """pytest on SUITE: its status and output lines."""
    (directory / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    (directory / "test_suite.py").write_text(textwrap.dedent(SUITE))
    env = {k: v for k, v in os.environ.items() if k != ALLOW_SKIP} | {"PYTHONPATH": str(REPO)}
    if allow is not None:
        env[ALLOW_SKIP] = allow
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-n", workers, "-p", "no:cacheprovider",
                           "--rootdir", str(directory), str(directory)],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout.splitlines()


def test_a_skip_fails_unless_its_need_is_allowed(tmp_path: Path) -> None:
    status, out = run(tmp_path, None)
    # a mark's skip is decided in the test's setup: its failure is an error there
    assert status == 1 and matrix.pytest_counts(out) == {"failed": 1, "errors": 2, "passed": 1, "xfailed": 1}, out
    said = "\n".join(out)
    assert "chromium is not installed (to skip the tests that need it instead: NIX_HIVE_ALLOW_SKIP=chromium)" in said
    assert "the lab needs root (to skip the tests that need it instead: NIX_HIVE_ALLOW_SKIP=lab)" in said
    assert "skipped without naming what it needs (tests/conftest.py: needs): for no named reason" in said


@pytest.mark.parametrize("allow", ["chromium,lab", "lab chromium"])
def test_allowed_needs_are_skipped_saying_why_and_the_matrix_counts_them(tmp_path: Path, allow: str) -> None:
    status, out = run(tmp_path, allow, workers="2")  # as make pytest runs it: the summary comes from xdist
    counts = matrix.pytest_counts(out)
    # a skip that names no need fails whatever is allowed
    assert status == 1 and counts == {"error": 1, "passed": 1, "skipped": 2, "xfailed": 1}, out
    skipped = [line for line in out if matrix.SKIPPED.match(line)]
    assert sorted(line.split(": ", 1)[1] for line in skipped) == [
        "[chromium] chromium is not installed", "[lab] the lab needs root"], out
    # the matrix allows chromium alone: the lab's skip fails the release
    assert matrix.unexpected_skips(out, counts, ["chromium"]) == [line for line in skipped if "[lab]" in line]
    assert matrix.unexpected_skips(out, counts, ["chromium", "lab"]) == []


def test_the_matrix_counts_skips_no_line_lists() -> None:
    lines = ["SKIPPED [2] tests/test_timeline.py:380: [chromium] chromium is not installed",
             "SKIPPED [1] tests/test_x.py:3: for no named reason"]
    assert matrix.unexpected_skips(lines, {"skipped": 3}, ["chromium"]) == [lines[1]]
    assert matrix.unexpected_skips(lines[:1], {"skipped": 5}, ["chromium"]) == [
        "3 skipped that no SKIPPED line lists"]
    result = matrix.Result("sid", counts={"passed": 3, "skipped": 3}, returncode=0,
                           unexpected_skips=[lines[1]])
    assert not result.ok and result.line().endswith(f"FAILED -- skipped what it should run: {lines[1]}")


def test_allowed_skips_are_named_by_commas_or_spaces() -> None:
    assert allowed_skips({}) == frozenset()
    assert allowed_skips({ALLOW_SKIP: "lab, chromium"}) == {"lab", "chromium"}
