"""What a systemd lab host costs: boot time and memory, with N hosts booting at once.

    python3 -m tests.lab.measure [N ...]        (default: 1 6 30; needs root)

For each N: a lab of N systemd hosts on one segment; each host's boot time from its power-on to
its sshd's banner (all powered on at once, as Lab.start does) and to `systemctl
is-system-running` = running; one reboot with the others idle; memory per host: the PSS of its
processes (its cgroup), its /run tmpfs, and the machine's MemAvailable drop divided by N (page
tables, kernel objects and page cache included).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.lab import tree
from tests.lab.lab import Lab


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def measure(n: int, base: Path) -> str:
    topo = {f"h{i}": ["pub"] for i in range(n)}
    time.sleep(2)
    avail = mem_available()
    t0 = time.monotonic()
    lab = Lab.start(topo, base / f"lab{n}", init="systemd")
    try:
        start = time.monotonic() - t0
        boot = sorted(lab._state.get("boot_seconds", {}).values())
        with ThreadPoolExecutor(max_workers=min(n, 16)) as pool:
            states = list(pool.map(lab.system_state, topo))
        running = time.monotonic() - t0
        assert states == ["running"] * n, states
        time.sleep(3)  # settled
        mems = [lab.memory(h) for h in topo]
        used = (avail - mem_available()) / n
        reboot = lab.reboot("h0")
    finally:
        lab.down()
    pss = statistics.median(m["pss"] for m in mems) / 2**20
    run = statistics.median(m["run"] for m in mems) / 2**20
    return (f"{n:>3} hosts: lab start {start:5.1f}s; boot to sshd min {boot[0]:.2f}s median "
            f"{statistics.median(boot):.2f}s max {boot[-1]:.2f}s; all running {running:5.1f}s; "
            f"reboot {reboot:.2f}s; per host PSS {pss:.1f} MiB + /run {run:.1f} MiB, "
            f"MemAvailable drop {used / 2**20:.1f} MiB")


def main(argv: Sequence[str] | None = None) -> int:
    counts = [int(a) for a in (argv if argv is not None else sys.argv[1:])] or [1, 6, 30]
    tree.ensure()
    with tempfile.TemporaryDirectory(prefix="nix-hive-measure-") as tmp:
        for n in counts:
            print(measure(n, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
