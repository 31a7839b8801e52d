"""What a command costs on a big fleet against the same on 2 instances, in one run: `nix-hive
build --no build` on 1,000 and 10,000 instances, `list`, `plan` and `ssh-config` on 5,000.

    make bench        (or, from the repository root: .venv/bin/python -m benchmarks.build_no_build
                       [--runs N] [--source DIR]...)

The hives (2 systems, a relay store per 100 instances, one jump host) are written and built
first. Then every (command, size) is timed once per round, N rounds (the sizes of a
command next to each other, so that a change in the machine's load falls on both), and the
best and median wall times are printed with each size's ratios to 2 instances (of the medians,
and of the bests: on a machine shared with other work, the best is what load spared).
Nothing is asserted: the numbers are for the reader (targets: `build --no build` on 1,000 at
most 1.3 times the same on 2; `list`, `plan`, `ssh-config` on 5,000 at most 2 times).

Each command runs as an installed nix-hive does: a new interpreter, its modules from bytecode
(compiled once into a cache of the run's own, whatever PYTHONDONTWRITEBYTECODE says), the
package of `--source` (default: this checkout) first on PYTHONPATH. `--source` given more
than once (an unpacked `git archive` of an older commit, say) times each the same way in the
same rounds, for before/after figures from one run. The first lines say where and when.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.constants import NIX_CONFIG, REPO, STANDIN

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

# (command, its arguments, the sizes it is timed at: the first is the base of the ratios)
COMMANDS = (("build --no build", ["build", "-q", "--no", "build"], "build_sizes"),
            ("list", ["list", "-q"], "sizes"), ("plan", ["plan", "-q"], "sizes"),
            ("ssh-config", ["ssh-config", "-q"], "sizes"))
TARGETS = {("build --no build", 1000): 1.3, ("list", 5000): 2.0, ("plan", 5000): 2.0, ("ssh-config", 5000): 2.0}


def nix_hive(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())", *args]


def run(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one run of `argv` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def machine() -> str:
    """The date (UTC), cores, memory, Debian release, Nix, and the load now."""
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    nix = subprocess.run(["nix", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}, {os.cpu_count()} cores, {memory / 2**20:.1f} GiB, "
            f"Debian {debian}, {nix}, Python {platform.python_version()}; {load()}")


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="rounds (each times every command at every size once)")
    parser.add_argument("--build-sizes", default="2,1000,10000", help="build --no build's instance counts")
    parser.add_argument("--sizes", default="2,5000", help="list's, plan's and ssh-config's instance counts")
    parser.add_argument("--source", type=Path, action="append", help="a nix-hive checkout to run (default: this one)")
    args = parser.parse_args()
    sizes = {"build_sizes": [int(n) for n in args.build_sizes.split(",")],
             "sizes": [int(n) for n in args.sizes.split(",")]}
    sources = [s.resolve() for s in args.source or [REPO]]
    print(f"make bench: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        envs = {}
        for n, source in enumerate(sources):
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            envs[source] = {**env, "PYTHONPATH": str(source), "PYTHONPYCACHEPREFIX": str(Path(tmp, f"pycache{n}")),
                            "NIX_CONFIG": os.environ.get("NIX_CONFIG", NIX_CONFIG)}
            where = subprocess.run([sys.executable, "-c", "import hive; print(hive.__file__)"], env=envs[source],
                                   cwd=source, capture_output=True, text=True, check=True).stdout.strip()
            print(f"nix-hive from {Path(where).parent}")
        hives: dict[tuple[Path, int], Path] = {}  # each source's own (its state file, its ssh files)
        for n, source in enumerate(sources):
            for count in sorted({c for s in sizes.values() for c in s}):
                d = hives[source, count] = Path(tmp, f"s{n}", f"n{count}")
                d.mkdir(parents=True)
                (d / "hive.nix").write_text(HIVE.format(standin=STANDIN, count=count, half=max(1, count // 2)))
                if count in sizes["build_sizes"]:
                    subprocess.run(nix_hive("build", "-q", "-c", str(d)), check=True, env=envs[source], cwd=source,
                                   stdout=subprocess.DEVNULL)
            for _, argv, which in COMMANDS:  # a first run of each: bytecode compiled, files in place
                run(nix_hive(*argv, "-c", str(hives[source, sizes[which][0]])), envs[source], source)
        times: dict[tuple[Path, str, int], list[float]] = {}
        for _ in range(args.runs):
            for shown, argv, which in COMMANDS:
                for source in sources:
                    for count in sizes[which]:
                        seconds = run(nix_hive(*argv, "-c", str(hives[source, count])), envs[source], source)
                        times.setdefault((source, shown, count), []).append(seconds)
        print(f"after {args.runs} rounds: {load()}")
        base_size = sizes["sizes"][0]
        print(f"{'command':<17} {'instances':>9}  {'best':>7}  {'median':>7}  ratio to {base_size} (medians, bests)")
        for source in sources:
            if len(sources) > 1:
                print(f"-- {source}")
            for shown, _, which in COMMANDS:
                base = statistics.median(times[source, shown, sizes[which][0]])
                best = min(times[source, shown, sizes[which][0]])
                for count in sizes[which]:
                    found = times[source, shown, count]
                    median = statistics.median(found)
                    target = TARGETS.get((shown, count))
                    ratio = "" if count == sizes[which][0] else f"{median / base:.2f}, {min(found) / best:.2f}" + (
                        f" (target: at most {target})" if target else "")
                    print(f"{shown:<17} {count:>9,}  {min(found):6.3f}s  {median:6.3f}s  {ratio}")


if __name__ == "__main__":
    main()
