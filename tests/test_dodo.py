"""doit's door: `doit list`, `doit build targets=...` and `doit deploy` run the task creators
the `nix-hive` command runs (real doit, real Nix; deploy in the lab)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hive import nix, orchestrate, plan, state, tasks
from hive.errors import ProcessError
from hive.model import Hive, Instance, System, frozen_map
from hive.options import Options
from hive.report import Progress
from hive.session import Session
from tests.conftest import REPO, STANDIN, builds, needs_lab, needs_nix, write_hive
from tests.fleet import Fleet, nix_env

HIVE = f"""
{{
  paths.nixpkgs = {STANDIN};
  systems.web.configuration = {{ networking.hostName = "web"; }};
  systems.db.configuration = {{ networking.hostName = "db"; }};
  instances.www-1 = {{ system = "web"; store = "ssh://portico"; }};
  instances.www-2 = {{ system = "web"; }};
  instances.db-1 = {{ system = "db"; tags = [ "storage" ]; }};
}}
"""


def doit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_through_doit_a_failed_host_is_status_1_and_a_task_that_raised_2(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """doit says 2 ("error") as soon as a task is not started because one it waits for failed
    (a failed build: its pushes; a failed host: `deploy`): the doit door says 1, as nix-hive
    does, and 2 only when a task raised (nix-hive's fault). Real doit, Nix faked."""
    def fake_instantiate(source: Any, directory: Path, system: str, paths: Any) -> str:
        return f"/nix/store/{system}.drv"

    def fake_realise(drvs: Sequence[str], **_: Any) -> list[str]:
        systems = [d.removeprefix("/nix/store/").removesuffix(".drv") for d in drvs]
        if "broken" in systems:
            raise ProcessError(["nix-store"], 1, "error: broken is broken")
        if "buggy" in systems:
            raise RuntimeError("a bug")
        return [f"/nix/store/{s}" for s in systems]

    monkeypatch.setattr(nix, "instantiate", fake_instantiate)
    monkeypatch.setattr(nix, "realise", fake_realise)
    monkeypatch.setattr(nix, "add_root", lambda path, link: None)

    def status(system: str) -> tuple[int, int]:
        h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=frozen_map(),
                 systems={system: System(system, frozen_map())}, instances={"h": Instance("h", system)})
        session = Session(h, plan.make_plan(h, [(h.instances["h"],)]), Options(state_file=tmp_path / system),
                          progress=Progress(quiet=True))
        raised: list[bool] = []
        code = tasks.run(session, tasks.namespace(session, on_complete=raised.append), ["push:h"])
        session.close()
        return code, orchestrate.doit_status(session, *raised)

    assert status("broken") == (2, 1)  # doit's own status, the door's
    assert status("buggy") == (2, 2)


@needs_nix
def test_doit_list_shows_tasks_per_system_and_instance(tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", HIVE)
    listed = doit("list", "--all", f"config={hive}")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    for name in ("build:web", "build:db", "store:ssh://portico", "push:www-1", "push:db-1", "activate:www-2",
                 "deploy"):
        assert name in names
    only = doit("list", "--all", f"config={hive}", "targets=storage")
    assert [n for n in (ln.split()[0] for ln in only.stdout.splitlines()) if ":" in n] == [
        "activate:db-1", "build:db", "nix-build:db", "push:db-1"]


@needs_nix
def test_doit_build_targets_builds_the_selected_systems_once(tmp_path: Path, build_log: Path) -> None:
    hive = write_hive(tmp_path / "h", HIVE)
    built = doit("build", f"config={hive}", "targets=www*")
    assert built.returncode == 0, built.stderr
    assert builds(build_log) == ["web"]
    recorded = state.load(hive.parent / ".hive.state")  # the same state file as nix-hive's
    assert recorded["build:web"]["_values_:"]["result"].endswith("-nixos-system-web")
    again = doit("build", f"config={hive}", "targets=www*", "no=build")
    assert again.returncode == 0 and builds(build_log) == ["web"]
    assert "unchanged" in again.stderr


@needs_nix
def test_doit_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", HIVE)
    bad = doit("list", f"config={hive}", "targets=nothing-like-this")
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: pattern 'nothing-like-this' matches no instance, system or tag of {hive}"


@needs_nix
@pytest.mark.parametrize(("variable", "message"), [
    ("jobs=0", "jobs= '0': expected a whole number of at least 1"),
    ("goal=reboot", "goal= 'reboot': expected one of switch, boot, test, dry-activate"),
    ("max_failures=lots", "max_failures= 'lots': expected a number N or a percentage N%"),
    ("keep_going=maybe", "keep_going='maybe': expected 1 or 0"),
    ("I=nixpkgs", "I= 'nixpkgs': expected NAME=PATH"),
    ("no=bild", "--no: unknown step 'bild'"),
])
def test_doit_variables_are_checked_like_options(variable: str, message: str, tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", HIVE)
    bad = doit("list", f"config={hive}", variable)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
    assert not (hive.parent / ".hive.state").exists()


@needs_nix
def test_doit_and_nix_hive_share_the_lock(tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", HIVE)
    with state.locked(hive.parent / ".hive.state"):
        busy = doit("build", f"config={hive}")
    assert busy.returncode == 2
    assert busy.stderr.strip() == f"error: another nix-hive run is using {hive.parent / '.hive.state'}"


@needs_lab
def test_doit_deploy_portico_first(fleet_factory: object) -> None:
    fleet: Fleet = fleet_factory()  # type: ignore[operator]
    env = {**nix_env(), **fleet.env, "PYTHONPATH": str(REPO)}
    argv = fleet.lab.deployer_argv([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "deploy",
                                    f"config={fleet.hive}", "targets=portico,*", f"I=nixpkgs={STANDIN}", "jobs=4",
                                    "goal=test"])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # progress lines only: no traceback, no "Exception ignored" at exit
    assert all(line.startswith("[") for line in result.stderr.splitlines()), result.stderr
    assert "wave 2/2: 3 instance(s)" in result.stderr
    assert "www-3" in result.stdout and "ok" in result.stdout  # the summary table, as nix-hive prints it
    times = {h: float(fleet.lab.activations(h)[0].split()[0]) for h in fleet.lab.hosts}
    assert all(times["portico"] < times[h] for h in ("www-1", "www-2", "www-3"))
    assert all(" test " in f" {fleet.lab.activations(h)[0]} " for h in fleet.lab.hosts)  # goal=test reached them
    assert fleet.lab.run("www-1", ["test", "-e", "/nix/var/nix/profiles/system"], check=False).returncode != 0
