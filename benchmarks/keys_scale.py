"""Keys at scale (issue 29): many keys per host against one key per host, in the lab.

    make bench-keys [ARGS="--baseline main"]     (or, from the repository root:
        .venv/bin/python -m benchmarks.keys_scale [--hosts 20] [--keys 200] [--big 2000]
        [--jobs 10] [--baseline REV])

Needs root (the lab). One lab: HOSTS hosts (h01..) and one more, "big", all on the deployer's
segment, running one small system (built before the clock starts; a first deploy puts it on
every host). Keys of 1 KiB of random bytes each, keyFiles. Measured in the same run, each
under benchmarks/reaper.py (the deployer's CPU seconds: nix-hive and every process it started):

- `nix-hive upload-keys '*'` with KEYS keys per host (BIG on "big"), and with one key per host;
- `nix-hive deploy '*'` (the system already on the hosts: keys, activation, confirmation) with
  KEYS keys per host (BIG on "big"), and with one key per host;

each as wall time, deployer CPU per host and processes started per host (`-v`), and the
ratios many/one. With `--baseline REV`, the same by that git revision's nix-hive (a worktree),
on the same lab. Nothing is asserted (timings are noisy); target (issue 29): `upload-keys`
and a deploy's deployer CPU per host with 200 keys per host at most 1.5 x those with one key.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from benchmarks import worktree
from benchmarks.fleet_deploy import build, measured
from tests.constants import REPO, STANDIN
from tests.fleet import Fleet

HIVE = REPO / "benchmarks" / "keys-scale"
KEY_BYTES = 1024


def start(workdir: Path, hosts: int, most: int) -> Fleet:
    """The lab, and `most` keys' files in the deployment (1 KiB of random bytes each)."""
    topology = {f"h{k:02d}": ["pub"] for k in range(1, hosts + 1)} | {"big": ["pub"]}
    fleet = Fleet.start(workdir, topology=topology, source=HIVE, payload_bytes=4096)
    keys = fleet.hive / "secrets" / "keys"
    keys.mkdir()
    rng = random.Random(29)
    for i in range(most):
        (keys / f"k{i}").write_bytes(rng.randbytes(KEY_BYTES))
    return fleet


def rounds(fleet: Fleet, code: Path, many: tuple[int, int], jobs: int) -> dict[str, dict[str, float]]:
    """upload-keys and deploy, with one key per host and with `many` (per host, on big)."""
    common = ("-j", str(jobs), "-c", str(fleet.hive))
    out: dict[str, dict[str, float]] = {}
    for label, (count, big) in (("one", (1, 1)), ("many", many)):
        fleet.env.update(BENCH_KEYS=str(count), BENCH_BIG_KEYS=str(big))
        out[f"upload-keys {label}"] = measured(fleet, "upload-keys", "-q", *common, "*", code=code)
        # the same hosts without big: the 20 x 200 of the wire scenario, whose wall time big's
        # 2,000 keys would otherwise set
        out[f"upload-keys-h {label}"] = measured(fleet, "upload-keys", "-q", *common, "h*", code=code)
        out[f"deploy {label}"] = measured(fleet, "deploy", "-q", *common, "-I", f"nixpkgs={STANDIN}", "*", code=code)
    return out


def report(name: str, found: dict[str, dict[str, float]], hosts: int, many: tuple[int, int]) -> None:
    print(f"  {name}:")
    for what in ("upload-keys", "upload-keys-h", "deploy"):
        one, lots = found[f"{what} one"], found[f"{what} many"]
        n = hosts - 1 if what == "upload-keys-h" else hosts
        shown = "upload-keys" if what == "upload-keys-h" else what
        big = "" if what == "upload-keys-h" else f", {many[1]} on big"
        for label, r in (("1 key per host", one), (f"{many[0]} keys per host{big}", lots)):
            print(f"    {shown:11} {label:32} wall {r['wall']:6.2f} s, deployer CPU {r['cpu'] / n:.3f} s per host, "
                  f"{r['spawned'] / n:5.1f} processes per host", flush=True)
        alone = "" if big else " (without big)"
        print(f"    {shown:11} many / one{alone}: wall {lots['wall'] / one['wall']:.2f} x, "
              f"deployer CPU per host {lots['cpu'] / one['cpu']:.2f} x (target 1.5)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=20, help="hosts with KEYS keys (default 20), plus big")
    parser.add_argument("--keys", type=int, default=200, help="keys per host (default 200)")
    parser.add_argument("--big", type=int, default=2000, help="keys on the host big (default 2000)")
    parser.add_argument("--jobs", type=int, default=10, help="nix-hive's -j (default 10, its own default)")
    parser.add_argument("--baseline", help="a git revision whose nix-hive is measured too, e.g. main")
    args = parser.parse_args()
    many = (args.keys, args.big)
    hosts = args.hosts + 1
    with tempfile.TemporaryDirectory(prefix="hive-bench-") as tmp, worktree(args.baseline, Path(tmp) / "rev") as codes:
        fleet = start(Path(tmp) / "lab", args.hosts, max(many))
        try:
            fleet.env.update(BENCH_KEYS="1", BENCH_BIG_KEYS="1")
            build(fleet)  # built (and signed) before the clock starts, and on every host
            measured(fleet, "deploy", "-q", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "*")
            results = {name: rounds(fleet, code, many, args.jobs) for name, code in codes.items()}
        finally:
            fleet.down()
    print(f"\nkeys at scale: {args.hosts} hosts with {args.keys} keys of {KEY_BYTES} bytes and one with {args.big}, "
          f"against one key per host; nix-hive -j {args.jobs}")
    for name, found in results.items():
        report(name, found, hosts, many)
    if args.baseline:
        now, then = results["nix-hive"], results[args.baseline]
        for what in ("upload-keys many", "deploy many"):
            print(f"  {what}: nix-hive against {args.baseline}: wall {now[what]['wall'] / then[what]['wall']:.2f} x, "
                  f"deployer CPU {now[what]['cpu'] / then[what]['cpu']:.2f} x", flush=True)


if __name__ == "__main__":
    main()
