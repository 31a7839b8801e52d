"""flake.nix, default.nix and nix/package.nix, evaluated (and built) against a stand-in nixpkgs.

There is no nixpkgs and no network here, so the real flake is evaluated with
`--override-input nixpkgs path:tests/flakenixpkgs`: a stand-in whose packages are trivial
derivations that record the arguments they were given (see tests/flakenixpkgs/default.nix).
default.nix is evaluated with `-I nixpkgs=tests/flakenixpkgs`.

What this proves:
- the flake parses and `nix flake check --no-build` accepts its outputs for every listed system
  (Nix's own checks: packages and devShells are derivations, apps are `type = "app"` with a store
  program, the overlay is `final: prev: ...`, the module an open function), and exactly
  packages, apps, overlays, devShells and nixosModules (the pull agent's) are there, for
  x86_64-linux, aarch64-linux and both darwins;
- packages.<sys>.default and .nix-hive are one derivation, made by
  python3Packages.buildPythonApplication with pname/version/description from pyproject.toml,
  pyproject = true, build-system setuptools, dependencies doit sh jsonschema tabulate,
  makeWrapperArgs adding nixpkgs' nix and openssh at the end of PATH, meta.mainProgram nix-hive;
- the source handed to the build holds only pyproject.toml, hive/, nix/, schemas/ (junk
  planted in the copy — .venv, __pycache__, *.pyc, editor backups, tests/ — is filtered out);
- apps.<sys>.{default,nix-hive}.program is "<that package>/bin/nix-hive";
- overlays.default applied to a package set gives the same nix-hive; devShells.<sys>.default is
  an mkShell with python (+ the dependencies, pytest, mypy, stubs), ruff, nix, openssh and jq;
- default.nix (with <nixpkgs>, or with an explicit pkgs) gives the very same derivation as the
  flake: one shared expression; `nix-env -qa` on it lists exactly nix-hive-0.2.0 (what
  `nix-env -if .` would install; the test installs nothing);
- built against the stand-in (cheap: /bin/sh scripts), the package has bin/nix-hive — the
  [project.scripts] name — and `nix run <flake>#nix-hive -- --version` and `nix run <flake>`
  run nix-hive, importing it from the built output (the stand-in lays the package out like the
  wheel, so hive/_data/nix/*.nix is where hive.resources looks).

What it does not prove: that nixpkgs' real buildPythonApplication and python packages build
nix-hive (versions within pyproject's bounds, the wheel build, pythonImportsCheck, the real
makeWrapper), that the pinned nixpkgs has every attribute used, or anything about flake.lock
(there is none until someone runs `nix flake lock` online).  The stand-in runs nix-hive with
the `python3` found on PATH (this test puts its own interpreter first), not a Nix-built one.

Needs `nix` (any 2.x with flakes; Debian's 2.8 single-user works) and, for the build, a store
that can build with the host's /bin/sh (Nix's sandbox given /bin, /usr and /lib, as
tests/constants.py's NIX_CONFIG does).  Sets NIX_CONFIG for its nix calls if
it is not set.  Takes a second or two.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs, skip_unless
from tests.constants import NIX_CONFIG
from tests.constants import REPO as ROOT

STANDIN = ROOT / "tests" / "flakenixpkgs"
SYSTEMS = ("x86_64-linux", "aarch64-linux", "x86_64-darwin", "aarch64-darwin")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What a checkout gives the flake (the wheel is built from a subset, see nix/package.nix).
COPY = ("flake.nix", "default.nix", "pyproject.toml", "README.md", "LICENSE", "hive", "nix", "schemas")
JUNK = (".venv/bin/python", "hive/__pycache__/cli.cpython-311.pyc", "hive/stray.pyc", "hive/cli.py~",
        "tests/test_x.py", "nix_hive.egg-info/PKG-INFO", ".mypy_cache/x.json")

pytestmark = needs("nix", None if shutil.which("nix") and shutil.which("nix-instantiate") else
                   "nix is not installed (needs nix and nix-instantiate on PATH)")


class Flake:
    """A copy of the repository's flake, evaluated with nixpkgs overridden by the stand-in."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env
        self.override = ["--override-input", "nixpkgs", f"path:{STANDIN}"]

    def ref(self, attr: str = "") -> str:
        return f"path:{self.path}" + (f"#{attr}" if attr else "")

    def nix(self, *args: str, cmd: str = "nix") -> str:
        done = subprocess.run([cmd, *args], env=self.env, capture_output=True, text=True, check=False,
                              timeout=300)
        if done.returncode != 0:
            raise AssertionError(f"{cmd} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def eval(self, attr: str, apply: str | None = None, impure: bool = False) -> Any:
        extra = (["--apply", apply] if apply else []) + (["--impure"] if impure else [])
        return json.loads(self.nix("eval", "--json", *self.override, *extra, self.ref(attr)))


@pytest.fixture(scope="module")
def flake(tmp_path_factory: pytest.TempPathFactory) -> Flake:
    top = tmp_path_factory.mktemp("flake")
    src = top / "nix-hive"
    src.mkdir()
    for name in COPY:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, src / name)
    for junk in JUNK:
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_text("junk\n")
    env = dict(os.environ)
    env.setdefault("NIX_CONFIG", NIX_CONFIG)
    env["XDG_CACHE_HOME"] = str(top / "cache")  # flake and eval caches: this run's own
    return Flake(src, env)


