"""doit's runner at fleet sizes: CPU per host of a doit run shaped like a deployment (a copy and
an activation per host, the copies 10 at once, the activations 10 at once, a thread per task
as nix-hive runs doit), with doit's own thread runner and with hive/runner.py's, in one run.

    python -m benchmarks.runner_scale [--sizes 30,300,1000] [--step-ms 2]

Prints, per size and runner, the CPU seconds per host (this process's, all threads) and the
ratio to the smallest size: the runner's own cost, without Nix or ssh.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import doit.cmd_run
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.runner import MThreadRunner

from hive.runner import Runner


def deployment(hosts: int, step: float) -> list[dict[str, Any]]:
    copies, activations = threading.Semaphore(10), threading.Semaphore(10)

    def action(lane: threading.Semaphore) -> Callable[[], None]:
        def run() -> None:
            with lane:
                time.sleep(step)
        return run

    tasks = []
    for i in range(hosts):
        tasks.append({"name": f"push{i}", "actions": [action(copies)], "verbosity": 2})
        tasks.append({"name": f"activate{i}", "actions": [action(activations)], "task_dep": [f"t:push{i}"],
                      "verbosity": 2})
    return tasks


def cpu_of(runner: type[MThreadRunner], hosts: int, step: float) -> float:
    tasks = deployment(hosts, step)

    def task_t() -> Iterator[dict[str, Any]]:
        yield from tasks

    with tempfile.TemporaryDirectory() as tmp:
        ns = {"task_t": task_t, "DOIT_CONFIG": {
            "par_type": "thread", "num_process": min(len(tasks), 1024), "continue": True, "verbosity": 0,
            "reporter": "zero", "dep_file": f"{tmp}/db", "backend": "json"}}
        saved, doit.cmd_run.MThreadRunner = doit.cmd_run.MThreadRunner, runner
        try:
            t0 = time.process_time()
            code = DoitMain(ModuleTaskLoader(ns), config_filenames=()).run(["run", "t"])
            cpu = time.process_time() - t0
        finally:
            doit.cmd_run.MThreadRunner = saved
    if code != 0:
        raise SystemExit(f"doit run failed ({code})")
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="30,300,1000")
    parser.add_argument("--step-ms", type=float, default=2.0, help="how long each step holds its slot")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'hosts':>6} {'runner':>14} {'CPU s':>8} {'CPU ms/host':>12} {'ratio':>6}")
    for name, runner in (("doit's", MThreadRunner), ("nix-hive's", Runner)):
        first = None
        for n in sizes:
            per_host = cpu_of(runner, n, args.step_ms / 1000) / n
            first = first or per_host
            print(f"{n:6d} {name:>14} {per_host * n:8.2f} {per_host * 1000:12.2f} {per_host / first:6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
