"""The test lab itself: real namespaces, real sshd, real nix (needs root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.lab as labmod
from tests.conftest import needs
from tests.constants import REPO, nix_env
from tests.lab import Lab
from tests.lab.procs import is_alive

HERE = Path(__file__).resolve().parent


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "nix", "nix-store",
                 "nix-daemon", "runuser", "sudo"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path("/usr/sbin/sshd").exists():
        return "sshd not installed (openssh-server)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns unusable: {probe.stderr.strip()}"
    return None


pytestmark = needs("lab", _missing())


def sh(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True,
       cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_system(tmp: Path, name: str, payload_bytes: int) -> str:
    expr = tmp / f"{name}.nix"
    expr.write_text(
        f"(import {HERE}/nixpkgs/nixos {{ configuration = {{ networking.hostName = \"{name}\";"
        f" standin.payloadBytes = {payload_bytes}; }}; }}).system\n")
    out = sh(["nix", "build", "--impure", "-f", str(expr), "--json", "--no-link"],
             env=nix_env()).stdout
    return str(json.loads(out)[0]["outputs"]["out"])


def netns_names() -> set[str]:
    out = sh(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("sigkey")
    sk, pk = d / "key.sec", d / "key.pub"
    sh(["nix-store", "--generate-binary-cache-key", "lab-test-1", str(sk), str(pk)],
       env=nix_env())
    return sk, pk.read_text().strip()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, signing_key: tuple[Path, str]
          ) -> Iterator[tuple[Lab, float]]:
    _, pub = signing_key
    relay_conf = f"substituters = ssh://portico\ntrusted-public-keys = {pub}\n"
    t0 = time.monotonic()
    lab = Lab.start(labmod.EXAMPLE_TOPOLOGY, tmp_path_factory.mktemp("fleet") / "lab",
                    nix_conf={f"www-{i}": relay_conf for i in (1, 2, 3)})
    elapsed = time.monotonic() - t0
    try:
        yield lab, elapsed
    finally:
        lab.down()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, signing_key: tuple[Path, str]) -> str:
    """A signed 2 MB system built on the deployer (the machine's real store)."""
    path = build_system(tmp_path_factory.mktemp("sys"), "lab-www", 2_000_000)
    sh(["nix", "store", "sign", "-k", str(signing_key[0]), "-r", path], env=nix_env())
    return path


def test_example_fleet_starts_fast(fleet: tuple[Lab, float]) -> None:
    lab, elapsed = fleet
    print(f"\nstart: {elapsed:.2f}s")
    assert elapsed < 10
    assert set(lab.hosts) == {"portico", "www-1", "www-2", "www-3"}
    addrs = [a for h in lab.hosts.values() for a in h.addresses.values()]
    assert len(addrs) == len(set(addrs)) == 5
    assert all(a.startswith("10.") for a in addrs)
    for h in lab.hosts.values():
        assert h.host_key_pub.startswith("ssh-ed25519 ") and len(h.host_key_pub.split()) == 2
        assert h.netns in netns_names()
    assert lab.ssh_options("portico").get("ProxyJump") is None
    opts = lab.ssh_options("www-1", "deploy")
    assert opts["ProxyJump"] == "portico"
    assert opts["User"] == "deploy"
    assert opts["Hostname"] == lab.hosts["www-1"].addresses["int"]
    assert opts["IdentityFile"] == str(lab.client_key)
    # Each host has its own view: hostname, empty store, deploy user only inside.
    assert lab.run("www-2", ["hostname"]).stdout.strip() == "www-2"
    assert lab.run("www-2", ["id", "-un"], user="deploy").stdout.strip() == "deploy"
    assert "deploy:" not in Path("/etc/passwd").read_text()
    assert lab.read("www-2", "/etc/nix/nix.conf") is not None
    assert "ssh://portico" in (lab.read("www-2", "/etc/nix/nix.conf") or "")
    assert lab.read("www-2", "/no/such/file") is None
    assert lab.current_system("www-2") is None
    assert lab.activations("www-2") == []


def test_jump_is_real(fleet: tuple[Lab, float]) -> None:
    lab, _ = fleet
    before = lab.auth_count("portico"), lab.auth_count("www-1")
    out = sh(lab.ssh_argv("www-1", ["sh", "-c",
                                    "hostname; ls /nix/store | wc -l; ip -4 -o addr"])).stdout
    lines = out.splitlines()
    assert lines[0] == "www-1"
    assert int(lines[1]) < len(os.listdir("/nix/store"))  # its own store, not the deployer's
    assert lab.hosts["www-1"].address in out
    assert lab.auth_count("portico") == before[0] + 1  # the jump authenticated on portico
    assert lab.auth_count("www-1") == before[1] + 1
    # No route from www-1 to the deployer, nor from the deployer to www-1 directly.
    route = lab.run("www-1", ["ip", "route", "get", lab.deployer_address], check=False)
    assert route.returncode != 0, route.stdout
    tcp = lab.run("www-1", ["bash", "-c", f"exec 3<>/dev/tcp/{lab.deployer_address}/22"],
                  check=False)
    assert tcp.returncode != 0
    assert "unreachable" in tcp.stderr.lower()
    direct = sh(lab.deployer_argv(["ssh", "-F", str(lab.ssh_config_path), "-o", "ProxyJump=none",
                                   "-o", "ConnectTimeout=3", "www-1", "true"]), check=False)
    assert direct.returncode != 0
    # And no forwarding in the jump host.
    assert lab.read("portico", "/proc/sys/net/ipv4/ip_forward") == "0\n"


def test_copy_through_relay(fleet: tuple[Lab, float], system: str) -> None:
    lab, _ = fleet
    env = nix_env() | {"NIX_SSHOPTS": f"-F {lab.ssh_config_path}"}
    portico_auths = lab.auth_count("portico")
    t0 = lab.tx_bytes()
    sh(lab.deployer_argv(["nix", "copy", "--to", "ssh://portico", system]), env=env)
    t1 = lab.tx_bytes()
    sh(lab.deployer_argv(["nix", "copy", "-s", "--to", "ssh://www-1", system]), env=env)
    t2 = lab.tx_bytes()
    first, second = t1 - t0, t2 - t1
    print(f"\nbytes from deployer: to portico {first:,}, to www-1 via portico {second:,}")
    assert first > 2_000_000
    assert second < first / 20
    assert lab.run("www-1", ["nix-store", "--check-validity", system]).returncode == 0
    assert lab.run("www-1", ["test", "-e", f"{system}/payload"]).returncode == 0
    # www-1 fetched it from portico: its nix logged in there from www-1's own address.
    assert lab.auth_count("portico") >= portico_auths + 2
    log = (lab.hosts["portico"].dir / "sshd.log").read_text()
    assert f"Accepted publickey for root from {lab.hosts['www-1'].address} " in log


def test_deploy_user(fleet: tuple[Lab, float], tmp_path: Path) -> None:
    lab, _ = fleet
    cfg = str(lab.workdir / "ssh_config.deploy")
    out = sh(lab.ssh_argv("www-2", ["sh", "-c", "id -un; sudo -n id -un"], user="deploy")).stdout
    assert out.split() == ["deploy", "root"]
    # An unsigned path: accepted only because deploy is a trusted user of www-2's daemon.
    path = build_system(tmp_path, f"lab-deploy-{os.getpid()}", 1000)
    sh(lab.deployer_argv(["nix", "copy", "--to", "ssh://deploy@www-2", path]),
       env=nix_env() | {"NIX_SSHOPTS": f"-F {cfg}"})
    assert lab.run("www-2", ["nix-store", "--check-validity", path]).returncode == 0
    assert lab.run("www-2", ["stat", "-c", "%U", path]).stdout.strip() == "root"
    # Activation as deploy through sudo.
    sh(lab.ssh_argv("www-2", ["sudo", "-n", f"{path}/bin/switch-to-configuration", "test"],
                    user="deploy"))
    assert lab.current_system("www-2") == path
    assert lab.activations("www-2")[-1].split()[1:] == ["test", path, "root"]


def test_activation(fleet: tuple[Lab, float], system: str) -> None:
    lab, _ = fleet
    env = nix_env() | {"NIX_SSHOPTS": f"-F {lab.ssh_config_path}"}
    sh(lab.deployer_argv(["nix", "copy", "--to", "ssh://portico", system]), env=env)
    n = len(lab.activations("portico"))
    lab.run("portico", [f"{system}/bin/switch-to-configuration", "switch"])
    assert lab.current_system("portico") == system
    acts = lab.activations("portico")
    assert len(acts) == n + 1
    assert acts[-1].split()[1:] == ["switch", system, "root"]
    # The other hosts did not see it.
    assert lab.current_system("www-3") is None


def test_two_labs_and_down(fleet: tuple[Lab, float], tmp_path: Path) -> None:
    first, _ = fleet
    before = netns_names()
    t0 = time.monotonic()
    second = Lab.start({"gate": ["pub", "lan"], "db": ["lan"]}, tmp_path / "two")
    started = time.monotonic() - t0
    try:
        assert second.prefix != first.prefix
        ours = set(second.namespaces)
        assert ours and ours.isdisjoint(before) and ours <= netns_names()
        a1 = {a for h in first.hosts.values() for a in h.addresses.values()}
        a2 = {a for h in second.hosts.values() for a in h.addresses.values()}
        assert a1.isdisjoint(a2)
        out = sh(second.ssh_argv("db", ["hostname"])).stdout.strip()
        assert out == "db"
        pids = second.pids()
        assert len(pids) >= 6
    except BaseException:
        second.down()
        raise
    t0 = time.monotonic()
    second.down()
    print(f"\nsecond lab: start {started:.2f}s, down {time.monotonic() - t0:.2f}s")
    assert netns_names() & ours == set()
    assert not any(is_alive(p, None) for p in pids)
    assert not (tmp_path / "two").exists()
    second.down()  # idempotent
    # The first lab is untouched.
    assert sh(first.ssh_argv("www-3", ["hostname"])).stdout.strip() == "www-3"


def test_failed_start_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[int] | list[str]] = {}

    def boom(self: Lab) -> None:
        seen["netns"], seen["pids"] = self.namespaces, self.pids()
        raise labmod.LabError("injected failure")

    monkeypatch.setattr(Lab, "_check_ports", boom)
    with pytest.raises(labmod.LabError, match="injected"):
        Lab.start(labmod.EXAMPLE_TOPOLOGY, tmp_path / "bad")
    assert len(seen["netns"]) == 6 and len(seen["pids"]) >= 12
    assert netns_names().isdisjoint(seen["netns"])
    assert not any(is_alive(int(p), None) for p in seen["pids"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(labmod.LabError, match="unknown hosts"):
        Lab.start({"a": ["pub"]}, tmp_path / "bad2", nix_conf={"b": "x = y"})


def test_cli_up_down(tmp_path: Path) -> None:
    wd = tmp_path / "cli"
    cli = [sys.executable, "-m", "tests.lab"]
    up = sh([*cli, "up", "--workdir", str(wd), "--topology", json.dumps({"solo": ["pub"]})],
            cwd=REPO)
    assert "solo" in up.stdout
    lab = Lab.load(wd)
    assert lab.run("solo", ["hostname"]).stdout.strip() == "solo"
    ns = set(lab.namespaces)
    assert ns <= netns_names()
    pids = lab.pids()
    down = sh([*cli, "down", "--workdir", str(wd)], cwd=REPO)
    assert "down" in down.stdout
    assert netns_names() & ns == set()
    assert not any(is_alive(p, None) for p in pids)


@pytest.mark.parametrize("home", ["/root", "/home"])
def test_a_lab_under_a_directory_its_hosts_mount_over(home: str) -> None:
    """Each host mounts its own /root and /home: a lab (or a checkout running `make demo`)
    under either still starts, and its hosts' sshd, whose command line names the lab's
    directory, runs and answers."""
    workdir = Path(tempfile.mkdtemp(prefix="nix-hive-lab-test-", dir=home))
    try:
        lab = Lab.start({"solo": ["pub"]}, workdir / "lab")
        try:
            assert lab.run("solo", ["hostname"]).stdout.strip() == "solo"
            assert sh(lab.ssh_argv("solo", ["hostname"])).stdout.strip() == "solo"
        finally:
            lab.down()
        assert not (workdir / "lab").exists()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
