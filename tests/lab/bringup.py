"""Starting a lab, step by step: address slot, keys, address plan, network, host file systems,
then the processes: mount namespace anchors, nix-daemon and sshd in each plain host; a power
supply booting systemd in each systemd host (see boot.py).

Works on a `Lab` whose records (lab.json) it extends as it goes, before making each thing, so
that `Lab.down` can undo a start that failed half-way.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tests.lab import boot, hostfs, netns, procs, topology
from tests.lab.topology import LabError

if TYPE_CHECKING:
    from tests.lab.lab import Lab

TOOLS = ("ip", "unshare", "nsenter", "ssh-keygen", "nix-daemon")
SSHD = Path(hostfs.SSHD)


def start(lab: Lab, topo: Mapping[str, Sequence[str]], segments: list[str], deployer_segment: str,
          nix_conf: Mapping[str, str]) -> None:
    """Bring up the lab planned in lab's records (see Lab.start)."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found in PATH")
    if not SSHD.exists():
        raise LabError(f"{SSHD} not found (install openssh-server)")
    if lab.init == "systemd":
        from tests.lab import tree  # tests/matrix.py's functions: only systemd hosts need them

        # Made once (about 40 s), before the start is timed; then only checked.
        boot.check_inotify(len(topo))
        lab._state["tree"] = str(tree.ensure())
        lab._state["cgroup_root"] = str(boot.cgroup2_mount())
        lab._save()
    t0 = time.monotonic()
    lab._state["slot"] = netns.claim_slot(lab.prefix, lab.workdir)
    lab._save()
    make_client_key(lab)
    plan(lab, topo, segments, deployer_segment)
    make_network(lab, segments)
    make_host_files(lab, nix_conf)
    if lab.init == "systemd":
        start_power(lab)
    else:
        start_processes(lab)
    lab._check_ports()
    lab._state["start_seconds"] = round(time.monotonic() - t0, 3)
    lab._save()


def make_client_key(lab: Lab) -> None:
    """One client key for the lab (the host keys come with the host files)."""
    lab._entry("keys").mkdir()
    ck = lab._entry("client_key")
    lab._entry("client_key.pub")
    hostfs.keygen(ck, f"{lab.prefix}-client")


def plan(lab: Lab, topo: Mapping[str, Sequence[str]], segments: list[str],
         deployer_segment: str) -> None:
    hosts_dir = lab._entry("hosts")
    hosts_dir.mkdir()
    hosts_dir.chmod(0o755)
    deployer, hosts = topology.plan(lab.prefix, int(lab._state["slot"]), topo, segments,
                                    deployer_segment, hosts_dir)
    for name, h in hosts.items():
        h["init"] = lab.init
        if lab.init == "systemd":
            h["cgroup"] = str(Path(lab._state["cgroup_root"]) / f"nix-hive-{lab.prefix}-{name}")
    lab._state["deployer"] = deployer
    lab._state["hosts"].update(hosts)
    lab._save()
    lab._refresh_hosts()


def make_network(lab: Lab, segments: list[str]) -> None:
    """Switch namespace with one bridge per segment, then the deployer and the hosts."""
    seg_index = {s: i for i, s in enumerate(segments)}
    sw = f"{lab.prefix}-switch"
    lab._add_netns(sw)
    for i in seg_index.values():
        netns.add_bridge(sw, f"br{i}")
    lab._state["switch"] = sw
    dep = lab.deployer_netns
    lab._add_netns(dep)
    netns.plug(sw, f"br{seg_index[lab.deployer_segment]}", dep, "eth0", "d0", lab.deployer_address)
    for h in lab._state["hosts"].values():
        lab._add_netns(h["netns"])
        for j, s in enumerate(h["segments"]):
            netns.plug(sw, f"br{seg_index[s]}", h["netns"], f"eth{j}",
                       f"h{h['index']}s{seg_index[s]}", h["addresses"][s])
    netns.update_slot(int(lab._state["slot"]), lab.prefix, lab.workdir, lab._state["netns"])


def make_host_files(lab: Lab, nix_conf: Mapping[str, str]) -> None:
    """Host keys, the deployer's known_hosts and ssh_configs, each host's directory."""
    keys = lab.workdir / "keys"
    for name, h in lab._state["hosts"].items():
        h["host_key_pub"] = hostfs.keygen(keys / f"{name}_host_key", f"{lab.prefix}-{name}")
    lab._save()
    lab._refresh_hosts()
    hostfs.write(lab._entry("known_hosts"), topology.deployer_known_hosts(lab.hosts))
    hostfs.write(lab._entry("ssh_config"), lab.ssh_config("root"))
    hostfs.write(lab._entry("ssh_config.deploy"), lab.ssh_config(hostfs.DEPLOY_USER))
    systemd = lab.init == "systemd"
    root = Path(lab._state["tree"]) if systemd else Path("/")  # where the account files come from
    uid = hostfs.free_id(str(root / "etc/passwd"), 2, 2000)
    gid = hostfs.free_id(str(root / "etc/group"), 2, 2000)
    for name in lab.hosts:
        hostfs.make_host_dir(lab.hosts, name, uid=uid, gid=gid, extra_nix_conf=nix_conf.get(name, ""),
                             keys=keys, client_key=lab.client_key, root=root, systemd=systemd)
        if systemd:
            boot.make_host_dir(lab.hosts[name].dir, name)


def start_power(lab: Lab) -> None:
    """Power every systemd host on, then wait until each one's sshd answers."""
    boot.write_scripts(lab._entry("bin"))
    for name in lab.hosts:
        lab.power_on(name, wait=False)
    took = lab.wait_up(*lab.hosts)
    lab._state["boot_seconds"] = {n: round(t, 3) for n, t in took.items()}


def start_processes(lab: Lab) -> None:
    """Anchors (mount namespaces) first, then nix-daemon and sshd in each host."""
    anchors: dict[str, subprocess.Popen[bytes]] = {}
    for name, h in lab._state["hosts"].items():
        d = Path(h["dir"])
        anchors[name] = lab._spawn(
            f"{name}/anchor",
            ["ip", "netns", "exec", h["netns"], "unshare", "--mount", "--uts", "--propagation",
             "private", "sh", "-c", hostfs.ANCHOR_SCRIPT, "anchor", str(d), name],
            d / "anchor.log", procs.clean_env())
        h["anchor"] = anchors[name].pid
    lab._save()
    dirs = {n: h.dir for n, h in lab.hosts.items()}
    procs.wait_all("mount namespace", {n: _exists(d / "ready") for n, d in dirs.items()}, anchors,
                   lab.hosts_dir)
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    for name, d in dirs.items():
        enter = ["nsenter", "-t", str(lab._state["hosts"][name]["anchor"]), "-n", "-m", "-u", "--"]
        lab._spawn(f"{name}/nix-daemon", [*enter, "nix-daemon"], d / "nix-daemon.log",
                   procs.clean_env())
        daemons[name] = lab._spawn(
            f"{name}/sshd",
            [*enter, str(SSHD), "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
            d / "sshd.out", procs.clean_env())
    procs.wait_all("nix-daemon socket",
                   {n: _exists(d / "nix/var/nix/daemon-socket/socket") for n, d in dirs.items()},
                   anchors, lab.hosts_dir)
    procs.wait_all("sshd", {n: _listening(d) for n, d in dirs.items()}, daemons, lab.hosts_dir)


def _exists(path: Path) -> procs.Check:
    return path.exists


def _listening(d: Path) -> procs.Check:
    return lambda: procs.sshd_listening(d)
