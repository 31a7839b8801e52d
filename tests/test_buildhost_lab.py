"""Build hosts on real hosts: a system evaluated on the deployer is built on another host
(`buildHost`, `--build-host`), its closure stays there and goes host to host, so the payload
never crosses the deployer's link; `--no build` asks the build host; a build host that cannot
be reached fails its systems and skips their instances."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable

from tests.conftest import REPO, needs_lab
from tests.constants import nix_env
from tests.fleet import Fleet, closure_bytes

pytestmark = needs_lab
TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"], "www-2": ["int"]}
SOURCE = REPO / "tests" / "hives" / "buildhost"
PAYLOAD = 4_000_000
Start = Callable[..., Fleet]


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert result.stdout, result.stderr
    return {row["instance"]: row for row in json.loads(result.stdout)["instances"]}


def locally_valid(path: str) -> bool:
    return subprocess.run(["nix-store", "--check-validity", path], env=nix_env(), capture_output=True).returncode == 0


def test_a_build_host_builds_and_feeds_the_relay_while_the_deployer_sends_references(fleet_factory: Start) -> None:
    # a web system of this run's own (its payload's size): the deployer's store keeps what
    # earlier runs, or another test with the same configuration, built there
    payload = PAYLOAD + 2 * secrets.randbelow(50_000)
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=payload)

    # The relay builds the web system: nothing of its payload leaves the deployer.
    before = fleet.lab.tx_bytes()
    result = fleet.deploy("--json", "portico", "www-*")
    sent = fleet.lab.tx_bytes() - before
    assert result.returncode == 0, result.stderr
    r = rows(result)
    assert all(row["outcome"] == "ok" for row in r.values()), r
    web = str(r["www-1"]["path"])
    print(f"\nbuild host = relay: the deployer sent {sent:,} bytes for a {payload:,}-byte web closure")
    edge = closure_bytes(str(r["portico"]["path"]))  # built here and sent: the only closure that left
    assert sent < edge + PAYLOAD // 4, (sent, edge)
    assert not locally_valid(web)  # built there, never here
    assert locally_valid(str(r["portico"]["path"]))  # edge has no build host: built here
    for host in ("www-1", "www-2"):
        assert fleet.lab.current_system(host) == web
    roots = fleet.lab.run("portico", ["sh", "-c", "readlink /root/.local/state/nix-hive/gcroots/*/web"]).stdout
    assert roots.split() == [web]  # a GC root on the build host keeps it for the next --no build

    # --no build asks the build host, which still holds the result: nothing is built again.
    again = fleet.deploy("--no", "build,push", "portico", "www-*")
    assert again.returncode == 0, again.stderr
    assert "copying derivations" not in again.stderr
    assert [ln for ln in again.stderr.splitlines() if " build " in ln and "unchanged" in ln]

    # Another host builds (www-1, behind the relay): it copies to the relay itself, host to host.
    fleet.env.update(BUILD_HOST="www-1", STANDIN_PAYLOAD_BYTES=str(payload + 1))
    before = fleet.lab.tx_bytes()
    result = fleet.deploy("--json", "portico", "www-*")
    sent = fleet.lab.tx_bytes() - before
    assert result.returncode == 0, result.stderr
    r = rows(result)
    other = str(r["www-2"]["path"])
    assert other != web and not locally_valid(other)
    print(f"build host www-1: the deployer sent {sent:,} bytes")
    assert sent < PAYLOAD // 4  # portico's edge system is already there: only sessions and derivations
    assert "(from build host www-1)" in result.stderr  # the relay's copy went host to host
    for host in ("www-1", "www-2"):
        assert fleet.lab.current_system(host) == other


def test_a_build_host_that_cannot_be_reached_fails_its_systems_only(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=PAYLOAD)
    fleet.env["BUILD_HOST"] = "nowhere.invalid"
    result = fleet.deploy("--json", "--keep-going", "portico", "www-*")
    assert result.returncode == 1
    r = rows(result)
    # the relay's store copy needs the web system too, so the relay waits with its hosts
    assert r["portico"]["outcome"] == "failed" and "build of web failed" in str(r["portico"]["reason"])
    assert locally_valid(str(r["portico"]["path"]))  # its own system was built (here)
    for host in ("www-1", "www-2"):  # failed with their system's build (issue 26: one rule for every gate)
        assert r[host]["outcome"] == "failed"
        assert "build host nowhere.invalid" in str(r[host]["reason"]), r[host]
        assert fleet.lab.activations(host) == []
    # the command line's --build-host overrides the deployment's: every system on portico
    result = fleet.deploy("--json", "--build-host", "portico", "portico", "www-*")
    assert result.returncode == 0, result.stderr
    assert "building nixos-system-edge on portico" in result.stderr
