"""What a run will do, computed up front from the validated hive, the selection and the
options, with no I/O: build groups, the relay stores and their order, the waves, and every
task with what it waits for. Both doors (`nix-hive`, `dodo.py`) turn this one value into doit
tasks (tasks.py); `nix-hive plan` prints it.

Tasks, by kind:

    nix-build:<a+b>   one `nix build` of systems sharing `paths`, platform and build host (a doit setup
                      task: it runs only when one of its systems needs building)
    build:<system>    a system's result (the unit `--no build` records and skips)
    store:<relay>     one `nix copy` of every system a relay store must hold
    push:<instance>   the instance's system to its store (substituting from its relay)
    activate:<i>      profile and switch-to-configuration
    wave:<n>          waits for wave n-1 to settle; the failure policy decides whether wave n starts
    deploy            every selected instance done

Two kinds are outcomes only, never doit tasks: `connect:<host>`, the connection every selected
instance (and relay host) gets before anything is built (Session.connect_all), and
`put-back:<instance>`, its return to the system it ran before when the run failed
(`--rollback-on-failure`).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hive.address import StoreUrl, parse_proxy_jump
from hive.model import Goal, Hive, Instance, Step


class Kind(enum.Enum):
    """The kinds of task a plan holds."""

    NIX_BUILD = "nix-build"
    BUILD = "build"
    STORE = "store"
    PUSH = "push"
    KEYS = "keys"
    ACTIVATE = "activate"
    WAVE = "wave"
    DEPLOY = "deploy"
    CONNECT = "connect"  # an outcome only: the host answered before the run started work (or not)
    UNDO = "put-back"  # an outcome only: put back on its system before this run (--rollback-on-failure)

    @property
    def shown(self) -> str:
        """The step as progress lines name it (a group's nix build is a build)."""
        return "build" if self is Kind.NIX_BUILD else self.value


@dataclass(frozen=True, order=True)
class TaskId:
    """A task's identity: its kind and its target. `str()` is doit's task name."""

    kind: Kind
    target: str = ""

    def __str__(self) -> str:
        # _value_: the member's value as Enum keeps it (`.value` is a property, 3 times slower: a
        # plan of 5,000 instances names 30,000 tasks)
        kind: str = self.kind._value_
        return f"{kind}:{self.target}" if self.target else kind

    @classmethod
    def parse(cls, name: str) -> TaskId | None:
        """The id of a doit task name, or None for a name that is not one of ours."""
        kind, _, target = name.partition(":")
        try:
            return cls(Kind(kind), target)
        except ValueError:
            return None


@dataclass(frozen=True)
class BuildGroup:
    """Systems built by one `nix build` (equal `paths`, platform and build host)."""

    systems: tuple[str, ...]
    host: str | None = None  # the build host (buildHost), None for this machine

    @property
    def id(self) -> TaskId:
        return TaskId(Kind.NIX_BUILD, "+".join(self.systems))


@dataclass(frozen=True)
class Relay:
    """A store instances substitute from; the deployer fills it first."""

    url: str
    systems: tuple[str, ...]  # what it must hold: its instances' systems (its owner's first)
    owner: str | None = None  # the instance it is (ssh://portico), if any
    upstream: str | None = None  # the relay it substitutes from itself (chained relays)
    upload: str | None = None  # where nix-hive writes to it, when not its own URL (an HTTP cache)

    @property
    def target(self) -> str:
        """The store URL nix-hive copies to."""
        return self.upload or self.url

    @functools.cached_property
    def id(self) -> TaskId:  # asked for by each of its instances' tasks
        return TaskId(Kind.STORE, relay_label(self.url))


@dataclass(frozen=True)
class PlannedTask:
    """One task: what it waits for, and the `--no` step that lets it be skipped."""

    id: TaskId
    deps: tuple[TaskId, ...] = ()
    setup: tuple[TaskId, ...] = ()
    doc: str = ""
    skippable: Step | None = None


@dataclass(frozen=True)
class Plan:
    """Everything one run will do."""

    goal: Goal
    skip: frozenset[Step]
    final: Kind  # the last step per instance: ACTIVATE, or PUSH for `nix-hive push`
    waves: tuple[tuple[Instance, ...], ...]
    systems: tuple[str, ...]
    groups: tuple[BuildGroup, ...]
    relays: tuple[Relay, ...]  # a relay comes after the one it substitutes from
    hubs: frozenset[str]  # jump hosts and relay hosts, by the names ssh knows them by
    tasks: tuple[PlannedTask, ...]
    keys: bool = True  # upload the instances' keys (not with --no-keys)

    @property
    def instances(self) -> tuple[Instance, ...]:
        return tuple(i for wave in self.waves for i in wave)

    def task(self, task_id: TaskId) -> PlannedTask:
        return next(t for t in self.tasks if t.id == task_id)

    def relay(self, url: str) -> Relay | None:
        return self._relay_of.get(url)

    @functools.cached_property
    def _relay_of(self) -> dict[str, Relay]:
        """The relays by URL: an instance's is looked up once per instance (issue 29: a relay
        per 100 instances made a scan of them grow as the square of the instances)."""
        return {r.url: r for r in reversed(self.relays)}  # the first of a URL, as a scan finds it

    def final_id(self, instance: str) -> TaskId:
        return TaskId(self.final, instance)

    def wave_of(self, instance: str) -> int:
        """The wave (1-based) an instance is in."""
        return next(n for n, wave in enumerate(self.waves, 1) if any(i.name == instance for i in wave))

    def instance_tasks(self, instance: Instance) -> tuple[TaskId, ...]:
        """Every task an instance's deployment needs, upstream first: its host's connection
        and its relay hosts', its system's build, its relay stores' copies (the farthest
        first), its push, keys and activation. One of them failed: the instance failed
        (Session.instance_failure, the one rule of every gate)."""
        chain = list(reversed(self.relay_chain(instance)))
        chain += [r for r in self.relays if r.owner == instance.name and r not in chain]
        # its system's build, then those of the other systems its relays hold (a relay's copy
        # waits for all of them)
        systems = dict.fromkeys([instance.system, *(s for r in chain for s in r.systems)])
        out = [TaskId(Kind.CONNECT, instance.name)]
        out += [TaskId(Kind.CONNECT, r.owner) for r in chain if r.owner is not None and r.owner != instance.name]
        for system in systems:
            out += [g.id for g in self.groups if system in g.systems and g.id not in out]
            out.append(TaskId(Kind.BUILD, system))
        out += [r.id for r in chain]
        out.append(TaskId(Kind.PUSH, instance.name))
        if self.final is Kind.ACTIVATE:
            if self.keys and instance.keys:
                out.append(TaskId(Kind.KEYS, instance.name))
            out.append(TaskId(Kind.ACTIVATE, instance.name))
        return tuple(out)

    def relay_chain(self, instance: Instance) -> list[Relay]:
        """The relays an instance depends on: its store, then the one that store substitutes
        from, and so on."""
        chain: list[Relay] = []
        relay = self.relay(instance.store) if instance.store else None
        while relay is not None and relay not in chain:
            chain.append(relay)
            relay = self.relay(relay.upstream) if relay.upstream else None
        return chain


def relay_label(url: str) -> str:
    """A relay's task target: its URL, with what doit refuses in a task name (`=`) escaped."""
    return url.replace("%", "%25").replace("=", "%3D")


def store_instance(hive: Hive, url: str) -> Instance | None:
    """The instance an ssh store URL names (ssh://portico, ssh-ng://root@portico?…), if any."""
    try:
        host = StoreUrl.parse(url).ssh_host
    except ValueError:
        return None
    return hive.instances.get(host) if host else None


def upstream(hive: Hive, url: str) -> str | None:
    """The relay a relay store itself substitutes from (its instance's `store`), unless that
    chain comes back to `url` (a loop of relays: neither substitutes from the other)."""
    owner = store_instance(hive, url)
    seen = {url}
    nxt = owner.store if owner is not None else None
    while nxt is not None:
        if nxt in seen:
            return None
        seen.add(nxt)
        hop = store_instance(hive, nxt)
        nxt = hop.store if hop is not None else None
    return owner.store if owner is not None else None


def gateways(hive: Hive, instances: Iterable[Instance]) -> frozenset[str]:
    """The jump hosts (ProxyJump) and relay hosts that `instances` are reached or fed through,
    by the names the ssh configuration knows them by: a relay store's host, and the host its
    upload URL writes through (an HTTP cache's, ssh://cache?remote-store=…), whose
    connection must outlive that host's own deployment while the upload runs."""
    names: set[str] = set()
    jumps: set[str] = set()
    urls: set[str] = set()  # each looked at once: a relay is most instances' store
    for i in instances:
        jump = i.ssh.get("ProxyJump")
        if jump and jump not in jumps:
            jumps.add(jump)
            names.update(hop.host for hop in parse_proxy_jump(jump))
        for url in (i.store, hive.uploads.get(i.store) if i.store else None):
            if url and url not in urls:
                urls.add(url)
                owner = store_instance(hive, url)
                if owner is not None:
                    names.add(owner.name)
    return frozenset(names)


def build_groups(hive: Hive, systems: Sequence[str]) -> tuple[BuildGroup, ...]:
    """Systems with equal build keys, in selection order: one `nix build` each."""
    by_key: dict[object, list[str]] = {}
    for name in systems:
        by_key.setdefault(hive.systems[name].build_key(), []).append(name)
    return tuple(BuildGroup(tuple(members), hive.systems[members[0]].build_host) for members in by_key.values())


def relays(hive: Hive, instances: Sequence[Instance]) -> tuple[Relay, ...]:
    """Every relay store of the selection with the systems it must hold, upstream first.

    A relay that is itself a selected instance (ssh://portico) also gets its own system, in
    the same copy. A relay that substitutes from another needs that one to hold everything
    it holds."""
    need: dict[str, list[str]] = {}

    def add(url: str, system: str, first: bool = False) -> bool:
        systems = need.setdefault(url, [])
        if system in systems:
            return False
        systems.insert(0, system) if first else systems.append(system)
        return True

    for i in instances:
        if i.store:
            add(i.store, i.system)
    selected = {i.name for i in instances}
    for url in list(need):
        owner = store_instance(hive, url)
        if owner is not None and owner.name in selected:
            add(url, owner.system, first=True)
    changed = True
    while changed:
        changed = False
        for url in list(need):
            up = upstream(hive, url)
            if up is not None:
                for system in list(need[url]):
                    changed |= add(up, system)
    made = {url: Relay(url, tuple(systems), owner=o.name if (o := store_instance(hive, url)) else None,
                       upstream=upstream(hive, url), upload=hive.uploads.get(url)) for url, systems in need.items()}
    ordered: list[Relay] = []

    def place(relay: Relay) -> None:
        if relay in ordered:
            return
        if relay.upstream is not None:
            place(made[relay.upstream])
        ordered.append(relay)

    for relay in made.values():
        place(relay)
    return tuple(ordered)


def make_plan(hive: Hive, waves: Sequence[Sequence[Instance]], *, goal: Goal = Goal.SWITCH,
              skip: frozenset[Step] = frozenset(), final: Kind = Kind.ACTIVATE,
              build_only: bool = False, keys: bool = True) -> Plan:
    """The plan of a run over `waves` (from select.select)."""
    instances = [i for wave in waves for i in wave]
    systems = tuple(dict.fromkeys(i.system for i in instances))
    groups = build_groups(hive, systems)
    stores = () if build_only else relays(hive, instances)
    hosts = frozenset(g.host for g in groups if g.host is not None)  # build hosts keep their connection too
    plan = Plan(goal=goal, skip=skip, final=final, waves=tuple(tuple(w) for w in waves), systems=systems,
                groups=groups, relays=stores, hubs=gateways(hive, instances) | hosts, tasks=(),
                keys=keys and final is Kind.ACTIVATE and goal is not Goal.DRY_ACTIVATE)
    tasks = _build_tasks(plan, hive) if build_only else _build_tasks(plan, hive) + _deploy_tasks(plan)
    return dataclasses.replace(plan, tasks=tuple(tasks))


def _build_tasks(plan: Plan, hive: Hive) -> list[PlannedTask]:
    users = collections.Counter(i.system for i in plan.instances)
    out: list[PlannedTask] = []
    for group in plan.groups:
        on = f" on build host {group.host}" if group.host else ""
        out.append(PlannedTask(group.id, doc=f"nix build of {', '.join(group.systems)}{on}"))
        for s in group.systems:
            out.append(PlannedTask(TaskId(Kind.BUILD, s), setup=(group.id,), skippable=Step.BUILD,
                                   doc=f"build system {s} ({users[s]} instance{'s' if users[s] != 1 else ''})"))
    return out


def _deploy_tasks(plan: Plan) -> list[PlannedTask]:
    out: list[PlannedTask] = []
    for relay in plan.relays:
        deps = [TaskId(Kind.BUILD, s) for s in relay.systems]
        if relay.upstream is not None:
            deps.append(TaskId(Kind.STORE, relay_label(relay.upstream)))
        via = f" (through {relay.upload})" if relay.upload else ""
        out.append(PlannedTask(relay.id, tuple(deps), doc=f"copy {', '.join(relay.systems)} to relay store "
                               f"{relay.url}{via}", skippable=Step.PUSH))
    owned = {r.owner: r for r in plan.relays if r.owner is not None}
    built = {s: TaskId(Kind.BUILD, s) for s in plan.systems}  # made once a system, not once an instance
    # the same for every instance: looked at once (issue 29: a plan of 5,000 instances)
    activate, goal = plan.final is Kind.ACTIVATE, plan.goal.value
    with_keys, with_checks = activate and plan.keys, plan.goal in (Goal.SWITCH, Goal.TEST)
    finals: list[TaskId] = []
    for number, wave in enumerate(plan.waves, 1):
        gate: tuple[TaskId, ...] = ()
        if number > 1:
            gate = (TaskId(Kind.WAVE, str(number)),)
            before = (TaskId(Kind.WAVE, str(number - 1)),) if number > 2 else ()
            out.append(PlannedTask(gate[0], before, doc=f"wait for wave {number - 1}, then start wave {number} "
                                   "unless the failure policy says stop"))
        for i in wave:
            deps = [built[i.system], *gate]
            store = plan.relay(i.store) if i.store else None  # the first of its relay chain
            if store is not None:
                deps.append(store.id)
            own = owned.get(i.name)
            if own is not None and own.url != i.store:
                deps.append(own.id)  # a relay instance gets its system with its store's copy
            via = f" from {i.store}" if i.store else ""
            pushed = TaskId(Kind.PUSH, i.name)
            out.append(PlannedTask(pushed, tuple(deps), doc=f"copy {i.system} to {i.name}{via}", skippable=Step.PUSH))
            if not activate:
                finals.append(pushed)
                continue
            before_activation: tuple[TaskId, ...] = (pushed,)
            if with_keys and i.keys:
                out.append(PlannedTask(TaskId(Kind.KEYS, i.name), (pushed, *gate),
                                       doc=f"upload keys {', '.join(i.keys)} to {i.name} (pre-activation ones; "
                                       "post-activation ones after the switch)"))
                before_activation = (TaskId(Kind.KEYS, i.name),)
            checks = f"; then checks {', '.join(c.name for c in i.checks)}" if i.checks and with_checks else ""
            activated = TaskId(Kind.ACTIVATE, i.name)
            finals.append(activated)
            out.append(PlannedTask(activated, (*before_activation, *gate),
                                   doc=f"activate {i.system} on {i.name} ({goal}, at most "
                                   f"{i.activation_timeout} s){checks}", skippable=Step.ACTIVATE))
    out.append(PlannedTask(TaskId(Kind.DEPLOY), tuple(finals), doc="build, push and activate the selected instances"))
    return out


def as_json(plan: Plan, hive: Hive | None = None) -> dict[str, object]:
    """The plan as `nix-hive plan --json` prints it (keys by name and destination, never
    their content)."""
    wave_of = {i.name: n for n, wave in enumerate(plan.waves, 1) for i in wave}  # plan.wave_of, for all at once
    return {
        "goal": plan.goal.value,
        "skip": sorted(s.value for s in plan.skip),
        "waves": [[i.name for i in wave] for wave in plan.waves],
        "builds": [{"systems": list(g.systems), "buildHost": g.host} for g in plan.groups],
        "relays": [{"url": r.url, "systems": list(r.systems), "owner": r.owner, "upstream": r.upstream,
                    "upload": r.upload} for r in plan.relays],
        "hubs": sorted(plan.hubs),
        "instances": {i.name: {"system": i.system, "wave": wave_of[i.name], "store": i.store,
                               "activationTimeout": i.activation_timeout, "confirmTimeout": i.confirm_timeout,
                               "keys": {k: hive.keys[k].describe() if hive else {} for k in i.keys} if plan.keys
                               else {},
                               "checks": {c.name: {"command": c.command, "http": c.http, "timeout": c.timeout,
                                                   "retries": c.retries, "interval": c.interval,
                                                   "status": list(c.status)} for c in i.checks}}
                      for i in plan.instances},
        "tasks": [{"task": str(t.id), "after": [str(d) for d in t.deps], "setup": [str(s) for s in t.setup],
                   "skippable": t.skippable.value if t.skippable and t.skippable in plan.skip else None,
                   "doc": t.doc} for t in plan.tasks],
    }
