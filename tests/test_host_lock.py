"""Hostile faults around the activation, on systemd lab hosts: two runs activating one host at
once (the host lock), a rollback whose target left the store, and a host that stops answering
during its activation. What happened is read from the host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, needs_lab
from tests.constants import STANDIN, nix_env
from tests.fleet import Fleet
from tests.test_rollouts import deploy, paths, rows

pytestmark = needs_lab
TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"]}
SOURCE = REPO / "tests" / "hives" / "rollouts"
Start = Callable[..., Fleet]


def start(fleet_factory: Start) -> tuple[Fleet, dict[str, str]]:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=4096)
    first = deploy(fleet, "v1", "portico", "*")
    assert first.returncode == 0, first.stderr
    return fleet, paths(fleet, "v1")


def host(fleet: Fleet, *argv: str) -> str:
    return fleet.lab.run("www-1", list(argv), check=False).stdout.strip()


def background(fleet: Fleet, variant: str, *args: str) -> subprocess.Popen[str]:
    env = {**nix_env(), **fleet.env, "ROLLOUT_VARIANT": variant, "PYTHONPATH": str(REPO)}
    argv = fleet.nix_hive_argv("deploy", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "--json", *args)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_state(fleet: Fleet, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted in host(fleet, "sh", "-c", "cat /run/nix-hive/*/state 2>/dev/null").split():
            return
        time.sleep(0.1)
    raise AssertionError(f"no activation of www-1 reached {wanted}")


def finish(proc: subprocess.Popen[str]) -> dict[str, dict[str, object]]:
    out, err = proc.communicate(timeout=240)
    data = json.loads(out)
    return {row["instance"]: {**row, "stderr": err} for row in data["instances"]}


def test_two_runs_on_one_host_take_turns(fleet_factory: Start) -> None:
    """The second run's activation waits for the host's lock until the first one's
    confirmation; each run's outcome is true, and the host ends on the system of the run that
    switched last, its profile and boot entry with it."""
    fleet, v1 = start(fleet_factory)
    v2 = paths(fleet, "v2")["web"]
    fleet.lab.run("www-1", ["sh", "-c", "echo 3 > /run/standin-activation-delay"])
    first = background(fleet, "v2", "www-1")
    wait_for_state(fleet, "activating")
    second = deploy(fleet, "v1", "--state", str(fleet.hive.parent / "other.state"), "www-1")  # a second operator
    one = finish(first)
    assert one["www-1"]["outcome"] == "ok", one
    assert rows(second)["www-1"]["outcome"] == "ok", second.stderr
    starts = [line.split() for line in fleet.lab.activation_starts("www-1")]
    ends = [line.split() for line in fleet.lab.activations("www-1")]
    assert [s[2] for s in starts[-2:]] == [v2, v1["web"]] and [e[2] for e in ends[-2:]] == [v2, v1["web"]]
    assert float(starts[-1][0]) >= float(ends[-2][0])  # one after the other: never at once
    assert fleet.lab.current_system("www-1") == v1["web"]
    assert host(fleet, "readlink", "-f", "/nix/var/nix/profiles/system") == v1["web"]
    assert host(fleet, "cat", "/boot/standin/default") == v1["web"]
    assert "started by" in host(fleet, "cat", "/run/nix-hive/owner")


def test_a_second_run_never_rolls_back_over_the_first(fleet_factory: Start) -> None:
    """The other order: the second run's system fails; its rollback goes to the first run's
    system, which switched before it took the lock, never further back."""
    fleet, _ = start(fleet_factory)
    v2 = paths(fleet, "v2")["web"]
    fleet.lab.run("www-1", ["sh", "-c", "echo 3 > /run/standin-activation-delay"])
    first = background(fleet, "v2", "www-1")
    wait_for_state(fleet, "activating")
    second = deploy(fleet, "fail", "--state", str(fleet.hive.parent / "other.state"), "www-1")
    assert finish(first)["www-1"]["outcome"] == "ok"
    assert rows(second)["www-1"]["outcome"] == "rolled back", second.stderr
    starts = [line.split() for line in fleet.lab.activation_starts("www-1")]
    first_end = next(line.split() for line in fleet.lab.activations("www-1") if line.split()[2] == v2)
    assert float(starts[-2][0]) >= float(first_end[0])  # the failing switch began after the first ended
    assert fleet.lab.current_system("www-1") == v2
    assert host(fleet, "readlink", "-f", "/nix/var/nix/profiles/system") == v2


def test_a_rollback_whose_target_left_the_store_leaves_the_profile_on_what_runs(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    gone = host(fleet, "nix-store", "--delete", "--ignore-liveness", v1["web"])
    assert host(fleet, "sh", "-c", f"test -e {v1['web']} || echo gone") == "gone", gone
    result = deploy(fleet, "fail", "www-1")
    row = rows(result)["www-1"]
    assert row["outcome"] == "failed", result.stderr
    assert "is no longer in the host's store" in str(row["reason"]) and v1["web"] in str(row["reason"])
    running = fleet.lab.current_system("www-1")
    assert running is not None and running != v1["web"]
    assert host(fleet, "readlink", "-f", "/nix/var/nix/profiles/system") == running  # never a missing system


def test_a_host_that_stops_answering_during_its_activation(fleet_factory: Start) -> None:
    """Its sshd frozen while the activation waits for its confirmation: nix-hive says the
    host's state is unknown and what it will do by itself, within its bound; the host did
    roll back by itself, as said, and nix-hive can read that once it answers again."""
    fleet, v1 = start(fleet_factory)
    fleet.lab.run("www-1", ["sh", "-c", "echo 2 > /run/standin-activation-delay"])
    run = background(fleet, "v2", "www-1", "--confirm-timeout", "5")
    wait_for_state(fleet, "activating")
    fleet.lab.run("www-1", ["pkill", "-STOP", "^sshd"])  # inside the host: its own sshd, sshd-session…
    try:
        started = time.monotonic()
        row = finish(run)["www-1"]
        took = time.monotonic() - started
    finally:
        fleet.lab.run("www-1", ["pkill", "-CONT", "^sshd"])
    assert row["outcome"] == "timed out", row
    reason = str(row["reason"])
    assert "its state is unknown" in reason and "rolls back by itself unless a confirmation comes within 5 s" in reason
    assert took < 90
    time.sleep(6)
    assert host(fleet, "sh", "-c", "cat /run/nix-hive/*/state").split("\n")[-1] == "rolled-back not-confirmed"
    assert fleet.lab.current_system("www-1") == v1["web"]


# One lock for every command that changes a host (issue 27): two state files, two operators.

def background_command(fleet: Fleet, *args: str) -> subprocess.Popen[str]:
    """`nix-hive ARGS` of a second operator (a state file of its own), in the background."""
    env = {**nix_env(), **fleet.env, "PYTHONPATH": str(REPO)}
    argv = fleet.nix_hive_argv(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "--json",
                               "--state", str(fleet.hive.parent / "other.state"))
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ended(proc: subprocess.Popen[str]) -> tuple[float, dict[str, dict[str, object]]]:
    """When `proc` ended (time.monotonic), and its rows."""
    rows_ = finish(proc)
    return time.monotonic(), rows_


def test_a_rollback_waits_for_a_deploy_under_way(fleet_factory: Start) -> None:
    """A rollback from another state file during a deploy's activation waits for the host's
    lock: the deploy's confirmation confirms the system it switched to, then the rollback goes
    back from it; the host ends on what the last report names."""
    fleet, v1 = start(fleet_factory)
    v2 = paths(fleet, "v2")["web"]
    fleet.lab.run("www-1", ["sh", "-c", "echo 4 > /run/standin-activation-delay"])
    deploying = background(fleet, "v2", "www-1")
    wait_for_state(fleet, "activating")
    rolling = background_command(fleet, "rollback", "www-1")
    deployed_at, deployed = ended(deploying)
    rolled_at, rolled = ended(rolling)
    assert deployed["www-1"]["outcome"] == "ok" and deployed["www-1"]["path"] == v2, deployed
    assert rolled["www-1"]["outcome"] == "ok" and rolled["www-1"]["path"] == v1["web"], rolled
    rollback_start = next(float(s.split()[0]) for s in reversed(fleet.lab.activation_starts("www-1")))
    deploy_end = next(float(e.split()[0]) for e in fleet.lab.activations("www-1") if e.split()[2] == v2)
    assert rollback_start >= deploy_end and rolled_at > deployed_at  # one after the other
    assert fleet.lab.current_system("www-1") == v1["web"]
    assert host(fleet, "readlink", "-f", "/nix/var/nix/profiles/system") == v1["web"]


def test_a_reboot_reads_the_profile_under_the_lock(fleet_factory: Start) -> None:
    """`nix-hive reboot` during a deploy whose system fails its check: the reboot waits for the
    deploy's rollback, then boots what the profile names then (v1), never the failed system."""
    fleet, v1 = start(fleet_factory)
    fleet.lab.run("www-1", ["sh", "-c", "echo 4 > /run/standin-activation-delay"])
    deploying = background(fleet, "unhealthy", "www-1")
    wait_for_state(fleet, "activating")
    rebooting = background_command(fleet, "reboot", "www-1")
    deployed = finish(deploying)
    rebooted = finish(rebooting)
    assert deployed["www-1"]["outcome"] == "rolled back", deployed
    assert rebooted["www-1"]["outcome"] == "ok", rebooted
    assert rebooted["www-1"]["path"] == v1["web"], rebooted
    assert fleet.lab.current_system("www-1") == v1["web"]
    assert host(fleet, "readlink", "-f", "/nix/var/nix/profiles/system") == v1["web"]
    assert host(fleet, "cat", "/boot/standin/default") == v1["web"]


