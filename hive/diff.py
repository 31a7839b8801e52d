"""What moving a host from one system to another changes in its closure (no I/O).

A closure is every store path of a system with its NAR size, as the store that holds it
reports them (here `nix path-info --json --recursive`; on a host, whose Nix may lack the
`nix` command, `nix-store --query --requisites` and `--size`). The package changes are those
`nix store diff-closures` prints, by its rules (src/nix/diff-closures.cc, src/libstore/names.cc):

* A store path's name (`<hash>-openssl-3.0.13-dev`) loses one output suffix first: a last
  `-WORD` of lower-case letters, or `-lib32`/`-lib64` (`-dev`, `-man`, `-bin`; also `-unstable`
  or `-units`, which Nix cannot tell from an output either).
* What is left splits at its first `-` not followed by a letter: `openssl` and `3.0.13`,
  `python3` and `3.11.7`, `foo-unstable` and `2024-01-01`, `etc` and no version (shown `ε`).
* Paths are grouped by name; each name's versions are a set (a closure may hold several). A
  name is listed when a version left or came, or its paths' NAR sizes moved by 8 KiB or more;
  only the versions that changed are shown (`1.2, 1.3 → 1.4` leaves out a 1.1 kept).

Beyond diff-closures, each change says what kind it is (added, removed, upgraded, downgraded,
changed, size), versions being ordered as Nix orders them (`nix-env -u`, `builtins.compareVersions`).

`group_hosts` forms the groups a fleet's diff is made of: hosts that run the same system and
get the same one form one group, whose diff is computed once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Closure = Mapping[str, int]  # store path -> NAR size in bytes

SIZE_SHOWN = 8 * 1024  # diff-closures lists a name whose versions stayed only when its size moved this much
NO_VERSION = "ε"  # diff-closures' word for an empty version
NO_VERSIONS = "∅"  # and for no version at all

_HASHED = re.compile(r"[0-9a-z]{32}-")
_OUTPUT = re.compile(r"(.*)-([a-z]+|lib32|lib64)")


@dataclass(frozen=True)
class StoreName:
    """A store path's name as diff-closures reads it."""

    name: str  # the package name: `openssl`, `python3`, `foo-unstable`
    version: str  # `3.0.13`, `` (none)
    output: str  # the suffix taken for an output name: `dev`, `man`, `` (none)

    @classmethod
    def parse(cls, path: str) -> StoreName:
        """The name, version and output of a store path (`/nix/store/<hash>-NAME`, or its base
        name with or without the hash)."""
        base = path.rsplit("/", 1)[-1]
        name = base[33:] if _HASHED.match(base) else base
        output = ""
        found = _OUTPUT.fullmatch(name)
        if found is not None:
            name, output = found.group(1), found.group(2)
        for i, char in enumerate(name[:-1]):
            if char == "-" and not _letter(name[i + 1]):
                return cls(name[:i], name[i + 1:], output)
        return cls(name, "", output)


def _letter(char: str) -> bool:
    """C's isalpha in the C locale (Nix's test): ASCII letters only."""
    return char.isascii() and char.isalpha()


# Nix's version order (compareVersions) --------------------------------------------------------

def _components(version: str) -> list[str]:
    """A version's components as Nix splits them: runs of digits, or of other characters,
    separated by `.` and `-`."""
    return re.findall(r"[0-9]+|[^0-9.-]+", version)


def _before(c1: str, c2: str) -> bool:
    """Nix's componentsLT: numbers by value, the empty component before a number, `pre` before
    anything else, a word before a number (`2.3a` < `2.3.1`), words as strings."""
    n1, n2 = c1.isdigit(), c2.isdigit()
    if n1 and n2:
        return int(c1) < int(c2)
    if c1 == "" and n2:
        return True
    if c1 == "pre" and c2 != "pre":
        return True
    if c2 == "pre":
        return False
    if n2:
        return True
    if n1:
        return False
    return c1 < c2


def compare_versions(v1: str, v2: str) -> int:
    """-1, 0 or 1 as `v1` comes before, with or after `v2` in Nix's order."""
    a, b = _components(v1), _components(v2)
    for n in range(max(len(a), len(b))):
        c1, c2 = (a[n] if n < len(a) else ""), (b[n] if n < len(b) else "")
        if _before(c1, c2):
            return -1
        if _before(c2, c1):
            return 1
    return 0


