"""The README is a front page and docs/ the reference (issue 23): the first deployment it shows
builds, and no link between them points nowhere."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.constants import REPO, STANDIN, nix_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _slug(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    found, fence = set(), False
    for line in page.read_text().splitlines():
        fence ^= line.startswith("```")
        if not fence and re.match(r"#{1,6} ", line):
            found.add(_slug(line.lstrip("#")))
    return found | set(re.findall(r'<a (?:id|name)="([^"]+)"', page.read_text()))


def test_every_link_of_the_readme_and_docs_reaches_a_file_and_a_heading() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken
    assert len(PAGES) >= 8 and len((REPO / "README.md").read_text().splitlines()) < 250  # a front page


def test_the_readme_starts_with_make_demo_and_make_test() -> None:
    first = (REPO / "README.md").read_text().split("```sh\n", 1)[1].splitlines()
    assert first[0].startswith("make demo") and first[2].startswith("make test")


def test_the_first_deployment_of_the_readme_builds(tmp_path: Path) -> None:
    block = (REPO / "README.md").read_text().split("```nix\n", 1)[1].split("```", 1)[0]
    (tmp_path / "hive.nix").write_text(block)
    for name in ("portico", "www"):
        (tmp_path / f"{name}.nix").write_text(f'{{ networking.hostName = "{name}"; }}\n')
    (tmp_path / "secrets").mkdir()
    subprocess.run(["nix-store", "--generate-binary-cache-key", "hive", str(tmp_path / "secrets/hive.sec"),
                    str(tmp_path / "secrets/hive.pub")], check=True, env=nix_env())
    cli = [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())"]
    env = {**nix_env(), "PYTHONPATH": str(REPO)}
    built = subprocess.run([*cli, "build", "-q", "-I", f"nixpkgs={STANDIN}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    out = json.loads(built.stdout)
    assert sorted(out["instances"]) == ["portico", "www-1"] and out["instances"]["www-1"]["store"] == "ssh://portico"
    assert all(s["result"].startswith("/nix/store/") for s in out["systems"].values())


def test_the_package_builds_quietly_and_ships_its_host_scripts(tmp_path: Path) -> None:
    """`make setup` installs the package: setuptools says nothing (no banner about a package
    missing from its configuration), and the wheel carries every host script."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("hive", "nix", "schemas"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"),
                          str(source)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    said = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip() and "is ignored" not in ln]
    assert said == [], "\n".join(said)
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"hive/host/{p.name}" for p in (REPO / "hive" / "host").glob("*.sh")} <= names
