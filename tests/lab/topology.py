"""The lab's pure logic: topology checks, the address plan, jump hosts and ssh settings.

Nothing here touches the system (apart from `parse_topology` reading a topology file), so it
is unit-tested without root in tests/test_lab_topology.py.
"""

from __future__ import annotations

import json
import re
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
SLOTS = 64 * 16
MAX_SEGMENTS = 16
MAX_HOSTS = 240  # on one segment (octets 10..249 of its /24)
DEPLOYER_OCTET = 1
FIRST_HOST_OCTET = 10
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


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


def host_from_record(name: str, h: Mapping[str, Any]) -> Host:
    """A Host from its record in lab.json."""
    return Host(name=name, addresses=dict(h["addresses"]), address=h["address"],
                host_key_pub=h.get("host_key_pub", ""), dir=Path(h["dir"]), netns=h["netns"],
                segments=tuple(h["segments"]))


# ----------------------------------------------------------------- topology

def parse_topology(text: str) -> dict[str, list[str]]:
    """'example', a JSON object host -> [segment, ...], or the name of a file holding one."""
    if text == "example":
        return dict(EXAMPLE_TOPOLOGY)
    raw = Path(text).read_text() if Path(text).is_file() else text
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise LabError("topology must be a JSON object: host -> [segment, ...]")
    return {str(k): [str(s) for s in v] for k, v in data.items()}


def check_topology(topology: Mapping[str, Sequence[str]], deployer_segment: str,
                   nix_conf: Mapping[str, str]) -> list[str]:
    """The lab's segments, the deployer's first; LabError if the topology is unusable."""
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
    for s in segments:
        if sum(s in segs for segs in topology.values()) > MAX_HOSTS:
            raise LabError(f"segment {s!r}: at most {MAX_HOSTS} hosts")
    unknown = set(nix_conf) - set(topology)
    if unknown:
        raise LabError(f"nix_conf for unknown hosts: {sorted(unknown)}")
    return segments


# ----------------------------------------------------------------- address plan

def address(slot: int, segment_index: int, octet: int) -> str:
    """The address of `octet` on segment number `segment_index` of the lab in `slot`."""
    return f"10.{64 + slot // 16}.{(slot % 16) * 16 + segment_index}.{octet}"


