"""The one orchestrator both doors use: open a session (plan, lock, remotes), run its tasks
through doit with Ctrl-C handled (stop starting work, wait for the running steps, report),
close it, and read the summary from the outcomes. Also `status` and `run`.

`nix-hive` calls `execute`; `dodo.py` builds the same session (`from_doit`) and lets doit run
it, with `finish` as the reporter's last call.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

from hive import options, process, state, tasks
from hive.evaluate import evaluate
from hive.model import Instance, Step
from hive.options import Options
from hive.outcome import Outcome, Status
from hive.plan import Kind, TaskId, make_plan
from hive.report import Progress, Row, summary_table
from hive.select import select
from hive.session import Session


def catch_ctrl_c(session: Session) -> Any:
    """The first Ctrl-C stops starting new work (the running steps finish: their children
    are in process groups of their own, out of the terminal's reach); a second one aborts.
    Returns the previous handler."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if session.interrupted:  # the second: stop the running steps' commands too
            process.terminate_children()
            raise KeyboardInterrupt
        session.progress.line("interrupted: waiting for the running steps (Ctrl-C again to abort)")
        session.interrupt()

    return signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def ctrl_c(session: Session) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = catch_ctrl_c(session)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def from_doit(variables: Mapping[str, str]) -> dict[str, Any]:
    """The doit door: the session that `doit` variables describe (as `nix-hive deploy`'s
    options), locked and with Ctrl-C handled, as task creators for doit's loader. The summary
    is printed, and everything closed, by the reporter's last call."""
    hive = evaluate(variables.get("config"), options.overrides(
        [v for v in variables.get("I", "").split(",") if v], option="I="),
        options.build_host(variables.get("build_host"), "build_host="))
    targets = variables.get("targets")
    waves = select(hive, [targets] if targets else [])
    selected = sum(len(w) for w in waves)
    given = Options(skip=Step.parse_list(variables.get("no")),
                    state_file=options.state_file(variables.get("state"), hive, option="state=FILE"),
                    jobs=options.positive(variables.get("jobs", "10"), "jobs="),
                    goal=options.goal(variables.get("goal", "switch"), "goal="),
                    keep_going=options.flag(variables.get("keep_going", "0"), "keep_going"),
                    max_failures=options.max_failures(variables.get("max_failures"), selected, "max_failures="),
                    rollback=options.flag(variables.get("rollback", "1"), "rollback"),
                    activation_timeout=_positive_or_none(variables.get("activation_timeout"), "activation_timeout="),
                    confirm_timeout=_positive_or_none(variables.get("confirm_timeout"), "confirm_timeout="),
                    eval_jobs=_positive_or_none(variables.get("eval_jobs"), "eval_jobs=") or Options().eval_jobs)
    final = Kind.PUSH if options.flag(variables.get("push_only", "0"), "push_only") else Kind.ACTIVATE
    the_plan = make_plan(hive, waves, goal=given.goal, skip=given.skip, final=final,
                         keys=options.flag(variables.get("keys", "1"), "keys"))
    process.set_verbose(sys.stderr if options.flag(variables.get("verbose", "0"), "verbose") else None)
    session = Session(hive, the_plan, given, Progress())
    lock = state.Lock(session.state_file)
    catch_ctrl_c(session)

    def complete() -> None:
        try:
            finish(session)
            if any(t.kind in (Kind.PUSH, Kind.ACTIVATE) for t in session.expected or ()):
                print(summary_table(rows(session)))
        finally:
            lock.release()

    return tasks.namespace(session, on_complete=complete)


def execute(session: Session, targets: Sequence[str | TaskId]) -> int:
    """Run `targets` (and what they wait for) in one doit run; doit's exit status. The
    session is closed afterwards, whatever happens."""
    try:
        with ctrl_c(session):
            return tasks.run(session, tasks.namespace(session), [str(t) for t in targets])
    finally:
        finish(session)


def _positive_or_none(text: str | None, option: str) -> int | None:
    return options.positive(text, option) if text is not None else None


def finish(session: Session) -> None:
    """The end of a run: wait for the steps still running, mark what an interrupt left
    undone, close the shared connections."""
    session.wait_idle()
    if session.interrupted:
        for i in session.plan.instances:
            session.outcomes.set_default(session.plan.final_id(i.name), Outcome(Status.SKIPPED, "interrupted"))
    session.close()


def deploy(session: Session) -> tuple[int, list[Row]]:
    """Build, push and (unless the plan ends at push) activate. The exit status and summary."""
    # Each instance's last step, in wave order, rather than `deploy`: doit then takes them
    # (and what they wait for) in this order, so `-j 1` pushes and activates host after host.
    execute(session, [session.plan.final_id(i.name) for i in session.plan.instances])
    found = rows(session)
    return (0 if all(r.result in (Status.OK.value, Status.UNCHANGED.value) for r in found) else 1), found


def build(session: Session) -> int:
    """Build every selected system (nix-hive build). 0, or 1 when a build failed."""
    code = execute(session, [TaskId(Kind.BUILD, s) for s in session.plan.systems])
    return 0 if code == 0 else 1


def rows(session: Session) -> list[Row]:
    return [row(session, i) for i in session.plan.instances]


def row(session: Session, i: Instance) -> Row:
    """One instance's line in the summary: its first failed or skipped step says why."""
    plan, outcomes = session.plan, session.outcomes
    steps: dict[str, TaskId] = {"build": TaskId(Kind.BUILD, i.system)}
    relays = plan.relay_chain(i)
    if relays:
        steps["store"] = relays[0].id
    steps["push"] = TaskId(Kind.PUSH, i.name)
    if plan.final is Kind.ACTIVATE and plan.keys and i.keys:
        steps["keys"] = TaskId(Kind.KEYS, i.name)
    if plan.final is Kind.ACTIVATE:
        steps["activate"] = TaskId(Kind.ACTIVATE, i.name)
    found = {k: outcomes.get(t) for k, t in steps.items()}
    seconds = {k: o.seconds for k, o in found.items() if o is not None and o.seconds}
    group = next((g for g in plan.groups if i.system in g.systems), None)
    built = outcomes.get(group.id) if group is not None else None
    if built is not None and built.seconds:  # the system's share of the time: its group's nix build
        seconds["build"] = round(seconds.get("build", 0.0) + built.seconds, 2)
    for o in found.values():  # an activation's phases: check, confirm
        if o is not None:
            seconds.update(o.parts)
    path = session.path_of(i.system) or ""
    for key, o in found.items():
        if o is not None and o.status.is_failure:
            if key in ("build", "store"):
                target = i.system if key == "build" else relays[0].url
                return Row(i.name, i.system, path, Status.SKIPPED.value, f"{key} of {target} failed: {o.reason}",
                           seconds)
            return Row(i.name, i.system, path, o.status.value, f"{key}: {o.reason}", seconds)
    for o in found.values():  # the first step not started says why
        if o is not None and o.status is Status.SKIPPED:
            return Row(i.name, i.system, path, Status.SKIPPED.value, o.reason, seconds)
    final = found.get("activate" if plan.final is Kind.ACTIVATE else "push")
    if final is None:
        return Row(i.name, i.system, path, Status.SKIPPED.value, "not started", seconds)
    return Row(i.name, i.system, path, str(final.status), final.reason if final.status is not Status.OK else "",
               seconds)


def status(session: Session) -> tuple[int, list[dict[str, Any]]]:
    """Each selected host's current system against the one the hive builds now."""
    code = build(session)
    try:
        probes = session.remotes.probe_all({i.name: frozenset() for i in session.plan.instances})

        def one(i: Instance) -> dict[str, Any]:
            expected, found = session.path_of(i.system), probes[i.name]
            if not found.reachable:
                state_ = "unreachable"
            elif found.current is None:
                state_ = "not activated"
            else:
                state_ = "up to date" if found.current == expected else "differs"
            return {"instance": i.name, "system": i.system, "expected": expected, "current": found.current,
                    "profile": found.profile, "state": state_}

        found = [one(i) for i in session.plan.instances]
    finally:
        session.close()
    bad = code != 0 or any(r["state"] == "unreachable" for r in found)
    return (1 if bad else 0), found
