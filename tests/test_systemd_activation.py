"""The activation path every NixOS host takes, on lab hosts whose PID 1 is systemd (257):
the detached activation as a transient unit, rollbacks (the defect these tests were written
for: systemd expanded `${…}` and `$$` in the unit's command line, so every rollback failed),
a hung activation stopped with no unit left, a system that stops sshd restoring itself, a
unit that fails to start failing the switch, and reboots into the boot entry. What happened
is read from the host's own systemd and journal, not from nix-hive's output. One test keeps
the `setsid` path on a plain host."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import REPO, needs_lab
from tests.fleet import Fleet
from tests.test_rollouts import deploy, paths, reachable, rows

pytestmark = needs_lab
TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"]}
SOURCE = REPO / "tests" / "hives" / "rollouts"
Start = Callable[..., Fleet]


def start(fleet_factory: Start, init: str = "systemd") -> tuple[Fleet, dict[str, str]]:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=4096, init=init)
    first = deploy(fleet, "v1", "portico", "*")
    assert first.returncode == 0, first.stderr
    v1 = paths(fleet, "v1")
    assert fleet.lab.current_system("www-1") == v1["web"]
    return fleet, v1


def host(fleet: Fleet, *argv: str) -> str:
    return fleet.lab.run("www-1", list(argv), check=False).stdout.strip()


def activation_units(fleet: Fleet) -> list[str]:
    """The host's nix-hive-activate-* units systemd still knows (running, failed or not yet
    collected)."""
    out = host(fleet, "systemctl", "list-units", "--all", "--plain", "--no-legend", "nix-hive-activate-*")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def activation_journal(fleet: Fleet) -> str:
    return host(fleet, "journalctl", "--no-pager", "-o", "cat", "-u", "nix-hive-activate-*")


def profile(fleet: Fleet) -> str:
    return host(fleet, "readlink", "-f", "/nix/var/nix/profiles/system")


def states(fleet: Fleet) -> list[str]:
    """Every activation's final state on the host, oldest first."""
    return host(fleet, "sh", "-c", "cat $(ls -d /run/nix-hive/*/ | sort | sed 's|$|state|')").splitlines()


@pytest.mark.parametrize("init", ["systemd", "plain"])
def test_a_failed_activation_rolls_back(fleet_factory: Start, init: str) -> None:
    fleet, v1 = start(fleet_factory, init)
    result = deploy(fleet, "fail", "www-1")
    assert result.returncode == 1
    assert rows(result)["www-1"]["outcome"] == "rolled back", result.stderr
    assert fleet.lab.current_system("www-1") == v1["web"] and profile(fleet) == v1["web"]
    assert states(fleet)[-1] == "rolled-back failed-1"
    if init == "systemd":
        # the host's systemd ran both activations as transient units, and collected them
        journal = activation_journal(fleet)
        assert journal.count("Started nix-hive-activate-") == 2, journal
        assert activation_units(fleet) == []
        assert host(fleet, "cat", "/boot/standin/default") == v1["web"]  # the boot entry is back too
    else:  # the setsid path: no systemd on the host
        assert host(fleet, "sh", "-c", "test -d /run/systemd/system || echo none") == "none"


