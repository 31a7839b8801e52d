"""Lab hosts that boot systemd as PID 1 (`Lab.start(..., init="systemd")`), like NixOS hosts.

A host's root is an overlay: the shared read-only tree (tests/lab/tree.py) as lower directory,
HOSTDIR/upper and HOSTDIR/work as its disk (kept across its reboots).  Over it, as on today's
plain hosts, its own /nix, /etc/nix, /etc/ssh, /root, /home, account files and, new, a
persistent /boot (HOSTDIR/boot).  Its /run is a fresh tmpfs at every boot, mounted by the
power supply on HOSTDIR/run (in the lab's mount namespace, so the lab reads
HOSTDIR/run/current-system from outside) and bound in.  Each boot has a boot id of its own
(/proc/sys/kernel/random/boot_id, bound from HOSTDIR/boot_id), as a machine's kernel has.

Processes (see POWER_SCRIPT and STARTER_SCRIPT, files in the lab's WORKDIR/bin):

    power supply (sh, pid in lab.json as HOST/power; HOSTDIR/power.log)
      ip netns exec NS unshare --pid --fork --kill-child --mount --uts --ipc ...
        starter = PID 1 of the host: joins the host's cgroup, unshare --cgroup, mounts,
        pivot_root, boot entry, exec /lib/systemd/systemd (HOSTDIR/pid1: "PID STARTTIME")

When PID 1 ends because `systemctl reboot` ran inside (the kernel ends the init of a PID
namespace as if by SIGHUP on reboot, SIGINT on poweroff/halt; unshare dies of the same signal,
exit status 129 or 130), the power supply boots the host again (129) or leaves it off (any other
status).  Powering off from outside (`Lab.power_off`, `Lab.down`) kills the power supply, then
PID 1 and its unshare (SIGKILL: PID 1 of a namespace ignores SIGTERM), then removes the host's
cgroup leaves-first and unmounts HOSTDIR/run.

Boot entries (the stand-in boot loader): HOSTDIR/boot/standin/default holds the store path
booted by default (the stand-in's `switch-to-configuration switch|boot` writes it; the directory
exists on systemd hosts only: a plain host's /boot is the machine's own);
HOSTDIR/boot/standin/oneshot, if present, is taken instead and deleted (next boot only).  If
a host has no /boot/standin but a /boot/grub/grub.cfg (tests/nixpkgs/nixos/default.nix writes
it as NixOS's install-grub.pl does), the entry is GRUB's choice, read with the tree's
grub-editenv: grubenv's next_entry (grub-reboot's) once, unset as grub.cfg's save_env does
(ENTRY oneshot), else the default (saved_entry, or grub.cfg's number); HOSTDIR/grub.log gets
"ENTRY GRUBENTRY" (what GRUB was told to boot: a number, a title or SUBMENU>TITLE).  If
the entry taken names a path that is not valid in the host's store (or there is no entry), the
host boots without /run/current-system; else /run/current-system and /run/booted-system name it
(as NixOS's stage 2), and a system with $out/standin-boot-hangs (standin.boot = "hang") boots in
MODE hang, as `power_on(hang=True)`.  Each boot appends a line to HOSTDIR/boots.log:
"EPOCH ENTRY SYSTEM WANTED MODE" (ENTRY oneshot|default|none, SYSTEM the path booted or -, WANTED
the entry's path or -, MODE systemd|hang).  Then standin-boot.service runs
/run/current-system/activate if it is executable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.lab import procs
from tests.lab.topology import LabError

SSHD_UNIT = "sshd.service"
# A boot takes about a second alone; many hosts booting at once on 2 cores take longer.
BOOT_TIMEOUT = 30.0
BOOT_TIMEOUT_PER_HOST = 1.5
EXIT_REBOOT = 128 + signal.SIGHUP
EXIT_POWEROFF = 128 + signal.SIGINT

# The power supply of one host: boots it, and boots it again after each reboot from inside.
# Runs in the lab's own namespaces (not under `ip netns exec`, which makes a mount namespace of
# its own): the tmpfs it mounts on HOSTDIR/run is the one the lab reads (at most 256 MiB: memory,
# used only as filled; the journal lives there).
# Arguments: HOSTDIR NETNS CGROUP (absolute, the machine's cgroup2 mount) CGREL (CGROUP relative
# to that mount) TREE NAME MODE (systemd|hang) STARTER.
POWER_SCRIPT = r"""#!/bin/sh
# The nix-hive lab's power supply of one systemd host (tests/lab/boot.py).
set -u
d="$1"; ns="$2"; cg="$3"; cgrel="$4"; tree="$5"; name="$6"; mode="$7"; starter="$8"
stamp() { date +%s.%N; }
# Remove the cgroups a boot left below the host's (leaves first), once their processes are gone,
# and the controllers its systemd enabled for them (where the machine's cgroup2 has any): a
# cgroup that hands controllers down takes no process, and the next PID 1 joins this one.
clear_cgroup() {
  i=0
  while :; do
    ok=1
    for c in $(find "$cg" -mindepth 1 -depth -type d 2>/dev/null); do rmdir "$c" 2>/dev/null || ok=0; done
    for c in $(cat "$cg/cgroup.subtree_control" 2>/dev/null); do echo "-$c" > "$cg/cgroup.subtree_control" || ok=0; done
    if [ $ok = 1 ] && [ -z "$(cat "$cg/cgroup.procs" 2>/dev/null)" ]; then return 0; fi
    i=$((i + 1))
    if [ $i -ge 1000 ]; then echo "$(stamp) power: cgroup $cg still busy" >&2; return 1; fi
    sleep 0.01
  done
}
# A fresh /run for the next boot, with the activation hooks in it.
fresh_run() {
  if mountpoint -q "$d/run"; then umount -l "$d/run"; fi
  mount -t tmpfs -o mode=0755,nosuid,nodev,size=256m "lab-run-$name" "$d/run"
  cp -p "$d/hooks/"* "$d/run/"
}
mkdir -p "$cg"
while :; do
  clear_cgroup
  fresh_run || exit 1
  echo "$(stamp) power: boot $mode"
  ip netns exec "$ns" unshare --pid --fork --kill-child --mount --uts --ipc --propagation private \
    /bin/sh "$starter" stage1 "$d" "$tree" "$cgrel" "$name" "$mode"
  rc=$?
  echo "$(stamp) power: PID 1 ended ($rc)"
  [ "$rc" -eq 129 ] || break  # 128 + SIGHUP: reboot (EXIT_REBOOT)
  mode=systemd
