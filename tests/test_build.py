"""Evaluate once, build each system once, --no build, GC roots, and a build killed half-way.

Real Nix throughout: `nix eval` of the hive, `nix build` of the stand-in nixpkgs' systems,
whose builder appends the system's name to STANDIN_BUILD_LOG each time it really runs.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hive import cli, state
from tests.conftest import STANDIN, builds, needs_nix, nix_hive, wait_until, write_hive

pytestmark = needs_nix

FLEET = f"""
{{
  paths.nixpkgs = {STANDIN};
  systems.a.configuration = {{ networking.hostName = "a"; }};
  systems.b.configuration = {{ ... }}: {{ imports = [ ./b.nix ]; }};
  instances = builtins.listToAttrs (builtins.genList (n: {{
    name = "host-${{toString n}}";
    value = {{
      system = if n < 250 then "a" else "b";
      tags = [ "rack${{toString (n / 100)}}" ];
      ssh.Hostname = "10.0.${{toString (n / 200)}}.${{toString (n - n / 200 * 200 + 1)}}";
    }};
  }}) 500);
}}
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    hive = write_hive(tmp_path / "fleet", FLEET)
    (hive.parent / "b.nix").write_text('{ networking.hostName = "b"; }\n')
    return hive


def inventory(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def results(data: dict[str, object]) -> dict[str, str]:
    systems = data["systems"]
    assert isinstance(systems, dict)
    return {name: s["result"] for name, s in systems.items()}


def test_two_systems_500_instances_each_built_once(fleet: Path, build_log: Path) -> None:
    result = nix_hive("build", "-c", str(fleet))
    data = inventory(result)
    assert sorted(builds(build_log)) == ["a", "b"]  # 500 instances, two builds
    assert "build    a+b                         building nixos-system-a" in result.stderr  # Nix's progress
    # the group's one outcome, with its time; no line per system
    group = r"^\[ *\S+\] build    a\+b                         ok  \d+\.\ds$"
    assert re.search(group, result.stderr, re.M), result.stderr
    assert not re.search(r"build    [ab] ", result.stderr), result.stderr
    instances = data["instances"]
    assert isinstance(instances, dict) and len(instances) == 500
    assert instances["host-7"]["system"] == "a" and instances["host-7"]["tags"] == ["rack0"]
    paths = results(data)
    for name, path in paths.items():
        assert path.startswith("/nix/store/") and path.endswith(f"-nixos-system-{name}")
        assert Path(path, "bin/switch-to-configuration").exists()
        # kept as a GC root beside the state file
        root = fleet.parent / ".hive.state.d" / "gcroots" / name
        assert os.readlink(root) == path
    assert "Host host-499\n  BatchMode yes" in str(data["ssh"])
    assert data["paths"] == {"nixpkgs": str(STANDIN)}


def test_selection_builds_only_the_selected_systems(fleet: Path, build_log: Path) -> None:
    data = inventory(nix_hive("build", "-c", str(fleet), "host-1??"))
    assert builds(build_log) == ["a"]
    assert results(data)["b"] is None


def test_no_build_reuses_recorded_results(fleet: Path, build_log: Path) -> None:
    first = results(inventory(nix_hive("build", "-c", str(fleet))))
    again = nix_hive("build", "--no", "build", "-c", str(fleet))
    assert results(inventory(again)) == first
    assert sorted(builds(build_log)) == ["a", "b"]  # the builder did not run again
    assert "unchanged" in again.stderr and "build    a" in again.stderr
    # without --no, the step runs every time (Nix then finds nothing to do)
    plain = nix_hive("build", "-c", str(fleet))
    assert results(inventory(plain)) == first
    assert "unchanged" not in plain.stderr


def test_no_build_rebuilds_a_result_deleted_from_the_store(fleet: Path, build_log: Path) -> None:
    first = results(inventory(nix_hive("build", "-c", str(fleet))))
    root = fleet.parent / ".hive.state.d" / "gcroots" / "a"
    # the GC root protects the result ...
    refused = subprocess.run(["nix-store", "--delete", first["a"]], capture_output=True, text=True)
    assert refused.returncode != 0 and Path(first["a"]).exists()
    # ... until the user removes it; then the path goes, and --no build must notice (asking Nix)
    root.unlink()
    subprocess.run(["nix-store", "--delete", first["a"]], check=True, capture_output=True)
    assert not Path(first["a"]).exists()
    again = results(inventory(nix_hive("build", "--no", "build", "-c", str(fleet))))
    assert again == first and Path(first["a"]).exists()
    assert sorted(builds(build_log)) == ["a", "a", "b"]


def test_no_build_rebuilds_when_a_file_of_the_deployment_changed(fleet: Path, build_log: Path) -> None:
    first = results(inventory(nix_hive("build", "-c", str(fleet))))
    (fleet.parent / "b.nix").write_text('{ networking.hostName = "b"; standin.payloadBytes = 10; }\n')
    again = results(inventory(nix_hive("build", "--no", "build", "-c", str(fleet))))
    assert again["a"] == first["a"] and again["b"] != first["b"]
    assert sorted(builds(build_log)) == ["a", "b", "b"]


def test_no_build_rebuilds_when_paths_changed(fleet: Path, tmp_path: Path, build_log: Path) -> None:
    inventory(nix_hive("build", "-c", str(fleet)))
    other = tmp_path / "other-nixpkgs"
    subprocess.run(["cp", "-r", str(STANDIN), str(other)], check=True)
    same = nix_hive("build", "--no", "build", "-c", str(fleet))
    assert same.stderr.count("unchanged") == 2
    moved = nix_hive("build", "--no", "build", "-c", str(fleet), "-I", f"nixpkgs={other}")
    inventory(moved)
    # the build step ran again (Nix then found the same derivations: the copy is identical)
    assert "unchanged" not in moved.stderr and moved.stderr.count(" ok ") == 1  # a+b: one nix build


def test_a_broken_system_fails_alone(tmp_path: Path, build_log: Path) -> None:
    hive = write_hive(tmp_path / "h", f"""
        {{
          paths.nixpkgs = {STANDIN};
          systems.ok.configuration = {{ networking.hostName = "ok"; }};
          systems.broken.configuration = {{ networking.hostName = throw "no hostname for you"; }};
          instances.x = {{ system = "ok"; }};
          instances.y = {{ system = "broken"; }};
        }}
    """)
    result = nix_hive("build", "-c", str(hive))
    assert result.returncode == 1
    assert "build    broken" in result.stderr and "no hostname for you" in result.stderr
    assert "Traceback" not in result.stderr
    # same paths, so one group: the group's build failed, then each was built alone
    systems = json.loads(result.stdout)["systems"]
    assert systems["broken"]["result"] is None and Path(systems["ok"]["result"]).exists()
    assert builds(build_log) == ["ok"]
    # the group's one nix build built what it could, and says which failed
    group = r"build    ok\+broken                   ok  \S+ \(broken failed\)$"
    assert re.search(group, result.stderr, re.M), result.stderr


KILL_HIVE = f"""
{{
  paths.nixpkgs = {STANDIN};
  # different paths: three groups, three `nix build` calls, one after the other
  systems.one = {{ paths.group = "1"; configuration = {{ networking.hostName = "one"; }}; }};
  systems.two = {{ paths.group = "2"; configuration = {{ networking.hostName = "two"; }}; }};
  systems.slow = {{
    paths.group = "3";
    configuration = {{ networking.hostName = "slow"; standin.buildSeconds = builtins.getEnv "SLOW"; }};
  }};
  instances.i1 = {{ system = "one"; }};
  instances.i2 = {{ system = "two"; }};
  instances.i3 = {{ system = "slow"; }};
}}
"""


def test_state_file_survives_kill_9_in_the_middle_of_a_build(tmp_path: Path, build_log: Path) -> None:
    hive = write_hive(tmp_path / "k", KILL_HIVE)
    state_file = hive.parent / ".hive.state"
    argv = [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())",
            "build", "-c", str(hive), "i1", "i2", "i3"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "SLOW": "60"})
    try:
        wait_until(lambda: {"build:one", "build:two"} <= set(state.load(state_file)), 60,
                   "the builds of one and two are recorded")
        time.sleep(0.5)  # well inside the 60 s build of `slow`
        assert proc.poll() is None, "the slow build should still be running"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate()  # waits, and closes the stderr pipe
    recorded = state.load(state_file)  # readable, and keeps what finished before the kill
    # each system's build is recorded (its group's `nix-build:` task may be too)
    assert {t for t in recorded if t.startswith("build:")} == {"build:one", "build:two"}
    assert builds(build_log) == ["one", "two"]
    first = recorded["build:one"]["_values_:"]["result"]

    # The next run with --no build takes the recorded results and builds only what is missing.
    data = inventory(nix_hive("build", "--no", "build", "-c", str(hive), env={"SLOW": "0"}))
    assert results(data)["one"] == first
    assert builds(build_log) == ["one", "two", "slow"]


