"""Parallel evaluation: K systems whose evaluation each costs CPU time (the stand-in's
`standin.evalCost`), built by `nix-hive build` (each system evaluated by a process of its own,
`--eval-jobs` at once, then one `nix-store --realise`) against one `nix build` of all K (one
evaluator, the systems in turn), both with everything already built, so only evaluation and
Nix's own checks are timed. Medians of 3 runs; nothing is asserted.

    .venv/bin/python -m benchmarks.eval_parallel [--systems 8] [--cost 6000000]

Target on this 2-core machine: at least 1.6x faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import as_installed
from tests.constants import REPO, STANDIN, nix_env

HIVE = """{{
  paths.nixpkgs = {standin};
  systems = builtins.listToAttrs (builtins.genList (n: {{
    name = "s${{toString n}}";
    value.configuration = {{ networking.hostName = "s${{toString n}}"; standin.evalCost = {cost}; }};
  }}) {k});
  instances = builtins.listToAttrs (builtins.genList (n: {{
    name = "i${{toString n}}"; value.system = "s${{toString n}}";
  }}) {k});
}}
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", type=int, default=8)
    parser.add_argument("--cost", type=int, default=6_000_000, help="SHA-256 hashes each evaluation computes")
    args = parser.parse_args()
    env = {**nix_env(), **as_installed(REPO), "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="hive-eval-") as tmp:
        hive = Path(tmp, "hive.nix")
        hive.write_text(HIVE.format(standin=STANDIN, cost=args.cost, k=args.systems))
        names = [f"s{n}" for n in range(args.systems)]
        ours = [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())", "build", "-q",
                "-c", str(hive)]
        theirs = ["nix", "--extra-experimental-features", "nix-command", "build", "--impure", "--no-link",
                  "-I", f"nixpkgs={STANDIN}", "-I", f"deployment={tmp}", "--file", str(REPO / "nix" / "build.nix"),
                  *names]
        their_env = {**env, "NIX_HIVE_DEPLOYMENT": str(hive)}
        timed(ours, env)  # build once: then both only evaluate
        mine = statistics.median(timed(ours, env) for _ in range(3))
        one = statistics.median(timed(theirs, their_env) for _ in range(3))
    print(f"{args.systems} systems, evaluation cost {args.cost:,} each, {os.cpu_count()} cores:")
    print(f"  nix-hive build (parallel evaluation): {mine:.2f} s")
    print(f"  one nix build of all {args.systems}:           {one:.2f} s")
    print(f"  ratio: {one / mine:.2f}")


if __name__ == "__main__":
    main()
