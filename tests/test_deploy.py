"""Deploying for real in the lab: the seed's example topology, relay stores, signed paths,
activation order, pinned host keys, a non-root user with sudo, and the ssh tools.

Each test starts its own fleet (network namespaces, sshd, a Nix store per host); nix-hive
runs in the deployer's namespace, from which the www hosts are reachable only through
portico. Bytes are read from the deployer's link counter.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, STANDIN, needs_lab
from tests.fleet import Fleet, closure_bytes

pytestmark = needs_lab
KIB = 1024
WWW = ("www-1", "www-2", "www-3")
Start = Callable[..., Fleet]


def outcome(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    data = json.loads(result.stdout)
    return {row["instance"]: row for row in data["instances"]}


def activation_time(fleet: Fleet, host: str) -> float:
    lines = fleet.lab.activations(host)
    assert len(lines) == 1, lines
    return float(lines[0].split()[0])


def test_example_portico_first_through_the_relay(fleet_factory: Start, build_log: Path) -> None:
    fleet = fleet_factory()
    before = fleet.lab.tx_bytes()
    result = fleet.deploy("--json", "portico", "*")
    sent = fleet.lab.tx_bytes() - before
    assert result.returncode == 0, result.stderr
    rows = outcome(result)
    assert sorted(builds_of(build_log)) == ["portico", "www"]  # each system built once
    for host in ("portico", *WWW):
        assert rows[host]["outcome"] == "ok"
        assert fleet.lab.current_system(host) == rows[host]["path"]
        profile = fleet.lab.run(host, ["readlink", "-f", "/nix/var/nix/profiles/system"]).stdout.strip()
        assert profile == rows[host]["path"]
    portico_path, www_path = str(rows["portico"]["path"]), str(rows["www-1"]["path"])
    assert portico_path.endswith("-nixos-system-portico") and www_path.endswith("-nixos-system-www")
    # portico first, then the www hosts, each activated once
    assert all(activation_time(fleet, "portico") < activation_time(fleet, h) for h in WWW)
    # the www hosts took their closure from portico, not from the deployer
    assert fleet.lab.run("portico", ["nix-store", "--check-validity", www_path]).returncode == 0
    portico_log = fleet.lab.sshd_log("portico")
    for host in WWW:  # each www host logged in to portico itself, to substitute
        assert f"Accepted publickey for root from {fleet.lab.hosts[host].address} " in portico_log
    closures = closure_bytes(portico_path) + closure_bytes(www_path)
    per_www = (sent - closures) / len(WWW)
    print(f"\nfull deploy: deployer sent {sent} bytes; closures portico+www {closures} bytes; "
          f"beyond them {sent - closures} bytes, {per_www:.0f} bytes per www host")
    # the www closure (2 MB) left the deployer once: beyond the closures, each host's own traffic
    # (the relay's copy, ssh handshakes, the host scripts sent whole with each activation's start
    # and confirmation, the first connection's question, the follow channel's lines while the
    # host works). It varies with the machine's load: 66 KB per www host when the previous
    # release measured it, 97 to 170 KB on 2026-12-07 (170 KB with a 1,000-host lab running
    # beside). The bound proves what matters: a second copy of the www closure would add all of it
    assert sent < closures + 3 * closure_bytes(www_path) // 4
    # progress and order as the user sees it
    assert result.stderr.index("activate portico") < result.stderr.index("push     www-1")
    # the signing key never reached a store: not as a path, not inside a closure
    secret = (fleet.hive / "secrets" / "hive.sec").read_text().strip().split(":", 1)[1]
    assert not list(Path("/nix/store").glob("*hive.sec*"))
    closure = subprocess.run(["nix-store", "-qR", portico_path, www_path], capture_output=True, text=True,
                             check=True).stdout.split()
    found = subprocess.run(["grep", "-rlF", secret, *closure], capture_output=True, text=True)
    assert found.stdout == "", found.stdout


def builds_of(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_each_www_host_costs_the_deployer_under_64_kib(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    first = fleet.deploy("portico", "www-1")
    assert first.returncode == 0, first.stderr
    before = fleet.lab.tx_bytes()
    second = fleet.deploy("www-2", "www-3")
    sent = fleet.lab.tx_bytes() - before
    assert second.returncode == 0, second.stderr
    print(f"\ntwo more www hosts behind portico: {sent} bytes, {sent / 2:.0f} per host")
    assert sent / 2 < 64 * KIB


def test_chained_relays_each_closure_leaves_the_deployer_once(fleet_factory: Start) -> None:
    """portico relays for eu, eu for w1 and w2 (two jumps away): the deployer sends every
    closure to portico only; eu substitutes from portico, the w hosts from eu."""
    topology = {"portico": ["pub", "a"], "eu": ["a", "b"], "w1": ["b"], "w2": ["b"]}
    fleet = fleet_factory(topology=topology, relays={"eu": "portico", "w1": "eu", "w2": "eu"},
                          source=REPO / "tests" / "hives" / "chain", payload_bytes=4_000_000)
    before = fleet.lab.tx_bytes()
    result = fleet.run("deploy", "--json", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "portico", "eu", "*")
    sent = fleet.lab.tx_bytes() - before
    assert result.returncode == 0, result.stderr
    rows = outcome(result)
    paths = {str(rows[h]["system"]): str(rows[h]["path"]) for h in ("portico", "eu", "w1")}
    for host in fleet.lab.hosts:
        assert fleet.lab.current_system(host) == rows[host]["path"]
    closures = sum(closure_bytes(p) for p in paths.values())
    print(f"\nchained relays: deployer sent {sent} bytes for closures of {closures} bytes")
    # each closure once, to portico: beyond them 70 to 85 KiB per host on a quiet machine, 115
    # KiB with a 1,000-host lab running beside, 760 KB in all in CI at stop 29 (Nix 2.8's ssh store
    # sends about 290 KB per copy whatever its size): with 1 MB closures that sat at the budget, so
    # they are 4 MB; a closure sent twice would add at least the smallest, 3 MB past the budget's 3
    assert sent < closures + 3 * min(closure_bytes(p) for p in paths.values()) // 4, (sent, closures)
    logs = {h: fleet.lab.sshd_log(h) for h in ("portico", "eu")}
    assert f"Accepted publickey for root from {fleet.lab.hosts['eu'].addresses['a']} " in logs["portico"]
    for host in ("w1", "w2"):
        assert f"Accepted publickey for root from {fleet.lab.hosts[host].address} " in logs["eu"]


def test_an_ssh_ng_relay_store_serves_the_host_behind_it(fleet_factory: Start) -> None:
    """`store = "ssh-ng://portico"`: the deployer copies the web closure to portico over Nix's
    daemon protocol, once; www-1, whose only substituter is ssh-ng://portico, fetches it from
    there (its own login on portico), then activates."""
    fleet = fleet_factory(topology={"portico": ["pub", "int"], "www-1": ["int"]},
                          relays={"www-1": "ssh-ng://portico"}, source=REPO / "tests" / "hives" / "relay-ng",
                          payload_bytes=3_500_000)  # its own size: test_buildhost_lab's web system is
    # the same configuration, with 4 MB, and must never be built on the deployer
    assert "substituters = ssh-ng://portico" in (fleet.lab.read("www-1", "/etc/nix/nix.conf") or "")
    before = fleet.lab.tx_bytes()
    result = fleet.run("deploy", "--json", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    sent = fleet.lab.tx_bytes() - before
    assert result.returncode == 0, result.stdout + result.stderr
    rows = outcome(result)
    for host in ("portico", "www-1"):
        assert rows[host]["outcome"] == "ok" and fleet.lab.current_system(host) == rows[host]["path"], rows
    web = str(rows["www-1"]["path"])
    assert fleet.lab.run("portico", ["nix-store", "--check-validity", web]).returncode == 0
    assert f"Accepted publickey for root from {fleet.lab.hosts['www-1'].address} " in fleet.lab.sshd_log("portico")
    closures = closure_bytes(str(rows["portico"]["path"])) + closure_bytes(web)
    print(f"\nssh-ng relay: deployer sent {sent} bytes for closures of {closures} bytes")
    # the web closure (3.5 MB) left the deployer once, to portico: what else went (each host's own
    # traffic: ssh handshakes, host scripts, the copies' protocol; 330 to 511 KB on 2026-12-07,
    # more on a loaded machine: with a 1 MB closure that was too near the budget) is under what a
    # second copy of it would add
    assert sent < closures + 3 * closure_bytes(web) // 4


def test_unsigned_paths_are_not_taken_from_the_relay(fleet_factory: Start, tmp_path: Path) -> None:
    """Without the signing key the www hosts refuse portico's paths, and the closure has to
    come from the deployer again: the signature is what makes the relay work."""
    fleet = fleet_factory()
    (fleet.hive / "secrets" / "hive.sec").rename(tmp_path / "moved.sec")
    first = fleet.deploy("portico", "www-1")
    assert first.returncode == 0, first.stderr
    before = fleet.lab.tx_bytes()
    second = fleet.deploy("www-2")
    sent = fleet.lab.tx_bytes() - before
    assert second.returncode == 0, second.stderr
    print(f"\nunsigned: one www host cost the deployer {sent} bytes")
    assert sent > fleet.payload_bytes
    assert "warning: no signingKey" in second.stderr


def test_redeploy_changes_nothing(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    first = fleet.deploy("--json", "portico", "*")
    assert first.returncode == 0, first.stderr
    paths = {h: fleet.lab.current_system(h) for h in fleet.lab.hosts}
    before = fleet.lab.tx_bytes()
    again = fleet.deploy("--json", "portico", "*")
    sent = fleet.lab.tx_bytes() - before
    assert again.returncode == 0, again.stderr
    assert {h: fleet.lab.current_system(h) for h in fleet.lab.hosts} == paths
    for host in fleet.lab.hosts:
        gens = fleet.lab.run(host, ["nix-env", "--list-generations", "-p", "/nix/var/nix/profiles/system"])
        assert len(gens.stdout.strip().splitlines()) == 1, gens.stdout  # no new generation
        assert len(fleet.lab.activations(host)) == 2  # without --no, activation runs again
    print(f"\nsecond deploy, nothing changed: deployer sent {sent} bytes")
    assert sent < 4 * 64 * KIB


def test_wrong_host_key_is_refused_and_named(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    discovered = json.loads((fleet.hive / "instances.json").read_text())
    discovered["www-2"]["hostKey"] = discovered["www-1"]["hostKey"]  # not www-2's key
    (fleet.hive / "instances.json").write_text(json.dumps(discovered))
    result = fleet.deploy("--json", "portico", "*")
    assert result.returncode == 1
    rows = outcome(result)
    assert rows["www-2"]["outcome"] == "failed"
    assert str(rows["www-2"]["reason"]).startswith("unreachable: its host key is not instances.www-2.hostKey "
                                                    "(it offered ED25519 SHA256:")
    assert fleet.lab.current_system("www-2") is None
    for host in ("portico", "www-1", "www-3"):
        assert rows[host]["outcome"] == "ok"
        assert fleet.lab.current_system(host) == rows[host]["path"]


def test_non_root_user_deploys_through_sudo(fleet_factory: Start) -> None:
    fleet = fleet_factory(user="deploy")
    result = fleet.deploy("--json", "portico", "*")
    assert result.returncode == 0, result.stderr
    rows = outcome(result)
    deployer = fleet.lab.deployer_address
    for host in fleet.lab.hosts:
        assert fleet.lab.current_system(host) == rows[host]["path"]
        assert fleet.lab.activations(host)[0].split()[-1] == "root"  # switched as root, via sudo
        sshd = fleet.lab.sshd_log(host).splitlines()
        accepted = [ln for ln in sshd if ln.startswith("Accepted publickey for ")]
        if host != "portico":  # only the deployer (through portico) logs in to a www host
            assert accepted and all(ln.split()[3] == "deploy" for ln in accepted), accepted
        else:  # root logins on portico are the www hosts substituting from it
            mine = [ln for ln in accepted if f" from {deployer} " in ln]
            assert mine and all(ln.split()[3] == "deploy" for ln in mine), mine


def test_relay_store_of_another_kind_is_passed_to_nix(fleet_factory: Start, tmp_path: Path) -> None:
    """A file:// binary cache as the relay store: nix-hive hands the URL to `nix copy`."""
    fleet = fleet_factory()
    cache = tmp_path / "cache"
    default = (fleet.hive / "default.nix").read_text()
    (fleet.hive / "default.nix").write_text(default.replace('store = "ssh://portico";', f'store = "file://{cache}";'))
    result = fleet.deploy("--json", "portico", "www-1")
    assert result.returncode == 0, result.stderr
    assert list(cache.glob("*.narinfo")), "the relay copy did not reach the file:// store"
    assert fleet.lab.current_system("www-1") == outcome(result)["www-1"]["path"]


