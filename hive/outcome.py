"""What happened to each task of a run, typed: a status, the reason, the seconds, and for a
failure its structure (the task, the cause, the failed command's output) until the report
renders it."""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from doit.exceptions import TaskFailed

from hive.plan import Kind, TaskId


class Status(enum.Enum):
    """A task's outcome, as the summary shows it."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # not started: a dependency failed, a policy stopped it, interrupted
    UNCHANGED = "unchanged"  # already done (`--no`)
    ROLLED_BACK = "rolled back"  # activated, then put back on the system it ran before
    TIMED_OUT = "timed out"  # the activation did not end in time (and could not be rolled back)

    def __str__(self) -> str:
        return self.value

    @property
    def settled_well(self) -> bool:
        return self in (Status.OK, Status.UNCHANGED)

    @property
    def is_failure(self) -> bool:
        """Counts as a failed instance (waves, --max-failures, exit status)."""
        return self in (Status.FAILED, Status.ROLLED_BACK, Status.TIMED_OUT)


@dataclass(frozen=True)
class Failure:
    """A step that failed: which, why (one line), and the failed command's own output."""

    task: TaskId
    cause: str
    output: str = ""


@dataclass(frozen=True)
class Outcome:
    """What happened to one task."""

    status: Status
    reason: str = ""
    seconds: float = 0.0
    failure: Failure | None = None
    parts: Mapping[str, float] = field(default_factory=dict)  # seconds of a step's phases (check, confirm)
    started: float | None = None  # seconds since the run began (stamped by Outcomes when recorded)


class StepFailed(TaskFailed):  # type: ignore[misc]
    """What a failed step's doit action returns: doit records a failure, the report keeps the
    structure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.cause}\n{failure.output}".rstrip())
        self.failure = failure


class NotStarted(TaskFailed):  # type: ignore[misc]
    """A step that was not started (reported as skipped, not failed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Outcomes:
    """Every task's outcome in this run. Threads record; waiters are woken on each record."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._by_task: dict[TaskId, Outcome] = {}
        self._failed: set[TaskId] = set()  # the tasks whose outcome is a failure, kept as they are recorded
        self.began = time.monotonic()  # the run's start, for each step's `started`
        self.began_at = time.time()  # the same, on the wall clock (the report's `began`)

    def _stamped(self, outcome: Outcome) -> Outcome:
        """`outcome` with when it started: it is recorded as it ends, `seconds` after its start."""
        if outcome.started is not None:
            return outcome
        started = max(0.0, time.monotonic() - self.began - outcome.seconds)
        return dataclasses.replace(outcome, started=round(started, 2))

    def _record(self, task: TaskId, outcome: Outcome) -> None:
        self._by_task[task] = self._stamped(outcome)
        if outcome.status.is_failure:
            self._failed.add(task)
        else:
            self._failed.discard(task)
        self._changed.notify_all()

    def set(self, task: TaskId, outcome: Outcome) -> None:
        with self._changed:
            self._record(task, outcome)

    def set_default(self, task: TaskId, outcome: Outcome) -> None:
        """Record `outcome` unless the task has one already."""
        with self._changed:
            if task not in self._by_task:
                self._record(task, outcome)

    def get(self, task: TaskId) -> Outcome | None:
        with self._changed:
            return self._by_task.get(task)

    def status(self, task: TaskId) -> Status | None:
        found = self.get(task)
        return found.status if found is not None else None

    def failed(self, *kinds: Kind) -> list[TaskId]:
        """The tasks that failed so far (of `kinds`, if given), without looking at every outcome."""
        with self._changed:
            return [t for t in self._failed if not kinds or t.kind in kinds]

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until `predicate()` holds (checked after each record, and on `poke`)."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout=timeout)

    def poke(self) -> None:
        """Wake the waiters (something other than an outcome changed, e.g. an interrupt)."""
        with self._changed:
            self._changed.notify_all()
