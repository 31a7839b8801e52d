"""`nix-hive diff` in the lab: a relay (portico) and two systems, web and db, deployed with
the package versions of set A, then the deployment moved to set B (tests/hives/diff). Each
host is asked once over real ssh through portico; the answers are checked against what Nix
itself says: `nix store diff-closures`, `nix path-info -S`, and `nix-store --check-validity`
run on the hosts. The hosts boot systemd from the lab's Debian trixie tree, so their Nix is
2.26 while the deployer's is this machine's (2.8 on Debian 12): diff.sh's queries and the
deployer's meet across versions.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from collections.abc import Callable
from typing import Any

from hive import text
from tests.conftest import REPO, STANDIN, needs_lab, on_terminal
from tests.fleet import Fleet, closure_bytes, closure_sizes, nix_env

pytestmark = needs_lab
Start = Callable[..., Fleet]
WEB = [f"web-{n}" for n in range(1, 6)]
DB = [f"db-{n}" for n in range(1, 4)]
TOPOLOGY = {"portico": ["pub", "int"], **{h: ["int"] for h in WEB + DB}}
NIX = ["nix", "--extra-experimental-features", "nix-command"]


def hive(fleet: Fleet, version_set: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`nix-hive ARGS` on the lab's deployment with the packages of `version_set`."""
    fleet.env["DIFF_SET"] = version_set
    return fleet.run(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")


def systems(fleet: Fleet, version_set: str) -> dict[str, str]:
    out = hive(fleet, version_set, "build", "-q")
    assert out.returncode == 0, out.stderr
    return {name: s["result"] for name, s in json.loads(out.stdout)["systems"].items()}



def diff_on_terminal(fleet: Fleet, version_set: str, *args: str, columns: int = 80) -> tuple[int, str]:
    """`nix-hive ARGS` (as `hive`) with its stdout on a terminal `columns` wide: its exit status
    and what the terminal received."""
    fleet.env["DIFF_SET"] = version_set
    env = {**nix_env(), **fleet.env, "PYTHONPATH": str(REPO)}
    return on_terminal(fleet.nix_hive_argv(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}"), env,
                       columns=columns)


def lacking(fleet: Fleet, host: str, closure: dict[str, int]) -> int:
    """The NAR sizes of the paths of `closure` that `host`'s store lacks, as its own Nix says."""
    out = fleet.lab.run(host, ["nix-store", "--check-validity", "--print-invalid", *sorted(closure)])
    return sum(closure[p] for p in out.stdout.split())


def diff_closures(old: str, new: str) -> dict[str, str]:
    """`nix store diff-closures OLD NEW` of this machine's Nix: package -> its versions' change
    (`3.0.13 → 3.0.15`; "" for a size change alone)."""
    out = subprocess.run([*NIX, "store", "diff-closures", old, new], capture_output=True, text=True,
                         env={**nix_env(), "NO_COLOR": "1"}, check=True)
    found = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", out.stdout).splitlines():
        name, _, rest = line.partition(": ")
        size = r"[+-]?[0-9.]+ [KMG]iB"  # Nix 2.34 prints a growth without its `+`
        found[name] = "" if re.fullmatch(size, rest) else re.sub(f", {size}$", "", rest)
    return found


def forget_locally(fleet: Fleet, path: str) -> None:
    """Take `path` out of the deployer's store: its GC roots under the state file's directory,
    then the path itself (the deployment's DIFF_TOKEN makes it this test's own)."""
    roots = fleet.hive / ".hive.state.d" / "gcroots"
    for link in roots.rglob("*"):
        if link.is_symlink() and os.readlink(link) == path:
            link.unlink()
    out = subprocess.run(["nix-store", "--delete", path], capture_output=True, text=True, env=nix_env())
    assert out.returncode == 0, out.stderr
    gone = subprocess.run(["nix-store", "--check-validity", path], capture_output=True, env=nix_env())
    assert gone.returncode != 0


def test_diff_groups_the_fleet_and_tells_packages_sizes_and_bytes_to_fetch(fleet_factory: Start) -> None:
    fleet = fleet_factory(topology=TOPOLOGY, source=STANDIN.parent / "hives" / "diff")  # systemd hosts
    fleet.env["DIFF_TOKEN"] = str(random.randrange(1, 10_000))
    first = hive(fleet, "A", "deploy", "portico", "web-[2-4]", "db-*")
    assert first.returncode == 0, first.stderr
    early = hive(fleet, "B", "deploy", "web-1")  # one host is on B already; web-5 runs nothing yet
    assert early.returncode == 0, early.stderr
    a, b = systems(fleet, "A"), systems(fleet, "B")
    assert a["edge"] == b["edge"] and a["web"] != b["web"] and a["db"] != b["db"]
    # the size of db's old closure, as the Nix of a host that holds it says
    db_bytes_a = int(fleet.lab.run("db-1", [*NIX, "path-info", "-S", a["db"]]).stdout.split()[-1])
    forget_locally(fleet, a["db"])  # the deployer no longer has db's old system: a db host is asked for it
    fleet.lab.run("web-4", ["ip", "link", "set", "eth0", "down"])
    bogus = "/nix/store/00000000000000000000000000000000-nixos-system-other"  # what no store holds
    fleet.lab.run("db-3", ["ln", "-sfn", bogus, "/run/current-system"])

    result = hive(fleet, "B", "diff", "--json", "--no-dry-run")  # the packages; dry runs: test_preview_lab
    assert result.returncode == 1, result.stderr  # web-4 could not be asked; the others' diff is there
    data = json.loads(result.stdout)
    groups = {(g["old"], g["new"]): g for g in data["groups"]}
    assert {k: (v["instances"], v["state"]) for k, v in groups.items()} == {
        (a["edge"], a["edge"]): (["portico"], "unchanged"),
        (a["web"], b["web"]): (["web-2", "web-3"], "changes"),
        (a["db"], b["db"]): (["db-1", "db-2"], "changes"),
        (bogus, b["db"]): (["db-3"], "changes"),
        (b["web"], b["web"]): (["web-1"], "unchanged"),
        (None, b["web"]): (["web-5"], "new"),
    }
    web, db, other = groups[(a["web"], b["web"])], groups[(a["db"], b["db"])], groups[(bogus, b["db"])]
    # a system no store holds: its group is not compared, and says why
    assert other["closure"] is None and other["packages"] == [] and other["oldFrom"] is None
    assert other["error"] == "cannot read the old system's closure: db-3: its store does not hold it"
    mine = {p["name"]: (p["kind"], p["before"], p["after"]) for p in web["packages"]}
    assert {n: mine[n] for n in ("openssl", "nginx", "curl", "zstd", "tzdata-unstable")} == {
        "openssl": ("upgraded", ["3.0.13"], ["3.0.15"]),
        "nginx": ("upgraded", ["1.24.0"], ["1.26.1"]),
        "curl": ("removed", ["8.5.0"], []),
        "zstd": ("added", [], ["1.5.6"]),
        "tzdata-unstable": ("upgraded", ["2024-01-01"], ["2024-03-01"]),  # as diff-closures names it
    }
    # the same lines as this machine's own diff-closures of the two systems
    assert diff_closures(a["web"], b["web"]) == {
        p["name"]: "" if p["kind"] == "size" else " → ".join(", ".join(v or "ε" for v in side) or "∅"
                                                             for side in (p["before"], p["after"]))
        for p in web["packages"]}
    dbs = {p["name"]: (p["kind"], p["before"], p["after"]) for p in db["packages"]}
    assert dbs["openssl"] == ("upgraded", ["3.0.13"], ["3.0.15"])
    assert dbs["python3"] == ("upgraded", ["3.11.7"], ["3.12.1"])  # a name with digits
    assert [p["sizeDelta"] for p in db["packages"] if p["name"] == "postgresql"] == [40_000]
    assert dbs["postgresql"] == ("size", [], [])  # the same version, 40,000 bytes more: listed
    assert "sqlite" not in dbs and "libfoo" not in mine  # the same path; 2,000 bytes more: not listed
    assert (web["oldFrom"], db["oldFrom"]) == ("deployer", "db-1")
    # sizes: the closures' own, as `nix path-info -S` gives them
    assert web["closure"]["sizeDelta"] == closure_bytes(b["web"]) - closure_bytes(a["web"])
    assert db["closure"]["sizeDelta"] == closure_bytes(b["db"]) - db_bytes_a
    assert web["closure"]["newBytes"] == closure_bytes(b["web"])
    # bytes to fetch: the NAR sizes of the new closure's paths each host lacks, as it says itself
    hosts: dict[str, dict[str, Any]] = {h["instance"]: h for h in data["hosts"]}
    new_web, new_db = closure_sizes(b["web"]), closure_sizes(b["db"])
    for name in ("web-1", "web-2", "web-3", "web-5", *DB):
        expected = lacking(fleet, name, new_db if name.startswith("db") else new_web)
        assert hosts[name]["fetchBytes"] == expected, (name, hosts[name], expected)
    # web-1 runs B, web-5 nothing: it lacks it all; web-2 runs A, whose packages B keeps (postgresql
    # for db) it has, but not the new versions
    assert hosts["web-1"]["fetchBytes"] == 0 and hosts["web-5"]["fetchBytes"] == sum(new_web.values())
    assert 0 < hosts["web-2"]["fetchBytes"] < sum(new_web.values())
    assert web["fetch"] == {"min": hosts["web-2"]["fetchBytes"], "max": hosts["web-2"]["fetchBytes"],
                            "instances": {"web-2": hosts["web-2"]["fetchBytes"], "web-3": hosts["web-3"]["fetchBytes"]}}
    assert hosts["web-4"]["state"] == "unreachable" and hosts["web-4"]["group"] is None
    reason = hosts["web-4"]["reason"]  # what ssh said, as portico's forwarding to web-4 failed
    told = ("it did not answer ssh within 10 s", "No route to host", "Connection closed by")
    assert any(t in reason for t in told) and reason.endswith("(through portico)"), reason
    assert hosts["web-5"]["state"] == "new" and hosts["web-5"]["current"] is None

    shown = hive(fleet, "B", "diff", "--no", "build", "--no-dry-run")  # piped: the tables whole
    assert shown.returncode == 1, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["hosts", "system", "packages", "closure", "fetch"]
    assert "web-2, web-3 (web), 2 hosts:" in lines and f"  {a['web']} → {b['web']}" in lines
    assert any(ln.startswith("db-1, db-2 ") for ln in lines)
    assert any(ln.split()[:4] == ["openssl", "upgraded", "3.0.13", "3.0.15"] for ln in lines)
    assert "not compared: 1 group(s)" in lines and "not reached: 1 host(s)" in lines
    assert any(ln.startswith("web-4 ") and "unreachable" in ln for ln in lines)

    # the same on an 80-column terminal
    code, screen = diff_on_terminal(fleet, "B", "diff", "--no", "build", "--no-dry-run")
    print(screen)
    lines = screen.splitlines()
    assert code == 1 and lines[0].split() == ["hosts", "system", "packages", "closure", "fetch"], screen
    assert max(text.columns(ln) for ln in lines) <= 79, screen
    assert "  nixos-system-web (" in screen and a["web"] not in screen  # store paths short
    assert any(ln.split()[:4] == ["openssl", "upgraded", "3.0.13", "3.0.15"] for ln in lines)


def test_hosts_behind_a_relay_left_out_of_the_selection_share_one_login_to_it(fleet_factory: Start) -> None:
    """`diff 'web-*'` asks no question of portico, yet every web host is reached through it:
    its shared connection is opened first (Remotes.each), and the hosts' hops ride on it,
    rather than each logging in to it on its own (bench-diff found 90 logins to 10 relays)."""
    fleet = fleet_factory(topology={"portico": ["pub", "int"], **{h: ["int"] for h in WEB}},
                          source=STANDIN.parent / "hives" / "diff", init="plain")

    def logins(host: str) -> int:
        me = fleet.lab.deployer_address
        return sum(ln.startswith("Accepted publickey") and f" from {me} " in ln
                   for ln in (fleet.lab.sshd_log(host) or "").splitlines())

    before = logins("portico")
    result = hive(fleet, "A", "diff", "--json", "--no-dry-run", "web-*")
    assert result.returncode == 0, result.stderr
    assert {h["instance"] for h in json.loads(result.stdout)["hosts"]} == set(WEB)
    assert logins("portico") - before == 1
