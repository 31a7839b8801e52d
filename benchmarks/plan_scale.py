"""`nix-hive plan` (the table, and `--json`) on throwaway hives of many instances: wall time,
peak memory and bytes printed, and the ratios between sizes measured in this one run.

    .venv/bin/python -m benchmarks.plan_scale [--sizes 1000,5000] [--source DIR]

`--source DIR` runs the nix-hive of another checkout (e.g. `git archive` of an older commit
unpacked in DIR) with the same hives, for before/after figures. Memory is the peak resident
set of the largest process of the command (`os.wait4`'s ru_maxrss covers the child and the
processes it waited for: nix-hive, and its `nix eval`). Nothing is asserted: the numbers are
for the reader (a linear plan: the 5,000/1,000 ratios of bytes printed near 5, of time and
memory at most that).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import as_installed, build_no_build
from tests.constants import NIX_CONFIG, REPO, STANDIN

# Two systems, a relay store per 100 instances behind one jump host, tags, two waves (by
# pattern: rack0 first): the plan holds every kind of task and a `deploy` waiting for all.
HIVE = build_no_build.HIVE  # the same generated hive as `make bench`


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, peak memory (MB) and bytes printed on stdout by one run of `argv`."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE,  # `-c` puts cwd first
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    printed = 0
    while chunk := proc.stdout.read(1 << 20):
        printed += len(chunk)
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit status {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024, printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000", help="instance counts (the first is the base of the ratios)")
    parser.add_argument("--source", type=Path, default=REPO, help="the nix-hive checkout to run (default: this one)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    env = {**as_installed(args.source), "PYTHONPATH": str(args.source.resolve())}
    env.setdefault("NIX_CONFIG", NIX_CONFIG)
    command = [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())"]
    print(f"nix-hive plan from {args.source.resolve()}")
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        found: dict[tuple[str, int], tuple[float, float, int]] = {}
        for count in sizes:
            d = Path(tmp, f"n{count}")
            d.mkdir()
            (d / "hive.nix").write_text(HIVE.format(standin=STANDIN, count=count, half=max(1, count // 2)))
            for shown, extra in (("plan", []), ("plan --json", ["--json"])):
                argv = [*command, "plan", *extra, "-c", str(d), "rack0", "*"]
                found[shown, count] = seconds, mb, printed = measure(argv, env)
                print(f"{shown:<12} {count:>6} instances: {seconds:6.2f} s, {mb:8.1f} MB peak, "
                      f"{printed / 1e6:9.2f} MB printed")
        for shown in ("plan", "plan --json"):
            base = found[shown, sizes[0]]
            for count in sizes[1:]:
                s, m, p = found[shown, count]
                print(f"{shown:<12} ratio {count}/{sizes[0]}: time {s / base[0]:.2f}, memory {m / base[1]:.2f}, "
                      f"printed {p / base[2]:.2f}")


if __name__ == "__main__":
    main()
