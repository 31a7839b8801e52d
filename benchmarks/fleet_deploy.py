"""Deploying to a fleet behind one relay: nix-hive against the naive way, in the lab.

    make bench-fleet     (or, from the repository root:
                          .venv/bin/python -m benchmarks.fleet_deploy [--sizes 1,10,30] [--mb 20])

Needs root (the lab). For each N, a fresh lab: one relay and N hosts behind it, reachable only
through the relay, one system whose closure is about MB megabytes. Measured in the same run:

- nix-hive: wall time of `nix-hive deploy relay '*'`, bytes the deployer sent (its link's TX
  counter), sshd authentications from the deployer, and the wall time of the same deploy
  repeated with `--no build,push,activate` when nothing changed;
- the naive way a user would script it, on a fresh lab of the same size: for each host in
  turn, `nix copy --to ssh://host` straight from the deployer (through the relay as a jump
  host), then `ssh host` to set the profile and switch.

- the floor: on a third fresh lab, the closure copied to the relay, then a bare
  `nix copy --substitute-on-destination` to every host at once (no activation): what the
  machine itself needs for the hosts to import the closure from the relay.

- safe rollouts: on two more fresh labs of `--safety-n` hosts, the same deployment with
  `--no-rollback` and no health check, and with the defaults (magic rollback: confirmation
  over a fresh login) plus a command check on every host.

Then the ratios. Nothing is asserted (timings are noisy); targets: deployer bytes for N=30
under closure + 30 x 64 KiB, wall(N=30)/wall(N=1) under 4, repeated no-change deploy of 30
under 3 s, naive/nix-hive wall time for N=30 above 3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from tests.constants import REPO, STANDIN, nix_env
from tests.fleet import Fleet

HIVE = REPO / "benchmarks" / "fleet"


def topology(n: int) -> dict[str, list[str]]:
    return {"relay": ["pub", "int"], **{f"n{k:02d}": ["int"] for k in range(1, n + 1)}}


def deployer_auths(fleet: Fleet) -> int:
    deployer = fleet.lab.deployer_address
    total = 0
    for name, host in fleet.lab.hosts.items():
        for line in (host.dir / "sshd.log").read_text().splitlines():
            if line.startswith("Accepted publickey") and (name != "relay" or f" from {deployer} " in line):
                total += 1
    return total


def start(workdir: Path, n: int, mb: float) -> Fleet:
    return Fleet.start(workdir, topology=topology(n), relay="relay", payload_bytes=int(mb * 1e6), source=HIVE)


def nix_hive(fleet: Fleet, n: int, mb: float) -> dict[str, float]:
    args = ("deploy", "-q", "--json", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "relay", "*")
    before, t0 = fleet.lab.tx_bytes(), time.perf_counter()
    first = fleet.run(*args)
    wall = time.perf_counter() - t0
    sent = fleet.lab.tx_bytes() - before
    if first.returncode != 0:
        raise SystemExit(f"nix-hive deploy failed (N={n}):\n{first.stderr}")
    auths = deployer_auths(fleet)
    path = json.loads(first.stdout)["instances"][0]["path"]
    t0 = time.perf_counter()
    again = fleet.run(*args[:1], "--no", "build,push,activate", *args[1:])
    repeat = time.perf_counter() - t0
    if again.returncode != 0:
        raise SystemExit(f"repeated deploy failed (N={n}):\n{again.stderr}")
    closure = int(subprocess.run(["nix", "path-info", "-S", path], capture_output=True, text=True, check=True,
                                 env=nix_env()).stdout.split()[-1])
    return {"wall": wall, "bytes": sent, "auths": auths, "repeat": repeat, "closure": closure}


def naive(fleet: Fleet, n: int, path: str) -> dict[str, float]:
    """For each host in turn: nix copy from the deployer, then ssh and switch."""
    env = {**nix_env(), "NIX_SSHOPTS": f"-F {fleet.lab.ssh_config_path}"}
    before, t0 = fleet.lab.tx_bytes(), time.perf_counter()
    for host in ["relay", *sorted(h for h in fleet.lab.hosts if h != "relay")]:
        subprocess.run(fleet.lab.deployer_argv(["nix", "copy", "--to", f"ssh://{host}", path]), env=env, check=True,
                       capture_output=True)
        subprocess.run(fleet.lab.ssh_argv(host, ["sh", "-c", f"nix-env -p /nix/var/nix/profiles/system --set {path}"
                                                 f" && {path}/bin/switch-to-configuration switch"]),
                       check=True, capture_output=True)
    return {"wall": time.perf_counter() - t0, "bytes": fleet.lab.tx_bytes() - before,
            "auths": deployer_auths(fleet)}


def floor(fleet: Fleet, path: str) -> float:
    """Bare `nix copy -s` to every host behind the relay at once, after the relay has it."""
    env = {**nix_env(), "NIX_SSHOPTS": f"-F {fleet.lab.ssh_config_path}"}
    subprocess.run(fleet.lab.deployer_argv(["nix", "copy", "--to", "ssh://relay", path]), env=env, check=True,
                   capture_output=True)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(fleet.lab.deployer_argv(["nix", "copy", "-s", "--to", f"ssh://{h}", path]), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for h in sorted(fleet.lab.hosts) if h != "relay"]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a bare nix copy -s failed")
    return time.perf_counter() - t0


def safety(workdir: Path, n: int, mb: float) -> tuple[float, float]:
    """Wall time of a deployment without safety steps, and with checks and confirmation."""
    walls = []
    for name, checks, extra in (("bare", "0", ["--no-rollback"]), ("safe", "1", [])):
        fleet = start(workdir / name, n, mb)
        try:
            fleet.env["BENCH_CHECKS"] = checks
            t0 = time.perf_counter()
            done = fleet.run("deploy", "-q", *extra, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "relay", "*")
            walls.append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise SystemExit(f"deploy failed ({name}):\n{done.stderr}")
        finally:
            fleet.down()
    return walls[0], walls[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,30")
    parser.add_argument("--mb", type=float, default=20.0, help="closure size in MB (default 20)")
    parser.add_argument("--safety-n", type=int, default=10, help="hosts for the safe-rollout cost (default 10)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hive-bench-") as tmp:
        for n in sizes:
            fleet = start(Path(tmp, f"hive{n}"), n, args.mb)
            try:
                mine = nix_hive(fleet, n, args.mb)
                path = fleet.lab.current_system("relay") or ""
            finally:
                fleet.down()
            fleet = start(Path(tmp, f"naive{n}"), n, args.mb)
            try:
                # the same system (same key, same path): build and sign it on this lab's hive
                built = fleet.run("build", "-q", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
                path = json.loads(built.stdout)["systems"]["node"]["result"]
                theirs = naive(fleet, n, path)
            finally:
                fleet.down()
            fleet = start(Path(tmp, f"floor{n}"), n, args.mb)
            try:
                built = fleet.run("build", "-q", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
                mine["floor"] = floor(fleet, json.loads(built.stdout)["systems"]["node"]["result"])
            finally:
                fleet.down()
            results[n] = {"nix-hive": mine, "naive": theirs}
            kib = 1024
            print(f"N={n:>3} (+relay): nix-hive {mine['wall']:6.2f} s, {mine['bytes'] / 1e6:7.2f} MB sent, "
                  f"{mine['auths']:3.0f} auths, repeat --no all {mine['repeat']:5.2f} s | "
                  f"naive {theirs['wall']:6.2f} s, {theirs['bytes'] / 1e6:7.2f} MB, {theirs['auths']:3.0f} auths | "
                  f"closure {mine['closure'] / 1e6:.2f} MB, beyond it "
                  f"{(mine['bytes'] - mine['closure']) / (n + 1) / kib:.1f} KiB per host | "
                  f"floor (bare nix copy -s to all at once) {mine['floor']:.2f} s", flush=True)
    first, last = sizes[0], sizes[-1]
    mine_last, naive_last = results[last]["nix-hive"], results[last]["naive"]
    print(f"\nwall(N={last}) / wall(N={first}), nix-hive: {mine_last['wall'] / results[first]['nix-hive']['wall']:.2f}")
    print(f"naive / nix-hive wall time, N={last}: {naive_last['wall'] / mine_last['wall']:.2f}")
    print(f"naive / nix-hive bytes sent, N={last}: {naive_last['bytes'] / mine_last['bytes']:.2f}")
    print(f"deployer bytes N={last}: {mine_last['bytes']:,.0f} vs closure + {last} x 64 KiB = "
          f"{mine_last['closure'] + last * 64 * 1024:,.0f}")
    print(f"repeated no-change deploy, N={last}: {mine_last['repeat']:.2f} s")
    print(f"floor(N={last}) / floor(N={first}): {mine_last['floor'] / results[first]['nix-hive']['floor']:.2f}; "
          f"nix-hive wall / floor, N={last}: {mine_last['wall'] / mine_last['floor']:.2f}")
    if args.safety_n > 0:
        with tempfile.TemporaryDirectory(prefix="hive-bench-") as tmp:
            bare, safe = safety(Path(tmp), args.safety_n, args.mb)
        print(f"safe rollouts, N={args.safety_n}: --no-rollback, no checks {bare:.2f} s; magic rollback + a check "
              f"per host {safe:.2f} s; ratio {safe / bare:.2f}")


if __name__ == "__main__":
    main()
