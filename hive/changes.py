"""What a deployment would change on its hosts (`nix-hive diff`), asked of the fleet cheaply:
few systems, many instances.

1. The systems are built (or, with `--no build`, the recorded results reused), as `deploy`
   builds them; each new system's closure (paths and NAR sizes) is read where it was built.
2. Each selected host is asked once (one ssh call, hive/host/diff.sh `facts`, bounded in time):
   what it runs (/run/current-system) and which paths of its new system's closure its store
   lacks (sent on stdin).
3. The hosts that run the same system and get the same one form a group (hive/diff.py); each
   group's old closure is read once: from this machine's store when it holds the old system,
   else from one host of the group (`diff.sh closure`, bounded; the next host if that one
   fails), and compared once. The bytes each host fetches are the NAR sizes of what it lacks.

A host that cannot be asked is listed with the reason, and the others' diff is still shown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hive import diff, nix, orchestrate, ssh, text
from hive.diff import ClosureDiff, Group, HostFacts, State
from hive.errors import HiveError
from hive.report import Fit, table
from hive.session import Session

FACTS_WORK = 30.0  # seconds a host may take to check a closure's paths, beyond connecting
CLOSURE_WORK = 60.0  # seconds a host may take to list a closure with its sizes, beyond connecting
LOCAL_WORK = 120.0  # seconds this machine's store may take to list a closure
OLD_TRIES = 3  # hosts of a group asked in turn for its old closure, at most


@dataclass(frozen=True)
class GroupDiff:
    """A group and its diff, computed once for all its hosts."""

    group: Group
    diff: ClosureDiff | None  # None: not computed (`error` says why)
    fetch: Mapping[str, int] = field(default_factory=dict)  # instance -> bytes it would fetch
    old_from: str = ""  # where the old closure was read: "deployer", an instance, "" (none needed)
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        g, values = self.group, list(self.fetch.values())
        return {"instances": list(g.instances), "systems": list(g.systems), "state": g.state.value, "old": g.old,
                "new": g.new, "packages": [p.as_json() for p in self.diff.packages] if self.diff else [],
                "closure": self.diff.sizes() if self.diff else None,
                "fetch": {"min": min(values) if values else None, "max": max(values) if values else None,
                          "instances": dict(self.fetch)},
                "oldFrom": self.old_from or None, "error": self.error}


@dataclass(frozen=True)
class FleetDiff:
    """`nix-hive diff`'s answer: the groups, and the hosts that are in none."""

    groups: tuple[GroupDiff, ...]
    left: tuple[HostFacts, ...]  # unreachable, or their system not built
    facts: tuple[HostFacts, ...]  # every selected host, in the order of the selection

    @property
    def complete(self) -> bool:
        """Every host answered and every group's diff was computed."""
        return not self.left and not any(g.error for g in self.groups)

    def as_json(self) -> dict[str, Any]:
        index = {name: n for n, g in enumerate(self.groups) for name in g.group.instances}
        hosts = []
        for f in self.facts:
            n = index.get(f.instance)
            hosts.append({"instance": f.instance, "system": f.system, "state": f.state.value, "current": f.current,
                          "expected": f.new, "group": n,
                          "fetchBytes": self.groups[n].fetch.get(f.instance) if n is not None else None,
                          "reason": f.reason or (self.groups[n].error if n is not None else "")})
        return {"groups": [g.as_json() for g in self.groups], "hosts": hosts}


def _bound(session: Session, work: float) -> float:
    """A host's call: connecting (ssh's ConnectTimeout per hop, twice, as `connect_all` bounds
    it) and then `work` seconds."""
    connect = session.options.connect_timeout or int(ssh.DEFAULTS["ConnectTimeout"])
    return 2 * connect + 5 + work


