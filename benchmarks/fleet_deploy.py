"""Deploying to a fleet behind one relay: nix-hive against the naive way, in the lab.

    make bench-fleet [ARGS="--only far,remote-build,cache"]     (or, from the repository root:
        .venv/bin/python -m benchmarks.fleet_deploy [--only MEASUREMENTS] [--sizes 1,10,30] [--mb 20])

MEASUREMENTS (default: all): targets, scale, safety, far, remote-build, cache.

targets (`--targets-n`, `--jobs`, `--baseline REV`): on a fresh lab, `nix-hive deploy` with the
defaults (magic rollback) and a command check per host, against the floor measured on another
fresh lab in the same run (the closure copied to the relay, a bare `nix copy -s` to every host at
once, one ssh login per host at -j 10); the same lab's no-change redeploy (`--no
build,push,activate`) against N + 1 bare ssh logins at -j 10; the deployer's CPU seconds
(nix-hive and every process it started, benchmarks/reaper.py), processes and authentications
per host. With `--baseline REV`, the same deploy by that git revision's nix-hive (a worktree) on
a lab of its own, and the ratios.

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

- far deployer: the deployer's uplink shaped to `--far-rate` (tc tbf inside its namespace),
  one relay and `--far-n` hosts: nix-hive against the naive way, each on a fresh lab, the
  system built before the clock starts in both;
- remote build: uplink shaped to `--build-rate`, one relay and `--build-n` hosts, `nix-hive
  deploy --build-host relay` against the same deploy built here (a payload size of its own per
  lab, so that no build is cached in the deployer's store): wall time, bytes sent as a share of
  the closure;
- cache relay: `--cache-n` hosts substituting over ssh from the relay, against (fresh labs)
  substituting over HTTP from a cache host (`python3 -m http.server`; the relay stays their
  jump host), which nix-hive fills through the cache host's Nix over ssh
  (benchmarks/fleet-httpcache), once with the hive's default upload URL (a file:// store:
  xz-compressed NARs) and once with `compression=none`: wall time, and CPU time of the relay
  and the cache host (every process in the host's network namespace, with the children it
  has reaped: a finished ssh session counts in its sshd, a nix-daemon worker in the daemon).

Then the ratios. Nothing is asserted (timings are noisy); targets: deployer bytes for N=30
under closure + 30 x 64 KiB, wall(N=30)/wall(N=1) under 4, repeated no-change deploy of 30
under 3 s, naive/nix-hive wall time for N=30 above 3; with a remote build, deployer bytes
under 1% of the closure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import as_installed
from tests.constants import REPO, STANDIN, nix_env
from tests.fleet import Fleet

HIVE = REPO / "benchmarks" / "fleet"
CACHE_HIVE = REPO / "benchmarks" / "fleet-httpcache"
CACHE = "http://cache:8080"
# How nix-hive fills the cache: the hive's default upload URL (a file:// store compresses with
# xz), and the same without compression.
CACHE_UPLOADS = {"http cache, xz": "",
                 "http cache, raw": "ssh://cache?remote-store=file:///run/nix-cache%3Fcompression%3Dnone"}
MEASUREMENTS = ("targets", "scale", "safety", "far", "remote-build", "cache")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def topology(n: int) -> dict[str, list[str]]:
    return {"relay": ["pub", "int"], **{f"n{k:02d}": ["int"] for k in range(1, n + 1)}}


def deployer_auths(fleet: Fleet) -> int:
    deployer = fleet.lab.deployer_address
    total = 0
    for name in fleet.lab.hosts:
        for line in fleet.lab.sshd_log(name).splitlines():
            if line.startswith("Accepted publickey") and (name != "relay" or f" from {deployer} " in line):
                total += 1
    return total


def start(workdir: Path, n: int, mb: float) -> Fleet:
    # plain hosts (sshd alone): 31 systemd hosts pass the machine's inotify instances limit
    return Fleet.start(workdir, topology=topology(n), relay="relay", payload_bytes=int(mb * 1e6), source=HIVE,
                       init="plain")


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


def floor(fleet: Fleet, path: str) -> float:  # the copies alone (scale)
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


def measured(fleet: Fleet, *args: str, timeout: float = 1800, code: Path = REPO,
             partial: bool = False) -> dict[str, float]:
    """`nix-hive -v ARGS` (the one in `code`: a checkout) under benchmarks/reaper.py: wall time,
    the deployer's CPU seconds (nix-hive and every process it started), its largest process's
    peak memory, bytes sent, and the processes it started (the commands `-v` prints).
    `partial`: a run that failed some hosts (exit 1) is measured all the same, and what failed
    is printed (a scale run's figures say how far it got)."""
    return measured_output(fleet, *args, timeout=timeout, code=code, partial=partial)[0]


def measured_output(fleet: Fleet, *args: str, timeout: float = 1800, code: Path = REPO,
                    partial: bool = False) -> tuple[dict[str, float], str]:
    """`measured`, and what the command printed on its standard output."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = fleet.lab.deployer_argv([sys.executable, str(REPO / "benchmarks" / "reaper.py"), out.name,
                                        sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())",
                                        args[0], "-v", *args[1:]])
        env = {**nix_env(), **as_installed(code), **fleet.env, "PYTHONPATH": str(code)}
        before, t0 = fleet.lab.tx_bytes(), time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=code)
        wall, sent = time.perf_counter() - t0, fleet.lab.tx_bytes() - before
        cost = json.loads(Path(out.name).read_text())
    if done.returncode == 1 and partial:
        print(f"  nix-hive {args[0]} failed some hosts (exit 1), measured all the same:\n{failures(done.stdout)}",
              flush=True)
    elif done.returncode != 0:
        (fleet.hive.parent / "nix-hive-failed.log").write_text(done.stderr)
        raise SystemExit(f"nix-hive {' '.join(args)} failed (exit {done.returncode}):\n{failures(done.stdout)}"
                         f"{done.stderr[-2000:]}")
    (fleet.hive.parent / "nix-hive-v.log").write_text(done.stderr)  # what it ran, for a look afterwards
    spawned = sum(line.startswith("$ ") for line in done.stderr.splitlines())
    return {"wall": wall, "bytes": sent, "cpu": cost["cpu"], "own": cost["own"], "rss": cost["maxrss_mib"],
            "spawned": spawned}, done.stdout


def failures(stdout: str) -> str:
    """The instances a `--json` deploy did not deploy, a line each with why (the first 20)."""
    try:
        rows = [r for r in json.loads(stdout)["instances"] if r.get("outcome") not in ("ok", "switched")]
    except (ValueError, KeyError, TypeError):
        return ""
    lines = [f"  {r.get('instance')}: {r.get('outcome')}: {r.get('reason')}" for r in rows[:20]]
    return "\n".join([f"{len(rows)} instance(s) not deployed:", *lines, ""]) if rows else ""


def logins(fleet: Fleet, hosts: list[str], jobs: int = 10) -> float:
    """Wall time of one bare ssh login (a new connection: `true`) to each of `hosts`, `jobs` at once."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(lambda h: subprocess.run(fleet.lab.ssh_argv(h, ["true"]), capture_output=True).returncode,
                             hosts))
    if any(done):
        raise SystemExit("a bare ssh login failed")
    return time.perf_counter() - t0