done
clear_cgroup
rmdir "$cg" 2>/dev/null
if mountpoint -q "$d/run"; then umount -l "$d/run"; fi
echo "$(stamp) power: off"
"""

# PID 1 of a host's new PID, mount, UTS and IPC namespaces (in its network namespace), in two
# stages.  stage1: join the host's cgroup (through a cgroup2 mount of its own, since `ip netns
# exec` gave this mount namespace a fresh /sys), then `unshare --cgroup` (no fork: still PID 1),
# so that the host's cgroup is the root of its cgroup namespace and the unshare above stays
# outside it.  stage2: the host's root (overlay, per-host binds, API file systems, a private /dev
# whose console is /dev/null), pivot_root, the boot entry, then systemd (or, MODE hang, a PID 1
# that never starts anything: a host stuck at boot).
# Arguments: stage HOSTDIR TREE CGREL NAME MODE.
STARTER_SCRIPT = r"""#!/bin/sh
# PID 1 of a nix-hive lab host until it execs systemd (tests/lab/boot.py).
set -eu
stage="$1"; d="$2"; tree="$3"; cgrel="$4"; name="$5"; mode="$6"
if [ "$stage" = stage1 ]; then
  # /proc is still the machine's here: /proc/self is this process by its pid out there.
  read -r stat < /proc/self/stat
  set -- $stat
  echo "$1 ${22}" > "$d/pid1.tmp"; mv "$d/pid1.tmp" "$d/pid1"
  mount -t cgroup2 -o nosuid,nodev,noexec lab-cgroup "$d/cgroup"
  echo 0 > "$d/cgroup/$cgrel/cgroup.procs"
  umount "$d/cgroup"
  exec unshare --cgroup /bin/sh "$0" stage2 "$d" "$tree" "$cgrel" "$name" "$mode"
