"""hive/runner.py: doit's thread runner whose idle workers sleep. Real doit runs of real tasks
(Python actions), compared with doit's own runner where it matters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import doit.cmd_run
import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.runner import MThreadRunner

from hive.runner import Runner, install


def run(tasks: list[dict[str, Any]], workers: int, runner: type[MThreadRunner], tmp: str) -> int:
    def task_t() -> Iterator[dict[str, Any]]:
        yield from tasks

    ns = {"task_t": task_t,
          "DOIT_CONFIG": {"par_type": "thread", "num_process": workers, "continue": True, "verbosity": 0,
                          "reporter": "zero", "dep_file": f"{tmp}/doit.db", "backend": "json"}}
    saved = doit.cmd_run.MThreadRunner
    doit.cmd_run.MThreadRunner = runner
    try:
        return int(DoitMain(ModuleTaskLoader(ns), config_filenames=()).run(["run", "t"]))
    finally:
        doit.cmd_run.MThreadRunner = saved


class Gate:
    """A lane of `width` slots, as hive/lanes.py's: a task holds its worker while it waits."""

    def __init__(self, width: int) -> None:
        self.slots = threading.Semaphore(width)
        self.lock = threading.Lock()
        self.done: list[str] = []
        self.threads: set[int] = set()

    def step(self, name: str, fail: bool = False) -> Callable[[], bool]:
        def action() -> bool:
            with self.slots:
                time.sleep(0.001)
                with self.lock:
                    self.done.append(name)
                    self.threads.add(threading.get_ident())
            return not fail
        return action


def chain_tasks(gate: Gate, n: int, fail: str = "") -> list[dict[str, Any]]:
    """n copies (`c<i>`) and n activations (`a<i>`, each after its copy), as a deployment's."""
    out = []
    for i in range(n):
        out.append({"name": f"c{i}", "actions": [gate.step(f"c{i}", fail=f"c{i}" == fail)], "verbosity": 2})
        out.append({"name": f"a{i}", "actions": [gate.step(f"a{i}")], "task_dep": [f"t:c{i}"], "verbosity": 2})
    return out


def test_every_task_runs_after_what_it_waits_for(tmp_path: Any) -> None:
    gate = Gate(width=5)
    assert run(chain_tasks(gate, 100), workers=200, runner=Runner, tmp=str(tmp_path)) == 0
    assert sorted(gate.done) == sorted([f"c{i}" for i in range(100)] + [f"a{i}" for i in range(100)])
    assert all(gate.done.index(f"c{i}") < gate.done.index(f"a{i}") for i in range(100))
    assert len(gate.threads) <= 200


def test_a_failed_task_fails_the_run_and_its_dependents_do_not_run(tmp_path: Any) -> None:
    gate = Gate(width=3)
    # doit's status 2: a task failed (1), and one it did not start for that (UnmetDependency)
    assert run(chain_tasks(gate, 20, fail="c7"), workers=40, runner=Runner, tmp=str(tmp_path)) == 2
    assert "a7" not in gate.done and "c7" in gate.done
    assert len(gate.done) == 39  # every other copy and activation ran


def test_workers_are_started_only_when_none_is_idle(tmp_path: Any) -> None:
    # a chain: one task ready at a time, so one worker does it all however many are allowed
    gate = Gate(width=1)
    tasks = [{"name": f"s{i}", "actions": [gate.step(f"s{i}")], "verbosity": 2,
              **({"task_dep": [f"t:s{i - 1}"]} if i else {})} for i in range(30)]
    assert run(tasks, workers=30, runner=Runner, tmp=str(tmp_path)) == 0
    assert gate.done == [f"s{i}" for i in range(30)]
    assert len(gate.threads) == 1


@pytest.mark.parametrize("n", [50, 200])
def test_idle_workers_are_not_woken_at_every_finished_task(tmp_path: Any, n: int) -> None:
    """doit's runner asks its dispatcher for a job once per idle worker at every finished task
    (quadratic in the fleet); this one about once per task."""
    def asked(runner: type[MThreadRunner]) -> int:
        calls = 0
        original = runner.get_next_job

        def counting(self: Any, completed: Any) -> Any:
            nonlocal calls
            calls += 1
            return original(self, completed)

        patched = type("Counting", (runner,), {"get_next_job": counting})
        gate, tmp = Gate(width=5), tmp_path / runner.__name__
        tmp.mkdir()
        assert run(chain_tasks(gate, n), workers=2 * n, runner=patched, tmp=str(tmp)) == 0
        return calls

    ours, doits = asked(Runner), asked(MThreadRunner)
    assert ours <= 3 * 2 * n, ours  # a few asks per task
    assert doits > 5 * ours, (doits, ours)  # what it replaces: many per task


def test_install_makes_doit_use_it() -> None:
    saved = doit.cmd_run.MThreadRunner
    try:
        install()
        assert doit.cmd_run.MThreadRunner is Runner
    finally:
        doit.cmd_run.MThreadRunner = saved
