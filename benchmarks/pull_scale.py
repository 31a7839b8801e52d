"""Pull mode against push mode at fleet scale (issue 32): what the deployer spends to move N
hosts to a new system with `nix-hive publish` (the hosts' agents fetch it from a cache) and
with `nix-hive deploy` (ssh to every host), and how long until the last host has reported.

    make bench-pull [ARGS="--sizes 100,200 --mb 2"]     (or, from the repository root:
        .venv/bin/python -m benchmarks.pull_scale [--sizes 100] [--mb MB] [--poll S])

Needs root (the lab). For each N, a fresh lab of plain hosts (sshd alone: hundreds of systemd
hosts pass the machine's inotify limits) h0001.. on the deployer's segment, and a cache host
there running nginx (tests/pullcache.py: WebDAV PUT, as tests/test_publish_lab.py). No host
has a systemd timer, so each runs the agent (hive/host/agent.sh, the repository's) in a loop
in its namespaces, as nix/agent.nix's timer would: a poll, then 5 s plus up to 2 s (jitter),
again, its state in the host's own /run (a plain host shares the machine's /var/lib). At most
239 hosts: the lab's 240 a segment, with the cache host. One system shared by every host
(benchmarks/pull-scale), a command check on it, and for each step a version of its own with a
payload of its own (about MB megabytes), so that no step finds the previous one's closure on
the hosts. Not measured: the lab's start, the first version published (the hosts' first
system, through their agents), the two measured versions built and signed. Then, on the same lab:

(a) `nix-hive publish --to http://CACHE 'h*'` of version 2 (one wave; it waits until every
    host has reported, reading their status documents every --poll seconds): wall time, which
    is the time until the last host reported, within the poll; the deployer's CPU seconds
    (nix-hive and every process it started: benchmarks/reaper.py); bytes the deployer sent
    (its link's TX counter). The agents are then stopped (their loops end after a poll).
(b) `nix-hive deploy 'h*'` of version 3 over ssh to the same hosts (the defaults: -j 10,
    magic rollback, the check over ssh): the same figures.

Then each figure per host, and deploy's against publish's. Nothing is asserted (timings are
noisy); the hosts that did not end on the version are counted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from benchmarks.fleet_deploy import measured_output
from tests.constants import REPO, STANDIN
from tests.fleet import Fleet, closure_bytes
from tests.lab.topology import MAX_HOSTS
from tests.pullcache import Nginx

HIVE = REPO / "benchmarks" / "pull-scale"
PORT = 8080
CACHE = f"http://cache:{PORT}"  # as the hosts reach it
AGENT = REPO / "hive" / "host" / "agent.sh"
# one host's agent, as nix/agent.nix's timer runs it (interval 5 s, jitter 2 s), until STOP exists
LOOP = """\
#!/bin/sh
while [ ! -e "$BENCH_STOP" ]; do
  sh "$BENCH_AGENT" >> /run/nix-hive-agent.log 2>&1
  sleep $((5 + $(od -An -N1 -tu1 /dev/urandom) % 3))
done
"""


@dataclass(frozen=True)
class Pull:
    fleet: Fleet
    nginx: Nginx
    url: str  # the cache as the deployer reaches it
    stop: Path  # its existence ends the agents' loops
    hosts: tuple[str, ...]


def topology(n: int) -> dict[str, list[str]]:
    return {"cache": ["pub"], **{f"h{k:04d}": ["pub"] for k in range(1, n + 1)}}


def common(pull: Pull) -> tuple[str, ...]:
    return ("--json", "-c", str(pull.fleet.hive), "-I", f"nixpkgs={STANDIN}")


def version(pull: Pull, variant: str, mb: float, step: int) -> None:
    """The system's version for the next step: a name and a payload of its own."""
    pull.fleet.env |= {"BENCH_PULL_VARIANT": variant, "BENCH_PULL_BYTES": str(int(mb * 1e6) + step)}


def setup_run(pull: Pull, *args: str) -> str:
    """`nix-hive ARGS` (not measured); its standard output. A failure stops the benchmark."""
    done = pull.fleet.run(*args, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"nix-hive {' '.join(args[:1])} failed:\n{done.stderr[-3000:]}{done.stdout[-2000:]}")
    return done.stdout


def start_agents(pull: Pull, public: str) -> None:
    loop = pull.stop.parent / "agent-loop.sh"
    loop.write_text(LOOP)
    for h in pull.hosts:
        env = [f"BENCH_STOP={pull.stop}", f"BENCH_AGENT={AGENT}", f"NIX_HIVE_CACHE={CACHE}",
               f"NIX_HIVE_PUBLIC_KEY={public}", f"NIX_HIVE_INSTANCE={h}", "NIX_HIVE_CONFIRM=60",
               "NIX_HIVE_TIMEOUT=600", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
               # a plain host shares the machine's /var/lib: its own /run holds its agent's state
               "NIX_HIVE_STATE=/run/nix-hive-agent"]
        pull.fleet.lab.run(h, ["sh", "-c", f"env {' '.join(env)} setsid sh {loop} > /dev/null 2>&1 < /dev/null &"])