def full_floor(fleet: Fleet, path: str, jobs: int = 10) -> float:
    """The floor of a deployment: the closure copied to the relay, then a bare `nix copy -s` to
    every host behind it at once, then one ssh login per host, `jobs` at once."""
    env = {**nix_env(), "NIX_SSHOPTS": f"-F {fleet.lab.ssh_config_path}"}
    behind = sorted(h for h in fleet.lab.hosts if h != "relay")
    t0 = time.perf_counter()
    subprocess.run(fleet.lab.deployer_argv(["nix", "copy", "--to", "ssh://relay", path]), env=env, check=True,
                   capture_output=True)
    procs = [subprocess.Popen(fleet.lab.deployer_argv(["nix", "copy", "-s", "--to", f"ssh://{h}", path]), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for h in behind]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a bare nix copy -s failed")
    copied = time.perf_counter() - t0
    return copied + logins(fleet, behind, jobs)


def targets(workdir: Path, n: int, mb: float, baseline: str | None, jobs: int = 10) -> None:
    """Issue 20's targets, side by side in one run: the default deployment (magic rollback, a
    command check per host) against the floor, and the no-change redeploy against bare logins;
    with `baseline` (a git revision), the same deployment by that revision's nix-hive."""
    codes = {"nix-hive": REPO}
    if baseline:
        codes[baseline] = workdir / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(codes[baseline]), baseline],
                       check=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name, code in codes.items():
            fleet = start(workdir / f"hive-{len(results)}", n, mb)
            try:
                fleet.env["BENCH_CHECKS"] = "1"
                build(fleet)  # built (and signed) before the clock starts, as for the floor
                common = ("-q", "--json", "-j", str(jobs), "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
                first = measured(fleet, "deploy", *common, "relay", "*", code=code)
                first["auths"] = deployer_auths(fleet)
                again = measured(fleet, "deploy", "--no", "build,push,activate", *common, "relay", "*", code=code)
                again["floor"] = logins(fleet, sorted(fleet.lab.hosts))
                results[name] = {"deploy": first, "again": again}
            finally:
                fleet.down()
    finally:
        if baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(codes[baseline])], check=False)
    fleet = start(workdir / "floor", n, mb)
    try:
        floor_s = full_floor(fleet, build(fleet))
    finally:
        fleet.down()
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    print(f"\ntargets: 1 relay + {n} hosts, closure about {mb:g} MB, magic rollback and a command check per host, "
          f"nix-hive -j {jobs} "
          f"({ssh_version}; an authentication's CPU is mostly its key exchange)")
    hosts = n + 1
    for name, r in results.items():
        mine, again = r["deploy"], r["again"]
        print(f"  {name}: deploy {mine['wall']:6.2f} s against the floor's {floor_s:6.2f} s (copy to the relay, "
              f"nix copy -s to all, {n} logins at -j 10): {mine['wall'] / floor_s:.2f} x (target 1.15)")
        print(f"  {' ' * len(name)}  no-change redeploy {again['wall']:5.2f} s against {again['floor']:5.2f} s for "
              f"{hosts} bare ssh logins at -j 10: {again['wall'] / again['floor']:.2f} x (target 1.15)")
        print(f"  {' ' * len(name)}  deployer CPU {mine['cpu']:.2f} s = {mine['cpu'] / hosts:.3f} s per host "
              f"(nix-hive itself {mine['own']:.2f} s), peak RSS {mine['rss']:.0f} MiB, "
              f"{mine['spawned'] / hosts:.1f} processes and {mine['auths'] / hosts:.1f} authentications per host, "
              f"{mine['bytes'] / 1e6:.2f} MB sent; redeploy CPU {again['cpu'] / hosts:.3f} s per host", flush=True)
    if baseline:
        now, then = results["nix-hive"]["deploy"], results[baseline]["deploy"]
        print(f"  nix-hive against {baseline}: wall {now['wall'] / then['wall']:.2f} x, deployer CPU per host "
              f"{now['cpu'] / then['cpu']:.2f} x, processes {now['spawned'] / then['spawned']:.2f} x", flush=True)


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


