"""What a lab's records (DIR/lab.json) say, and recording what the lab makes before it is made
(so that `Lab.down` can undo anything, a start that failed half-way included)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.lab import hostfs, netns, procs, topology
from tests.lab.topology import Host, LabError


class Records:
    """The state of a lab, kept in DIR/lab.json; `Lab` builds on it."""

    def __init__(self, workdir: Path, state: dict[str, Any]) -> None:
        self.workdir = workdir
        self._state = state
        self._procs: list[subprocess.Popen[bytes]] = []
        self.hosts: dict[str, Host] = {}
        self._refresh_hosts()

    def _refresh_hosts(self) -> None:
        self.hosts = {name: topology.host_from_record(name, h)
                      for name, h in self._state.get("hosts", {}).items()}

    def _save(self) -> None:
        tmp = self.workdir / "lab.json.tmp"
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.replace(self.workdir / "lab.json")

    def _entry(self, name: str) -> Path:
        """A workdir entry the lab creates (and down removes)."""
        if name not in self._state["entries"]:
            self._state["entries"].append(name)
            self._save()
        return self.workdir / name

    def _add_netns(self, name: str) -> None:
        if netns.exists(name):
            raise LabError(f"network namespace {name} already exists")
        self._state["netns"].append(name)  # recorded before creation: down tolerates absence
        self._save()
        netns.create(name)

    def _spawn(self, what: str, argv: Sequence[str], log: Path,
               env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        proc = procs.spawn(argv, log, env)
        self._procs.append(proc)
        self._state["pids"].append({"pid": proc.pid, "start": procs.start_time(proc.pid),
                                    "what": what})
        self._save()
        return proc

    def _recorded(self) -> list[procs.Recorded]:
        return [(int(r["pid"]), r.get("start")) for r in self._state.get("pids", [])]

    def _pidfile_pids(self) -> list[int]:
        """Daemons started inside the hosts after the lab's start, by the pid files they write:
        an sshd (re)started by an activation (/run/standin-sshd-start writes HOST_DIR/sshd.pid,
        the PidFile of the host's sshd_config) and the stand-in's health server (the host's
        /run/standin-http.pid).  Each is checked against its command line (see
        procs.from_pidfile).  They also live in the host's network namespace, where down looks
        too; the pid files still find them if that namespace is already gone from /run/netns."""
        found = []
        for h in self.hosts.values():
            if self.init_of(h.name) == "systemd":  # its pids are its PID namespace's: they end with it
                continue
            for pidfile, marker in ((h.dir / "sshd.pid", f" -f {h.dir / 'sshd_config'} "),
                                    (h.dir / "run" / "standin-http.pid", "standin-http")):
                pid = procs.from_pidfile(pidfile, marker)
                if pid is not None:
                    found.append(pid)
        return found

    def _host(self, host: str) -> Host:
        try:
            return self.hosts[host]
        except KeyError:
            raise LabError(f"no host {host!r} in this lab") from None

    # ----------------------------------------------------------------- properties

    @property
    def prefix(self) -> str:
        return str(self._state["prefix"])

    @property
    def init(self) -> str:
        """What the lab's hosts run: "plain" (sshd and nix-daemon spawned by the lab) or
        "systemd" (systemd as PID 1, see boot.py)."""
        return str(self._state.get("init", "plain"))

    def init_of(self, host: str) -> str:
        return str(self._state["hosts"][host].get("init", "plain"))

    @property
    def client_key(self) -> Path:
        return self.workdir / "client_key"

    @property
    def client_key_pub(self) -> str:
        """The client public key ("ssh-ed25519 AAAA...", no comment)."""
        return hostfs.public_key(self.workdir / "client_key.pub")

    @property
    def known_hosts(self) -> Path:
        """known_hosts for the deployer: every address of every host with its host key."""
        return self.workdir / "known_hosts"

    @property
    def ssh_config_path(self) -> Path:
        """An ssh_config for the deployer (user root) naming every host; see ssh_config()."""
        return self.workdir / "ssh_config"

    @property
    def hosts_dir(self) -> Path:
        return self.workdir / "hosts"

    @property
    def deployer_netns(self) -> str:
        return str(self._state["deployer"]["netns"])

    @property
    def deployer_segment(self) -> str:
        return str(self._state["deployer"]["segment"])

    @property
    def deployer_address(self) -> str:
        return str(self._state["deployer"]["address"])

    @property
    def namespaces(self) -> list[str]:
        return list(self._state.get("netns", []))