def test_list_tables_and_json(fleet: Path) -> None:
    table = nix_hive("list", "-c", str(fleet), "rack4")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["instance", "system", "store", "tags", "address"]
    assert sum(1 for ln in lines if ln.startswith("host-4")) == 100  # host-400 .. host-499
    assert any(ln.split()[:2] == ["b", "100"] for ln in lines)  # the system table
    as_json = nix_hive("list", "--json", "-c", str(fleet), "host-1")
    data = json.loads(as_json.stdout)
    assert data["instances"]["host-1"]["selected"] and not data["instances"]["host-2"]["selected"]
    assert data["systems"]["a"]["result"] is None  # list builds nothing


def test_commands_that_connect_to_nothing_write_no_ssh_files_of_instances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        ssh_writes: list[Path]) -> None:
    """Issue 29: list, plan, build (--no build) and ssh-config of 1,000 instances write the
    whole ssh_config and known_hosts where they need them, never an instance's own files
    (hive/ssh.py: those come with a connection to the instance)."""
    hive = write_hive(tmp_path / "big", FLEET.replace("500);", "1000);").replace(
        "ssh.Hostname =", 'ssh.ProxyJump = "jump"; ssh.Hostname ='))
    (hive.parent / "b.nix").write_text('{ networking.hostName = "b"; }\n')
    assert nix_hive("build", "-q", "-c", str(hive)).returncode == 0
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    generated = hive.parent / ".hive.state.d" / "ssh"
    for argv, files in ((["list"], []), (["plan"], []), (["build", "--no", "build"], ["known_hosts", "ssh_config"]),
                        (["ssh-config"], ["known_hosts", "ssh_config"])):
        ssh_writes.clear()
        assert cli.main([*argv, "-q", "-c", str(hive)]) == 0, capsys.readouterr().err
        assert gc.isenabled(), argv  # paused while the model is made, never longer (cli._kept)
        assert sorted(p.name for p in ssh_writes) == files, argv
        assert all(p.parent == generated for p in ssh_writes), argv
        assert not (generated / "h").exists() and list((tmp_path / "tmp").iterdir()) == [], argv
    assert "Host host-999\n" in capsys.readouterr().out  # ssh-config printed every block


