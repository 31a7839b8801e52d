"""What the user sees: progress lines while work runs, tables at the end, JSON for programs.

Progress goes to stderr, one line per step, whole lines only (threads share a lock). The
summary is read from the run's outcomes (outcome.py) by orchestrate.py.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from tabulate import tabulate


class Progress:
    """Whole progress lines on a stream, safe to call from several threads."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def line(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self.stream.write(f"[{time.monotonic() - self._start:7.1f}s] {text}\n")
            self.stream.flush()

    def step(self, step: str, target: str, status: str, detail: str = "") -> None:
        self.line(f"{step:<9}{target:<28}{status}{'  ' + detail if detail else ''}")

    def block(self, text: str, indent: str = "    | ") -> None:
        """A failed step's full log, indented under its progress line."""
        if self.quiet or not text.strip():
            return
        with self._lock:
            for ln in text.rstrip().splitlines():
                self.stream.write(f"{indent}{ln}\n")
            self.stream.flush()


# Tables -------------------------------------------------------------------------------------

def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    return tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True)


def dump_json(data: Any, stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stdout
    # Indented for a person at a terminal; compact (and several times faster) for a program.
    out.write(json.dumps(data, indent=2 if out.isatty() else None) + "\n")


def join(items: Iterable[str]) -> str:
    return ",".join(items)


@dataclass(frozen=True)
class Row:
    """One instance's line in the deploy summary."""

    instance: str
    system: str
    path: str
    result: str
    reason: str
    seconds: Mapping[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "system": self.system, "path": self.path,
                "outcome": self.result, "reason": self.reason, "seconds": dict(self.seconds)}


# Phases of an activation: their seconds are part of the activation's, not added to them.
PHASES = frozenset({"post-keys", "check", "confirm"})


def total_seconds(seconds: Mapping[str, float]) -> float:
    """A row's time: its steps', without counting an activation's phases twice."""
    phases = PHASES | ({"rollback"} if "activate" in seconds else set())
    return sum(v for k, v in seconds.items() if k not in phases)


def summary_table(rows: Sequence[Row]) -> str:
    return table([(r.instance, r.system, r.path or "-", r.result,
                   f"{total_seconds(r.seconds):.1f}", r.reason) for r in rows],
                 ["instance", "system", "store path", "result", "seconds", "reason"])


# The inventory ------------------------------------------------------------------------------

def inventory_json(hive: Any, selected: set[str], result_of: Callable[[str], str | None] | None = None,
                   ssh_config: str | None = None) -> dict[str, Any]:
    """The inventory as `nix-hive build` prints it: the original tool's shape (top-level
    `paths`, `systems.<s>.result`, `ssh`, `instances.<i>` with system, store, tags), plus more."""
    systems: dict[str, Any] = {}
    for name, s in sorted(hive.systems.items()):
        users = sorted(i.name for i in hive.instances.values() if i.system == name)
        systems[name] = {
            "result": result_of(name) if result_of is not None else None,
            "paths": dict(s.paths),
            "system": s.platform,
            "tags": list(s.tags),
            "nixpkgs": s.nixpkgs,
            "buildHost": s.build_host,
            "instances": users,
            "selected": any(u in selected for u in users),
        }
    instances = {
        name: {
            "system": i.system,
            "store": i.store,
            "tags": list(i.tags),
            "ssh": dict(i.ssh),
            "hostKey": i.host_key,
            "keys": {k: hive.keys[k].describe() for k in i.keys},
            "address": i.address,
            "selected": name in selected,
        }
        for name, i in sorted(hive.instances.items())
    }
    out: dict[str, Any] = {"file": str(hive.file), "paths": dict(hive.paths), "systems": systems,
                           "instances": instances}
    if hive.flake is not None:
        out["flake"] = {"ref": hive.flake, "attr": hive.attr, **dict(hive.flake_inputs or {})}
    if ssh_config is not None:
        out["ssh"] = ssh_config
    return out


def instance_rows(hive: Any, selected: set[str]) -> list[tuple[Any, ...]]:
    return [(n, i.system, i.store or "-", join(i.tags) or "-", i.address)
            for n, i in sorted(hive.instances.items()) if n in selected]


def system_rows(hive: Any, selected: set[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for name, s in sorted(hive.systems.items()):
        users = [n for n, i in hive.instances.items() if i.system == name and n in selected]
        if users:
            paths = " ".join(f"{k}={v}" for k, v in sorted(s.paths.items()))
            if s.nixpkgs:  # a flake input: the paths' nixpkgs is not used
                paths = f"nixpkgs={s.nixpkgs} (given)"
            rows.append((name, str(len(users)), join(s.tags) or "-", paths or "-"))
    return rows


def plan_rows(plan: Any) -> list[tuple[str, ...]]:
    """`nix-hive plan`: a row per task, in the order the plan lists them."""
    return [(str(t.id), " ".join(str(d) for d in (*t.setup, *t.deps)) or "-",
             t.skippable.value if t.skippable is not None and t.skippable in plan.skip else "-", t.doc)
            for t in plan.tasks]