# Closure diffs ------------------------------------------------------------------------------

class Kind(enum.Enum):
    """What happened to a package name between two closures."""

    UPGRADED = "upgraded"  # one version replaced by a later one
    DOWNGRADED = "downgraded"  # one version replaced by an earlier one
    CHANGED = "changed"  # versions came or went otherwise (several versions, or one beside others kept)
    ADDED = "added"  # the old closure had no path of that name
    REMOVED = "removed"  # the new closure has none
    SIZE = "size"  # the same versions, their paths' NAR sizes moved by SIZE_SHOWN or more


@dataclass(frozen=True)
class PackageChange:
    """One line of diff-closures: a package name and the versions that left or came."""

    name: str
    kind: Kind
    before: tuple[str, ...]  # versions only the old closure has (sorted as diff-closures sorts them)
    after: tuple[str, ...]  # versions only the new closure has
    size_delta: int  # bytes: the NAR sizes of the name's paths in the new closure minus in the old

    def versions(self) -> str:
        """`3.0.13 → 3.0.15`, as diff-closures writes it (`∅` no version, `ε` an empty one)."""
        return f"{show_versions(self.before)} → {show_versions(self.after)}"

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind.value, "before": list(self.before), "after": list(self.after),
                "sizeDelta": self.size_delta}


def show_versions(versions: Sequence[str]) -> str:
    return ", ".join(v or NO_VERSION for v in versions) if versions else NO_VERSIONS


@dataclass(frozen=True)
class ClosureDiff:
    """Two closures compared: the package changes and the sizes."""

    packages: tuple[PackageChange, ...]
    old_bytes: int  # the old closure's NAR sizes, summed (`nix path-info -S OLD`)
    new_bytes: int
    old_paths: int
    new_paths: int
    paths_added: int  # paths of the new closure the old one lacks
    paths_removed: int  # and the other way round

    @property
    def size_delta(self) -> int:
        return self.new_bytes - self.old_bytes

    def counts(self) -> dict[Kind, int]:
        """How many package changes of each kind, in Kind's order, those with none left out."""
        found = {k: sum(1 for p in self.packages if p.kind is k) for k in Kind}
        return {k: n for k, n in found.items() if n}

    def sizes(self) -> dict[str, int]:
        """The closures' figures (JSON)."""
        return {"oldBytes": self.old_bytes,
                "newBytes": self.new_bytes, "sizeDelta": self.size_delta, "oldPaths": self.old_paths,
                "newPaths": self.new_paths, "pathsAdded": self.paths_added, "pathsRemoved": self.paths_removed}


def _grouped(closure: Closure) -> dict[str, dict[str, int]]:
    """Package name -> version -> the NAR sizes of its paths, summed."""
    out: dict[str, dict[str, int]] = {}
    for path, size in closure.items():
        parsed = StoreName.parse(path)
        versions = out.setdefault(parsed.name, {})
        versions[parsed.version] = versions.get(parsed.version, 0) + size
    return out


def _kind(in_old: bool, in_new: bool, before: Sequence[str], after: Sequence[str]) -> Kind:
    if not in_old:
        return Kind.ADDED
    if not in_new:
        return Kind.REMOVED
    if len(before) == len(after) == 1:
        order = compare_versions(before[0], after[0])
        if order:
            return Kind.UPGRADED if order < 0 else Kind.DOWNGRADED
    return Kind.CHANGED if before or after else Kind.SIZE


def diff_closures(old: Closure, new: Closure) -> ClosureDiff:
    """The package changes from `old` to `new` (diff-closures' lines, in its order: by name)
    and their sizes. An empty `old`: a host that runs no system yet, every package added."""
    was, now = _grouped(old), _grouped(new)
    changes: list[PackageChange] = []
    for name in sorted(was.keys() | now.keys()):
        v_old, v_new = was.get(name, {}), now.get(name, {})
        before = tuple(sorted(v_old.keys() - v_new.keys()))
        after = tuple(sorted(v_new.keys() - v_old.keys()))
        delta = sum(v_new.values()) - sum(v_old.values())
        if before or after or abs(delta) >= SIZE_SHOWN:
            changes.append(PackageChange(name, _kind(name in was, name in now, before, after), before, after, delta))
    return ClosureDiff(tuple(changes), sum(old.values()), sum(new.values()), len(old), len(new),
                       len(new.keys() - old.keys()), len(old.keys() - new.keys()))


