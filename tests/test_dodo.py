"""doit's door: `doit list`, `doit build targets=...` and `doit deploy` run the task creators
the `nix-hive` command runs (real doit, real Nix; deploy in the lab), from this checkout's
dodo.py and from a fleet directory's (`nix-hive init` writes it), with doit's exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hive import cli, nix, orchestrate, plan, state, tasks
from hive.errors import ProcessError
from hive.model import Hive, Instance, System, frozen_map
from hive.options import Options
from hive.report import Progress
from hive.session import Session
from tests.conftest import REPO, STANDIN, builds, needs_lab, needs_nix, nix_hive, write_hive
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


def doit_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`doit ARGS` run in `directory`, as its user runs it there (with this checkout's hive)."""
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=directory, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def listed(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line.split()[0] for line in result.stdout.splitlines()]


@needs_nix
def test_doit_in_a_fleet_directory_made_by_init_uses_its_deployment(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    made = nix_hive("init", cwd=fleet)
    assert made.returncode == 0, made.stderr
    assert (fleet / "dodo.py").read_text() == cli.INIT_DODO
    write_hive(fleet, HIVE)  # init's hive.nix, made to evaluate here (the stand-in nixpkgs)
    assert listed(doit_in(fleet, "list")) == ["activate", "build", "deploy", "nix-build", "push", "store"]
    storage = ["activate", "activate:db-1", "build", "build:db", "deploy", "nix-build", "nix-build:db", "push",
               "push:db-1"]
    assert listed(doit_in(fleet, "list", "--all", "targets=storage")) == storage
    # loaded from elsewhere and run in another directory (-f, --dir), which has a deployment
    # of its own: still the dodo file's deployment
    elsewhere = write_hive(tmp_path / "elsewhere", HIVE.replace("db-1", "other-1")).parent
    assert listed(doit_in(tmp_path, "-f", "fleet/dodo.py", "--dir", str(elsewhere), "list", "--all",
                          "targets=storage")) == storage
    assert (fleet / ".hive.state.d").is_dir() and not (elsewhere / ".hive.state.d").exists()
    # bad input: one line, doit's status for an error before any task runs
    bad = doit_in(fleet, "list", "targets=nothing-like-this")
    assert (bad.returncode, bad.stderr) == (3, "error: pattern 'nothing-like-this' matches no instance, system or "
                                               "tag of hive.nix\n")
    bad = doit_in(fleet, "deploy", "jobs=0")
    assert (bad.returncode, bad.stderr) == (3, "error: jobs= '0': expected a whole number of at least 1\n")
    # init leaves a dodo.py it did not write as it is
    other = tmp_path / "other"
    other.mkdir()
    (other / "dodo.py").write_text("def task_mine() -> dict: ...\n")
    made = nix_hive("init", "-c", str(other))
    assert made.returncode == 0 and "dodo.py exists: left as it is" in made.stdout, made
    assert (other / "dodo.py").read_text() == "def task_mine() -> dict: ...\n" and (other / "hive.nix").exists()


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
    assert bad.returncode == 3
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
    assert bad.returncode == 3, bad.stderr
    assert bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
    assert not (hive.parent / ".hive.state").exists()


@needs_nix
def test_doit_and_nix_hive_share_the_lock(tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", HIVE)
    with state.locked(hive.parent / ".hive.state"):
        busy = doit("build", f"config={hive}")
    assert busy.returncode == 3
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


@needs_lab
def test_doit_deploys_from_a_fleet_directory_and_a_failed_host_exits_1(fleet_factory: object,
                                                                       tmp_path: Path) -> None:
    """`doit deploy targets='portico,*'` in a directory `nix-hive init` made (no config=), from
    the deployer's namespace: a deploy, one with a failing activation (exit 1, as nix-hive's),
    one with an unreachable host and skip_unreachable=1 (exit 0, as nix-hive's)."""
    fleet: Fleet = fleet_factory(payload_bytes=100_000)  # type: ignore[operator]
    directory = tmp_path / "fleet"
    directory.mkdir()
    assert nix_hive("init", cwd=directory).returncode == 0
    shutil.copytree(fleet.hive, directory, dirs_exist_ok=True)
    (directory / "default.nix").replace(directory / "hive.nix")  # the lab's deployment in place of init's
    env = {**nix_env(), **fleet.env, "PYTHONPATH": str(REPO)}

    def deploy(*variables: str) -> subprocess.CompletedProcess[str]:
        argv = fleet.lab.deployer_argv([sys.executable, "-m", "doit", "deploy", "targets=portico,*",
                                        f"I=nixpkgs={STANDIN}", "jobs=4", *variables])
        return subprocess.run(argv, cwd=directory, env=env, capture_output=True, text=True, timeout=300)

    done = deploy()
    assert done.returncode == 0, done.stderr
    assert "wave 2/2: 3 instance(s)" in done.stderr and "Traceback" not in done.stderr
    assert all(fleet.lab.current_system(h) is not None for h in fleet.lab.hosts)
    assert (directory / ".hive.state").exists() and not (fleet.hive / ".hive.state").exists()

    fleet.lab.run("www-2", ["touch", "/run/standin-fail-activation"])
    failed = deploy("no=build")
    assert failed.returncode == 1, failed.stderr  # as nix-hive's; doit's own status would be 2
    assert "Traceback" not in failed.stderr
    assert "unchanged" in failed.stderr  # no=build: nothing built again
    lines = {line.split()[0]: line for line in failed.stdout.splitlines() if line[:1].isalpha()}
    assert " failed " in lines["www-2"] and " ok " in lines["www-1"], failed.stdout

    # skip_unreachable=1: an unreachable host is skipped, fails nothing, and the run exits 0
    fleet.lab.run("www-2", ["rm", "/run/standin-fail-activation"])
    fleet.lab.run("www-3", ["ip", "link", "set", "eth0", "down"])
    skipped = deploy("no=build", "skip_unreachable=1", "connect_timeout=2")
    assert skipped.returncode == 0, skipped.stderr
    lines = {line.split()[0]: line for line in skipped.stdout.splitlines() if line[:1].isalpha()}
    assert " skipped " in lines["www-3"] and " ok " in lines["www-2"], skipped.stdout


@needs_nix
def test_doit_confirm_without_a_terminal_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """confirm=1 (deploy --confirm's question) needs a terminal to ask on: none (stdin from
    /dev/null), and nothing is built, no host is asked, no state is written; yes=1 would not
    ask. `confirm=maybe` is bad input like any flag."""
    hive = write_hive(tmp_path / "h", HIVE)
    refused = subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "deploy", f"config={hive}",
                              "confirm=1"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.strip() == ("error: confirm=1 asks on a terminal, and standard input is none: yes=1 "
                                      "deploys without asking")
    assert not (hive.parent / ".hive.state").exists()
    bad = doit("deploy", f"config={hive}", "confirm=maybe")
    assert bad.returncode == 3 and "confirm='maybe': expected 1 or 0" in bad.stderr, bad.stderr