def test_deployment_path_and_platform_reach_the_build(tmp_path: Path, build_log: Path) -> None:
    hive = write_hive(tmp_path / "p", f"""
        {{
          paths.nixpkgs = {STANDIN};
          systems.here = {{
            system = builtins.currentSystem;
            configuration = {{ imports = [ <deployment/modules/name.nix> ]; }};
          }};
          systems.arm = {{ system = "aarch64-linux"; configuration = {{ networking.hostName = "arm"; }}; }};
          instances.h.system = "here";
          instances.a.system = "arm";
        }}
    """)
    (hive.parent / "modules").mkdir()
    (hive.parent / "modules" / "name.nix").write_text('{ networking.hostName = "from-deployment-path"; }\n')
    ok = nix_hive("build", "-c", str(hive), "h")
    assert results(inventory(ok))["here"].endswith("-nixos-system-from-deployment-path")
    arm = nix_hive("build", "-c", str(hive), "a")
    assert arm.returncode == 1  # the platform is handed to Nix, which cannot build it here
    assert "aarch64-linux" in arm.stderr and "Traceback" not in arm.stderr


RELAYED = f"""
{{
  paths.nixpkgs = {STANDIN};
  systems.edge.configuration = {{ }};
  systems.web.configuration = {{ }};
  instances.portico = {{ system = "edge"; }};
  instances.www-1 = {{ system = "web"; store = "ssh://portico?compress=true"; ssh.ProxyJump = "portico"; }};
  instances.www-2 = {{ system = "web"; store = "ssh://portico?compress=true"; ssh.ProxyJump = "portico"; }};
}}
"""


