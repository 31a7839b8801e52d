"""One run of nix-hive: the plan, the options, the remotes, what has been built, and every
task's outcome so far; plus the failure policy (waves, --keep-going, --max-failures, Ctrl-C)
that decides whether a step may start. The steps (build.py, push.py, activate.py) act on it;
orchestrate.py opens and closes it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from hive import process, ssh, state
from hive.address import parse_proxy_jump
from hive.errors import HiveError, ProcessError, StepError
from hive.keys import Keys
from hive.lanes import Lanes
from hive.model import Goal, Hive, Instance, Step
from hive.options import Options, default_state_file
from hive.outcome import Failure, NotStarted, Outcome, Outcomes, Status, StepFailed
from hive.plan import Kind, Plan, TaskId
from hive.process import ProcessKilledError
from hive.remote import Answer, Probe, Remotes, hop_unreachable
from hive.report import Progress


class Session:
    """A run: the work to do and what has been done."""

    def __init__(self, hive: Hive, plan: Plan, options: Options, progress: Progress | None = None) -> None:
        self.hive = hive
        self.plan = plan
        self.options = options
        self.progress = progress or Progress()
        self.outcomes = Outcomes()
        self.state_file = options.state_file or default_state_file(hive)
        self.gcroots = self.state_file.with_name(self.state_file.name + ".d") / "gcroots"
        ssh.set_connect_timeout(options.connect_timeout)  # before the run's ssh_config is written
        process.allow_open_files()
        self.remotes = Remotes(hive, plan.hubs, jobs=options.jobs)
        self.keys = Keys(hive)
        self.lanes = Lanes(options.jobs, options.push_jobs)
        self.results: dict[str, str] = {}  # system -> store path (built, or recorded under --no build)
        self.dry_runs: dict[str, str] = {}  # instance -> what its dry activation printed (--goal dry-activate)
        self.expected: frozenset[TaskId] | None = None  # the tasks doit will run (None: all)
        self._idle = threading.Condition()
        self._running = 0
        self._active: set[TaskId] = set()  # the steps running now
        self._interrupted = False
        self._cause = "interrupted"  # why no new work starts once interrupted: Ctrl-C, or SIGTERM
        self._abandoned = False
        self._probe_lock = threading.Lock()
        self._prefetched: set[str] = set()  # hosts asked once already (see `probe`)
        # instance_failure's index: each instance's tasks, and each task -> the instances that need it
        self._instances = {i.name: i for i in plan.instances}
        self._tasks_of = {i.name: plan.instance_tasks(i) for i in plan.instances}
        self._needed_by: dict[TaskId, list[str]] = {}
        for name, needs in self._tasks_of.items():
            for t in needs:
                self._needed_by.setdefault(t, []).append(name)
        self.blocked: dict[str, str] = {}  # instance -> why none of its steps starts (connect_all)
        self.before: dict[str, str] = {}  # instance -> the system it ran when the run began (connect_all)
        self.halted: str | None = None  # why the run stopped starting waves (a gate closed, --max-failures)
        # each activation's word on what its host does by itself (`on_its_own`), and the
        # activations the run stopped following, with the reason that says so (`left_alone`)
        self._on_its_own: dict[TaskId, Callable[[], str]] = {}
        self._left: dict[TaskId, str] = {}

    # -- results ---------------------------------------------------------------------------

    def path_of(self, system: str) -> str | None:
        return self.results.get(system)

    def need_path(self, system: str) -> str:
        path = self.results.get(system)
        if path is None:
            raise HiveError(f"system {system} has no build result")
        return path

    def skips(self, step: Step) -> bool:
        return step in self.options.skip

    # -- asking the hosts ------------------------------------------------------------------

    def probe(self, host: str, paths: Iterable[str] = ()) -> Probe:
        """What `host` has and runs (`--no push/activate`). A question about a host not asked
        yet asks every such host of the run at once (those whose system is built, and the
        relays), one ssh call each, jump hosts first, about the paths it should hold (`_wants`);
        later questions are answered from that, unless they name a path a host was not asked
        about. doit asks its questions one at a time: without this, a fleet's hosts would be
        asked in turn."""
        with self._probe_lock:
            if host not in self._prefetched:
                hosts = {i.name for i in self.plan.instances if i.system in self.results}
                hosts |= {r.owner for r in self.plan.relays if r.owner is not None}
                hosts = (hosts | {host}) - self._prefetched
                self._prefetched |= hosts
                self.remotes.probe_all({h: self._wants(h, self.results) for h in sorted(hosts)})
        return self.remotes[host].probe(paths)

    def _wants(self, host: str, results: dict[str, str]) -> frozenset[str]:
        """The paths of `results` (system -> path) that `host` should hold: its own system's,
        and, for a relay store's host, those of the systems the relay serves."""
        systems = {self._instances[host].system} if host in self._instances else set()
        systems |= {name for r in self.plan.relays if r.owner == host for name in r.systems}
        return frozenset(results[name] for name in systems if name in results)

    # -- policy ----------------------------------------------------------------------------

    def warn_unsigned(self) -> None:
        if self.hive.signing_key is None and any(i.store for i in self.plan.instances):
            self.progress.line("warning: no signingKey: instances behind a relay take its paths only if they "
                               "trust them otherwise; if not, the deployer sends them the closure itself")

    def interrupt(self, cause: str = "interrupted") -> None:
        """Ctrl-C (or SIGTERM: `cause` "terminated"): start nothing more; the steps already
        running finish."""
        if not self._interrupted:
            self._cause = cause
        self._interrupted = True
        self.outcomes.poke()
        self.lanes.wake()

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    @property
    def cause(self) -> str:
        """Why the run stops early: "interrupted" (Ctrl-C) or "terminated" (SIGTERM)."""
        return self._cause

    @property
    def terminated(self) -> bool:
        return self._interrupted and self._cause.startswith("terminated")

    def abandon(self, cause: str | None = None) -> None:
        """The run stops following its running steps (a second Ctrl-C or SIGTERM, or the
        --stop-timeout passed): their commands are being stopped, and a step still running
        when the run ends is reported as stopped (`settle`). `cause`: why, if not the
        interruption's (SIGTERM after Ctrl-C: "terminated")."""
        if cause is not None or not self._interrupted:
            self._cause = cause or self._cause
        self._interrupted = True
        self._abandoned = True
        self.outcomes.poke()
        self.lanes.wake()

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def settle(self, wait: float) -> None:
        """An abandoned run's end: wait up to `wait` seconds for the running steps (their
        commands were stopped), then report each one still running as stopped."""
        self.wait_idle(timeout=wait)
        with self._idle:
            active = list(self._active)
        for task in active:
            self._stopped(task)

    def _stopped(self, task: TaskId, outcome: Outcome | None = None) -> None:
        """Record that `task` was stopped while it ran: as `outcome`, else (unless it ended
        meanwhile) as failed, and why (`_stopped_why`). An activation so stopped goes on on its
        host: `left_alone` names it."""
        if outcome is None:
            outcome = Outcome(Status.FAILED, self._stopped_why(task))
            self.outcomes.set_default(task, outcome)
        else:
            self.outcomes.set(task, outcome)
        if task.kind is Kind.ACTIVATE:
            self._left[task] = outcome.reason

    def _stopped_why(self, task: TaskId, detail: str = "") -> str:
        """Why `task` failed, stopped while it ran: an activation says what its host does by
        itself (it goes on there), another step what stopped it (`detail`)."""
        why = f"{self._cause}: stopped while it ran"
        if task.kind is Kind.ACTIVATE:
            alone = self.by_itself(task)
            detail = f"the activation goes on on the host{': ' + alone if alone else ''}"
        return f"{why} ({detail})" if detail else why

    def on_its_own(self, task: TaskId, says: Callable[[], str]) -> None:
        """Activation `task` tells what its host does by itself, from the host's last word
        (activate.py), should the run stop following it."""
        self._on_its_own[task] = says

    def by_itself(self, task: TaskId) -> str:
        """What the host of activation `task` does by itself, the run no longer following it."""
        says = self._on_its_own.get(task)
        if says is not None:
            return says()
        if self.options.rollback and self.options.goal in (Goal.SWITCH, Goal.TEST):
            return "it rolls back by itself without nix-hive's confirmation"
        return ""

    def left_alone(self) -> list[tuple[str, str]]:
        """The activations this run stopped following while they ran (a second Ctrl-C or
        SIGTERM, --stop-timeout), which go on on their hosts: each instance, and what its host
        does by itself."""
        return [(task.target, self.by_itself(task)) for task, reason in list(self._left.items())
                if (found := self.outcomes.get(task)) is not None and found.reason == reason]

    # The one rule of every gate (the wave gate, --max-failures, the summary, --json, the exit
    # status): an instance failed when a task it needs failed (Plan.instance_tasks: its
    # connection, its build, its relays' copies, its push, keys, activation); being skipped
    # because of that is failing.

    def instance_failure(self, name: str) -> tuple[TaskId, Outcome] | None:
        """The first task `name` needs that failed, with its outcome; None if none did."""
        for task in self._tasks_of[name]:
            found = self.outcomes.get(task)
            if found is not None and found.status.is_failure:
                return task, found
        return None

    def failed_instances(self) -> set[str]:
        """Every instance that failed so far (`instance_failure`'s rule), from the failed tasks."""
        return {name for t in self.outcomes.failed() for name in self._needed_by.get(t, ())}

    def stop_reason(self) -> str | None:
        """Why no new push or activation may start: interrupted (or terminated), or
        --max-failures passed."""
        if self._interrupted:
            return self._cause
        reason = gate(None, [], len(self.failed_instances()), self.options)
        if reason is not None and self.halted is None:
            self.halted = reason
        return reason

    def connect_all(self) -> None:
        """Before any work (deploy, push, reboot): every selected instance's connection, and
        its relay hosts', opened at once (each within --connect-timeout: ssh's ConnectTimeout
        per hop, and the question it asks), so that an unreachable host is known before
        anything is built. It fails its instance (`connect:<host>`), and the gates apply at
        once: a wave that failed (unless --keep-going) or more than --max-failures failed
        instances block what would not start anyway, so nothing is built for them. With
        --skip-unreachable such an instance is skipped instead and fails nothing. What each
        host runs now is kept (`before`: what --rollback-on-failure puts back)."""
        plan, options = self.plan, self.options
        names = [i.name for i in plan.instances]
        names += sorted(({r.owner for r in plan.relays if r.owner is not None}
                         | {hop for i in plan.instances for hop in _jumps(i) if hop in self.hive.instances})
                        - set(names))
        # the hosts the run works on first keep the connection it opened, so that their steps log in
        # no more; not every host: an idle shared connection ends after ControlPersist (60 s),
        # before the turn of hosts far down the plan, and each holds two ssh processes meanwhile.
        # Under `--no push,activate` (a re-run after a failure, a redeploy of what is there) a host
        # most likely needs nothing after this question: only those with keys to upload keep it
        # (a kept connection costs ssh processes and its closing: a no-change redeploy of 100 hosts
        # took 1.63 x the bare logins on trixie); a host that does need a step logs in again
        if self.skips(Step.PUSH) and self.skips(Step.ACTIVATE):
            keyed = {i.name for i in plan.instances if plan.keys and i.keys}
            keep = [n for n in names if n in keyed][:max(options.jobs, KEPT_CONNECTIONS)]
        else:
            keep = names[:max(options.jobs, KEPT_CONNECTIONS)]
        # ssh's ConnectTimeout bounds each hop's connection; this bounds the whole question
        bound = 2 * (options.connect_timeout or int(ssh.DEFAULTS["ConnectTimeout"])) + 5
        started = time.monotonic()
        # under --no build, the results the state file holds are most likely this run's: asked
        # about now, the `--no push/activate` questions are answered without asking again
        likely = (state.recorded_results(self.state_file, {i.system for i in plan.instances})
                  if self.skips(Step.BUILD) else {})
        found = self.remotes.probe_all({n: self._wants(n, likely) for n in names}, keep=keep,
                                       width=max(options.jobs, 32), timeout=bound)
        seconds = round(time.monotonic() - started, 2)
        for name in names:
            probe, task = found[name], TaskId(Kind.CONNECT, name)
            if probe.reachable:
                self.outcomes.set(task, Outcome(Status.OK, seconds=seconds))
                if probe.current is not None:
                    self.before[name] = probe.current
                continue
            hop = self.unreachable_why(name, found)
            why = f"unreachable: {hop}"
            status = Status.SKIPPED if options.skip_unreachable else Status.FAILED
            self.outcomes.set(task, Outcome(status, why, seconds, Failure(task, why) if status.is_failure else None))
            self.progress.step("connect", name, str(status), hop)
        failures = len(self.failed_instances())
        stopped = gate(None, [], failures, options)
        for number, wave in enumerate(plan.waves, 1):
            failed_here = []
            for i in wave:
                failed = self.instance_failure(i.name)
                if failed is not None:
                    failed_here.append(i.name)
                    self.blocked[i.name] = self.why_failed(i.name, *failed)
                elif (skipped := self.skipped_unreachable(i.name)) is not None or stopped is not None:
                    self.blocked[i.name] = skipped or stopped or ""
            stopped = stopped or gate(number, failed_here, failures, options)
        if stopped is not None:
            self.halted = stopped
            later = sum(1 for i in plan.instances if self.blocked.get(i.name) == stopped)
            if later:
                self.progress.line(f"{stopped.removeprefix('not started: ')}: {later} instance(s) will not start, "
                                   "and nothing is built or copied for them")

    def unreachable_why(self, name: str, found: Mapping[str, Answer]) -> str:
        """Why `name` could not be reached (`found`: what each host asked said), naming the hop:
        its jump host, when that one could not be reached itself, or the jump hosts it was
        tried through."""
        instance = self.hive.instances.get(name)
        hops = _jumps(instance) if instance is not None else []
        down = next((hop for hop in hops if hop in found and not found[hop].reachable), None)
        if down is not None:
            return hop_unreachable(down, found[down].reason)
        reason = found[name].reason
        named = reason.startswith(("its host key", "its jump host"))  # by itself: the hop's own, or not the path's
        return f"{reason} (through {', '.join(hops)})" if hops and not named else reason

    def skipped_unreachable(self, name: str) -> str | None:
        """Why `name` is skipped as unreachable (--skip-unreachable: it, or a relay host it needs)."""
        for task in self._tasks_of[name]:
            found = self.outcomes.get(task) if task.kind is Kind.CONNECT else None
            if found is not None and found.status is Status.SKIPPED:
                return self.why_failed(name, task, found)
        return None

    def why_failed(self, name: str, task: TaskId, outcome: Outcome) -> str:
        """What the summary says of instance `name` whose needed `task` ended as `outcome`
        (`instance_failure`): its own step by name, another's by what it was."""
        if task.target == name and task.kind in OWN_STEPS:
            return outcome.reason if task.kind is Kind.CONNECT else f"{task.kind.value}: {outcome.reason}"
        if task.kind is Kind.CONNECT:
            return f"relay host {task.target} {outcome.reason}"
        if task.kind is Kind.BUILD:
            return f"build of {task.target} failed: {outcome.reason}"
        if task.kind is Kind.NIX_BUILD:  # a group's one build: named by this instance's system if it is one
            system = self._instances[name].system
            group = next((g.systems for g in self.plan.groups if g.id == task), ())
            return f"build of {system if system in group else task.target} failed: {outcome.reason}"
        if task.kind is Kind.STORE:
            relay = next((r for r in self.plan.relays if r.id == task), None)
            return f"store of {relay.url if relay else task.target} failed: {outcome.reason}"
        return f"{task.kind.value} of {task.target} failed: {outcome.reason}"

    def activates(self, name: str) -> bool:
        """This run will try to activate instance `name` (its copy then runs at most so far
        ahead of activations: hive/lanes.py)."""
        task = TaskId(Kind.ACTIVATE, name)
        return task in self.expected if self.expected is not None else self.plan.final is Kind.ACTIVATE

    def settled(self, task: TaskId) -> None:
        """doit settled `task` itself (up to date, or not started because a step it waits for
        failed): an activation that will not start gives its copy's place ahead back."""
        if task.kind is Kind.ACTIVATE:
            self.lanes.activating(task.target)

    def block(self, task: TaskId) -> NotStarted:
        """The action of a step of a blocked instance (`connect_all`): not started, and why."""
        reason = self.blocked[task.target]
        self.outcomes.set_default(task, Outcome(Status.SKIPPED, reason))
        return NotStarted(reason)

    def wave_settled(self, number: int) -> bool:
        """Every instance of wave `number` that this run will attempt has an outcome."""
        finals = [self.plan.final_id(i.name) for i in self.plan.waves[number - 1]]
        return all(self.outcomes.get(t) is not None for t in finals if self.expected is None or t in self.expected)

    # -- running steps ---------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self, task: TaskId | None = None) -> Iterator[None]:
        """Counts the steps in progress (and names them), so an interrupted run can wait for
        them, and an abandoned one report those it stopped following."""
        with self._idle:
            self._running += 1
            if task is not None:
                self._active.add(task)
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                if task is not None:
                    self._active.discard(task)
                self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0, timeout=timeout)

    def perform(self, task: TaskId, action: Callable[[], dict[str, Any]], *, gated: bool = False,
                lane: str | None = None, rank: int = 0) -> dict[str, Any] | StepFailed | NotStarted:
        """Run one step's action and record its outcome: ok with its seconds, or a failure
        that keeps its structure. The step first waits for a slot of its `lane` (hive/lanes.py),
        the waiting steps taking them in the order of their `rank` (the plan's).
        A gated step (push, activation) starts only if the policy allows it; no build starts
        once the run is interrupted."""
        with self._slots(task, lane, rank), self.running(task):
            reason = self.stop_reason() if gated else None
            if task.kind is Kind.NIX_BUILD and self._interrupted:
                reason = self._cause
            if reason is not None:
                self.outcomes.set(task, Outcome(Status.SKIPPED, reason))
                self.progress.step(task.kind.shown, task.target, str(Status.SKIPPED), reason)
                return NotStarted(reason)
            start = time.monotonic()
            if task.kind is not Kind.BUILD:  # a system's result: its group's build was the work
                self.progress.started(task.kind.shown, task.target)
            if task.kind in (Kind.NIX_BUILD, Kind.STORE):
                self.progress.step(task.kind.shown, task.target, "...")
            try:
                values = action()
            except HiveError as exc:
                output = exc.stderr if isinstance(exc, ProcessError) else ""
                output = exc.log if isinstance(exc, StepError) else output
                status = Status(exc.status) if isinstance(exc, StepError) else Status.FAILED
                parts = exc.seconds if isinstance(exc, StepError) else {}
                stopped = self._abandoned and isinstance(exc, ProcessKilledError)  # by terminate_children
                cause = self._stopped_why(task, str(exc)) if stopped else str(exc)
                failure = Failure(task, cause, output)
                seconds = round(time.monotonic() - start, 2)
                outcome = Outcome(status, cause, seconds, failure, parts)
                if stopped:
                    self._stopped(task, outcome)
                else:
                    self.outcomes.set(task, outcome)
                self.progress.step(task.kind.shown, task.target, str(status), cause)
                self.progress.block(output)
                return StepFailed(failure)
            except BaseException:  # abandoned while it ran in this very thread (doit's -j 1)
                if self._abandoned:
                    self._stopped(task)
                raise
            seconds = round(time.monotonic() - start, 2)
            note = str(values.pop("note", ""))
            parts = values.pop("seconds", {})
            self.outcomes.set(task, Outcome(Status.OK, note, seconds, parts=parts))
            # A build group says ok once, with its time (`build a+b ok 0.4s`), and a system of it
            # only if it failed (above): recording a system's result takes no time worth a line.
            if task.kind is not Kind.BUILD:
                self.progress.step(task.kind.shown, task.target, str(Status.OK), f"{seconds:.1f}s {note}".rstrip())
            return values

    @contextlib.contextmanager
    def _slots(self, task: TaskId, lane: str | None, rank: int) -> Iterator[None]:
        """A slot of the step's lane; then, for a copy to an instance this run activates, its
        place among the copies ahead of activations (taken holding the copy's slot, so that
        the places go to copies of every relay, not to the many waiting for one relay's
        lane); an activation gives its copy's place back as it starts."""
        stop = lambda: self._interrupted  # noqa: E731
        with self.lanes.slot(lane, stop, rank):
            if task.kind is Kind.PUSH and self.activates(task.target):
                self.lanes.copy_ahead(task.target, stop, rank)
            elif task.kind is Kind.ACTIVATE:
                self.lanes.activating(task.target)
            yield

    def close(self) -> None:
        """Close shared connections and remove the run's temporary files. When the run
        stopped following steps that may still start ssh calls (an activation's follower
        polls the host), none of those may become a shared connection of its own meanwhile
        (it would outlive the run by ControlPersist): the configuration says so first."""
        if self._abandoned:
            with contextlib.suppress(OSError, HiveError):
                self.remotes.setup.stop_sharing()
        self.remotes.close()