def test_ssh_tools_through_the_jump_host(fleet_factory: Start, tmp_path: Path) -> None:
    fleet = fleet_factory()
    c = ["-c", str(fleet.hive)]
    config = fleet.run("ssh-config", *c)
    assert config.returncode == 0
    assert "Host www-2\n" in config.stdout and "ProxyJump portico" in config.stdout

    who = fleet.run("ssh", *c, "www-2", "hostname")
    assert who.returncode == 0, who.stderr
    assert who.stdout.strip() == "www-2"

    everywhere = fleet.run("run", *c, "www-*", "--", "hostname")
    assert everywhere.returncode == 0, everywhere.stderr
    assert sorted(everywhere.stdout.splitlines()) == [f"{h} | {h}" for h in WWW]

    some_fail = fleet.run("run", *c, "*", "--", 'test "$(hostname)" != www-2')
    assert some_fail.returncode == 1
    assert [ln for ln in some_fail.stderr.splitlines() if ln.startswith("failed:")] == [
        "failed: www-2: exit status 1"]

    fleet.lab.run("www-3", ["sh", "-c", "echo hello from www-3 > /run/greeting"])
    local = tmp_path / "greeting"
    copied = fleet.run("scp", *c, "www-3:/run/greeting", str(local))
    assert copied.returncode == 0, copied.stderr
    assert local.read_text() == "hello from www-3\n"

    unknown = fleet.run("ssh", *c, "www-9", "true")
    assert unknown.returncode == 2 and "'www-9' is not an instance" in unknown.stderr


