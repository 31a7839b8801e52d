"""Rollout gates on lab hosts (issue 26): a canary that cannot be reached, or whose copy
fails, stops the later waves before anything is built for them; --skip-unreachable deploys
the rest; --max-failures counts every failed step; --rollback-on-failure puts back what a
failed run switched. What happened is read from the hosts themselves."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import builds, needs_lab
from tests.constants import STANDIN
from tests.fleet import Fleet
from tests.test_rollouts import WWW, deploy, paths, rows, start

pytestmark = needs_lab
Start = Callable[..., Fleet]


def pin_wrong_key(fleet: Fleet, host: str) -> None:
    """`host`'s pinned host key becomes another host's (as after a reinstall, or a wrong entry)."""
    found = json.loads((fleet.hive / "instances.json").read_text())
    found[host]["hostKey"] = found["portico"]["hostKey"]
    (fleet.hive / "instances.json").write_text(json.dumps(found))


def test_a_canary_with_a_wrong_host_key_stops_the_run_before_anything_is_built(fleet_factory: Start,
                                                                             build_log: Path) -> None:
    fleet, v1 = start(fleet_factory)
    built = builds(build_log)
    pin_wrong_key(fleet, "www-1")
    result = deploy(fleet, "v2", "www-1", "www-*")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    assert r["www-1"]["outcome"] == "failed", result.stderr
    # one line that names the attribute and what the host offered, not ssh's banner
    assert re.fullmatch(r"unreachable: its host key is not instances\.www-1\.hostKey \(it offered ED25519 "
                        r"SHA256:[A-Za-z0-9+/]+\)", str(r["www-1"]["reason"])), r["www-1"]["reason"]
    assert "IDENTIFICATION HAS CHANGED" not in result.stderr and "ssh-keygen" not in result.stderr
    for host in ("www-2", "www-3"):
        assert r[host]["outcome"] == "skipped" and r[host]["reason"] == "not started: wave 1 failed (www-1)"
        assert fleet.lab.current_system(host) == v1["web"]
        assert len(fleet.lab.activations(host)) == 1  # v1's alone
    assert builds(build_log) == built  # v2 was never built: no wave could use it
    assert json.loads(result.stdout)["outcome"] == "failed"
    # nix-hive run and status say the same, in one line
    ran = fleet.run("run", "-c", str(fleet.hive), "www-1", "--", "true")
    said = r"^failed: www-1: ssh could not connect: its host key is not instances\.www-1\.hostKey \(it offered "
    assert ran.returncode == 1 and re.search(said, ran.stderr, re.M), ran.stderr
    status = fleet.run("status", "--json", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "www-1")
    row = json.loads(status.stdout)[0]
    assert (row["state"], row["reason"].split(" (it offered")[0]) == (
        "unreachable", "its host key is not instances.www-1.hostKey"), row


def test_an_unreachable_canary_is_known_within_the_connect_timeout_and_can_be_skipped(fleet_factory: Start,
                                                                                    build_log: Path) -> None:
    fleet, v1 = start(fleet_factory)
    built = builds(build_log)
    fleet.lab.run("www-1", ["ip", "link", "set", "eth0", "down"])  # it answers nothing, to anyone
    began = time.monotonic()
    result = deploy(fleet, "v2", "--connect-timeout", "3", "www-1", "www-*")
    took = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    r = rows(result)
    # ssh's words ("Connection timed out during banner exchange") said as what they mean here
    assert r["www-1"]["outcome"] == "failed", r
    assert r["www-1"]["reason"] == "unreachable: it did not answer ssh within 3 s (through portico)", r
    assert all(r[h]["outcome"] == "skipped" for h in ("www-2", "www-3"))
    assert all(fleet.lab.current_system(h) == v1["web"] for h in ("www-2", "www-3"))
    assert builds(build_log) == built
    assert took < 3 + 15, took  # the connect timeout, evaluation and a margin; no build, no copy

    skipping = deploy(fleet, "v2", "--connect-timeout", "3", "--skip-unreachable", "www-1", "www-*")
    assert skipping.returncode == 0, skipping.stderr
    r = rows(skipping)
    assert r["www-1"]["outcome"] == "skipped" and str(r["www-1"]["reason"]).startswith("unreachable: "), r
    v2 = paths(fleet, "v2")
    for host in ("www-2", "www-3"):
        assert r[host]["outcome"] == "ok", r
        assert fleet.lab.current_system(host) == v2["web"]

    # the jump host itself down: the hosts behind it are not asked through it (each would wait
    # out its connect timeout), and say which hop failed
    fleet.lab.run("portico", ["ip", "link", "set", "eth0", "down"])
    cut = deploy(fleet, "v2", "--connect-timeout", "3", "www-2", "www-*")
    assert cut.returncode == 1, cut.stderr
    r = rows(cut)
    for host in WWW:  # each is known unreachable at the start, whatever its wave
        assert r[host]["outcome"] == "failed", r
        said = str(r[host]["reason"])
        assert said.startswith("unreachable: its jump host portico is unreachable: ssh: connect to "), r


def test_max_failures_counts_failed_pushes_and_keep_going_goes_on(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    for host in ("www-1", "www-2"):  # their nix-store refuses to serve: the copy to them fails at once
        fleet.lab.run(host, ["mount", "--bind", "/bin/false", "/usr/bin/nix-store"])
    result = deploy(fleet, "v2", "-j", "1", "--keep-going", "--max-failures", "1", "www-1", "www-2", "www-3")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    assert [r[h]["outcome"] for h in WWW] == ["failed", "failed", "skipped"], r
    assert all(str(r[h]["reason"]).startswith("push: ") for h in ("www-1", "www-2")), r
    assert r["www-3"]["reason"] == "not started: more than 1 instance(s) failed"
    assert fleet.lab.current_system("www-3") == v1["web"]
    going = deploy(fleet, "v2", "--keep-going", "www-1", "www-2", "www-3")
    assert going.returncode == 1
    r = rows(going)
    assert [r[h]["outcome"] for h in WWW] == ["failed", "failed", "ok"], r
    assert fleet.lab.current_system("www-3") == paths(fleet, "v2")["web"]


def test_rollback_on_failure_puts_every_switched_host_back(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    fleet.lab.run("www-3", ["touch", "/run/standin-fail-activation"])  # the third wave fails
    result = deploy(fleet, "v2", "--rollback-on-failure", "www-1", "www-2", "www-3")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    # the stand-in fails its activation, and the activation of its automatic rollback too
    assert r["www-3"]["outcome"] == "failed", {h: (r[h]["outcome"], r[h]["reason"]) for h in r}
    for host in ("www-1", "www-2"):
        assert r[host]["outcome"] == "rolled back", r
        assert r[host]["reason"] == "run failed: www-3 failed", r
        assert fleet.lab.current_system(host) == v1["web"]
        profile = fleet.lab.run(host, ["readlink", "-f", "/nix/var/nix/profiles/system"]).stdout.strip()
        assert profile == v1["web"]
    # www-2 (wave 2) was put back before www-1 (wave 1): the last wave first
    out = result.stderr
    assert out.index("put-back www-2") < out.index("put-back www-1"), out
    # without the option, nothing is put back
    fleet.lab.run("www-3", ["touch", "/run/standin-fail-activation"])
    plain = deploy(fleet, "v2", "www-1", "www-2", "www-3")
    assert plain.returncode == 1
    v2 = paths(fleet, "v2")
    assert [rows(plain)[h]["outcome"] for h in WWW] == ["ok", "ok", "failed"]
    assert fleet.lab.current_system("www-1") == v2["web"] and fleet.lab.current_system("www-2") == v2["web"]




def test_a_canary_whose_keys_fail_stops_the_later_waves(fleet_factory: Start) -> None:
    from tests.test_keys import SOURCE as KEYS
    from tests.test_keys import TOPOLOGY as KEYS_TOPOLOGY
    from tests.test_keys import start as start_keys

    fleet, _ = start_keys(fleet_factory)
    assert KEYS.name == "keys" and "www-2" in KEYS_TOPOLOGY
    # the tls key's keyCommand (`cat secrets/tls.pem`, after the switch) fails: a missing key
    # file would be refused before anything starts (exit 2), a failing command is known only then
    (fleet.hive / "secrets" / "tls.pem").unlink()
    result = fleet.deploy("--json", "www-1", "www-*")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    assert r["www-1"]["outcome"] == "failed" and "tls" in str(r["www-1"]["reason"]), r["www-1"]["reason"]
    assert r["www-2"]["outcome"] == "skipped" and r["www-2"]["reason"] == "not started: wave 1 failed (www-1)"
    assert fleet.lab.activations("www-2") == [] and fleet.lab.current_system("www-2") is None


def test_a_canary_whose_system_fails_on_its_build_host_stops_the_later_waves(fleet_factory: Start) -> None:
    from tests.test_buildhost_lab import SOURCE as BUILDHOST
    from tests.test_buildhost_lab import TOPOLOGY as BUILDHOST_TOPOLOGY

    fleet = fleet_factory(topology=BUILDHOST_TOPOLOGY, source=BUILDHOST, payload_bytes=4096)
    fleet.env["BUILD_HOST"] = "nowhere.invalid"  # web is built there; edge (portico's) here
    result = fleet.deploy("--json", "www-1", "portico")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    assert r["www-1"]["outcome"] == "failed" and "build of web failed" in str(r["www-1"]["reason"]), r["www-1"]
    # portico's own copy holds web too (www-1 substitutes from it): it fails with it, and is not touched
    assert r["portico"]["outcome"] == "failed" and "build of web failed" in str(r["portico"]["reason"])
    assert fleet.lab.activations("www-1") == [] and fleet.lab.activations("portico") == []


def test_rollback_on_failure_with_reboots_puts_the_boot_entry_back(fleet_factory: Start) -> None:
    from tests.test_reboot import default
    from tests.test_reboot import rows as reboot_rows
    from tests.test_reboot import run as run_reboots
    from tests.test_reboot import start as start_reboots

    fleet, v1 = start_reboots(fleet_factory)
    result = run_reboots(fleet, "www-1=v2,www-2=unhealthy", "deploy", "--json", "--reboot", "--rollback-on-failure",
                         "www-1", "www-2")
    assert result.returncode == 1, result.stderr
    r = reboot_rows(result)
    assert r["www-2"]["outcome"] == "rolled back", r["www-2"]  # its own reboot fell back
    assert r["www-1"]["outcome"] == "rolled back" and r["www-1"]["reason"] == "run failed: www-2 failed", r["www-1"]
    for host in ("www-1", "www-2"):
        assert fleet.lab.current_system(host) == v1[host]
        assert default(fleet, host) == v1[host]  # what its next boot boots


def test_a_canary_behind_a_relay_that_is_down_stops_the_run_before_anything_is_built(fleet_factory: Start,
                                                                                   build_log: Path) -> None:
    """portico (the relay and jump host of every web host, not selected) is down: its hosts
    cannot be reached, and say why in one line."""
    from tests.test_hardening_lab import set_links

    fleet, v1 = start(fleet_factory)
    built = builds(build_log)
    set_links(fleet, "portico", "down")
    result = deploy(fleet, "v2", "--connect-timeout", "3", "www-1", "www-*")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    for host in WWW:  # every one of them, through its jump host: each says so, nothing waits for the gate
        assert r[host]["outcome"] == "failed" and str(r[host]["reason"]).startswith("unreachable: "), r[host]
        assert "\n" not in str(r[host]["reason"])
    assert builds(build_log) == built
    set_links(fleet, "portico", "up")
    assert all(fleet.lab.current_system(h) == v1["web"] for h in WWW)
