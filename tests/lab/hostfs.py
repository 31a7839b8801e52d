"""Host file systems: the per-host directories bind-mounted over /nix, /run, /etc/nix,
/etc/ssh, /root, /home and the account files, with the host's nix.conf, sshd_config, keys, the
deploy user and the activation hooks in its /run (/run/standin-sshd-stop and -start, see
SSHD_STOP_HOOK); and removing what the lab put in its workdir."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.constants import SANDBOX_CONFIG
from tests.lab import topology
from tests.lab.procs import HOST_PATH, run
from tests.lab.topology import Host

DEPLOY_USER = "deploy"
SSHD = "/usr/sbin/sshd"
SUBDIRS = ("nix", "run", "run/sshd", "etc-nix", "etc-ssh", "etc", "etc/sudoers.d", "root", "home")

# Runs inside `ip netns exec NS unshare --mount --uts --propagation private`: makes the host's
# view of the file system, then stays as the namespace anchor (its pid is recorded).
# The host's directory may lie under /root or /home (a checkout there): its path is hidden once
# those are mounted over, so the script works from it as its current directory, with relative
# sources that mount does not canonicalize (-c: resolved by the kernel from that directory),
# and binds it back at its own path inside the host, where sshd's command line names it.
ANCHOR_SCRIPT = r"""
set -e
d="$1"; name="$2"
cd "$d"
mount -c --bind nix /nix
mount -c --bind run /run
mount -c --bind etc-nix /etc/nix
mount -c --bind etc-ssh /etc/ssh
for f in passwd group shadow hosts; do mount -c --bind "etc/$f" "/etc/$f"; done
mount -c --bind etc/sudoers.d /etc/sudoers.d
mount -c --bind root /root
mount -c --bind home /home
if [ ! -d "$d" ]; then mkdir -p "$d"; mount -c --bind . "$d"; fi
hostname "$name"
: > ready
exec sleep infinity
"""


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def free_id(path: str, field: int, base: int) -> int:
    """The first id from base on that no line of path (passwd or group) uses in field."""
    used = {int(line.split(":")[field]) for line in Path(path).read_text().splitlines()
            if line.count(":") >= field and line.split(":")[field].isdigit()}
    n = base
    while n in used:
        n += 1
    return n


def keygen(key: Path, comment: str) -> str:
    """A new ed25519 key pair at key, key.pub; its public key without comment."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])
    return public_key(key.with_name(key.name + ".pub"))


def public_key(pub: Path) -> str:
    """"ssh-ed25519 AAAA..." from a .pub file, without the comment."""
    return " ".join(pub.read_text().split()[:2])


def nix_conf(extra_nix_conf: str) -> str:
    """nix.conf: defaults first, dropped when the caller's lines set the same key."""
    sandbox = dict(line.split(" = ", 1) for line in SANDBOX_CONFIG.splitlines())
    defaults = {"build-users-group": "", "experimental-features": "nix-command",
                **sandbox, "trusted-users": f"root {DEPLOY_USER}",
                "substituters": ""}
    extra = [line.strip() for line in extra_nix_conf.splitlines() if line.strip()]
    extra_keys = {line.split("=", 1)[0].strip() for line in extra if "=" in line}
    conf = [f"{k} = {v}".rstrip() for k, v in defaults.items() if k not in extra_keys]
    return "\n".join(conf + extra) + "\n"


def sshd_config(d: Path, pidfile: str | None = None) -> str:
    """The sshd_config of the host whose directory is d (pid file: d/sshd.pid unless given; a
    systemd host's is in its own /run, where nothing outside the host looks for it)."""
    return "\n".join([
        "Port 22",
        "ListenAddress 0.0.0.0",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "AuthorizedKeysFile /etc/ssh/lab_authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        f"PidFile {pidfile or f'{d}/sshd.pid'}",
        "LogLevel VERBOSE",
        "PrintMotd no",
        "UseDNS no",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
    ]) + "\n"


