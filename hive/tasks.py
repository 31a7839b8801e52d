"""The plan as doit tasks, doit's reporter, and the one way nix-hive runs doit.

`namespace()` turns a session's plan into task creators for doit's loader; `dodo.py` and the
`nix-hive` command both run that namespace, in one doit run, with the same configuration
(threads, `continue`: the failure policy is the plan's `wave:<n>` tasks, not doit's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from doit import doit_cmd
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.exceptions import TaskFailed, UnmetDependency
from doit.tools import config_changed

from hive.activate import activate, is_active, upload_keys
from hive.build import Builds
from hive.evaluate import input_files
from hive.lanes import lane_of
from hive.model import Step
from hive.outcome import NotStarted, Outcome, Status, StepFailed
from hive.plan import Kind, PlannedTask, TaskId
from hive.push import Pushes
from hive.reboot import reboot_into
from hive.runner import install as install_runner
from hive.session import Session, open_wave

BACKEND = {"hive": "hive.state:JournalDB"}
# Actions print nothing; without this doit swaps sys.stdout and sys.stderr around each action,
# which from several threads at once can leave a capture buffer in place of the real stream.
NO_CAPTURE = {"capture": False}


class Steps:
    """Each kind of task's action and up-to-date check, for one session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.builds = Builds(session)
        self.pushes = Pushes(session)
        self.instances = {i.name: i for i in session.plan.instances}
        self.rank = {t.id: n for n, t in enumerate(session.plan.tasks)}  # a lane's waiting steps go in this order

    def action(self, task: TaskId) -> Callable[[], Any] | None:
        s, t = self.session, task.target
        if task.kind is Kind.NIX_BUILD:
            group = next(g for g in s.plan.groups if g.id == task)
            return lambda: s.perform(task, lambda: self.builds.build_group(group), lane=lane_of(task.kind),
                                     rank=self.rank[task])
        if task.kind is Kind.BUILD:
            return lambda: s.perform(task, lambda: self.builds.result(t))
        if task.kind is Kind.STORE:
            relay = next(r for r in s.plan.relays if r.id == task)
            hosts = {s.hive.systems[n].build_host for n in relay.systems}
            lane = lane_of(task.kind, relay=relay, build_host=hosts.pop() if len(hosts) == 1 else None)
            return lambda: s.perform(task, lambda: self.pushes.relay(relay), gated=True, lane=lane,
                                     rank=self.rank[task])
        if task.kind in (Kind.PUSH, Kind.KEYS, Kind.ACTIVATE):
            instance = self.instances[t]
            lane = lane_of(task.kind, instance=instance, build_host=s.hive.systems[instance.system].build_host)
            if task.kind is Kind.PUSH:
                work: Callable[[], dict[str, Any]] = lambda: self.pushes.instance(instance)  # noqa: E731
            elif task.kind is Kind.KEYS:
                work = lambda: upload_keys(s, instance)  # noqa: E731
            else:
                act = reboot_into if s.options.reboot else activate
                work = lambda: act(s, instance)  # noqa: E731
            return lambda: s.perform(task, work, gated=True, lane=lane, rank=self.rank[task])
        if task.kind is Kind.WAVE:
            return lambda: open_wave(s, int(t))
        return None

    def done(self, planned: PlannedTask) -> Callable[[Any, Any], bool] | None:
        """The up-to-date check that `--no STEP` enables: asked of Nix or of the host."""
        s, task = self.session, planned.id
        if planned.skippable is None or task.kind is Kind.BUILD:
            return None
        if task.kind is Kind.STORE:
            relay = next(r for r in s.plan.relays if r.id == task)
            probe: Callable[[], bool] = lambda: self.pushes.relay_has(relay)  # noqa: E731
        elif task.kind is Kind.PUSH:
            probe = lambda: self.pushes.instance_has(self.instances[task.target])  # noqa: E731
        else:
            probe = lambda: is_active(s, self.instances[task.target])  # noqa: E731
        step = planned.skippable
        return lambda task, values: s.skips(step) and not s.interrupted and probe()

    def doit_task(self, planned: PlannedTask, files: list[str]) -> dict[str, Any]:
        task = planned.id
        out: dict[str, Any] = {"name": task.target or None, "doc": planned.doc, "actions": [],
                               "task_dep": [str(d) for d in planned.deps], "io": NO_CAPTURE}
        if task.kind in (Kind.PUSH, Kind.KEYS, Kind.ACTIVATE) and task.target in self.session.blocked:
            # an instance that will not start (Session.connect_all): waiting for nothing, its
            # steps say why at once, and nothing is built or copied for it
            out["task_dep"] = []
            out["actions"] = [lambda: self.session.block(task)]
            return out
        action = self.action(task)
        if action is not None:
            out["actions"] = [action]
        if planned.setup:
            out["setup"] = [str(d) for d in planned.setup]
        if task.kind is Kind.BUILD:
            out["file_dep"] = files
            out["uptodate"] = [self.builds.uptodate(task.target), config_changed(self.builds.inputs(task.target))]
        elif (check := self.done(planned)) is not None:
            out["uptodate"] = [check]
        return out


