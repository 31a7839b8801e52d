"""The read-only root tree of systemd lab hosts: a Debian trixie tree, made once and shared.

Every `init="systemd"` host mounts it as the lower directory of an overlay (its own upper
directory is its disk), so a host costs memory, not disk.  The tree is made with tests/matrix.py's
functions (debootstrap --variant=minbase, this machine's CA certificates, apt-get inside as the
root of a private mount namespace) at $NIX_HIVE_TREES/host-trixie-HASH (default
/var/cache/nix-hive/trees/host-trixie-HASH, HASH: of HOST_PACKAGES and RECIPE, so that two
checkouts with other packages, e.g. two branches, each have their own and never remove the
other's under its running hosts), and made anew when its stamp says otherwise.  It is trixie
whatever this machine is (Debian 12 or 13): its systemd (257) is the one the lab was verified
with.

    python3 -m tests.lab.tree [--rebuild]      make it now (the lab makes it on first use)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests import matrix
from tests.lab.topology import LabError

RELEASE = "trixie"
NAME = "host-trixie"
# What a host runs: systemd as PID 1 (dbus for systemctl's and systemd-run's clients, as on
# NixOS), sshd, Nix (single-user as root; nix-daemon for the deploy user), python3 (the
# stand-in's health server), sudo, and the tools the tests call inside hosts; GRUB's grubenv
# tools (grub-common: grub-editenv; grub2-common: grub-reboot, grub-set-default; no boot
# loader is installed: the lab boots a host by what a test's /boot/grub says, tests/lab/boot.py)
# and polkit (polkitd: what systemd's run0 asks); curl (the pull agent's HTTP, hive/host/agent.sh).
# Recommends are left out: a lean tree boots faster and has fewer units to mask.
HOST_PACKAGES = ("ca-certificates", "curl", "dbus", "grub-common", "grub2-common", "iproute2", "nix-bin",
                 "openssh-client", "openssh-server", "polkitd", "procps", "python3", "sudo", "systemd", "util-linux")
# Bump when the provisioning below changes: the tree is made anew.
RECIPE = "2"
STAMP = "var/lib/nix-hive-lab/host-tree"
# Where a host's starter (boot.STARTER_SCRIPT) mounts its own directories and file systems:
# they must exist in the tree, which is read-only under the hosts.
MOUNT_POINTS = ("nix", "etc/nix", "etc/ssh", "etc/sudoers.d", "root", "home", "boot", "run", "proc",
                "sys", "dev", "mnt", "tmp")
MOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/hosts", "etc/hostname")

# Inside the tree (tests.matrix.run_in, /usr writable), as root: the packages, no recommends.
PROVISION_SCRIPT = r"""
set -eu
update-ca-certificates >/dev/null
{apt} update
{apt} install -y --no-install-recommends "$@"
{apt} clean
"""


def path() -> Path:
    """Where the host tree lives (NIX_HIVE_TREES overrides the parent, as for tests/matrix.py)."""
    return matrix.TREES / f"{NAME}-{hashlib.sha256(stamp_text().encode()).hexdigest()[:8]}"


def stamp_text() -> str:
    return f"recipe {RECIPE}\nrelease {RELEASE}\npackages {' '.join(sorted(HOST_PACKAGES))}\n"


def is_ready(tree: Path | None = None) -> bool:
    tree = tree or path()
    try:
        return (tree / STAMP).read_text() == stamp_text()
    except OSError:
        return False


def ensure(rebuild: bool = False, log: bool = True) -> Path:
    """The host tree, made first if it is missing, stale or rebuild is set (about 2 minutes,
    under the tree's lock, so concurrent labs make it once)."""
    tree = path()
    if is_ready(tree) and not rebuild:
        return tree
    try:
        with matrix.locked(tree.name):
            if is_ready(tree) and not rebuild:
                return tree
            t0 = time.monotonic()
            if tree.exists():
                if log:
                    matrix.log(f"{NAME}: removing {tree} (stale or --rebuild)")
                matrix.remove_tree(tree)
            matrix.bootstrap(RELEASE, tree)
            matrix.prepare_files(tree)
            if log:
                matrix.log(f"{NAME}: apt-get install {' '.join(HOST_PACKAGES)}")
            proc = matrix.run_in(tree, ["/bin/sh", "-c", PROVISION_SCRIPT.format(apt=matrix.APT),
                                        "provision", *HOST_PACKAGES], capture=True, writable_usr=True)
            matrix.checked(proc, f"{NAME}: provisioning")
            finish(tree)
            check(tree)
            (tree / STAMP).parent.mkdir(parents=True, exist_ok=True)
            (tree / STAMP).write_text(stamp_text())
            if log:
                matrix.log(f"{NAME}: ready in {time.monotonic() - t0:.0f}s")
    except matrix.MatrixError as e:
        raise LabError(f"host tree {tree}: {e}") from e
    return tree


def finish(tree: Path) -> None:
    """The mount points hosts need; no trace of the checkout (tests.matrix.run_in binds it at
    its own path inside the tree, making empty directories there)."""
    for point in MOUNT_POINTS:
        (tree / point).mkdir(mode=0o755, parents=True, exist_ok=True)
    for f in MOUNT_FILES:
        (tree / f).touch(exist_ok=True)
    here = tree / matrix.REPO.relative_to("/")
    while here != tree and here.is_dir() and not any(here.iterdir()):
        here.rmdir()
        here = here.parent


def check(tree: Path) -> None:
    """LabError unless the tree holds what a host needs."""
    for needed in ("lib/systemd/systemd", "usr/sbin/sshd", "usr/bin/nix-store", "usr/bin/nix-daemon",
                   "usr/bin/python3", "usr/bin/curl", "usr/bin/sudo", "usr/bin/systemctl", "usr/bin/dbus-daemon",
                   "usr/bin/grub-editenv", "usr/sbin/grub-reboot", "usr/sbin/grub-set-default",
                   "usr/bin/run0", "usr/lib/polkit-1/polkitd",
                   *MOUNT_POINTS, *MOUNT_FILES):
        if not (tree / needed).exists():
            raise LabError(f"host tree {tree}: no /{needed}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.lab.tree", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild", action="store_true", help="make the tree anew")
    args = ap.parse_args(argv)
    try:
        print(ensure(args.rebuild))
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
