"""One run of nix-hive: the plan, the options, the remotes, what has been built, and every
task's outcome so far; plus the failure policy (waves, --keep-going, --max-failures, Ctrl-C)
that decides whether a step may start. The steps (build.py, push.py, activate.py) act on it;
orchestrate.py opens and closes it."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hive import ssh
from hive.errors import HiveError, ProcessError, StepError
from hive.keys import Keys
from hive.model import Goal, Hive, Step
from hive.options import Options, default_state_file
from hive.outcome import Failure, NotStarted, Outcome, Outcomes, Status, StepFailed
from hive.plan import Kind, Plan, TaskId
from hive.process import ProcessKilledError
from hive.remote import Probe, Remotes
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
        self.remotes = Remotes(hive, plan.hubs, jobs=options.jobs)
        self.keys = Keys(hive)
        self.results: dict[str, str] = {}  # system -> store path (built, or recorded under --no build)
        self.expected: frozenset[TaskId] | None = None  # the tasks doit will run (None: all)
        self._idle = threading.Condition()
        self._running = 0
        self._active: set[TaskId] = set()  # the steps running now
        self._interrupted = False
        self._cause = "interrupted"  # why no new work starts once interrupted: Ctrl-C, or SIGTERM
        self._abandoned = False
        self._probe_lock = threading.Lock()
        self._prefetched: set[str] = set()  # hosts asked once already (see `probe`)

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
        relays), one ssh call each, jump hosts first, about every path built so far; later
        questions are answered from that, unless they name a path a host was not asked
        about. doit asks its questions one at a time: without this, a fleet's hosts would be
        asked in turn."""
        with self._probe_lock:
            if host not in self._prefetched:
                known = frozenset(self.results.values())
                hosts = {i.name for i in self.plan.instances if i.system in self.results}
                hosts |= {r.owner for r in self.plan.relays if r.owner is not None}
                hosts = (hosts | {host}) - self._prefetched
                self._prefetched |= hosts
                self.remotes.probe_all({h: known for h in sorted(hosts)})
        return self.remotes[host].probe(paths)

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

    def _stopped(self, task: TaskId) -> None:
        """Record that `task` was stopped while it ran (unless it ended meanwhile)."""
        why = f"{self._cause}: stopped while it ran"
        if task.kind is Kind.ACTIVATE:
            goes_on = "the activation goes on on the host"
            if self.options.rollback and self.options.goal in (Goal.SWITCH, Goal.TEST):
                goes_on += ", which rolls back by itself without nix-hive's confirmation"
            why += f" ({goes_on})"
        self.outcomes.set_default(task, Outcome(Status.FAILED, why))

    def failed_instances(self) -> set[str]:
        return {t.target for t in self.outcomes.failed(Kind.PUSH, Kind.ACTIVATE)}

    def stop_reason(self) -> str | None:
        """Why no new push or activation may start: interrupted (or terminated), or
        --max-failures passed."""
        if self._interrupted:
            return self._cause
        limit = self.options.max_failures
        if limit is not None and len(self.failed_instances()) > limit:
            return f"not started: more than {limit} instance(s) failed"
        return None

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

    def perform(self, task: TaskId, action: Callable[[], dict[str, Any]], *,
                gated: bool = False) -> dict[str, Any] | StepFailed | NotStarted:
        """Run one step's action and record its outcome: ok with its seconds, or a failure
        that keeps its structure. A gated step (push, activation) starts only if the policy
        allows it; no build starts once the run is interrupted."""
        with self.running(task):
            reason = self.stop_reason() if gated else None
            if task.kind is Kind.NIX_BUILD and self._interrupted:
                reason = self._cause
            if reason is not None:
                self.outcomes.set(task, Outcome(Status.SKIPPED, reason))
                self.progress.step(task.kind.shown, task.target, str(Status.SKIPPED), reason)
                return NotStarted(reason)
            start = time.monotonic()
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
                cause = f"{self._cause}: stopped while it ran ({exc})" if stopped else str(exc)
                failure = Failure(task, cause, output)
                seconds = round(time.monotonic() - start, 2)
                self.outcomes.set(task, Outcome(status, cause, seconds, failure, parts))
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
            if task.kind is not Kind.NIX_BUILD:  # each system's build says ok (or failed) itself
                self.progress.step(task.kind.shown, task.target, str(Status.OK), f"{seconds:.1f}s {note}".rstrip())
            return values

    def close(self) -> None:
        """Close shared connections and remove the run's temporary files. When the run
        stopped following steps that may still start ssh calls (an activation's follower
        polls the host), none of those may become a shared connection of its own meanwhile
        (it would outlive the run by ControlPersist): the configuration says so first."""
        if self._abandoned:
            with contextlib.suppress(OSError, HiveError):
                setup = self.remotes.setup
                for config in [setup.config, *setup.directory.glob("h/*.config")]:
                    text = config.read_text()
                    tmp = config.with_name(config.name + ".closing")
                    tmp.write_text("# The run is closing: no new shared connection.\nHost *\n  ControlMaster no\n\n"
                                   + text)
                    os.replace(tmp, config)
        self.remotes.close()


def open_wave(session: Session, number: int) -> dict[str, Any] | NotStarted:
    """The action of `wave:<number>`: wait for the previous wave to settle, then start
    this one unless it failed (and not --keep-going), --max-failures was passed, or the
    run was interrupted. doit runs it in a worker thread when tasks run in parallel; in
    doit's own thread (serial run) every earlier task has already run."""
    previous = number - 1
    if threading.current_thread() is not threading.main_thread():
        session.outcomes.wait_for(lambda: session.interrupted or session.wave_settled(previous))
    reason = session.stop_reason()
    wave = session.plan.waves[previous - 1]
    statuses = {i.name: session.outcomes.status(session.plan.final_id(i.name)) for i in wave}
    failed = sorted(name for name, found in statuses.items() if found is not None and found.is_failure)
    if reason is None and failed and not session.options.keep_going:
        names = ", ".join(failed[:3]) + (", ..." if len(failed) > 3 else "")
        reason = f"not started: wave {previous} failed ({names})"
    if reason is None and not session.wave_settled(previous):
        reason = f"not started: wave {previous} did not run first"
    task = TaskId(Kind.WAVE, str(number))
    if reason is not None:
        session.outcomes.set(task, Outcome(Status.SKIPPED, reason))
        return NotStarted(reason)
    session.outcomes.set(task, Outcome(Status.OK))
    session.progress.line(f"wave {number}/{len(session.plan.waves)}: {len(session.plan.waves[number - 1])} instance(s)")
    return {}
