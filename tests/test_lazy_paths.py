"""Commands that build nothing need no nixpkgs (issue 23): with `paths.nixpkgs =
builtins.fetchTarball { … }` (the original tool's example) on a machine without network,
`list`, `ssh-config`, `ssh`, `scp`, `run`, `plan` and `check` work; `build` fails with one line
naming the entry. Real `nix eval`; the tarball's URL is a port nothing listens on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hive.evaluate import build_model
from tests.conftest import needs_nix, nix_hive, write_hive

UNREACHABLE = "http://127.0.0.1:9/nixpkgs.tar.gz"
SHA = "0" * 52

# The original tool's example, offline: a fetchTarball for every system, and one of its own.
OFFLINE = f"""
{{
  paths.nixpkgs = builtins.fetchTarball {{ url = "{UNREACHABLE}"; sha256 = "{SHA}"; }};
  paths.extra = builtins.fetchTarball "{UNREACHABLE}?extra";
  systems.web = {{ configuration = {{ }}; tags = [ "web" ]; }};
  systems.db = {{ configuration = {{ }}; }};
  systems.edge = {{
    configuration = {{ }};
    paths.nixpkgs = builtins.fetchTarball "{UNREACHABLE}?edge";
  }};
  instances.web-1 = {{ system = "web"; ssh = {{ Hostname = "127.0.0.1"; Port = 9; }}; }};
  instances.web-2 = {{ system = "web"; ssh = {{ Hostname = "127.0.0.1"; Port = 9; }}; }};
  instances.db-1 = {{ system = "db"; ssh = {{ Hostname = "127.0.0.1"; Port = 9; }}; }};
  instances.edge-1 = {{ system = "edge"; ssh = {{ Hostname = "127.0.0.1"; Port = 9; }}; }};
}}
"""



@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hive(tmp_path_factory.mktemp("offline"), OFFLINE)


def _env() -> dict[str, str]:
    """Nix tries a download 5 times by default (4 s here); once is enough to see it fail."""
    return {"NIX_CONFIG": os.environ.get("NIX_CONFIG", "") + "\ndownload-attempts = 1\n"}


def _evaluated(stderr: str) -> None:
    """The deployment evaluated: nothing was fetched, no evaluation error."""
    assert "cannot evaluate" not in stderr and "unable to download" not in stderr, stderr


@needs_nix
def test_list_and_ssh_config_need_no_nixpkgs(offline: Path) -> None:
    out = nix_hive("list", "-c", str(offline), env=_env())
    assert out.returncode == 0, out.stderr
    assert "web-1" in out.stdout and "edge-1" in out.stdout
    assert "extra nixpkgs (not evaluated)" in out.stdout
    data = json.loads(nix_hive("list", "--json", "-c", str(offline), env=_env(), check=True).stdout)
    assert data["paths"] == {"extra": None, "nixpkgs": None}
    assert data["systems"]["edge"]["paths"] == {"extra": None, "nixpkgs": None}
    config = nix_hive("ssh-config", "-c", str(offline), env=_env())
    assert config.returncode == 0, config.stderr
    assert "Host web-1" in config.stdout


@needs_nix
def test_plan_needs_no_nixpkgs_and_groups_by_definition(offline: Path) -> None:
    out = nix_hive("plan", "--json", "-c", str(offline), env=_env())
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # db and web share the deployment's paths: one build; edge has a nixpkgs of its own
    assert "nix-build:db+web" in text and "nix-build:edge" in text, text
    # an override is a value: it is shown, and it joins what it overrides
    over = nix_hive("plan", "-c", str(offline), "-I", "nixpkgs=/src/nixpkgs", env=_env())
    assert over.returncode == 0, over.stderr
    assert "nix-build:db+edge+web" in over.stdout


@needs_nix
@pytest.mark.parametrize(("argv", "status"), [
    (["ssh", "web-1", "true"], 255),  # ssh's own status: it could not connect
    (["scp", "web-1:/etc/hostname", "/dev/null"], 255),  # scp's, for the same reason
    (["run", "web-1", "--", "true"], 1),  # a host failed
    (["check", "web-1"], 0),  # web-1 declares no health check: nothing to ask it
    (["rollback", "web-1"], 1),  # a host failed
    (["upload-keys", "web-1"], 0),  # web-1 has no keys: nothing to upload
], ids=lambda a: a[0] if isinstance(a, list) else str(a))
def test_commands_over_ssh_need_no_nixpkgs(offline: Path, argv: list[str], status: int) -> None:
    """They get as far as ssh (nothing listens on port 9), never to a download, and exit as
    they would with nixpkgs at hand (2 would be the deployment refused)."""
    out = nix_hive(argv[0], "-c", str(offline), *argv[1:], env=_env(), timeout=60)
    _evaluated(out.stderr)
    assert out.returncode == status, out.stdout + out.stderr


@needs_nix
def test_build_names_the_entry_it_cannot_fetch(offline: Path) -> None:
    out = nix_hive("build", "-c", str(offline), env=_env())
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: {offline}: paths.")
    # Nix 2.8 says "unable to download …"; 2.26 wraps it: "Failed to open archive (… unable to download …)"
    assert "cannot evaluate: " in lines[0] and "unable to download 'http://127.0.0.1:9/" in lines[0], lines[0]


@needs_nix
def test_a_systems_own_entry_is_named(tmp_path: Path) -> None:
    hive = write_hive(tmp_path, f"""
    {{
      paths.nixpkgs = /nonexistent/nixpkgs;
      systems.edge = {{ configuration = {{ }}; paths.nixpkgs = builtins.fetchTarball "{UNREACHABLE}"; }};
      instances.e = {{ system = "edge"; ssh.Hostname = "127.0.0.1"; }};
    }}
    """)
    out = nix_hive("build", "-c", str(hive), env=_env())
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {hive}: systems.edge.paths.nixpkgs: cannot evaluate: "), out.stderr


def test_model_without_paths_names_each_entry() -> None:
    raw = {"paths": {"nixpkgs": "unevaluated", "x": "unevaluated"},
           "systems": {"a": {}, "b": {"paths": {"nixpkgs": "unevaluated"}}},
           "instances": {"i": {"system": "a", "ssh": {"Hostname": "h"}}}}
    hive = build_model(raw, Path("/d/hive.nix"), "hive.nix", {"x": "/given"}, paths=False)
    assert dict(hive.paths) == {"x": "/given"} and dict(hive.unevaluated) == {"nixpkgs": "paths.nixpkgs"}
    a, b = hive.systems["a"], hive.systems["b"]
    assert dict(a.paths) == {"x": "/given"} and dict(a.unevaluated) == {"nixpkgs": "paths.nixpkgs"}
    assert dict(b.unevaluated) == {"nixpkgs": "systems.b.paths.nixpkgs"}
    assert a.build_key() != b.build_key()
    evaluated = build_model({**raw, "paths": {"nixpkgs": "/n"}, "systems": {"a": {}}}, Path("/d/hive.nix"),
                            "hive.nix")
    assert dict(evaluated.systems["a"].paths) == {"nixpkgs": "/n"} and not evaluated.systems["a"].unevaluated
