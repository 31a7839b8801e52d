"""Run a command and measure what it and everything it started cost (the deployer's cost).

    python -m benchmarks.reaper OUT.json COMMAND...

This process becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER): whatever the command
starts and leaves behind (ssh's shared connections fork into the background) is reparented
here instead of to init, so that its CPU time counts once it ends. After the command exits,
the others are waited for (at most LINGER seconds), then OUT.json receives the command's exit
status, the CPU seconds (user + system) of every process reaped and of the command alone, and the largest resident
set size among them (MiB). The command's own output goes where this process's goes.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
LINGER = 20.0  # seconds to wait for what the command left running


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl: {os.strerror(ctypes.get_errno())}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(argv)
    own = 0.0  # the command's own CPU seconds (not its children's), last read before it ended
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    status = child.returncode
    deadline = time.monotonic() + LINGER
    lingering = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if time.monotonic() > deadline:
                lingering = True  # something still runs: reported, not waited for
                break
            time.sleep(0.05)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(out, "w") as f:
        json.dump({"status": status, "cpu": cpu, "own": own, "maxrss_mib": after.ru_maxrss / 1024,
                   "lingering": lingering}, f)
    return status


if __name__ == "__main__":
    sys.exit(main())
