"""Hints where a new user is lost (issue 28, section 2): each says what to do, in one line,
exit 2, with real Nix evaluating what the user wrote."""

from __future__ import annotations

import json
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


@needs_nix
def test_status_reads_while_another_run_holds_the_state_file(tmp_path: Path) -> None:
    """`status` only reads: a deploy holding the state file does not refuse it (it works on a
    copy), and the deploy's file is left as it was."""
    from hive import state
    from tests.conftest import STANDIN, write_hive

    hive = write_hive(tmp_path, f"""
      {{
        paths.nixpkgs = {STANDIN};
        systems.a.configuration = {{ networking.hostName = "a"; }};
        instances.a = {{ system = "a"; ssh = {{ Hostname = "127.0.0.1"; Port = "9"; }}; }};
      }}
    """)
    held = state.Lock(tmp_path / ".hive.state")  # a deploy under way
    try:
        result = nix_hive("status", "--json", "-c", str(hive))
    finally:
        held.release()
    assert result.returncode == 1, result.stderr  # the host cannot be asked (nothing listens there)
    assert "another nix-hive run" not in result.stderr
    row = json.loads(result.stdout)[0]
    assert row["state"] == "unreachable" and "Connection refused" in row["reason"], row
    assert not (tmp_path / ".hive.state").exists() or (tmp_path / ".hive.state").stat().st_size == 0