def build(fleet: Fleet) -> str:
    """Build (and sign) the deployment's systems here; the path of system `node`."""
    built = fleet.run("build", "-q", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    if built.returncode != 0:
        raise SystemExit(f"nix-hive build failed:\n{built.stderr}")
    return str(json.loads(built.stdout)["systems"]["node"]["result"])


def shape(fleet: Fleet, rate: str) -> None:
    """Limit what the deployer sends to `rate` (a token bucket on its link, in its namespace)."""
    ns = fleet.lab.deployer_netns
    links = subprocess.run(["ip", "netns", "exec", ns, "ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    [dev] = [line.split(":")[1].strip().partition("@")[0] for line in links.splitlines() if ": lo:" not in line]
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "32kbit", "latency", "400ms"], check=True)


def timed_deploy(fleet: Fleet, *extra: str, select: tuple[str, ...] = ("relay", "*")) -> tuple[float, int, str]:
    """Wall time, deployer bytes and path of system `node` of `nix-hive deploy [EXTRA] SELECT`."""
    before, t0 = fleet.lab.tx_bytes(), time.perf_counter()
    done = fleet.run("deploy", "-q", "--json", *extra, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}",
                     *select, timeout=1800)
    wall, sent = time.perf_counter() - t0, fleet.lab.tx_bytes() - before
    if done.returncode != 0:
        raise SystemExit(f"nix-hive deploy {' '.join(extra)} failed:\n{done.stderr}{done.stdout}")
    rows = json.loads(done.stdout)["instances"]
    return wall, sent, str(next(r["path"] for r in rows if r["system"] == "node"))


