"""keys.sh alone (issue 29, keys at scale): the host's side of `upload-keys`, without the lab.

    .venv/bin/python -m benchmarks.keys_host [--counts 1,200,2000,5000] [--runs 3]
        [--shell sh] [--under /tmp] [--baseline REV]

Needs root (keys.sh checks that root owns each directory on the way to a key; the run writes
only under a fresh directory in /tmp, or in UNDER: /dev/shm is a tmpfs, as /run/keys is on a
host, where /tmp's file system may make each file's creation cost more than the rest). For
each number of keys, keys of 1 KiB of random bytes, 2 owners (root:root and nobody:nogroup)
and 2 modes (0400 and 0640) alternating, all in one directory and spread over 10: `sh -c
KEYS_SH keys.sh upload COUNT` with the stream that hive/keys.py renders (`upload_stream`) on
its standard input, into a fresh directory tree each time. Each run is checked (exit 0, every
key's bytes, owner and mode), then timed: the best and the median of RUNS wall times, the
median CPU time (keys.sh and every process it started: what other work on a shared machine
changes least), and the 2,000/200 ratios (target: at most 12, and 2,000 keys in under 2 s on
a quiet 2-core machine). With `--baseline REV`, the same by that git revision's keys.sh (a
worktree; the stream is this checkout's, the same format), in the same rounds. The first
lines say where and when.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import worktree
from hive.keys import upload_stream
from hive.model import Key

KEY_BYTES = 1024
OWNERS = (("root", "root", 0), ("nobody", "nogroup", 65534))
MODES = ("0400", "0640")


def keys_of(root: Path, count: int, dirs: int, rng: random.Random) -> list[tuple[Key, bytes]]:
    """`count` keys of KEY_BYTES random bytes under `root`, spread over `dirs` directories."""
    keys = []
    for i in range(count):
        user, group, _ = OWNERS[i % 2]
        where = root / f"d{i % dirs}"
        keys.append((Key(f"k{i}", str(where / f"k{i}"), user=user, group=group, permissions=MODES[(i // 2) % 2]),
                     rng.randbytes(KEY_BYTES)))
    return keys


def checked(keys: list[tuple[Key, bytes]]) -> None:
    """Every key installed as sent: its bytes, owner and mode."""
    for i, (key, data) in enumerate(keys):
        dest = Path(key.destination)
        st = dest.lstat()
        if dest.read_bytes() != data or st.st_uid != OWNERS[i % 2][2] or oct(st.st_mode & 0o777) != oct(
                int(key.permissions, 8)):
            raise SystemExit(f"keys.sh installed {dest} wrong")


def timed(script: str, shell: str, under: str, count: int, dirs: int, rng: random.Random) -> tuple[float, float]:
    """One upload of `count` keys into a fresh tree: its wall time and CPU time (keys.sh and
    every process it started), once checked."""
    with tempfile.TemporaryDirectory(prefix="keys-host-", dir=under) as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # root's, not writable by others: keys.sh writes under it
        keys = keys_of(root, count, dirs, rng)
        stream = upload_stream(keys)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        out = subprocess.run([shell, "-c", script, "keys.sh", "upload", str(count)], input=stream,
                             capture_output=True, check=False)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            raise SystemExit(f"keys.sh upload {count} failed ({out.returncode}): {out.stdout!r} {out.stderr!r}")
        checked(keys)
        return wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,200,2000,5000", help="numbers of keys (default 1,200,2000,5000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--shell", default="sh", help="the shell that runs keys.sh (default sh: dash on Debian)")
    parser.add_argument("--under", default="/tmp", help="where the keys go, in a fresh directory (default /tmp)")
    parser.add_argument("--baseline", help="a git revision whose keys.sh is measured too, e.g. main")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("keys_host: run as root (keys.sh checks that root owns each directory)")
    counts = [int(c) for c in args.counts.split(",")]
    load = os.getloadavg()
    print(f"keys.sh alone, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, shell {args.shell}, "
          f"keys under {args.under}", flush=True)
    with tempfile.TemporaryDirectory(prefix="keys-host-") as tmp, worktree(args.baseline, Path(tmp) / "rev") as codes:
        scripts = {name: (code / "hive" / "host" / "keys.sh").read_text() for name, code in codes.items()}
    rng = random.Random(29)
    walls: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for dirs in (1, 10):
        for count in counts:
            for _ in range(args.runs):  # the codes side by side in each round: the same load falls on both
                for name, script in scripts.items():
                    found = timed(script, args.shell, args.under, count, dirs, rng)
                    walls.setdefault((name, dirs, count), []).append(found)
    for name in scripts:
        print(f"  {name}:")
        for dirs in (1, 10):
            medians, cpus = {}, {}
            where = f"director{'y' if dirs == 1 else 'ies'}"
            for count in counts:
                runs = [wall for wall, _ in walls[(name, dirs, count)]]
                medians[count] = statistics.median(runs)
                cpus[count] = statistics.median(cpu for _, cpu in walls[(name, dirs, count)])
                print(f"    {count:5} keys in {dirs:2} {where:11}: wall best {min(runs):7.3f} s, "
                      f"median {medians[count]:7.3f} s; CPU median {cpus[count]:7.3f} s", flush=True)
            if 200 in medians and 2000 in medians:
                print(f"    2,000 / 200 keys in {dirs} {where}: wall {medians[2000] / medians[200]:.1f} x, "
                      f"CPU {cpus[2000] / cpus[200]:.1f} x (target 12)", flush=True)


if __name__ == "__main__":
    main()