def namespace(session: Session, *, on_complete: Callable[[bool], None] | None = None) -> dict[str, Any]:
    """The session's plan as a module namespace for doit's loader: a `task_<kind>` creator
    per kind, yielding a sub-task per target (`deploy` is a task of its own)."""
    install_runner()
    steps = Steps(session)
    exclude = (session.state_file, session.hive.signing_key)
    files: list[str] = []  # a flake's inputs are its source and lock (Builds.inputs), not a directory walk
    if session.plan.systems and session.hive.flake is None:
        files = [str(p) for p in input_files(session.hive, exclude=exclude)]
    if session.plan.systems and session.hive.flake is None and not files and session.skips(Step.BUILD):
        session.progress.line(f"warning: no input files found for {session.hive.shown}: --no build cannot tell "
                              "whether a system changed, so every system is built")
        steps.builds.trust_records = False
    ns: dict[str, Any] = {}
    for kind in Kind:
        planned = [t for t in session.plan.tasks if t.id.kind is kind]
        if not planned:
            continue
        if kind is Kind.DEPLOY:
            only = steps.doit_task(planned[0], files)
            ns["task_deploy"] = _single({k: v for k, v in only.items() if k != "name"})
        else:
            ns[f"task_{kind.value}"] = _creator(kind, [steps.doit_task(t, files) for t in planned])
    ns["DOIT_CONFIG"] = doit_config(session, steps, on_complete)
    return ns


def _creator(kind: Kind, tasks: list[dict[str, Any]]) -> Callable[[], Iterator[dict[str, Any]]]:
    def create() -> Iterator[dict[str, Any]]:
        yield from tasks

    create.__doc__ = {Kind.NIX_BUILD: "Build each group of systems sharing paths in one nix build.",
                      Kind.BUILD: "Build each selected system once.",
                      Kind.STORE: "Copy systems to the relay stores instances substitute from.",
                      Kind.PUSH: "Copy each selected instance's system to it.",
                      Kind.KEYS: "Upload each selected instance's keys (never through the Nix store).",
                      Kind.ACTIVATE: "Switch each selected instance to its system, wave after wave.",
                      Kind.WAVE: "Start each wave once the previous one settled, as the failure policy allows."
                      }.get(kind, "")
    return create


