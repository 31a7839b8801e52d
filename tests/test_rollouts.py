"""Safe rollouts on real hosts: detached activation, health checks gating waves, automatic
and magic rollback, `nix-hive rollback` and `nix-hive check`. The stand-in nixpkgs makes a
system fail its activation, hang in it, come up unhealthy, or stop sshd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

from tests.conftest import REPO, needs_lab, wait_until
from tests.constants import STANDIN, nix_env
from tests.fleet import Fleet

pytestmark = needs_lab
TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"], "www-2": ["int"], "www-3": ["int"]}
SOURCE = REPO / "tests" / "hives" / "rollouts"
WWW = ("www-1", "www-2", "www-3")
Start = Callable[..., Fleet]


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert result.stdout, result.stderr
    data = json.loads(result.stdout)
    return {row["instance"]: row for row in data["instances"]}


def deploy(fleet: Fleet, variant: str, *args: str) -> subprocess.CompletedProcess[str]:
    fleet.env["ROLLOUT_VARIANT"] = variant
    return fleet.deploy("--json", *args)


def paths(fleet: Fleet, variant: str) -> dict[str, str]:
    fleet.env["ROLLOUT_VARIANT"] = variant
    out = fleet.run("build", "-q", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    assert out.returncode == 0, out.stderr
    return {name: s["result"] for name, s in json.loads(out.stdout)["systems"].items()}


def reachable(fleet: Fleet, host: str) -> bool:
    """A new ssh login to the host works (no shared connection)."""
    out = fleet.run("run", "-c", str(fleet.hive), host, "--", "true")
    return out.returncode == 0


def start(fleet_factory: Start) -> tuple[Fleet, dict[str, str]]:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=4096)
    first = deploy(fleet, "v1", "portico", "*")
    assert first.returncode == 0, first.stderr
    v1 = paths(fleet, "v1")
    assert all(fleet.lab.current_system(h) == v1["web"] for h in WWW)
    return fleet, v1


def test_an_unhealthy_first_wave_is_rolled_back_and_later_waves_are_not_touched(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    result = deploy(fleet, "unhealthy", "www-1", "www-*")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    assert r["www-1"]["outcome"] == "rolled back", result.stderr
    # the cause, once: not "rolled back: …" again under the outcome "rolled back"
    assert str(r["www-1"]["reason"]).startswith(("activate: check health failed", "activate: check http failed"))
    seconds = r["www-1"]["seconds"]
    assert isinstance(seconds, dict) and {"check", "rollback"} <= set(seconds)
    assert fleet.lab.current_system("www-1") == v1["web"]  # back on its previous system
    for host in ("www-2", "www-3"):
        assert r[host]["outcome"] == "skipped" and "wave 1 failed (www-1)" in str(r[host]["reason"])
        assert fleet.lab.current_system(host) == v1["web"]
        assert len(fleet.lab.activations(host)) == 1  # not touched


def test_an_activation_that_hangs_is_stopped_and_rolled_back(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    began = time.monotonic()
    result = deploy(fleet, "hang", "--activation-timeout", "5", "www-1")
    assert time.monotonic() - began < 60, "the run ends"
    assert result.returncode == 1, result.stderr
    r = rows(result)
    assert r["www-1"]["outcome"] == "rolled back" and "activation timed out after 5 s" in str(r["www-1"]["reason"])
    assert fleet.lab.current_system("www-1") == v1["web"]
    profile = fleet.lab.run("www-1", ["readlink", "-f", "/nix/var/nix/profiles/system"]).stdout.strip()
    assert profile == v1["web"]  # the boot default too


def test_a_system_that_stops_sshd_restores_itself(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    result = deploy(fleet, "nossh", "www-1")
    assert result.returncode == 1, result.stderr
    r = rows(result)
    assert r["www-1"]["outcome"] == "rolled back", result.stderr
    assert "no confirmation" in str(r["www-1"]["reason"])
    assert fleet.lab.current_system("www-1") == v1["web"]
    assert reachable(fleet, "www-1")  # sshd is back with the previous system

    # the same without rollback: the host stays cut off (proof that the test above is real)
    kept = deploy(fleet, "nossh", "--no-rollback", "www-2")
    assert rows(kept)["www-2"]["outcome"] == "ok", kept.stderr  # its checks passed over the open connection
    assert not reachable(fleet, "www-2")


def test_an_activation_that_fails_is_rolled_back(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    result = deploy(fleet, "fail", "--keep-going", "www-1", "www-2")
    assert result.returncode == 1
    r = rows(result)
    for host in ("www-1", "www-2"):
        assert r[host]["outcome"] == "rolled back" and "activation failed (exit 1)" in str(r[host]["reason"])
        assert fleet.lab.current_system(host) == v1["web"]
    assert "standin.activation = fail" in result.stderr  # the activation's own output is shown


def test_ctrl_c_during_activations_reports_real_outcomes(fleet_factory: Start) -> None:
    fleet, _ = start(fleet_factory)
    for host in WWW:
        fleet.lab.run(host, ["sh", "-c", "echo 2 > /run/standin-activation-delay"])
    fleet.env["ROLLOUT_VARIANT"] = "v2"
    env = {**nix_env(), **fleet.env, "PYTHONPATH": str(REPO)}
    argv = ["nsenter", f"--net=/run/netns/{fleet.lab.deployer_netns}", *fleet.nix_hive_argv(
        "deploy", "--json", "-j", "3", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "www-*")[4:]]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_until(lambda: any(len(fleet.lab.activations(h)) > 1 for h in WWW), 60, "a v2 activation starts")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C while the activations run
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, err  # a first Ctrl-C: the summary, then 1 (docs/running.md)
    assert "interrupted" in err and "Traceback" not in err, err
    r = {row["instance"]: row for row in json.loads(out)["instances"]}
    for host in WWW:
        switched = len(fleet.lab.activations(host)) > 1
        if switched:  # nothing that changed a host is reported as skipped
            assert r[host]["outcome"] == "ok", (host, r[host], err)
        else:
            assert r[host]["outcome"] == "skipped", (host, r[host])
    assert any(r[host]["outcome"] == "ok" for host in WWW), r  # the activation that had started


def test_rollback_returns_to_the_previous_system_and_check_reports_health(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    second = deploy(fleet, "v2", "www-1", "www-2")
    assert second.returncode == 0, second.stderr
    v2 = paths(fleet, "v2")
    assert fleet.lab.current_system("www-1") == v2["web"]
    back = fleet.run("rollback", "--json", "-c", str(fleet.hive), "www-1")
    assert back.returncode == 0, back.stderr
    assert fleet.lab.current_system("www-1") == v1["web"]
    assert rows(back)["www-1"]["path"] == v1["web"]
    none = fleet.run("rollback", "--json", "-c", str(fleet.hive), "portico")  # deployed once: nothing before
    assert none.returncode == 1 and "no previous generation" in str(rows(none)["portico"]["reason"])

    healthy = fleet.run("check", "--json", "-c", str(fleet.hive), "www-*")
    assert healthy.returncode == 0, healthy.stderr
    assert {(c["instance"], c["check"]) for c in json.loads(healthy.stdout)} == {
        (h, c) for h in WWW for c in ("health", "http")}
    fleet.lab.run("www-2", ["sh", "-c", "echo unhealthy > /run/standin-health"])
    sick = fleet.run("check", "-c", str(fleet.hive), "www-*")
    assert sick.returncode == 1 and "FAILED" in sick.stdout and "HTTP 503" in sick.stdout


def test_no_rollback_nor_deploy_moves_the_profile_to_a_system_the_host_cannot_run(fleet_factory: Start) -> None:
    """v1 then v2 on www-1; then v1's store path is broken behind Nix's back (its
    switch-to-configuration removed, the path unknown to Nix: deleted through Nix, then put
    back, the path deleted), or its switch fails. Each time `nix-hive rollback` fails with one
    line that says why (before the profile moves, or after the failed switch, with the profile
    put back), and a deploy of the broken v1 is refused the same way: the profile stays on v2,
    which the host still runs."""
    fleet = fleet_factory(topology={"portico": ["pub", "int"], "www-1": ["int"]}, source=SOURCE,
                          payload_bytes=4096)
    assert deploy(fleet, "v1", "portico", "www-1").returncode == 0
    second = deploy(fleet, "v2", "www-1")
    assert second.returncode == 0, second.stderr
    v1, v2 = paths(fleet, "v1")["web"], paths(fleet, "v2")["web"]

    def host(*argv: str) -> str:
        return fleet.lab.run("www-1", list(argv)).stdout.strip()

    profile = host("readlink", "/nix/var/nix/profiles/system")
    assert profile == "system-2-link" and host("readlink", "/nix/var/nix/profiles/system-1-link") == v1

    def refused(why: str) -> None:
        back = fleet.run("rollback", "--json", "-c", str(fleet.hive), "www-1")
        assert host("readlink", "/nix/var/nix/profiles/system") == profile
        assert fleet.lab.current_system("www-1") == v2
        assert back.returncode == 1, back.stdout + back.stderr
        row = rows(back)["www-1"]
        assert row["outcome"] == "failed" and row["reason"] == f"rollback: {why}", row
        assert "Traceback" not in back.stderr

    host("mv", f"{v1}/bin/switch-to-configuration", "/root/stc")
    refused(f"generation 1 ({v1}) is not a runnable system: {v1} has no executable bin/switch-to-configuration")
    again = deploy(fleet, "v1", "www-1")  # in the host's store already: nothing to copy, nothing to run
    reason = str(rows(again)["www-1"]["reason"])
    assert again.returncode == 1 and f"not activated: {v1} has no executable bin/switch-to-configuration" in reason
    assert host("readlink", "/nix/var/nix/profiles/system") == profile and fleet.lab.current_system("www-1") == v2
    host("mv", "/root/stc", f"{v1}/bin/switch-to-configuration")

    host("touch", "/run/standin-fail-activation")  # every switch-to-configuration fails now
    refused("generation 1's switch-to-configuration switch failed (exit 1): the profile is back on generation 2")
    host("rm", "/run/standin-fail-activation")

    host("cp", "-a", v1, "/root/v1")
    host("nix-store", "--delete", "--ignore-liveness", v1)
    host("cp", "-a", "/root/v1", v1)
    refused(f"generation 1 ({v1}) is not a runnable system: {v1} is not valid in the host's store")

    host("rm", "-rf", v1)
    refused(f"generation 1 ({v1}) is not a runnable system: {v1} is no longer in the host's store")
