"""Which instances a command acts on, and in what order.

Patterns are shell globs matched against instance names, system names and tags; `@GLOB`
matches tags alone (as Colmena's `--on @tag` does). The result
is a list of waves, one per pattern: the first pattern's matches first, each pattern's
matches sorted by name, each instance once. `deploy portico '*'` yields [[portico], [www-1, ...]].
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from hive.errors import SelectionError
from hive.model import Hive, Instance

Wave = tuple[Instance, ...]


def split_patterns(patterns: Iterable[str]) -> list[str]:
    """Accept `portico '*'` as well as doit's `targets=portico,*`. An empty pattern is an
    error, not "everything": `nix-hive deploy "$HOSTS"` with an empty variable must not
    deploy the whole fleet."""
    out = []
    for arg in patterns:
        for p in arg.split(","):
            if not p.strip():
                raise SelectionError(f"empty pattern in {arg!r} (no pattern at all selects every instance)")
            out.append(p.strip())
    return out


def matches(hive: Hive, instance: Instance, pattern: str) -> bool:
    system = hive.systems[instance.system]
    tags = (*instance.tags, *system.tags)
    if pattern.startswith("@"):
        return any(fnmatch.fnmatchcase(tag, pattern[1:]) for tag in tags)
    return any(fnmatch.fnmatchcase(name, pattern) for name in (instance.name, instance.system, *tags))


def select(hive: Hive, patterns: Sequence[str]) -> list[Wave]:
    """The waves of instances selected by `patterns` (every instance when there are none)."""
    pats = split_patterns(patterns)
    if not pats:
        return [tuple(hive.instances[n] for n in sorted(hive.instances))] if hive.instances else []
    seen: set[str] = set()
    waves: list[Wave] = []
    for pattern in pats:
        found = [i for n, i in sorted(hive.instances.items()) if matches(hive, i, pattern)]
        if not found:
            what = "tag" if pattern.startswith("@") else "instance, system or tag"
            raise SelectionError(f"pattern {pattern!r} matches no {what} of {hive.shown}")
        wave = tuple(i for i in found if i.name not in seen)
        seen.update(i.name for i in wave)
        if wave:
            waves.append(wave)
    return waves


def flatten(waves: Sequence[Wave]) -> list[Instance]:
    return [i for wave in waves for i in wave]


def systems_of(hive: Hive, waves: Sequence[Wave]) -> list[str]:
    """The systems the selected instances run, in selection order, each once."""
    order: dict[str, None] = {}
    for instance in flatten(waves):
        order.setdefault(instance.system, None)
    return list(order)
