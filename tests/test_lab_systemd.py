"""Lab hosts that boot systemd as PID 1 (Lab.start(..., init="systemd")): real namespaces, a
real systemd from the shared trixie tree, real sshd and nix, reboots and power (needs root; the
first run makes the tree, tests/lab/tree.py, in about a minute)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.lab as labmod
from tests.conftest import needs, wait_until
from tests.constants import REPO, nix_env
from tests.lab import Lab, boot
from tests.lab.procs import is_alive
from tests.test_lab import _missing, netns_names, sh

pytestmark = [needs("lab", _missing()),
              # with xdist's --dist loadgroup, one worker runs the module and starts its lab once;
              # otherwise each worker running some of its tests starts one (tests run in file order
              # on each, and do not depend on one another)
              pytest.mark.xdist_group("lab_systemd")]

# Two tiny systems with an `activate` (what standin-boot.service runs at boot): each writes the
# system it was booted as to /run/lab-test-activated.
ACTIVATE_NIX = """
let mk = name: derivation {
  inherit name; system = builtins.currentSystem; builder = "/usr/bin/sh"; PATH = "/usr/bin";
  script = "#!/bin/sh\\nreadlink /run/current-system > /run/lab-test-activated\\n";
  args = [ "-c" "mkdir $out && printf %b \\"$script\\" > $out/activate && chmod +x $out/activate" ];
}; in { a = mk "lab-boot-a-PID"; b = mk "lab-boot-b-PID"; }
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab.start(labmod.EXAMPLE_TOPOLOGY, tmp_path_factory.mktemp("sd") / "lab", init="systemd")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two systems with an activate script, built on the deployer (the machine's store)."""
    expr = tmp_path_factory.mktemp("boot") / "activate.nix"
    expr.write_text(ACTIVATE_NIX.replace("PID", str(os.getpid())))
    out = sh(["nix", "build", "--impure", "-f", str(expr), "a", "b", "--json", "--no-link"],
             env=nix_env()).stdout
    a, b = (str(d["outputs"]["out"]) for d in json.loads(out))
    return a, b


def ssh(lab: Lab, host: str, *argv: str, user: str = "root", check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    return sh(lab.ssh_argv(host, list(argv), user=user), check=check)


def copy_to(lab: Lab, host: str, *paths: str) -> None:
    env = nix_env() | {"NIX_SSHOPTS": f"-F {lab.ssh_config_path}"}
    sh(lab.deployer_argv(["nix", "copy", "--to", f"ssh://{host}", *paths]), env=env)


def write_entry(lab: Lab, host: str, entry: str, path: str) -> None:
    d = lab.hosts[host].dir / "boot/standin"
    d.mkdir(exist_ok=True)
    (d / entry).write_text(path + "\n")


def test_boots_systemd_and_answers_ssh_through_the_jump_host(lab: Lab) -> None:
    for name in lab.hosts:
        assert lab.powered(name)
        first = lab.boots(name)[0]  # the lab's start: a fresh host, no boot entry yet
        assert (first.entry, first.system, first.mode) == ("none", None, "systemd")
    # www-3 sits behind portico: the jump is real (see test_lab.test_jump_is_real).
    assert lab.jump_host("www-3") == "portico"
    before = lab.auth_count("portico")
    out = ssh(lab, "www-3", "sh", "-c", "hostname; cat /proc/1/comm; readlink /proc/1/exe; "
              "systemctl is-system-running --wait; systemctl --failed --no-legend; ls /nix/store | wc -l").stdout
    host, comm, exe, state, *rest = out.splitlines()
    assert (host, comm, exe) == ("www-3", "systemd", "/usr/lib/systemd/systemd")
    assert state == "running", rest  # not "degraded": no unit failed
    assert rest == ["0"]  # no failed unit; its own, empty store
    assert lab.auth_count("portico") == before + 1
    # Seen from outside: PID 1 is the tree's systemd, in the host's own cgroup.
    pid = boot.pid1(lab.hosts["www-3"].dir)
    assert pid is not None and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/lib/systemd/systemd")
    assert pid in boot.cgroup_pids(Path(lab._state["hosts"]["www-3"]["cgroup"]))
    assert lab.systemctl("www-3", "is-active", "sshd.service").stdout.strip() == "active"
    show = lab.systemctl("www-3", "show", "-p", "KillMode,FragmentPath", "sshd.service").stdout
    assert "KillMode=process" in show and "FragmentPath=/etc/systemd/system/sshd.service" in show
    # The tree's own ssh units are masked; sshd listens with the lab's sshd_config.
    assert lab.systemctl("www-3", "is-enabled", "ssh.service").stdout.strip() == "masked"
    log = lab.journal("www-3", "sshd.service")
    assert "Server listening on 0.0.0.0 port 22" in log
    assert "Accepted publickey for root from " + lab.hosts["portico"].addresses["int"] in log
    # The machine's sysctls are out of reach.
    assert lab.run("www-3", ["sh", "-c", "echo 1 > /proc/sys/fs/file-max"], check=False).returncode != 0


def test_systemd_run_and_deploy_user(lab: Lab, systems: tuple[str, str]) -> None:
    # A transient unit; `$` reaches the command unexpanded with --expand-environment=no.
    out = lab.run("portico", ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--unit=x",
                              "--expand-environment=no", "sh", "-c", "echo $0 $$"]).stdout.split()
    assert out[0] == "/usr/bin/sh" and out[1].isdigit()
    # collected: an unknown unit (systemd may take a moment after --wait returned: seen once, still
    # "inactive", status 3, in a full run)
    wait_until(lambda: lab.systemctl("portico", "status", "x.service").returncode == 4, 10,
               "x.service collected after systemd-run --collect --wait")
    # The deploy user: sudo, and a copy through the host's nix-daemon (socket-activated).
    assert ssh(lab, "www-2", "sh", "-c", "id -un; sudo -n id -un", user="deploy").stdout.split() == [
        "deploy", "root"]
    a, _ = systems
    sh(lab.deployer_argv(["nix", "copy", "--to", "ssh://deploy@www-2", a]),
       env=nix_env() | {"NIX_SSHOPTS": f"-F {lab.workdir / 'ssh_config.deploy'}"})
    assert lab.run("www-2", ["nix-store", "--check-validity", a]).returncode == 0
    assert lab.systemctl("www-2", "is-active", "nix-daemon.socket").stdout.strip() == "active"


def test_stopping_sshd_keeps_open_connections(lab: Lab, tmp_path: Path) -> None:
    """The stand-in's hooks are `systemctl stop/start sshd.service`; with KillMode=process an
    open connection (here a ControlMaster through portico) survives the stop."""
    sock = tmp_path / "cm"
    master = subprocess.Popen(lab.deployer_argv(
        ["ssh", "-F", str(lab.ssh_config_path), "-o", "ControlMaster=yes", "-o", f"ControlPath={sock}",
         "-N", "www-3"]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert master.poll() is None and time.monotonic() < deadline, master.stderr
            time.sleep(0.01)
        via_master = lab.deployer_argv(["ssh", "-F", str(lab.ssh_config_path), "-o", f"ControlPath={sock}",
                                        "www-3", "hostname"])
        fresh = lab.deployer_argv(["ssh", "-F", str(lab.ssh_config_path), "-o", "ControlPath=none",
                                   "-o", "ConnectTimeout=3", "www-3", "hostname"])
        lab.run("www-3", [labmod.SSHD_STOP_HOOK])
        assert lab.systemctl("www-3", "is-active", "sshd.service").stdout.strip() == "inactive"
        assert sh(fresh, check=False).returncode != 0
        assert sh(via_master).stdout.strip() == "www-3"
        lab.run("www-3", [labmod.SSHD_START_HOOK])
        assert sh(fresh).stdout.strip() == "www-3"
        assert sh(via_master).stdout.strip() == "www-3"
    finally:
        master.terminate()
        master.wait(timeout=10)
        if master.stderr:
            master.stderr.close()


def test_reboot_keeps_disk_nix_and_boot_but_not_run(lab: Lab) -> None:
    d = lab.hosts["www-3"].dir
    pid = boot.pid1(d)
    lab.run("www-3", ["sh", "-c", "touch /run/marker /nix/marker /boot/marker /etc/marker /root/marker"])
    took = lab.reboot("www-3")
    print(f"\nreboot: {took:.2f}s")
    assert boot.pid1(d) not in (None, pid)
    assert [b.mode for b in lab.boots("www-3")] == ["systemd", "systemd"]
    present = lab.run("www-3", ["sh", "-c", "for f in /run/marker /nix/marker /boot/marker /etc/marker "
                                "/root/marker; do test -e $f && echo $f; done"]).stdout.split()
    assert present == ["/nix/marker", "/boot/marker", "/etc/marker", "/root/marker"]
    assert (d / "upper/etc/marker").exists()  # the host's disk: its overlay's upper directory
    assert not (d / "run/marker").exists()  # the lab sees the new /run
    assert (d / "run" / Path(labmod.SSHD_STOP_HOOK).name).exists()  # hooks in every boot's /run
    # It answers again, through its jump host, and its journal is this boot's.
    assert ssh(lab, "www-3", "systemctl", "is-system-running", "--wait").stdout.strip() == "running"
    assert lab.journal("www-3", "sshd.service").count("Server listening on 0.0.0.0 port 22") == 1


def test_boot_entries(lab: Lab, systems: tuple[str, str]) -> None:
    """default, oneshot (consumed), a path missing from the store; standin-boot.service runs the
    booted system's activate."""
    a, b = systems
    host = "www-1"
    d = lab.hosts[host].dir
    copy_to(lab, host, a, b)
    write_entry(lab, host, "default", a)
    lab.reboot(host)
    assert lab.system_state(host) == "running"  # standin-boot.service ran (sshd answers before)
    assert lab.boots(host)[-1] == boot.Boot(lab.boots(host)[-1].time, "default", a, a, "systemd")
    assert os.readlink(d / "run/current-system") == a  # from outside, as on plain hosts
    assert lab.current_system(host) == a
    assert lab.read(host, "/run/lab-test-activated") == a + "\n"
    assert lab.systemctl(host, "is-active", "standin-boot.service").stdout.strip() == "active"

    write_entry(lab, host, "oneshot", b)
    lab.reboot(host)
    assert lab.system_state(host) == "running"
    assert (lab.boots(host)[-1].entry, lab.current_system(host)) == ("oneshot", b)
    assert lab.read(host, "/run/lab-test-activated") == b + "\n"
    assert not (d / "boot/standin/oneshot").exists()  # consumed
    lab.reboot(host)
    assert (lab.boots(host)[-1].entry, lab.current_system(host)) == ("default", a)

    missing = a.replace("lab-boot-a", "lab-boot-missing")
    write_entry(lab, host, "default", missing)
    lab.reboot(host)
    last = lab.boots(host)[-1]
    assert (last.entry, last.system, last.wanted) == ("default", None, missing)
    assert lab.current_system(host) is None
    assert lab.read(host, "/run/lab-test-activated") is None
    assert lab.system_state(host) == "running"


def test_power_off_on_hang_and_poweroff_inside(lab: Lab) -> None:
    host = "www-2"
    h = lab.hosts[host]
    cg = Path(lab._state["hosts"][host]["cgroup"])
    lab.power_off(host)
    assert not lab.powered(host)
    assert not cg.exists() and not boot.is_mountpoint(h.dir / "run")
    assert _netns_pids(h.netns) == []
    with pytest.raises(labmod.LabError, match="not running"):
        lab.run(host, ["true"])
    with pytest.raises(labmod.LabError, match=r"did not answer on www-2 \(powered off\)"):
        lab.wait_up(host, timeout=10)
    # Stuck at boot: a PID 1, no systemd, no sshd.
    lab.power_on(host, hang=True)
    assert lab.powered(host) and lab.boots(host)[-1].mode == "hang"
    with pytest.raises(labmod.LabError, match=r"did not answer on www-2 \(no answer within 1s\)"):
        lab.wait_up(host, timeout=1)
    assert lab.run(host, ["cat", "/proc/1/comm"]).stdout.strip() == "sleep"
    with pytest.raises(labmod.LabError, match="already on"):
        lab.power_on(host)
    lab.power_off(host)
    t0 = time.monotonic()
    lab.power_on(host)
    print(f"\npower on to sshd: {time.monotonic() - t0:.2f}s, memory {lab.memory(host)}")
    assert ssh(lab, host, "systemctl", "is-system-running", "--wait").stdout.strip() == "running"
    # `systemctl poweroff` inside: the host stays off.
    lab.run(host, ["systemctl", "poweroff"], check=False)
    deadline = time.monotonic() + 10
    while lab.powered(host):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert "PID 1 ended (130)" in (h.dir / "power.log").read_text()
    assert not cg.exists() and not boot.is_mountpoint(h.dir / "run")
    lab.power_on(host)
    assert ssh(lab, host, "hostname").stdout.strip() == host


def _netns_pids(ns: str) -> list[int]:
    out = sh(["ip", "netns", "pids", ns]).stdout
    return [int(p) for p in out.split()]


def _mounts_under(path: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(path))]


def test_down_leaves_nothing(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "tests.lab"]
    wd = tmp_path / "solo"
    # Started by the command line (as the demo does): the power supply outlives that process.
    sh([*cli, "up", "--workdir", str(wd), "--init", "systemd", "--topology", json.dumps({"solo": ["pub"]})],
       cwd=REPO)
    lab = Lab.load(wd)
    assert ssh(lab, "solo", "hostname").stdout.strip() == "solo"
    ns = set(lab.namespaces)
    cg = Path(lab._state["hosts"]["solo"]["cgroup"])
    pids = lab.pids()
    pid1 = boot.pid1(lab.hosts["solo"].dir)
    assert pid1 in pids and len(pids) >= 6  # power supply, unshare, systemd, journald, sshd, dbus...
    assert _mounts_under(wd) == [str(lab.hosts["solo"].dir / "run")]
    lab.run("solo", ["systemd-run", "--quiet", "--unit=sleeper", "sleep", "1000"])
    sh([*cli, "down", "--workdir", str(wd)], cwd=REPO)
    assert netns_names() & ns == set()
    assert not any(is_alive(p, None) for p in pids)
    assert not cg.exists()
    assert _mounts_under(wd) == []
    assert not wd.exists()


def test_plain_hosts_stay_the_default(tmp_path: Path) -> None:
    lab = Lab.start({"solo": ["pub"]}, tmp_path / "plain")
    try:
        assert lab.init == "plain" and lab.init_of("solo") == "plain"
        # No PID namespace of its own: its PID 1 is the machine's.
        inside = lab.run("solo", ["readlink", "/proc/self/ns/pid"]).stdout.strip()
        assert inside == os.readlink("/proc/self/ns/pid")
        with pytest.raises(labmod.LabError, match="does not run systemd"):
            lab.reboot("solo")
    finally:
        lab.down()


def test_sighup_and_sigint_mean_reboot_and_poweroff() -> None:
    """What the power supply relies on: unshare --fork dies of the signal its PID 1 died of, and
    the kernel reports reboot(2) in a PID namespace as SIGHUP (restart), SIGINT (power off)."""
    assert boot.EXIT_REBOOT == 128 + signal.SIGHUP and boot.EXIT_POWEROFF == 128 + signal.SIGINT
    code = "import ctypes,sys; ctypes.CDLL(None).reboot({})"
    for cmd, want in ((0x01234567, -signal.SIGHUP), (0x4321FEDC, -signal.SIGINT)):
        proc = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "python3", "-c",
                               code.format(cmd)], check=False)
        assert proc.returncode == want
