"""Rolling reboots (`deploy --reboot[=auto]`, `nix-hive reboot`) on lab hosts whose PID 1 is
systemd, with the lab's stand-in boot loader: a new system is booted once (the one-shot entry),
kept only once it is back and healthy, else the host boots its last good system. What
happened is read from the hosts themselves (their boots, boot entries, running system), not
from nix-hive's output alone."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hive import elevate, options, reboot
from hive.errors import HiveError, InputError
from hive.remote import Remote
from hive.resources import host_file, host_script
from hive.ssh import SshSetup
from tests.conftest import REPO, needs_lab, nix_hive, write_hive
from tests.constants import STANDIN
from tests.fleet import Fleet, nix_env
from tests.lab.boot import Boot

Start = Callable[..., Fleet]
SOURCE = REPO / "tests" / "hives" / "reboots"
BOOT_ID = "0f4c6b55-3f5e-4a8e-9d6b-2a1c5e7f9b01"
TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"], "www-2": ["int"]}


def run(fleet: Fleet, variant: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`nix-hive ARGS` with every web host's system the `variant` ("www-1=v2,www-2=v1b": per host)."""
    fleet.env["REBOOT_VARIANT"], fleet.env["REBOOT_VARIANTS"] = ("", variant) if "=" in variant else (variant, "")
    return fleet.run(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert result.stdout, result.stderr
    return {row["instance"]: row for row in json.loads(result.stdout)["instances"]}


def paths(fleet: Fleet, variant: str) -> dict[str, str]:
    out = run(fleet, variant, "build", "-q")
    assert out.returncode == 0, out.stderr
    return {name: s["result"] for name, s in json.loads(out.stdout)["systems"].items()}


def default(fleet: Fleet, host: str) -> str:
    """The host's default boot entry (the stand-in boot loader's)."""
    return fleet.lab.run(host, ["cat", "/boot/standin/default"]).stdout.strip()


def start(fleet_factory: Start) -> tuple[Fleet, dict[str, str]]:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=4096)
    first = run(fleet, "v1", "deploy", "--json")
    assert first.returncode == 0, first.stderr
    v1 = paths(fleet, "v1")
    assert fleet.lab.current_system("www-1") == v1["www-1"]
    return fleet, v1


def test_needs_reads_what_differs() -> None:
    assert reboot.parse_needs("needs kernel kernel-params\n") == ("kernel", "kernel-params")
    assert reboot.parse_needs("noise\nneeds\n") == ()
    assert reboot.parse_needs("needs unknown\n") == ("unknown",)
    with pytest.raises(HiveError, match="unexpected answer"):
        reboot.parse_needs("")


def test_the_host_script_runs_as_root_from_a_file_with_each_value_an_argument(tmp_path: Path) -> None:
    setup = SshSetup(directory=tmp_path, config=tmp_path / "ssh_config", known_hosts=tmp_path / "known_hosts")
    host = Remote(setup, "www-1")
    argv = reboot.host_argv(host, "start", "ID", "/nix/store/abc-system", "38", "me@deployer")
    assert argv[:4] == ["ssh", "-F", str(tmp_path / "ssh_config"), "--"] and argv[4] == "www-1"
    words = shlex.split(argv[5])
    # elevate.sh, then reboot.sh's text; `root CALLID`: as_root writes that text (standard input)
    # to /run/nix-hive/CALLID/reboot.sh and runs it there with `sh`, never `sh -c` as root
    assert words[:2] == ["sh", "-c"] and words[2] == host.root_script(host_script("reboot.sh"))
    assert words[3:5] == ["sh", "root"] and words[6:] == ["start", "ID", "/nix/store/abc-system", "38", "me@deployer"]
    assert reboot.host_input(host, "start") == host_script("reboot.sh")
    rule = re.compile(dict((c, a) for c, a in elevate.REBOOT_RULES)["sh"])
    call = f"/run/nix-hive/{words[5]}/reboot.sh " + " ".join(words[6:]).replace("ID", words[5])
    assert rule.match(call) and not rule.match(call + " /etc/shadow")
    assert not rule.match(call.replace("reboot.sh", "x/../reboot.sh"))
    # the clearing of a reboot that did not happen: its call shape too, by the host's boot id alone
    words = shlex.split(reboot.host_argv(host, "cancel", BOOT_ID)[5])
    assert words[3:5] == ["sh", "root"] and words[6:] == ["cancel", BOOT_ID]
    cancel = f"/run/nix-hive/{words[5]}/reboot.sh cancel {BOOT_ID}"
    assert rule.match(cancel) and not rule.match(cancel + " x") and not rule.match(cancel.replace(BOOT_ID, "-"))
    words = shlex.split(reboot.host_argv(host, "fall-back")[5])
    assert rule.match(f"/run/nix-hive/{words[5]}/reboot.sh fall-back")
    # the calls that only read run as the ssh user, with nothing on their standard input
    booted = shlex.split(reboot.host_argv(host, "booted", BOOT_ID, "60")[5])
    assert booted[2] == host_script("reboot.sh") and booted[3:] == ["sh", "booted", BOOT_ID, "60"]
    assert reboot.host_input(host, "booted") is None
    fresh = reboot.host_argv(host, "keep", "/nix/store/abc-system", fresh=True)
    assert "ControlPath=none" in fresh
    assert "ControlMaster=no" in reboot.host_argv(host, "needs", "/x", share=False)


