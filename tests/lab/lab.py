"""The `Lab` class: a running lab's records (DIR/lab.json) and what tests do with it.

Starting is in bringup.py, the plumbing in netns.py, hostfs.py and procs.py, the pure logic in
topology.py; `Lab` records what is made (before making it) and tears it down from the records.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.lab import bringup, hostfs, netns, procs, topology
from tests.lab.records import Records
from tests.lab.topology import LabError, check_topology


class Lab(Records):
    """A running lab.  Create it with `Lab.start(...)`, attach to one with `Lab.load(workdir)`."""

    # ----------------------------------------------------------------- start, attach

    @classmethod
    def start(cls, topology: Mapping[str, Sequence[str]], workdir: Path, *,
              deployer_segment: str = "pub", nix_conf: Mapping[str, str] = {}) -> Lab:
        """Start a lab.  topology: host -> segments; nix_conf: host -> extra nix.conf lines."""
        workdir = Path(workdir).absolute()
        segments = check_topology(topology, deployer_segment, nix_conf)
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network and mount namespaces)")
        if (workdir / "lab.json").exists():
            raise LabError(f"{workdir}/lab.json exists: a lab is up there (run down first)")
        created_workdir = not workdir.exists()
        workdir.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "prefix": "hv" + secrets.token_hex(2), "slot": None, "netns": [], "pids": [],
            "entries": [], "created_workdir": created_workdir, "hosts": {},
            "segments": segments, "topology": {h: list(s) for h, s in topology.items()},
        }
        lab = cls(workdir, state)
        lab._save()
        try:
            bringup.start(lab, topology, segments, deployer_segment, nix_conf)
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def load(cls, workdir: Path) -> Lab:
        """Attach to a lab started (maybe by another process) in workdir."""
        workdir = Path(workdir).absolute()
        state = json.loads((workdir / "lab.json").read_text())
        return cls(workdir, state)

    def _check_ports(self) -> None:
        """Connect to port 22 of every host from the deployer (direct hosts) or from its jump
        host (the others), in one process per namespace: proves the links and the sshds."""
        checks: dict[str, list[str]] = {}
        for name in self.hosts:
            opts = self.ssh_options(name)
            via = opts.get("ProxyJump")
            ns = self.hosts[via].netns if via else self.deployer_netns
            checks.setdefault(ns, []).append(opts["Hostname"])
        for ns, addrs in checks.items():
            netns.check_port_22(ns, addrs)

    # ----------------------------------------------------------------- use

    def host_argv(self, host: str, argv: Sequence[str], *, user: str = "root") -> list[str]:
        """argv that runs `argv` inside host's network, mount and UTS namespaces as user."""
        self._host(host)
        anchor = self._state["hosts"][host]["anchor"]
        prefix = ["nsenter", "-t", str(anchor), "-n", "-m", "-u", "--"]
        if user != "root":
            prefix += ["runuser", "-u", user, "--"]
        return prefix + list(argv)

    def run(self, host: str, argv: Sequence[str], *, user: str = "root", check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv inside host (clean environment, HOME of user), capture text output."""
        home = "/root" if user == "root" else f"/home/{user}"
        env = procs.clean_env(home) | {"USER": user, "LOGNAME": user}
        return procs.run(self.host_argv(host, argv, user=user), check=check, input=input, env=env)

    def read(self, host: str, path: str) -> str | None:
        proc = self.run(host, ["cat", "--", path], check=False)
        return proc.stdout if proc.returncode == 0 else None

    def current_system(self, host: str) -> str | None:
        proc = self.run(host, ["readlink", "/run/current-system"], check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def activations(self, host: str) -> list[str]:
        text = self.read(host, "/run/standin-activations.log")
        return text.splitlines() if text else []

    def activation_starts(self, host: str) -> list[str]:
        """Lines "<epoch> <goal> <path> <user>" the stand-in's switch-to-configuration writes
        when it starts (activations() has those that completed)."""
        text = self.read(host, "/run/standin-activation-starts.log")
        return text.splitlines() if text else []

    def deployer_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.deployer_netns, *argv]

    def tx_bytes(self) -> int:
        """Bytes sent so far by the deployer's link."""
        return netns.tx_bytes(self.deployer_netns)

    def auth_count(self, host: str) -> int:
        """Number of successful public-key authentications host's sshd has logged."""
        try:
            text = (self._host(host).dir / "sshd.log").read_text()
        except OSError:
            return 0
        return text.count("Accepted publickey")

    # ----------------------------------------------------------------- ssh

    def jump_host(self, host: str) -> str | None:
        """None if host is on the deployer's segment, else the host one hop closer to the
        deployer that shares a segment with it (see topology.jump_host)."""
        self._host(host)
        return topology.jump_host(self.hosts, self.deployer_segment, host)

    def ssh_options(self, host: str, user: str = "root") -> dict[str, str]:
        """ssh options reaching host from the deployer namespace (ProxyJump names the jump
        host, which an ssh_config must then define: see ssh_config())."""
        self._host(host)
        return topology.ssh_options(self.hosts, self.deployer_segment, host, user=user,
                                    client_key=self.client_key, known_hosts=self.known_hosts)

    def ssh_config(self, user: str = "root") -> str:
        """An ssh_config for the deployer with a Host block per lab host."""
        return topology.ssh_config(self.hosts, self.deployer_segment, user=user,
                                   client_key=self.client_key, known_hosts=self.known_hosts)

    def ssh_argv(self, host: str, argv: Sequence[str], *, user: str = "root") -> list[str]:
        """Deployer-side argv: ssh (through the jump host when needed) running argv on host
        (each argument shell-quoted, since sshd hands the command to the login shell)."""
        cfg = self.ssh_config_path if user == "root" else self.workdir / "ssh_config.deploy"
        return self.deployer_argv(["ssh", "-F", str(cfg), host, "--",
                                   " ".join(shlex.quote(a) for a in argv)])

    def summary(self) -> str:
        lines = [f"lab {self.prefix} in {self.workdir}",
                 f"  deployer  {self.deployer_address:<15} netns {self.deployer_netns}"]
        for h in self.hosts.values():
            addrs = " ".join(f"{s}={a}" for s, a in h.addresses.items())
            jump = self.jump_host(h.name)
            lines.append(f"  {h.name:<9} {addrs}  netns {h.netns}"
                         + (f"  (via {jump})" if jump else ""))
        lines.append(f"  ssh config: {self.ssh_config_path}  client key: {self.client_key}")
        lines.append(f"  e.g.: ip netns exec {self.deployer_netns} ssh -F "
                     f"{self.ssh_config_path} {next(iter(self.hosts))} hostname")
        return "\n".join(lines)

    # ----------------------------------------------------------------- down

    def pids(self) -> list[int]:
        """Live processes of this lab: recorded ones, any inside its namespaces, and the
        daemons activations started in its hosts, by their pid files (see _pidfile_pids)."""
        live = [p for p, s in self._recorded() if procs.is_alive(p, s)]
        return sorted(set(live + self._unrecorded()))

    def _unrecorded(self) -> list[int]:
        return sorted(set(netns.pids(self.namespaces) + self._pidfile_pids()))

    def down(self) -> None:
        """Kill the lab's processes (the recorded ones, every process in its namespaces, and
        the daemons activations started: an sshd restarted by /run/standin-sshd-start, the
        stand-in's health server), delete its namespaces, remove what it put in workdir."""
        procs.kill_all(self._recorded(), self._unrecorded, self._procs)
        self._procs.clear()
        errors = netns.delete(self.namespaces)
        slot = self._state.get("slot")
        if slot is not None:
            netns.release_slot(int(slot), self.prefix)
        if errors:
            raise LabError("; ".join(errors))
        hostfs.remove_entries(self.workdir, self._state.get("entries", []),
                              bool(self._state.get("created_workdir")))
        self._state.update(pids=[], netns=[], entries=[], slot=None)

