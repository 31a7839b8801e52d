"""`make demo`: deploy the example to a lab fleet on this machine, and leave it running.

    python -m tests.demo up           start the fleet (portico + www-1..3), deploy, report
    python -m tests.demo up --flake   the same with the deployment as a flake (example/flake)
    python -m tests.demo down         tear the fleet down

(from the repository root, as `make demo` and `make demo-down` do).

The fleet lives in .lab/demo: the lab (network namespaces, sshd and a Nix store per host),
the deployment (a copy of example/ whose instances.json the lab wrote, as terraform would)
and `.lab/demo/nix-hive`, a wrapper that runs nix-hive from the deployer's namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from tests.constants import REPO, STANDIN, nix_env
from tests.fleet import Fleet, closure_bytes
from tests.lab import Lab

WORKDIR = REPO / ".lab" / "demo"


def down() -> None:
    if (WORKDIR / "lab" / "lab.json").exists():
        Lab.load(WORKDIR / "lab").down()
        print("demo fleet torn down")
    if WORKDIR.exists():
        subprocess.run(["rm", "-rf", str(WORKDIR)], check=True)


def up(flake: bool = False) -> int:
    down()
    WORKDIR.mkdir(parents=True)
    started = time.monotonic()
    fleet = Fleet.start(WORKDIR, source=REPO / "example" / ("flake" if flake else ""))
    print(fleet.lab.summary())
    wrapper = WORKDIR / "nix-hive"
    wrapper.write_text(
        "#!/bin/sh\n# nix-hive as seen from the demo's deployer (its own network namespace)\n"
        f"export NIX_CONFIG={shlex.quote(nix_env()['NIX_CONFIG'])}\n"
        f"export STANDIN_PAYLOAD_BYTES={fleet.payload_bytes}\n"
        f"exec {' '.join(shlex.quote(a) for a in fleet.lab.deployer_argv([sys.executable, '-m', 'hive']))} "
        '"$@"\n')
    wrapper.chmod(0o755)
    hive = os.path.relpath(fleet.hive, REPO)
    if flake:  # path:, since .lab/ is in the repository's git work tree (where git ignores it)
        hive = f"path:{hive}#nixHive"
    command = [str(wrapper), "deploy", "-c", hive, "-I", f"nixpkgs={os.path.relpath(STANDIN, REPO)}",
               "--report", str(WORKDIR / "report.json"), "portico", "*"]
    print(f"\n$ nix-hive deploy -c {hive} -I nixpkgs=tests/nixpkgs portico '*'\n", flush=True)
    before = fleet.lab.tx_bytes()
    code = subprocess.run(command, cwd=REPO).returncode
    sent = fleet.lab.tx_bytes() - before
    report = json.loads((WORKDIR / "report.json").read_text())
    paths = {row["system"]: row["path"] for row in report["instances"] if row["path"]}
    closures = {system: closure_bytes(path) for system, path in paths.items()}
    www = [row for row in report["instances"] if row["system"] == "www"]
    beyond = sent - sum(closures.values())
    print(f"\nbytes the deployer sent: {sent:,}")
    for system, size in closures.items():
        print(f"  closure of {system}: {size:,} (sent once, to portico)")
    if www:
        print(f"  everything else: {beyond:,}, i.e. {beyond / len(www):,.0f} per www host "
              "(the www hosts substituted their closure from portico)")
    print(f"\ndemo took {time.monotonic() - started:.1f} s. Look around:")
    print(f"  {os.path.relpath(wrapper, REPO)} ssh -c {hive} www-1 readlink /run/current-system")
    print(f"  {os.path.relpath(wrapper, REPO)} run -c {hive} '*' -- cat /run/standin-activations.log")
    print(f"  {os.path.relpath(wrapper, REPO)} status -c {hive} -I nixpkgs=tests/nixpkgs")
    print("Tear the fleet down with: make demo-down")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--flake", action="store_true", help="deploy example/flake (the flake form)")
    args = parser.parse_args()
    if args.action == "down":
        down()
        return 0
    return up(args.flake)


if __name__ == "__main__":
    sys.exit(main())