KEPT_CONNECTIONS = 100  # connect_all's connections left open for the steps that follow (at least -j)


def _jumps(instance: Instance) -> list[str]:
    """The jump hosts an instance is reached through (its ProxyJump), in order."""
    jump = instance.ssh.get("ProxyJump")
    return [hop.host for hop in parse_proxy_jump(jump)] if jump else []


OWN_STEPS = frozenset({Kind.CONNECT, Kind.PUSH, Kind.KEYS, Kind.ACTIVATE, Kind.UNDO})  # an instance's own tasks


def gate(wave: int | None, failed: list[str], failures: int, options: Options) -> str | None:
    """Why what comes after `wave` may not start (None: it may): more than --max-failures
    instances failed in all (`failures`), or some of this wave did (`failed`, by
    `Session.instance_failure`'s rule), unless --keep-going. Every wave gate asks this: a
    deploy's, a reboot's, a rollback's."""
    limit = options.max_failures
    if limit is not None and failures > limit:
        return f"not started: more than {limit} instance(s) failed"
    if wave is not None and failed and not options.keep_going:
        return f"not started: wave {wave} failed ({listed(failed)})"
    return None


def listed(names: list[str]) -> str:
    """Instances named in a reason: the first three, then `...`."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def open_wave(session: Session, number: int) -> dict[str, Any] | NotStarted:
    """The action of `wave:<number>`: wait for the previous wave to settle, then start
    this one unless it failed (and not --keep-going), --max-failures was passed, or the
    run was interrupted. doit runs it in a worker thread when tasks run in parallel; in
    doit's own thread (serial run) every earlier task has already run."""
    previous = number - 1
    if threading.current_thread() is not threading.main_thread():
        session.outcomes.wait_for(lambda: session.interrupted or session.wave_settled(previous))
    reason = session.stop_reason()
    failed = sorted(i.name for i in session.plan.waves[previous - 1] if session.instance_failure(i.name) is not None)
    if reason is None:
        reason = gate(previous, failed, len(session.failed_instances()), session.options)
        if reason is not None:
            session.halted = reason
    if reason is None and not session.wave_settled(previous):
        reason = f"not started: wave {previous} did not run first"
    task = TaskId(Kind.WAVE, str(number))
    if reason is not None:
        session.outcomes.set(task, Outcome(Status.SKIPPED, reason))
        return NotStarted(reason)
    session.outcomes.set(task, Outcome(Status.OK))
    session.progress.line(f"wave {number}/{len(session.plan.waves)}: {len(session.plan.waves[number - 1])} instance(s)")
    return {}
