"""The one orchestrator both doors use: open a session (plan, lock, remotes), run its tasks
through doit with Ctrl-C and SIGTERM handled (stop starting work, wait for the running steps,
report), close it, and read the summary from the outcomes. Also `status` and `run`.

`nix-hive` calls `execute`; the doit door (hive/dodo.py) builds the same session (`from_doit`)
and lets doit run it, with `finish` as the reporter's last call.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from hive import activate, elevate, options, process, reboot, state, tasks, units
from hive.errors import InputError
from hive.evaluate import default_config, evaluate
from hive.model import Goal, Instance, Step
from hive.options import Options
from hive.outcome import Outcome, Status
from hive.plan import Kind, TaskId, make_plan
from hive.report import Progress, Row, fitting, summary_table
from hive.select import select
from hive.session import OWN_STEPS, Session, listed

TERMINATED = 128 + signal.SIGTERM  # the exit status of a run ended by SIGTERM (143, as the shell shows it)
ABANDON_WAIT = 2.0  # seconds a run that stops its steps waits for them to notice, before it reports


class Terminated(SystemExit):
    """Raised in the main thread when a terminated run stops following its running steps (a
    second SIGTERM, or --stop-timeout passed). `execute` catches it and reports; through doit,
    doit's reporter prints the summary on the way out and the process exits 143."""

    def __init__(self) -> None:
        super().__init__(TERMINATED)


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C: the run stopped following its running steps and ends without a
    summary (exit 130). Raised by `execute` once the run is closed, so that the CLI can name
    the hosts left mid-activation and what each does by itself (`Session.left_alone`)."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def lines(self) -> list[str]:
        left = self.session.left_alone()
        if not left:
            return []
        return [f"interrupted again: nix-hive stopped following {len(left)} activation(s), which go on on "
                "their hosts:", *(f"  {name}: {what or 'it keeps whatever the activation leaves'}"
                                  for name, what in left)]


