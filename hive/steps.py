"""The work of a deployment, step by step: build a system, push closures to a relay store and
to an instance, activate an instance. Each step is the action of a doit task (see tasks.py);
each has an up-to-date check that `--no STEP` enables, asking Nix or the host, not a file.

`Context` is one run of nix-hive: the evaluated hive, the selection, the options, what was
built and what has been done so far in this run.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doit.dependency import UptodateCalculator
from doit.exceptions import TaskFailed

from hive import nix, process, select, ssh
from hive.errors import HiveError, ProcessError
from hive.model import Goal, Hive, Instance, Step
from hive.report import Outcomes, Progress
from hive.select import Wave


@dataclass(frozen=True)
class Options:
    """What the user asked for, beyond the selection."""

    skip: frozenset[Step] = frozenset()
    state_file: Path | None = None  # default: .hive.state beside the deployment file
    jobs: int = 10
    goal: Goal = Goal.SWITCH
    keep_going: bool = False
    max_failures: int | None = None  # absolute number, computed from N or N%


def default_state_file(hive: Hive) -> Path:
    return hive.directory / ".hive.state"


class Context:
    """One run: the work to do and what has been done."""

    def __init__(self, hive: Hive, waves: list[Wave], options: Options,
                 progress: Progress | None = None, outcomes: Outcomes | None = None) -> None:
        self.hive = hive
        self.waves = waves
        self.options = options
        self.progress = progress or Progress()
        self.outcomes = outcomes or Outcomes()
        self.instances = select.flatten(waves)
        self.systems = select.systems_of(hive, waves)
        self.state_file = options.state_file or default_state_file(hive)
        self.gcroots = self.state_file.with_name(self.state_file.name + ".d") / "gcroots"
        self.results: dict[str, str] = {}  # system -> store path built in this run
        self._lock = threading.Lock()
        self._build_locks: dict[Any, threading.Lock] = {}
        self._build_failures: dict[str, HiveError] = {}
        self._planned: dict[str, bool] = {}  # system -> doit will build it in this run
        self._planning = False
        self._sign_lock = threading.Lock()
        self._signed: set[str] = set()
        self._ssh: ssh.SshSetup | None = None
        self._probes: dict[str, Probe] = {}
        self.hubs = self.gateways(self.instances)  # jump hosts and relays of this run
        self.final_step = "activate"  # the last step of this run for an instance ("push": push only)
        self._idle = threading.Condition()
        self._running = 0
        self.dep_manager: Any = None  # doit's Dependency, handed over by BuildUptodate
        self.tasks_dict: Any = None

    # -- shared helpers ---------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Counts the steps in progress, so an interrupted run can wait for them."""
        with self._idle:
            self._running += 1
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 60) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0, timeout=timeout)

    def stop_reason(self) -> str | None:
        """Why no new push or activation may start (--max-failures reached)."""
        limit = self.options.max_failures
        if limit is None:
            return None
        failed = {t.partition(":")[2] for t in self.outcomes.failed("push:") + self.outcomes.failed("activate:")}
        return f"not started: more than {limit} instance(s) failed" if len(failed) > limit else None

    def _gated(self, step: Callable[..., dict[str, Any] | TaskFailed], *args: Any) -> dict[str, Any] | TaskFailed:
        """Run a push or activation, unless --max-failures says to start nothing more."""
        with self.running():
            reason = self.stop_reason()
            if reason is not None:
                return NotStarted(reason)
            return step(*args)

    def skips(self, step: Step) -> bool:
        return step in self.options.skip

    def done(self, task: str) -> bool:
        """Done earlier in this run (a later wave meets it again as a dependency)."""
        return self.outcomes.succeeded(task)

    @property
    def ssh(self) -> ssh.SshSetup:
        with self._lock:
            if self._ssh is None:
                self._ssh = ssh.prepare(self.hive, Path(tempfile.mkdtemp(prefix="nix-hive-")), control=True)
            return self._ssh

    def close(self) -> None:
        """Close shared ssh connections and remove the run's temporary files."""
        with self._lock:
            setup, self._ssh = self._ssh, None
        if setup is None:
            return
        sockets = setup.directory / "c"
        if sockets.is_dir() and any(sockets.iterdir()):
            hosts = sorted({i.name for i in self.instances} | self.hubs)
            with ThreadPoolExecutor(max_workers=max(16, self.options.jobs)) as pool:  # local and quick
                list(pool.map(lambda argv: process.run(argv, check=False, timeout=10),
                              ssh.stop_masters(setup, hosts)))
        shutil.rmtree(setup.directory, ignore_errors=True)

    def gateways(self, instances: list[Instance]) -> set[str]:
        """The jump hosts (ProxyJump) and relay stores that `instances` are reached or fed
        through, by the names the ssh configuration knows them by."""
        names = {j.split("@")[-1].split(":")[0] for i in instances
                 for j in i.ssh.get("ProxyJump", "").split(",") if j}
        names |= {o.name for i in instances if i.store and (o := self.store_instance(i.store)) is not None}
        return names

    def path_of(self, system: str) -> str | None:
        """The system's store path: built in this run, or recorded by a build that doit found
        up to date (`--no build`)."""
        path = self.results.get(system)
        if path is None and self.dep_manager is not None:
            values = self.dep_manager.get_values(f"build:{system}") or {}
            path = values.get("result")
        return path if isinstance(path, str) else None

    def need_path(self, system: str) -> str:
        path = self.path_of(system)
        if path is None:
            raise HiveError(f"system {system} has no build result")
        return path

    # -- build ------------------------------------------------------------------------------

    def system_inputs(self, system: str) -> dict[str, Any]:
        """What a build depends on besides the files of the deployment."""
        s = self.hive.systems[system]
        return {"paths": dict(s.paths), "platform": s.platform, "file": str(self.hive.file)}

    def build(self, system: str) -> dict[str, Any] | TaskFailed:
        with self.running():
            return self._build(system)

    def _build(self, system: str) -> dict[str, Any] | TaskFailed:
        """Build `system`, together with the other systems of its group that doit will build
        too (as planned by `plan_group`): one `nix build`, so Nix builds them in parallel."""
        key = self.hive.systems[system].build_key()
        with self._lock:
            lock = self._build_locks.setdefault(key, threading.Lock())
        with lock:
            if system not in self.results and system not in self._build_failures:
                group = [system] + [s for s in self.systems
                                    if s != system and self._planned.get(s, False) and s not in self.results
                                    and s not in self._build_failures
                                    and self.hive.systems[s].build_key() == key]
                self._build_group(group)
        failure = self._build_failures.get(system)
        if failure is not None:
            return _failed(failure)
        return {"result": self.results[system]}

    def _build_group(self, group: list[str]) -> None:
        label = ",".join(group)

        def show(line: str) -> None:  # Nix's own progress: what it builds or fetches
            text = line.strip()
            if text.startswith(("building '", "copying path '")):
                name = text.split("'")[1].split("/")[-1].split("-", 1)[-1].removesuffix(".drv")
                self.progress.step("build", label, f"{text.split()[0]} {name}")

        try:
            built = nix.build(self.hive.file, group, self.hive.systems[group[0]].paths, on_line=show)
            for name, path in built.items():
                nix.add_root(path, self.gcroots / name)
        except HiveError as exc:
            if len(group) == 1:
                self._build_failures[group[0]] = exc
                return
            for name in group:  # one broken system must not fail the others: build them alone
                self._build_group([name])
            return
        self.results.update(built)

    def plan_group(self, system: str) -> None:
        """Asks doit, before it runs `build:<system>`, which other systems of the same group it
        will build too. Runs in doit's main thread, from the up-to-date check (see
        BuildUptodate), where doit itself computes task status."""
        if self.dep_manager is None or self.tasks_dict is None or self._planning:
            return
        key = self.hive.systems[system].build_key()
        self._planning = True
        try:
            for other in self.systems:
                task = self.tasks_dict.get(f"build:{other}")
                if other == system or other in self._planned or task is None \
                        or self.hive.systems[other].build_key() != key:
                    continue
                self._planned[other] = self.dep_manager.get_status(task, self.tasks_dict).status != "up-to-date"
        finally:
            self._planning = False

    def build_uptodate(self, system: str) -> BuildUptodate:
        return BuildUptodate(self, system)

    def recorded_build_valid(self, values: Mapping[str, Any]) -> bool:
        """`--no build`: the recorded result is still a valid path of the local store."""
        path = values.get("result")
        return isinstance(path, str) and not nix.invalid_paths([path])

    # -- push -------------------------------------------------------------------------------

    def relays(self) -> dict[str, list[str]]:
        """Relay store URL -> the systems it must hold, in selection order.

        A store that is itself a selected instance (ssh://portico) also gets that instance's
        own system in the same copy. A relay that substitutes from another relay (its own
        `store`) needs that one to hold everything it holds: relays can be chained."""
        out: dict[str, list[str]] = {}

        def need(url: str, system: str, first: bool = False) -> bool:
            systems = out.setdefault(url, [])
            if system in systems:
                return False
            systems.insert(0, system) if first else systems.append(system)
            return True

        selected = {i.name for i in self.instances}
        for instance in self.instances:
            if instance.store:
                need(instance.store, instance.system)
        for url in list(out):
            owner = self.store_instance(url)
            if owner is not None and owner.name in selected:
                need(url, owner.system, first=True)
        changed = True
        while changed:
            changed = False
            for url in list(out):
                upstream = self.upstream(url)
                if upstream is not None:
                    for system in list(out[url]):
                        changed |= need(upstream, system)
        return out

    def upstream(self, url: str) -> str | None:
        """The relay a relay store itself substitutes from (its instance's `store`), unless
        following that chain comes back to `url`."""
        seen = {url}
        owner = self.store_instance(url)
        nxt = owner.store if owner is not None else None
        while nxt is not None:
            if nxt in seen:
                return None
            seen.add(nxt)
            hop = self.store_instance(nxt)
            nxt = hop.store if hop is not None else None
        return owner.store if owner is not None else None

    def store_instance(self, url: str) -> Instance | None:
        """The instance a store URL names (ssh://portico, ssh-ng://portico), if any."""
        for scheme in ("ssh://", "ssh-ng://"):
            if url.startswith(scheme):
                host = url[len(scheme):].split("?", 1)[0].split("@")[-1]
                return self.hive.instances.get(host)
        return None

    def _signed_paths(self, systems: list[str]) -> list[str]:
        paths = [self.need_path(s) for s in systems]
        key = self.hive.signing_key
        if key is not None:
            with self._sign_lock:
                todo = [p for p in paths if p not in self._signed]
                if todo:
                    nix.sign(key, todo)
                    self._signed.update(todo)
        return paths

    def push_store(self, url: str, systems: list[str]) -> dict[str, Any] | TaskFailed:
        return self._gated(self._push_store, url, systems)

    def _push_store(self, url: str, systems: list[str]) -> dict[str, Any] | TaskFailed:
        """One `nix copy` of every system a relay store must hold."""
        owner = self.store_instance(url)
        if owner is not None:
            self.forget(owner)
        try:
            paths = self._signed_paths(systems)
            nix.copy(url, paths, substitute=self.upstream(url) is not None, env=self.ssh.env)
        except HiveError as exc:
            return _failed(exc)
        return {"paths": paths}

    def push(self, instance: Instance, is_store: bool = False) -> dict[str, Any] | TaskFailed:
        return self._gated(self._push, instance, is_store)

    def _push(self, instance: Instance, is_store: bool = False) -> dict[str, Any] | TaskFailed:
        """Copy the instance's system to it; behind a relay, the instance substitutes from it.

        An instance that is itself a relay store got its system with the store's copy."""
        try:
            paths = self._signed_paths([instance.system])
            if is_store:
                return {"path": paths[0], "note": "(with its relay store copy)"}
            self.forget(instance)
            nix.copy(instance.url, paths, substitute=bool(instance.store), env=self.ssh.env)
        except HiveError as exc:
            return _failed(exc)
        finally:
            if self.final_step == "push":
                self.release(instance)
        return {"path": paths[0]}

    def instance_has(self, instance: Instance) -> bool:
        """`--no push`: the instance's store holds its system (asked of the instance)."""
        path = self.path_of(instance.system)
        return path is not None and path in self.probe(instance).valid

    def store_has(self, url: str, systems: list[str]) -> bool:
        """`--no push`: the store already holds every path (asked of the store itself)."""
        try:
            paths = [self.need_path(s) for s in systems]
            owner = self.store_instance(url)
            if owner is not None:
                return set(paths) <= self.probe(owner).valid
            return not nix.remote_missing(url, paths, env=self.ssh.env)
        except HiveError:
            return False

    # -- asking the hosts -------------------------------------------------------------------

    def probe(self, instance: Instance) -> Probe:
        """What the host has and runs, asked once per run (one ssh call) and remembered
        until a step of this run changes it."""
        with self._lock:
            known = self._probes.get(instance.name)
        if known is not None:
            return known
        paths = sorted({p for s in self.systems if (p := self.path_of(s)) is not None})
        script = ('printf "current=%s\\n" "$(readlink /run/current-system 2>/dev/null)"; '
                  'p=/nix/var/nix/profiles/system; printf "profile=%s\\n" "$(test -L $p && readlink -f $p)"')
        for path in paths:
            quoted = shlex.quote(path)
            script += f"; nix-store --check-validity {quoted} 2>/dev/null && echo valid={quoted}"
        script += "; true"
        found = Probe(reachable=False)
        try:
            # jump hosts and relays keep their connection; the hosts behind them need none yet
            share = instance.name in self.hubs
            out = process.run(ssh.shell_argv(self.ssh, instance.name, script, share=share))
        except HiveError:
            pass
        else:
            lines = out.stdout.splitlines()
            current = next((ln[8:] for ln in lines if ln.startswith("current=")), "")
            profile = next((ln[8:] for ln in lines if ln.startswith("profile=")), "")
            found = Probe(reachable=True, current=current or None, profile=profile or None,
                          valid=frozenset(ln[6:] for ln in lines if ln.startswith("valid=")))
        with self._lock:
            self._probes[instance.name] = found
        return found

    def forget(self, instance: Instance) -> None:
        with self._lock:
            self._probes.pop(instance.name, None)

    def prefetch(self, instances: list[Instance]) -> None:
        """Probe many hosts at once (`--no push/activate` asks every host up front).

        Jump hosts and relay stores first: their shared connection is then up before the
        hosts behind them are asked through it (instead of each racing to open its own)."""
        todo = {i.name: i for i in instances}
        for i in instances:  # relay stores are asked what they hold too
            owner = self.store_instance(i.store) if i.store else None
            if owner is not None:
                todo.setdefault(owner.name, owner)
        gateways = self.gateways(instances)
        first = [i for n, i in todo.items() if n in gateways]
        then = [i for n, i in todo.items() if n not in gateways]
        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
            for stage in (first, then):
                list(pool.map(self.probe, stage))

    # -- activate ---------------------------------------------------------------------------

    def activate(self, instance: Instance) -> dict[str, Any] | TaskFailed:
        return self._gated(self._activate, instance)

    def _activate(self, instance: Instance) -> dict[str, Any] | TaskFailed:
        """Point the system profile at the path (switch, boot), then run switch-to-configuration
        with the goal; as root, through sudo when the ssh user is not root."""
        try:
            path = self.need_path(instance.system)
        except HiveError as exc:
            return _failed(exc)
        goal = self.options.goal
        commands = [nix.set_profile_argv(path)] if goal.sets_profile else []
        script = ssh.as_root([*commands, nix.switch_argv(path, goal.value)])
        self.forget(instance)
        try:
            process.run(ssh.shell_argv(self.ssh, instance.name, script))
        except HiveError as exc:
            return _failed(exc)
        finally:
            self.release(instance)
        return {"path": path}

    def release(self, instance: Instance) -> None:
        """Close a host's shared connection once this run is done with it. Behind a jump host,
        each open connection holds a channel of the jump host's own, and sshd allows only
        MaxSessions (10 by default) per connection: past that, ssh falls back to opening (and
        authenticating) new connections to the jump host. Jump hosts and relays stay open."""
        if self._ssh is None or instance.name in self.hubs:
            return
        process.run(ssh.stop_masters(self._ssh, [instance.name])[0], check=False, timeout=10)


    def is_active(self, instance: Instance) -> bool:
        """`--no activate`: the host already runs the path (asked of the host)."""
        path = self.path_of(instance.system)
        found = self.probe(instance)
        return path is not None and self.options.goal.reached(path, found.current, found.profile)


