"""Fleet operations in the lab: one broken host costs only itself, re-runs do only what is
left, waves and --keep-going / --max-failures, Ctrl-C and kill -9, status, shared ssh
connections, readable parallel output.

A relay (portico) and ten www hosts behind it; failures are real: a host whose link is down,
an activation that exits 1 (the stand-in's /run/standin-fail-activation), a relay that does
not resolve.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from hive import state
from tests.conftest import STANDIN, needs_lab, wait_until
from tests.fleet import Fleet, nix_env

pytestmark = needs_lab
TEN = {"portico": ["pub", "int"], **{f"www-{n}": ["int"] for n in range(1, 11)}}
WWW = [f"www-{n}" for n in range(1, 11)]
Start = Callable[..., Fleet]
PROGRESS = re.compile(r"^(\[ *\d+\.\ds\] (\S+ +\S+ +(ok|failed|skipped|unchanged|\.\.\.|building|copying)(\s.*)?|"
                      r"wave \d+/\d+: .*|interrupted: .*)|    \| .*)$")


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    data = json.loads(result.stdout)
    return {row["instance"]: row for row in data["instances"]}


def expected_paths(fleet: Fleet) -> dict[str, str]:
    out = fleet.run("build", "-q", "--no", "build", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    return {name: data["systems"][i["system"]]["result"] for name, i in data["instances"].items()}


def break_activation(fleet: Fleet, host: str) -> None:
    fleet.lab.run(host, ["touch", "/run/standin-fail-activation"])


def test_one_broken_host_costs_only_itself_and_the_rerun_does_the_rest(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TEN, payload_bytes=100_000)
    break_activation(fleet, "www-4")
    fleet.lab.run("www-7", ["ip", "link", "set", "eth0", "down"])
    first = fleet.deploy("--json", "-j", "4", "portico", "*")
    assert first.returncode == 1
    r = rows(first)
    assert r["www-4"]["outcome"] == "failed" and "activate:" in str(r["www-4"]["reason"])
    assert "activation failed" in first.stderr  # the failed step's own log is shown
    # found before any work (issue 26): the run opens every instance's connection first
    assert r["www-7"]["outcome"] == "failed" and str(r["www-7"]["reason"]).startswith("unreachable: "), r["www-7"]
    ok = [h for h in ("portico", *WWW) if h not in ("www-4", "www-7")]
    assert all(r[h]["outcome"] == "ok" for h in ok)
    seconds = r["www-1"]["seconds"]
    assert isinstance(seconds, dict) and set(seconds) >= {"push", "activate"}
    assert [ln for ln in first.stderr.splitlines() if not PROGRESS.match(ln)] == []  # whole lines only

    fleet.lab.run("www-4", ["rm", "/run/standin-fail-activation"])
    fleet.lab.run("www-7", ["ip", "link", "set", "eth0", "up"])
    again = fleet.deploy("--json", "--no", "build,push,activate", "portico", "*")
    assert again.returncode == 0, again.stderr
    r = rows(again)
    assert r["www-4"]["outcome"] == "ok" and r["www-7"]["outcome"] == "ok"
    assert all(r[h]["outcome"] == "unchanged" for h in ok)
    expected = expected_paths(fleet)
    for host in fleet.lab.hosts:
        assert fleet.lab.current_system(host) == expected[host]
        assert len(fleet.lab.activations(host)) == 1, host  # nothing was activated twice


def test_a_failed_relay_skips_its_instances_with_the_reason(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    default = fleet.hive / "default.nix"
    default.write_text(default.read_text().replace('store = "ssh://portico";', 'store = "ssh://gone.invalid";'))
    result = fleet.deploy("--json", "portico", "*")
    assert result.returncode == 1
    r = rows(result)
    assert r["portico"]["outcome"] == "ok"
    for host in ("www-1", "www-2", "www-3"):
        assert r[host]["outcome"] == "failed"  # its relay's copy failed: so did it (issue 26)
        assert "store of ssh://gone.invalid failed" in str(r[host]["reason"])
        assert fleet.lab.activations(host) == []


def test_a_failed_wave_stops_later_waves_unless_keep_going(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    break_activation(fleet, "portico")
    stopped = fleet.deploy("--json", "portico", "*")
    assert stopped.returncode == 1
    r = rows(stopped)
    assert r["portico"]["outcome"] == "failed"
    for host in ("www-1", "www-2", "www-3"):
        assert r[host]["outcome"] == "skipped" and "wave 1 failed (portico)" in str(r[host]["reason"])
        assert fleet.lab.activations(host) == []
    going = fleet.deploy("--json", "--keep-going", "portico", "*")
    assert going.returncode == 1
    r = rows(going)
    assert r["portico"]["outcome"] == "failed"
    assert all(r[h]["outcome"] == "ok" for h in ("www-1", "www-2", "www-3"))


def test_max_failures_stops_starting_new_work(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TEN, payload_bytes=100_000)
    for host in ("www-1", "www-10"):  # the first two in name order
        break_activation(fleet, host)
    result = fleet.deploy("--json", "-j", "1", "--max-failures", "1", "www-*")
    assert result.returncode == 1
    r = rows(result)
    assert [h for h in WWW if r[h]["outcome"] == "failed"] == ["www-1", "www-10"]
    skipped = [h for h in WWW if r[h]["outcome"] == "skipped"]
    assert skipped and all("more than 1 instance(s) failed" in str(r[h]["reason"]) for h in skipped)
    assert all(fleet.lab.activations(h) == [] for h in skipped)
    bad = fleet.deploy("--max-failures", "lots", "www-*")
    assert bad.returncode == 2 and "--max-failures 'lots'" in bad.stderr


def test_ctrl_c_stops_new_work_saves_state_and_prints_the_summary(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TEN, payload_bytes=100_000)
    for host in WWW:
        fleet.lab.run(host, ["sh", "-c", "echo 1 > /run/standin-activation-delay"])
    env = {**nix_env(), **fleet.env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    # nsenter execs nix-hive itself (`ip netns exec` would stay in between as its parent)
    argv = ["nsenter", f"--net=/run/netns/{fleet.lab.deployer_netns}", *fleet.nix_hive_argv(
        "deploy", "--json", "-j", "2", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "portico", "*")[4:]]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        # the first activation of wave 2 (which host doit starts with is its own choice)
        wait_until(lambda: any(fleet.lab.activations(h) for h in WWW), 60, "an activation of wave 2 starts")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert out, err
    r = {row["instance"]: row for row in json.loads(out)["instances"]}
    assert r["portico"]["outcome"] == "ok"
    assert any(row["outcome"] == "skipped" and row["reason"] == "interrupted" for row in r.values())
    state.load(fleet.hive / ".hive.state")  # readable
    done_before = {h for h in WWW if fleet.lab.activations(h)}

    for host in WWW:
        fleet.lab.run(host, ["rm", "/run/standin-activation-delay"])
    again = fleet.deploy("--json", "--no", "build,push,activate", "portico", "*")
    assert again.returncode == 0, again.stderr
    expected = expected_paths(fleet)
    for host in fleet.lab.hosts:
        assert fleet.lab.current_system(host) == expected[host]
    for host in done_before:
        assert len(fleet.lab.activations(host)) == 1  # not activated again


def test_kill_9_at_any_point_then_the_next_run_completes(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TEN, payload_bytes=300_000)
    for host in WWW:
        fleet.lab.run(host, ["sh", "-c", "echo 0.3 > /run/standin-activation-delay"])
    env = {**nix_env(), **fleet.env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    argv = fleet.nix_hive_argv("deploy", "-q", "-j", "3", "--no", "build,push,activate", "-c", str(fleet.hive),
                               "-I", f"nixpkgs={STANDIN}", "portico", "*")
    for delay in (0.2, 0.6, 1.0, 1.6):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        state.load(fleet.hive / ".hive.state")  # readable after every kill
        for host in fleet.lab.hosts:  # a profile never points at a path missing from the store
            profile = fleet.lab.run(host, ["sh", "-c", "p=/nix/var/nix/profiles/system; test -L $p && readlink -f $p"],
                                    check=False)
            target = profile.stdout.strip()
            if profile.returncode == 0 and target:
                valid = fleet.lab.run(host, ["nix-store", "--check-validity", target], check=False)
                assert valid.returncode == 0, f"{host}: profile -> {target}, not in its store"
    final = fleet.deploy("--json", "--no", "build,push,activate", "portico", "*")
    assert final.returncode == 0, final.stderr
    expected = expected_paths(fleet)
    for host in fleet.lab.hosts:
        assert fleet.lab.current_system(host) == expected[host]


def test_status_compares_hosts_with_the_deployment(fleet_factory: Start) -> None:
    fleet = fleet_factory()
    assert fleet.deploy("portico", "www-1", "www-2").returncode == 0
    fleet.lab.run("www-1", ["ln", "-sfn", "/nix/store/00000000000000000000000000000000-other", "/run/current-system"])
    fleet.lab.run("www-2", ["ip", "link", "set", "eth0", "down"])
    result = fleet.run("status", "--json", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    assert result.returncode == 1  # an unreachable host
    states = {row["instance"]: row["state"] for row in json.loads(result.stdout)}
    assert states == {"portico": "up to date", "www-1": "differs", "www-2": "unreachable",
                      "www-3": "not activated"}
    reasons = {row["instance"]: row["reason"] for row in json.loads(result.stdout)}
    assert reasons["www-2"] == "it did not answer ssh within 10 s" or "No route to host" in reasons["www-2"], reasons
    assert reasons["www-1"] == reasons["portico"] == ""  # reached
    table = fleet.run("status", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "portico")
    assert table.returncode == 0 and "up to date" in table.stdout and "www-2" not in table.stdout
    # a host that differs is information: exit 0 when every host could be asked
    differs = fleet.run("status", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "portico", "www-1")
    assert differs.returncode == 0 and "differs" in differs.stdout, differs.stderr


def test_each_host_authenticates_once_per_deploy_and_once_more_to_confirm(fleet_factory: Start) -> None:
    """One login per host shared by every step; magic rollback adds the confirmation's own
    fresh login (through the jump host's shared connection), and only that."""
    fleet = fleet_factory(topology=TEN, payload_bytes=100_000)
    deployer = fleet.lab.deployer_address

    def logins() -> tuple[int, dict[str, int]]:
        portico_log = fleet.lab.sshd_log("portico").splitlines()
        portico = [ln for ln in portico_log if ln.startswith("Accepted publickey") and f" from {deployer} " in ln]
        return len(portico), {h: fleet.lab.auth_count(h) for h in WWW}

    result = fleet.deploy("-j", "4", "--no-rollback", "portico", "*")
    assert result.returncode == 0, result.stderr
    portico, per_www = logins()
    print(f"\nauthentications in one deploy without rollback: portico (jump host and relay) {portico} "
          f"from the deployer; www hosts {sorted(set(per_www.values()))} each")
    assert portico == 1 and set(per_www.values()) == {1}
    again = fleet.deploy("-j", "4", "portico", "*")  # with magic rollback, the default
    assert again.returncode == 0, again.stderr
    portico_after, per_www_after = logins()
    assert portico_after - portico == 2  # the run's shared connection, and the confirmation
    assert {per_www_after[h] - per_www[h] for h in WWW} == {2}