def _single(task: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    def create() -> dict[str, Any]:
        return task

    create.__doc__ = "Build, push and activate the selected instances."
    return create


def doit_config(session: Session, steps: Steps, on_complete: Callable[[bool], None] | None = None) -> dict[str, Any]:
    return {
        "backend": "hive",
        "dep_file": str(session.state_file),
        "reporter": Reporter(session, steps, on_complete),
        "verbosity": 0,
        "par_type": "thread",
        "num_process": session.lanes.threads(len(session.plan.tasks)),
        "continue": True,
        "default_tasks": ["build"],
    }


class Reporter:
    """A doit reporter (doit's protocol): records what doit decides itself (up to date, not
    started because a dependency failed); the steps record their own outcomes. `on_complete`
    is its last call, told whether a task raised (`raised`)."""

    desc = "nix-hive progress"

    def __init__(self, session: Session, steps: Steps, on_complete: Callable[[bool], None] | None = None) -> None:
        self.session = session
        self.steps = steps
        self.on_complete = on_complete
        # a task's action or up-to-date check raised (doit's "error"), rather than failed:
        # nix-hive's own fault; not a task doit did not start because one it waits for failed
        # (doit counts that an error too: UnmetDependency)
        self.raised = False

    def initialize(self, tasks: Any, selected_tasks: Any) -> None:
        """The tasks doit will run: the selected ones and what they wait for."""
        todo, seen = list(selected_tasks), set()
        while todo:
            name = todo.pop()
            if name in seen or name not in tasks:
                continue
            seen.add(name)
            todo += list(tasks[name].task_dep) + list(tasks[name].setup_tasks)
        self.session.expected = frozenset(t for n in seen if (t := TaskId.parse(n)) is not None)
        if any(t.kind is Kind.PUSH for t in self.session.expected):
            self.session.warn_unsigned()
            waves = self.session.plan.waves
            if len(waves) > 1:
                self.session.progress.line(f"wave 1/{len(waves)}: {len(waves[0])} instance(s)")

    def get_status(self, task: Any) -> None:
        pass

    def execute_task(self, task: Any) -> None:
        pass

    def add_success(self, task: Any) -> None:
        pass

    def add_failure(self, task: Any, exception: Any) -> None:
        task_id = TaskId.parse(task.name)
        if task_id is not None:
            self.session.settled(task_id)
        if task_id is None or isinstance(exception, StepFailed | NotStarted):
            return  # recorded by the step itself
        if isinstance(exception, UnmetDependency):
            reason = self._why_not(str(exception.get_msg()).split())
            self.session.outcomes.set_default(task_id, Outcome(Status.SKIPPED, reason))
            if task.actions and task_id.kind is not Kind.WAVE:
                self.session.progress.step(task_id.kind.shown, task_id.target, str(Status.SKIPPED), reason)
            return
        self.raised = self.raised or not isinstance(exception, TaskFailed)
        message = str(exception.get_msg()).strip() if hasattr(exception, "get_msg") else str(exception)
        self.session.outcomes.set(task_id, Outcome(Status.FAILED, message.splitlines()[0] if message else ""))
        self.session.progress.step(task_id.kind.shown, task_id.target, str(Status.FAILED), message)

    def _why_not(self, deps: Sequence[str]) -> str:
        """Why a task was not started: the first of its dependencies that failed."""
        dep = TaskId.parse(deps[0]) if deps else None
        if dep is None:
            return "a dependency failed"
        found = self.session.outcomes.get(dep)
        if found is not None and found.status is Status.SKIPPED:
            return found.reason
        if dep.kind in (Kind.BUILD, Kind.NIX_BUILD):
            return f"build of {dep.target} failed"
        if dep.kind is Kind.STORE:
            relay = next((r for r in self.session.plan.relays if r.id == dep), None)
            return f"relay store {relay.url if relay else dep.target} failed"
        return f"{dep.kind.value} failed"

    def skip_uptodate(self, task: Any) -> None:
        task_id = TaskId.parse(task.name)
        if task_id is not None:
            self.session.settled(task_id)
        if task_id is None or not task.actions:
            return
        if task_id.kind is Kind.BUILD:
            self.steps.builds.adopt(task_id.target)
        self.session.outcomes.set(task_id, Outcome(Status.UNCHANGED, "already done (--no)"))
        self.session.progress.step(task_id.kind.shown, task_id.target, str(Status.UNCHANGED))

    def skip_ignore(self, task: Any) -> None:
        pass

    def cleanup_error(self, exception: Any) -> None:
        self.runtime_error(str(exception.get_msg()))

    def runtime_error(self, msg: str) -> None:
        """doit could not run the tasks at all (it says why): shown, never swallowed."""
        self.session.progress.line(f"error: {msg.strip()}")

    def teardown_task(self, task: Any) -> None:
        pass

    def complete_run(self) -> None:
        if self.on_complete is not None:
            self.on_complete(self.raised)


def run(session: Session, ns: dict[str, Any], targets: Sequence[str]) -> int:
    """Run the named tasks (and what they wait for) through doit; doit's exit status."""
    if not targets:
        return 0
    main = DoitMain(ModuleTaskLoader(ns), config_filenames=(), extra_config={"BACKEND": BACKEND})
    # doit keeps its command line's variables in its module, and each run resets them: a run
    # inside `doit`'s own (the doit door's diff=1 runs builds and dry activations first) gives
    # them back
    saved = doit_cmd._CMDLINE_VARS
    try:
        return int(main.run(["run", *targets]))
    finally:
        doit_cmd._CMDLINE_VARS = saved

