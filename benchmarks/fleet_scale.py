"""What a deployment costs as the fleet grows: hosts behind relays, then behind an HTTP cache.

    make bench-scale [ARGS="--sizes 30,300,1000 --relays 10 --mb 5"]     (or, from the repository
        root: .venv/bin/python -m benchmarks.fleet_scale [--sizes ...] [--relays R] [--mb MB]
        [--jobs J] [--push-jobs P] [--init plain|systemd] [--only relays,cache])

Needs root (the lab). For each N, a fresh lab: R relays on the deployer's segment, each with
N/R hosts behind it on a segment of its own (reachable only through their relay, which is
their jump host and, for `relays`, their relay store), one system whose closure is about MB
megabytes. `cache`: the same hosts substituting from one HTTP cache host on every segment
(benchmarks/fleet-scale with BENCH_CACHE=1: Python's http.server in the cache host's
namespace), filled by nix-hive through the cache host's Nix over ssh. The system is built
and signed before the clock starts. Measured, with the defaults (magic rollback and a command
check per host):

- wall time of `nix-hive deploy` of every host, and of the same deploy repeated with
  `--no build,push,activate`;
- the deployer's CPU seconds (nix-hive and every process it started: benchmarks/reaper.py)
  and its largest process's peak memory;
- bytes the deployer sent (its link's TX counter), ssh authentications from the deployer (the
  hosts' sshd logs), processes nix-hive started (`-v`);
- what a lab host costs in memory (PSS of its processes), so the lab's own limits are known.

Every figure is also given per host: one that grows with N is a step that grows faster than
linearly. Nothing is asserted (timings are noisy).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.fleet_deploy import build, measured, serve_cache
from tests.constants import REPO, STANDIN
from tests.fleet import Fleet
from tests.lab import boot, netns
from tests.lab.lab import Init

HIVE = REPO / "benchmarks" / "fleet-scale"
MEASUREMENTS = ("relays", "cache")


def topology(n: int, relays: int, cache: bool) -> dict[str, list[str]]:
    """Relays r1..rR on the deployer's segment and their own; hosts h0001.. behind them in
    blocks, as racks are named (h0001..h0100 behind r1, and so on): a relay's hosts come
    one after the other in the plan."""
    out: dict[str, list[str]] = {f"r{r}": ["pub", f"s{r}"] for r in range(1, relays + 1)}
    out |= {f"h{k:04d}": [f"s{(k - 1) * relays // n + 1}"] for k in range(1, n + 1)}
    if cache:
        out["cache"] = [f"s{r}" for r in range(1, relays + 1)]
    return out


def start(workdir: Path, n: int, relays: int, mb: float, *, cache: bool, init: Init, source: Path = HIVE) -> Fleet:
    """A lab of `topology` with the deployment `source` on it; each host's relay written into
    its entry of instances.json (`relay`)."""
    hosts = topology(n, relays, cache)
    behind = {h: ("http://cache:8080" if cache else f"r{int(segs[0][1:])}")
              for h, segs in hosts.items() if h.startswith("h")}
    fleet = Fleet.start(workdir, topology=hosts, relay="r1", payload_bytes=int(mb * 1e6), source=source,
                        relays=behind, init=init)
    fleet.env["BENCH_CACHE"] = "1" if cache else ""
    instances = json.loads((fleet.hive / "instances.json").read_text())
    for h, segs in hosts.items():
        if h.startswith("h"):
            instances[h]["relay"] = f"r{segs[0][1:]}"
    (fleet.hive / "instances.json").write_text(json.dumps(instances, indent=2) + "\n")
    return fleet


def host_memory(fleet: Fleet) -> float:
    """Mean PSS of a host's processes, MiB (every process in the host's namespaces)."""
    total = 0
    for host in fleet.lab.hosts.values():
        total += boot.pss(netns.pids([host.netns]))
    return total / len(fleet.lab.hosts) / 2**20


def auths(fleet: Fleet) -> int:
    """ssh authentications of the deployer: every one on a host behind a relay (only the
    deployer logs in there, through its relay), those from the deployer's address on a relay."""
    deployer = fleet.lab.deployer_address
    return sum(line.startswith("Accepted publickey") and (not name.startswith("r") or f" from {deployer} " in line)
               for name in fleet.lab.hosts for line in fleet.lab.sshd_log(name).splitlines())


