"""A local fleet of NixOS-like hosts on one machine, for nix-hive's tests and demo.

Each host is a network namespace plus a private mount (and UTS) namespace in which per-host
directories are bind-mounted over /nix, /run, /etc/nix, /etc/ssh, /root, /home and the account
files (/etc/passwd, /etc/group, /etc/shadow, /etc/sudoers.d, /etc/hosts); it runs its own
nix-daemon and sshd.  Segments are bridges inside a lab-owned "switch" namespace.  The deployer
is a network namespace on the deployer segment that uses the machine's real /nix.

SAFETY: nothing is ever added to the root network namespace.  Every link is a veth pair created
inside a lab namespace with its peer moved to another lab namespace, bridges live in the lab's
switch namespace, and `down` removes only what the lab recorded in DIR/lab.json.

Needs root, iproute2, util-linux (unshare, nsenter), openssh-server and nix.

Command line (used by `make demo`):

    python tests/lab.py up --workdir DIR [--topology example|JSON|FILE]
    python tests/lab.py down --workdir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLE_TOPOLOGY: dict[str, list[str]] = {
    "portico": ["pub", "int"],
    "www-1": ["int"],
    "www-2": ["int"],
    "www-3": ["int"],
}

# Address plan: 10.64.0.0/10, one /20 per lab ("slot"), one /24 per segment inside it.
# A slot is claimed with O_EXCL in SLOT_DIR, so two running labs never share addresses.
SLOT_DIR = Path("/run/nix-hive-lab")
SLOTS = 64 * 16
MAX_SEGMENTS = 16
DEPLOYER_OCTET = 1
FIRST_HOST_OCTET = 10
DEPLOY_USER = "deploy"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 20.0
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")

# Runs inside `ip netns exec NS unshare --mount --uts --propagation private`: makes the host's
# view of the file system, then stays as the namespace anchor (its pid is recorded).
ANCHOR_SCRIPT = r"""
set -e
d="$1"; name="$2"
mount --bind "$d/nix" /nix
mount --bind "$d/run" /run
mount --bind "$d/etc-nix" /etc/nix
mount --bind "$d/etc-ssh" /etc/ssh
for f in passwd group shadow hosts; do mount --bind "$d/etc/$f" "/etc/$f"; done
mount --bind "$d/etc/sudoers.d" /etc/sudoers.d
mount --bind "$d/root" /root
mount --bind "$d/home" /home
hostname "$name"
: > "$d/ready"
exec sleep infinity
"""


class LabError(RuntimeError):
    """The lab could not be started (the message says why) or a lab command failed."""


@dataclass(frozen=True)
class Host:
    name: str
    addresses: dict[str, str]  # segment -> address (no prefix length)
    address: str  # address on the host's first segment
    host_key_pub: str  # "ssh-ed25519 AAAA..." without comment
    dir: Path
    netns: str
    segments: tuple[str, ...]


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True, input=input,
                          env=dict(env) if env is not None else None)
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {' '.join(argv)}\n"
                       f"{proc.stderr.strip()}")
    return proc


def _clean_env(home: str = "/root") -> dict[str, str]:
    return {"PATH": HOST_PATH, "HOME": home, "LANG": "C.UTF-8", "USER": "root",
            "LOGNAME": "root"}


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in ticks), None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _is_alive(pid: int, start: str | None) -> bool:
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def _free_id(path: str, field: int, base: int) -> int:
    used = {int(line.split(":")[field]) for line in Path(path).read_text().splitlines()
            if line.count(":") >= field and line.split(":")[field].isdigit()}
    n = base
    while n in used:
        n += 1
    return n


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _parse_topology(text: str) -> dict[str, list[str]]:
    if text == "example":
        return dict(EXAMPLE_TOPOLOGY)
    raw = Path(text).read_text() if Path(text).is_file() else text
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise LabError("topology must be a JSON object: host -> [segment, ...]")
    return {str(k): [str(s) for s in v] for k, v in data.items()}


class Lab:
    """A running lab.  Create it with `Lab.start(...)`, attach to one with `Lab.load(workdir)`."""

    def __init__(self, workdir: Path, state: dict[str, Any]) -> None:
        self.workdir = workdir
        self._state = state
        self._procs: list[subprocess.Popen[bytes]] = []
        self.hosts: dict[str, Host] = {}
        self._refresh_hosts()

    def _refresh_hosts(self) -> None:
        self.hosts = {
            name: Host(name=name, addresses=dict(h["addresses"]), address=h["address"],
                       host_key_pub=h.get("host_key_pub", ""), dir=Path(h["dir"]),
                       netns=h["netns"], segments=tuple(h["segments"]))
            for name, h in self._state.get("hosts", {}).items()}

    # ----------------------------------------------------------------- properties

    @property
    def prefix(self) -> str:
        return str(self._state["prefix"])

    @property
    def client_key(self) -> Path:
        return self.workdir / "client_key"

    @property
    def client_key_pub(self) -> str:
        """The client public key ("ssh-ed25519 AAAA...", no comment)."""
        return " ".join((self.workdir / "client_key.pub").read_text().split()[:2])

    @property
    def known_hosts(self) -> Path:
        """known_hosts for the deployer: every address of every host with its host key."""
        return self.workdir / "known_hosts"

    @property
    def ssh_config_path(self) -> Path:
        """An ssh_config for the deployer (user root) naming every host; see ssh_config()."""
        return self.workdir / "ssh_config"

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

    # ----------------------------------------------------------------- start

    @classmethod
    def start(cls, topology: Mapping[str, Sequence[str]], workdir: Path, *,
              deployer_segment: str = "pub", nix_conf: Mapping[str, str] = {}) -> Lab:
        """Start a lab.  topology: host -> segments; nix_conf: host -> extra nix.conf lines."""
        workdir = Path(workdir).absolute()
        segments = cls._check_topology(topology, deployer_segment, nix_conf)
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
            lab._start(topology, segments, deployer_segment, nix_conf)
        except BaseException:
            lab.down()
            raise
        return lab

    @staticmethod
    def _check_topology(topology: Mapping[str, Sequence[str]], deployer_segment: str,
                        nix_conf: Mapping[str, str]) -> list[str]:
        if not topology:
            raise LabError("empty topology")
        segments: list[str] = [deployer_segment]
        for host, segs in topology.items():
            if not NAME_RE.match(host) or host in ("deployer", "switch"):
                raise LabError(f"bad host name {host!r}")
            if not segs or len(set(segs)) != len(segs):
                raise LabError(f"host {host!r}: needs distinct segments, got {list(segs)}")
            for s in segs:
                if not NAME_RE.match(s):
                    raise LabError(f"bad segment name {s!r}")
                if s not in segments:
                    segments.append(s)
        if len(segments) > MAX_SEGMENTS:
            raise LabError(f"at most {MAX_SEGMENTS} segments")
        if len(topology) > 240:
            raise LabError("at most 240 hosts")
        unknown = set(nix_conf) - set(topology)
        if unknown:
            raise LabError(f"nix_conf for unknown hosts: {sorted(unknown)}")
        return segments

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

    def _claim_slot(self) -> int:
        SLOT_DIR.mkdir(mode=0o755, exist_ok=True)
        for _ in range(200):
            slot = secrets.randbelow(SLOTS)
            path = SLOT_DIR / f"slot-{slot}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                # Stale if the lab that claimed it has no namespace left.
                try:
                    owner = json.loads(path.read_text())
                    if not any(_netns_exists(n) for n in owner.get("netns", [])) and \
                            time.time() - float(owner.get("time", 0)) > 60:
                        path.unlink()
                except (OSError, ValueError):
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"prefix": self.prefix, "workdir": str(self.workdir),
                           "netns": [f"{self.prefix}-deployer"], "time": time.time()}, f)
            self._state["slot"] = slot
            self._save()
            return slot
        raise LabError(f"no free address slot in {SLOT_DIR}")

    def _addr(self, segment_index: int, octet: int) -> str:
        slot = int(self._state["slot"])
        return f"10.{64 + slot // 16}.{(slot % 16) * 16 + segment_index}.{octet}"

    def _add_netns(self, name: str) -> None:
        if _netns_exists(name):
            raise LabError(f"network namespace {name} already exists")
        self._state["netns"].append(name)  # recorded before creation: down tolerates absence
        self._save()
        _run(["ip", "netns", "add", name])
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        # Only inside the lab namespace: no forwarding (ipv4 settings are inherited from the
        # root namespace by default), no IPv6 chatter on the counters.
        _run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0",
              "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])

    def _spawn(self, what: str, argv: Sequence[str], log: Path,
               env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=dict(env),
                                    start_new_session=True)
        self._procs.append(proc)
        self._state["pids"].append({"pid": proc.pid, "start": _start_time(proc.pid),
                                    "what": what})
        self._save()
        return proc

    def _start(self, topology: Mapping[str, Sequence[str]], segments: list[str],
               deployer_segment: str, nix_conf: Mapping[str, str]) -> None:
        for tool in ("ip", "unshare", "nsenter", "ssh-keygen", "nix-daemon"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} not found in PATH")
        if not Path("/usr/sbin/sshd").exists():
            raise LabError("/usr/sbin/sshd not found (install openssh-server)")
        t0 = time.monotonic()
        self._claim_slot()
        p = self.prefix
        seg_index = {s: i for i, s in enumerate(segments)}

        # Keys: one client key for the lab, one host key per host.
        keys = self._entry("keys")
        keys.mkdir()
        ck = self._entry("client_key")
        self._entry("client_key.pub")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{p}-client",
              "-f", str(ck)])

        # Plan addresses.
        hosts_dir = self._entry("hosts")
        hosts_dir.mkdir()
        hosts_dir.chmod(0o755)
        self._state["deployer"] = {"netns": f"{p}-deployer", "segment": deployer_segment,
                                   "address": self._addr(seg_index[deployer_segment],
                                                          DEPLOYER_OCTET)}
        for i, (name, segs) in enumerate(topology.items()):
            addrs = {s: self._addr(seg_index[s], FIRST_HOST_OCTET + i) for s in segs}
            self._state["hosts"][name] = {
                "netns": f"{p}-{name}", "segments": list(segs), "addresses": addrs,
                "address": addrs[segs[0]], "dir": str(hosts_dir / name), "index": i,
            }
        self._save()
        self._refresh_hosts()

        # Network: switch namespace with one bridge per segment, deployer, hosts.
        sw = f"{p}-switch"
        self._add_netns(sw)
        for i in seg_index.values():
            _run(["ip", "-n", sw, "link", "add", f"br{i}", "type", "bridge"])
            _run(["ip", "-n", sw, "link", "set", f"br{i}", "up"])
        self._state["switch"] = sw

        def plug(ns: str, ifname: str, port: str, segment: str, address: str) -> None:
            # Created inside the lab namespace `ns`, peer moved straight into the switch.
            _run(["ip", "-n", ns, "link", "add", ifname, "type", "veth",
                  "peer", "name", port, "netns", sw])
            _run(["ip", "-n", sw, "link", "set", port, "master", f"br{seg_index[segment]}",
                  "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", ifname])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])

        dep = self.deployer_netns
        self._add_netns(dep)
        plug(dep, "eth0", "d0", deployer_segment, self.deployer_address)
        for h in self._state["hosts"].values():
            self._add_netns(h["netns"])
            for j, s in enumerate(h["segments"]):
                plug(h["netns"], f"eth{j}", f"h{h['index']}s{seg_index[s]}", s,
                     h["addresses"][s])
        self._update_slot_file()

        # Host file systems.
        for name, h in self._state["hosts"].items():
            kp = keys / f"{name}_host_key"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{p}-{name}",
                  "-f", str(kp)])
            h["host_key_pub"] = " ".join((keys / f"{name}_host_key.pub").read_text().split()[:2])
        self._save()
        self._refresh_hosts()
        self._write_deployer_files()
        uid = _free_id("/etc/passwd", 2, 2000)
        gid = _free_id("/etc/group", 2, 2000)
        for name in self._state["hosts"]:
            self._make_host_dir(name, uid, gid, nix_conf.get(name, ""))

        # Processes: anchors (mount namespaces), then nix-daemon and sshd in each.
        anchors: dict[str, subprocess.Popen[bytes]] = {}
        for name, h in self._state["hosts"].items():
            d = Path(h["dir"])
            anchors[name] = self._spawn(
                f"{name}/anchor",
                ["ip", "netns", "exec", h["netns"], "unshare", "--mount", "--uts",
                 "--propagation", "private", "sh", "-c", ANCHOR_SCRIPT, "anchor", str(d), name],
                d / "anchor.log", _clean_env())
            h["anchor"] = anchors[name].pid
        self._save()
        self._wait_all("mount namespace", {
            n: (lambda d=Path(h["dir"]): (d / "ready").exists())
            for n, h in self._state["hosts"].items()}, anchors)
        daemons: dict[str, subprocess.Popen[bytes]] = {}
        for name, h in self._state["hosts"].items():
            d = Path(h["dir"])
            enter = ["nsenter", "-t", str(h["anchor"]), "-n", "-m", "-u", "--"]
            self._spawn(f"{name}/nix-daemon", [*enter, "nix-daemon"], d / "nix-daemon.log",
                        _clean_env())
            daemons[name] = self._spawn(
                f"{name}/sshd",
                [*enter, "/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                d / "sshd.out", _clean_env())
        self._wait_all("nix-daemon socket", {
            n: (lambda d=Path(h["dir"]): (d / "nix/var/nix/daemon-socket/socket").exists())
            for n, h in self._state["hosts"].items()}, anchors)
        self._wait_all("sshd", {
            n: (lambda d=Path(h["dir"]): self._sshd_listening(d))
            for n, h in self._state["hosts"].items()}, daemons)
        self._check_ports()
        self._state["start_seconds"] = round(time.monotonic() - t0, 3)
        self._save()

    @staticmethod
    def _sshd_listening(d: Path) -> bool:
        try:
            return "Server listening on 0.0.0.0 port 22" in (d / "sshd.log").read_text()
        except OSError:
            return False

    def _wait_all(self, what: str, ready: Mapping[str, Any],
                  procs: Mapping[str, subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = dict(ready)
        while pending:
            for name in list(pending):
                if pending[name]():
                    del pending[name]
                    continue
                proc = procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise LabError(f"{name}: {what} exited with {proc.returncode} before it "
                                   f"was ready; see logs in {self.hosts_dir / name}\n"
                                   f"{self._logs(name)}")
            if not pending:
                break
            if time.monotonic() > deadline:
                raise LabError(f"timeout ({START_TIMEOUT:.0f}s) waiting for {what} on "
                               f"{sorted(pending)}; logs in {self.hosts_dir}\n"
                               + "\n".join(self._logs(n) for n in sorted(pending)))
            time.sleep(0.005)

    @property
    def hosts_dir(self) -> Path:
        return self.workdir / "hosts"

    def _logs(self, name: str) -> str:
        out = []
        for log in ("anchor.log", "nix-daemon.log", "sshd.out", "sshd.log"):
            try:
                text = (self.hosts_dir / name / log).read_text().strip()
            except OSError:
                continue
            if text:
                out.append(f"--- {name}/{log}\n{text[-2000:]}")
        return "\n".join(out)

    def _check_ports(self) -> None:
        """Connect to port 22 of every host from the deployer (direct hosts) or from its jump
        host (the others), in one process per namespace: proves the links and the sshds."""
        script = (
            "import socket,sys,time\n"
            "for a in sys.argv[1:]:\n"
            "  t=time.monotonic()+10\n"
            "  while True:\n"
            "    try:\n"
            "      socket.create_connection((a,22),timeout=2).close(); break\n"
            "    except OSError as e:\n"
            "      if time.monotonic()>t: sys.exit(f'{a}: {e}')\n"
            "      time.sleep(0.01)\n")
        checks: dict[str, list[str]] = {}
        for name in self.hosts:
            opts = self.ssh_options(name)
            via = opts.get("ProxyJump")
            ns = self.hosts[via].netns if via else self.deployer_netns
            checks.setdefault(ns, []).append(opts["Hostname"])
        for ns, addrs in checks.items():
            proc = _run(["ip", "netns", "exec", ns, sys.executable, "-c", script, *addrs],
                        check=False)
            if proc.returncode != 0:
                raise LabError(f"sshd not reachable from {ns}: {proc.stderr.strip()}")

    def _update_slot_file(self) -> None:
        slot = self._state.get("slot")
        if slot is None:
            return
        path = SLOT_DIR / f"slot-{slot}"
        tmp = SLOT_DIR / f".slot-{slot}.{os.getpid()}"
        tmp.write_text(json.dumps({"prefix": self.prefix, "workdir": str(self.workdir),
                                   "netns": self._state["netns"], "time": time.time()}))
        tmp.replace(path)

    def _write_deployer_files(self) -> None:
        lines = []
        for h in self.hosts.values():
            for a in h.addresses.values():
                lines.append(f"{a} {h.host_key_pub}")
        _write(self._entry("known_hosts"), "\n".join(lines) + "\n")
        _write(self._entry("ssh_config"), self.ssh_config("root"))
        _write(self._entry("ssh_config.deploy"), self.ssh_config(DEPLOY_USER))

    def _make_host_dir(self, name: str, uid: int, gid: int, extra_nix_conf: str) -> None:
        h = self._state["hosts"][name]
        d = Path(h["dir"])
        for sub in ("nix", "run", "run/sshd", "etc-nix", "etc-ssh", "etc", "etc/sudoers.d",
                    "root", "home"):
            (d / sub).mkdir(parents=True)
        d.chmod(0o755)
        (d / "root").chmod(0o700)
        home = d / "home" / DEPLOY_USER
        home.mkdir(mode=0o755)
        os.chown(home, uid, gid)

        # Accounts: copies of the real files plus the deploy user (in this host only).
        passwd = Path("/etc/passwd").read_text()
        _write(d / "etc/passwd", passwd.rstrip("\n") +
               f"\n{DEPLOY_USER}:x:{uid}:{gid}:lab deploy user:/home/{DEPLOY_USER}:/bin/sh\n")
        group = Path("/etc/group").read_text()
        _write(d / "etc/group", group.rstrip("\n") + f"\n{DEPLOY_USER}:x:{gid}:\n")
        shadow = Path("/etc/shadow").read_text()
        _write(d / "etc/shadow", shadow.rstrip("\n") + f"\n{DEPLOY_USER}:*:19000:0:99999:7:::\n",
               0o640)
        shutil.copystat("/etc/shadow", d / "etc/shadow")
        st = os.stat("/etc/shadow")
        os.chown(d / "etc/shadow", st.st_uid, st.st_gid)
        for f in Path("/etc/sudoers.d").iterdir():
            if f.is_file():
                shutil.copy2(f, d / "etc/sudoers.d" / f.name)
        _write(d / "etc/sudoers.d/lab-deploy", f"{DEPLOY_USER} ALL=(ALL) NOPASSWD: ALL\n", 0o440)
        host_lines = ["127.0.0.1 localhost", f"127.0.1.1 {name}"]
        for other in self.hosts.values():
            a = self._reachable_address(name, other.name)
            if a is not None and other.name != name:
                host_lines.append(f"{a} {other.name}")
        _write(d / "etc/hosts", "\n".join(host_lines) + "\n")

        # nix.conf: defaults first, dropped when the caller's lines set the same key.
        defaults = {"build-users-group": "", "experimental-features": "nix-command",
                    "sandbox": "false", "trusted-users": f"root {DEPLOY_USER}",
                    "substituters": ""}
        extra = [line.strip() for line in extra_nix_conf.splitlines() if line.strip()]
        extra_keys = {line.split("=", 1)[0].strip() for line in extra if "=" in line}
        conf = [f"{k} = {v}".rstrip() for k, v in defaults.items() if k not in extra_keys]
        _write(d / "etc-nix/nix.conf", "\n".join(conf + extra) + "\n")

        # /etc/ssh: host key, authorized keys, client key and config for the host's root.
        es = d / "etc-ssh"
        keys = self.workdir / "keys"
        shutil.copyfile(keys / f"{name}_host_key", es / "ssh_host_ed25519_key")
        (es / "ssh_host_ed25519_key").chmod(0o600)
        shutil.copyfile(keys / f"{name}_host_key.pub", es / "ssh_host_ed25519_key.pub")
        client_pub = (self.workdir / "client_key.pub").read_text()
        _write(es / "lab_authorized_keys", client_pub)
        shutil.copyfile(self.client_key, es / "lab_client_key")
        (es / "lab_client_key").chmod(0o600)
        if Path("/etc/ssh/moduli").exists():
            shutil.copyfile("/etc/ssh/moduli", es / "moduli")
        known = []
        blocks = []
        for other in self.hosts.values():
            a = self._reachable_address(name, other.name)
            if a is None:
                continue
            known.append(f"{a} {other.host_key_pub}")
            blocks.append(f"Host {other.name}\n  HostName {a}\n"
                          f"  IdentityFile /etc/ssh/lab_client_key\n  IdentitiesOnly yes\n"
                          f"  UserKnownHostsFile /etc/ssh/lab_known_hosts\n"
                          f"  StrictHostKeyChecking no\n  BatchMode yes\n")
        _write(es / "lab_known_hosts", "\n".join(known) + "\n")
        _write(es / "ssh_config", "\n".join(blocks))
        _write(d / "sshd_config", "\n".join([
            "Port 22",
            "ListenAddress 0.0.0.0",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "AuthorizedKeysFile /etc/ssh/lab_authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            f"PidFile {d}/sshd.pid",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "UseDNS no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
        ]) + "\n")

    def _reachable_address(self, src: str, dst: str) -> str | None:
        """dst's address on a segment src shares with it (src's own first address if same)."""
        s, t = self._state["hosts"][src], self._state["hosts"][dst]
        if src == dst:
            return str(t["address"])
        for seg in t["segments"]:
            if seg in s["segments"]:
                return str(t["addresses"][seg])
        return None

    # ----------------------------------------------------------------- attach

    @classmethod
    def load(cls, workdir: Path) -> Lab:
        """Attach to a lab started (maybe by another process) in workdir."""
        workdir = Path(workdir).absolute()
        state = json.loads((workdir / "lab.json").read_text())
        return cls(workdir, state)

    # ----------------------------------------------------------------- use

    def _host(self, host: str) -> Host:
        try:
            return self.hosts[host]
        except KeyError:
            raise LabError(f"no host {host!r} in this lab") from None

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
        env = _clean_env(home) | {"USER": user, "LOGNAME": user}
        return _run(self.host_argv(host, argv, user=user), check=check, input=input, env=env)

    def read(self, host: str, path: str) -> str | None:
        proc = self.run(host, ["cat", "--", path], check=False)
        return proc.stdout if proc.returncode == 0 else None

    def current_system(self, host: str) -> str | None:
        proc = self.run(host, ["readlink", "/run/current-system"], check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def activations(self, host: str) -> list[str]:
        text = self.read(host, "/run/standin-activations.log")
        return text.splitlines() if text else []

    def deployer_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.deployer_netns, *argv]

    def tx_bytes(self) -> int:
        """Bytes sent so far by the deployer's link."""
        out = _run(["ip", "-n", self.deployer_netns, "-s", "-j", "link", "show", "eth0"]).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])

    def auth_count(self, host: str) -> int:
        """Number of successful public-key authentications host's sshd has logged."""
        try:
            text = (self._host(host).dir / "sshd.log").read_text()
        except OSError:
            return 0
        return text.count("Accepted publickey")

    def jump_host(self, host: str) -> str | None:
        """None if host is on the deployer's segment, else the host one hop closer to the
        deployer that shares a segment with it (jump hosts can be chained: its own block
        then names its jump host in turn)."""
        h = self._host(host)
        if self.deployer_segment in h.segments:
            return None
        # breadth-first from the deployer's segment: each host's distance in hops
        hops: dict[str, int] = {n: 0 for n, x in self.hosts.items() if self.deployer_segment in x.segments}
        frontier = list(hops)
        while frontier:
            nxt = []
            for n in frontier:
                for m, x in self.hosts.items():
                    if m not in hops and set(x.segments) & set(self.hosts[n].segments):
                        hops[m] = hops[n] + 1
                        nxt.append(m)
            frontier = nxt
        if host not in hops:
            raise LabError(f"{host} is unreachable from the deployer: no chain of hosts links "
                           f"it to {self.deployer_segment}")
        for j, x in sorted(self.hosts.items()):
            if hops.get(j) == hops[host] - 1 and set(x.segments) & set(h.segments):
                return j
        raise LabError(f"{host}: no jump host found")  # pragma: no cover - BFS guarantees one

    def ssh_options(self, host: str, user: str = "root") -> dict[str, str]:
        """ssh options reaching host from the deployer namespace (ProxyJump names the jump
        host, which an ssh_config must then define: see ssh_config())."""
        h = self._host(host)
        jump = self.jump_host(host)
        addr = h.addresses[self.deployer_segment] if jump is None else self._reachable_address(jump, host) or h.address
        opts = {"Hostname": addr, "User": user, "IdentityFile": str(self.client_key),
                "IdentitiesOnly": "yes", "UserKnownHostsFile": str(self.known_hosts),
                "StrictHostKeyChecking": "yes", "BatchMode": "yes"}
        if jump is not None:
            opts["ProxyJump"] = jump
        return opts

    def ssh_config(self, user: str = "root") -> str:
        """An ssh_config for the deployer with a Host block per lab host."""
        blocks = []
        for name in self.hosts:
            body = "".join(f"  {k} {v}\n" for k, v in self.ssh_options(name, user).items())
            blocks.append(f"Host {name}\n{body}")
        return "\n".join(blocks)

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
        """Live processes of this lab: recorded ones plus any inside its namespaces."""
        live = [int(r["pid"]) for r in self._state.get("pids", [])
                if _is_alive(int(r["pid"]), r.get("start"))]
        for ns in self._state.get("netns", []):
            if _netns_exists(ns):
                out = _run(["ip", "netns", "pids", ns], check=False).stdout
                live += [int(x) for x in out.split() if x.isdigit()]
        return sorted(set(live))

    def down(self) -> None:
        """Kill the lab's processes, delete its namespaces, remove what it put in workdir."""
        recorded = [(int(r["pid"]), r.get("start")) for r in self._state.get("pids", [])]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            targets = [(p, s) for p, s in recorded if _is_alive(p, s)]
            for ns in self._state.get("netns", []):
                if _netns_exists(ns):
                    out = _run(["ip", "netns", "pids", ns], check=False).stdout
                    targets += [(int(x), _start_time(int(x))) for x in out.split()
                                if x.isdigit()]
            for pid, _ in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + (2.0 if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline:
                for proc in self._procs:
                    proc.poll()
                if not any(_is_alive(p, s) for p, s in targets):
                    break
                time.sleep(0.01)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self._procs.clear()
        errors = []
        for ns in reversed(self._state.get("netns", [])):
            if _netns_exists(ns):
                res = _run(["ip", "netns", "delete", ns], check=False)
                if res.returncode != 0 and _netns_exists(ns):
                    errors.append(f"ip netns delete {ns}: {res.stderr.strip()}")
        slot = self._state.get("slot")
        if slot is not None:
            try:
                owner = json.loads((SLOT_DIR / f"slot-{slot}").read_text())
                if owner.get("prefix") == self.prefix:
                    (SLOT_DIR / f"slot-{slot}").unlink()
            except (OSError, ValueError):
                pass
        if errors:
            raise LabError("; ".join(errors))
        for name in self._state.get("entries", []):
            path = self.workdir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=False, onerror=_rm_error)
            else:
                path.unlink(missing_ok=True)
        for name in ("lab.json", "lab.json.tmp"):
            (self.workdir / name).unlink(missing_ok=True)
        if self._state.get("created_workdir"):
            try:
                self.workdir.rmdir()
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise
        self._state["pids"] = []
        self._state["netns"] = []
        self._state["entries"] = []
        self._state["slot"] = None