def test_a_hung_activation_is_stopped_and_leaves_no_unit(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    result = deploy(fleet, "hang", "--activation-timeout", "3", "www-1")
    row = rows(result)["www-1"]
    assert row["outcome"] == "rolled back" and "timed out after 3 s" in str(row["reason"]), result.stderr
    assert states(fleet)[-1] == "rolled-back timed-out"
    assert activation_units(fleet) == []
    assert host(fleet, "pgrep", "-f", "sleep 100000") == ""  # the hung switch is gone with its unit
    # the host neither runs nor boots the hung system
    assert fleet.lab.current_system("www-1") == v1["web"] and profile(fleet) == v1["web"]
    assert host(fleet, "cat", "/boot/standin/default") == v1["web"]


def test_a_system_that_stops_sshd_restores_itself(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    result = deploy(fleet, "nossh", "www-1")
    row = rows(result)["www-1"]
    assert row["outcome"] == "rolled back" and "confirmation" in str(row["reason"]), result.stderr
    assert states(fleet)[-1] == "rolled-back not-confirmed"
    assert host(fleet, "systemctl", "is-active", "sshd.service") == "active"
    assert "Stopped" in fleet.lab.journal("www-1", "sshd.service")  # the new system did stop it
    assert reachable(fleet, "www-1")
    assert fleet.lab.current_system("www-1") == v1["web"]


def test_a_unit_that_fails_to_start_fails_the_switch_and_rolls_back(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    assert host(fleet, "systemctl", "is-active", "standin-http.service") == "active"
    result = deploy(fleet, "brokenunit", "www-1")
    row = rows(result)["www-1"]
    assert row["outcome"] == "rolled back" and "exit 4" in str(row["reason"]), result.stderr
    assert "broken.service" in fleet.lab.journal("www-1", "broken.service")
    # it ran and failed ("inactive" would also be a unit that never ran)
    assert host(fleet, "systemctl", "is-failed", "broken.service") == "failed"
    # the rollback's switch removed the unit and restarted the old system's health server
    assert host(fleet, "sh", "-c", "test -e /run/systemd/system/broken.service || echo gone") == "gone"
    assert host(fleet, "systemctl", "is-active", "standin-http.service") == "active"
    assert fleet.lab.current_system("www-1") == v1["web"] and profile(fleet) == v1["web"]


def test_a_reboot_boots_the_default_entry_and_a_oneshot_once(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    v2 = paths(fleet, "v2")["web"]
    result = deploy(fleet, "v2", "--goal", "boot", "www-1")
    assert result.returncode == 0, result.stderr
    assert fleet.lab.current_system("www-1") == v1["web"]  # boot: for the next boot only
    assert host(fleet, "cat", "/boot/standin/default") == v2
    fleet.lab.reboot("www-1")
    assert fleet.lab.system_state("www-1") == "running"
    assert fleet.lab.current_system("www-1") == v2
    assert fleet.lab.boots("www-1")[-1].system == v2
    assert host(fleet, "systemctl", "is-active", "standin-http.service") == "active"  # started at boot
    # a one-shot entry: the next boot only
    fleet.lab.run("www-1", ["sh", "-c", f"echo {v1['web']} > /boot/standin/oneshot"])
    fleet.lab.reboot("www-1")
    assert fleet.lab.current_system("www-1") == v1["web"]
    fleet.lab.reboot("www-1")
    assert fleet.lab.current_system("www-1") == v2
    assert reachable(fleet, "www-1")



def test_an_activation_is_followed_over_one_channel_and_confirmed_over_one_new_login(fleet_factory: Start) -> None:
    """What nix-hive runs for one host (`-v`): one ssh call starts the activation and follows
    it to its confirmation window (no look after look at its state), the checks, one new
    login that confirms it and follows it to its end, and the shared connection's exit."""
    fleet, v1 = start(fleet_factory)
    fleet.env["ROLLOUT_VARIANT"] = "v2"
    out = fleet.deploy("--json", "-v", "www-1")
    assert fleet.lab.current_system("www-1") not in (None, v1["web"])
    assert out.returncode == 0, out.stderr
    assert rows(out)["www-1"]["outcome"] == "ok" and states(fleet)[-1] == "confirmed"
    commands = ["$ " + c for c in out.stderr.split("\n$ ")[1:]]  # each with its (multi-line) script
    mine = [c for c in commands if c.startswith("$ ssh") and " -- www-1 " in c.splitlines()[0]]
    assert len([c for c in mine if " sh start " in c]) == 1
    [confirm] = [c for c in mine if " sh confirm " in c]
    assert "ControlPath=none" in confirm.splitlines()[0]  # a new login: proof the new system lets us in
    assert not [c for c in mine if "cat /run/nix-hive/" in c]  # no polling
    assert len(mine) <= 5, "\n".join(c.splitlines()[0] for c in mine)  # start, 2 checks, confirm, exit