def test_no_cleanup_removes_the_lock_another_run_holds(fleet_factory: Start) -> None:
    """Another call holds the host lock and every file under /run/nix-hive is days old: a
    deploy's cleanup removes nothing that lock depends on, and the deploy waits its turn."""
    fleet, _ = start(fleet_factory)
    v2 = paths(fleet, "v2")["web"]
    hold = 8
    fleet.lab.run("www-1", ["sh", "-c", "setsid -f flock /run/nix-hive sh -c 'touch /run/held; sleep $0' "
                            f"{hold} > /dev/null 2>&1 < /dev/null"])
    deadline = time.monotonic() + 10
    while host(fleet, "sh", "-c", "test -e /run/held && echo held") != "held":  # the holder has it
        assert time.monotonic() < deadline, "the lock was never taken"
        time.sleep(0.05)
    assert host(fleet, "sh", "-c", "flock -n /run/nix-hive true || echo held") == "held"
    fleet.lab.run("www-1", ["sh", "-c", "touch -d '3 days ago' /run/nix-hive /run/nix-hive/*"])
    began = time.monotonic()
    result = deploy(fleet, "v2", "www-1")
    assert rows(result)["www-1"]["outcome"] == "ok", result.stderr
    assert time.monotonic() - began >= hold - 3  # it waited for the holder
    assert fleet.lab.current_system("www-1") == v2


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        below = [p for p, pp in parent.items() if pp == current]
        found += below
        todo += below
    return found


def follows(pid: int) -> bool:
    """Whether process `pid` is an ssh that follows an activation (control.sh's text)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmd.split(b"\0", 1)[0].endswith(b"ssh") and b"nix-hive-activate-" in cmd


def test_a_killed_channel_is_followed_to_the_hosts_own_end(fleet_factory: Start) -> None:
    """The deployer's ssh that follows an activation killed mid-activation (by someone, not
    by nix-hive): the host goes on; nix-hive follows it again, confirms, and reports ok."""
    fleet, _ = start(fleet_factory)
    v2 = paths(fleet, "v2")["web"]
    fleet.lab.run("www-1", ["sh", "-c", "echo 4 > /run/standin-activation-delay"])
    run = background(fleet, "v2", "www-1")
    wait_for_state(fleet, "activating")
    channel = [p for p in descendants(run.pid) if follows(p)]
    assert channel, "the channel that follows the activation"
    for pid in channel:
        os.kill(pid, signal.SIGKILL)
    row = finish(run)["www-1"]
    assert row["outcome"] == "ok", row
    assert fleet.lab.current_system("www-1") == v2