def one(workdir: Path, n: int, relays: int, mb: float, jobs: int, push_jobs: int | None, *, cache: bool,
        init: Init) -> dict[str, float]:
    t0 = time.perf_counter()
    fleet = start(workdir, n, relays, mb, cache=cache, init=init)
    up = time.perf_counter() - t0
    try:
        if cache:
            serve_cache(fleet)
        build(fleet)
        common = ("-q", "--json", "-j", str(jobs), *(("--push-jobs", str(push_jobs)) if push_jobs else ()),
                  "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
        first = measured(fleet, "deploy", *common, partial=True)
        row = {**first, "auths": auths(fleet), "up": up, "memory": host_memory(fleet)}
        switched = sum(fleet.lab.current_system(h) is not None for h in fleet.lab.hosts if h.startswith("h"))
        again = measured(fleet, "deploy", "--no", "build,push,activate", *common, partial=True)
        row |= {"repeat": again["wall"], "repeat_cpu": again["cpu"], "switched": switched}
    finally:
        fleet.down()
    return row


def report(name: str, rows: dict[int, dict[str, float]], relays: int) -> None:
    print(f"\n{name}: {relays} relays; per host = divided by the hosts deployed (N + relays"
          f"{' + the cache host' if name == 'cache' else ''})")
    head = (f"  {'N':>4} {'switched':>8} {'wall s':>7} {'s/host':>7} {'CPU s':>7} {'CPU/host':>8} {'own CPU':>7} "
            f"{'peak MiB':>8} {'MB sent':>8} {'auths':>6} {'auth/host':>9} {'procs/host':>10} {'again s':>8} "
            f"{'again CPU/host':>14} {'lab up s':>8} {'host MiB':>8}")
    print(head)
    for n, r in rows.items():
        hosts = n + relays + (1 if name == "cache" else 0)
        print(f"  {n:>4} {r['switched']:>5.0f}/{n:<2} {r['wall']:7.1f} {r['wall'] / hosts:7.3f} {r['cpu']:7.1f} "
              f"{r['cpu'] / hosts:8.3f} {r['own']:7.1f} {r['rss']:8.0f} {r['bytes'] / 1e6:8.1f} {r['auths']:6.0f} "
              f"{r['auths'] / hosts:9.2f} {r['spawned'] / hosts:10.2f} {r['repeat']:8.1f} "
              f"{r['repeat_cpu'] / hosts:14.3f} {r['up']:8.1f} {r['memory']:8.1f}", flush=True)
    if len(rows) > 1:
        (a, ra), (b, rb) = min(rows.items()), max(rows.items())
        print(f"  N={b} against N={a} ({b / a:.1f} x the hosts): wall {rb['wall'] / ra['wall']:.2f} x, "
              f"CPU {rb['cpu'] / ra['cpu']:.2f} x, nix-hive's own CPU {rb['own'] / ra['own']:.2f} x, "
              f"processes {rb['spawned'] / ra['spawned']:.2f} x, peak memory {rb['rss'] / ra['rss']:.2f} x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="30,300,1000")
    parser.add_argument("--relays", type=int, default=10)
    parser.add_argument("--mb", type=float, default=5.0, help="closure size in MB (default 5)")
    parser.add_argument("--jobs", type=int, default=10, help="nix-hive's -j (default 10)")
    parser.add_argument("--push-jobs", type=int, help="nix-hive's --push-jobs (default: its own default)")
    parser.add_argument("--init", default="plain", choices=("plain", "systemd"),
                        help="lab hosts (default plain: systemd hosts take 4 inotify instances each, of "
                             "fs.inotify.max_user_instances)")
    parser.add_argument("--only", default=",".join(MEASUREMENTS))
    args = parser.parse_args()
    only = args.only.split(",")
    if unknown := set(only) - set(MEASUREMENTS):
        parser.error(f"unknown measurement(s) {','.join(sorted(unknown))}: choose from {','.join(MEASUREMENTS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    for name in only:
        rows: dict[int, dict[str, float]] = {}
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="hive-scale-") as tmp:
                rows[n] = one(Path(tmp), n, args.relays, args.mb, args.jobs, args.push_jobs, cache=name == "cache",
                              init=args.init)
            print(f"  ({name} N={n}: {json.dumps(rows[n])})", flush=True)  # each size as it is measured
        report(name, rows, args.relays)


if __name__ == "__main__":
    main()
