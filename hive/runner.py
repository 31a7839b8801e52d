"""doit's thread runner, without waking idle workers for nothing.

doit's own thread runner (`MThreadRunner`) keeps every worker it started busy: when no task is
ready it hands a worker a "hold" job, which the worker takes off the queue and drops; and at
every finished task it hands one more such job to every worker that holds one, so each of
them wakes once per finished task. nix-hive starts a worker per task (a step waiting for its
lane holds its worker, see hive/lanes.py), so a deployment of 1,000 hosts has hundreds of
idle workers and about 5,000 finished tasks: millions of wake-ups, the deployer's own CPU per
host growing with the fleet.

This runner hands out a job only when a task is ready, starts a worker only when none is idle
(up to doit's `num_process`), and leaves idle workers asleep on the queue. It runs the tasks
in the order doit's dispatcher gives them, with doit's own task execution and result
handling (the same methods), so up-to-date checks, failures and the reporter are doit's.
`install()` makes doit use it for `par_type = "thread"`, through either door (nix-hive runs
doit itself; `doit` loads dodo.py, which imports hive.tasks).
"""

from __future__ import annotations

import queue
from typing import Any

import doit.cmd_run
from doit.runner import JobHold, MThreadRunner


class Runner(MThreadRunner):  # type: ignore[misc]  # doit has no type hints
    """doit's MThreadRunner whose idle workers sleep until a task is ready for them."""

    def run_tasks(self, task_dispatcher: Any) -> None:
        results: queue.Queue[dict[str, Any]] = queue.Queue()
        jobs: queue.Queue[Any] = queue.Queue()
        self._run_tasks_init(task_dispatcher)
        workers: list[Any] = []
        busy = 0  # workers running a task
        finished = False  # the dispatcher has no task left to give

        def hand_out(completed: Any) -> None:
            """Tell the dispatcher that `completed` ended, and give each ready task a worker."""
            nonlocal busy, finished
            while not finished and busy < self.num_process:
                job = self.get_next_job(completed)
                completed = None
                if job is None:
                    finished = True
                elif job.type is JobHold.type:  # nothing ready until a running task ends
                    self.free_proc = 0
                    if busy == 0:
                        raise RuntimeError("doit: tasks wait for each other (a dependency cycle)")
                    return
                else:
                    jobs.put(job)
                    busy += 1
                    if len(workers) < busy:  # no worker is idle: one more
                        worker = self.Child(target=self.execute_task_subprocess,
                                            args=(jobs, results, self.reporter.__class__))
                        worker.start()
                        workers.append(worker)

        hand_out(None)
        while busy:
            result = results.get()
            if "exit" in result:
                raise result["exit"](result["exception"])
            node = task_dispatcher.nodes[result["name"]]
            if "reporter" in result:
                getattr(self.reporter, result["reporter"])(node.task)
                continue
            busy -= 1
            self._process_result(node, node.task, result)
            hand_out(node)
        for _ in workers:  # each worker ends (and runs doit's teardown) on None
            jobs.put(None)
        for worker in workers:
            worker.join()
        while not results.empty():
            result = results.get()
            getattr(self.reporter, result["reporter"])(task_dispatcher.tasks[result["name"]])


def install() -> None:
    """doit's `run` uses this runner for threads (it names the class in its own module)."""
    doit.cmd_run.MThreadRunner = Runner
