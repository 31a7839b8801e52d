"""The stand-in NixOS system's activation behaviours (tests/nixpkgs/nixos) on lab hosts:
`standin.activation` (fail, hang), `standin.healthy` with the health endpoint of
`standin.httpPort`, and `services.openssh.enable = false` stopping the host's sshd through the
lab's hooks; and `Lab.down` finding what those activations started. Then what issue 31 needs
of it: packages with versions in the closure, `dry-activate`'s report of the unit changes (on a
plain host and on one whose PID 1 is systemd, where `switch` then does what it said), switch
inhibitors, and systems that use none of it keeping their store paths."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import STANDIN, needs_lab
from tests.constants import nix_env
from tests.lab import Lab
from tests.lab.hostfs import SSHD_START_HOOK, SSHD_STOP_HOOK
from tests.lab.lab import Init
from tests.lab.procs import is_alive, start_time

pytestmark = needs_lab

# name -> extra configuration of a stand-in system (all built in one `nix build`)
SYSTEMS = {
    "ok": "",
    "ok2": "",
    "fail": 'standin.activation = "fail";',
    "hang": 'standin.activation = "hang";',
    "web": "standin.httpPort = 8080;",
    "sick": "standin.httpPort = 8080; standin.healthy = false;",
    "web2": "standin.httpPort = 8081;",
    "nossh": "services.openssh.enable = false;",
    "ssh": "services.openssh.enable = true;",
}


def plan_system(version: str, packages: str, systemd: str, ssh: str, only: str) -> str:
    """A system for the unit plan (issue 31): packages, systemd's version, sshd's settings and
    units running `sleep`: keep the same in every version, only (gone or new) in this one, and
    changed (stopped and started), restart (stopIfChanged = false), reload (reloadIfChanged)
    and skip (restartIfChanged = false), whose scripts name the version (so their files differ)."""
    extra = {only: "", "changed": "", "restart": "stopIfChanged = false;",
             "reload": 'reloadIfChanged = true; reload = "echo reloaded >> /run/st-reloads";',
             "skip": "restartIfChanged = false;"}
    return (f"standin.packages = {packages}; standin.systemdVersion = \"{systemd}\";"
            f" services.openssh.settings = {ssh}; systemd.services.keep.script = \"exec sleep 100000\";"
            + "".join(f' systemd.services.{n} = {{ script = "exec sleep 10000{version}"; {e} }};'
                      for n, e in extra.items()))


# pv1 -> pv2: nginx, systemd and sshd's settings change too.
PLAN = {
    "pv1": plan_system("1", '{ openssl = "3.0.13"; nginx = { version = "1.24.0"; bytes = 200000; }; }', "255.4",
                       '{ PermitRootLogin = "prohibit-password"; }', "gone"),
    "pv2": plan_system("2", '{ openssl = "3.0.13"; nginx = "1.25.0"; }', "256.1",
                       '{ PermitRootLogin = "prohibit-password"; X11Forwarding = false; }', "new"),
    # switch inhibitors: inh2 changes the value of systemd (and adds kernel), inh3 adds one only
    "inh1": 'system.switch.inhibitors = { systemd = "255"; dbus = "dbus"; };',
    "inh2": 'system.switch.inhibitors = { systemd = "256"; dbus = "dbus"; kernel = "6.12"; };',
    "inh3": 'system.switch.inhibitors = { systemd = "255"; dbus = "dbus"; kernel = "6.12"; };',
}
SYSTEMS |= PLAN

# Fetches http://127.0.0.1:PORT/PATH from inside a host; prints "STATUS BODY".
FETCH = (
    "import sys, urllib.error, urllib.request\n"
    "try:\n"
    "    r = urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}', timeout=5)\n"
    "    print(r.status, r.read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code, e.read().decode())\n"
    "except OSError as e:\n"
    "    print('refused', e)\n")


def sh(argv: list[str], *, check: bool = True, timeout: float = 60,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def build(directory: Path, systems: dict[str, str]) -> dict[str, str]:
    """Build stand-in systems (name -> extra configuration): name -> store path."""
    body = "".join(
        f'  "{n}" = (import {STANDIN}/nixos {{ configuration = {{ '
        f'networking.hostName = "st-{n}"; standin.payloadBytes = 1000; {extra} }}; }}).system;\n'
        for n, extra in systems.items())
    expr = directory / "systems.nix"
    expr.write_text("{\n" + body + "}\n")
    out = sh(["nix", "build", "--impure", "-f", str(expr), *systems, "--json", "--no-link"],
             env=nix_env()).stdout
    paths = [str(r["outputs"]["out"]) for r in json.loads(out)]  # not in the order asked
    return {n: next(p for p in paths if p.endswith(f"-nixos-system-st-{n}")) for n in systems}


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build(tmp_path_factory.mktemp("standin"), SYSTEMS)


@contextlib.contextmanager
def standin_lab(workdir: Path, systems: dict[str, str], hosts: Sequence[str] = ("st-a", "st-b"),
                init: Init = "plain") -> Iterator[Lab]:
    """Hosts (two plain ones unless told) holding the stand-in systems given."""
    lab = Lab.start({host: ["pub"] for host in hosts}, workdir, init=init)
    try:
        env = nix_env() | {"NIX_SSHOPTS": f"-F {lab.ssh_config_path}"}
        for host in lab.hosts:
            sh(lab.deployer_argv(["nix", "copy", "--no-check-sigs", "--to", f"ssh://{host}",
                                  *systems.values()]), env=env)
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, systems: dict[str, str]) -> Iterator[Lab]:
    with standin_lab(tmp_path_factory.mktemp("lab") / "lab", systems) as lab:
        yield lab


@pytest.fixture
def own_lab(tmp_path: Path, systems: dict[str, str]) -> Iterator[Lab]:
    """A lab of the test's own (pytest-xdist spreads this module's tests over workers)."""
    with standin_lab(tmp_path / "lab", systems) as lab:
        yield lab


def switch(lab: Lab, host: str, path: str, goal: str = "switch", *, timeout: float = 30,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """switch-to-configuration over ssh from the deployer, as a deploy tool runs it."""
    return sh(lab.ssh_argv(host, [f"{path}/bin/switch-to-configuration", goal]), check=check,
              timeout=timeout)


def fetch(lab: Lab, host: str, port: int, path: str = "/health") -> str:
    return lab.run(host, ["python3", "-c", FETCH, str(port), path]).stdout.strip()


def starts(lab: Lab, host: str) -> list[list[str]]:
    return [line.split()[1:] for line in lab.activation_starts(host)]


def test_hooks_written(lab: Lab) -> None:
    for host in lab.hosts:
        for hook in (SSHD_STOP_HOOK, SSHD_START_HOOK):
            assert lab.run(host, ["test", "-x", hook]).returncode == 0
        assert lab.read(host, "/run/standin-health") is None


def test_unknown_activation_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r'standin.activation must be "ok", "fail" or "hang"'):
        build(tmp_path, {"bad": 'standin.activation = "maybe";'})


def test_fail(lab: Lab, systems: dict[str, str]) -> None:
    ok, fail = systems["ok"], systems["fail"]
    switch(lab, "st-a", ok)
    n = len(lab.activations("st-a"))
    for goal in ("switch", "test", "boot"):
        proc = switch(lab, "st-a", fail, goal, check=False)
        assert proc.returncode == 1, proc
        assert "activation failed: standin.activation = fail" in proc.stderr
        assert starts(lab, "st-a")[-1] == [goal, fail, "root"]
    # It did its work (like NixOS: the activation script ran, a unit then failed) but logged no
    # completed activation.
    assert lab.current_system("st-a") == fail
    assert len(lab.activations("st-a")) == n
    assert switch(lab, "st-a", fail, "dry-activate").returncode == 0
    # Rolling back runs the previous system's own script, which works.
    switch(lab, "st-a", ok)
    assert lab.current_system("st-a") == ok
    assert lab.activations("st-a")[-1].split()[1:] == ["switch", ok, "root"]
    # The old host-wide hook still works, for any system.
    lab.run("st-a", ["touch", "/run/standin-fail-activation"])
    try:
        proc = switch(lab, "st-a", systems["ok2"], check=False)
        assert proc.returncode == 1 and "/run/standin-fail-activation exists" in proc.stderr
    finally:
        lab.run("st-a", ["rm", "/run/standin-fail-activation"])


def test_hang(lab: Lab, systems: dict[str, str]) -> None:
    ok, hang = systems["ok"], systems["hang"]
    switch(lab, "st-a", ok)
    n = len(lab.activations("st-a"))
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as e:
        switch(lab, "st-a", hang, timeout=3)
    assert time.monotonic() - t0 < 10
    assert starts(lab, "st-a")[-1] == ["switch", hang, "root"]
    stderr = e.value.stderr
    text = stderr.decode() if isinstance(stderr, bytes) else (stderr or "")
    assert "now hanging: standin.activation = hang" in text
    assert len(lab.activations("st-a")) == n
    assert lab.current_system("st-a") == hang
    # Still hanging inside the host (the caller must time it out)...
    ps = lab.run("st-a", ["pgrep", "-f", f"{hang}/bin/switch-to-configuration"], check=False)
    assert ps.returncode == 0, "the hanging activation is gone"
    # ...while rolling back works.
    switch(lab, "st-a", ok)
    assert lab.current_system("st-a") == ok
    assert lab.activations("st-a")[-1].split()[1:] == ["switch", ok, "root"]


def test_health_and_http(lab: Lab, systems: dict[str, str]) -> None:
    host = "st-a"
    switch(lab, host, systems["ok"])
    assert lab.read(host, "/run/standin-health") == "healthy\n"
    assert fetch(lab, host, 8080).startswith("refused")
    t0 = time.monotonic()
    switch(lab, host, systems["web"], timeout=10)  # returns: the server does not hold ssh
    assert time.monotonic() - t0 < 5
    assert fetch(lab, host, 8080) == "200 ok"
    assert fetch(lab, host, 8080, "/elsewhere") == "404 not found"
    pid = int(lab.read(host, "/run/standin-http.pid") or "0")
    assert is_alive(pid, None) and pid in lab.pids()
    ns = sh(["ip", "netns", "identify", str(pid)]).stdout.strip()
    assert ns == lab.hosts[host].netns
    # Unhealthy: the same port, a restarted server, 503.
    switch(lab, host, systems["sick"], timeout=10)
    assert lab.read(host, "/run/standin-health") == "unhealthy\n"
    assert fetch(lab, host, 8080) == "503 unhealthy"
    pid2 = int(lab.read(host, "/run/standin-http.pid") or "0")
    assert pid2 != pid and not is_alive(pid, None)
    # `test` activates too; `boot` and dry-activate change nothing on the running host.
    switch(lab, host, systems["web"], "boot")
    switch(lab, host, systems["web"], "dry-activate")
    assert fetch(lab, host, 8080) == "503 unhealthy"
    switch(lab, host, systems["web"], "test", timeout=10)
    assert fetch(lab, host, 8080) == "200 ok"
    # Through sudo as the deploy user too (sudo waits for its command only).
    sh(lab.ssh_argv(host, ["sudo", "-n", f"{systems['sick']}/bin/switch-to-configuration", "test"],
                    user="deploy"), timeout=10)
    assert fetch(lab, host, 8080) == "503 unhealthy"
    assert lab.activations(host)[-1].split()[1:] == ["test", systems["sick"], "root"]
    # Another port: the old server is gone.
    switch(lab, host, systems["web2"], timeout=10)
    assert fetch(lab, host, 8081) == "200 ok"
    assert fetch(lab, host, 8080).startswith("refused")
    # A system without httpPort stops it.
    pid3 = int(lab.read(host, "/run/standin-http.pid") or "0")
    switch(lab, host, systems["ok"])
    assert fetch(lab, host, 8081).startswith("refused")
    assert not is_alive(pid3, None)
    assert lab.read(host, "/run/standin-http.pid") is None
    # Left running for test_down.
    switch(lab, host, systems["web"], timeout=10)
    assert fetch(lab, host, 8080) == "200 ok"


def can_login(lab: Lab, host: str) -> bool:
    argv = lab.deployer_argv(["ssh", "-F", str(lab.ssh_config_path), "-o", "ControlPath=none",
                              "-o", "ConnectTimeout=5", host, "hostname"])
    return sh(argv, check=False).returncode == 0


def test_openssh_disabled(lab: Lab, systems: dict[str, str], tmp_path: Path) -> None:
    host = "st-b"
    d = lab.hosts[host].dir
    lab_sshd = int((d / "sshd.pid").read_text())
    sock = tmp_path / "cm"
    master = lab.deployer_argv(["ssh", "-F", str(lab.ssh_config_path), "-o", "ControlMaster=yes",
                                "-o", f"ControlPath={sock}", "-o", "ControlPersist=yes", "-f",
                                "-N", host])
    sh(master)

    def over_master(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(lab.deployer_argv(["ssh", "-F", str(lab.ssh_config_path), "-o",
                                     f"ControlPath={sock}", "-o", "ControlMaster=no", host,
                                     "--", *argv]), timeout=timeout)

    try:
        assert can_login(lab, host)
        over_master([f"{systems['nossh']}/bin/switch-to-configuration", "switch"])
        assert not is_alive(lab_sshd, None)
        assert not (d / "sshd.pid").exists()
        assert not can_login(lab, host)
        # The connection opened before survives (only the listener was stopped).
        assert over_master(["hostname"]).stdout.strip() == host
        assert lab.current_system(host) == systems["nossh"]
        # A system with openssh enabled, activated over that connection, starts sshd again.
        over_master([f"{systems['ssh']}/bin/switch-to-configuration", "switch"])
        assert can_login(lab, host)
        new = int((d / "sshd.pid").read_text())
        assert new != lab_sshd and is_alive(new, None)
        assert sh(["ip", "netns", "identify", str(new)]).stdout.strip() == lab.hosts[host].netns
        assert new in lab.pids()
        # It is the lab's sshd: same config and log, clean environment.
        cmdline = Path(f"/proc/{new}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f" -f {d / 'sshd_config'} -E {d / 'sshd.log'}" in cmdline
        environ = Path(f"/proc/{new}/environ").read_bytes()
        assert b"SSH_CONNECTION" not in environ
        # Enabled and running: activation leaves it alone.
        switch(lab, host, systems["ok"])
        assert int((d / "sshd.pid").read_text()) == new
        # Stopped again, then started by a plain `test` activation.
        over_master([f"{systems['nossh']}/bin/switch-to-configuration", "test"])
        assert not is_alive(new, None) and not can_login(lab, host)
        over_master([f"{systems['ok']}/bin/switch-to-configuration", "test"])
        assert can_login(lab, host)
    finally:
        sh(lab.deployer_argv(["ssh", "-F", str(lab.ssh_config_path), "-o",
                              f"ControlPath={sock}", "-O", "exit", host]), check=False)


def test_down_leaves_nothing(own_lab: Lab, systems: dict[str, str]) -> None:
    """A restarted sshd, health servers and a hanging activation are all killed."""
    lab = own_lab
    with pytest.raises(subprocess.TimeoutExpired):
        switch(lab, "st-b", systems["hang"], timeout=2)
    for host in lab.hosts:
        switch(lab, host, systems["web"], timeout=10)  # a health server on each host
    lab.run("st-b", [SSHD_STOP_HOOK])  # and an sshd the lab did not start, as activations do
    lab.run("st-b", [SSHD_START_HOOK])
    sshd = int((lab.hosts["st-b"].dir / "sshd.pid").read_text())
    http = {h: int(lab.read(h, "/run/standin-http.pid") or "0") for h in lab.hosts}
    # by pid and start time: a recorded process that died may have left its pid to a new one
    recorded = {(int(r["pid"]), r["start"]) for r in lab._state["pids"]}
    assert (sshd, start_time(sshd)) not in recorded  # restarted by the hooks above
    pids = lab.pids()
    in_ns = {p for h in lab.hosts.values()
             for p in map(int, sh(["ip", "netns", "pids", h.netns]).stdout.split())}
    hung = lab.run("st-b", ["pgrep", "-f", f"{systems['hang']}/bin/switch-to-configuration"])
    # pgrep sees the whole machine (hosts have no pid namespace): this host's hang only
    hung_here = set(map(int, hung.stdout.split())) & {
        int(p) for p in sh(["ip", "netns", "pids", lab.hosts["st-b"].netns]).stdout.split()}
    assert hung_here
    assert {sshd, *http.values(), *hung_here} <= set(pids)
    assert 0 not in http.values()
    assert in_ns <= set(pids)
    namespaces = lab.namespaces
    lab.down()
    assert not [p for p in pids if is_alive(p, None)]
    listed = sh(["ip", "netns", "list"]).stdout
    assert not [ns for ns in namespaces if ns in listed.split()]


# ------------------------------------------------------------------------------ issue 31

def test_packages_are_store_paths_named_by_version_and_shared(systems: dict[str, str]) -> None:
    v1, v2, ok = systems["pv1"], systems["pv2"], systems["ok"]
    openssl = os.readlink(f"{v1}/sw/openssl")
    assert openssl.endswith("-openssl-3.0.13")
    assert os.readlink(f"{v2}/sw/openssl") == openssl  # the same version: one path in both
    nginx1, nginx2 = os.readlink(f"{v1}/sw/nginx"), os.readlink(f"{v2}/sw/nginx")
    assert nginx1.endswith("-nginx-1.24.0") and nginx2.endswith("-nginx-1.25.0")
    assert Path(nginx1, "lib/nginx/nginx").stat().st_size == 200000
    assert Path(nginx2, "lib/nginx/nginx").stat().st_size == 4096  # the default
    # the same content in every build of it
    assert Path(openssl, "lib/openssl/openssl").read_bytes() == hashlib.shake_256(b"openssl-3.0.13").digest(4096)
    systemd1, systemd2 = os.readlink(f"{v1}/systemd"), os.readlink(f"{v2}/systemd")
    assert systemd1.endswith("-systemd-255.4") and systemd2.endswith("-systemd-256.1")
    assert Path(systemd1, "lib/systemd/systemd").is_file()

    def closure(path: str) -> set[str]:
        return set(sh(["nix-store", "-qR", path]).stdout.split())

    c1, c2 = closure(v1), closure(v2)
    assert {openssl, nginx1, systemd1} <= c1 and {openssl, nginx2, systemd2} <= c2

    def names(paths: set[str]) -> set[str]:
        return {Path(p).name.split("-", 1)[1] for p in paths}

    # What v1 has and v2 has not: the changed packages, and what changes with any system (its
    # toplevel and payload, changed units and scripts, sshd's configuration and unit).
    assert {"nginx-1.24.0", "systemd-255.4"} <= names(c1 - c2)
    assert not {n for n in names(c1 ^ c2) if n.startswith("openssl")}
    # none of it in a system that uses none of it
    assert not Path(ok, "sw").exists() and not Path(ok, "systemd").exists()
    assert not Path(ok, "switch-inhibitors").exists()


# Out paths of systems that use none of the options added for issue 31, as the stand-in made
# them before (commit ca5885b): they must not change, nor must the lab tests' closures and byte
# budgets. (Evaluated for x86_64-linux, nothing built.)
UNTOUCHED = {
    "plain": ('{ networking.hostName = "pin-plain"; }',
              "/nix/store/b18h2k9wy5x4kbpcqa2mr111xzhak1k8-nixos-system-pin-plain"),
    "units": ('{ networking.hostName = "pin-units"; standin.httpPort = 8080;'
              ' systemd.services.a = { script = "exec sleep 1000"; serviceConfig.Type = "oneshot"; }; }',
              "/nix/store/il2g6vk0ihrph2flhlgrpl133ipdp4y1-nixos-system-pin-units"),
    "off": ('{ networking.hostName = "pin-plain"; standin.nixosSwitch = false; }',
            "/nix/store/b18h2k9wy5x4kbpcqa2mr111xzhak1k8-nixos-system-pin-plain"),
    "boot": ('{ networking.hostName = "pin-boot"; services.openssh.enable = false; standin.kernel = "k2";'
             ' standin.kernelParams = [ "quiet" ]; standin.payloadBytes = 1000;'
             ' nix.settings.substituters = [ "ssh://relay" ]; }',
             "/nix/store/l2lzgvp9k9c77hlp8fi7j8ii90cmifz6-nixos-system-pin-boot"),
}


def test_systems_without_the_new_options_keep_their_store_paths() -> None:
    body = "".join(f'  {n} = (import {STANDIN}/nixos {{ configuration = {c}; system = "x86_64-linux"; }})'
                   f'.system.outPath;\n' for n, (c, _) in UNTOUCHED.items())
    env = {k: v for k, v in nix_env().items() if k not in ("STANDIN_BUILD_LOG", "STANDIN_PAYLOAD_BYTES")}
    out = sh(["nix-instantiate", "--eval", "--strict", "--json", "-E", "{\n" + body + "}"], env=env).stdout
    assert json.loads(out) == {n: path for n, (_, path) in UNTOUCHED.items()}


# What dry-activate of pv2 says on a host running pv1 (NixOS's lines, in its order); a new unit
# is in none of them (NixOS starts it through its target).
PLAN_LINES = [
    "would stop the following units: changed.service, gone.service",
    "would NOT stop the following changed units: skip.service",
    "would activate the configuration...",
    "would restart systemd",
    "would reload the following units: reload.service",
    "would restart the following units: restart.service, sshd.service",
    "would start the following units: changed.service",
]
# ...and what switching to it says (a host whose PID 1 is systemd adds the last line)
SWITCH_LINES = [
    "stopping the following units: changed.service, gone.service",
    "NOT restarting the following changed units: skip.service",
    "activating the configuration...",
    "restarting systemd...",
    "restarting sysinit-reactivation.target",
    "reloading the following units: reload.service",
    "restarting the following units: restart.service, sshd.service",
    "starting the following units: changed.service",
    "the following new units were started: new.service",
]


def host_state(lab: Lab, host: str) -> tuple[object, ...]:
    """What an activation changes on a host: its current system, completed activations, health,
    /run's entries and the stand-in's units there."""
    return (lab.current_system(host), lab.activations(host), lab.read(host, "/run/standin-health"),
            lab.run(host, ["ls", "-A", "/run"]).stdout,
            lab.run(host, ["ls", "-l", "/run/systemd/system"], check=False).stdout)


def test_dry_activate_reports_the_unit_plan_and_changes_nothing(lab: Lab, systems: dict[str, str]) -> None:
    host = "st-a"  # no systemd: every unit of the running system counts as active
    v1, v2 = systems["pv1"], systems["pv2"]
    switch(lab, host, v1)
    before = host_state(lab, host)
    proc = switch(lab, host, v2, "dry-activate")
    assert proc.stderr.splitlines() == PLAN_LINES and proc.stdout == ""
    assert starts(lab, host)[-1] == ["dry-activate", v2, "root"]  # its only trace
    assert host_state(lab, host) == before
    # the running system against itself: nothing to do, the same systemd
    assert switch(lab, host, v1, "dry-activate").stderr.splitlines() == ["would activate the configuration..."]
    # switching prints NixOS's lines (units are not run on this host)
    assert switch(lab, host, v2).stderr.splitlines() == SWITCH_LINES[:-1]
    assert lab.current_system(host) == v2
    # and back: new is stopped now, gone is new
    assert switch(lab, host, v1, "dry-activate").stderr.splitlines() == [
        "would stop the following units: changed.service, new.service", *PLAN_LINES[1:]]
    # from a system without units, packages or systemd: only systemd's restart
    switch(lab, host, systems["ok"])
    assert switch(lab, host, v1, "dry-activate").stderr.splitlines() == [
        "would activate the configuration...", "would restart systemd"]


def test_switch_on_systemd_does_what_dry_activate_said(tmp_path: Path, systems: dict[str, str]) -> None:
    """The one systemd host of this module: dry-activate's plan against the units' real states,
    then switch carrying it out (reload, not restart; a unit left alone; sshd untouched)."""
    v1, v2 = systems["pv1"], systems["pv2"]
    with standin_lab(tmp_path / "lab", {"pv1": v1, "pv2": v2}, ["st-s"], init="systemd") as lab:
        host = "st-s"

        def main_pids() -> dict[str, str]:
            return {u: lab.systemctl(host, "show", "-p", "MainPID", "--value", f"{u}.service").stdout.strip()
                    for u in ("keep", "gone", "changed", "restart", "reload", "skip", "new", "sshd")}

        proc = switch(lab, host, v1)
        assert proc.stderr.splitlines()[-1] == ("the following new units were started: changed.service, "
                                                "gone.service, keep.service, reload.service, restart.service, "
                                                "skip.service"), proc.stderr
        pids = main_pids()
        assert pids["new"] == "0" and "0" not in [p for u, p in pids.items() if u != "new"], pids
        before = host_state(lab, host)
        proc = switch(lab, host, v2, "dry-activate")
        assert proc.stderr.splitlines() == PLAN_LINES
        assert host_state(lab, host) == before and main_pids() == pids
        assert lab.systemctl(host, "is-active", "new.service").stdout.strip() == "inactive"

        proc = switch(lab, host, v2)
        assert proc.stderr.splitlines() == SWITCH_LINES
        after = main_pids()
        for unit in ("keep", "skip", "reload", "sshd"):  # left running: not restarted
            assert after[unit] == pids[unit], unit
        for unit in ("changed", "restart"):
            assert after[unit] not in ("0", pids[unit]), unit
        assert after["gone"] == "0" and after["new"] != "0"
        assert lab.read(host, "/run/st-reloads") == "reloaded\n"
        assert lab.run(host, ["test", "-e", "/run/systemd/system/gone.service"], check=False).returncode == 1
        assert lab.run(host, ["test", "-e", "/run/systemd/system/sshd.service"], check=False).returncode == 1
        assert lab.current_system(host) == v2
        # booted again (pv2 made the boot default, as a deploy tool does), the activation at boot
        # starts pv2's units and leaves sshd to the lab
        lab.run(host, ["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", v2])
        switch(lab, host, v2, "boot")
        lab.reboot(host)
        assert lab.current_system(host) == v2 and lab.system_state(host) == "running"
        booted = main_pids()
        assert booted["gone"] == "0" and "0" not in [p for u, p in booted.items() if u != "gone"], booted


# What NixOS's pre-switch check prints (on stderr) when an inhibitor changes, and then exits 1.
REFUSAL = [
    "Checking switch inhibitors...",
    "There are changes to critical components of the system:",
    "",
    "systemd : 255 -> 256",
    "",
    "Switching into this system is not recommended.",
    "You probably want to run 'nixos-rebuild boot' and reboot your system instead.",
    "",
    "If you really want to switch into this configuration directly, then",
    "you can set NIXOS_NO_CHECK=1 to ignore pre-switch checks.",
    "",
    "WARNING: doing so might cause the switch to fail or your system to become unstable.",
    "",
    "Pre-switch check 'switchInhibitors' failed",
    "Pre-switch checks failed",
]


def test_switch_inhibitors(lab: Lab, systems: dict[str, str]) -> None:
    host = "st-b"
    ok, inh1, inh2, inh3 = systems["ok"], systems["inh1"], systems["inh2"], systems["inh3"]
    assert Path(inh1, "switch-inhibitors").read_text() == '{"dbus":"dbus","systemd":"255"}'
    switch(lab, host, ok)
    # the running system has no inhibitors: nothing to compare
    assert "Checking switch inhibitors... done" in switch(lab, host, inh1).stderr.splitlines()
    before = host_state(lab, host)
    for goal in ("switch", "test", "check"):
        proc = switch(lab, host, inh2, goal, check=False)
        assert proc.returncode == 1 and proc.stderr.splitlines() == REFUSAL, proc
        assert starts(lab, host)[-1] == [goal, inh2, "root"]
    assert host_state(lab, host) == before
    # boot and dry-activate do not check
    proc = switch(lab, host, inh2, "dry-activate")
    assert proc.stderr.splitlines()[:2] == ["Not checking switch inhibitors (action = dry-activate)",
                                            "would activate the configuration..."]
    assert host_state(lab, host) == before
    assert switch(lab, host, inh2, "boot").stderr.splitlines() == ["Not checking switch inhibitors (action = boot)"]
    assert lab.current_system(host) == inh1  # boot: the next boot's system only
    assert lab.activations(host)[-1].split()[1:] == ["boot", inh2, "root"]
    # an inhibitor that only one of the two systems has does not count
    assert "Checking switch inhibitors... done" in switch(lab, host, inh3, "check").stderr.splitlines()
    # NIXOS_NO_CHECK=1: no check at all
    proc = sh(lab.ssh_argv(host, ["env", "NIXOS_NO_CHECK=1", f"{inh2}/bin/switch-to-configuration", "switch"]))
    assert "inhibitors" not in proc.stderr
    assert lab.current_system(host) == inh2
    assert lab.activations(host)[-1].split()[1:] == ["switch", inh2, "root"]
    # back to a system without inhibitors: no check either
    switch(lab, host, ok)