@pytest.fixture(scope="module")
def packages(flake: Flake) -> Any:
    """Per system, what the package asked buildPythonApplication for."""
    return flake.eval("packages", apply="""
      builtins.mapAttrs (system: ps: builtins.mapAttrs (name: p: {
        inherit (p) pname version name drvPath src;
        out = p.outPath;  # (an attrset with outPath would turn into that string in JSON)
        args = {
          inherit (p.standin.args) pname version pyproject makeWrapperArgs doCheck pythonImportsCheck;
          format = p.standin.args.format or null;
          dependencies = map (d: d.pname) p.standin.args.dependencies;
          build-system = map (d: d.pname) p.standin.args.build-system;
        };
        meta = { inherit (p.meta) mainProgram description; license = p.meta.license.spdxId; };
      }) ps)""")


def standin_out(flake: Flake, system: str, attr: str) -> str:
    out: str = json.loads(flake.nix("eval", "--json", f"path:{STANDIN}#legacyPackages.{system}.{attr}.outPath"))
    return out


def current_system(flake: Flake) -> str:
    system: str = json.loads(flake.nix("eval", "--json", "--impure", "--expr", "builtins.currentSystem"))
    return system


def test_flake_check_and_outputs(flake: Flake) -> None:
    flake.nix("flake", "check", "--no-build", *flake.override, flake.ref())
    # Nix >= 2.13 shows only the current system's outputs unless asked (2.8 shows all, has no flag).
    every = ["--all-systems"] if "--all-systems" in flake.nix("flake", "show", "--help") else []
    show = json.loads(flake.nix("flake", "show", "--json", *every, *flake.override, flake.ref()))
    assert set(show) == {"packages", "apps", "overlays", "devShells", "nixosModules"}
    assert {name: o["type"] for name, o in show["nixosModules"].items()} == {"agent": "nixos-module"}
    assert {name: o["type"] for name, o in show["overlays"].items()} == {"default": "nixpkgs-overlay"}
    for kind in ("packages", "apps", "devShells"):
        assert set(show[kind]) == set(SYSTEMS), kind
    for system in SYSTEMS:
        assert set(show["packages"][system]) == {"default", "nix-hive"}
        assert {name: app["type"] for name, app in show["apps"][system].items()} == {"default": "app",
                                                                                    "nix-hive": "app"}
        assert set(show["devShells"][system]) == {"default"}


def test_package(flake: Flake, packages: Any) -> None:
    for system in SYSTEMS:
        default, named = packages[system]["default"], packages[system]["nix-hive"]
        assert default == named, f"{system}: default and nix-hive differ"
        assert default["pname"] == PYPROJECT["name"] == "nix-hive"
        assert default["version"] == PYPROJECT["version"] == "0.2.0"
        assert default["name"] == "nix-hive-0.2.0"
        args = default["args"]
        assert args["pyproject"] is True and args["format"] is None
        assert args["build-system"] == ["setuptools"]
        assert args["dependencies"] == ["doit", "sh", "jsonschema", "tabulate"]
        assert {d.split(">")[0].split("<")[0] for d in PYPROJECT["dependencies"]} == set(args["dependencies"])
        bins = ":".join(f"{standin_out(flake, system, p)}/bin" for p in ("nix", "openssh"))
        assert args["makeWrapperArgs"] == ["--suffix", "PATH", ":", bins]
        assert args["pythonImportsCheck"] == ["hive", "hive.cli"]
        assert default["meta"] == {"mainProgram": "nix-hive", "description": PYPROJECT["description"],
                                   "license": "MIT"}


def test_source_is_filtered(packages: Any) -> None:
    src = Path(packages["x86_64-linux"]["default"]["src"])
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    top = {f.split("/")[0] for f in files}
    assert {"pyproject.toml", "hive", "nix", "schemas"} <= top <= {"pyproject.toml", "README.md", "LICENSE", "hive",
                                                                  "nix", "schemas"}, top
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", "~"))], files
    for must in ("hive/cli.py", "hive/resources.py", "nix/eval.nix", "nix/build.nix", "schemas/inventory.schema.json"):
        assert must in files


def test_apps(flake: Flake, packages: Any) -> None:
    apps = flake.eval("apps")
    for system in SYSTEMS:
        out = packages[system]["nix-hive"]["out"]
        for name in ("default", "nix-hive"):
            assert apps[system][name] == {"type": "app", "program": f"{out}/bin/nix-hive"}


