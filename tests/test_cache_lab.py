"""An HTTP binary cache as a relay store, on real hosts: nix-hive writes it through the cache
host's own Nix over ssh (`stores.<url>.upload`), the web hosts substitute from it over HTTP,
and a cache whose upload fails skips its instances with the reason."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from tests.conftest import REPO, needs_lab
from tests.fleet import Fleet, closure_bytes

pytestmark = needs_lab
TOPOLOGY = {"portico": ["pub", "int"], "cache": ["int"], "www-1": ["int"], "www-2": ["int"]}
SOURCE = REPO / "tests" / "hives" / "httpcache"
CACHE = "http://cache:8080"
Start = Callable[..., Fleet]


def start(fleet_factory: Start) -> Fleet:
    # a web closure well above what the run sends besides it (the other systems' closures, each
    # host's logins, copies and activation: about 2 MB for the 4 hosts with Nix 2.8, whose ssh
    # store sends some 290 KB per copy whatever its size), so that a second copy of it shows
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=5_000_000,
                          relays={"www-1": CACHE, "www-2": CACHE})
    fleet.lab.run("cache", ["sh", "-c", "mkdir -p /run/nix-cache && (setsid nohup python3 -m http.server 8080 "
                            "--directory /run/nix-cache > /run/cache-http.log 2>&1 < /dev/null &)"])
    return fleet


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert result.stdout, result.stderr
    return {row["instance"]: row for row in json.loads(result.stdout)["instances"]}


def test_web_hosts_substitute_from_an_http_cache_the_deployer_filled_once(fleet_factory: Start) -> None:
    fleet = start(fleet_factory)
    before = fleet.lab.tx_bytes()
    result = fleet.deploy("--json", "portico", "cache", "www-*")
    assert result.returncode == 0, result.stderr
    assert all(row["outcome"] == "ok" for row in rows(result).values())
    sent = fleet.lab.tx_bytes() - before
    print(f"\nHTTP cache relay: the deployer sent {sent:,} bytes for a 5 MB web closure and 2 web hosts")
    web = str(rows(result)["www-1"]["path"])
    closure = closure_bytes(web)
    # the web closure left the deployer once (to the cache), not once per host: a second copy
    # would double it (the rest, the other systems' small closures and the ssh sessions of 4
    # hosts, was 1.1-1.25 MB here once, about 2.1 MB on 2026-12-07, and varies with the machine)
    assert closure < sent < 2 * closure, (closure, sent)
    for host in ("www-1", "www-2"):
        assert fleet.lab.current_system(host) == web
    log = fleet.lab.read("cache", "/run/cache-http.log") or ""
    assert f"GET /{web.removeprefix('/nix/store/').split('-')[0]}.narinfo" in log  # asked over HTTP
    assert "GET /nar/" in log  # and fetched from there
    plan = fleet.run("plan", "--json", "-c", str(fleet.hive))
    relay = json.loads(plan.stdout)["relays"][0]
    assert relay["url"] == CACHE and relay["upload"] == "ssh://cache?remote-store=file:///run/nix-cache"


def test_a_cache_whose_upload_fails_skips_its_instances(fleet_factory: Start) -> None:
    fleet = start(fleet_factory)
    fleet.env["HTTPCACHE_UPLOAD"] = "ssh://nowhere.invalid?remote-store=file:///run/nix-cache"
    result = fleet.deploy("--json", "--keep-going", "portico", "cache", "www-*")
    assert result.returncode == 1
    r = rows(result)
    assert r["portico"]["outcome"] == "ok" and r["cache"]["outcome"] == "ok"
    for host in ("www-1", "www-2"):
        assert r[host]["outcome"] == "failed" and f"store of {CACHE} failed" in str(r[host]["reason"])
        assert fleet.lab.activations(host) == []
