"""What the user sees: progress lines while work runs, tables at the end, JSON for programs.

`Outcomes` is the record of every step of a run (build, store, push, activate), filled by
`Reporter`, the doit reporter nix-hive installs; the summary table and `--json` are read
from it. Progress goes to stderr, one line per step, whole lines only (threads share a lock).
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

OK, FAILED, SKIPPED, UNCHANGED = "ok", "failed", "skipped", "unchanged"


@dataclass
class Outcome:
    """What happened to one step (a doit task such as `push:www-1`)."""

    status: str
    reason: str = ""
    seconds: float = 0.0
    log: str = ""


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


class Outcomes:
    """Every step's outcome in this run, by task name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[str, Outcome] = {}

    def set(self, task: str, outcome: Outcome) -> None:
        with self._lock:
            self._by_task[task] = outcome

    def get(self, task: str) -> Outcome | None:
        with self._lock:
            return self._by_task.get(task)

    def succeeded(self, task: str) -> bool:
        found = self.get(task)
        return found is not None and found.status in (OK, UNCHANGED)

    def failed(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [t for t, o in self._by_task.items() if o.status == FAILED and t.startswith(prefix)]


def split_task(name: str) -> tuple[str, str]:
    step, _, target = name.partition(":")
    return step, target


class Reporter:
    """A doit reporter: records outcomes and prints progress (doit's reporter protocol)."""

    desc = "nix-hive progress"

    def __init__(self, outcomes: Outcomes, progress: Progress,
                 explain: Callable[[str, str], str] | None = None) -> None:
        self.outcomes = outcomes
        self.progress = progress
        self.explain = explain or (lambda task, dep: f"{dep} failed")
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    # doit calls these -------------------------------------------------------------------
    def initialize(self, tasks: Any, selected_tasks: Any) -> None:
        pass

    def get_status(self, task: Any) -> None:
        pass

    def execute_task(self, task: Any) -> None:
        if not task.actions or task.name.startswith("_"):
            return
        with self._lock:
            self._started[task.name] = time.monotonic()
        step, target = split_task(task.name)
        if step in ("build", "store"):
            self.progress.step(step, target, "...")

    def _seconds(self, name: str) -> float:
        with self._lock:
            start = self._started.pop(name, None)
        return round(time.monotonic() - start, 2) if start is not None else 0.0

    def add_success(self, task: Any) -> None:
        if not task.actions or task.name.startswith("_"):
            return
        seconds = self._seconds(task.name)
        values = task.values or {}
        self.outcomes.set(task.name, Outcome(OK, str(values.get("note", "")), seconds))
        step, target = split_task(task.name)
        self.progress.step(step, target, OK, f"{seconds:.1f}s {values.get('note', '')}".rstrip())

    def add_failure(self, task: Any, exception: Any) -> None:
        if task.name.startswith("_"):
            return
        step, target = split_task(task.name)
        kind = type(exception).__name__
        if kind in ("UnmetDependency", "NotStarted"):
            if kind == "NotStarted":
                reason = str(exception.get_msg()).strip()
            else:
                deps = str(exception.get_msg()).strip().split()
                reason = self.explain(task.name, deps[0] if deps else "a dependency")
            self.outcomes.set(task.name, Outcome(SKIPPED, reason))
            if task.actions:
                self.progress.step(step, target, SKIPPED, reason)
            return
        message = str(exception.get_msg()).strip() if hasattr(exception, "get_msg") else str(exception)
        first = message.splitlines()[0] if message else kind
        log = "\n".join(message.splitlines()[1:])
        self.outcomes.set(task.name, Outcome(FAILED, first, self._seconds(task.name), log))
        self.progress.step(step, target, FAILED, first)
        self.progress.block(log)

    def skip_uptodate(self, task: Any) -> None:
        if task.name.startswith("_") or not task.actions:
            return
        if self.outcomes.succeeded(task.name):
            return  # done earlier in this run, already reported
        self.outcomes.set(task.name, Outcome(UNCHANGED, "already done (--no)"))
        step, target = split_task(task.name)
        self.progress.step(step, target, UNCHANGED)

    def skip_ignore(self, task: Any) -> None:
        pass

    def cleanup_error(self, exception: Any) -> None:
        self.runtime_error(str(exception.get_msg()))

    def runtime_error(self, msg: str) -> None:
        """doit could not run the tasks at all (it says why): shown, never swallowed."""
        self.progress.line(f"error: {msg.strip()}")

    def teardown_task(self, task: Any) -> None:
        pass

    def complete_run(self) -> None:
        pass


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


def summary_table(rows: Sequence[Row]) -> str:
    return table([(r.instance, r.system, r.path or "-", r.result,
                   f"{sum(r.seconds.values()):.1f}", r.reason) for r in rows],
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
            "address": i.address,
            "selected": name in selected,
        }
        for name, i in sorted(hive.instances.items())
    }
    out: dict[str, Any] = {"file": str(hive.file), "paths": dict(hive.paths), "systems": systems,
                           "instances": instances}
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
            rows.append((name, str(len(users)), join(s.tags) or "-", paths or "-"))
    return rows
