"""Switch inhibitors (NixOS's system.switch.inhibitors): a host whose new system changes one is
not switched (NixOS's own check would refuse it, after the profile moved), unless told so;
`--reboot=auto` counts it as needing a reboot. Real hosts, real ssh, the stand-in's pre-switch
check (tests/nixpkgs/nixos/default.nix) behind nix-hive's (hive/host/inhibitors.sh)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from hive import reboot, resources
from tests.conftest import REPO, needs_lab
from tests.fleet import Fleet

Start = Callable[..., Fleet]
SOURCE = REPO / "tests" / "hives" / "inhibitors"
TOPOLOGY = {"a": ["pub"], "b": ["pub"]}


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert result.stdout, result.stderr
    return {row["instance"]: row for row in json.loads(result.stdout)["instances"]}


def inhibited(tmp_path: Path, old: dict[str, str] | None, new: dict[str, str] | None) -> str:
    """hive/host/inhibitors.sh's `inhibited` on two systems made of a switch-inhibitors file."""
    for name, value in (("old", old), ("new", new)):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        if value is not None:
            (tmp_path / name / "switch-inhibitors").write_text(json.dumps(value, separators=(",", ":")))
    script = resources.host_script("inhibitors.sh") + '\ninhibited "$1" "$2"\n'
    out = subprocess.run(["sh", "-c", script, "sh", str(tmp_path / "old"), str(tmp_path / "new")],
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_an_inhibitor_present_in_both_systems_with_another_value_inhibits(tmp_path: Path) -> None:
    old = {"dbus": "/nix/store/x-dbus-1.14", "systemd": "/nix/store/y-systemd-255", "q": 'a"b\\c'}
    assert inhibited(tmp_path / "1", old, {**old, "dbus": "/nix/store/z-dbus-1.16", "q": 'a"b\\d'}) == (
        "dbus : /nix/store/x-dbus-1.14 -> /nix/store/z-dbus-1.16\nq : a\"b\\c -> a\"b\\d\n")
    # added or removed inhibitors, an unchanged file, a system without the file: nothing
    assert inhibited(tmp_path / "2", old, {"systemd": old["systemd"], "new": "x"}) == ""
    assert inhibited(tmp_path / "3", old, old) == ""
    assert inhibited(tmp_path / "4", old, None) == inhibited(tmp_path / "5", None, old) == ""


def test_reboot_needs_reads_the_inhibitors_word() -> None:
    assert reboot.parse_needs("needs switch-inhibitors\n") == ("switch-inhibitors",)
    assert reboot.parse_needs("needs kernel switch-inhibitors\n") == ("kernel", "switch-inhibitors")


@needs_lab
def test_a_changed_inhibitor_is_not_switched_unless_told(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, init="plain")
    first = fleet.deploy("--json")
    assert first.returncode == 0, first.stderr
    before = {h: fleet.lab.current_system(h) for h in TOPOLOGY}
    profile = {h: fleet.lab.run(h, ["readlink", "/nix/var/nix/profiles/system"]).stdout for h in TOPOLOGY}

    # another hello, the same inhibitor: a switch like any
    fleet.env["HIVE_HELLO"] = "2.13"
    second = fleet.deploy("--json", "a")
    assert second.returncode == 0, second.stderr
    assert fleet.lab.current_system("a") == rows(second)["a"]["path"] != before["a"]
    before["a"] = fleet.lab.current_system("a")
    profile["a"] = fleet.lab.run("a", ["readlink", "/nix/var/nix/profiles/system"]).stdout

    # the inhibitor changes: refused before anything moved, naming it and what to do
    fleet.env["HIVE_DBUS"] = "dbus-1.16"
    refused = fleet.deploy("--json")
    assert refused.returncode == 1, refused.stderr
    for host, row in rows(refused).items():
        assert row["outcome"] == "failed", row
        assert "switch inhibitors changed (dbus : dbus-1.14 -> dbus-1.16)" in str(row["reason"]), row
        assert "--ignore-inhibitors" in str(row["reason"]) and "--reboot" in str(row["reason"])
        assert fleet.lab.current_system(host) == before[host]
        assert fleet.lab.run(host, ["readlink", "/nix/var/nix/profiles/system"]).stdout == profile[host]
    assert "Traceback" not in refused.stderr

    # told so: switched, and the stand-in's own check was told too (NIXOS_NO_CHECK=1)
    forced = fleet.deploy("--json", "--ignore-inhibitors", "b")
    assert forced.returncode == 0, forced.stderr
    assert fleet.lab.current_system("b") == rows(forced)["b"]["path"] != before["b"]
    assert fleet.lab.current_system("a") == before["a"]