def _rm_error(func: Any, path: str, exc: Any) -> None:
    # Store paths are read-only; root may still lack write permission on the parent
    # directory's mode bits only in odd setups: make it writable and retry once.
    parent = os.path.dirname(path)
    os.chmod(parent, 0o755)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.py", description="nix-hive test lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a lab")
    up.add_argument("--workdir", type=Path, required=True)
    up.add_argument("--topology", default="example",
                    help="'example', a JSON object host -> [segments], or a JSON file")
    up.add_argument("--deployer-segment", default="pub")
    up.add_argument("--nix-conf", default="{}",
                    help="JSON object host -> extra nix.conf lines")
    down = sub.add_parser("down", help="stop the lab recorded in WORKDIR/lab.json")
    down.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            lab = Lab.start(_parse_topology(args.topology), args.workdir,
                            deployer_segment=args.deployer_segment,
                            nix_conf=json.loads(args.nix_conf))
            print(lab.summary())
            print(f"  up in {time.monotonic() - t0:.2f}s; stop with: {sys.argv[0]} down "
                  f"--workdir {args.workdir}")
        else:
            if not (args.workdir / "lab.json").exists():
                print(f"no lab in {args.workdir}")
                return 0
            t0 = time.monotonic()
            lab = Lab.load(args.workdir)
            lab.down()
            print(f"lab {lab.prefix} down in {time.monotonic() - t0:.2f}s")
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