def plan(prefix: str, slot: int, topology: Mapping[str, Sequence[str]], segments: Sequence[str],
         deployer_segment: str, hosts_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Records (as kept in lab.json) of the deployer and of each host: netns, addresses."""
    seg_index = {s: i for i, s in enumerate(segments)}
    deployer = {"netns": f"{prefix}-deployer", "segment": deployer_segment,
                "address": address(slot, seg_index[deployer_segment], DEPLOYER_OCTET)}
    hosts: dict[str, dict[str, Any]] = {}
    taken = dict.fromkeys(segments, 0)  # hosts numbered so far on each segment
    for i, (name, segs) in enumerate(topology.items()):
        addrs = {s: address(slot, seg_index[s], FIRST_HOST_OCTET + taken[s]) for s in segs}
        for s in segs:
            taken[s] += 1
        hosts[name] = {"netns": f"{prefix}-{name}", "segments": list(segs), "addresses": addrs,
                       "address": addrs[segs[0]], "dir": str(hosts_dir / name), "index": i}
    return deployer, hosts


def reachable_address(hosts: Mapping[str, Host], src: str, dst: str) -> str | None:
    """dst's address on a segment src shares with it (src's own first address if same)."""
    s, t = hosts[src], hosts[dst]
    if src == dst:
        return t.address
    for seg in t.segments:
        if seg in s.segments:
            return t.addresses[seg]
    return None


# ----------------------------------------------------------------- jump hosts

def hops(hosts: Mapping[str, Host], deployer_segment: str) -> dict[str, int]:
    """Each host reachable from the deployer -> the number of jump hosts in front of it."""
    dist = {n: 0 for n, x in hosts.items() if deployer_segment in x.segments}
    frontier = list(dist)
    while frontier:
        nxt = []
        for n in frontier:
            for m, x in hosts.items():
                if m not in dist and set(x.segments) & set(hosts[n].segments):
                    dist[m] = dist[n] + 1
                    nxt.append(m)
        frontier = nxt
    return dist


def jump_host(hosts: Mapping[str, Host], deployer_segment: str, host: str) -> str | None:
    """None if host is on the deployer's segment, else the host one hop closer to the
    deployer that shares a segment with it (jump hosts can be chained: its own block
    then names its jump host in turn)."""
    h = hosts[host]
    if deployer_segment in h.segments:
        return None
    dist = hops(hosts, deployer_segment)
    if host not in dist:
        raise LabError(f"{host} is unreachable from the deployer: no chain of hosts links "
                       f"it to {deployer_segment}")
    for j, x in sorted(hosts.items()):
        if dist.get(j) == dist[host] - 1 and set(x.segments) & set(h.segments):
            return j
    raise LabError(f"{host}: no jump host found")  # pragma: no cover - BFS guarantees one


# ----------------------------------------------------------------- ssh settings

def ssh_options(hosts: Mapping[str, Host], deployer_segment: str, host: str, *, user: str,
                client_key: Path, known_hosts: Path) -> dict[str, str]:
    """ssh options reaching host from the deployer namespace (ProxyJump names the jump
    host, which an ssh_config must then define: see ssh_config())."""
    h = hosts[host]
    jump = jump_host(hosts, deployer_segment, host)
    addr = (h.addresses[deployer_segment] if jump is None
            else reachable_address(hosts, jump, host) or h.address)
    opts = {"Hostname": addr, "User": user, "IdentityFile": str(client_key),
            "IdentitiesOnly": "yes", "UserKnownHostsFile": str(known_hosts),
            "StrictHostKeyChecking": "yes", "BatchMode": "yes"}
    if jump is not None:
        opts["ProxyJump"] = jump
    return opts


def ssh_config(hosts: Mapping[str, Host], deployer_segment: str, *, user: str, client_key: Path,
               known_hosts: Path) -> str:
    """An ssh_config for the deployer with a Host block per lab host."""
    blocks = []
    for name in hosts:
        opts = ssh_options(hosts, deployer_segment, name, user=user, client_key=client_key,
                           known_hosts=known_hosts)
        body = "".join(f"  {k} {v}\n" for k, v in opts.items())
        blocks.append(f"Host {name}\n{body}")
    return "\n".join(blocks)


def deployer_known_hosts(hosts: Mapping[str, Host]) -> str:
    """known_hosts for the deployer: every address of every host with its host key."""
    return "\n".join(f"{a} {h.host_key_pub}" for h in hosts.values()
                     for a in h.addresses.values()) + "\n"


def host_ssh_files(hosts: Mapping[str, Host], name: str) -> tuple[str, str]:
    """(known_hosts, ssh_config) for root inside host `name`: every host it shares a
    segment with, under its name (the lab's client key, in the host's /etc/ssh)."""
    known = []
    blocks = []
    for other in hosts.values():
        a = reachable_address(hosts, name, other.name)
        if a is None:
            continue
        known.append(f"{a} {other.host_key_pub}")
        blocks.append(f"Host {other.name}\n  HostName {a}\n"
                      f"  IdentityFile /etc/ssh/lab_client_key\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile /etc/ssh/lab_known_hosts\n"
                      f"  StrictHostKeyChecking no\n  BatchMode yes\n")
    return "\n".join(known) + "\n", "\n".join(blocks)


def etc_hosts(hosts: Mapping[str, Host], name: str) -> str:
    """/etc/hosts of host `name`: itself and every other host it shares a segment with."""
    lines = ["127.0.0.1 localhost", f"127.0.1.1 {name}"]
    for other in hosts.values():
        a = reachable_address(hosts, name, other.name)
        if a is not None and other.name != name:
            lines.append(f"{a} {other.name}")
    return "\n".join(lines) + "\n"