fi
r="$d/sysroot"
mount -t overlay "lab-$name" -o "lowerdir=$tree,upperdir=$d/upper,workdir=$d/work" "$r"
mount --bind "$d/nix" "$r/nix"
mount --bind "$d/etc-nix" "$r/etc/nix"
mount --bind "$d/etc-ssh" "$r/etc/ssh"
for f in passwd group shadow hosts hostname; do mount --bind "$d/etc/$f" "$r/etc/$f"; done
mount --bind "$d/etc/sudoers.d" "$r/etc/sudoers.d"
mount --bind "$d/root" "$r/root"
mount --bind "$d/home" "$r/home"
mount --bind "$d/boot" "$r/boot"
mount --bind "$d/run" "$r/run"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
for p in sys sysrq-trigger; do
  if [ -e "$r/proc/$p" ]; then mount --bind "$r/proc/$p" "$r/proc/$p"; mount -o remount,bind,ro "$r/proc/$p"; fi
done
# A boot id of this boot's own (as LXC gives its containers): the kernel's is the machine's, the
# same across the host's reboots, and nix-hive tells a host that rebooted by its boot id.
cat /proc/sys/kernel/random/uuid > "$d/boot_id"
mount --bind "$d/boot_id" "$r/proc/sys/kernel/random/boot_id"
mount -o remount,bind,ro "$r/proc/sys/kernel/random/boot_id"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$r/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid,size=4m dev "$r/dev"
mknod -m 666 "$r/dev/null" c 1 3
mknod -m 666 "$r/dev/zero" c 1 5
mknod -m 666 "$r/dev/full" c 1 7
mknod -m 666 "$r/dev/random" c 1 8
mknod -m 666 "$r/dev/urandom" c 1 9
mknod -m 666 "$r/dev/tty" c 5 0
mknod -m 600 "$r/dev/console" c 1 3
mkdir -m 755 "$r/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
mkdir -m 1777 "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
ln -s /proc/self/fd/0 "$r/dev/stdin"
ln -s /proc/self/fd/1 "$r/dev/stdout"
ln -s /proc/self/fd/2 "$r/dev/stderr"
hostname "$name"
cd "$r"
pivot_root . mnt
cd /
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The stand-in boot loader: oneshot (consumed) else default; booted if valid in this store.
entry=none; want=
if [ -f /boot/standin/oneshot ]; then
  entry=oneshot; read -r want < /boot/standin/oneshot || true; rm -f /boot/standin/oneshot
elif [ -f /boot/standin/default ]; then
  entry=default; read -r want < /boot/standin/default || true
elif [ -f /boot/grub/grub.cfg ]; then
  # GRUB, as NixOS's grub.cfg has it choose: grub-reboot's next_entry once, if grub.cfg reads it
  # (its save_env unsets it), else its `set default=`: grubenv's saved_entry where that says "${saved_entry}",
  # else the number. The entry (a number, a title or SUBMENU>TITLE) boots the system of its init=.
  genv() { grub-editenv /boot/grub/grubenv list 2>/dev/null | sed -n "s/^$1=//p"; }
  pick=
  if grep -q '^ *set default="${next_entry}"$' /boot/grub/grub.cfg; then pick=$(genv next_entry); fi
  if [ -n "$pick" ]; then
    entry=oneshot; grub-editenv /boot/grub/grubenv unset next_entry
  else
    entry=default
    if grep -q '^ *set default="${saved_entry}"$' /boot/grub/grub.cfg; then pick=$(genv saved_entry)
    else pick=$(sed -n 's/^ *set default=\([0-9]*\)$/\1/p' /boot/grub/grub.cfg | head -n 1)
    fi
  fi
  want=$(awk -v pick="${pick:-0}" '
    function title() { match($0, /"[^"]*"/); return substr($0, RSTART + 1, RLENGTH - 2) }
    /^[ \t]*submenu / { sub_ = title(); insub = 1; n++; next }
    /^[ \t]*menuentry / {
      t = title(); inentry = 1
      if (insub) found = (sub_ ">" t == pick)
      else { found = (t == pick || pick == (n + 0) ""); n++ }
      next
    }
    found && match($0, / init=[^ ]*/) { s = substr($0, RSTART + 6, RLENGTH - 6); sub(/\/init$/, "", s); print s; exit }
    /^[ \t]*}[ \t]*$/ { if (inentry) { inentry = 0; found = 0 } else insub = 0 }
  ' /boot/grub/grub.cfg)
  echo "$entry ${pick:-0}" >> "/mnt$d/grub.log"
fi
system=
case "$want" in
  /nix/store/?*)
    if nix-store --check-validity -- "$want" >/dev/null 2>&1; then
      system="$want"; ln -sfn "$system" /run/current-system; ln -sfn "$system" /run/booted-system
    fi ;;