GRUB_CFG = """set default="${saved_entry}"
menuentry "NixOS - Default" --class nixos --unrestricted {
  linux /kernels/k-bzImage init=/nix/store/bbb-nixos-system-b/init loglevel=4
}
submenu "NixOS - All configurations" --class submenu {
menuentry "NixOS - Configuration 42 (2026-12-01 - 24.11)" --class nixos {
  linux /kernels/k-bzImage init=/nix/store/bbb-nixos-system-b/init loglevel=4
}
menuentry "NixOS - Configuration 41 (2026-11-30 - 24.11)" --class nixos {
  linux /kernels/k-bzImage init=/nix/store/aaa-nixos-system-a/init loglevel=4
}
}
"""


def on_this_machine(*args: str) -> str:
    """reboot.sh ARGS run here (a call that only reads its arguments)."""
    return subprocess.run(["sh", str(host_file("reboot.sh")), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_host_that_answers_with_the_boot_id_it_had_has_not_rebooted() -> None:
    # this machine, as a host would answer: its own boot id is "not rebooted yet", whatever else
    # (no marker file of the reboot's, the one thing today's `booted` looked at)
    own = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert on_this_machine("booted", own, "1") == "waiting"


def test_grub_boots_a_generation_once_by_its_entry_in_the_submenu(tmp_path: Path) -> None:
    (tmp_path / "grub.cfg").write_text(GRUB_CFG)
    cfg = str(tmp_path / "grub.cfg")
    assert on_this_machine("grub-entry", "/nix/store/aaa-nixos-system-a", cfg) == \
        "NixOS - All configurations>NixOS - Configuration 41 (2026-11-30 - 24.11)"
    assert on_this_machine("grub-entry", "/nix/store/bbb-nixos-system-b", cfg) == \
        "NixOS - All configurations>NixOS - Configuration 42 (2026-12-01 - 24.11)"
    assert on_this_machine("grub-entry", "/nix/store/ccc-nixos-system-c", cfg) == ""


def test_reboot_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    assert [options.reboot_mode(t) for t in (None, "0", "always", "AUTO", "1")] == \
        [None, None, "always", "auto", "always"]
    with pytest.raises(InputError, match="--reboot, --reboot=always or --reboot=auto"):
        options.reboot_mode("www-1")
    hive = write_hive(tmp_path, 'let sys = { configuration = { }; }; in '
                      '{ systems.web = sys; instances.w = { system = "web"; rebootTimeout = 5; }; }')
    out = nix_hive("deploy", "-c", str(hive), "--reboot", "--goal", "boot", "w")
    assert out.returncode == 2 and "--reboot boots each new system: it takes no --goal boot" in out.stderr
    out = nix_hive("deploy", "-c", str(hive), "--reboot=sometimes", "w")
    assert out.returncode == 2 and "expected --reboot, --reboot=always or --reboot=auto" in out.stderr
    out = nix_hive("reboot", "-c", str(hive), "--reboot-timeout", "0", "w")
    assert out.returncode == 2 and "--reboot-timeout '0'" in out.stderr


@needs_lab
def test_a_good_reboot_keeps_the_new_system_and_an_unhealthy_one_rolls_back(fleet_factory: Start) -> None:
    fleet, _ = start(fleet_factory)
    before = {h: len(fleet.lab.boots(h)) for h in ("www-1", "www-2")}
    t0 = time.monotonic()
    result = run(fleet, "v2", "deploy", "--json", "--reboot", "www-*")
    took = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    v2 = {h: str(row["path"]) for h, row in rows(result).items()}
    for h in ("www-1", "www-2"):
        assert rows(result)[h]["outcome"] == "ok", result.stderr
        boots = fleet.lab.boots(h)
        assert len(boots) == before[h] + 1 and boots[-1].entry == "oneshot" and boots[-1].system == v2[h]
        assert fleet.lab.current_system(h) == v2[h] and default(fleet, h) == v2[h]  # kept after the checks
    print(f"a wave of 2 reboots: {took:.1f} s (seconds: {rows(result)['www-1']['seconds']})")
    status = run(fleet, "v2", "status", "--json", "www-*")
    assert [r["reboot"] for r in json.loads(status.stdout)] == ["no", "no"], status.stdout

    result = run(fleet, "unhealthy", "deploy", "--json", "--reboot", "www-1")
    row = rows(result)["www-1"]
    bad = row["path"]
    assert result.returncode == 1 and row["outcome"] == "rolled back", result.stderr
    assert "check health failed" in str(row["reason"]), row
    last = fleet.lab.boots("www-1")[-2:]
    assert [(b.entry, b.system) for b in last] == [("oneshot", bad), ("default", v2["www-1"])]
    assert fleet.lab.current_system("www-1") == v2["www-1"] and default(fleet, "www-1") == v2["www-1"]

    # a reboot alone: into the default entry, checked
    result = run(fleet, "v2", "reboot", "--json", "www-2")
    assert result.returncode == 0 and rows(result)["www-2"]["outcome"] == "ok", result.stderr
    assert fleet.lab.boots("www-2")[-1].entry == "default"


def grub_title(cfg: str, system: str) -> str:
    """`SUBMENU>TITLE` of the submenu entry of grub.cfg whose kernel line boots `system` (read
    here, apart from reboot.sh's own lookup)."""
    submenu = re.search(r'^submenu "([^"]*)"', cfg, re.M)
    assert submenu, cfg
    for m in re.finditer(r'^menuentry "([^"]*)"[^\n]*\{\n([^}]*)\}', cfg[submenu.end():], re.M):
        if f" init={system}/init " in m.group(2):
            return f"{submenu.group(1)}>{m.group(1)}"
    raise AssertionError(f"no entry boots {system}:\n{cfg}")


def grubenv(fleet: Fleet, host: str) -> list[str]:
    return fleet.lab.run(host, ["grub-editenv", "/boot/grub/grubenv", "list"]).stdout.splitlines()


@needs_lab
def test_grub_boots_the_new_system_once_by_grub_reboot_and_a_grub_cfg_without_grubenv_is_refused(
        fleet_factory: Start) -> None:
    """Hosts booting with GRUB (no stand-in; a /boot/grub/grub.cfg as NixOS's install-grub.pl
    writes it): nix-hive's one-shot entry is grubenv's next_entry as the real grub-reboot writes
    it, naming the new system's entry of the submenu; the lab's boot reads grubenv as that
    grub.cfg does (next_entry once, else its default). It works with boot.loader.grub.default =
    "saved" (www-1) and 0 (www-2): NixOS's grub.cfg takes next_entry whatever its default. A
    grub.cfg that never reads next_entry is refused in one line, and the host is not rebooted."""
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=4096)
    for h in ("www-1", "www-2"):
        fleet.lab.run(h, ["sh", "-c", "rm -rf /boot/standin && mkdir -p /boot/grub"])
    fleet.env["REBOOT_GRUB_FIRST"] = "www-2"
    first = run(fleet, "v1", "deploy", "--json")
    assert first.returncode == 0, first.stderr
    v1 = paths(fleet, "v1")
    cfg = fleet.lab.read("www-1", "/boot/grub/grub.cfg") or ""
    assert '\n  set default="${saved_entry}"\n  set timeout=5' in cfg and f" init={v1['www-1']}/init " in cfg, cfg
    assert "\n  set default=0\n" in (fleet.lab.read("www-2", "/boot/grub/grub.cfg") or "")

    result = run(fleet, "v2", "deploy", "--json", "--reboot", "www-*")
    assert result.returncode == 0, result.stdout + result.stderr
    for h in ("www-1", "www-2"):
        assert rows(result)[h]["outcome"] == "ok", result.stdout + result.stderr
        v2 = str(rows(result)[h]["path"])
        cfg = fleet.lab.read(h, "/boot/grub/grub.cfg") or ""
        # the boot took grubenv's next_entry (grub-reboot's), the new system's entry, once
        assert fleet.lab.grub_boots(h)[-1] == ("oneshot", grub_title(cfg, v2))
        assert (fleet.lab.boots(h)[-1].entry, fleet.lab.boots(h)[-1].system) == ("oneshot", v2)
        assert fleet.lab.current_system(h) == v2
        env = grubenv(fleet, h)
        assert "saved_entry=0" in env and not any(e.startswith("next_entry=") for e in env), env  # kept: entry 0
        assert f" init={v2}/init " in cfg.split("submenu")[0], cfg  # "NixOS - Default" is v2 now
        fleet.lab.reboot(h)
        assert fleet.lab.grub_boots(h)[-1] == ("default", "0") and fleet.lab.current_system(h) == v2
    v2 = str(rows(result)["www-1"]["path"])

    # an unhealthy system: booted once by its entry, then back to the default one (v2)
    result = run(fleet, "unhealthy", "deploy", "--json", "--reboot", "www-1")
    assert result.returncode == 1 and rows(result)["www-1"]["outcome"] == "rolled back", result.stderr
    bad = str(rows(result)["www-1"]["path"])
    cfg = fleet.lab.read("www-1", "/boot/grub/grub.cfg") or ""
    assert fleet.lab.grub_boots("www-1")[-2:] == [("oneshot", grub_title(cfg, bad)), ("default", "0")]
    assert fleet.lab.current_system("www-1") == v2

    # a grub.cfg that never reads grubenv (installed by the system it runs, kept after a reboot
    # into it): refused, not rebooted
    fleet.env["REBOOT_GRUB_NOENV"] = "www-2"
    noenv = run(fleet, "v2", "deploy", "--json", "--reboot", "www-2")
    assert noenv.returncode == 0, noenv.stdout + noenv.stderr
    on = fleet.lab.current_system("www-2")
    assert "next_entry" not in (fleet.lab.read("www-2", "/boot/grub/grub.cfg") or "next_entry")
    before = len(fleet.lab.boots("www-2"))
    result = run(fleet, "v1", "deploy", "--json", "--reboot", "www-2")
    row = rows(result)["www-2"]
    assert result.returncode == 1 and row["outcome"] == "failed", result.stdout + result.stderr
    assert "GRUB's grub.cfg never reads grubenv's next_entry: it would ignore grub-reboot" in str(row["reason"]), row
    assert len(fleet.lab.boots("www-2")) == before and fleet.lab.current_system("www-2") == on
    assert not any(e.startswith("next_entry=") for e in grubenv(fleet, "www-2"))


def power_cycle(fleet: Fleet, host: str) -> Boot:
    """Pull the plug and switch on again (as someone at the console would); the boot it made."""
    fleet.lab.power_off(host)
    fleet.lab.power_on(host)
    return fleet.lab.boots(host)[-1]


@needs_lab
def test_hosts_that_do_not_come_back_boot_their_last_good_system(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    # a system that hangs at boot: not back in time, so failed, and the next wave is not started
    result = run(fleet, "www-1=hang,www-2=v2", "deploy", "--json", "--reboot", "--reboot-timeout", "6",
                 "www-1", "www-2")
    found = rows(result)
    hang = found["www-1"]["path"]
    assert result.returncode == 1 and found["www-1"]["outcome"] == "failed", result.stderr
    reason = str(found["www-1"]["reason"])
    assert "did not come back within 6 s" in reason and f"last good system {v1['www-1']}" in reason, reason
    assert "next power cycle" in reason
    assert found["www-2"]["outcome"] == "skipped" and "wave 1 failed" in str(found["www-2"]["reason"])
    assert fleet.lab.boots("www-1")[-1] .mode == "hang" and fleet.lab.boots("www-1")[-1].system == hang
    assert default(fleet, "www-1") == v1["www-1"]
    booted = power_cycle(fleet, "www-1")
    assert (booted.entry, booted.system) == ("default", v1["www-1"])
    assert fleet.lab.current_system("www-1") == v1["www-1"]

    # a system without sshd once booted: either nix-hive saw it before sshd stopped (its new login
    # fails: back to the last good system) or never did (failed, back at the next power cycle)
    result = run(fleet, "www-2=nossh", "deploy", "--json", "--reboot", "--reboot-timeout", "6", "www-2")
    row = rows(result)["www-2"]
    assert result.returncode == 1 and row["outcome"] in ("rolled back", "failed"), result.stderr
    assert default(fleet, "www-2") == v1["www-2"]
    if row["outcome"] == "failed":
        assert "next power cycle" in str(row["reason"]), row
        assert "Stopped" in fleet.lab.journal("www-2", "sshd.service")  # it booted, then stopped sshd
        power_cycle(fleet, "www-2")
    else:
        assert "new ssh login" in str(row["reason"]), row
    assert fleet.lab.current_system("www-2") == v1["www-2"]


@needs_lab
def test_reboot_auto_reboots_only_the_hosts_whose_kernel_changed(fleet_factory: Start) -> None:
    fleet, _ = start(fleet_factory)
    for h in ("www-1", "www-2"):  # booted on v1 (lab hosts start with no system to boot)
        fleet.lab.reboot(h)
    variant = "www-1=v2,www-2=v1b"
    staged = run(fleet, variant, "deploy", "--json", "--goal", "boot", "www-*")
    assert staged.returncode == 0, staged.stderr
    new = {h: row["path"] for h, row in rows(staged).items()}
    status = run(fleet, variant, "status", "--json", "www-*")
    assert {r["instance"]: r["reboot"] for r in json.loads(status.stdout)} == \
        {"www-1": "yes (kernel, initrd)", "www-2": "no"}, status.stdout
    before = {h: len(fleet.lab.boots(h)) for h in ("www-1", "www-2")}
    result = run(fleet, variant, "deploy", "--json", "--reboot=auto", "www-*")
    assert result.returncode == 0, result.stderr
    assert [len(fleet.lab.boots(h)) - before[h] for h in ("www-1", "www-2")] == [1, 0]
    assert fleet.lab.boots("www-1")[-1].entry == "oneshot"
    for h in ("www-1", "www-2"):
        assert fleet.lab.current_system(h) == new[h] and default(fleet, h) == new[h]
    assert "no reboot needed" in result.stderr and "needed: kernel, initrd changed" in result.stderr


def killed_while_rebooting(fleet: Fleet, host: str) -> None:
    """`deploy --reboot HOST` (REBOOT_VARIANT as fleet.env says), killed once its host rebooted."""
    booted = len(fleet.lab.boots(host))
    argv = fleet.nix_hive_argv("deploy", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "--reboot", host)
    deployer = subprocess.Popen(argv, env={**nix_env(), **fleet.env, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(fleet.lab.boots(host)) == booted:  # it waits for the host now
            assert deployer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(deployer.pid, signal.SIGKILL)
        deployer.wait()
    fleet.lab.wait_up(host)


@needs_lab
def test_a_run_killed_while_its_host_reboots_is_finished_by_the_next(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    v2 = paths(fleet, "v2")["www-1"]
    killed_while_rebooting(fleet, "www-1")
    # on trial: it runs the new system, its default is still the last good one
    assert fleet.lab.current_system("www-1") == v2 and default(fleet, "www-1") == v1["www-1"]
    # a reboot alone boots the default entry, the last good system (the trial is no fallback)
    result = run(fleet, "v2", "reboot", "--json", "www-1")
    assert result.returncode == 0 and rows(result)["www-1"]["outcome"] == "ok", result.stderr
    assert fleet.lab.current_system("www-1") == v1["www-1"] and default(fleet, "www-1") == v1["www-1"]

    killed_while_rebooting(fleet, "www-1")
    booted = len(fleet.lab.boots("www-1"))
    assert fleet.lab.current_system("www-1") == v2 and default(fleet, "www-1") == v1["www-1"]
    result = run(fleet, "v2", "deploy", "--json", "--reboot", "www-1")
    assert result.returncode == 0 and rows(result)["www-1"]["outcome"] == "ok", result.stderr
    assert "kept after an earlier run's reboot" in result.stderr
    assert len(fleet.lab.boots("www-1")) == booted  # checked and kept, not rebooted again
    assert default(fleet, "www-1") == v2


def not_rebooted(fleet: Fleet, host: str, good: str, booted: int) -> None:
    """The host never went down: no new boot, it runs `good`, whose entry is its default and
    no one-shot entry is left (the next boot, whenever, boots `good`); no trial recorded, and
    the host's lock is free."""
    assert len(fleet.lab.boots(host)) == booted
    assert fleet.lab.current_system(host) == good and default(fleet, host) == good
    assert fleet.lab.read(host, "/boot/standin/oneshot") is None
    assert fleet.lab.read(host, "/var/lib/nix-hive/reboot") is None
    assert fleet.lab.run(host, ["flock", "-n", "/run/nix-hive/lock", "true"], check=False).returncode == 0


@needs_lab
def test_a_refused_reboot_is_reported_at_once_and_the_host_stays_on_its_last_good_system(
        fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    fleet.lab.systemctl("www-1", "mask", "reboot.target", check=True)
    booted = len(fleet.lab.boots("www-1"))
    result = run(fleet, "v2", "deploy", "--json", "--reboot", "--reboot-timeout", "120", "www-1")
    row = rows(result)["www-1"]
    assert result.returncode == 1 and row["outcome"] == "failed", result.stderr
    reason = str(row["reason"]).removeprefix("activate: ")  # the step deploy names
    assert reason.startswith("the host did not reboot: ") and "reboot.target is masked" in reason, reason
    assert reason.endswith(f"; it stays on its last good system {v1['www-1']}"), reason
    assert isinstance(row["seconds"], dict) and "boot" not in row["seconds"]  # at once: no wait for a boot
    not_rebooted(fleet, "www-1", v1["www-1"], booted)
    booted_now = power_cycle(fleet, "www-1")
    assert (booted_now.entry, booted_now.system) == ("default", v1["www-1"])

    # an inhibitor lock refuses it too (systemctl says no more than for the mask: reboot.sh adds it)
    fleet.lab.systemctl("www-1", "unmask", "reboot.target", check=True)
    fleet.lab.run("www-1", ["systemd-run", "--quiet", "--collect", "--unit=lab-inhibit", "systemd-inhibit",
                            "--what=shutdown", "--mode=block", "sleep", "1000"])
    booted = len(fleet.lab.boots("www-1"))
    result = run(fleet, "v2", "deploy", "--json", "--reboot", "www-1")
    reason = str(rows(result)["www-1"]["reason"]).removeprefix("activate: ")
    assert result.returncode == 1 and "1 inhibitor lock(s) block shutdown" in reason, reason
    assert reason.startswith("the host did not reboot: "), reason
    not_rebooted(fleet, "www-1", v1["www-1"], booted)


# A unit whose stop never ends, stopped before sshd (After=): a reboot accepted, its shutdown
# hangs, and the host goes on answering ssh from the same boot.
HOLD_SHUTDOWN = """[Unit]
After=sshd.service
[Service]
ExecStart=/bin/sleep infinity
ExecStop=/bin/sleep infinity
TimeoutStopSec=infinity
"""


@needs_lab
def test_a_reboot_accepted_but_not_done_in_time_is_undone_and_stops_the_next_waves(fleet_factory: Start) -> None:
    fleet, v1 = start(fleet_factory)
    fleet.lab.run("www-1", ["sh", "-c", "cat > /etc/systemd/system/lab-hold.service"], input=HOLD_SHUTDOWN)
    fleet.lab.systemctl("www-1", "daemon-reload", check=True)
    fleet.lab.systemctl("www-1", "start", "lab-hold.service", check=True)
    booted = len(fleet.lab.boots("www-1"))
    result = run(fleet, "www-1=v2,www-2=v2", "deploy", "--json", "--reboot", "--reboot-timeout", "5",
                 "www-1", "www-2")
    found = rows(result)
    assert result.returncode == 1 and found["www-1"]["outcome"] == "failed", result.stderr
    reason = str(found["www-1"]["reason"]).removeprefix("activate: ")
    assert reason == ("the host did not reboot within 5 s: it still answers, with the boot id it had before; its "
                      f"one-shot entry was cleared, it stays on its last good system {v1['www-1']}"), reason
    assert found["www-2"]["outcome"] == "skipped" and "wave 1 failed" in str(found["www-2"]["reason"])
    assert fleet.lab.systemctl("www-1", "is-system-running").stdout.strip() == "stopping"  # it was accepted
    not_rebooted(fleet, "www-1", v1["www-1"], booted)
    booted_now = power_cycle(fleet, "www-1")  # its shutdown never ends: someone pulls the plug
    assert (booted_now.entry, booted_now.system) == ("default", v1["www-1"])
    assert fleet.lab.current_system("www-1") == v1["www-1"]
