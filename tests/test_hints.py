"""Hints where a new user is lost (issue 28, section 2): each says what to do, in one line,
exit 2, with real Nix evaluating what the user wrote."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import needs_nix, nix_hive

COLMENA = """{
  meta = { nixpkgs = ./nixpkgs; };
  defaults = { pkgs, ... }: { };
  web-1 = { name, nodes, ... }: { deployment.targetHost = "10.0.0.1"; deployment.tags = [ "web" ]; };
}
"""


def test_a_directory_without_a_deployment_points_at_init(tmp_path: Path) -> None:
    result = nix_hive("list", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("error: hive.nix: no such file here (`nix-hive init` writes a starting one; "
                             "-c FILE|DIR names another)\n")


@needs_nix
def test_a_colmena_hive_says_what_a_nix_hive_deployment_looks_like(tmp_path: Path) -> None:
    (tmp_path / "hive.nix").write_text(COLMENA)
    result = nix_hive("list", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: hive.nix: this looks like a Colmena hive")
    assert "systems.<s>.configuration" in result.stderr and "docs/deployment.md" in result.stderr


def test_init_of_a_flake_in_a_git_tree_says_to_git_add_it(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    result = nix_hive("init", "--flake", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "`git add flake.nix`" in result.stdout
    plain = tmp_path / "elsewhere"
    plain.mkdir()
    assert "git add" not in nix_hive("init", "-c", str(plain)).stdout  # hive.nix: a file Nix reads as it is