# The per-host hooks the stand-in's switch-to-configuration calls (tests/nixpkgs/nixos), in the
# host's own /run: a system with `services.openssh.enable = false` runs SSHD_STOP_HOOK, any other
# SSHD_START_HOOK, as `systemctl stop/start sshd` would on NixOS.
SSHD_STOP_HOOK = "/run/standin-sshd-stop"
SSHD_START_HOOK = "/run/standin-sshd-start"

_HOOK_COMMON = r"""#!/bin/sh
# Written by the nix-hive lab (tests/lab/hostfs.py) for host {name}; run inside the host
# (by its switch-to-configuration, as root).
pidfile={d}/sshd.pid
config={d}/sshd_config
# ours PID: PID is this host's listening sshd (its command line names this host's config;
# sshd rewrites it, as "sshd: /usr/sbin/sshd -D -f CONFIG ... [listener] ...")
ours() {{
  [ -n "$1" ] && tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline" | grep -qF -- " -f $config "
}}
# alive PID: the process exists and is not a zombie
alive() {{
  [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}}
pid=$(cat "$pidfile" 2>/dev/null) || pid=
"""

SSHD_STOP_SCRIPT = _HOOK_COMMON + r"""
# Stops the host's listening sshd only, like `systemctl stop sshd` on NixOS
# (KillMode=process): the per-connection sshd processes, so the open ssh connections, survive.
if ours "$pid" && alive "$pid"; then
  kill -TERM "$pid"
  i=0
  while alive "$pid"; do
    if [ $i -ge 500 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    if [ $i -ge 1000 ]; then echo "standin-sshd-stop: sshd $pid does not die" >&2; exit 1; fi
    sleep 0.01; i=$((i + 1))
  done
fi
rm -f "$pidfile"
"""

SSHD_START_SCRIPT = _HOOK_COMMON + r"""
# Starts the host's sshd unless it runs: the lab's command line (same config, log, clean
# environment, in the caller's namespaces: the host's), but daemonized, so that it outlives the
# activation.  It writes its pid to $pidfile once it listens; Lab.down finds it there (and in the
# host's network namespace).
if ours "$pid" && alive "$pid"; then exit 0; fi
rm -f "$pidfile"
env -i PATH={path} HOME=/root LANG=C.UTF-8 USER=root LOGNAME=root \
  setsid {sshd} -f "$config" -E {d}/sshd.log < /dev/null >> {d}/sshd.out 2>&1 || {{
  echo "standin-sshd-start: sshd failed to start; see {d}/sshd.log" >&2; exit 1; }}
i=0
until pid=$(cat "$pidfile" 2>/dev/null) && alive "$pid"; do
  if [ $i -ge 1000 ]; then
    echo "standin-sshd-start: no sshd after 10s; {d}/sshd.log ends with:" >&2
    tail -n 5 {d}/sshd.log >&2
    exit 1
  fi
  sleep 0.01; i=$((i + 1))
done
"""


def sshd_hooks(d: Path, name: str) -> dict[str, str]:
    """The host's /run/standin-sshd-stop and -start (see SSHD_STOP_HOOK), by path in the host."""
    fmt = {"d": shlex.quote(str(d)), "name": name, "path": HOST_PATH, "sshd": SSHD}
    return {SSHD_STOP_HOOK: SSHD_STOP_SCRIPT.format(**fmt),
            SSHD_START_HOOK: SSHD_START_SCRIPT.format(**fmt)}


