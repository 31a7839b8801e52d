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
from types import TracebackType
from typing import Any, TextIO

from tabulate import tabulate

from hive import text as text_


class Progress:
    """Whole progress lines on a stream, safe to call from several threads.

    Every line is made printable (hive/text.py): a host's output, in a reason or a failed
    step's log, never reaches the terminal raw. A stream that can no longer be written (its
    reader went away: `nix-hive deploy 2>&1 | head`) silences the progress, never the run: a
    step must not fail half-way because nobody reads about it."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def _write(self, shown: Iterable[str]) -> None:
        with self._lock:
            if self.quiet:
                return
            try:
                for ln in shown:
                    self.stream.write(f"{ln}\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nobody reads progress any more
                self.quiet = True

    def line(self, text: str) -> None:
        if self.quiet:
            return
        first, *rest = text_.lines(text)
        self._write([f"[{time.monotonic() - self._start:7.1f}s] {first}", *rest])

    def started(self, step: str, target: str) -> None:
        """A step began (the line log says so only for builds and stores: `step(..., "...")`);
        a live view (hive/live.py) shows the host at work."""

    def step(self, step: str, target: str, status: str, detail: str = "") -> None:
        self.line(f"{step:<9}{target:<28}{status}{'  ' + detail if detail else ''}")

    def block(self, text: str, indent: str = "    | ") -> None:
        """A failed step's full log, indented under its progress line."""
        if self.quiet or not text.strip():
            return
        self._write(f"{indent}{ln}" for ln in text_.lines(text.rstrip()))

    # A run's progress is entered while the run goes (`with session.progress:`): the line log
    # has nothing to start or end, a live view (hive/live.py) has its frame and the cursor.
    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


# Tables -------------------------------------------------------------------------------------

def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, limit: int = text_.LIMIT) -> str:
    """A table whose every cell is one printable line of at most `limit` characters (and the
    marker): a host's answer (a reason, a path it reports) cannot reach the terminal raw."""
    return tabulate([[text_.cell(c, limit) for c in row] for row in rows], headers=list(headers),
                    tablefmt="simple", disable_numparse=True)


def emit(text: str, stream: TextIO | None = None) -> None:
    """Write `text` whole on `stream` (stdout), or raise: with PYTHONUNBUFFERED, a text stream
    writes straight to the file and drops what a partial write left (a pipe whose reader goes
    away mid-write), so the bytes go to the binary layer here, until all are written. A
    reader gone for good is then a BrokenPipeError, as without PYTHONUNBUFFERED."""
    out = stream if stream is not None else sys.stdout
    binary = getattr(out, "buffer", None)
    if binary is None:
        out.write(text)
        return
    out.flush()
    data = memoryview(text.encode(out.encoding, out.errors or "strict"))
    while data:
        written = binary.write(data)
        if written is None:  # a non-blocking file that is full for now
            time.sleep(0.01)
        data = data[written or 0:]
    binary.flush()


def dump_json(data: Any, stream: TextIO | None = None, *, hosts: bool = False) -> None:
    """`data` as JSON on `stream` (stdout). `hosts`: data holding what hosts said (reasons,
    check output, the paths they report), whose strings are then bounded (text.bounded);
    JSON escapes control characters itself."""
    out = stream if stream is not None else sys.stdout
    if hosts:
        data = text_.bounded(data)
    # Indented for a person at a terminal; compact (and several times faster) for a program.
    emit(json.dumps(data, indent=2 if out.isatty() else None) + "\n", out)


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
    # a deploy's timeline (issue 23): when each step started (seconds since the run began),
    # each step's outcome, the instance's wave; absent from other commands' rows
    started: Mapping[str, float] = field(default_factory=dict)
    steps: Mapping[str, str] = field(default_factory=dict)
    wave: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"instance": self.instance, "system": self.system, "path": self.path,
                               "outcome": self.result, "reason": self.reason, "seconds": dict(self.seconds)}
        if self.wave is not None:
            out.update(wave=self.wave, started=dict(self.started), steps=dict(self.steps))
        return out


# Phases of an activation: their seconds are part of the activation's, not added to them.
PHASES = frozenset({"post-keys", "check", "confirm", "boot"})  # boot: a reboot's wait for the host


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
            "paths": {**dict.fromkeys(s.unevaluated), **s.paths},  # null: not evaluated (builds nothing)
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
    out: dict[str, Any] = {"file": str(hive.file), "paths": {**dict.fromkeys(hive.unevaluated), **hive.paths},
                           "systems": systems, "instances": instances}
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
            if s.unevaluated:  # a command that builds nothing: named, not evaluated
                paths = f"{' '.join(sorted(s.unevaluated))} (not evaluated) {paths}".strip()
            if s.nixpkgs:  # a flake input: the paths' nixpkgs is not used
                paths = f"nixpkgs={s.nixpkgs} (given)"
            rows.append((name, str(len(users)), join(s.tags) or "-", paths or "-"))
    return rows


# A cell of the plan's table: `deploy` waits for every instance's last step, and a table pads
# every row to its widest cell, so one whole list would make the table grow as the square of
# the instances (750 MB at 5,000). `nix-hive plan --json` has every list whole.
PLAN_CELL = 200


def plan_rows(plan: Any) -> list[tuple[str, ...]]:
    """`nix-hive plan`: a row per task, in the order the plan lists them, each cell at most
    about PLAN_CELL characters (a long list summarised: its count, its first and last items)."""
    return [(str(t.id), text_.summary([str(d) for d in (*t.setup, *t.deps)], "tasks", PLAN_CELL) or "-",
             t.skippable.value if t.skippable is not None and t.skippable in plan.skip else "-",
             text_.bound(t.doc, PLAN_CELL))
            for t in plan.tasks]