def start(workdir: Path, n: int, mb: float) -> tuple[Pull, str]:
    hosts = topology(n)
    fleet = Fleet.start(workdir, topology=hosts, relay="cache", payload_bytes=int(mb * 1e6), source=HIVE,
                        relays={h: CACHE for h in hosts if h != "cache"}, init="plain")
    try:
        nginx = Nginx(fleet.lab, "cache", workdir / "cache", workdir / "nginx", PORT)
        nginx.start()
        pull = Pull(fleet, nginx, f"http://{fleet.lab.hosts['cache'].addresses['pub']}:{PORT}",
                    workdir / "stop-agents", tuple(h for h in hosts if h != "cache"))
        public = (fleet.hive / "secrets" / "hive.pub").read_text().strip()
        start_agents(pull, public)
    except BaseException:
        fleet.down()
        raise
    return pull, public


def outcomes(stdout: str) -> dict[str, int]:
    return dict(collections.Counter(str(row.get("outcome")) for row in json.loads(stdout)["instances"]))


def one(workdir: Path, n: int, mb: float, poll: float) -> dict[str, dict[str, float]]:
    t0 = time.perf_counter()
    pull, _ = start(workdir, n, mb)
    up = time.perf_counter() - t0
    try:
        fleet = pull.fleet
        # the hosts' first system, through their agents (not measured)
        version(pull, "v1", mb, 1)
        t0 = time.perf_counter()
        first = setup_run(pull, "publish", *common(pull), "--poll", "1", "--wait-timeout", "900", "--to", pull.url,
                          "h*")
        installed = time.perf_counter() - t0
        print(f"  (N={n}: lab up in {up:.0f} s; first system published and installed by the agents in "
              f"{installed:.0f} s: {outcomes(first)})", flush=True)
        for variant, step in (("v2", 2), ("v3", 3)):
            version(pull, variant, mb, step)
            setup_run(pull, "build", "-q", *common(pull)[1:])
        # (a) publish
        version(pull, "v2", mb, 2)
        a, out = measured_output(fleet, "publish", *common(pull), "--poll", str(poll), "--wait-timeout", "900",
                                 "--to", pull.url, "h*", partial=True)
        a["done"] = outcomes(out).get("ok", 0)
        print(f"  (publish N={n}: {json.dumps(a)}, outcomes {outcomes(out)})", flush=True)
        pull.stop.touch()
        time.sleep(10)  # the loops' last polls end (a heartbeat takes well under a second)
        # (b) deploy
        version(pull, "v3", mb, 3)
        b, out = measured_output(fleet, "deploy", "-q", *common(pull), "h*", partial=True)
        rows = json.loads(out)["instances"]
        b["done"] = outcomes(out).get("ok", 0)
        print(f"  (deploy N={n}: {json.dumps(b)}, outcomes {outcomes(out)})", flush=True)
        closure = float(closure_bytes(str(rows[0]["path"])))
    finally:
        pull.nginx.stop()
        fleet.down()
    return {"publish": a, "deploy": b, "lab": {"closure": closure, "up": up, "installed": installed}}


def report(n: int, r: dict[str, dict[str, float]], poll: float) -> None:
    a, b, closure = r["publish"], r["deploy"], r["lab"]["closure"]
    print(f"\nN={n} hosts on the deployer's segment, closure {closure / 1e6:.2f} MB; publish reads the reports "
          f"every {poll:g} s; deploy: -j 10, magic rollback, a check per host "
          f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    table = []
    for name, m in (("publish", a), ("deploy", b)):
        table.append([name, f"{m['done']:.0f}/{n}", f"{m['wall']:.1f}", f"{m['cpu']:.1f}",
                      f"{m['own']:.1f}", f"{m['cpu'] / n:.3f}", f"{m['bytes'] / 1e6:.1f}",
                      f"{m['bytes'] / n / 1024:.1f}", f"{m['spawned']:.0f}", f"{m['rss']:.0f}"])
    table.append(["deploy/publish", "", f"{b['wall'] / a['wall']:.2f}", f"{b['cpu'] / a['cpu']:.2f}",
                  f"{b['own'] / a['own']:.2f}", "", f"{b['bytes'] / a['bytes']:.1f}", "",
                  f"{b['spawned'] / max(a['spawned'], 1):.1f}", ""])
    print(tabulate(table, headers=["", "ok", "wall s (last report)", "CPU s", "own CPU s", "CPU s/host",
                                   "MB sent", "KiB sent/host", "processes", "peak MiB"],
                   disable_numparse=True), flush=True)
    print(f"publish's bytes beyond one closure: {(a['bytes'] - closure) / n / 1024:.1f} KiB per host; "
          f"deploy's: {(b['bytes'] - n * closure) / n / 1024:.1f} KiB per host beyond a closure each", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100", help="comma-separated host counts (default 100)")
    parser.add_argument("--mb", type=float, default=2.0, help="closure size in MB (default 2)")
    parser.add_argument("--poll", type=float, default=1.0,
                        help="publish's --poll: seconds between two reads of the reports (default 1)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if too_many := [s for s in sizes if not 1 <= s < MAX_HOSTS]:
        parser.error(f"sizes {too_many}: 1 to {MAX_HOSTS - 1} hosts (the lab's limit on one segment, with the "
                     "cache host)")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="hive-pull-") as tmp:
            report(n, one(Path(tmp), n, args.mb, args.poll), args.poll)


if __name__ == "__main__":
    main()