def fetch_bytes(new: Closure, missing: Iterable[str]) -> int:
    """What a host fetches to hold `new`: the NAR sizes of the paths of it that it lacks."""
    return sum(new.get(p, 0) for p in set(missing))


# Groups -------------------------------------------------------------------------------------

class State(enum.Enum):
    """A host's place in a fleet's diff."""

    CHANGES = "changes"  # it runs another system than the deployment's
    UNCHANGED = "unchanged"  # it runs the deployment's system already
    NEW = "new"  # it runs none yet (no /run/current-system: never activated)
    UNREACHABLE = "unreachable"  # it could not be asked (the reason says why)
    NOT_BUILT = "not built"  # its system could not be built: nothing to compare with


@dataclass(frozen=True)
class HostFacts:
    """What one host said (or why it said nothing), and the system the deployment builds for it."""

    instance: str
    system: str
    new: str | None  # the deployment's system for it (None: not built)
    reachable: bool = True
    current: str | None = None  # /run/current-system (None: none)
    missing: frozenset[str] = frozenset()  # the paths of the new closure its store lacks
    reason: str = ""  # why it could not be asked, or its system not built

    @property
    def state(self) -> State:
        if self.new is None:
            return State.NOT_BUILT
        if not self.reachable:
            return State.UNREACHABLE
        if self.current is None:
            return State.NEW
        return State.UNCHANGED if self.current == self.new else State.CHANGES


@dataclass(frozen=True)
class Group:
    """Hosts that run the same system (`old`; None: none) and get the same one (`new`)."""

    old: str | None
    new: str
    instances: tuple[str, ...]  # in the order they were given
    systems: tuple[str, ...]  # their systems' names (one, unless two systems build the same path)
    missing: Mapping[str, frozenset[str]] = field(default_factory=dict)  # instance -> paths it lacks

    @property
    def state(self) -> State:
        return State.NEW if self.old is None else State.UNCHANGED if self.old == self.new else State.CHANGES


def group_hosts(facts: Sequence[HostFacts]) -> tuple[list[Group], list[HostFacts]]:
    """The groups of the hosts that answered, by (old, new) in the order of their first host,
    and the hosts that did not (unreachable, or their system not built), in the order given."""
    members: dict[tuple[str | None, str], list[HostFacts]] = {}
    left: list[HostFacts] = []
    for f in facts:
        if f.new is None or not f.reachable:
            left.append(f)
        else:
            members.setdefault((f.current, f.new), []).append(f)
    groups = [Group(old, new, tuple(f.instance for f in hosts), tuple(dict.fromkeys(f.system for f in hosts)),
                    {f.instance: f.missing for f in hosts})
              for (old, new), hosts in members.items()]
    return groups, left


# Sizes as people read them --------------------------------------------------------------------

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(n: int) -> str:
    """`0 B`, `512 B`, `13.9 KiB`, `1.2 MiB` (powers of 1024, as Nix prints sizes)."""
    value, unit = float(abs(n)), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    shown = f"{int(value)} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"
    return f"-{shown}" if n < 0 else shown


def delta(n: int) -> str:
    """A size change, always signed: `+13.9 KiB`, `-2.0 MiB`, `+0 B`."""
    return size(n) if n < 0 else f"+{size(n)}"


def span(values: Sequence[int]) -> str:
    """Sizes of several hosts: one when they agree, else `min…max` (`1.0…3.0 KiB`, `512 B…2.0 KiB`)."""
    if not values:
        return "-"
    low, high = size(min(values)), size(max(values))
    if low == high:
        return low
    (low_value, low_unit), high_unit = low.split(" "), high.split(" ")[1]
    return f"{low_value}…{high}" if low_unit == high_unit else f"{low}…{high}"