def test_overlay(flake: Flake, packages: Any) -> None:
    result = flake.eval("overlays.default", impure=True, apply=f"""
      overlay: builtins.listToAttrs (map (system:
        let
          prev = import {STANDIN} {{ inherit system; }};
          final = prev // overlay final prev;
        in {{ name = system; value = {{
          names = builtins.attrNames (overlay final prev);
          inherit (final.nix-hive) pname version drvPath;
        }}; }}) [ "x86_64-linux" "aarch64-linux" ])""")
    for system in ("x86_64-linux", "aarch64-linux"):
        assert result[system]["names"] == ["nix-hive"]
        assert result[system]["drvPath"] == packages[system]["default"]["drvPath"]


def test_dev_shell(flake: Flake) -> None:
    shells = flake.eval("devShells", apply="""
      builtins.mapAttrs (system: s: {
        inherit (s.default) drvPath;
        packages = map (p: p.pname) s.default.standin.args.packages;
        python = map (p: p.pname)
          (builtins.head (builtins.filter (p: p ? standin) s.default.standin.args.packages)).standin.packages;
      })""")
    for system in SYSTEMS:
        shell = shells[system]
        assert shell["drvPath"].endswith(".drv")
        assert shell["packages"] == ["python3-env", "ruff", "nix", "openssh", "jq"]
        assert {"doit", "sh", "jsonschema", "tabulate", "pytest", "mypy"} <= set(shell["python"])


def test_default_nix_is_the_same_package(flake: Flake, packages: Any) -> None:
    system = current_system(flake)
    default_nix = flake.path / "default.nix"
    with_channel = json.loads(flake.nix(
        "--eval", "--strict", "--json", "-I", f"nixpkgs={STANDIN}", "-E",
        f"let p = import {default_nix} {{ }}; in {{ inherit (p) pname version drvPath; }}",
        cmd="nix-instantiate"))
    assert with_channel["pname"] == "nix-hive" and with_channel["version"] == "0.2.0"
    assert json.loads(flake.nix("eval", "--json", "-I", f"nixpkgs={STANDIN}", "-f", str(default_nix),
                                "meta.mainProgram")) == "nix-hive"
    if system in SYSTEMS:
        assert with_channel["drvPath"] == packages[system]["default"]["drvPath"]
    # What `nix-env -if .` would install (queried only: nothing is installed).
    available = json.loads(flake.nix("-f", str(default_nix), "-I", f"nixpkgs={STANDIN}", "-qa", "--json", "--meta",
                                     cmd="nix-env"))
    assert [(p["pname"], p["version"], p["meta"]["mainProgram"]) for p in available.values()] == [
        ("nix-hive", "0.2.0", "nix-hive")]
    explicit = json.loads(flake.nix(
        "eval", "--json", "--impure", "--expr",
        f"(import {default_nix} {{ pkgs = import {STANDIN} {{ system = \"aarch64-linux\"; }}; }}).drvPath"))
    assert explicit == packages["aarch64-linux"]["default"]["drvPath"]


def test_build_and_nix_run(flake: Flake, packages: Any) -> None:
    system = current_system(flake)
    skip_unless("flake-system", None if system in SYSTEMS else f"{system} is not one of the flake's systems")
    deps = subprocess.run([sys.executable, "-c", "import doit, sh, jsonschema, tabulate"], check=False)
    skip_unless("python-deps", None if deps.returncode == 0 else
                f"{sys.executable} lacks nix-hive's dependencies, the stand-in build runs with it")
    built = json.loads(flake.nix("build", "--no-link", "--json", *flake.override, flake.ref("nix-hive")))
    out = Path(built[0]["outputs"]["out"])
    assert str(out) == packages[system]["nix-hive"]["out"]
    exe = out / "bin" / "nix-hive"
    assert os.access(exe, os.X_OK)
    assert f"{standin_out(flake, system, 'nix')}/bin" in exe.read_text()
    assert (out / "lib/site/hive/_data/nix/eval.nix").is_file()
    assert (out / "lib/site/hive/_data/schemas/inventory.schema.json").is_file()
    assert (out / "lib/site/hive/host/activate.sh").is_file()  # what runs on hosts, package data

    env = dict(flake.env, PATH=f"{Path(sys.executable).parent}:{flake.env.get('PATH', '')}")
    env.pop("PYTHONPATH", None)
    for ref in (flake.ref("nix-hive"), flake.ref()):
        done = subprocess.run(["nix", "run", *flake.override, ref, "--", "--version"], env=env,
                              capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "nix-hive 0.2.0"
    where = subprocess.run([str(exe), "--version"], env=dict(env, PYTHONVERBOSE="1"), capture_output=True,
                           text=True, check=False, timeout=60)
    assert where.returncode == 0, where.stderr
    assert f"{out}/lib/site/hive/cli.py" in where.stderr, "hive was not imported from the built package"
