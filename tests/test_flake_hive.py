"""Deployments in flakes (`-c DIR`, `-c DIR#ATTR`, `-c DIR/flake.nix`): evaluated, validated and
built with real Nix against the stand-in nixpkgs as a path input; `--no build` follows the
flake's files and its lock file; errors name flake.nix and the attribute; `nix-hive init`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import needs_lab
from tests.constants import REPO, STANDIN, nix_env
from tests.fleet import Fleet, flake_for_lab

EXAMPLE = REPO / "example" / "flake"


def nix_hive(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**nix_env(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hive", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def flake(tmp_path: Path) -> Path:
    """example/flake in tmp_path, nixpkgs a copy of the stand-in (tmp_path/nixpkgs) it can change."""
    nixpkgs = tmp_path / "nixpkgs"
    shutil.copytree(STANDIN, nixpkgs)
    directory = tmp_path / "deployment"
    shutil.copytree(EXAMPLE, directory)
    flake_for_lab(directory, tmp_path / "secrets")
    text = (directory / "flake.nix").read_text().replace(f"path:{STANDIN}", f"path:{nixpkgs}")
    (directory / "flake.nix").write_text(text)
    return directory


def built(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return {name: s["result"] for name, s in json.loads(result.stdout)["systems"].items()}


def unchanged(result: subprocess.CompletedProcess[str]) -> set[str]:
    return {ln.split()[3] for ln in result.stderr.splitlines() if " build " in ln and ln.rstrip().endswith("unchanged")}


def test_a_flake_deployment_builds_and_no_build_follows_its_files_and_lock(flake: Path) -> None:
    first = built(nix_hive("build", "-c", str(flake)))
    assert set(first) == {"portico", "www"} and all(p.startswith("/nix/store/") for p in first.values())
    assert (flake / "flake.lock").is_file()  # locked on first use, as `nix build` does
    for form in (f"{flake}#nixHive", str(flake / "flake.nix"), f"path:{flake}#nixHive"):
        assert built(nix_hive("build", "--no", "build", "-c", form)) == first
    again = nix_hive("build", "--no", "build", "-c", str(flake))
    assert unchanged(again) == {"portico", "www"}, again.stderr

    # a module edited: built again (whatever Nix then finds to do)
    text = (flake / "flake.nix").read_text()
    edit = 'system.name = "www";'
    assert edit in text
    (flake / "flake.nix").write_text(text.replace(edit, f"{edit} standin.payloadBytes = 5000;"))
    edited = nix_hive("build", "--no", "build", "-c", str(flake))
    assert unchanged(edited) == set() and built(edited)["www"] != first["www"]
    assert unchanged(nix_hive("build", "--no", "build", "-c", str(flake))) == {"portico", "www"}

    # only flake.lock changes (the pinned nixpkgs moved): built again
    (flake.parent / "nixpkgs" / "NEWS").write_text("moved\n")
    flake_text, lock = (flake / "flake.nix").read_text(), (flake / "flake.lock").read_text()
    subprocess.run(["nix", "--extra-experimental-features", "nix-command flakes", "flake", "lock",
                    "--update-input", "nixpkgs", str(flake)], env=nix_env(), check=True, capture_output=True)
    assert (flake / "flake.lock").read_text() != lock and (flake / "flake.nix").read_text() == flake_text
    moved = nix_hive("build", "--no", "build", "-c", str(flake))
    assert unchanged(moved) == set(), moved.stderr
    listed = json.loads(nix_hive("build", "--no", "build", "-c", str(flake)).stdout)
    assert listed["flake"]["attr"] == "nixHive" and listed["flake"]["locked"]["nixpkgs"]["narHash"]
    assert listed["systems"]["www"]["nixpkgs"].startswith("/nix/store/")


@pytest.mark.parametrize(("edit", "expected"), [
    (None, "flake.nix#nope: cannot evaluate: the flake /"),
    ('store = "ssh://portico";', 'flake.nix#nixHive: instances.www-'),
    ('signingKey = "SECRET";', "flake.nix#nixHive: signingKey: the secret key is in the Nix store"),
])
def test_flake_errors_name_flake_nix_and_the_attribute(flake: Path, edit: str | None, expected: str) -> None:
    attr = "nixHive"
    text = (flake / "flake.nix").read_text()
    if edit is None:
        attr = "nope"
    elif edit.startswith("store"):
        text = text.replace(edit, 'store = "ssh://portico;x";')
    else:
        (flake / "hive.sec").write_text((flake.parent / "secrets" / "hive.sec").read_text())
        text = text.replace(f'signingKey = "{flake.parent / "secrets" / "hive.sec"}";', "signingKey = ./hive.sec;")
    (flake / "flake.nix").write_text(text)
    result = nix_hive("list", "-c", f"{flake}#{attr}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert expected in line, line
    if edit is not None and edit.startswith("store"):
        assert '.store: "ssh://portico;x" is not a Nix store URL' in line
    if edit is None:
        assert line.endswith("has no output nope")  # not where in nix-hive's own files


def test_init_writes_a_deployment_that_validates_and_overwrites_nothing(tmp_path: Path) -> None:
    done = nix_hive("init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = nix_hive("list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert set(json.loads(listed.stdout)["instances"]) == {"portico", "www-1"}
    before = (tmp_path / "hive.nix").read_text()
    # a NixOS release still supported (26.11, released at the end of November 2026; 26.05 ends in December)
    assert "nixos-26.11/nixexprs.tar.xz" in before
    assert "from hive.dodo import *" in (tmp_path / "dodo.py").read_text()  # doit's door, beside it
    again = nix_hive("init", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (tmp_path / "hive.nix").read_text() == before

    flake_dir = tmp_path / "f"
    flake_dir.mkdir()
    assert nix_hive("init", "--flake", "-c", str(flake_dir)).returncode == 0
    text = (flake_dir / "flake.nix").read_text()
    assert "github:NixOS/nixpkgs/nixos-26.11" in text
    (flake_dir / "flake.nix").write_text(text.replace("github:NixOS/nixpkgs/nixos-26.11", f"path:{STANDIN}"))
    result = built(nix_hive("build", "-c", str(flake_dir), "www-1"))
    assert result["www"].startswith("/nix/store/")
    # the dodo.py beside it: doit there takes the flake's deployment (no hive.nix beside it)
    assert (flake_dir / "dodo.py").read_text() == (tmp_path / "dodo.py").read_text()
    listed = subprocess.run([sys.executable, "-m", "doit", "list", "--all", "targets=www-1"], cwd=flake_dir,
                            env={**nix_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert "push:www-1" in names and "push:portico" not in names, listed.stdout
    assert nix_hive("init", "--flake", "-c", str(flake_dir)).returncode == 2


@needs_lab
def test_the_example_flake_deploys_to_the_lab(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(source=EXAMPLE, payload_bytes=500_000)
    result = fleet.deploy("--json", "portico", "www-*")
    assert result.returncode == 0, result.stderr
    rows = {row["instance"]: row for row in json.loads(result.stdout)["instances"]}
    assert all(row["outcome"] == "ok" for row in rows.values()), rows
    for host, row in rows.items():
        assert fleet.lab.current_system(host) == row["path"]
    assert not list(fleet.hive.glob(".hive.state*"))  # the state lives outside the flake