def test_plan_shows_what_a_deployment_would_do_and_does_nothing(tmp_path: Path, build_log: Path) -> None:
    hive = write_hive(tmp_path / "h", RELAYED)
    shown = nix_hive("plan", "--json", "--no", "push", "-c", str(hive), "portico", "www-*")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["waves"] == [["portico"], ["www-1", "www-2"]]
    assert data["relays"] == [{"url": "ssh://portico?compress=true", "systems": ["edge", "web"], "owner": "portico",
                               "upstream": None, "upload": None}]
    tasks = {t["task"]: t for t in data["tasks"]}
    assert tasks["push:www-1"]["after"] == ["build:web", "wave:2", "store:ssh://portico?compress%3Dtrue"]
    assert tasks["push:www-1"]["skippable"] == "push" and tasks["activate:www-1"]["skippable"] is None
    assert data["builds"] == [{"systems": ["edge", "web"], "buildHost": None}]
    table = nix_hive("plan", "-c", str(hive), "portico", "www-*")
    assert table.returncode == 0 and "wave:2" in table.stdout and "nix-build:edge+web" in table.stdout
    assert builds(build_log) == [] and not (hive.parent / ".hive.state").exists()  # nothing built or written


def test_verbose_prints_every_command_as_it_starts(tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", RELAYED)
    out = nix_hive("build", "-v", "-c", str(hive), "www-1")
    assert out.returncode == 0, out.stderr
    commands = [ln for ln in out.stderr.splitlines() if ln.startswith("$ ")]
    assert any(" eval --json " in c for c in commands)
    assert any(" eval --impure --raw " in c and c.endswith(" web.drvPath") for c in commands)  # evaluated alone
    assert any(c.startswith("$ nix-store --realise /nix/store/") for c in commands)  # then built
    quiet = nix_hive("build", "-c", str(hive), "www-1")
    assert not any(ln.startswith("$ ") for ln in quiet.stderr.splitlines())


def test_no_build_walks_a_deployment_git_ignores(tmp_path: Path, build_log: Path) -> None:
    """The demo's deployment lives in an ignored directory of this repository: git sees none
    of its files, so they are walked instead (an edited module is built again)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored/\n")
    hive = write_hive(tmp_path / "ignored" / "fleet", FLEET)
    (hive.parent / "b.nix").write_text('{ networking.hostName = "b"; }\n')
    inventory(nix_hive("build", "-c", str(hive), "host-300"))
    assert builds(build_log) == ["b"]
    (hive.parent / "b.nix").write_text('{ networking.hostName = "b2"; }\n')
    inventory(nix_hive("build", "--no", "build", "-c", str(hive), "host-300"))
    assert builds(build_log) == ["b", "b2"]  # built again: the edit was seen
    inventory(nix_hive("build", "--no", "build", "-c", str(hive), "host-300"))
    assert builds(build_log) == ["b", "b2"]  # and not a third time


def test_no_build_without_inputs_says_so_and_builds(tmp_path: Path, build_log: Path) -> None:
    hive = write_hive(tmp_path / "h", f'{{ paths.nixpkgs = {STANDIN}; systems.a.configuration = {{ }}; '
                      'instances.i.system = "a"; }', name=".hidden-hive.nix")
    inventory(nix_hive("build", "-c", str(hive)))
    again = nix_hive("build", "--no", "build", "-c", str(hive))
    inventory(again)
    assert "warning: no input files found" in again.stderr and "unchanged" not in again.stderr


def test_a_system_that_fails_to_evaluate_fails_alone(tmp_path: Path, build_log: Path) -> None:
    """Systems are evaluated by processes of their own (in parallel): one whose evaluation
    throws fails alone, and the others of its build group are built."""
    hive = write_hive(tmp_path / "h", f"""
    {{
      paths.nixpkgs = {STANDIN};
      systems.good.configuration = {{ networking.hostName = "good"; }};
      systems.bad.configuration = {{ networking.hostName = throw "bad is broken on purpose"; }};
      instances.i1.system = "good";
      instances.i2.system = "bad";
    }}
    """)
    result = nix_hive("build", "--eval-jobs", "2", "-c", str(hive))
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["systems"]["good"]["result"] and data["systems"]["bad"]["result"] is None
    assert builds(build_log) == ["good"]
    assert "bad is broken on purpose" in result.stderr
    bad = nix_hive("build", "--eval-jobs", "0", "-c", str(hive))
    assert bad.returncode == 2 and "--eval-jobs '0'" in bad.stderr


def test_a_system_that_cannot_be_evaluated_is_one_line_naming_it(tmp_path: Path) -> None:
    """A module file that is not there: one line naming systems.b.configuration, not Nix's
    trace through nix-hive's own nix/build.nix, printed once (issue 28); --show-trace prints
    Nix's whole output under it."""
    hive = write_hive(tmp_path / "fleet", FLEET)  # b.nix is missing
    result = nix_hive("build", "-c", str(hive))
    assert result.returncode == 1
    said = [ln for ln in result.stderr.splitlines() if " b " in f" {ln} " or "b.nix" in ln]
    assert len(said) == 1, result.stderr
    assert "hive.nix: systems.b.configuration: cannot evaluate: " in said[0] and "b.nix" in said[0]
    assert "build.nix" not in result.stderr and "--show-trace: Nix's whole trace" in said[0]
    traced = nix_hive("build", "--show-trace", "-c", str(hive))
    assert traced.returncode == 1 and "    | " in traced.stderr and "b.nix" in traced.stderr


def test_a_paths_entry_that_cannot_be_downloaded_is_one_line_naming_it(tmp_path: Path) -> None:
    """Offline (here: a port nothing listens on), `paths.nixpkgs = "http://…"`: one line per
    system naming paths.nixpkgs, the URL and why, not Nix's retries and trace."""
    url = "http://127.0.0.1:9/nixexprs.tar.xz"
    hive = write_hive(tmp_path / "fleet", FLEET.replace(f"paths.nixpkgs = {STANDIN};", f'paths.nixpkgs = "{url}";'))
    (hive.parent / "b.nix").write_text('{ networking.hostName = "b"; }\n')
    result = nix_hive("build", "-c", str(hive))
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if "cannot evaluate" in ln]
    assert len(lines) == 2 and len(result.stderr.splitlines()) <= 4, result.stderr  # a, b, the group's two lines
    for line in lines:
        assert f"hive.nix: paths.nixpkgs: cannot evaluate: cannot download {url}: " in line, line
    assert "retrying" not in result.stderr and "warning" not in result.stderr