def far(workdir: Path, n: int, mb: float, rate: str) -> dict[str, dict[str, float]]:
    """nix-hive and the naive way behind a deployer uplink of `rate`, each on a fresh lab; the
    system is built before the clock starts."""
    out: dict[str, dict[str, float]] = {}
    for name in ("nix-hive", "naive"):
        fleet = start(workdir / name, n, mb)
        try:
            shape(fleet, rate)
            path = build(fleet)
            out[name] = nix_hive(fleet, n, mb) if name == "nix-hive" else naive(fleet, n, path)
        finally:
            fleet.down()
    return out


def remote_build(workdir: Path, n: int, mb: float, rate: str) -> dict[str, dict[str, float]]:
    """The deploy with the relay as build host, and built here, behind a deployer uplink of
    `rate`; each lab with a payload size of its own, so no result is in the deployer's store."""
    out: dict[str, dict[str, float]] = {}
    for name, extra in (("relay builds", ("--build-host", "relay")), ("built here", ())):
        fleet = start(workdir / name.replace(" ", "-"), n, mb)
        fleet.env["STANDIN_PAYLOAD_BYTES"] = str(int(mb * 1e6) + secrets.randbelow(100_000))
        try:
            shape(fleet, rate)
            wall, sent, path = timed_deploy(fleet, *extra)
            closure = int(fleet.lab.run("relay", ["nix", "path-info", "-S", path]).stdout.split()[-1])
            out[name] = {"wall": wall, "bytes": sent, "closure": closure}
        finally:
            fleet.down()
    return out


