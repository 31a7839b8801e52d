"""What a wave of reboots takes: `deploy --reboot` and `nix-hive reboot` on N systemd lab hosts.

    NIX_CONFIG="$(python3 -m tests.constants)" python3 -m tests.lab.measure_reboots [N ...]   (default: 6; root)

For each N: a fleet of N web hosts behind a jump host (tests/hives/reboots), deployed once,
then `deploy --reboot` into another kernel and `nix-hive reboot`, each with `-j N` and `-j 2`.
Prints each run's seconds (from the command's start to its summary) and the hosts' boot waits
(from the reboot to ssh and a finished boot, as nix-hive measured them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.constants import REPO, STANDIN
from tests.fleet import Fleet


def timed(fleet: Fleet, variant: str, *args: str) -> tuple[float, list[float]]:
    fleet.env["REBOOT_VARIANT"] = variant
    start = time.monotonic()
    out: subprocess.CompletedProcess[str] = fleet.run(*args, "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    took = time.monotonic() - start
    if out.returncode != 0:
        raise SystemExit(f"nix-hive {' '.join(args)} failed:\n{out.stderr}")
    rows = json.loads(out.stdout)["instances"] if "--json" in args else []
    return took, [float(r["seconds"].get("boot", 0.0)) for r in rows]


def measure(n: int) -> None:
    topology = {"portico": ["pub", "int"], **{f"www-{i}": ["int"] for i in range(1, n + 1)}}
    with tempfile.TemporaryDirectory(prefix="nix-hive-reboots-") as work:
        fleet = Fleet.start(Path(work), topology=topology, source=REPO / "tests" / "hives" / "reboots",
                            payload_bytes=4096)
        try:
            timed(fleet, "v1", "deploy", "--json")
            timed(fleet, "v2", "build", "-q")
            runs = [("v2", ["deploy", "--reboot", "-j", str(n)]), ("v1", ["deploy", "--reboot", "-j", "2"]),
                    ("v1", ["reboot", "-j", str(n)]), ("v1", ["reboot", "-j", "2"])]
            for variant, args in runs:
                took, boots = timed(fleet, variant, *args[:1], "--json", *args[1:], "www-*")
                print(f"{n} hosts, {' '.join(args)}: {took:.1f} s; boot wait {min(boots):.1f}-{max(boots):.1f} s",
                      flush=True)
        finally:
            fleet.down()


def main(argv: list[str]) -> None:
    for n in [int(a) for a in argv] or [6]:
        measure(n)


if __name__ == "__main__":
    main(sys.argv[1:])
