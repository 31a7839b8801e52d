"""How many steps of each kind run at once: a run's lanes.

- Activations and key uploads: `-j/--jobs` at once (10 by default), the instances at work.
- Builds: `-j` groups at once, each evaluating up to `--eval-jobs` systems.
- Copies: a lane per source, the store the paths come from: each relay store feeds
  `--push-jobs` instances at once, and so does this machine (its copies to relay stores, and
  to instances behind none) and each build host. By default 10 per source: an instance behind
  an ssh relay opens an ssh connection to it to substitute, and sshd's defaults let 10
  connections authenticate at once (MaxStartups 10:30:100; beyond that it refuses some, and
  the instance then takes the closure from the deployer instead, over the deployer's link).
  A fleet behind 10 relays thus copies to 100 instances at once.

Copies and activations no longer share one width: instances are copied to while earlier ones
switch. A step waits for its lane before it counts as running (the live view shows it
waiting), and stops waiting when the run is interrupted (it then starts nothing).

- Copies ahead of activations: at most `AHEAD_PER_JOB` x `-j` instances that this run will
  activate are being copied to, or copied to and not yet activating, at once. A copy opens
  the instance's shared ssh connection, which its activation then uses; an idle shared
  connection ends after ControlPersist (60 s). Copies free to run far ahead of activations
  (copies 100 wide behind 10 relays, activations 10 wide) left each copied instance waiting
  longer than that, and its activation logged in again (3 to 4 logins per host instead of
  2 at 300 hosts). Bounded, an instance waits for about `AHEAD_PER_JOB` activations' time.
  No deadlock: an activation waits only for its own copy, its keys and its wave's gate, and
  a wave's copies start only after the wave before it settled (hive/plan.py).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hive.model import Instance
from hive.plan import Kind, Relay

DEFAULT_PUSH_JOBS = 10
AHEAD_PER_JOB = 3
AHEAD = "ahead"  # the lane of the instances copied (or being copied) to and not yet activating
HERE = "this machine"
# doit runs each waiting step in a thread of its own, so that a lane full of waiting copies
# (a relay's 100 instances) never keeps another lane's steps from starting; past this many
# threads the steps wait for a thread as well.
MAX_THREADS = 1024


def source(store: str | None, build_host: str | None) -> str:
    """The lane of a copy: the relay store it substitutes from, else the build host that
    holds the paths, else this machine."""
    if store:
        return store
    if build_host:
        return f"build host {build_host}"
    return HERE


def lane_of(kind: Kind, *, instance: Instance | None = None, relay: Relay | None = None,
            build_host: str | None = None) -> str | None:
    """The lane a step of `kind` waits for (None: it takes no slot)."""
    if kind in (Kind.KEYS, Kind.ACTIVATE):
        return "activate"
    if kind is Kind.NIX_BUILD:
        return "build"
    if kind is Kind.PUSH and instance is not None:
        return "push: " + source(instance.store, build_host)
    if kind is Kind.STORE and relay is not None:
        return "push: " + source(relay.upstream, build_host)
    return None


class Lanes:
    """Slots per lane, `width(lane)` of them each. The steps waiting in a lane take its freed
    slots in the plan's order (their `rank`), so `-j 1` activates the instances that are ready
    one after the other by name, as a canary rollout expects; a freed slot wakes that one
    step only: a deployment of 1,000 hosts has about as many steps waiting at once, and
    waking all of them at every freed slot cost more CPU than the deployment's own work."""

    def __init__(self, jobs: int, push_jobs: int | None) -> None:
        self.jobs = jobs
        self.push_jobs = push_jobs or DEFAULT_PUSH_JOBS
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[int, int, threading.Event]]] = {}  # a heap per lane
        self._arrivals = itertools.count()
        self._unslotted: set[threading.Event] = set()  # woken by `wake`, holding no slot
        self._stopped = False  # `wake` was called: no step waits any more
        self._ahead: set[str] = set()  # the instances holding a slot of AHEAD

    def width(self, lane: str) -> int:
        if lane == AHEAD:
            return AHEAD_PER_JOB * self.jobs
        return self.push_jobs if lane.startswith("push: ") else self.jobs

    @contextmanager
    def slot(self, lane: str | None, stop: Callable[[], bool], rank: int = 0) -> Iterator[None]:
        """Hold a slot of `lane` for the duration (none when `lane` is None). A step that comes
        when `stop()` is true, or is waiting when `wake` is called (the run's interruption sets
        what `stop` reads, then calls it), runs without one, to say it was skipped. Each step
        sleeps until then: no polling, which at 1,000 waiting steps wakes a thousand threads."""
        if lane is None:
            yield
            return
        held = self._take(lane, stop, rank)
        try:
            yield
        finally:
            if held:
                self._give(lane)

    def copy_ahead(self, instance: str, stop: Callable[[], bool], rank: int = 0) -> None:
        """Before a copy to `instance`, which this run then activates: wait until fewer than
        the AHEAD width of instances are copied to and not yet activating (or until `stop`).
        The slot is held until `activating(instance)`."""
        if self._take(AHEAD, stop, rank):
            with self._lock:
                self._ahead.add(instance)

    def activating(self, instance: str) -> None:
        """`instance`'s activation starts, or will never start (its copy or keys failed, it was
        skipped): its AHEAD slot, if it holds one, goes to the next copy. Idempotent."""
        with self._lock:
            if instance not in self._ahead:
                return
            self._ahead.discard(instance)
        self._give(AHEAD)

    def _take(self, lane: str, stop: Callable[[], bool], rank: int) -> bool:
        """Wait for a slot of `lane`; False: none was taken (stopped, or woken by `wake`)."""
        turn = threading.Event()
        with self._lock:
            if self._stopped or stop():  # interrupted before it came: no slot, no wait
                self._unslotted.add(turn)
                turn.set()
            else:
                heapq.heappush(self._waiting.setdefault(lane, []), (rank, next(self._arrivals), turn))
                self._hand_over(lane)
        turn.wait()  # until a slot is handed over, or `wake`
        with self._lock:
            held = turn not in self._unslotted
            self._unslotted.discard(turn)
        return held

    def _give(self, lane: str) -> None:
        with self._lock:
            self._busy[lane] -= 1
            self._hand_over(lane)

    def wake(self) -> None:
        """The run was interrupted: every waiting step stops waiting, without a slot, and so
        does every step that comes later."""
        with self._lock:
            self._stopped = True
            for waiting in self._waiting.values():
                for _, _, turn in waiting:
                    self._unslotted.add(turn)
                    turn.set()
                waiting.clear()

    def _hand_over(self, lane: str) -> None:
        """Give the lane's free slots to its first waiting steps (the lock held)."""
        waiting = self._waiting.get(lane, [])
        while waiting and self._busy.get(lane, 0) < self.width(lane):
            _, _, turn = heapq.heappop(waiting)
            self._busy[lane] = self._busy.get(lane, 0) + 1
            turn.set()

    def threads(self, tasks: int) -> int:
        """doit's workers for a plan of `tasks` tasks: 0 (in turn, in doit's own thread) when
        every lane is one wide, else a thread per task, up to MAX_THREADS."""
        if self.jobs == 1 and self.push_jobs == 1:
            return 0
        return max(2, min(tasks, MAX_THREADS))
