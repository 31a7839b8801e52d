"""`nix-hive build --no build` on 1,000 and 10,000 instances of 2 systems, against 2 instances.

    make bench        (or, from the repository root: .venv/bin/python -m benchmarks.build_no_build [--runs N])

Both hives are built once first; then each command is timed N times (best and median wall
time), and the ratio of the two medians is printed. Nothing is asserted: the numbers are
for the reader (targets: under 3 s for 1,000 and for 10,000 instances, ratio under 1.5 for 1,000).
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

from tests.constants import NIX_CONFIG, STANDIN

HIVE = """
{{
  paths.nixpkgs = {standin};
  systems.web.configuration = {{ networking.hostName = "web"; }};
  systems.db.configuration = {{ networking.hostName = "db"; }};
  instances = builtins.listToAttrs (builtins.genList (n: {{
    name = "host-${{toString n}}";
    value = {{
      system = if n < {half} then "web" else "db";
      store = "ssh://relay-${{toString (n / 100)}}";
      tags = [ "rack${{toString (n / 40)}}" ];
      ssh = {{ Hostname = "10.1.${{toString (n / 250)}}.${{toString (n - n / 250 * 250 + 1)}}"; ProxyJump = "jump"; }};
    }};
  }}) {count});
}}
"""


def nix_hive(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())", *args]


def timed(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="2,1000,10000", help="instance counts (the first is the base)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    os.environ.setdefault("NIX_CONFIG", NIX_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        medians = {}
        for count in sizes:
            d = Path(tmp, f"n{count}")
            d.mkdir()
            (d / "hive.nix").write_text(HIVE.format(standin=STANDIN, count=count, half=max(1, count // 2)))
            subprocess.run(nix_hive("build", "-q", "-c", str(d)), check=True, stdout=subprocess.DEVNULL)
            times = timed(nix_hive("build", "-q", "--no", "build", "-c", str(d)), args.runs)
            medians[count] = statistics.median(times)
            print(f"build --no build, {count:>5} instances: best {min(times):.3f} s, "
                  f"median {medians[count]:.3f} s ({args.runs} runs)")
        for count in sizes[1:]:
            print(f"ratio {count}/{sizes[0]} instances (medians): {medians[count] / medians[sizes[0]]:.2f}")


if __name__ == "__main__":
    main()