def make_host_dir(hosts: Mapping[str, Host], name: str, *, uid: int, gid: int,
                  extra_nix_conf: str, keys: Path, client_key: Path, root: Path = Path("/"),
                  systemd: bool = False) -> None:
    """Everything host `name` mounts over the machine's own directories (see ANCHOR_SCRIPT), or,
    for a systemd host, over its root tree's (root: the tree the account files come from; its
    sshd_config is its /etc/ssh/sshd_config and its hooks are copied into each boot's /run by
    its power supply: see boot.py)."""
    d = hosts[name].dir
    for sub in SUBDIRS:
        (d / sub).mkdir(parents=True)
    d.chmod(0o755)
    (d / "root").chmod(0o700)
    home = d / "home" / DEPLOY_USER
    home.mkdir(mode=0o755)
    os.chown(home, uid, gid)
    write_accounts(d, uid, gid, root)
    write(d / "etc/hosts", topology.etc_hosts(hosts, name))
    write(d / "etc-nix/nix.conf", nix_conf(extra_nix_conf))
    write_etc_ssh(hosts, name, keys, client_key)
    if systemd:
        write(d / "etc-ssh/sshd_config", sshd_config(d, pidfile="/run/sshd.pid"))
        return
    write(d / "sshd_config", sshd_config(d))
    for path, script in sshd_hooks(d, name).items():
        write(d / path.removeprefix("/"), script, 0o755)


def write_accounts(d: Path, uid: int, gid: int, root: Path = Path("/")) -> None:
    """Copies of the account files of root (the machine's, or a systemd host's tree) plus the
    deploy user (in this host only)."""
    passwd = (root / "etc/passwd").read_text()
    write(d / "etc/passwd", passwd.rstrip("\n") +
          f"\n{DEPLOY_USER}:x:{uid}:{gid}:lab deploy user:/home/{DEPLOY_USER}:/bin/sh\n")
    group = (root / "etc/group").read_text()
    write(d / "etc/group", group.rstrip("\n") + f"\n{DEPLOY_USER}:x:{gid}:\n")
    shadow = (root / "etc/shadow").read_text()
    write(d / "etc/shadow", shadow.rstrip("\n") + f"\n{DEPLOY_USER}:*:19000:0:99999:7:::\n", 0o640)
    shutil.copystat(root / "etc/shadow", d / "etc/shadow")
    st = os.stat(root / "etc/shadow")
    os.chown(d / "etc/shadow", st.st_uid, st.st_gid)
    for f in (root / "etc/sudoers.d").iterdir():
        if f.is_file():
            shutil.copy2(f, d / "etc/sudoers.d" / f.name)
    write(d / "etc/sudoers.d/lab-deploy", f"{DEPLOY_USER} ALL=(ALL) NOPASSWD: ALL\n", 0o440)


def write_etc_ssh(hosts: Mapping[str, Host], name: str, keys: Path, client_key: Path) -> None:
    """/etc/ssh: host key, authorized keys, client key and config for the host's root."""
    es = hosts[name].dir / "etc-ssh"
    shutil.copyfile(keys / f"{name}_host_key", es / "ssh_host_ed25519_key")
    (es / "ssh_host_ed25519_key").chmod(0o600)
    shutil.copyfile(keys / f"{name}_host_key.pub", es / "ssh_host_ed25519_key.pub")
    write(es / "lab_authorized_keys", client_key.with_name(client_key.name + ".pub").read_text())
    shutil.copyfile(client_key, es / "lab_client_key")
    (es / "lab_client_key").chmod(0o600)
    if Path("/etc/ssh/moduli").exists():
        shutil.copyfile("/etc/ssh/moduli", es / "moduli")
    known, config = topology.host_ssh_files(hosts, name)
    write(es / "lab_known_hosts", known)
    write(es / "ssh_config", config)


# ----------------------------------------------------------------- removal

def remove_entries(workdir: Path, entries: Sequence[str], created_workdir: bool) -> None:
    """Remove the workdir entries the lab made, its lab.json, and workdir if the lab made it."""
    for name in entries:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=False, onerror=_rm_error)
        else:
            path.unlink(missing_ok=True)
    for name in ("lab.json", "lab.json.tmp"):
        (workdir / name).unlink(missing_ok=True)
    if created_workdir:
        try:
            workdir.rmdir()
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise


def _rm_error(func: Any, path: str, exc: Any) -> None:
    # Store paths are read-only; root may still lack write permission on the parent
    # directory's mode bits only in odd setups: make it writable and retry once.
    parent = os.path.dirname(path)
    os.chmod(parent, 0o755)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