esac
# a stand-in system whose boot hangs (standin.boot = "hang"): as if its kernel never got to init
if [ -n "$system" ] && [ -e "$system/standin-boot-hangs" ]; then mode=hang; fi
echo "$(date +%s.%N) $entry ${system:--} ${want:--} $mode" >> "/mnt$d/boots.log"
umount -l /mnt
if [ "$mode" = hang ]; then exec env -i PATH="$PATH" sleep infinity; fi
exec env -i container=other PATH="$PATH" LANG=C.UTF-8 /lib/systemd/systemd
"""

# In each boot's fresh /run, for the stand-in's switch-to-configuration (see hostfs.SSHD_STOP_HOOK).
SSHD_STOP_SCRIPT = """#!/bin/sh
# Written by the nix-hive lab (tests/lab/boot.py): stops sshd like NixOS (KillMode=process in
# sshd.service: open ssh connections survive).
exec systemctl stop sshd.service
"""
SSHD_START_SCRIPT = """#!/bin/sh
# Written by the nix-hive lab (tests/lab/boot.py): starts sshd unless it runs (Type=notify: returns
# once it listens).
exec systemctl start sshd.service
"""

# The lab's units, in each host's /etc/systemd/system (its overlay's upper directory).
# sshd as NixOS runs it: stopping the unit keeps open connections (KillMode=process).
SSHD_SERVICE = """[Unit]
Description=SSH daemon (nix-hive lab: the lab's sshd_config, keys and port)
After=network.target

[Service]
Type=notify
ExecStart=/usr/sbin/sshd -D -f /etc/ssh/sshd_config
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes

[Install]
WantedBy=multi-user.target
"""
# Nix's daemon, socket-activated as on NixOS: for the non-root deploy user (root uses the store
# directly, single-user).
NIX_DAEMON_SOCKET = """[Unit]
Description=Nix daemon socket (nix-hive lab)

[Socket]
ListenStream=/nix/var/nix/daemon-socket/socket

[Install]
WantedBy=sockets.target
"""
NIX_DAEMON_SERVICE = """[Unit]
Description=Nix daemon (nix-hive lab)
Requires=nix-daemon.socket

[Service]
ExecStart=/usr/bin/nix-daemon
KillMode=process
"""
BOOT_ACTIVATE = "/etc/nix-hive-lab/standin-boot"
STANDIN_BOOT_SERVICE = f"""[Unit]
Description=Activate the booted stand-in system (nix-hive lab)
After=sshd.service nix-daemon.socket

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={BOOT_ACTIVATE}

[Install]
WantedBy=multi-user.target
"""
# A file, not the unit's command line: systemd would expand `$` there.
BOOT_ACTIVATE_SCRIPT = """#!/bin/sh
# standin-boot.service (nix-hive lab, tests/lab/boot.py): the booted system's activation, if it
# has one (it starts the system's own units).
if [ -x /run/current-system/activate ]; then exec /run/current-system/activate; fi
"""
JOURNALD_CONF = """# nix-hive lab: the journal in /run (memory, fresh at each boot), bounded.
[Journal]
Storage=volatile
RuntimeMaxUse=16M
"""
UNITS = {
    "sshd.service": SSHD_SERVICE,
    "nix-daemon.socket": NIX_DAEMON_SOCKET,
    "nix-daemon.service": NIX_DAEMON_SERVICE,
    "standin-boot.service": STANDIN_BOOT_SERVICE,
}
ENABLED = {"multi-user.target.wants": ("sshd.service", "standin-boot.service"),
           "sockets.target.wants": ("nix-daemon.socket",)}
# Units that would touch the machine (sysctls, binfmt, kernel modules, the clock, trim, the
# kernel's debug, tracing and FUSE file systems: systemd mounts these when it may, and this host's
# root may), need hardware or a console, fetch from the network, or are the tree's own sshd (the
# lab runs its own); and the first-boot updates of a tree that never changes under a host (they
# would write to each host's disk).
MASKED = (
    "systemd-sysctl.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount", "systemd-modules-load.service", "modprobe@.service",
    "kmod-static-nodes.service", "systemd-timesyncd.service", "hwclock.service", "fstrim.service",
    "fstrim.timer", "systemd-pstore.service", "systemd-journald-audit.socket",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "systemd-hwdb-update.service",
    "getty@.service", "serial-getty@.service", "console-getty.service", "container-getty@.service",
    "getty-static.service", "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
    "apt-daily-upgrade.service", "dpkg-db-backup.timer", "dpkg-db-backup.service",
    "ssh.service", "ssh.socket", "sshd@.service", "sshd-keygen.service", "systemd-firstboot.service",
    "ldconfig.service", "systemd-journal-catalog-update.service", "systemd-update-done.service",
    # password prompts on a console this host does not have; each holds an inotify instance, of
    # which the machine's root has max_user_instances (128 here) for all hosts (see INOTIFY_PER_HOST)
    "systemd-ask-password-console.path", "systemd-ask-password-wall.path",
    # Debian's record of a good boot in GRUB's grubenv (NixOS has none; a lab host's GRUB is
    # what its /boot/grub says, read by the starter)
    "grub-common.service",
)
# inotify instances a booted host holds: PID 1's cgroup, /etc/localtime and /run/mount watches,
# dbus-daemon's configuration watch.  They are counted for the machine's root user, all hosts
# together, against fs.inotify.max_user_instances (user namespaces would not help: the count is
# charged to their owner too); past it, units fail (the host is "degraded").
INOTIFY_PER_HOST = 4
# Generators that would add units for hardware or a console this host does not have
# (systemd-ssh-generator: an extra sshd on an AF_UNIX socket; getty: a console login).
MASKED_GENERATORS = ("systemd-ssh-generator", "systemd-getty-generator", "systemd-gpt-auto-generator",
                     "systemd-hibernate-resume-generator", "systemd-tpm2-generator")

# Waits until sshd answers (its banner) on each address given, from the caller's network
# namespace, for up to argv[1] seconds.
BANNER_CHECK = (
    "import socket,sys,time\n"
    "t=time.monotonic()+float(sys.argv[1])\n"
    "for a in sys.argv[2:]:\n"
    "  while True:\n"
    "    try:\n"
    "      with socket.create_connection((a,22),timeout=2) as s:\n"
    "        s.settimeout(2)\n"
    "        if s.recv(64).startswith(b'SSH-'): break\n"
    "    except OSError as e:\n"
    "      err=e\n"
    "    if time.monotonic()>t: sys.exit(f'{a}: no ssh banner')\n"
    "    time.sleep(0.02)\n")


@dataclass(frozen=True)
class Boot:
    """One boot of a systemd host, from HOSTDIR/boots.log."""
    time: float
    entry: str  # oneshot | default | none
    system: str | None  # the store path booted (/run/current-system), None if none
    wanted: str | None  # the path the entry named (None: no entry)
    mode: str  # systemd | hang


def boots(host_dir: Path) -> list[Boot]:
    try:
        lines = (host_dir / "boots.log").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        wanted = " ".join(parts[3:-1])  # as the entry said, white space included
        out.append(Boot(float(parts[0]), parts[1], None if parts[2] == "-" else parts[2],
                        None if wanted == "-" else wanted, parts[-1]))
    return out


# ----------------------------------------------------------------- cgroups

def cgroup2_mount() -> Path:
    """The machine's cgroup2 hierarchy: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified
    (hybrid, as on Debian 12 here: v1 controllers and a cgroup2 without them)."""
    points = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            points[left.split()[4]] = True
    for p in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if p in points:
            return Path(p)
    raise LabError("no cgroup2 hierarchy mounted (systemd hosts need one)")


def cgroup_pids(cg: Path) -> list[int]:
    """Processes in cgroup cg and below (pids as this machine sees them)."""
    found: list[int] = []
    if not cg.is_dir():
        return found
    for dirpath, _, _ in os.walk(cg):
        with contextlib.suppress(OSError):
            found += [int(x) for x in (Path(dirpath) / "cgroup.procs").read_text().split()]
    return found


def remove_cgroup(cg: Path, timeout: float = 5.0) -> None:
    """Remove cg and every cgroup below it, leaves first, once their processes are gone."""
    deadline = time.monotonic() + timeout
    while cg.exists():
        dirs = sorted((Path(p) for p, _, _ in os.walk(cg)), key=lambda p: len(p.parts), reverse=True)
        for c in dirs:
            with contextlib.suppress(OSError):
                c.rmdir()
        if not cg.exists():
            return
        if time.monotonic() > deadline:
            raise LabError(f"cgroup {cg} still busy: processes {cgroup_pids(cg)}")
        time.sleep(0.01)


# ----------------------------------------------------------------- host files

def write_scripts(bin_dir: Path) -> tuple[Path, Path]:
    """The power supply and starter scripts, as files (WORKDIR/bin)."""
    bin_dir.mkdir(exist_ok=True)
    power, starter = bin_dir / "power-supply", bin_dir / "boot-starter"
    for path, text in ((power, POWER_SCRIPT), (starter, STARTER_SCRIPT)):
        path.write_text(text)
        path.chmod(0o755)
    return power, starter


def make_host_dir(d: Path, name: str) -> None:
    """What a systemd host needs beyond a plain host's directory (hostfs.make_host_dir): its
    disk (overlay upper and work directories) with the lab's units, masks, machine id and
    journald settings; /boot; mount points; the activation hooks copied into each boot's /run."""
    for sub in ("upper", "work", "sysroot", "cgroup", "boot", "boot/standin", "hooks"):
        (d / sub).mkdir(mode=0o755, exist_ok=True)
    (d / "etc/hostname").write_text(name + "\n")
    units = d / "upper/etc/systemd/system"
    units.mkdir(parents=True)
    for unit, text in UNITS.items():
        (units / unit).write_text(text)
    for wants, names in ENABLED.items():
        (units / wants).mkdir(exist_ok=True)
        for unit in names:
            (units / wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    for unit in MASKED:
        (units / unit).symlink_to("/dev/null")
    gens = d / "upper/etc/systemd/system-generators"
    gens.mkdir(parents=True)
    for gen in MASKED_GENERATORS:
        (gens / gen).symlink_to("/dev/null")
    journald = d / "upper/etc/systemd/journald.conf.d"
    journald.mkdir(parents=True)
    (journald / "nix-hive-lab.conf").write_text(JOURNALD_CONF)
    (d / "upper/etc/machine-id").write_text(secrets.token_hex(16) + "\n")
    script = d / "upper" / BOOT_ACTIVATE.removeprefix("/")
    script.parent.mkdir(parents=True)
    script.write_text(BOOT_ACTIVATE_SCRIPT)
    script.chmod(0o755)
    from tests.lab.hostfs import SSHD_START_HOOK, SSHD_STOP_HOOK
    for hook, text in ((SSHD_STOP_HOOK, SSHD_STOP_SCRIPT), (SSHD_START_HOOK, SSHD_START_SCRIPT)):
        path = d / "hooks" / Path(hook).name
        path.write_text(text)
        path.chmod(0o755)


# ----------------------------------------------------------------- power

def power_argv(power: Path, starter: Path, d: Path, netns: str, cg: Path, cgroot: Path, tree: Path,
               name: str, hang: bool) -> list[str]:
    return ["/bin/sh", str(power), str(d), netns, str(cg), str(cg.relative_to(cgroot)), str(tree),
            name, "hang" if hang else "systemd", str(starter)]


def pid1(d: Path) -> int | None:
    """The host's PID 1 (as this machine sees it) if it runs, else None."""
    try:
        pid, start = (d / "pid1").read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid) if procs.is_alive(int(pid), start) else None


def kill_host(supplies: Iterable[procs.Recorded], d: Path, netns_pids: Sequence[int], cg: Path) -> None:
    """Hard power off: the power supply first (so it does not boot the host again), then PID 1
    and its unshare (the namespace's other processes die with PID 1), SIGKILL all; then the
    host's cgroups (leaves first) and its /run."""
    targets: list[procs.Recorded] = [(p, s) for p, s in supplies if procs.is_alive(p, s)]
    for pid, _ in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    p1 = pid1(d)
    rest = ([p1] if p1 else []) + [p for p in [*netns_pids, *cgroup_pids(cg)] if p != p1]
    for pid in rest:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        targets.append((pid, procs.start_time(pid)))
    deadline = time.monotonic() + 5
    while any(procs.is_alive(p, s) for p, s in targets) and time.monotonic() < deadline:
        time.sleep(0.005)
    remove_cgroup(cg)
    umount_run(d)


def umount_run(d: Path) -> None:
    run = d / "run"
    while is_mountpoint(run):
        procs.run(["umount", "-l", str(run)])


def is_mountpoint(path: Path) -> bool:
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == target:
            return True
    return False


def wait_up(hosts: Mapping[str, tuple[str, str]], timeout: float, logs: Mapping[str, Path],
            powered: Callable[[str], bool]) -> dict[str, float]:
    """Wait until sshd answers on every host (name -> (netns, address)), probed from its own
    network namespace, all at once; the seconds each took.  LabError if one does not in time,
    or is found powered off (its power supply gave up: a boot that failed)."""
    t0 = time.monotonic()
    probes = {name: subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", BANNER_CHECK,
                                      str(timeout), addr], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
              for name, (ns, addr) in hosts.items()}
    took: dict[str, float] = {}
    failed: dict[str, str] = {}
    pending = dict(probes)
    polls = 0
    while pending:
        polls += 1
        for name, p in list(pending.items()):
            if p.poll() is not None:
                del pending[name]
                took[name] = time.monotonic() - t0
                if p.returncode != 0:
                    failed[name] = f"no answer within {timeout:.0f}s"
            elif polls % 20 == 0 and not powered(name):
                p.kill()
                p.wait()
                del pending[name]
                failed[name] = "powered off"
        time.sleep(0.005)
    if failed:
        raise LabError("sshd did not answer on " + ", ".join(f"{n} ({why})" for n, why in sorted(failed.items()))
                       + "\n" + "\n".join(procs.host_logs(logs[n]) for n in sorted(failed)))
    return took


def inotify_room() -> tuple[int, int]:
    """(instances root may still open, fs.inotify.max_user_instances): the limit less the
    inotify instances root's processes hold now."""
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    used = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if proc.stat().st_uid != 0:
                continue
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == "anon_inode:inotify":
                        used += 1
    return limit - used, limit


def check_inotify(n: int) -> None:
    """LabError if n more systemd hosts would run out of inotify instances (see INOTIFY_PER_HOST)."""
    room, limit = inotify_room()
    if n * INOTIFY_PER_HOST > room:
        raise LabError(f"{n} systemd hosts need {n * INOTIFY_PER_HOST} inotify instances, root has "
                       f"{room} left of fs.inotify.max_user_instances = {limit}: raise it "
                       f"(sysctl -w fs.inotify.max_user_instances=1024) or start fewer hosts")


def pss(pids: Iterable[int]) -> int:
    """Proportional set size of these processes, in bytes (shared pages divided among users)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total
