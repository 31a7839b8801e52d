"""A local fleet of NixOS-like hosts on one machine, for nix-hive's tests and demo.

Each host is a network namespace plus a private mount (and UTS) namespace in which per-host
directories are bind-mounted over /nix, /run, /etc/nix, /etc/ssh, /root, /home and the account
files (/etc/passwd, /etc/group, /etc/shadow, /etc/sudoers.d, /etc/hosts); it runs its own
nix-daemon and sshd.  Segments are bridges inside a lab-owned "switch" namespace.  The deployer
is a network namespace on the deployer segment that uses the machine's real /nix.

SAFETY: nothing is ever added to the root network namespace.  Every link is a veth pair created
inside a lab namespace with its peer moved to another lab namespace, bridges live in the lab's
switch namespace, and `down` removes only what the lab recorded in DIR/lab.json.

Activation hooks: each host's /run holds two scripts the stand-in's switch-to-configuration
(tests/nixpkgs/nixos) runs, inside the host, for `services.openssh.enable`:
/run/standin-sshd-stop stops the host's listening sshd only (by the pid in HOSTDIR/sshd.pid, the
PidFile its sshd_config names, checked against its command line), so open ssh connections
survive, like `systemctl stop sshd` with NixOS's KillMode=process; /run/standin-sshd-start
starts it again unless it runs: the lab's own command line (same sshd_config and log, clean
environment, in the host's namespaces since the activation runs there) but daemonized, and
waits for its pid file.  Such an sshd, and the stand-in's health server (/run/standin-http.pid),
are not in lab.json: `pids` and `down` find them in the host's network namespace (every process
there is the lab's) and by those pid files.

Needs root, iproute2, util-linux (unshare, nsenter), openssh-server and nix.

systemd hosts (`Lab.start(..., init="systemd")`; "plain", above, stays the default): each host
boots systemd as PID 1 in PID, mount, UTS, IPC and cgroup namespaces of its own, on an overlay of
a shared read-only Debian trixie tree (tree.py, made once in $NIX_HIVE_TREES/host-trixie), with
the same per-host /nix, /etc/nix, /etc/ssh, /root, /home and accounts, a persistent /boot, a
fresh /run at each boot (HOSTDIR/run from outside), sshd.service (KillMode=process) whose stop
and start are the activation hooks, and a power supply process that boots it again after
`systemctl reboot`.  Lab.reboot, power_off, power_on(hang=...), boots, wait_up, system_state,
systemctl, journal, memory; boot entries in HOSTDIR/boot/standin (default, oneshot): see boot.py.
`lab.run(host, argv)` enters all the namespaces of its PID 1 (nsenter -a).

Modules:

    topology  pure logic: topology checks, address plan, jump hosts, ssh options and configs
    netns     network namespaces, bridges, veth pairs, address slots
    hostfs    per-host directories: accounts, nix.conf, sshd_config, keys, activation hooks;
              workdir removal
    procs     running commands, spawning daemons, pid/start-time tracking, waiting, killing
    bringup   the start sequence
    tree      the systemd hosts' shared root tree (debootstrap, with tests/matrix.py's functions)
    boot      systemd hosts: power supply and starter scripts, units, boot entries, power off
    measure   boot time and memory of systemd hosts (python -m tests.lab.measure 1 6 30)
    records   what DIR/lab.json says, and recording what the lab makes before making it
    lab       the Lab class (on top of records): start, load, queries, ssh helpers, down
    __main__  the command line (used by `make demo`):

    python -m tests.lab up --workdir DIR [--topology example|JSON|FILE] [--init plain|systemd]
    python -m tests.lab down --workdir DIR
    python -m tests.lab reboot|power-off|power-on [--hang] --workdir DIR HOST
"""

from tests.lab.boot import Boot
from tests.lab.hostfs import ANCHOR_SCRIPT, DEPLOY_USER, SSHD_START_HOOK, SSHD_STOP_HOOK
from tests.lab.lab import Init, Lab
from tests.lab.netns import SLOT_DIR
from tests.lab.procs import HOST_PATH, START_TIMEOUT
from tests.lab.topology import (
    DEPLOYER_OCTET,
    EXAMPLE_TOPOLOGY,
    FIRST_HOST_OCTET,
    MAX_SEGMENTS,
    NAME_RE,
    SLOTS,
    Host,
    LabError,
)

__all__ = [
    "ANCHOR_SCRIPT",
    "DEPLOYER_OCTET",
    "DEPLOY_USER",
    "EXAMPLE_TOPOLOGY",
    "FIRST_HOST_OCTET",
    "HOST_PATH",
    "MAX_SEGMENTS",
    "NAME_RE",
    "SLOTS",
    "SLOT_DIR",
    "SSHD_START_HOOK",
    "SSHD_STOP_HOOK",
    "START_TIMEOUT",
    "Boot",
    "Host",
    "Init",
    "Lab",
    "LabError",
]
