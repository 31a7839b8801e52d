"""The `Lab` class: a running lab's records (DIR/lab.json) and what tests do with it.

Starting is in bringup.py, the plumbing in netns.py, hostfs.py and procs.py, the pure logic in
topology.py; `Lab` records what is made (before making it) and tears it down from the records.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tests.lab import boot, bringup, hostfs, netns, procs, topology
from tests.lab.boot import Boot
from tests.lab.records import Records
from tests.lab.topology import LabError, check_topology

Init = Literal["plain", "systemd"]


class Lab(Records):
    """A running lab.  Create it with `Lab.start(...)`, attach to one with `Lab.load(workdir)`."""

    # ----------------------------------------------------------------- start, attach

    @classmethod
    def start(cls, topology: Mapping[str, Sequence[str]], workdir: Path, *,
              deployer_segment: str = "pub", nix_conf: Mapping[str, str] = {},
              init: Init = "plain") -> Lab:
        """Start a lab.  topology: host -> segments; nix_conf: host -> extra nix.conf lines;
        init: "plain" hosts run the lab's sshd and nix-daemon, "systemd" hosts boot systemd as
        PID 1 (see boot.py; the first start makes the shared root tree, tree.py)."""
        workdir = Path(workdir).absolute()
        segments = check_topology(topology, deployer_segment, nix_conf)
        if init not in ("plain", "systemd"):
            raise LabError(f"init must be 'plain' or 'systemd', not {init!r}")
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
            "init": init,
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
        """argv that runs `argv` inside host's network, mount and UTS namespaces as user (a
        systemd host: all the namespaces of its PID 1, and its root; LabError if it is off)."""
        h = self._host(host)
        if self.init_of(host) == "systemd":
            pid = boot.pid1(h.dir)
            if pid is None:
                raise LabError(f"host {host} is not running (powered off, or between two boots)")
            prefix = ["nsenter", "-t", str(pid), "-a", "--"]
        else:
            prefix = ["nsenter", "-t", str(self._state["hosts"][host]["anchor"]), "-n", "-m", "-u", "--"]
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

    def sshd_log(self, host: str) -> str:
        """What host's sshd has logged (a systemd host: its journal, since its last boot)."""
        if self.init_of(host) == "systemd":
            return self.journal(host, boot.SSHD_UNIT)
        try:
            return (self._host(host).dir / "sshd.log").read_text()
        except OSError:
            return ""

    def auth_count(self, host: str) -> int:
        """Number of successful public-key authentications host's sshd has logged."""
        return self.sshd_log(host).count("Accepted publickey")

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

    # ----------------------------------------------------------------- systemd hosts

    def _systemd_host(self, host: str) -> topology.Host:
        h = self._host(host)
        if self.init_of(host) != "systemd":
            raise LabError(f"host {host} does not run systemd (started with init={self.init!r})")
        return h

    def _supplies(self, host: str) -> list[procs.Recorded]:
        """The power supplies the lab started for host (recorded in lab.json as HOST/power)."""
        return [(int(r["pid"]), r.get("start")) for r in self._state.get("pids", [])
                if r.get("what") == f"{host}/power"]

    def powered(self, host: str) -> bool:
        """Whether host is on: its power supply or its PID 1 runs."""
        h = self._systemd_host(host)
        return any(procs.is_alive(p, s) for p, s in self._supplies(host)) or boot.pid1(h.dir) is not None

    def power_on(self, host: str, *, hang: bool = False, wait: bool = True) -> None:
        """Switch host on: its power supply boots it (and boots it again after each reboot from
        inside).  hang: this boot never starts systemd (PID 1 waits for ever: no sshd, as a host
        stuck at boot), until power_off; returns once the boot is recorded.  Otherwise, wait:
        return once sshd answers (else at once: see wait_up)."""
        h = self._systemd_host(host)
        if self.powered(host):
            raise LabError(f"host {host} is already on")
        before = len(self.boots(host))
        (h.dir / "pid1").unlink(missing_ok=True)
        power, starter = self.workdir / "bin/power-supply", self.workdir / "bin/boot-starter"
        argv = boot.power_argv(power, starter, h.dir, h.netns, Path(self._state["hosts"][host]["cgroup"]),
                               Path(self._state["cgroup_root"]), Path(self._state["tree"]), host, hang)
        proc = self._spawn(f"{host}/power", argv, h.dir / "power.log", procs.clean_env())
        if not hang:
            if wait:
                self.wait_up(host)
            return
        deadline = time.monotonic() + self._boot_timeout(1)
        while len(self.boots(host)) <= before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"host {host} did not boot\n{procs.host_logs(h.dir)}")
            time.sleep(0.005)

    def power_off(self, host: str) -> None:
        """Pull host's plug: kill its power supply, then its PID 1 (no clean shutdown: what was
        not written to its disk is lost, its /run is gone)."""
        h = self._systemd_host(host)
        boot.kill_host(self._supplies(host), h.dir, netns.pids([h.netns]),
                       Path(self._state["hosts"][host]["cgroup"]))
        (h.dir / "pid1").unlink(missing_ok=True)

    def reboot(self, host: str, timeout: float | None = None) -> float:
        """`systemctl reboot` inside host; returns once the host booted again and its sshd
        answers (LabError after timeout seconds), with the seconds that took."""
        self._systemd_host(host)
        t0 = time.monotonic()
        before = len(self.boots(host))
        self.run(host, ["systemctl", "reboot"], check=False)  # may be killed as PID 1 ends
        deadline = t0 + (timeout or self._boot_timeout(1))
        while len(self.boots(host)) <= before:
            if time.monotonic() > deadline or not self.powered(host):
                raise LabError(f"host {host} did not boot again\n{procs.host_logs(self._host(host).dir)}")
            time.sleep(0.01)
        self.wait_up(host, timeout=max(1.0, deadline - time.monotonic()))
        return time.monotonic() - t0

    def wait_up(self, *hosts: str, timeout: float | None = None) -> dict[str, float]:
        """Wait until sshd answers on each host (its banner, from its own network namespace);
        the seconds each took.  LabError if one does not within timeout (default: by count)."""
        targets = {n: (self._host(n).netns, self._host(n).address) for n in hosts}
        return boot.wait_up(targets, timeout or self._boot_timeout(len(hosts)),
                            {n: self._host(n).dir for n in hosts},
                            lambda n: self.init_of(n) != "systemd" or self.powered(n))

    @staticmethod
    def _boot_timeout(n: int) -> float:
        return boot.BOOT_TIMEOUT + boot.BOOT_TIMEOUT_PER_HOST * n

    def boots(self, host: str) -> list[Boot]:
        """host's boots, oldest first (see boot.py: entry taken, system booted)."""
        return boot.boots(self._systemd_host(host).dir)

    def grub_boots(self, host: str) -> list[tuple[str, str]]:
        """(ENTRY, GRUB's entry) of each boot a host's /boot/grub chose (boot.py): ENTRY oneshot
        (grubenv's next_entry) or default."""
        try:
            lines = (self._host(host).dir / "grub.log").read_text().splitlines()
        except OSError:
            return []
        return [(entry, pick) for entry, _, pick in (line.partition(" ") for line in lines)]

    def systemctl(self, host: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS` inside host."""
        self._systemd_host(host)
        return self.run(host, ["systemctl", *args], check=check)

    def system_state(self, host: str, timeout: float = 30) -> str:
        """`systemctl is-system-running --wait` inside host: once its boot is over (sshd may
        answer before), "running", or "degraded" if a unit failed (see `systemctl --failed`)."""
        self._systemd_host(host)
        argv = ["timeout", str(timeout), "systemctl", "is-system-running", "--wait"]
        return self.run(host, argv, check=False).stdout.strip()

    def journal(self, host: str, unit: str) -> str:
        """unit's log in host's journal since its last boot (messages only)."""
        self._systemd_host(host)
        return self.run(host, ["journalctl", "--no-pager", "-q", "-o", "cat", "-u", unit]).stdout

    def memory(self, host: str) -> dict[str, int]:
        """What host uses, in bytes: pss (its processes' proportional set size), run (its /run
        tmpfs, the journal included), and cgroup (memory.current, where the cgroup2 hierarchy
        has the memory controller: not on a hybrid machine)."""
        h = self._systemd_host(host)
        cg = Path(self._state["hosts"][host]["cgroup"])
        st = os.statvfs(h.dir / "run")
        out = {"pss": boot.pss(boot.cgroup_pids(cg)), "run": (st.f_blocks - st.f_bfree) * st.f_frsize}
        with contextlib.suppress(OSError, ValueError):
            out["cgroup"] = int((cg / "memory.current").read_text())
        return out

    def summary(self) -> str:
        lines = [f"lab {self.prefix} in {self.workdir} ({self.init} hosts)",
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
        stand-in's health server), delete its namespaces, remove what it put in workdir.
        systemd hosts are powered off first (power supply, PID 1, cgroups, /run tmpfs)."""
        for name in self.hosts:
            if self.init_of(name) == "systemd":
                self.power_off(name)
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