class _Closures:
    """Closures read once each, wherever they are (path -> path -> NAR size)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[str, dict[str, int] | HiveError] = {}
        self._where: dict[str, str] = {}

    def get(self, path: str, readers: Sequence[tuple[str, Callable[[], dict[str, int]]]]) -> tuple[dict[str, int],
                                                                                                    str]:
        """`path`'s closure and where it was read: by the first of `readers` (where, how)
        that answers; a `HiveError` saying why each failed (each reason names its host)."""
        with self._lock:
            known = self._found.get(path)
        if isinstance(known, HiveError):
            raise known
        if known is not None:
            return known, self._where[path]
        why: list[str] = []
        for where, read in readers:
            try:
                found = read()
            except HiveError as exc:
                why.append(str(exc))
                continue
            with self._lock:
                self._found[path], self._where[path] = found, where
            return found, where
        error = HiveError("; ".join(why) or "nowhere to read it")
        with self._lock:
            self._found[path] = error
        raise error


def fleet_diff(session: Session) -> tuple[int, FleetDiff]:
    """Build (or reuse) the selected systems, ask every selected host once, group them and
    diff each group once. Exit status 0 when every host answered and every diff was made,
    else 1 (the others' diff is there all the same)."""
    code = orchestrate.build(session)
    try:
        found = _survey(session)
    finally:
        session.close()
    return (0 if code == 0 and found.complete else 1), found


def _survey(session: Session) -> FleetDiff:
    plan, remotes, progress = session.plan, session.remotes, session.progress
    closures = _Closures()

    def here(path: str) -> Callable[[], dict[str, int]]:
        return lambda: nix.closure(path, timeout=LOCAL_WORK)

    def on(host: str, path: str) -> Callable[[], dict[str, int]]:
        return lambda: remotes[host].closure(path, timeout=_bound(session, CLOSURE_WORK))

    # each new system's closure, where it was built
    new_of: dict[str, dict[str, int]] = {}
    unread: dict[str, str] = {}
    for system in plan.systems:
        path = session.path_of(system)
        if path is None:
            continue
        build_host = session.hive.systems[system].build_host
        reader = ("deployer", here(path)) if build_host is None else (build_host, on(build_host, path))
        try:
            new_of[system] = closures.get(path, [reader])[0]
        except HiveError as exc:
            unread[system] = f"cannot read the new system's closure: {exc}"
    # one call per host
    built = [i for i in plan.instances if session.path_of(i.system) is not None]
    progress.line(f"asking {len(built)} host(s) what they run and lack")
    answers = remotes.facts_all({i.name: sorted(new_of.get(i.system, {})) for i in built},
                                timeout=_bound(session, FACTS_WORK), width=max(session.options.jobs, 32))
    facts: list[HostFacts] = []
    for i in plan.instances:
        path = session.path_of(i.system)
        if path is None:
            facts.append(HostFacts(i.name, i.system, None, reason=f"system {i.system} was not built"))
            continue
        a = answers[i.name]
        why = "" if a.reachable else session.unreachable_why(i.name, answers)
        facts.append(HostFacts(i.name, i.system, path, a.reachable, a.current, a.missing, why))
    groups, left = diff.group_hosts(facts)
    progress.line(f"{len(groups)} group(s) of hosts that run the same system and get the same one")

    def one(g: Group) -> GroupDiff:
        system = g.systems[0]
        if system in unread:
            return GroupDiff(g, None, error=unread[system])
        new = new_of[system]
        fetch = {name: diff.fetch_bytes(new, g.missing.get(name, ())) for name in g.instances}
        if g.old is None or g.old == g.new:
            old: dict[str, int] = {} if g.old is None else new
            return GroupDiff(g, diff.diff_closures(old, new), fetch)
        old_path = g.old
        readers = [(name, on(name, old_path)) for name in g.instances[:OLD_TRIES]]
        if _held_here(old_path):
            readers.insert(0, ("deployer", here(old_path)))
        try:
            old, where = closures.get(old_path, readers)
        except HiveError as exc:
            return GroupDiff(g, None, fetch, error=f"cannot read the old system's closure: {exc}")
        return GroupDiff(g, diff.diff_closures(old, new), fetch, old_from=where)

    with ThreadPoolExecutor(max_workers=max(1, min(session.options.jobs, len(groups)))) as pool:
        done = list(pool.map(one, groups))
    return FleetDiff(tuple(done), tuple(left), tuple(facts))


def _held_here(path: str) -> bool:
    """This machine's store holds `path` (whatever a host calls its system: a path that is
    no store path at all is not held here)."""
    try:
        return not nix.invalid_paths([path])
    except HiveError:
        return False


# What a person reads --------------------------------------------------------------------------

def _packages_cell(g: GroupDiff) -> str:
    state = g.group.state
    if g.error:
        return "not compared (below)"
    if state is State.UNCHANGED:
        return "unchanged"
    assert g.diff is not None  # no error: compared
    if state is State.NEW:
        return f"new host: {len(g.diff.packages)} packages"
    counts = g.diff.counts()
    return ", ".join(f"{n} {k.value}" for k, n in counts.items()) or "no package changes"


def _closure_cell(g: GroupDiff) -> str:
    if g.diff is None or g.group.state is State.UNCHANGED:
        return "-"
    return diff.size(g.diff.new_bytes) if g.group.state is State.NEW else diff.delta(g.diff.size_delta)


def tables(found: FleetDiff, width: int | None) -> str:
    """The diff for a person: a table of the groups (hosts, system, package changes, closure
    size change, bytes to fetch), then each group's package changes under a line naming its
    hosts and systems, then the hosts not reached and why. `width`: a terminal's (each table
    and line fitted to it), or None (whole)."""
    out = [table([(text.compact(g.group.instances), ", ".join(g.group.systems), _packages_cell(g),
                   _closure_cell(g), diff.span(list(g.fetch.values()))) for g in found.groups],
                 ["hosts", "system", "packages", "closure", "fetch"], width=width,
                 fit=(Fit.CUT, Fit.KEEP, Fit.CUT, Fit.KEEP, Fit.KEEP))]
    for g in found.groups:
        if g.diff is None or g.group.state is not State.CHANGES or not g.diff.packages:
            continue
        hosts = len(g.group.instances)
        title = f"{text.compact(g.group.instances)} ({', '.join(g.group.systems)}), {hosts} host{'s' * (hosts > 1)}:"
        paths = f"  {_path(g.group.old or '', width)} → {_path(g.group.new, width)}"
        rows = [(p.name, p.kind.value, diff.show_versions(p.before), diff.show_versions(p.after),
                 diff.delta(p.size_delta)) for p in g.diff.packages]
        out += ["", _fitted(title, width), _fitted(paths, width),
                table(rows, ["package", "change", "old", "new", "size"], width=width,
                      fit=(Fit.CUT, Fit.KEEP, Fit.CUT, Fit.CUT, Fit.KEEP))]
    failed = [g for g in found.groups if g.error]
    if failed:
        out += ["", _fitted(f"not compared: {len(failed)} group(s)", width),
                table([(text.compact(g.group.instances), ", ".join(g.group.systems), g.error) for g in failed],
                      ["hosts", "system", "reason"], width=width, fit=(Fit.CUT, Fit.KEEP, Fit.CUT))]
    if found.left:
        out += ["", _fitted(f"not reached: {len(found.left)} host(s)", width),
                table([(f.instance, f.system, f.state.value, f.reason) for f in found.left],
                      ["host", "system", "state", "reason"], width=width,
                      fit=(Fit.KEEP, Fit.KEEP, Fit.KEEP, Fit.CUT))]
    return "\n".join(out) + "\n"


def _path(path: str, width: int | None) -> str:
    """A store path in a title: whole when the output is read whole, short on a terminal."""
    return path if width is None else text.short_path(path)


def _fitted(line: str, width: int | None) -> str:
    shown = text.line(line)
    return shown if width is None else text.cut(shown, max(width - 1, 1))