def cpu_seconds(fleet: Fleet, host: str, match: str = "") -> float:
    """CPU time (user + system) of the processes in host's network namespace whose command line
    contains `match`, with that of the children they have reaped (so a finished ssh session
    counts in its sshd's, a finished nix-daemon worker in the daemon's)."""
    pids = subprocess.run(["ip", "netns", "pids", fleet.lab.hosts[host].netns], capture_output=True, text=True,
                          check=True).stdout.split()
    ticks = 0
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone meanwhile: its time is in its parent's now
        if match.encode() in cmdline:
            ticks += sum(int(f) for f in stat.rpartition(")")[2].split()[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def serve_cache(fleet: Fleet) -> None:
    """The cache host's HTTP server on port 8080, serving /run/nix-cache (as tests/test_cache_lab.py)."""
    fleet.lab.run("cache", ["sh", "-c", "mkdir -p /run/nix-cache && (setsid nohup python3 -m http.server 8080 "
                            "--directory /run/nix-cache > /run/cache-http.log 2>&1 < /dev/null &)"])
    probe = ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8080), 1)"]
    deadline = time.monotonic() + 10
    while fleet.lab.run("cache", probe, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("the cache host's HTTP server did not start")
        time.sleep(0.1)


def cache(workdir: Path, n: int, mb: float, uploads: dict[str, str]) -> dict[str, dict[str, float]]:
    """N hosts substituting over ssh from the relay, then (fresh labs) over HTTP from a cache
    host, filled through each URL of `uploads` (name -> URL, "" the hive's default): wall time,
    deployer bytes, CPU seconds of the relay and the cache host during the deploy."""
    out: dict[str, dict[str, float]] = {}
    for name, upload in {"ssh relay": "", **uploads}.items():
        http = name != "ssh relay"
        hosts = topology(n)
        fleet = (Fleet.start(workdir / f"http{len(out)}", topology={**hosts, "cache": ["int"]}, relay="relay",
                             payload_bytes=int(mb * 1e6), source=CACHE_HIVE,
                             relays={h: CACHE for h in hosts if h != "relay"}, init="plain")
                 if http else start(workdir / "ssh", n, mb))
        try:
            if http:
                fleet.env["BENCH_CACHE_UPLOAD"] = upload
                serve_cache(fleet)
            build(fleet)
            probes = {"relay": ("relay", ""), **({"cache": ("cache", ""), "http": ("cache", "http.server")}
                                                  if http else {})}
            before = {k: cpu_seconds(fleet, *where) for k, where in probes.items()}
            # The same hosts in both runs: the relay and the hosts behind it (not the cache host).
            wall, sent, path = timed_deploy(fleet, select=("relay", "n*"))
            row = {k: cpu_seconds(fleet, *where) - before[k] for k, where in probes.items()}
            behind = [h for h in hosts if h != "relay"]
            row |= {"wall": wall, "bytes": sent,
                    "switched": sum(fleet.lab.current_system(h) == path for h in behind)}
            if http:
                row["nar_gets"] = (fleet.lab.read("cache", "/run/cache-http.log") or "").count("GET /nar/")
                infos = fleet.lab.run("cache", ["sh", "-c", "cat /run/nix-cache/*.narinfo"]).stdout
                row |= {"nars": infos.count("\nURL: "), "compressed": infos.count("\nURL: ") - infos.count(
                    "\nCompression: none")}
            out[name] = row
        finally:
            fleet.down()
    return out


def scale(sizes: list[int], mb: float) -> None:
    """nix-hive, the naive way and the floor for each N, with the ratios (see the module's doc)."""
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hive-bench-") as tmp:
        for n in sizes:
            fleet = start(Path(tmp, f"hive{n}"), n, mb)
            try:
                mine = nix_hive(fleet, n, mb)
            finally:
                fleet.down()
            fleet = start(Path(tmp, f"naive{n}"), n, mb)
            try:
                # the same system (same key, same path): build and sign it on this lab's hive
                theirs = naive(fleet, n, build(fleet))
            finally:
                fleet.down()
            fleet = start(Path(tmp, f"floor{n}"), n, mb)
            try:
                mine["floor"] = floor(fleet, build(fleet))
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
          f"nix-hive wall / floor, N={last}: {mine_last['wall'] / mine_last['floor']:.2f}", flush=True)


def report_far(r: dict[str, dict[str, float]], n: int, rate: str) -> None:
    mine, theirs = r["nix-hive"], r["naive"]
    print(f"\nfar deployer: uplink {rate}, N={n} (+relay), closure {mine['closure'] / 1e6:.2f} MB, built beforehand")
    for name, row in r.items():
        print(f"  {name:<9} {row['wall']:7.2f} s  {row['bytes'] / 1e6:8.2f} MB sent  {row['auths']:3.0f} auths"
              + (f"  (repeat --no all {row['repeat']:.2f} s)" if "repeat" in row else ""))
    print(f"  naive / nix-hive: wall time {theirs['wall'] / mine['wall']:.2f}, "
          f"bytes {theirs['bytes'] / mine['bytes']:.2f}", flush=True)


def report_remote_build(r: dict[str, dict[str, float]], n: int, rate: str) -> None:
    there, here = r["relay builds"], r["built here"]
    print(f"\nremote build: uplink {rate}, N={n} (+relay)")
    for name, row in r.items():
        print(f"  {name:<12} {row['wall']:7.2f} s  {row['bytes'] / 1e6:8.3f} MB sent = "
              f"{100 * row['bytes'] / row['closure']:6.2f} % of the {row['closure'] / 1e6:.2f} MB closure")
    print(f"  built here / relay builds: wall time {here['wall'] / there['wall']:.2f}, "
          f"bytes {here['bytes'] / there['bytes']:.1f}  (target: relay builds < 1 % of the closure)", flush=True)