def test_unreachable_host_is_named_and_the_rest_deployed(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    fleet.lab.run("www-3", ["ip", "link", "set", "eth0", "down"])  # cut off from portico
    result = fleet.deploy("--json", "portico", "*")
    assert result.returncode == 1
    rows = outcome(result)
    assert rows["www-3"]["outcome"] == "failed" and "www-3" in result.stderr
    assert [rows[h]["outcome"] for h in ("portico", "www-1", "www-2")] == ["ok", "ok", "ok"]
    assert "Traceback" not in result.stderr


def test_goal_boot_sets_the_profile_without_switching(fleet_factory: Start, tmp_path: Path) -> None:
    fleet = fleet_factory()
    report = tmp_path / "report.json"
    result = fleet.deploy("--goal", "boot", "--report", str(report), "portico")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(report.read_text())["instances"]
    assert row["instance"] == "portico" and row["outcome"] == "ok"
    assert fleet.lab.current_system("portico") is None  # boot: not switched now
    assert fleet.lab.activations("portico")[0].split()[1:3] == ["boot", row["path"]]
    profile = fleet.lab.run("portico", ["readlink", "-f", "/nix/var/nix/profiles/system"]).stdout.strip()
    assert profile == row["path"]
    assert "instance" in result.stdout and "portico" in result.stdout  # the table is still printed


def test_goals_test_and_dry_activate_leave_the_boot_default_alone(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    profile = ["sh", "-c", "p=/nix/var/nix/profiles/system; test -L $p && readlink -f $p; true"]
    dry = fleet.deploy("--json", "--goal", "dry-activate", "www-1")
    assert dry.returncode == 0, dry.stderr
    assert fleet.lab.current_system("www-1") is None and fleet.lab.run("www-1", profile).stdout == ""
    assert fleet.lab.activations("www-1")[0].split()[1] == "dry-activate"
    test = fleet.deploy("--json", "--goal", "test", "www-1")
    path = outcome(test)["www-1"]["path"]
    assert fleet.lab.current_system("www-1") == path and fleet.lab.run("www-1", profile).stdout == ""
    # --no activate knows what each goal changes: boot is done once the profile is set
    boot = fleet.deploy("--json", "--goal", "boot", "--no", "activate", "www-1")
    assert outcome(boot)["www-1"]["outcome"] == "ok"
    again = fleet.deploy("--json", "--goal", "boot", "--no", "activate", "www-1")
    assert outcome(again)["www-1"]["outcome"] == "unchanged"
    assert len(fleet.lab.activations("www-1")) == 3


def test_push_only_does_not_activate(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    result = fleet.run("push", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "portico", "*")
    assert result.returncode == 0, result.stderr
    for host in fleet.lab.hosts:
        assert fleet.lab.current_system(host) is None
        assert fleet.lab.activations(host) == []
