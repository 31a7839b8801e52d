"""Network plumbing of the lab: network namespaces, bridges, veth pairs, address slots.

SAFETY: nothing here adds anything to the root network namespace.  Every `ip` command names a
lab namespace (`ip -n NS` or `ip netns exec NS`); a veth pair is created inside a lab namespace
with its peer moved straight into the lab's switch namespace, where the bridges live.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.procs import run
from tests.lab.topology import SLOTS, LabError

# A slot (the lab's /20) is claimed with O_EXCL in SLOT_DIR, so two running labs never share
# addresses.
SLOT_DIR = Path("/run/nix-hive-lab")

# Connects to port 22 of each address given, retrying for up to 10 s.
# Each address gets 60 s from its turn: 1,000 hosts' sshds and nix-daemons starting on 2
# cores took more than the 10 s this used to allow (a host behind the sixth relay, twice).
PORT_CHECK = (
    "import socket,sys,time\n"
    "for a in sys.argv[1:]:\n"
    "  t=time.monotonic()+60\n"
    "  while True:\n"
    "    try:\n"
    "      socket.create_connection((a,22),timeout=2).close(); break\n"
    "    except OSError as e:\n"
    "      if time.monotonic()>t: sys.exit(f'{a}: {e}')\n"
    "      time.sleep(0.01)\n")


def exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def create(name: str) -> None:
    """A new network namespace: loopback up, no forwarding, no IPv6."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    # Only inside the lab namespace: no forwarding (ipv4 settings are inherited from the
    # root namespace by default), no IPv6 chatter on the counters.
    run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0",
         "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])


def add_bridge(switch: str, bridge: str) -> None:
    run(["ip", "-n", switch, "link", "add", bridge, "type", "bridge"])
    run(["ip", "-n", switch, "link", "set", bridge, "up"])


def plug(switch: str, bridge: str, ns: str, ifname: str, port: str, address: str) -> None:
    """Link namespace ns to bridge: ifname (with address/24) in ns, port in the switch."""
    # Created inside the lab namespace `ns`, peer moved straight into the switch.
    run(["ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", port,
         "netns", switch])
    run(["ip", "-n", switch, "link", "set", port, "master", bridge, "up"])
    run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", ifname])
    run(["ip", "-n", ns, "link", "set", ifname, "up"])


def pids(names: Sequence[str]) -> list[int]:
    """The processes inside the namespaces that still exist."""
    found: list[int] = []
    for ns in names:
        if exists(ns):
            out = run(["ip", "netns", "pids", ns], check=False).stdout
            found += [int(x) for x in out.split() if x.isdigit()]
    return found


def delete(names: Sequence[str]) -> list[str]:
    """Delete the namespaces (in reverse order) that exist; the errors, if any."""
    errors = []
    for ns in reversed(names):
        if exists(ns):
            res = run(["ip", "netns", "delete", ns], check=False)
            if res.returncode != 0 and exists(ns):
                errors.append(f"ip netns delete {ns}: {res.stderr.strip()}")
    return errors


def tx_bytes(ns: str, ifname: str = "eth0") -> int:
    """Bytes sent so far by ifname in ns."""
    out = run(["ip", "-n", ns, "-s", "-j", "link", "show", ifname]).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def check_port_22(ns: str, addresses: Sequence[str]) -> None:
    """LabError unless port 22 of every address accepts connections from ns."""
    proc = run(["ip", "netns", "exec", ns, sys.executable, "-c", PORT_CHECK, *addresses],
               check=False)
    if proc.returncode != 0:
        raise LabError(f"sshd not reachable from {ns}: {proc.stderr.strip()}")


# ----------------------------------------------------------------- address slots

def _stale(path: Path) -> None:
    """Remove a slot file whose lab has no namespace left (and is over a minute old)."""
    try:
        owner = json.loads(path.read_text())
        if not any(exists(n) for n in owner.get("netns", [])) and \
                time.time() - float(owner.get("time", 0)) > 60:
            path.unlink()
    except (OSError, ValueError):
        pass


def claim_slot(prefix: str, workdir: Path) -> int:
    """A free slot, claimed for the lab with this prefix (its deployer namespace recorded)."""
    SLOT_DIR.mkdir(mode=0o755, exist_ok=True)
    for _ in range(200):
        slot = secrets.randbelow(SLOTS)
        path = SLOT_DIR / f"slot-{slot}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _stale(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"prefix": prefix, "workdir": str(workdir),
                       "netns": [f"{prefix}-deployer"], "time": time.time()}, f)
        return slot
    raise LabError(f"no free address slot in {SLOT_DIR}")


def update_slot(slot: int, prefix: str, workdir: Path, names: Sequence[str]) -> None:
    """Record every namespace of the lab in its slot file (so staleness can be judged)."""
    path = SLOT_DIR / f"slot-{slot}"
    tmp = SLOT_DIR / f".slot-{slot}.{os.getpid()}"
    tmp.write_text(json.dumps({"prefix": prefix, "workdir": str(workdir),
                               "netns": list(names), "time": time.time()}))
    tmp.replace(path)


def release_slot(slot: int, prefix: str) -> None:
    """Remove the slot file if the lab with this prefix still owns it."""
    try:
        owner = json.loads((SLOT_DIR / f"slot-{slot}").read_text())
        if owner.get("prefix") == prefix:
            (SLOT_DIR / f"slot-{slot}").unlink()
    except (OSError, ValueError):
        pass
