"""What a deployment will do, before it does it (hive/preview.py): a dry activation on one host
of each group, its unit changes counted over the fleet, the changes that can cut a host off
called out, and `deploy --confirm` on a terminal. Real systemd hosts, real ssh, the stand-in's
NixOS-like dry-activate (tests/nixpkgs/nixos/default.nix), tests/hives/preview."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from tests.conftest import REPO, STANDIN, needs_lab
from tests.fleet import Fleet

pytestmark = needs_lab
Start = Callable[..., Fleet]
WEB = [f"web-{n}" for n in range(1, 6)]
DB = [f"db-{n}" for n in range(1, 6)]
TOPOLOGY = {h: ["pub"] for h in WEB + DB}


def nix_hive(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return fleet.run(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")


def asked(fleet: Fleet, answer: str, *args: str) -> tuple[int, str, str, str]:
    """`nix-hive ARGS` on a terminal (Fleet.answered), its question answered `answer`."""
    return fleet.answered(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", prompt=b"[y/N]", answer=answer)


def activations(fleet: Fleet) -> dict[str, int]:
    return {h: len(fleet.lab.activations(h)) for h in TOPOLOGY}


def test_a_fleet_preview_dry_runs_once_per_group_and_confirm_gates_the_deploy(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TOPOLOGY, source=REPO / "tests" / "hives" / "preview")  # systemd hosts
    first = fleet.deploy("--json")
    assert first.returncode == 0, first.stderr
    before = {h: fleet.lab.current_system(h) for h in TOPOLOGY}
    switched = activations(fleet)
    for h in TOPOLOGY:  # as if each had booted what it runs (NixOS's /run/booted-system, which the lab's
        fleet.lab.run(h, ["sh", "-c", "ln -sfn $(readlink /run/current-system) /run/booted-system"])  # start has not)

    fleet.env["PREVIEW_SET"] = "B"
    fleet.lab.run("db-5", ["sh", "-c", "for i in $(ls /sys/class/net); do [ $i = lo ] || ip link set $i down; done"])
    found = nix_hive(fleet, "diff", "--json", "--connect-timeout", "3")
    assert found.returncode == 1, found.stderr  # db-5 did not answer; the others' diff is there
    data = json.loads(found.stdout)
    groups = {tuple(g["systems"]): g for g in data["groups"]}
    web, db = groups[("web",)], groups[("db",)]
    assert web["instances"] == WEB and db["instances"] == DB[:4]
    assert [h["instance"] for h in data["hosts"] if h["state"] == "unreachable"] == ["db-5"]
    # one dry activation per group, on its first host
    assert web["dryRun"]["host"] == "web-1" and db["dryRun"]["host"] == "db-1"
    assert web["dryRun"]["units"]["restart"] == ["app.service", "sshd.service"]
    assert db["dryRun"]["units"]["reload"] == ["worker.service"] and db["dryRun"]["units"]["restart"] == []
    assert db["dryRun"]["inhibited"] is True and web["dryRun"]["inhibited"] is False, json.dumps(db["dryRun"])
    assert set(db["dryRun"]["reboot"]) == {"initrd", "kernel"} and web["dryRun"]["reboot"] is None
    # fleet-wide, each unit once with its hosts, the dangerous first
    units = [(u["unit"], u["change"], u["hosts"], u["danger"]) for u in data["units"]]
    assert units == [("sshd.service", "restart", 5, "ssh"), ("app.service", "restart", 5, None),
                     ("worker.service", "reload", 4, None)]
    dangers = data["dangers"]
    assert any(d.startswith("sshd.service restarts (ssh) on web-1…web-5 (5 hosts)") and "after 12 s" in d
               for d in dangers), dangers
    assert any(d.startswith("initrd, kernel change on db-1…db-4 (4 hosts)") for d in dangers), dangers
    assert any(d.startswith("switch inhibitors change on db-1…db-4") for d in dangers), dangers
    # deploy --goal dry-activate: each host's own dry activation, in its summary line and --json
    dry = fleet.deploy("--json", "--goal", "dry-activate", "--no", "build", "web-1", "web-2")
    assert dry.returncode == 0, dry.stderr
    for row in json.loads(dry.stdout)["instances"]:
        assert row["outcome"] == "ok", row
        assert row["reason"] == "would restart app.service, sshd.service (ssh)", row
        assert row["dryRun"]["units"]["restart"] == ["app.service", "sshd.service"], row
        assert row["dryRun"]["systemdRestarts"] is False
    # the dry runs changed nothing: every host runs what it ran, none switched again
    assert {h: fleet.lab.current_system(h) for h in TOPOLOGY if h != "db-5"} == {
        h: p for h, p in before.items() if h != "db-5"}
    assert activations(fleet) == switched

    # for a person: the same, the dangerous units marked, the call-outs last
    shown = nix_hive(fleet, "diff", "--connect-timeout", "3")
    print(shown.stdout)
    assert shown.returncode == 1
    assert "! sshd.service" in shown.stdout and "changes that can cut a host off" in shown.stdout
    assert "\x1b[" not in shown.stdout  # no colour into a pipe

    fleet.lab.run("db-5", ["sh", "-c", "for i in $(ls /sys/class/net); do [ $i = lo ] || ip link set $i up; done"])
    # --confirm without a terminal: refused before anything starts
    refused = fleet.deploy("--confirm")
    assert refused.returncode == 2 and "asks on a terminal" in refused.stderr, refused.stderr
    # answered no: nothing deployed
    code, out, err, terminal = asked(fleet, "n", "deploy", "--confirm")
    assert code == 1 and "nothing deployed" in err, err
    assert "Deploy to 10 hosts? [y/N]" in terminal
    assert "sshd.service" in out  # the diff was shown first
    assert {h: fleet.lab.current_system(h) for h in TOPOLOGY} == before
    assert activations(fleet) == switched
    # answered yes: deployed (db's inhibitor overridden), and the diff is in the summary
    code, out, err, _ = asked(fleet, "y", "deploy", "--confirm", "--ignore-inhibitors", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["diff"]["groups"]) == 2 and summary["diff"]["changing"] == 10
    for row in summary["instances"]:
        assert row["outcome"] == "ok" and fleet.lab.current_system(row["instance"]) == row["path"]
        assert row["path"] != before[row["instance"]]
    # nothing left to change: said, and nothing asked
    again = fleet.deploy("--confirm", "--json", "--no", "build,push,activate")
    assert again.returncode == 2  # still no terminal: refused first, whatever would change
    calm = nix_hive(fleet, "diff")
    assert calm.returncode == 0 and "nothing changes on the selected hosts" in calm.stdout, calm.stdout
