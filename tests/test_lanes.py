"""Copies and activations have widths of their own (hive/lanes.py): `--push-jobs` copies at once
from each source, `-j` activations at once, neither taking the other's slots."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from hive.lanes import AHEAD_PER_JOB, DEFAULT_PUSH_JOBS, MAX_THREADS, Lanes, lane_of, source
from hive.model import Instance
from hive.plan import Kind, Relay
from tests.conftest import REPO, needs_lab
from tests.fleet import Fleet

TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"], "www-2": ["int"], "www-3": ["int"]}
SOURCE = REPO / "tests" / "hives" / "rollouts"


def most_at_once(lanes: Lanes, lane: str, workers: int, stop: Callable[[], bool] = lambda: False) -> int:
    """Run `workers` threads that each hold a slot of `lane` for a moment: the most at once."""
    busy, most, lock = 0, 0, threading.Lock()

    def work() -> None:
        nonlocal busy, most
        with lanes.slot(lane, stop):
            with lock:
                busy += 1
                most = max(most, busy)
            time.sleep(0.05)
            with lock:
                busy -= 1

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return most


def test_a_lane_runs_as_many_steps_at_once_as_its_width() -> None:
    lanes = Lanes(jobs=2, push_jobs=3)
    assert most_at_once(lanes, "activate", 6) == 2
    assert most_at_once(lanes, "push: ssh://relay", 6) == 3
    assert Lanes(jobs=4, push_jobs=None).width("push: x") == DEFAULT_PUSH_JOBS


def test_a_full_lane_does_not_hold_up_another() -> None:
    lanes = Lanes(jobs=1, push_jobs=1)
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lanes.slot("push: ssh://a", lambda: False):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    done = threading.Event()

    def other() -> None:
        with lanes.slot("push: ssh://b", lambda: False):
            done.set()

    threading.Thread(target=other).start()
    assert done.wait(5), "a step of another source waited for the full lane"
    release.set()
    holder.join(10)


def test_an_interrupted_run_stops_waiting_for_a_slot() -> None:
    lanes = Lanes(jobs=1, push_jobs=1)
    stopped = threading.Event()
    release = threading.Event()
    waited = threading.Event()

    def hold() -> None:
        with lanes.slot("activate", stopped.is_set):
            release.wait(10)

    def wait() -> None:
        with lanes.slot("activate", stopped.is_set):
            waited.set()

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.05)
    threading.Thread(target=wait).start()
    assert not waited.wait(0.2)
    stopped.set()
    lanes.wake()
    assert waited.wait(5), "a waiting step did not see the run's interruption"
    release.set()
    holder.join(10)


def test_a_freed_slot_wakes_one_waiting_step_not_all() -> None:
    """200 steps waiting in a lane one wide: each freed slot wakes one of them. Waking every
    waiting step at each freed slot looks again 200 x 200 / 2 times (at 1,000 hosts, more CPU
    than the deployment's own work)."""
    lanes = Lanes(jobs=1, push_jobs=1)
    looks, lock = 0, threading.Lock()

    def stop() -> bool:
        nonlocal looks
        with lock:
            looks += 1
        return False

    gate = threading.Event()

    def first() -> None:
        with lanes.slot("activate", stop):
            gate.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    time.sleep(0.05)

    def step() -> None:
        with lanes.slot("activate", stop):
            time.sleep(0.002)  # long enough for the others to wait again

    steps = [threading.Thread(target=step) for _ in range(200)]
    for t in steps:
        t.start()
    time.sleep(0.3)  # all of them waiting
    gate.set()
    for t in [holder, *steps]:
        t.join(20)
    assert not any(t.is_alive() for t in steps)
    assert looks < 2000, looks


def test_waiting_steps_take_the_slots_in_the_plans_order() -> None:
    """-j 1: the activations waiting go one after the other in the plan's order (by name), not
    in the order they came (their copies ended in any order)."""
    lanes = Lanes(jobs=1, push_jobs=1)
    gate, order = threading.Event(), []

    def first() -> None:
        with lanes.slot("activate", lambda: False, rank=0):
            gate.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    time.sleep(0.05)

    def step(rank: int) -> None:
        with lanes.slot("activate", lambda: False, rank=rank):
            order.append(rank)

    steps = []
    for rank in (5, 3, 9, 1, 7):
        steps.append(threading.Thread(target=step, args=(rank,)))
        steps[-1].start()
        time.sleep(0.02)
    gate.set()
    for t in [holder, *steps]:
        t.join(10)
    assert order == [1, 3, 5, 7, 9]


def test_copies_run_at_most_a_few_activations_ahead() -> None:
    """-j 1: at most AHEAD_PER_JOB instances are copied to and not yet activating; each
    activation that starts (or will never start) lets the next copy in, the waiting copies
    in the plan's order; giving a place back twice, or one never taken, changes nothing.
    Without the bound, every copy ran at once and the last activations came after their
    copy's shared ssh connection had ended (ControlPersist), logging in again."""
    lanes = Lanes(jobs=1, push_jobs=10)
    ahead = AHEAD_PER_JOB * 1
    copied: list[int] = []
    lock = threading.Lock()

    def copy(n: int) -> None:
        lanes.copy_ahead(f"h{n}", lambda: False, rank=n)
        with lock:
            copied.append(n)

    threads = [threading.Thread(target=copy, args=(n,)) for n in range(ahead + 3)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while len(copied) < ahead and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert sorted(copied) == list(range(ahead)), copied  # the rest wait
    lanes.activating("h1")
    lanes.activating("h1")  # again: no second place
    lanes.activating("nobody")  # never took one
    deadline = time.monotonic() + 5
    while len(copied) < ahead + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert sorted(copied) == list(range(ahead + 1)), copied  # one more, the first in the plan's order
    lanes.wake()  # the run is interrupted: the others stop waiting
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)


def test_the_bound_on_copies_ahead_grows_with_j() -> None:
    assert Lanes(jobs=10, push_jobs=2).width("ahead") == AHEAD_PER_JOB * 10
    assert Lanes(jobs=10, push_jobs=2).width("push: ssh://r1") == 2


def test_each_step_waits_in_the_lane_of_its_source() -> None:
    behind = Instance(name="www-1", system="web", store="ssh://portico")
    alone = Instance(name="db", system="db")
    assert lane_of(Kind.PUSH, instance=behind) == "push: ssh://portico"
    assert lane_of(Kind.PUSH, instance=alone) == "push: this machine"
    assert lane_of(Kind.PUSH, instance=alone, build_host="builder") == "push: build host builder"
    # an instance behind a relay substitutes from it, whoever built its system
    assert lane_of(Kind.PUSH, instance=behind, build_host="builder") == "push: ssh://portico"
    assert lane_of(Kind.STORE, relay=Relay("ssh://portico", ("web",))) == "push: this machine"
    assert lane_of(Kind.STORE, relay=Relay("ssh://b", ("web",), upstream="ssh://a")) == "push: ssh://a"
    assert lane_of(Kind.KEYS, instance=behind) == lane_of(Kind.ACTIVATE, instance=behind) == "activate"
    assert lane_of(Kind.WAVE) is None
    assert source(None, None) == "this machine"


@pytest.mark.parametrize(("jobs", "push_jobs", "tasks", "threads"),
                         [(1, 1, 50, 0), (1, None, 50, 50), (10, 1, 3, 3), (10, None, 5000, MAX_THREADS)])
def test_doit_gets_a_thread_per_task_unless_every_lane_is_one_wide(jobs: int, push_jobs: int | None, tasks: int,
                                                                  threads: int) -> None:
    assert Lanes(jobs, push_jobs).threads(tasks) == threads


def at_once(steps: list[tuple[float, float]]) -> int:
    """The most steps running at the same moment, of (start, end) pairs."""
    edges = sorted([(s, 1) for s, _ in steps] + [(e, -1) for _, e in steps], key=lambda x: (x[0], x[1]))
    busy = most = 0
    for _, delta in edges:
        busy += delta
        most = max(most, busy)
    return most


@needs_lab
def test_copies_run_push_jobs_wide_while_activations_run_j_wide(fleet_factory: Callable[..., Fleet]) -> None:
    """-j 1 --push-jobs 2, three instances behind one relay: two copies at once from the relay
    (never three), one activation at a time; today's one `-j` for both would copy one at a time."""
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=2_000_000)
    fleet.env["ROLLOUT_VARIANT"] = "v1"
    out = fleet.deploy("--json", "-j", "1", "--push-jobs", "2", "portico", "www-*")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    steps: dict[str, list[tuple[float, float]]] = {"push": [], "activate": []}
    for row in report["instances"]:
        if row["instance"] == "portico":
            continue
        for step, spans in steps.items():
            assert row["steps"][step] == "ok", row
            # the report's times are rounded to hundredths, each on its own: a step that started as
            # another ended may seem to overlap it by 0.01 s; steps that truly ran together overlap
            # by far more
            spans.append((row["started"][step], row["started"][step] + row["seconds"][step] - 0.02))
    assert len(steps["push"]) == 3 and len(steps["activate"]) == 3, report
    assert at_once(steps["push"]) == 2, steps
    assert at_once(steps["activate"]) == 1, steps


@needs_lab
def test_a_no_change_redeploy_asks_each_host_once(fleet_factory: Callable[..., Fleet]) -> None:
    """`--no build,push,activate` with nothing changed: the first question to each host (is it
    up, what does it run) also asks whether it holds the recorded result, so the `--no`
    questions need no second login round. Before, every host was asked twice."""
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=4096)
    fleet.env["ROLLOUT_VARIANT"] = "v1"
    first = fleet.deploy("--json", "portico", "www-*")
    assert first.returncode == 0, first.stderr
    again = fleet.deploy("-v", "--no-live", "--no", "build,push,activate", "portico", "www-*")
    assert again.returncode == 0, again.stderr
    asked: dict[str, int] = {}
    for command in again.stderr.split("\n$ ")[1:]:
        if "readlink /run/current-system" in command and command.startswith("ssh "):
            host = command.split(" -- ", 1)[1].split(" ", 1)[0]
            asked[host] = asked.get(host, 0) + 1
    assert asked == {"portico": 1, "www-1": 1, "www-2": 1, "www-3": 1}, again.stderr
