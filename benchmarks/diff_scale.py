"""What `nix-hive diff` costs as the fleet grows (issue 31): the diff of 300 hosts of 3 systems
should cost about the diff of 3 hosts plus one ssh call per host.

    make bench-diff [ARGS="--sizes 3,300 --relays 10 --rounds 3"]     (or, from the repository root:
        .venv/bin/python -m benchmarks.diff_scale [--sizes 3,300] [--relays R] [--ssh-jobs W] [--rounds K])

Needs root (the lab). For each N, a fresh lab of plain hosts (sshd alone): min(R, N) relays on
the deployer's segment, N hosts h0001.. behind them in blocks (their jump host and relay
store, as benchmarks/fleet_scale.py builds them), running three systems in turn (h0001 web,
h0002 db, h0003 cache, h0004 web, ...: N = 3 is one host per system). Each system has a few
packages and units (benchmarks/diff-scale). Not measured: the deployment with version set A
deployed to every host (`--no-rollback`), then moved to version set B and built (so the
deployer's store holds both A and B: each old closure is read here). Measured K times in turn
on the same lab (default 3; the medians are compared), each under benchmarks/reaper.py:

- `nix-hive diff --json 'h*'` with the default -j (it asks hosts max(-j, 32) at a time): wall
  time, the deployer's CPU seconds (nix-hive and every process it started) and nix-hive's own,
  the ssh authentications it made (the hosts' sshd logs, as benchmarks/fleet_scale.py counts
  them: on the hosts, and on the relays they are reached through), the processes it started,
  its groups;
- one ssh call per host, two ways, each W at once (W = 32 by default, the width at which `diff`
  asks its hosts): as nix-hive makes it, `nix-hive run -j W 'h*' -- true` (`status` is no
  such reference: it makes two calls per host, its question and whether a reboot is needed);
  and bare, `ssh -F <the lab's ssh_config> HOST true` (a login of its own, through the host's
  relay; its CPU is that of the ssh processes, reaped by this one).

The issue's claim as a model, for each N against the smallest size N0: cost(N) against cost(N0)
+ (N - N0) x one ssh call, where one ssh call is the marginal cost per host of a reference,
(ref(N) - ref(N0)) / (N - N0), for wall time and for CPU alike: what a host adds to a command
that asks each host one thing, its fixed costs (Python's start, the hive's evaluation) left
out, as cost(N0) has them already. ref(N) / N (those fixed costs shared out over the hosts)
is printed beside it. Each round is printed as JSON as it is measured, then each size's
medians. Nothing is asserted (timings are noisy); a diff that does not find every host
changed, in one group per system, stops the benchmark.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.fleet_deploy import logins, measured_output
from benchmarks.fleet_scale import auths, start
from tests.constants import REPO, STANDIN
from tests.fleet import Fleet

HIVE = REPO / "benchmarks" / "diff-scale"
SYSTEMS = ("web", "db", "cache")
SSH_JOBS = 32  # hive/changes.py asks hosts max(-j, 32) at a time


def lab(workdir: Path, n: int, relays: int) -> Fleet:
    """A fresh lab of N hosts behind min(relays, N) relays, each host's system in its entry of
    instances.json."""
    fleet = start(workdir, n, min(relays, n), 0.05, cache=False, init="plain", source=HIVE)
    entries = json.loads((fleet.hive / "instances.json").read_text())
    hosts = sorted(h for h in entries if h.startswith("h"))
    for k, h in enumerate(hosts):
        entries[h]["system"] = SYSTEMS[k % len(SYSTEMS)]
    (fleet.hive / "instances.json").write_text(json.dumps(entries, indent=2) + "\n")
    return fleet


def hive(fleet: Fleet, version_set: str, *args: str) -> None:
    """`nix-hive ARGS` on the deployment with the packages and units of `version_set`
    (setup, not measured); a failure stops the benchmark."""
    fleet.env["BENCH_DIFF_SET"] = version_set
    done = fleet.run(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"nix-hive {' '.join(args)} (set {version_set}) failed:\n{done.stderr[-3000:]}")


def checked(n: int, stdout: str) -> dict[str, float]:
    """What the diff found: its groups and changed hosts; every host must be in a group of
    its system that changes."""
    data: dict[str, Any] = json.loads(stdout)
    groups, hosts = data["groups"], data["hosts"]
    changed = sum(h["state"] == "changes" for h in hosts)
    if len(hosts) != n or changed != n or len(groups) != min(n, len(SYSTEMS)) or \
            any(g["state"] != "changes" or not g["packages"] for g in groups):
        raise SystemExit(f"the diff of {n} hosts is not what the benchmark set up: {len(groups)} group(s), "
                         f"{changed}/{len(hosts)} host(s) changed:\n{stdout[:3000]}")
    return {"groups": len(groups), "changed": changed, "packages": sum(len(g["packages"]) for g in groups)}


def auth_counts(fleet: Fleet) -> tuple[int, int]:
    """The deployer's ssh authentications so far (as benchmarks/fleet_scale.py counts them):
    on the hosts behind the relays, and on the relays."""
    total = auths(fleet)
    hosts = sum(fleet.lab.auth_count(h) for h in fleet.lab.hosts if h.startswith("h"))
    return hosts, total - hosts


def timed(fleet: Fleet, *args: str) -> tuple[dict[str, float], str]:
    """`measured_output` of `nix-hive ARGS`, with the authentications it made."""
    hosts, relays = auth_counts(fleet)
    cost, stdout = measured_output(fleet, *args)
    after = auth_counts(fleet)
    return {**cost, "auths": after[0] + after[1] - hosts - relays, "relay_auths": after[1] - relays}, stdout


def bare(fleet: Fleet, width: int) -> dict[str, float]:
    """One bare ssh call per host (`ssh -F <the lab's ssh_config> HOST true`: a login of its
    own, through the host's relay), `width` at once: wall time, the CPU seconds of those ssh
    processes and their jump processes (this process's reaped children), authentications."""
    hosts, relays = auth_counts(fleet)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = logins(fleet, sorted(h for h in fleet.lab.hosts if h.startswith("h")), width)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = auth_counts(fleet)
    return {"wall": wall, "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "auths": now[0] + now[1] - hosts - relays, "relay_auths": now[1] - relays}


def one(workdir: Path, n: int, relays: int, ssh_jobs: int, rounds: int) -> dict[str, float]:
    """A fresh lab of N hosts: set A deployed, set B built, then `rounds` times the diff and
    the two references for one ssh call per host, in turn; the medians."""
    t0 = time.perf_counter()
    fleet = lab(workdir, n, relays)
    up = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        hive(fleet, "A", "deploy", "-q", "--no-rollback")
        hive(fleet, "B", "build", "-q")
        setup = time.perf_counter() - t0
        common = ("-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
        found: dict[str, list[dict[str, float]]] = {"diff": [], "run": [], "bare": []}
        for k in range(1, rounds + 1):
            diff, stdout = timed(fleet, "diff", "-q", "--json", *common, "h*")
            found["diff"].append(diff | checked(n, stdout))
            found["run"].append(timed(fleet, "run", "-q", "-j", str(ssh_jobs), *common, "h*", "--", "true")[0])
            found["bare"].append(bare(fleet, ssh_jobs))
            print(f"  (N={n} round {k}: " + ", ".join(f"{name} {json.dumps(m[-1])}" for name, m in found.items())
                  + ")", flush=True)
    finally:
        fleet.down()
    row = {"relays": float(min(relays, n)), "rounds": float(rounds), "up": up, "setup": setup}
    for name, measures in found.items():
        prefix = "" if name == "diff" else f"{name}_"
        row |= {f"{prefix}{key}": statistics.median(m[key] for m in measures) for key in measures[0]}
    return row


REFERENCES = {"run": "nix-hive run -j {w} 'h*' -- true", "bare": "bare ssh HOST true, {w} at once"}


def report(rows: dict[int, dict[str, float]], ssh_jobs: int) -> None:
    rounds = max(r["rounds"] for r in rows.values())
    print(f"\n`nix-hive diff --json 'h*'` (default -j); one ssh call per host: `nix-hive run -j {ssh_jobs} 'h*' "
          f"-- true` (run), and a bare `ssh HOST true` per host, {ssh_jobs} at once (bare); {rounds:.0f} time(s) "
          f"each in turn, medians. CPU: the deployer's (nix-hive and every process it started); auths: ssh "
          f"authentications on the hosts and, in brackets, on their relays")
    print(f"  {'N':>4} {'relays':>6} {'groups':>6} {'changed':>7} {'wall s':>7} {'CPU s':>7} {'own s':>6} "
          f"{'auths (relays)':>14} {'auth/host':>9} {'procs/host':>10} | {'run wall':>8} {'CPU':>6} "
          f"{'auths (relays)':>14} | {'bare wall':>9} {'CPU':>6} {'auths (relays)':>14} | {'lab up s':>8} "
          f"{'setup s':>7}")
    for n, r in rows.items():
        print(f"  {n:>4} {r['relays']:>6.0f} {r['groups']:>6.0f} {r['changed']:>7.0f} {r['wall']:7.2f} "
              f"{r['cpu']:7.2f} {r['own']:6.2f} {r['auths']:6.0f} ({r['relay_auths']:5.0f}) {r['auths'] / n:9.2f} "
              f"{r['spawned'] / n:10.2f} | {r['run_wall']:8.2f} {r['run_cpu']:6.2f} {r['run_auths']:6.0f} "
              f"({r['run_relay_auths']:5.0f}) | {r['bare_wall']:9.2f} {r['bare_cpu']:6.2f} {r['bare_auths']:6.0f} "
              f"({r['bare_relay_auths']:5.0f}) | {r['up']:8.1f} {r['setup']:7.1f}", flush=True)
    if len(rows) < 2:
        return
    n0, r0 = min(rows.items())
    for n, r in sorted(rows.items()):
        if n == n0:
            continue
        print(f"\n  N={n} against N={n0} ({n / n0:.0f} x the hosts): wall {r['wall'] / r0['wall']:.2f} x, "
              f"CPU {r['cpu'] / r0['cpu']:.2f} x, nix-hive's own CPU {r['own'] / r0['own']:.2f} x")
        print(f"  the model: diff(N={n}) against diff(N={n0}) + {n - n0} x one ssh call, one call = (ref(N={n}) - "
              f"ref(N={n0})) / {n - n0} (in brackets ref(N={n}) / {n})")
        for ref, shown in REFERENCES.items():
            for what, key in (("wall", "wall"), ("CPU", "cpu")):
                mine, base = r[f"{ref}_{key}"], r0[f"{ref}_{key}"]
                call = (mine - base) / (n - n0)
                model = r0[key] + (n - n0) * call
                print(f"  {shown.format(w=ssh_jobs):<34} {what:>4}: one call {call * 1000:6.1f} ms "
                      f"({mine / n * 1000:6.1f} ms); model {r0[key]:.2f} + {(n - n0) * call:.2f} = {model:.2f} s; "
                      f"diff {r[key]:.2f} s = {r[key] / model:.2f} x the model", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="3,300", help="hosts per lab, comma-separated (default 3,300)")
    parser.add_argument("--relays", type=int, default=10, help="relays, at most one per host (default 10)")
    parser.add_argument("--ssh-jobs", type=int, default=SSH_JOBS,
                        help=f"-j of the `nix-hive run` that stands for one ssh call per host (default {SSH_JOBS})")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the diff and the ssh calls measured that many times in turn on each lab (default 3)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict[int, dict[str, float]] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="hive-diff-") as tmp:
            rows[n] = one(Path(tmp), n, args.relays, args.ssh_jobs, args.rounds)
        print(f"  (N={n}: {json.dumps(rows[n])})", flush=True)  # each size as it is measured
    report(rows, args.ssh_jobs)


if __name__ == "__main__":
    main()
