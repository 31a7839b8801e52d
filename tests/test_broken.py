"""Broken deployment files: each must be refused with one clear `error:` line, exit status 2,
nothing printed on stdout, nothing built and no state written.

Every tests/broken/*.nix starts with one or more `# expect: SUBSTRING` lines; the error line
must contain each substring. Cases the tool gets wrong today are marked xfail (strict), with
the reason: remove the mark once the tool is fixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_nix
from tests.constants import NIX_CONFIG, REPO

HERE = Path(__file__).resolve().parent
BROKEN = HERE / "broken"
RUN_CLI = "import sys; from hive.cli import main; sys.exit(main())"
STATE_NAMES = (".hive.state", ".hive.state.d")
# signing-key-interpolated.nix interpolates this file: a fake key, not a secret.
DUMMY_KEY = "hive-broken-test-dummy:ZmFrZS1rZXktZm9yLXRlc3RzLW9ubHktbm90LWEtcmVhbC1zZWNyZXQtMDAwMDAwMDAwMA==\n"

# Cases the tool currently gets wrong: file name -> why (the tool's current behaviour).
KNOWN_BUGS: dict[str, str] = {}
# A NIX_PATH entry's value is evaluated only by the commands that build (issue 23: it may be a
# fetchTarball), so these are refused by `build`, and `list` passes them by.
PATH_VALUES = {"paths-newline.nix", "paths-nixpkgs-number.nix"}

pytestmark = needs_nix


def expectations(file: Path) -> list[str]:
    """The `# expect:` substrings at the top of a corpus file."""
    found = []
    for line in file.read_text().splitlines():
        if not line.startswith("# expect:"):
            break
        found.append(line.removeprefix("# expect:").strip())
    return found


def corpus() -> list[object]:
    params: list[object] = []
    for file in sorted(BROKEN.glob("*.nix")):
        reason = KNOWN_BUGS.get(file.name)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        params.append(pytest.param(file.name, id=file.stem, marks=marks))
    return params


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.setdefault("NIX_CONFIG", NIX_CONFIG)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    return out


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=120, check=False)


def snapshot(directory: Path) -> set[str]:
    """Every file and directory under `directory`, hidden ones included."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A private copy of tests/broken, so a stray state file cannot pollute the repository."""
    copy = tmp_path / "broken"
    shutil.copytree(BROKEN, copy)
    # .gitignore excludes *.sec, so a fresh checkout lacks tests/broken/dummy.sec: write it here.
    (copy / "dummy.sec").write_text(DUMMY_KEY)
    return copy


def assert_refused(proc: subprocess.CompletedProcess[str], prefix: str, expected: list[str]) -> str:
    """Exit 2, nothing on stdout, exactly one `error:` line on stderr; returns that line."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout!r}\nstderr: {proc.stderr!r}"
    assert proc.stdout == "", proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {proc.stderr!r}"
    line = lines[0]
    assert line.startswith(f"error: {prefix}"), line
    for want in expected:
        assert want in line, f"{want!r} not in {line!r}"
    return line


def test_corpus_is_complete() -> None:
    files = sorted(BROKEN.glob("*.nix"))
    assert len(files) >= 25
    for file in files:
        assert expectations(file), f"{file.name} has no '# expect:' line"
    assert set(KNOWN_BUGS) <= {f.name for f in files}


@pytest.mark.parametrize("name", corpus())
def test_list_refuses(work: Path, name: str) -> None:
    before = snapshot(work)
    proc = run_cli(["build" if name in PATH_VALUES else "list", "-c", name], cwd=work)
    assert_refused(proc, f"{name}: ", expectations(work / name))
    assert not any((work / s).exists() for s in STATE_NAMES)
    assert snapshot(work) == before


@pytest.mark.parametrize("name", ["unknown-system.nix", "ssh-option-host.nix", "signing-key-interpolated.nix"])
def test_build_refuses_before_building(work: Path, name: str) -> None:
    before = snapshot(work)
    proc = run_cli(["build", "-I", f"nixpkgs={REPO / 'tests' / 'nixpkgs'}", "-c", name], cwd=work)
    assert_refused(proc, f"{name}: ", expectations(work / name))
    assert not any((work / s).exists() for s in STATE_NAMES)
    assert snapshot(work) == before  # no state, no `result` link, nothing at all


def test_interpolated_key_is_refused_as_in_store(work: Path) -> None:
    proc = run_cli(["list", "-c", "signing-key-interpolated.nix"], cwd=work)
    line = assert_refused(proc, "signing-key-interpolated.nix: signingKey: ", [])
    assert "the secret key is in the Nix store" in line
    assert "./key.sec" in line  # says how to write it instead


def test_interpolated_key_is_not_copied_to_store(work: Path) -> None:
    key = work / "dummy.sec"
    # A key file no earlier run has seen, so its store path cannot already exist. Fake, not a secret.
    key.write_text(f"hive-broken-test-dummy:{os.urandom(16).hex()}\n")
    probe = subprocess.run(["nix", "eval", "--raw", "--read-only", "--impure", "--expr", f'"${{{key}}}"'],
                           env=env(), capture_output=True, text=True, check=True)
    store_path = Path(probe.stdout)
    assert store_path.name.endswith("-dummy.sec") and not store_path.exists()
    proc = run_cli(["list", "-c", "signing-key-interpolated.nix"], cwd=work)
    assert_refused(proc, "signing-key-interpolated.nix: ", ["in the Nix store"])
    assert not store_path.exists(), f"{store_path} was created"


def test_config_directory_without_default_nix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli(["list", "-c", "empty"], cwd=tmp_path)
    # Either "empty/default.nix: no such file (...)" or "empty: is a directory without default.nix ...".
    line = assert_refused(proc, "empty", ["default.nix"])
    assert "no such file" in line or "is a directory" in line, line
    assert snapshot(tmp_path) == {"empty"}


def test_config_missing_file(tmp_path: Path) -> None:
    proc = run_cli(["list", "-c", "nowhere.nix"], cwd=tmp_path)
    assert_refused(proc, "nowhere.nix: ", ["no such file"])
    assert snapshot(tmp_path) == set()


def test_default_config_missing(tmp_path: Path) -> None:
    proc = run_cli(["list"], cwd=tmp_path)
    assert_refused(proc, "hive.nix: ", ["no such file"])
    assert snapshot(tmp_path) == set()
