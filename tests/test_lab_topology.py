"""The lab's pure logic (tests/lab/topology.py): runs without root, touches nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab import topology as t
from tests.lab.topology import EXAMPLE_TOPOLOGY, Host, LabError

KEY = Path("/lab/client_key")
KNOWN = Path("/lab/known_hosts")


def hosts_of(topo: dict[str, list[str]], slot: int = 0, deployer_segment: str = "pub") -> dict[str, Host]:
    segments = t.check_topology(topo, deployer_segment, {})
    _, records = t.plan("hvtest", slot, topo, segments, deployer_segment, Path("/lab/hosts"))
    for name, r in records.items():
        r["host_key_pub"] = f"ssh-ed25519 KEY-{name}"
    return {name: t.host_from_record(name, r) for name, r in records.items()}


# A relay chain: deployer -> gate (pub, dmz) -> mid (dmz, lan) -> deep (lan, core) -> core-1.
CHAIN = {"gate": ["pub", "dmz"], "mid": ["dmz", "lan"], "deep": ["lan", "core"],
         "core-1": ["core"], "lan-1": ["lan"]}


@pytest.mark.parametrize(("topo", "kwargs", "message"), [
    ({}, {}, "empty topology"),
    ({"Bad": ["pub"]}, {}, "bad host name 'Bad'"),
    ({"deployer": ["pub"]}, {}, "bad host name 'deployer'"),
    ({"switch": ["pub"]}, {}, "bad host name 'switch'"),
    ({"a": []}, {}, "needs distinct segments"),
    ({"a": ["pub", "pub"]}, {}, "needs distinct segments"),
    ({"a": ["pub", "no_underscores"]}, {}, "bad segment name 'no_underscores'"),
    ({"a": ["pub", *(f"s{i}" for i in range(16))]}, {}, "at most 16 segments"),
    ({f"h{i}": ["pub"] for i in range(241)}, {}, "at most 240 hosts"),
    ({"a": ["pub"]}, {"nix_conf": {"b": "x = y"}}, r"nix_conf for unknown hosts: \['b'\]"),
])
def test_check_topology_refuses(topo: dict[str, list[str]], kwargs: dict[str, dict[str, str]],
                                message: str) -> None:
    with pytest.raises(LabError, match=message):
        t.check_topology(topo, "pub", kwargs.get("nix_conf", {}))


def test_check_topology_segments_deployer_first() -> None:
    assert t.check_topology(EXAMPLE_TOPOLOGY, "pub", {"www-1": "x = y"}) == ["pub", "int"]
    assert t.check_topology({"a": ["x", "y"], "b": ["y", "z"]}, "pub", {}) == ["pub", "x", "y", "z"]


def test_parse_topology(tmp_path: Path) -> None:
    assert t.parse_topology("example") == EXAMPLE_TOPOLOGY
    assert t.parse_topology('{"a": ["pub"], "b": ["pub", "lan"]}') == {"a": ["pub"], "b": ["pub", "lan"]}
    f = tmp_path / "topo.json"
    f.write_text(json.dumps({"solo": ["pub"]}))
    assert t.parse_topology(str(f)) == {"solo": ["pub"]}
    with pytest.raises(LabError, match="JSON object"):
        t.parse_topology('["a"]')


def test_address_plan() -> None:
    assert t.address(0, 0, 1) == "10.64.0.1"
    assert t.address(17, 2, 10) == "10.65.18.10"
    assert t.address(t.SLOTS - 1, t.MAX_SEGMENTS - 1, 250) == "10.127.255.250"
    # every (slot, segment) pair has a /24 of its own
    nets = {t.address(s, i, 0) for s in range(t.SLOTS) for i in range(t.MAX_SEGMENTS)}
    assert len(nets) == t.SLOTS * t.MAX_SEGMENTS


def test_plan_records() -> None:
    segments = t.check_topology(EXAMPLE_TOPOLOGY, "pub", {})
    deployer, hosts = t.plan("hvab12", 3, EXAMPLE_TOPOLOGY, segments, "pub", Path("/w/hosts"))
    assert deployer == {"netns": "hvab12-deployer", "segment": "pub", "address": "10.64.48.1"}
    assert hosts["portico"] == {"netns": "hvab12-portico", "segments": ["pub", "int"],
                                "addresses": {"pub": "10.64.48.10", "int": "10.64.49.10"},
                                "address": "10.64.48.10", "dir": "/w/hosts/portico", "index": 0}
    assert hosts["www-3"]["addresses"] == {"int": "10.64.49.13"}
    assert hosts["www-3"]["address"] == "10.64.49.13"
    addrs = [a for h in hosts.values() for a in h["addresses"].values()] + [deployer["address"]]
    assert len(addrs) == len(set(addrs))


def test_plan_numbers_hosts_per_segment_so_hundreds_fit() -> None:
    """300 hosts behind 3 relays (benchmarks/fleet_scale.py): each segment numbers its own."""
    topo = {f"r{r}": ["pub", f"s{r}"] for r in (1, 2, 3)} | {f"h{k:03d}": [f"s{k % 3 + 1}"] for k in range(300)}
    segments = t.check_topology(topo, "pub", {})
    deployer, hosts = t.plan("hvab12", 3, topo, segments, "pub", Path("/w/hosts"))
    addrs = [a for h in hosts.values() for a in h["addresses"].values()] + [deployer["address"]]
    assert len(addrs) == len(set(addrs)) == 3 * 2 + 300 + 1
    assert all(10 <= int(a.rsplit(".", 1)[1]) < 250 for a in addrs[:-1])
    assert hosts["r2"]["addresses"] == {"pub": "10.64.48.11", "s2": "10.64.50.10"}


def test_reachable_address() -> None:
    hosts = hosts_of(EXAMPLE_TOPOLOGY)
    assert t.reachable_address(hosts, "portico", "www-1") == hosts["www-1"].addresses["int"]
    assert t.reachable_address(hosts, "www-1", "portico") == hosts["portico"].addresses["int"]
    assert t.reachable_address(hosts, "portico", "portico") == hosts["portico"].addresses["pub"]
    chain = hosts_of(CHAIN)
    assert t.reachable_address(chain, "gate", "core-1") is None


def test_jump_hosts_example() -> None:
    hosts = hosts_of(EXAMPLE_TOPOLOGY)
    assert t.jump_host(hosts, "pub", "portico") is None
    assert [t.jump_host(hosts, "pub", f"www-{i}") for i in (1, 2, 3)] == ["portico"] * 3


def test_jump_hosts_chained_relays() -> None:
    hosts = hosts_of(CHAIN)
    assert t.hops(hosts, "pub") == {"gate": 0, "mid": 1, "deep": 2, "lan-1": 2, "core-1": 3}
    jumps = {name: t.jump_host(hosts, "pub", name) for name in hosts}
    assert jumps == {"gate": None, "mid": "gate", "deep": "mid", "lan-1": "mid", "core-1": "deep"}


def test_jump_host_picks_the_first_name_among_equals() -> None:
    hosts = hosts_of({"b": ["pub", "lan"], "a": ["pub", "lan"], "x": ["lan"]})
    assert t.jump_host(hosts, "pub", "x") == "a"


def test_unreachable_host() -> None:
    hosts = hosts_of({"gate": ["pub"], "island": ["far"]})
    with pytest.raises(LabError, match="island is unreachable from the deployer"):
        t.jump_host(hosts, "pub", "island")


def test_ssh_options() -> None:
    hosts = hosts_of(CHAIN)
    direct = t.ssh_options(hosts, "pub", "gate", user="root", client_key=KEY, known_hosts=KNOWN)
    assert direct == {"Hostname": hosts["gate"].addresses["pub"], "User": "root",
                      "IdentityFile": str(KEY), "IdentitiesOnly": "yes",
                      "UserKnownHostsFile": str(KNOWN), "StrictHostKeyChecking": "yes",
                      "BatchMode": "yes"}
    deep = t.ssh_options(hosts, "pub", "core-1", user="deploy", client_key=KEY, known_hosts=KNOWN)
    assert deep["ProxyJump"] == "deep"
    assert deep["User"] == "deploy"
    assert deep["Hostname"] == hosts["core-1"].addresses["core"]
    # the address on the segment shared with the jump host, not the host's first one
    mid = t.ssh_options(hosts, "pub", "mid", user="root", client_key=KEY, known_hosts=KNOWN)
    assert (mid["ProxyJump"], mid["Hostname"]) == ("gate", hosts["mid"].addresses["dmz"])


def test_ssh_config_text() -> None:
    hosts = hosts_of(EXAMPLE_TOPOLOGY)
    text = t.ssh_config(hosts, "pub", user="root", client_key=KEY, known_hosts=KNOWN)
    blocks = text.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"Host {n}" for n in EXAMPLE_TOPOLOGY]
    assert text.startswith(
        f"Host portico\n  Hostname {hosts['portico'].addresses['pub']}\n  User root\n"
        f"  IdentityFile {KEY}\n  IdentitiesOnly yes\n  UserKnownHostsFile {KNOWN}\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n\nHost www-1\n")
    assert blocks[1].endswith("  BatchMode yes\n  ProxyJump portico")
    assert f"  Hostname {hosts['www-1'].addresses['int']}\n" in blocks[1]


def test_known_hosts_and_host_files() -> None:
    hosts = hosts_of(EXAMPLE_TOPOLOGY)
    known = t.deployer_known_hosts(hosts).splitlines()
    assert len(known) == 5
    assert f"{hosts['portico'].addresses['int']} ssh-ed25519 KEY-portico" in known
    host_known, config = t.host_ssh_files(hosts, "www-1")
    assert len(host_known.splitlines()) == 4  # every host shares "int" with www-1
    assert f"Host portico\n  HostName {hosts['portico'].addresses['int']}\n" in config
    etc = t.etc_hosts(hosts, "www-1").splitlines()
    assert etc[:2] == ["127.0.0.1 localhost", "127.0.1.1 www-1"]
    assert f"{hosts['www-2'].address} www-2" in etc and not any(e.endswith(" www-1") for e in etc[2:])