def report_cache(r: dict[str, dict[str, float]], n: int, mb: float) -> None:
    ssh = r["ssh relay"]
    print(f"\ncache relay: N={n} hosts substituting, closure about {mb:g} MB; CPU s during the deploy")
    print(f"  {'':<15} {'wall s':>7} {'MB sent':>8} {'relay CPU':>10} {'cache CPU':>10} {'(http srv)':>10} "
          f"{'total CPU':>10} {'switched':>9}")
    for name, row in r.items():
        cache_cpu, http_cpu = (f"{row[k]:.2f}" if k in row else "-" for k in ("cache", "http"))
        print(f"  {name:<15} {row['wall']:7.2f} {row['bytes'] / 1e6:8.2f} {row['relay']:10.2f} {cache_cpu:>10} "
              f"{http_cpu:>10} {row['relay'] + row.get('cache', 0.0):10.2f} {row['switched']:>6.0f}/{n}")
    for name, row in r.items():
        if name != "ssh relay":
            print(f"  {name} / ssh relay: wall time {row['wall'] / ssh['wall']:.2f}; CPU of the store host (cache vs "
                  f"relay) {row['cache'] / ssh['relay']:.2f}, of the http server alone {row['http'] / ssh['relay']:.2f}"
                  f", of both hosts {(row['cache'] + row['relay']) / ssh['relay']:.2f}; "
                  f"{row['nar_gets']:.0f} NAR downloads over HTTP, {row['compressed']:.0f} of "
                  f"{row['nars']:.0f} NARs in the cache compressed", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all)")
    parser.add_argument("--sizes", default="1,10,30")
    parser.add_argument("--mb", type=float, default=20.0, help="closure size in MB (default 20)")
    parser.add_argument("--targets-n", type=int, default=30, help="hosts behind the relay, targets (default 30)")
    parser.add_argument("--jobs", type=int, default=10, help="targets: nix-hive's -j (default 10, its own default)")
    parser.add_argument("--baseline", help="targets: a git revision whose nix-hive is measured too, e.g. HEAD~3")
    parser.add_argument("--safety-n", type=int, default=10, help="hosts for the safe-rollout cost (default 10)")
    parser.add_argument("--far-n", type=int, default=30, help="hosts behind the relay, far deployer (default 30)")
    parser.add_argument("--far-rate", default="100mbit", help="deployer uplink, far deployer (default 100mbit)")
    parser.add_argument("--build-n", type=int, default=5, help="hosts behind the relay, remote build (default 5)")
    parser.add_argument("--build-rate", default="5mbit", help="deployer uplink, remote build (default 5mbit)")
    parser.add_argument("--cache-n", type=int, default=30, help="hosts substituting, cache relay (default 30)")
    args = parser.parse_args()
    only = args.only.split(",")
    if "targets" in only:
        with tempfile.TemporaryDirectory(prefix="hive-bench-") as tmp:
            targets(Path(tmp), args.targets_n, args.mb, args.baseline, args.jobs)
    if unknown := set(only) - set(MEASUREMENTS):
        parser.error(f"unknown measurement(s) {','.join(sorted(unknown))}: choose from {','.join(MEASUREMENTS)}")
    if "scale" in only:
        scale([int(s) for s in args.sizes.split(",")], args.mb)
    if "safety" in only and args.safety_n > 0:
        with tempfile.TemporaryDirectory(prefix="hive-bench-") as tmp:
            bare, safe = safety(Path(tmp), args.safety_n, args.mb)
        print(f"safe rollouts, N={args.safety_n}: --no-rollback, no checks {bare:.2f} s; magic rollback + a check "
              f"per host {safe:.2f} s; ratio {safe / bare:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hive-bench-") as tmp:
        if "far" in only:
            report_far(far(Path(tmp, "far"), args.far_n, args.mb, args.far_rate), args.far_n, args.far_rate)
        if "remote-build" in only:
            report_remote_build(remote_build(Path(tmp, "build"), args.build_n, args.mb, args.build_rate),
                                args.build_n, args.build_rate)
        if "cache" in only:
            report_cache(cache(Path(tmp, "cache"), args.cache_n, args.mb, CACHE_UPLOADS), args.cache_n, args.mb)


if __name__ == "__main__":
    main()