@dataclass(frozen=True)
class Probe:
    """A host as one ssh call found it."""

    reachable: bool
    current: str | None = None  # /run/current-system
    profile: str | None = None  # what /nix/var/nix/profiles/system points at (the boot default)
    valid: frozenset[str] = frozenset()  # the run's system paths its store holds


class NotStarted(TaskFailed):  # type: ignore[misc]
    """A step that was not started (reported as skipped, not failed)."""


def _failed(exc: HiveError) -> TaskFailed:
    detail = exc.stderr if isinstance(exc, ProcessError) else ""
    return TaskFailed(f"{exc}\n{detail}".rstrip())


class BuildUptodate(UptodateCalculator):  # type: ignore[misc]
    """The up-to-date check of `build:<system>`. It also hands doit's state to the Context and
    has it plan the group build (which other systems doit will build), in doit's main thread."""

    def __init__(self, ctx: Context, system: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.system = system

    def setup(self, dep_manager: Any, tasks_dict: Any) -> None:
        super().setup(dep_manager, tasks_dict)
        self.ctx.dep_manager = dep_manager
        self.ctx.tasks_dict = tasks_dict

    def __call__(self, task: Any, values: Mapping[str, Any]) -> bool:
        if self.ctx.done(task.name):
            return True
        verdict = self.ctx.skips(Step.BUILD) and self.ctx.recorded_build_valid(values)
        self.ctx.plan_group(self.system)
        return verdict


def step_check(ctx: Context, step: Step, probe: Callable[[], bool]) -> Callable[[Any, Any], bool]:
    """An up-to-date check: done earlier in this run, or skippable and `probe()` says so."""

    def check(task: Any, values: Any) -> bool:
        if ctx.done(task.name):
            return True
        return ctx.skips(step) and probe()

    return check