class Signals:
    """Ctrl-C and SIGTERM during a run. The first stops starting new work and lets the running
    steps finish: their children are in process groups of their own, out of the terminal's
    reach; after SIGTERM (CI cancelling, systemd stopping), for at most --stop-timeout seconds.
    A second signal, or that bound, stops them: their commands are terminated, the steps that
    do not end at once are reported as stopped, and the run reports (a second Ctrl-C aborts
    without a summary, exit 130, naming the hosts it left mid-activation: `Aborted`)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._previous: dict[int, Any] = {}
        self._timers: list[threading.Timer] = []  # --stop-timeout's, and the retries of _stop
        self._over = False  # the run is closing and reporting: signals change nothing more
        self._expired = False
        self._stopping = 0.0  # when the run stopped following its steps

    def install(self) -> None:
        """Handle both signals (the main thread only can); `restore` puts the previous back."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def over(self) -> None:
        """The run is ending: what it waits for now is bounded (closing, reporting)."""
        self._over = True
        for timer in self._timers:
            timer.cancel()

    def restore(self) -> None:
        self.over()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        s = self.session
        if self._over:
            return
        if s.interrupted:
            self._stop(signum, frame)
            return
        if signum == signal.SIGTERM:
            bound = s.options.stop_timeout
            self._aside(s.progress.line, f"terminated: starting nothing more; following the running steps for up "
                                         f"to {bound} s (--stop-timeout; SIGTERM again stops them now)")
            s.interrupt("terminated")
            self._later(bound, self._expire)
        else:
            self._aside(s.progress.line, "interrupted: waiting for the running steps (Ctrl-C again to abort)")
            s.interrupt()

    def _expire(self) -> None:
        """--stop-timeout passed: the main thread gets SIGTERM again (a signal is what can
        wake it wherever it waits)."""
        self._expired = True
        self._resignal(signal.SIGTERM)

    def _resignal(self, signum: int) -> None:
        if not self._over and (main := threading.main_thread().ident) is not None:
            signal.pthread_kill(main, signum)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        """Stop the running steps' commands, and stop waiting for the steps: an exception in
        the main thread, where doit waits for them (or runs one, with -j 1). Never while that
        thread is starting or waiting for a command (hive/process.py): an exception there could
        leave the command unseen; the signal comes again a moment later instead."""
        s = self.session
        if not s.abandoned:
            if signum == signal.SIGTERM:
                why = (f"they did not end within {s.options.stop_timeout} s (--stop-timeout)" if self._expired
                       else "SIGTERM again")
                self._aside(s.progress.line, f"terminated: stopping the running steps ({why})")
            s.abandon("terminated" if signum == signal.SIGTERM else None)
            self._aside(process.terminate_children)  # the command the main thread waits for ends too
            self._stopping = time.monotonic()
        if _inside(frame, process.__file__) and time.monotonic() - self._stopping < DEFER_LIMIT:
            self._later(DEFER_STEP, self._resignal, signum)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated()

    def _later(self, seconds: float, func: Callable[..., Any], *args: Any) -> None:
        timer = threading.Timer(seconds, func, args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    @staticmethod
    def _aside(func: Callable[..., Any], *args: Any) -> None:
        """Run `func` in a thread of its own: this handler may have interrupted the main thread
        while it held the lock `func` takes (a progress line, the children's list)."""
        threading.Thread(target=func, args=args, daemon=True, name="nix-hive signal").start()


DEFER_STEP = 0.05  # seconds between two tries to stop waiting, while the main thread runs a command
DEFER_LIMIT = 5.0  # seconds after which it stops waiting wherever it is


def _inside(frame: FrameType | None, filename: str) -> bool:
    """Whether `frame` or a frame it was called from runs code of `filename`."""
    while frame is not None:
        if frame.f_code.co_filename == filename:
            return True
        frame = frame.f_back
    return False


# doit's commands that run no task (`doit list`, `doit info push:www-1`, …): loading the tasks
# then opens no connection.
DOIT_COMMANDS = frozenset({"list", "info", "help", "clean", "forget", "ignore", "dumpdb", "strace", "tabcompletion",
                           "reset-dep", "auto"})
HOST_KINDS = frozenset({Kind.STORE, Kind.PUSH, Kind.KEYS, Kind.ACTIVATE, Kind.WAVE, Kind.DEPLOY})


def doit_reaches_hosts(argv: Sequence[str]) -> bool:
    """Whether a doit command line (without the program) runs a task that talks to the hosts
    (a copy, push, keys, activation, wave or `deploy`): only then are the instances'
    connections opened first. `doit` alone builds (its default task)."""
    words = [a for a in argv if not a.startswith("-") and "=" not in a]
    if any(w in DOIT_COMMANDS for w in words):
        return False
    return any((t := TaskId.parse(w)) is not None and t.kind in HOST_KINDS for w in words)


def from_doit(variables: Mapping[str, str], *, connect: bool = True, home: Path | None = None) -> dict[str, Any]:
    """The doit door: the session that `doit` variables describe (as `nix-hive deploy`'s
    options), locked and with Ctrl-C handled, as task creators for doit's loader; with
    `connect` (a command line that reaches hosts: `doit_reaches_hosts`), every selected
    instance's connection opened first, as `nix-hive deploy` does. Without `config`, the
    deployment is the one in `home` (the dodo file's directory), else in the current
    directory. The summary is printed, and everything closed, by the reporter's last call,
    which then ends the process with nix-hive's exit status (`doit_status`)."""
    config = variables.get("config")
    if config is None and home is not None:
        config = default_config(_shown(home))
    hive = evaluate(config, options.overrides(
        [v for v in variables.get("I", "").split(",") if v], option="I="),
        options.build_host(variables.get("build_host"), "build_host="))
    targets = variables.get("targets")
    waves = select(hive, [targets] if targets else [])
    selected = sum(len(w) for w in waves)
    given = Options(skip=Step.parse_list(variables.get("no")),
                    state_file=options.state_file(variables.get("state"), hive, option="state=FILE"),
                    jobs=options.positive(variables.get("jobs", "10"), "jobs="),
                    push_jobs=_positive_or_none(variables.get("push_jobs"), "push_jobs="),
                    goal=options.goal(variables.get("goal", "switch"), "goal="),
                    keep_going=options.flag(variables.get("keep_going", "0"), "keep_going"),
                    max_failures=options.max_failures(variables.get("max_failures"), selected, "max_failures="),
                    rollback=options.flag(variables.get("rollback", "1"), "rollback"),
                    activation_timeout=_positive_or_none(variables.get("activation_timeout"), "activation_timeout="),
                    confirm_timeout=_positive_or_none(variables.get("confirm_timeout"), "confirm_timeout="),
                    eval_jobs=_positive_or_none(variables.get("eval_jobs"), "eval_jobs=") or Options().eval_jobs,
                    reboot=options.reboot_mode(variables.get("reboot"), "reboot="),
                    reboot_timeout=_positive_or_none(variables.get("reboot_timeout"), "reboot_timeout="),
                    skip_unreachable=options.flag(variables.get("skip_unreachable", "0"), "skip_unreachable"),
                    rollback_on_failure=options.flag(variables.get("rollback_on_failure", "0"),
                                                     "rollback_on_failure"),
                    ignore_inhibitors=options.flag(variables.get("ignore_inhibitors", "0"), "ignore_inhibitors"),
                    **options.deadlines(variables, doit=True))
    final = Kind.PUSH if options.flag(variables.get("push_only", "0"), "push_only") else Kind.ACTIVATE
    the_plan = make_plan(hive, waves, goal=given.goal, skip=given.skip, final=final,
                         keys=options.flag(variables.get("keys", "1"), "keys"))
    verbose = options.flag(variables.get("verbose", "0"), "verbose")
    process.set_verbose(sys.stderr if verbose else None)
    # the sudo password is asked last: every input was checked, nothing has run yet
    hive = elevate.apply(hive, variables.get("elevate"), options.flag(variables.get("ask_sudo_password", "0"),
                         "ask_sudo_password"), variables.get("sudo_password_file"), doit=True)
    session = Session(hive, the_plan, given, Progress())
    confirm = connect and options.flag(variables.get("confirm", "0"), "confirm")
    yes = options.flag(variables.get("yes", "0"), "yes")
    if confirm and not yes and not sys.stdin.isatty():
        raise InputError("confirm=1 asks on a terminal, and standard input is none: yes=1 deploys without asking")
    lock = state.Lock(session.state_file)
    if connect and (confirm or options.flag(variables.get("diff", "0"), "diff")):
        from hive import preview  # it runs deployments of its own (dry activations) through this module

        try:
            ahead = preview.ahead(Session(hive, make_plan(hive, waves, goal=given.goal, skip=given.skip,
                                                          build_only=True), given, session.progress),
                                  ask_first=confirm and not yes, width=fitting(sys.stdout))
        except BaseException:
            lock.release()
            raise
        if ahead is None:
            lock.release()
            raise SystemExit(1)
        # what the diff built is recorded: the run takes it from there (`--no build`)
        given = dataclasses.replace(given, skip=given.skip | {Step.BUILD})
        the_plan = make_plan(hive, waves, goal=given.goal, skip=given.skip, final=final,
                             keys=options.flag(variables.get("keys", "1"), "keys"))
        session = Session(hive, the_plan, given, session.progress)
    signals = Signals(session)
    signals.install()
    if connect:  # before doit builds anything (as `nix-hive deploy`)
        session.connect_all()

    def complete(raised: bool) -> None:
        signals.over()
        try:
            finish(session)
            if any(t.kind in (Kind.PUSH, Kind.ACTIVATE) for t in session.expected or ()):
                print(summary_table(rows(session), fitting(sys.stdout, verbose=verbose)), flush=True)
        finally:
            lock.release()
        if session.terminated:
            raise Terminated()  # exit status 143, after the summary (doit's own would say 0 or 1)
        # doit's own status would be 2 ("error") for any failed host: the tasks that wait for a
        # failed one (its activation, `deploy`) are not started, and doit counts that an error.
        # Not on the way out of a second Ctrl-C (KeyboardInterrupt: it ends the process, 130).
        if sys.exc_info()[1] is None:
            raise SystemExit(doit_status(session, raised))

    return tasks.namespace(session, on_complete=complete)


DOIT_ERROR = 2  # doit's status when a task raised (rather than failed): nix-hive's fault, not a host's


def doit_status(session: Session, raised: bool) -> int:
    """The exit status of a doit run, by `nix-hive deploy`'s rule (`settled_well`): 1 if a task
    doit ran failed or an instance whose last step it ran did not settle well (a failed host,
    one a gate or Ctrl-C stopped), else 0 (an instance skipped by skip_unreachable=1 included);
    2, doit's "error", if a task raised (`raised`: the reporter saw it)."""
    if raised:
        return DOIT_ERROR
    expected = session.expected if session.expected is not None else frozenset(t.id for t in session.plan.tasks)
    failed = any((o := session.outcomes.get(t)) is not None and o.status.is_failure for t in expected)
    finals = [row(session, i) for i in session.plan.instances if session.plan.final_id(i.name) in expected]
    return 1 if failed or session.interrupted or not all(settled_well(session, r) for r in finals) else 0


def _shown(directory: Path) -> Path:
    """`directory` as messages name it: relative to the current one when inside it."""
    here, directory = Path.cwd().resolve(), directory.resolve()
    return directory.relative_to(here) if directory.is_relative_to(here) else directory


def execute(session: Session, targets: Sequence[str | TaskId]) -> int:
    """Run `targets` (and what they wait for) in one doit run; doit's exit status (143 when
    SIGTERM stopped the running steps). The session is closed afterwards, whatever happens."""
    signals = Signals(session)
    signals.install()
    try:
        try:
            return tasks.run(session, tasks.namespace(session), [str(t) for t in targets])
        finally:
            signals.over()  # (a signal may still come before this line: it is caught below)
    except Terminated:
        return TERMINATED
    except KeyboardInterrupt:  # a second Ctrl-C: which hosts it left is known once `finish` below ran
        raise Aborted(session) from None
    finally:
        signals.over()
        try:
            finish(session)
        finally:
            signals.restore()


def _positive_or_none(text: str | None, option: str) -> int | None:
    return options.positive(text, option) if text is not None else None


def finish(session: Session) -> None:
    """The end of a run: wait for the steps still running (a few seconds only when the run
    stopped them: those still running then are reported as stopped), put back what a failed
    run switched (--rollback-on-failure; not after Ctrl-C or SIGTERM), mark what an interrupt
    left undone, close the shared connections (the run's ssh masters end with them)."""
    if session.abandoned:
        session.settle(ABANDON_WAIT)
    else:
        session.wait_idle()
        if not session.interrupted:
            put_back(session)
    if session.interrupted:
        for i in session.plan.instances:
            session.outcomes.set_default(session.plan.final_id(i.name), Outcome(Status.SKIPPED, session.cause))
    session.close()


def deploy(session: Session) -> tuple[int, list[Row]]:
    """Connect, build, push and (unless the plan ends at push) activate; with
    --rollback-on-failure, put back what a failed run switched. The exit status and summary."""
    session.connect_all()
    # Each instance's last step, in wave order, rather than `deploy`: doit then takes them
    # (and what they wait for) in this order, so `-j 1` pushes and activates host after host.
    execute(session, [session.plan.final_id(i.name) for i in session.plan.instances])
    found = rows(session)
    if session.terminated:
        return TERMINATED, found
    if session.interrupted:  # Ctrl-C: exit 1, even when the steps it let finish were the last ones
        return 1, found
    return (0 if all(settled_well(session, r) for r in found) else 1), found


def settled_well(session: Session, found: Row) -> bool:
    """An instance the run left as it should: done, already done, or skipped as unreachable
    because --skip-unreachable said so."""
    return found.result in (Status.OK.value, Status.UNCHANGED.value) or (
        found.result == Status.SKIPPED.value and session.skipped_unreachable(found.instance) is not None)


def run_failed(session: Session) -> str | None:
    """Why the run failed, or None: a gate closed, --max-failures passed, or (the last wave's,
    or under --keep-going) some instance failed."""
    if session.halted is not None:
        return session.halted.removeprefix("not started: ")
    failed = [i.name for i in session.plan.instances if session.instance_failure(i.name) is not None]
    return f"{listed(failed)} failed" if failed else None


def put_back(session: Session) -> None:
    """--rollback-on-failure: when the run failed, every instance it switched goes back to the
    system it ran when the run began (`Session.before`), the last wave first, -j at once.
    Each is recorded as `put-back:<instance>`: rolled back, or failed and why."""
    why = run_failed(session) if session.options.rollback_on_failure else None
    if why is None or session.options.goal is Goal.DRY_ACTIVATE:
        return
    session.progress.line(f"the run failed ({why}): putting back the instances it switched (--rollback-on-failure)")
    by_name = {i.name: i for i in session.plan.instances}

    def one(name: str) -> None:
        task, old = TaskId(Kind.UNDO, name), session.before.get(name)
        if old is None:
            session.outcomes.set(task, Outcome(Status.SKIPPED, "kept: it ran no system before this run"))
            return
        done = session.perform(task, lambda: activate.put_back(session, by_name[name], old), gated=False)
        if isinstance(done, dict):  # put back: the instance is reported rolled back, and why
            found = session.outcomes.get(task)
            session.outcomes.set(task, Outcome(Status.ROLLED_BACK, f"run failed: {why}",
                                               found.seconds if found else 0.0))

    with ThreadPoolExecutor(max_workers=session.options.jobs) as pool:
        for wave in reversed(session.plan.waves):
            switched = [i.name for i in wave if session.outcomes.status(TaskId(Kind.ACTIVATE, i.name)) is Status.OK
                        and session.before.get(i.name) != session.path_of(i.system)]
            list(pool.map(one, switched))


def build(session: Session) -> int:
    """Build every selected system (nix-hive build). 0, or 1 when a build failed."""
    code = execute(session, [TaskId(Kind.BUILD, s) for s in session.plan.systems])
    if session.terminated:
        return TERMINATED
    return 0 if code == 0 and not session.interrupted else 1


def rows(session: Session) -> list[Row]:
    return [row(session, i, n) for n, wave in enumerate(session.plan.waves, 1) for i in wave]


def row(session: Session, i: Instance, wave: int | None = None) -> Row:
    """One instance's line in the summary: its first failed or skipped step says why."""
    plan, outcomes = session.plan, session.outcomes
    steps: dict[str, TaskId] = {}
    if outcomes.get(TaskId(Kind.CONNECT, i.name)) is not None:
        steps["connect"] = TaskId(Kind.CONNECT, i.name)
    steps["build"] = TaskId(Kind.BUILD, i.system)
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
    started = {k: o.started for k, o in found.items() if o is not None and o.started is not None}
    group = next((g for g in plan.groups if i.system in g.systems), None)
    built = outcomes.get(group.id) if group is not None else None
    if built is not None and built.seconds:  # the system's share of the time: its group's nix build
        seconds["build"] = round(seconds.get("build", 0.0) + built.seconds, 2)
        if built.started is not None:
            started["build"] = min(built.started, started.get("build", built.started))
    for o in found.values():  # an activation's phases: check, confirm
        if o is not None:
            seconds.update(o.parts)
    steps_ = {k: o.status.value for k, o in found.items() if o is not None}
    path = session.path_of(i.system) or ""

    def made(result: str, reason: str) -> Row:
        return Row(i.name, i.system, path, result, reason, seconds, started, steps_,
                   wave if wave is not None else plan.wave_of(i.name))

    undone = outcomes.get(TaskId(Kind.UNDO, i.name))
    if undone is not None and undone.status is not Status.SKIPPED:  # --rollback-on-failure
        seconds["put-back"] = undone.seconds
        steps_["put-back"] = undone.status.value
        shown = undone.reason if undone.status is Status.ROLLED_BACK else f"put back: {undone.reason}"
        return made(str(undone.status), shown)
    failure = session.instance_failure(i.name)
    if failure is not None:
        task, o = failure
        own = task.target == i.name and task.kind in OWN_STEPS
        return made(str(o.status) if own else Status.FAILED.value, session.why_failed(i.name, task, o))
    for o in found.values():  # the first step not started says why
        if o is not None and o.status is Status.SKIPPED:
            return made(Status.SKIPPED.value, o.reason)
    final = found.get("activate" if plan.final is Kind.ACTIVATE else "push")
    if final is None:
        return made(Status.SKIPPED.value, "not started")
    said = session.dry_runs.get(i.name)
    if final.status is Status.OK and said is not None and "would " in said:  # --goal dry-activate
        dry = units.parse(said)
        return dataclasses.replace(made(str(final.status), dry.describe()), dry_run=dry.as_json())
    return made(str(final.status), final.reason if final.status is not Status.OK else "")


def run_json(session: Session) -> dict[str, Any]:
    """What a deploy's report says of the run beside its rows (issue 23's timeline): when it
    began, each wave's opening, each build group's and relay store's copy (seconds since the
    run began). A report without these keys is an older nix-hive's."""
    outcomes, plan = session.outcomes, session.plan

    def timed(task: TaskId) -> dict[str, Any]:
        o = outcomes.get(task)
        if o is None:
            return {"outcome": None, "started": None, "seconds": None, "reason": ""}
        return {"outcome": o.status.value, "started": o.started, "seconds": o.seconds, "reason": o.reason}

    waves = [{"wave": 1, "started": 0.0}]
    for n in range(2, len(plan.waves) + 1):
        waves.append({"wave": n, "started": timed(TaskId(Kind.WAVE, str(n)))["started"]})
    behind: dict[str, list[str]] = {}  # relay URL -> the instances that substitute from it
    for i in plan.instances:
        chain = plan.relay_chain(i)
        if chain:
            behind.setdefault(chain[0].url, []).append(i.name)
    relays = [{"store": r.url, "owner": r.owner, "upstream": r.upstream, "systems": list(r.systems),
               "instances": behind.get(r.url, []), **timed(r.id)} for r in plan.relays]
    builds = [{"systems": list(g.systems), "host": g.host, **timed(g.id)} for g in plan.groups]
    began = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(outcomes.began_at))
    return {"began": began, "seconds": round(time.monotonic() - outcomes.began, 2), "waves": waves,
            "relays": relays, "builds": builds}


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
                    "profile": found.profile, "state": state_, "reason": found.reason}

        found = [one(i) for i in session.plan.instances]
        # what each reachable host boots next (its profile) against what it booted
        needed = reboot.reboot_needed(session, {r["instance"]: r["profile"] for r in found
                                                if r["state"] != "unreachable"})
        for r in found:
            r["reboot"] = needed.get(r["instance"], "-")
    finally:
        session.close()
    bad = code != 0 or any(r["state"] == "unreachable" for r in found)
    return (1 if bad else 0), found
