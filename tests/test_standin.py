"""The stand-in NixOS system's activation behaviours (tests/nixpkgs/nixos) on lab hosts:
`standin.activation` (fail, hang), `standin.healthy` with the health endpoint of
`standin.httpPort`, and `services.openssh.enable = false` stopping the host's sshd through the
lab's hooks; and `Lab.down` finding what those activations started."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import STANDIN, needs_lab
from tests.constants import nix_env
from tests.lab import Lab
from tests.lab.hostfs import SSHD_START_HOOK, SSHD_STOP_HOOK
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
def standin_lab(workdir: Path, systems: dict[str, str]) -> Iterator[Lab]:
    """Two hosts holding every stand-in system."""
    lab = Lab.start({"st-a": ["pub"], "st-b": ["pub"]}, workdir)
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
